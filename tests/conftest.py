"""Fixtures every test area shares. Emulator fixtures live in tests/emulators.py (imported below)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mountainid.config import Settings, load_settings

pytest_plugins = ["tests.emulators"]

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Tests that train a model of their own or run the pipeline, marked `slow` here by node-id prefix so
# `make test-fast` leaves them to `make test`; a prefix without "::" is the whole module. The times are
# `--durations` on the 2-core machine, 2026-12-07, two workers (tests/core/test_slow_list.py checks that
# every entry still names a test).
SLOW = (
    "tests/pipeline/test_embedded.py",  # whole cycles of `mountainid run`: 23-54 s each
    "tests/training/test_job.py",  # training runs: 17-58 s a test
    "tests/training/test_tiers.py",  # the tiers trained: 18-54 s each, the gpu tier (with folds) 74 s
    "tests/training/test_cli_and_crash.py",  # train/evaluate, some in subprocesses: 35-61 s, setups 13-15 s
    "tests/training/test_own_mountains.py",  # train then serve from a folder: 8-49 s
    "tests/training/test_fine_tune.py",  # EfficientNet-Lite2 fine-tunes: 5-44 s
    "tests/training/test_duplicates.py::test_copies_under_two_mountains_are_kept_out_of_training_and_listed",
    "tests/training/test_verification.py::test_a_model_that_learnt_from_validation_photos",  # 27 s
    "tests/training/test_verification.py::test_without_folds_the_validation_split_is_answered",  # 40 s
    "tests/training/test_backfill.py::test_two_worker_processes_write_the_same_caches_as_one",  # 23 s
    "tests/vision/test_efficientnet_lite.py::test_port_gives_the_reference_logits_on_real_photos",  # PyTorch
    "tests/filter/test_function.py::test_weights_that_pass_the_start_check_but_do_not_fit_fail_each_event",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the SLOW tests (see above)."""
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


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
