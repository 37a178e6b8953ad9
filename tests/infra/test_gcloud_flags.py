"""Every gcloud call the infra scripts, cloudbuild.yaml and infra/README.md make exists in this machine's gcloud.

The command path must be a command (not a group, not a typo) and each flag must appear in that
command's ``--help``. Starting gcloud takes about a second, so the help pages of all distinct
commands are rendered by one gcloud process (tests/infra/gcloud_help.py), once per session.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import pytest

from tests.infra.commands import (
    INFRA_README,
    Command,
    cloudbuild_gcloud_lines,
    flag_documented,
    gcloud_commands,
    help_text,
    help_texts,
    markdown_gcloud_lines,
    printed_lines,
)

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None,
                                reason="needs the Google Cloud SDK (gcloud) to read its --help")

PLACEHOLDERS = {"PROJECT_ID": "demo-project-1", "BUILD_ID": "b1234", "_REGION": "europe-west1",
                "_BUCKET": "demo-bucket", "_AR_REPO": "mountainid", "_CATALOG": "mountains11",
                "_TRAINING_GPU": "0", "_ALLOW_NO_MODEL": "0", "_SHARED_URI": "gs://ci-data/shared"}


@pytest.fixture(scope="session")
def all_commands(fresh_run: subprocess.CompletedProcess, again_run: subprocess.CompletedProcess,
                 cloudbuild: dict[str, Any]) -> list[Command]:
    lines = printed_lines(fresh_run.stdout) + printed_lines(again_run.stdout)
    lines += cloudbuild_gcloud_lines(cloudbuild, PLACEHOLDERS) + markdown_gcloud_lines(INFRA_README)
    return gcloud_commands(lines)


@pytest.fixture(scope="session")
def helps(all_commands: list[Command]) -> dict[tuple[str, ...], str]:
    started = time.monotonic()
    pages = help_texts(cmd.path for cmd in all_commands)
    print(f"\n{len(pages)} gcloud help pages in {time.monotonic() - started:.1f} s")
    return pages


def test_every_command_and_flag_is_known_to_gcloud(all_commands: list[Command],
                                                   helps: dict[tuple[str, ...], str]) -> None:
    problems = [f"{flag} is not a flag of 'gcloud {' '.join(cmd.path)}': {cmd.line}"
                for cmd in all_commands for flag in cmd.flags if not flag_documented(flag, helps[cmd.path])]
    assert not problems, "\n".join(problems)
    print(f"{len(all_commands)} gcloud calls checked")
    assert len(helps) >= 30  # the scripts really were read (all groups: storage, pubsub, run, ...)


def test_the_check_catches_a_wrong_flag_and_a_wrong_command(helps: dict[tuple[str, ...], str]) -> None:
    """The validator itself: its pages are gcloud's --help, and a misspelt flag or command fails."""
    path = ("functions", "deploy")
    help_page = helps[path]
    assert help_page == help_text(path)  # one process rendering many pages = `gcloud ... --help`
    assert flag_documented("--no-allow-unauthenticated", help_page)
    assert flag_documented("--trigger-topic", help_page)
    assert not flag_documented("--trigger-topics", help_page)
    assert not flag_documented("--entry", help_page)
    with pytest.raises(AssertionError, match="is a group"):
        gcloud_commands([["gcloud", "functions", "deplyo", "x"]])
    with pytest.raises(AssertionError, match="does not know"):
        help_texts([("functions", "deplyo")])
