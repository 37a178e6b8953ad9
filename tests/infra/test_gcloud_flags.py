"""Every gcloud call the infra scripts, cloudbuild.yaml and infra/README.md make is one this machine's gcloud accepts.

Each whole line goes through gcloud's own argument parser (tests/infra/gcloud_parse.py), the
parser `gcloud` runs before any command: unknown commands and flags, missing required flags,
conflicting flags, bad choices and ill-typed values all fail. Starting gcloud takes about a
second, so all lines are parsed by one gcloud process, once per session.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import pytest

from tests.infra.commands import (
    INFRA_README,
    PLACEHOLDERS,
    Command,
    cloudbuild_gcloud_lines,
    gcloud_commands,
    markdown_gcloud_lines,
    parse_with_gcloud,
    printed_lines,
    run_dry,
)

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None,
                                reason="needs the Google Cloud SDK (gcloud) and its argument parser")

@pytest.fixture(scope="session")
def all_commands(fresh_run: subprocess.CompletedProcess, again_run: subprocess.CompletedProcess,
                 cloudbuild: dict[str, Any]) -> list[Command]:
    lines = printed_lines(fresh_run.stdout) + printed_lines(again_run.stdout)
    lines += cloudbuild_gcloud_lines(cloudbuild, PLACEHOLDERS) + markdown_gcloud_lines(INFRA_README)
    return gcloud_commands(lines)


def test_every_gcloud_call_parses_with_gclouds_own_parser(all_commands: list[Command]) -> None:
    started = time.monotonic()
    errors = parse_with_gcloud(all_commands)
    problems = [f"{cmd.line}\n    -> {error}" for cmd, error in zip(all_commands, errors, strict=True) if error]
    assert not problems, "\n".join(problems)
    print(f"\n{len(all_commands)} gcloud calls parsed in {time.monotonic() - started:.1f} s")
    assert len({cmd.path for cmd in all_commands}) >= 30  # the scripts really were read (all groups)


def test_the_update_path_of_every_scheduler_job_parses() -> None:
    """Issue 23, finding 1: on a project where the jobs exist, `scheduler jobs update pubsub` has no
    --attributes flag (only --update-attributes/--remove-attributes/--clear-attributes)."""
    result = run_dry("scheduler", env={"DRY_RUN_EXISTS": "1"})
    assert result.returncode == 0, result.stderr
    updates = [cmd for cmd in gcloud_commands(printed_lines(result.stdout)) if "update" in cmd.path]
    assert len(updates) == 4
    assert parse_with_gcloud(updates) == [None] * 4


def test_the_check_catches_what_a_help_text_search_let_through() -> None:
    """The validator itself: a flag only mentioned in another flag's help, a misspelt flag or command,
    a missing required flag, a bare topic name with no default project and an ill-typed value all
    fail; a correct line passes."""
    base = ["gcloud", "scheduler", "jobs", "update", "pubsub", "j", "--location=europe-west1"]
    cases = [base + ["--update-attributes=mountainid=catch-up"],
             base + ["--attributes=mountainid=catch-up"],
             ["gcloud", "functions", "deploy", "f", "--trigger-topics=t"],
             ["gcloud", "scheduler", "jobs", "create", "pubsub", "j", "--location=r", "--topic=projects/p/topics/t"],
             ["gcloud", "scheduler", "jobs", "create", "pubsub", "j", "--location=r", "--schedule=0 * * * *",
              "--message-body={}", "--topic=t", "--project=demo-project-1"],
             ["gcloud", "functions", "deploy", "f", "--timeout=soon"]]
    errors = parse_with_gcloud(gcloud_commands(cases))
    assert errors[0] is None
    assert "unrecognized arguments: --attributes" in errors[1]
    assert "--trigger-topics" in errors[2]
    assert "--schedule" in errors[3] and "Must be specified" in errors[3]
    assert "projectsId" in errors[4]  # --topic is resolved before --project is read
    assert "--timeout" in errors[5]
    with pytest.raises(AssertionError, match="is a group"):
        gcloud_commands([["gcloud", "functions", "deplyo", "x"]])
