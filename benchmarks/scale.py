"""Scaling benchmark: a retrain from cache on synthetic buckets of 1k, 10k and 100k photos.

Each bucket holds N accepted/ photos (tiny placeholder objects, 40 mountains, photographers of 5 photos
in the metadata, as Flickr's) and their filter embeddings (1280-d float32 per-photo cache objects, random
around a per-mountain centre), then ``mountainid consolidate`` packs them into shards. Each measurement
runs in a child process of its own, so its peak memory (ru_maxrss) is its own:

- listing: ``list_accepted`` of accepted/;
- features, one by one: ``load_features`` before the consolidation (one object per photo);
- consolidate: ``consolidate`` (timed in the parent);
- retrain from cache: listing, dataset, ``load_features`` (from the shards), ``train_head``, the validation
  threshold and test metrics, ``gallery.npz`` and the model version written to the registry, as the job
  does. Not included: keypoint verification (a keypoint gallery of every training photo is 0.5 MB a photo,
  35 GB at 100k: the site already verifies such galleries against a shortlist from the bucket) and the
  near-duplicate check (quadratic in photos; the photos carry no hash here);
- web model load: ``Predictor.load`` of that version (head, gallery embeddings, backbone, probe).

Run: ``nice -n 10 .venv/bin/python benchmarks/scale.py [--sizes 1000 10000 100000] [--gcs-sizes 1000 10000]
[--plot docs/scaling.png]``. Takes ``mountainid train``'s flags; the default is the head-only tier on the
filter's embeddings (``--cut '' --augment-views 0``), the features a synthetic bucket can hold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MOUNTAINID_SHARED", REPO.parent / "shared")).resolve()
WEIGHTS = SHARED / "models" / "imagenet" / "mobilenet_v2_1.0_224_imagenet.weights.h5"
MOUNTAINS = 40
BURST = 5  # photos per photographer: a burst never straddles two splits
PROJECT = "mountainid-bench"


def photo_id(index: int) -> str:
    return hashlib.sha256(f"synthetic-{index}".encode()).hexdigest()[:20]  # like a real photo's content hash


def populate(store, size: int, feature_id: str, workers: int) -> None:
    """accepted/<mountain>/<id>.jpg placeholders and embeddings/<feature_id>/<id>.npy, as the filter writes them."""
    from mountainid.bucket import embedding_name
    from mountainid.training.features import encode_vector
    from mountainid.vision.backbone import EMBEDDING_DIM

    centres = np.random.default_rng(0).uniform(0, 1, (MOUNTAINS, EMBEDDING_DIM)).astype(np.float32)

    def one(index: int) -> None:
        rng = np.random.default_rng(index)
        mountain = index % MOUNTAINS
        store.put(f"accepted/mountain-{mountain:02d}/{photo_id(index)}.jpg", b"placeholder",
                  metadata={"owner": f"user{index // (BURST * MOUNTAINS)}-{mountain}"}, content_type="image/jpeg")
        vector = np.maximum(centres[mountain] * 0.5 + rng.normal(0, 0.5, EMBEDDING_DIM), 0)  # pooled ReLU6 >= 0
        store.put(embedding_name(feature_id, photo_id(index)), encode_vector(vector), content_type="application/x-npy")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(size)))


def child(stage: str, config: str) -> dict:
    """One measurement in this (child) process; its figures, peak memory included."""
    from mountainid.config import load_settings
    from mountainid.store import open_store
    from mountainid.training.dataset import list_accepted
    from mountainid.training.features import load_features
    from mountainid.vision.features import FeatureExtractor

    settings = load_settings()
    store = open_store(settings)
    figures: dict = {}
    started = time.perf_counter()
    if stage == "listing":
        figures["photos"] = len(list_accepted(store))
    elif stage == "features":
        examples = list_accepted(store)
        extractor = FeatureExtractor(settings)
        started = time.perf_counter()
        matrix, _ = load_features(store, [(e.photo_id, e.object_name) for e in examples], extractor, settings)
        figures["photos"] = len(matrix)
    elif stage == "retrain":
        figures.update(retrain(store, settings, config))
    elif stage == "web":
        from mountainid.predict import Predictor
        from mountainid.registry import Registry

        Predictor.load(store, Registry(store).live().version, settings)
    else:
        raise ValueError(stage)
    figures["seconds"] = time.perf_counter() - started
    figures["peak_mb"] = peak_mb()
    return figures


def peak_mb() -> float:
    """This process's peak RSS since exec (VmHWM; ru_maxrss would carry the parent's over from the fork)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def retrain(store, settings, config_json: str) -> dict:
    """The training job's steps from cache that a synthetic bucket can hold (see the module docstring)."""
    from mountainid.bucket import new_version
    from mountainid.registry import Registry
    from mountainid.training import evaluate
    from mountainid.training.dataset import build_dataset, list_accepted
    from mountainid.training.features import load_features
    from mountainid.training.job import JobConfig, gallery_files, head_probabilities, json_bytes, keras_bytes
    from mountainid.training.train import HeadConfig, train_head
    from mountainid.vision.features import FeatureExtractor, FeatureSpec

    given = json.loads(config_json)
    config = JobConfig(FeatureSpec.from_dict(given["features"]), HeadConfig(**given["head"]))
    started = time.perf_counter()
    extractor = FeatureExtractor(settings, config.features)  # the backbone (its feature id): a constant cost
    setup_s = time.perf_counter() - started
    examples = list_accepted(store)
    listing_s = time.perf_counter() - started
    dataset = build_dataset(examples, settings.min_photos_per_class)
    features, usable = load_features(store, [(e.photo_id, e.object_name) for e in dataset.examples], extractor,
                                     settings)
    features_s = time.perf_counter() - started
    rows = {e.photo_id: row for row, e in enumerate(e for e, ok in zip(dataset.examples, usable, strict=True) if ok)}
    parts = {split: [e for e in dataset.examples if e.split == split and e.photo_id in rows]
             for split in ("train", "val", "test")}
    x, y = ({split: features[[rows[e.photo_id] for e in parts[split]]] for split in parts},
            {split: np.asarray(dataset.targets(parts[split]), np.int64) for split in parts})
    head, _ = train_head(x["train"], y["train"], x["val"], y["val"], len(dataset.labels), config.head, extractor)
    trained_s = time.perf_counter() - started
    labels = list(dataset.labels)
    threshold = evaluate.choose_answer_threshold(head_probabilities(head, x["val"], len(labels)), y["val"])
    test = evaluate.metrics(head_probabilities(head, x["test"], len(labels)), y["test"], labels, threshold)
    version = new_version()
    registry = Registry(store)
    registry.write_version(version, {
        "model.keras": keras_bytes(head),
        "labels.json": json_bytes({"labels": labels, "names": {s: s for s in labels}, "mountains": {}}),
        "config.json": json_bytes({"features": config.features.to_dict(), "feature_id": extractor.feature_id,
                                   "head": config.head.to_dict(), "min_photos_per_class": settings.min_photos_per_class}),
        "dataset.json": json_bytes(dataset.manifest()),
        "metrics.json": json_bytes({"version": version, "labels": labels, "unknown_threshold": threshold,
                                    "test": {k: test[k] for k in ("top1", "n")}}),
        **gallery_files(store, settings, dataset, parts["train"], extractor),
    })
    registry.promote(version, 0, test_top1=test["top1"])
    return {"setup_s": setup_s, "listing_s": listing_s - setup_s, "features_s": features_s - listing_s, "head_s": trained_s - features_s,
            "train_photos": len(x["train"]), "test_top1": test["top1"]}


def measure(stage: str, env: dict[str, str], config: str) -> dict:
    """Run one stage in a child process (its own peak memory); its figures."""
    done = subprocess.run([sys.executable, __file__, "--stage", stage, "--config", config], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"stage {stage} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(backend: str, store, env: dict[str, str], size: int, config: str, workers: int) -> dict:
    """Every figure of one synthetic bucket, filled from empty."""
    from mountainid.config import load_settings
    from mountainid.training.consolidate import consolidate
    from mountainid.vision.backbone import get_backbone

    settings = load_settings(env)
    started = time.perf_counter()
    populate(store, size, get_backbone(settings.weights).backbone_id, workers)
    row: dict = {"store": backend, "size": size, "populate_s": time.perf_counter() - started}
    row["listing"] = measure("listing", env, config)
    row["singly"] = measure("features", env, config)
    started = time.perf_counter()
    consolidate(store, settings)
    row["consolidate_s"] = time.perf_counter() - started
    row["retrain"] = measure("retrain", env, config)
    row["web"] = measure("web", env, config)
    print(line(row), flush=True)
    return row


def line(row: dict) -> str:
    r = row["retrain"]
    return (f"{row['store']:<5} {row['size']:>7,} photos: listing {row['listing']['seconds']:6.1f} s | features one by "
            f"one {row['singly']['seconds']:6.1f} s | consolidate {row['consolidate_s']:6.1f} s | retrain "
            f"{r['seconds']:6.1f} s (backbone {r['setup_s']:.1f}, listing {r['listing_s']:.1f}, features {r['features_s']:.1f}, head "
            f"{r['head_s']:.1f}), peak {r['peak_mb']:6.0f} MB, test top-1 {r['test_top1']:.3f} | web load "
            f"{row['web']['seconds']:5.1f} s, peak {row['web']['peak_mb']:5.0f} MB")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axes, memory_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend, style in (("local", "o-"), ("gcs", "s--")):
        mine = [r for r in rows if r["store"] == backend]
        if not mine:
            continue
        sizes = [r["size"] for r in mine]
        label = "local store" if backend == "local" else "fake-gcs-server"
        time_axes.plot(sizes, [r["retrain"]["seconds"] for r in mine], style, label=f"retrain from cache, {label}")
        time_axes.plot(sizes, [r["singly"]["seconds"] for r in mine], style, alpha=0.5,
                       label=f"features one object a photo, {label}")
        memory_axes.plot(sizes, [r["retrain"]["peak_mb"] for r in mine], style, label=f"retrain, {label}")
        memory_axes.plot(sizes, [r["web"]["peak_mb"] for r in mine], style, alpha=0.5, label=f"web model load, {label}")
    time_axes.axhline(120, color="grey", lw=0.8, ls=":")
    time_axes.axhline(900, color="grey", lw=0.8, ls=":")
    for axes, title, unit in ((time_axes, "wall time", "seconds"), (memory_axes, "peak memory (RSS)", "MB")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("accepted photos")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=7)
    figure.suptitle("MountainID retrain from cache (head-only tier, 2 CPU cores); targets 2 min at 10k, 15 min at 100k")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mountainid.training.cli import add_training_flags, job_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000], help="local store")
    parser.add_argument("--gcs-sizes", type=int, nargs="*", default=[1000, 10000], help="fake-gcs-server")
    parser.add_argument("--plot", type=Path, help="write the curves to this PNG, e.g. docs/scaling.png")
    parser.add_argument("--json", type=Path, help="append every row to this file (JSON lines)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # a child process: one measurement ...
    parser.add_argument("--config", help=argparse.SUPPRESS)  # ... of this JobConfig
    add_training_flags(parser)
    parser.set_defaults(cut="", head_augment_views=0)  # the head-only tier unless flags say otherwise
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(child(args.stage, args.config)))
        return
    job = job_config(args)
    config = json.dumps({"features": job.features.to_dict(), "head": job.head.to_dict()})
    print(f"features: {job.features}\nhead: {job.head}", flush=True)
    base = {**os.environ, "MOUNTAINID_WEIGHTS": str(WEIGHTS), "MOUNTAINID_LOG_LEVEL": "WARNING",
            "TF_CPP_MIN_LOG_LEVEL": "3", "MOUNTAINID_SHARD_MB": "64"}
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        if args.json:
            with args.json.open("a") as output:
                output.write(json.dumps(row) + "\n")

    from mountainid.store import LocalBlobStore

    for size in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix=f"mountainid-scale-{size}-"))
        try:
            record(bench("local", LocalBlobStore(folder), {**base, "MOUNTAINID_BUCKET": str(folder)}, size,
                              config, workers=4))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if args.gcs_sizes:
        from harness.localcloud import FakeGcsServer
        from mountainid.store.gcs import GcsBlobStore, storage_client

        with FakeGcsServer(project=PROJECT) as server:
            for size in args.gcs_sizes:
                bucket = f"scale-{size}"
                storage_client(PROJECT, server.url).create_bucket(bucket)
                env = {**base, **server.env, "MOUNTAINID_BUCKET": f"gs://{bucket}", "GOOGLE_CLOUD_PROJECT": PROJECT}
                record(bench("gcs", GcsBlobStore(bucket, PROJECT, emulator_host=server.url), env, size, config,
                                  workers=16))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
