"""The backfill: stable hash shards, a killed task resumed from the per-photo caches, Cloud Run task
settings, and two worker processes writing the same caches as one (real photos, real backbone)."""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mountainid.arrays import load_array
from mountainid.bucket import ACCEPTED, embedding_name, local_features_name
from mountainid.catalog import slugify
from mountainid.config import Settings
from mountainid.store import BlobStore, LocalBlobStore
from mountainid.training import backfill
from mountainid.training.dataset import Example
from mountainid.training.folders import photo_id_of
from mountainid.training.shards import shard_of
from mountainid.vision.features import FeatureExtractor
from tests.training.conftest import run_at_a_terminal

REPO = Path(__file__).resolve().parents[2]


def put_accepted(store: BlobStore, photo_dir: Path, count: int) -> list[str]:
    """``count`` real photos under accepted/<slug>/<id>.jpg, as the filter leaves them but without their
    caches (photos accepted before a new backbone or extractor). Returns their ids."""
    ids = []
    for path in sorted(photo_dir.rglob("*.jpg"))[:count]:
        data = path.read_bytes()
        photo_id = photo_id_of(data)
        store.put(f"{ACCEPTED}{slugify(path.parent.name)}/{photo_id}.jpg", data, content_type="image/jpeg")
        ids.append(photo_id)
    return ids


def cache_names(photo_ids: list[str], feature_id: str) -> dict[str, set[str]]:
    return {"embeddings": {embedding_name(feature_id, i) for i in photo_ids},
            "keypoints": {local_features_name(i) for i in photo_ids}}


class Killed(Exception):
    """The task died: no write gets through any more."""


class Writes:
    """Records every object name written to ``store``; once ``limit`` names are written, every further
    write fails, as when the task is killed at that point."""

    def __init__(self, store: BlobStore, monkeypatch: pytest.MonkeyPatch, limit: int | None = None) -> None:
        self.names: list[str] = []
        self.limit = limit
        self._lock = threading.Lock()
        put = store.put

        def counted(name: str, data: bytes, **options: object) -> int:
            with self._lock:
                if len(self.names) == self.limit:
                    raise Killed(name)
                self.names.append(name)
            return put(name, data, **options)

        monkeypatch.setattr(store, "put", counted)


def backfill_args(*argv: str) -> argparse.Namespace:
    """``mountainid backfill ARGV`` parsed by the real subcommand parser."""
    parser = argparse.ArgumentParser()
    backfill.configure("backfill", parser)
    return parser.parse_args(list(argv))


def test_every_photo_is_in_exactly_one_shard_the_same_in_every_process() -> None:
    rng = random.Random(13)
    ids = ([str(rng.randrange(10**10, 10**11)) for _ in range(1500)]  # Flickr ids
           + [hashlib.sha256(str(i).encode()).hexdigest()[:20] for i in range(1500)]  # photo-folder ids
           + ["1", "a", "-", "_x"])
    examples = [Example(photo_id, "k2", f"accepted/k2/{photo_id}.jpg", {}) for photo_id in ids]
    for tasks in (1, 2, 3, 7, 10, 16):
        shards = [backfill.shard(examples, task, tasks) for task in range(tasks)]
        names = [name for photos in shards for _, name in photos]
        assert sorted(names) == sorted(e.object_name for e in examples)  # each in one shard, none left out
        sizes = [len(photos) for photos in shards]
        assert all(abs(size - len(ids) / tasks) < 0.3 * len(ids) / tasks for size in sizes), sizes  # even enough
    # sha256 of the id, not Python's hash() (salted per process): the same values on any machine, any run.
    assert [shard_of(i, n) for i, n in [("53012345678", 7), ("53012345678", 97), ("8f2c1e0a9b7d6c5e4f3a", 10),
                                                  ("8f2c1e0a9b7d6c5e4f3a", 1000), ("49265001357", 13)]] == [1, 91, 1, 911, 6]


def test_a_killed_task_run_again_computes_only_what_is_missing(store: BlobStore, photo_dir: Path, settings: Settings,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The kill is every write failing after the 7th: the task stops as a killed one does, at a known
    point (a SIGKILL would race the loaders' writer threads, and the counts below would vary)."""
    ids = put_accepted(store, photo_dir, 8)
    expected = cache_names(ids, FeatureExtractor(settings).feature_id)
    monkeypatch.setattr(backfill, "CHUNK", 3)  # several chunks, so the kill lands in the middle of the work
    writes = Writes(store, monkeypatch, limit=7)
    with pytest.raises(Killed):
        backfill.run_task(settings, store, 0, 1)
    before_kill = set(writes.names)
    assert len(before_kill) == 7

    writes.names.clear()
    writes.limit = None
    summary = backfill.run_task(settings, store, 0, 1)
    assert not set(writes.names) & before_kill, "finished work was done again"
    assert set(writes.names) | before_kill == expected["embeddings"] | expected["keypoints"]
    done_embeddings = len(expected["embeddings"] & set(before_kill))
    assert 0 < done_embeddings < len(ids)  # the kill was half-way
    assert (summary.photos, summary.embeddings_computed, summary.keypoints_computed, summary.unusable) == (
        8, 8 - done_embeddings, 8 - (7 - done_embeddings), 0)

    # A corrupt entry of each kind is recomputed; everything else is read from the cache.
    store.put(min(expected["embeddings"]), b"\x93NUMPY garbage")
    store.put(max(expected["keypoints"]), b"PK\x03\x04 truncated")
    again = backfill.run_task(settings, store, 0, 1)
    assert (again.embeddings_computed, again.keypoints_computed) == (1, 1)
    last = backfill.run_task(settings, store, 0, 1)
    assert (last.photos, last.embeddings_computed, last.keypoints_computed) == (8, 0, 0)


def test_a_cloud_run_task_fills_only_its_shard(tmp_path: Path, photo_dir: Path, make_settings) -> None:
    settings = make_settings(CLOUD_RUN_TASK_INDEX="1", CLOUD_RUN_TASK_COUNT="3")
    store = LocalBlobStore(settings.local_root)
    ids = put_accepted(store, photo_dir, 9)
    mine = [i for i in ids if shard_of(i, 3) == 1]
    assert 0 < len(mine) < len(ids)
    args = backfill_args("--tasks", "1")
    assert args.func(args, settings) == 0
    names = cache_names(mine, FeatureExtractor(settings).feature_id)
    assert set(store.list_names("embeddings/")) == names["embeddings"]
    assert set(store.list_names("localfeatures/")) == names["keypoints"]


def test_bad_task_settings_and_weights_are_clear_errors_before_any_work(tmp_path: Path, weights_path: Path) -> None:
    env = {**os.environ, "MOUNTAINID_BUCKET": str(tmp_path / "bucket"), "MOUNTAINID_WEIGHTS": str(weights_path),
           "CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "4"}
    result = subprocess.run([sys.executable, "-m", "mountainid.cli", "backfill", "--tasks", "2"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "set the number of tasks in one place" in result.stderr, result.stderr
    result = subprocess.run([sys.executable, "-m", "mountainid.cli", "backfill"], cwd=REPO, capture_output=True,
                            env={**env, "CLOUD_RUN_TASK_INDEX": "4"}, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "CLOUD_RUN_TASK_INDEX" in result.stderr, result.stderr
    result = subprocess.run([sys.executable, "-m", "mountainid.cli", "backfill", "--tasks", "2"], cwd=REPO,
                            capture_output=True, env={**env, "CLOUD_RUN_TASK_COUNT": "1", "MOUNTAINID_WEIGHTS": "nowhere.h5"},
                            text=True, timeout=120, check=False)
    assert result.returncode == 2 and "weights file not found: nowhere.h5" in result.stderr, result.stderr
    assert not (tmp_path / "bucket").exists()


@pytest.mark.slow
def test_two_worker_processes_write_the_same_caches_as_one(tmp_path: Path, photo_dir: Path, make_settings,
                                                           weights_path: Path) -> None:
    """Local store only: two spawned processes each load TensorFlow and the backbone (~10 s on 2 cores)."""
    one = make_settings(MOUNTAINID_BUCKET=str(tmp_path / "one"))
    ids = put_accepted(LocalBlobStore(one.local_root), photo_dir, 10)
    put_accepted(LocalBlobStore(tmp_path / "two"), photo_dir, 10)
    backfill.run_task(one, LocalBlobStore(one.local_root), 0, 1)

    env = {**os.environ, "MOUNTAINID_BUCKET": str(tmp_path / "two"), "MOUNTAINID_WEIGHTS": str(weights_path)}
    returncode, terminal = run_at_a_terminal([sys.executable, "-m", "mountainid.cli", "backfill", "--tasks", "2"],
                                             env, REPO)
    assert returncode == 0, terminal[-3000:]
    assert re.search(r"backfill +━+ +10/10 ETA", terminal)  # one bar over both workers
    assert not re.search(r"(features|keypoints) +━", terminal)  # no bar inside it
    summaries = re.findall(r"backfill task finished .*task=(\d) tasks=2 photos=(\d+) embeddings_computed=(\d+) "
                           r"keypoints_computed=(\d+)", terminal)
    assert sorted(s[0] for s in summaries) == ["0", "1"]  # one line per task, instead of the loaders' per chunk
    assert "features ready" not in terminal and "keypoints ready" not in terminal
    assert all(photos == embeddings == keypoints for _, photos, embeddings, keypoints in summaries)
    assert "oneDNN" not in terminal  # no TensorFlow start-up noise from the workers

    reference, parallel = LocalBlobStore(tmp_path / "one"), LocalBlobStore(tmp_path / "two")
    names = cache_names(ids, FeatureExtractor(one).feature_id)
    assert set(parallel.list_names("embeddings/")) == names["embeddings"] == set(reference.list_names("embeddings/"))
    for name in names["keypoints"]:
        assert parallel.get(name) == reference.get(name)
    for name in names["embeddings"]:
        # Batches of other photos round the last float bits differently (oneDNN); nothing more.
        np.testing.assert_allclose(load_array(parallel.get(name)), load_array(reference.get(name)), rtol=0, atol=1e-5)
