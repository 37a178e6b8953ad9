"""cloudbuild.yaml: well-formed, every substitution declared, no secret in it, and the steps deploy
entry points that exist in the repository."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.infra.commands import CLOUDBUILD, REPO, cloudbuild_scripts, substitute, substitutions_used

# Cloud Build's built-in substitutions (the ones a build from a trigger or `builds submit` may use).
BUILT_IN = {"PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID", "LOCATION", "TRIGGER_NAME", "COMMIT_SHA",
            "SHORT_SHA", "REVISION_ID", "REPO_NAME", "REPO_FULL_NAME", "BRANCH_NAME", "TAG_NAME",
            "REF_NAME", "TRIGGER_BUILD_CONFIG_PATH", "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT"}
SECRET_PATTERNS = [
    re.compile(r"AIza[0-9A-Za-z_\-]{35}"),                       # Google API key
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b[0-9a-f]{32}\b"),                             # Flickr API keys are 32 hex digits
    re.compile(r"(?i)(FLICKR_API_(KEY|SECRET)|ADMIN_TOKEN|PASSWORD)\s*[=:]\s*\S"),
]


def step(build: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in build["steps"] if s["id"] == step_id)


def depends_on(build: dict[str, Any], step_id: str) -> set[str]:
    """Every step that must finish before ``step_id`` (waitFor, transitively; default: all earlier)."""
    ids = [s["id"] for s in build["steps"]]
    wait = step(build, step_id).get("waitFor")
    direct = set(ids[:ids.index(step_id)]) if wait is None else set(wait) - {"-"}
    return direct.union(*(depends_on(build, d) for d in direct)) if direct else set()


def gcp_subcommands() -> set[str]:
    """The subcommands infra/gcp.sh accepts (its case labels)."""
    text = (REPO / "infra" / "gcp.sh").read_text()
    return set(re.findall(r"^\s+([a-z-]+)\) ", text, re.MULTILINE))


def test_steps_are_well_formed(cloudbuild: dict[str, Any]) -> None:
    ids = [s["id"] for s in cloudbuild["steps"]]
    assert len(ids) == len(set(ids))
    for s in cloudbuild["steps"]:
        assert set(s.get("waitFor", [])) <= set(ids) | {"-"}, s["id"]
        assert s["name"], s["id"]
    assert cloudbuild["options"]["logging"] == "CLOUD_LOGGING_ONLY"  # required with a custom serviceAccount
    assert cloudbuild["serviceAccount"].endswith("/serviceAccounts/mountainid-deployer@$PROJECT_ID"
                                                 ".iam.gserviceaccount.com")


def test_substitutions_are_declared_and_used() -> None:
    text = CLOUDBUILD.read_text()
    build = yaml.safe_load(text)
    declared = set(build["substitutions"])
    assert {"_REGION", "_BUCKET", "_AR_REPO"} <= declared
    used = substitutions_used(yaml.safe_dump({k: v for k, v in build.items() if k != "substitutions"}))
    assert used - declared - BUILT_IN == set(), "undeclared substitution (Cloud Build would reject the build)"
    assert declared - used == set(), "declared substitution never used"
    # Every user substitution starts with "_"; a plain $NAME in a script must be written $$NAME.
    assert all(name.startswith("_") for name in declared)


def test_no_secret_in_the_file() -> None:
    text = CLOUDBUILD.read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"looks like a secret: {pattern.pattern}"
    build = yaml.safe_load(text)
    assert "secretEnv" not in text and "availableSecrets" not in build  # the build needs no secret


def test_test_gate_build_push_and_deploy_order(cloudbuild: dict[str, Any]) -> None:
    assert "pytest" in step(cloudbuild, "test")["args"][-1]
    for image in ("web", "training"):
        assert {"test", f"build-{image}"} <= depends_on(cloudbuild, f"push-{image}")
        assert f"push-{image}" in depends_on(cloudbuild, f"deploy-{image}")
    assert "push-training" in depends_on(cloudbuild, "deploy-backfill")  # the job runs the training image
    for deploy in ("deploy-ingest", "deploy-filter", "deploy-training", "deploy-backfill", "deploy-web"):
        assert "test" in depends_on(cloudbuild, deploy), f"{deploy} may run before the tests pass"
        assert step(cloudbuild, deploy)["args"] == ["infra/gcp.sh", deploy]
    assert "deploy-web" in depends_on(cloudbuild, "verify")
    assert step(cloudbuild, "verify")["args"] == ["infra/gcp.sh", "verify"]
    used = {s["args"][1] for s in cloudbuild["steps"] if s.get("args", [""])[0] == "infra/gcp.sh"}
    assert used <= gcp_subcommands()
    env = dict(item.split("=", 1) for item in cloudbuild["options"]["env"])
    assert env["PROJECT"] == "$PROJECT_ID" and env["BUCKET"] == "$_BUCKET" and env["TAG"] == "$BUILD_ID"


def test_images_are_built_from_dockerfiles_that_exist(cloudbuild: dict[str, Any]) -> None:
    web = step(cloudbuild, "build-web")["args"]
    assert "--file=infra/docker/web.Dockerfile" in web and web[-1] == "."
    training = step(cloudbuild, "build-training")["args"][-1]
    assert "--file=infra/docker/training.Dockerfile" in training
    for dockerfile in ("web", "training"):
        assert (REPO / "infra" / "docker" / f"{dockerfile}.Dockerfile").is_file()
    for image in cloudbuild["images"]:
        assert image.startswith("$_REGION-docker.pkg.dev/$PROJECT_ID/$_AR_REPO/")


def test_step_scripts_pass_shellcheck(cloudbuild: dict[str, Any], tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: run `make system-deps` (Debian package shellcheck)"
    # Each substitution stays a variable reference, so shellcheck sees what varies between builds.
    values = {name: f"${{{name}}}" for name in BUILT_IN | set(cloudbuild["substitutions"])}
    files = []
    for step_id, script in cloudbuild_scripts(cloudbuild):
        path = tmp_path / f"{step_id}.sh"
        path.write_text("#!/usr/bin/env bash\n" + substitute(script, values))
        files.append(str(path))
    assert len(files) >= 3
    result = subprocess.run([shellcheck, "--severity=style", *files], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def _handler(path: Path, name: str) -> ast.FunctionDef:
    assert path.is_file(), f"{path.relative_to(REPO)} does not exist (yet)"
    tree = ast.parse(path.read_text())
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    assert found, f"{path.relative_to(REPO)} defines no top-level {name}()"
    return found[0]


def test_deployed_entry_points_exist() -> None:
    """The names infra/gcp.sh and the Dockerfiles deploy: each file and handler is in the repository."""
    for folder, entry in (("ingest", "ingest"), ("filter", "filter_photo")):
        handler = _handler(REPO / "functions" / folder / "main.py", entry)
        decorators = {ast.unparse(d) for d in handler.decorator_list}
        assert "functions_framework.cloud_event" in decorators, f"{entry} is not a CloudEvent handler"
        assert f"--entry-point={entry}" in (REPO / "infra" / "gcp.sh").read_text()
    assert (REPO / "training_job" / "main.py").is_file(), "training_job/main.py does not exist (yet)"
    assert (REPO / "training_job" / "__init__.py").is_file()
    _handler(REPO / "web" / "__init__.py", "create_app")
