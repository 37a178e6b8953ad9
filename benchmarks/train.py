"""Training benchmark on ../shared/data/peaks14 (537 photos, 14 mountains).

Prints: wall time from raw photos (folder import through the filter, features, training,
evaluation, plots, registry), wall time of a retrain from cached features (median of
--repeats), test top-1 (with its 95 % interval) and top-3 on the hash split, of the answer as served
(classifier fused with keypoint verification) and of the classifier alone, the confident answers'
precision and coverage, then ``benchmarks/answers.py``'s figures of the answer as served. Takes the same flags as ``mountainid train``;
``--tier fast`` and ``--tier finetune`` score on the same test photos, so their figures compare.

    .venv/bin/python benchmarks/train.py [--tier finetune] [--repeats 1] [--confusion-out docs/confusion.png]
                                         [--bucket DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import answers  # benchmarks/answers.py: the answer's figures, shared with this script

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MOUNTAINID_SHARED", REPO.parent / "shared")).resolve()


def main() -> None:
    from mountainid.training.cli import add_training_flags, job_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=SHARED / "data" / "peaks14")
    parser.add_argument("--repeats", type=int, default=3, help="retrains from cached embeddings")
    parser.add_argument("--confusion-out", type=Path, help="copy the model's confusion matrix PNG here")
    parser.add_argument("--bucket", type=Path, help="train into this (empty) folder and keep it, e.g. for "
                                                     "benchmarks/web.py --bucket (default: a temporary one)")
    add_training_flags(parser)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from mountainid import logs
    from mountainid.catalog import load_catalog
    from mountainid.config import load_settings
    from mountainid.events import InProcessBus
    from mountainid.store import LocalBlobStore
    from mountainid.training.folders import import_folder
    from mountainid.training.job import train_and_register

    bucket = args.bucket or Path(tempfile.mkdtemp(prefix="mountainid-bench-"))
    settings = load_settings({
        "MOUNTAINID_BUCKET": str(bucket), "MOUNTAINID_CATALOG": "peaks14", "MOUNTAINID_LOG_LEVEL": "WARNING",
        "MOUNTAINID_WEIGHTS": os.environ.get("MOUNTAINID_WEIGHTS", str(
            SHARED / "models" / "imagenet" / "mobilenet_v2_1.0_224_imagenet.weights.h5"))})
    logs.configure(settings)
    store, bus, config = LocalBlobStore(bucket), InProcessBus(), job_config(args)
    try:
        started = import_started = time.perf_counter()
        counts = import_folder(store, settings, args.photos, load_catalog(settings.catalog))
        imported = time.perf_counter()
        first = train_and_register(settings, store, bus, config)
        from_raw = time.perf_counter() - started
        cached = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            train_and_register(settings, store, bus, config)
            cached.append(time.perf_counter() - started)
        if args.confusion_out:
            args.confusion_out.parent.mkdir(parents=True, exist_ok=True)
            args.confusion_out.write_bytes(store.get(f"models/{first.version}/confusion.png"))
        print(f"photos: {sum(counts.values())} imported, {counts['accepted']} accepted by the filter, "
              f"{counts['rejected']} rejected")
        print(f"tier: {config.tier}")
        print(f"features: {config.features}")
        print(f"head: {config.head}")
        print(f"from raw photos: {from_raw:.1f} s wall (of which import through the filter "
              f"{imported - import_started:.1f} s)")
        if cached:
            print(f"retrain from cached features: median {statistics.median(cached):.1f} s "
                  f"(runs: {', '.join(f'{c:.1f}' for c in cached)}; evaluation, plots, registry included)")
        low, high = first.test["top1_interval"]
        print(f"test split: n={first.test['n']} top1={first.test['top1']:.3f} (95% interval {low:.3f}-{high:.3f}) "
              f"top3={first.test['top3']:.3f} macro_f1={first.test['macro_f1']:.3f}")
        print(f"answered outright (threshold from validation): coverage={first.test['coverage']:.3f} "
              f"confident_precision={first.test['confident_precision']:.3f}")
        answers.report(store, first.version, settings)
    finally:
        if not args.bucket:
            shutil.rmtree(bucket, ignore_errors=True)


if __name__ == "__main__":
    main()
