"""Training test fixtures: a small real photo set, imported once through the filter, copied per test.

The set is three peaks14 mountains; from each, 8 training-split photos plus every validation-
and test-split photo (the split comes from the photo's content hash), so the test split is big
enough (about 20 photos) for two models to differ on it, while a head trains in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pty
import shutil
import subprocess
from pathlib import Path

import pytest

from mountainid.catalog import load_catalog
from mountainid.config import Settings, load_settings
from mountainid.store import BlobStore, LocalBlobStore
from mountainid.training.dataset import split_of
from mountainid.training.folders import import_folder, photo_id_of
from mountainid.training.job import FINETUNE_TIER, JobConfig
from mountainid.training.train import HeadConfig
from mountainid.vision.features import FeatureSpec
from tests.terminal import read_until_closed

MOUNTAINS = ("Broad Peak", "Lhotse", "Nanga Parbat")
TRAIN_PER_CLASS = 8
# A quick head: enough to learn the three peaks, a few seconds on two cores. It is calibrated on the
# validation split (as `--calibration-folds 0` does), which trains one head instead of three: the job's
# bookkeeping is what most tests are about. FOLDED is the fast tier's released way (four folds by default,
# two here: the same code with half the fold heads), for the tests of calibration out of fold.
FAST = JobConfig(FeatureSpec(), HeadConfig(epochs=60, patience=15), lease_s=600, calibration_folds=0)
FOLDED = dataclasses.replace(FAST, calibration_folds=2)
# The fine-tune tier made small: EfficientNet-Lite2 at 160 px, blocks 16-20 trained on one view, a few epochs.
TINY_FINE_TUNE_FLAGS = ["--tier", "finetune", "--input-size", "160", "--cut", "block15", "--augment-views", "1"]
TINY_FINE_TUNE = dataclasses.replace(FINETUNE_TIER, features=FeatureSpec(160, cut="block15", backbone="efficientnet_lite2"),
                                     head=dataclasses.replace(FINETUNE_TIER.head, epochs=4, augment_views=1),
                                     lease_s=600)


def training_env(weights_path: Path, bucket: str) -> dict[str, str]:
    return {"MOUNTAINID_BUCKET": bucket, "MOUNTAINID_WEIGHTS": str(weights_path),
            "MOUNTAINID_CATALOG": "peaks14", "MOUNTAINID_MIN_PHOTOS_PER_CLASS": "5",
            "MOUNTAINID_RETRAIN_MIN_NEW_PHOTOS": "10",
            "MOUNTAINID_PROMOTION_MIN_TEST": "10"}  # the set's test split holds about 20 photos


@pytest.fixture(scope="session")
def photo_dir(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mountain subfolders of real photos, chosen by split as described above (copied to tmp)."""
    root = tmp_path_factory.mktemp("photos")
    for mountain in MOUNTAINS:
        (root / mountain).mkdir()
        train = 0
        for path in sorted((shared_dir / "data" / "peaks14" / mountain).iterdir()):
            split = split_of(photo_id_of(path.read_bytes()))
            if split == "train":
                if train == TRAIN_PER_CLASS:
                    continue
                train += 1
            shutil.copy(path, root / mountain / path.name)
    return root


@pytest.fixture(scope="session")
def extra_dir(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """More training-split photos of the same mountains: the bucket growing between runs."""
    root = tmp_path_factory.mktemp("extra")
    for mountain in MOUNTAINS:
        (root / mountain).mkdir()
        train = [p for p in sorted((shared_dir / "data" / "peaks14" / mountain).iterdir())
                 if split_of(photo_id_of(p.read_bytes())) == "train"]
        for path in train[TRAIN_PER_CLASS:TRAIN_PER_CLASS + 5]:
            shutil.copy(path, root / mountain / path.name)
    return root


@pytest.fixture(scope="session")
def session_settings(weights_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(training_env(weights_path, str(tmp_path_factory.mktemp("unused-bucket"))))


@pytest.fixture(scope="session")
def template(photo_dir: Path, session_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> LocalBlobStore:
    """A bucket after the filter judged the photo set: accepted/ photos and their cached embeddings."""
    store = LocalBlobStore(tmp_path_factory.mktemp("template"))
    counts = import_folder(store, session_settings, photo_dir, load_catalog("peaks14"))
    assert counts["accepted"] >= 50, counts
    return store


def copy_objects(source: BlobStore, target: BlobStore, prefixes: tuple[str, ...] = ("accepted/", "embeddings/", "localfeatures/")) -> int:
    copied = 0
    for prefix in prefixes:
        for blob in source.list(prefix):
            target.put(blob.name, source.get(blob.name), metadata=blob.metadata, content_type=blob.content_type)
            copied += 1
    return copied


@pytest.fixture()
def seeded(store: BlobStore, template: LocalBlobStore) -> BlobStore:
    """The parametrized store (local folder / fake-gcs-server bucket) holding the judged photo set."""
    copy_objects(template, store)
    return store


@pytest.fixture()
def local_seeded(tmp_path: Path, template: LocalBlobStore) -> LocalBlobStore:
    """The judged photo set in a local folder, for tests of the job's decisions, which do not depend on the
    backend; what does (promotion, the lease, a failed upload, one listing a run) takes ``seeded``, both."""
    store = LocalBlobStore(tmp_path / "bucket")
    copy_objects(template, store)
    return store


@pytest.fixture()
def settings(session_settings: Settings) -> Settings:
    return session_settings


def cli_args(name: str, argv: list[str]) -> argparse.Namespace:
    """Parse a `mountainid train|evaluate` command line with the real subcommand parser."""
    from mountainid.training.cli import configure

    parser = argparse.ArgumentParser()
    configure(name, parser)
    return parser.parse_args(argv)


def run_at_a_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run a command with stderr on a pseudo-terminal, as when a person runs it: (exit code, what it showed)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = read_until_closed(leader)
    process.wait(timeout=300)
    return process.returncode, seen
