"""Fixtures for the infra checks: the scripts' dry-run output (two runs) and cloudbuild.yaml."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.infra.commands import CLOUDBUILD, run_dry

# The second run stands for a re-run on a project where everything exists, with the options on.
AGAIN_ENV = {"DRY_RUN_EXISTS": "1", "TRAINING_GPU": "1", "MOUNTAINID_STORE_UPLOADS": "true",
             "MOUNTAINID_LICENSES": "4,5,9", "MOUNTAINID_FILTER_THRESHOLD": "0.4",
             "MOUNTAINID_WEIGHTS": "/home/me/weights.h5", "MOUNTAINID_INGEST_MAX_ATTEMPTS": "7",
             "MOUNTAINID_INGEST_SEARCH_PAGES": "3", "MOUNTAINID_CATCH_UP_LIMIT": "100"}


def _dry_run(*commands: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = run_dry(*commands, env=env)
    assert result.returncode == 0, f"dry run failed:\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def fresh_run() -> subprocess.CompletedProcess:
    """bootstrap + deploy on an empty project (every describe answers "absent")."""
    return _dry_run("bootstrap", "deploy")


@pytest.fixture(scope="session")
def again_run() -> subprocess.CompletedProcess:
    """bootstrap + deploy + set-secret where everything exists, GPU training and stored uploads on."""
    return _dry_run("bootstrap", "deploy", "set-secret", "flickr-api-key", env=AGAIN_ENV)


@pytest.fixture(scope="session")
def cloudbuild() -> dict[str, Any]:
    with CLOUDBUILD.open() as handle:
        return yaml.safe_load(handle)
