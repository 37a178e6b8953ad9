"""Fixtures every test area shares. Emulator fixtures live in tests/emulators.py (imported below)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mountainid.config import Settings, load_settings

pytest_plugins = ["tests.emulators"]

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder with real photos and ImageNet weights."""
    path = Path(os.environ.get("MOUNTAINID_SHARED", REPO.parent / "shared")).resolve()
    if not (path / "models" / "imagenet").is_dir():
        pytest.fail(f"shared data not found at {path}: set MOUNTAINID_SHARED")
    return path


@pytest.fixture(scope="session")
def weights_path(shared_dir: Path) -> Path:
    return shared_dir / "models" / "imagenet" / "mobilenet_v2_1.0_224_imagenet.weights.h5"


@pytest.fixture()
def make_settings(tmp_path: Path, weights_path: Path):
    """Settings for a test: a fresh local bucket, in-process events, the shared weights; override freely."""

    def build(**env: str) -> Settings:
        base = {"MOUNTAINID_BUCKET": str(tmp_path / "bucket"), "MOUNTAINID_WEIGHTS": str(weights_path)}
        base.update(env)
        return load_settings(base)

    return build
