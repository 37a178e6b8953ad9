"""Backfill: wall time of ``mountainid backfill --tasks 1`` and ``--tasks 2`` on real photos whose caches are absent.

Run: ``.venv/bin/python benchmarks/backfill.py [--photos 200] [--rounds 3]``. The photos (peaks14, in name
order, round-robin over the mountains) go into ``accepted/`` of a temporary local bucket; before every run
``embeddings/``, ``localfeatures/`` and the shards packed from them are deleted, so each run computes
every embedding and keypoint set. A run is the whole command in a fresh process, start-up and backbone
loading included (each worker loads its own). Prints the median of each, and the ratio. Target: 2 workers at least 1.6x faster than 1.
Each run's CPU time (user + system, workers included) is printed too: divided by the wall time it tells
how many cores the run kept busy, which bounds what a second worker can gain on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mountainid.bucket import EMBEDDINGS, LOCAL_FEATURES, SHARDS, accepted_name
from mountainid.catalog import slugify
from mountainid.store import LocalBlobStore
from mountainid.training.folders import photo_id_of

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOUNTAINID_SHARED", REPO.parent / "shared"))
WEIGHTS = SHARED / "models" / "imagenet" / "mobilenet_v2_1.0_224_imagenet.weights.h5"


def fill_accepted(store: LocalBlobStore, photos: int) -> None:
    """``photos`` real photos under accepted/<slug>/<id>.jpg, as the filter leaves them (caches aside)."""
    folders = sorted(p for p in (SHARED / "data" / "peaks14").iterdir() if p.is_dir())
    files = [sorted(folder.iterdir()) for folder in folders]
    chosen = [row[i] for i in range(max(map(len, files))) for row in files if i < len(row)][:photos]
    for path in chosen:
        data = path.read_bytes()
        store.put(accepted_name(slugify(path.parent.name), photo_id_of(data)), data, content_type="image/jpeg")


def backfill_s(bucket: Path, tasks: int) -> float:
    """Wall time of one run (caches deleted first); prints it with the run's CPU time."""
    for prefix in (EMBEDDINGS, LOCAL_FEATURES, SHARDS):  # per-photo caches and the shards packed from them
        shutil.rmtree(bucket / prefix, ignore_errors=True)
    env = {**os.environ, "MOUNTAINID_BUCKET": str(bucket), "MOUNTAINID_WEIGHTS": str(WEIGHTS),
           "MOUNTAINID_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mountainid.cli", "backfill", "--tasks", str(tasks)], env=env,
                            capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr[-2000:]
    cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    print(f"  --tasks {tasks}: {seconds:6.1f} s wall, {cpu:6.1f} s CPU ({cpu / seconds:.2f} cores busy)   "
          f"{result.stdout.strip().split(': ', 1)[-1]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bucket = Path(folder) / "bucket"
        fill_accepted(LocalBlobStore(bucket), args.photos)
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.rounds):  # interleaved, so a busy spell on the shared machine hits both
            for tasks, samples in times.items():
                samples.append(backfill_s(bucket, tasks))
    one, two = (statistics.median(times[n]) for n in (1, 2))
    print(f"{args.photos} photos, median of {args.rounds}: --tasks 1 {one:.1f} s, --tasks 2 {two:.1f} s, "
          f"speed-up {one / two:.2f}x (target >= 1.6x)")


if __name__ == "__main__":
    main()
