"""Issue 23, finding 2: who may do what, checked three ways.

infra/README.md's IAM table (account -> role -> on -> prefixes -> why) is exactly what a dry run of
infra/gcp.sh grants, no more and no less; and each call the deployer makes (the build's source fetch,
the steps of cloudbuild.yaml, every deploy of infra/gcp.sh) has the grant it needs. A new gcloud call
in a deploy path fails here until its role is named, so a build that dies with "does not have
storage.objects.list access" on a real project is caught on this machine.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import pytest

from tests.infra.commands import (
    BASE_ENV,
    INFRA_README,
    PLACEHOLDERS,
    Command,
    cloudbuild_gcloud_lines,
    gcloud_commands,
    printed_lines,
    run_dry,
)

PROJECT = BASE_ENV["PROJECT"]
SHARED_URI = "gs://ci-data/shared"
DEPLOYER = "mountainid-deployer"
# Placeholders of the README table -> the names the dry run uses.
NAMES = {"gs://BUCKET": f"gs://{PROJECT}-mountainid", "gs://PROJECT_cloudbuild": f"gs://{PROJECT}_cloudbuild",
         "gs://SHARED_BUCKET": "gs://ci-data", "SHARED_FOLDER/": "shared/"}
AGENTS = {"gs-project-accounts.iam.gserviceaccount.com": "Cloud Storage service agent",
          "gcp-sa-pubsub.iam.gserviceaccount.com": "Pub/Sub service agent"}
# The role each deploy-path gcloud command needs (besides actAs on the accounts it names).
DEPLOY_ROLES = {
    ("functions", "deploy"): "roles/cloudfunctions.developer",
    ("run", "deploy"): "roles/run.admin",
    ("run", "jobs", "deploy"): "roles/run.admin",
    ("beta", "run", "jobs", "deploy"): "roles/run.admin",
    ("run", "services", "describe"): "roles/run.admin",
    ("run", "services", "get-iam-policy"): "roles/run.admin",
    ("run", "services", "add-iam-policy-binding"): "roles/run.admin",
    ("run", "jobs", "get-iam-policy"): "roles/run.admin",
    ("run", "jobs", "add-iam-policy-binding"): "roles/run.admin",
}
ACCOUNT_FLAGS = ("--service-account", "--trigger-service-account", "--build-service-account")


class Grant(NamedTuple):
    account: str
    role: str
    on: str
    prefixes: frozenset[str]


def account(member: str) -> str:
    email = member.removeprefix("serviceAccount:").rsplit("/", 1)[-1]
    name, _, domain = email.partition("@")
    return AGENTS.get(domain, name)


def resource(cmd: Command) -> str:
    """The table's name for what a binding is on: `project`, `gs://...`, `topic X`, `account X`, ..."""
    target = cmd.positionals[0]
    kinds = {("pubsub", "topics"): "topic", ("secrets",): "secret", ("run", "services"): "service",
             ("run", "jobs"): "job", ("artifacts", "repositories"): "repository", ("iam", "service-accounts"): "account"}
    group = cmd.path[:-1]
    if group == ("projects",):
        return "project"
    if group == ("storage", "buckets"):
        return target
    return f"{kinds[group]} {account(target)}"


def dry_run_grants(*commands: str, env: dict[str, str]) -> set[Grant]:
    result = run_dry(*commands, env=env)
    assert result.returncode == 0, result.stderr
    grants = set()
    for cmd in gcloud_commands(printed_lines(result.stdout)):
        if cmd.verb == "add-iam-policy-binding":
            prefixes = re.findall(r'objects/([^"]+)"\)', cmd.flags.get("--condition") or "")
            grants.add(Grant(account(cmd.flag("--member")), cmd.flag("--role"), resource(cmd), frozenset(prefixes)))
    return grants


def readme_grants() -> dict[Grant, str]:
    """The rows of infra/README.md's IAM table, one grant per resource named, with its why."""
    text = INFRA_README.read_text()
    section = text[text.index("### Who may do what"):]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| account")
            and not line.startswith("| ---")]
    table: dict[Grant, str] = {}
    for row in rows:
        if row.count(" | ") != 4:
            break  # the table ended
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        who, role, on, prefixes, why = cells
        assert why and why != "—", f"no reason given: {row}"
        spans = [re.findall(r"`([^`]+)`", cell) for cell in (who, role, on, prefixes)]
        name = spans[0][0] if spans[0] else who
        for target in spans[2]:
            grant = Grant(name, spans[1][0], NAMES.get(target, target),
                          frozenset(NAMES.get(prefix, prefix) for prefix in spans[3]))
            assert grant not in table, f"listed twice: {grant}"
            table[grant] = why
    return table


@pytest.fixture(scope="module")
def granted() -> set[Grant]:
    """Everything bootstrap and deploy grant, with the optional grants (stored uploads, CI data) on."""
    env = {"MOUNTAINID_STORE_UPLOADS": "true", "SHARED_URI": SHARED_URI}
    return dry_run_grants("bootstrap", "deploy", env=env) | dry_run_grants(
        "deploy", env={**env, "TRAINING_GPU": "1", "DRY_RUN_EXISTS": "1"})


def test_the_readme_table_is_exactly_what_the_script_grants(granted: set[Grant]) -> None:
    table = readme_grants()
    assert len(table) >= 25
    assert set(table) - granted == set(), "in the README table, not granted by infra/gcp.sh"
    assert granted - set(table) == set(), "granted by infra/gcp.sh, missing from the README table"


def test_the_deployer_may_read_what_its_build_reads(granted: set[Grant], cloudbuild: dict[str, Any]) -> None:
    """The build runs as the deployer and fetches its source from gs://PROJECT_cloudbuild, where
    `gcloud builds submit` staged it; its shared-data step copies _SHARED_URI."""
    assert cloudbuild["serviceAccount"].endswith(f"/{DEPLOYER}@$PROJECT_ID.iam.gserviceaccount.com")
    assert Grant(DEPLOYER, "roles/storage.objectViewer", f"gs://{PROJECT}_cloudbuild", frozenset()) in granted
    copies = [words for words in cloudbuild_gcloud_lines(cloudbuild, {**PLACEHOLDERS, "_SHARED_URI": SHARED_URI})
              if words[1:3] == ["storage", "cp"]]
    assert copies and all(words[-2].startswith(SHARED_URI + "/") for words in copies)
    assert Grant(DEPLOYER, "roles/storage.objectViewer", "gs://ci-data", frozenset({"shared/"})) in granted
    assert cloudbuild["options"]["logging"] == "CLOUD_LOGGING_ONLY"
    assert Grant(DEPLOYER, "roles/logging.logWriter", "project", frozenset()) in granted
    pushes = [s["args"][-1] for s in cloudbuild["steps"] if s.get("args", [None])[0] == "push"]
    assert len(pushes) == 2 and all("/$_AR_REPO/" in image for image in pushes)
    assert cloudbuild["substitutions"]["_AR_REPO"] == "mountainid"
    assert Grant(DEPLOYER, "roles/artifactregistry.writer", "repository mountainid", frozenset()) in granted
    without = dry_run_grants("iam", env={})
    assert not [g for g in without if g.on == "gs://ci-data"], "no CI data, no grant on it"


@pytest.mark.parametrize("gpu", ["0", "1"])
def test_every_deploy_call_has_the_grant_it_needs(granted: set[Grant], gpu: str) -> None:
    """What cloudbuild.yaml's deploy steps run (infra/gcp.sh deploy-*), call by call, as the deployer."""
    result = run_dry("deploy", env={"TRAINING_GPU": gpu, "DRY_RUN_EXISTS": "1"})
    assert result.returncode == 0, result.stderr
    deployer = {(g.role, g.on) for g in granted if g.account == DEPLOYER}
    needed: set[tuple[str, str]] = set()
    for cmd in gcloud_commands(printed_lines(result.stdout)):
        assert cmd.path in DEPLOY_ROLES, f"which role does the deployer need for: {cmd.line}"
        needed.add((DEPLOY_ROLES[cmd.path], "project"))
        for flag in ACCOUNT_FLAGS:
            if flag in cmd.flags:
                needed.add(("roles/iam.serviceAccountUser", f"account {account(cmd.flag(flag))}"))
    assert needed - deployer == set(), "calls the deployer may not make"
    assert len(needed) >= 8
