"""Fine-tune recipes compared on validation photos, each with several seeds, with their learning curves.

Reads a bucket that a ``mountainid train --tier finetune`` run filled (its cached activation maps are
reused, so no backbone pass is repeated), trains the tier's head once per recipe and seed on the
training split, and scores it on the validation split only (the test split is never read: a recipe
is chosen here, then measured once by the training job). One line per run, then per recipe the median
and spread over seeds of the final validation top-1, with and without mirror averaging::

    .venv/bin/python benchmarks/finetune.py --bucket var/bucket --seeds 0 1 \\
        --recipe today: --recipe plain:map_augment=0,mixup=0,epochs=14

A recipe overrides fields of the tier's ``HeadConfig`` (``augment_views`` included: more cached views are
computed once and kept). ``--curves FILE.json`` keeps every run's per-epoch figures and validation
probabilities. ``--ensemble N`` also scores the heads of each N consecutive seeds averaged, as serving
N heads side by side would answer (``--seeds 0 1 2 3 --ensemble 2``: two pairs, so a spread)::

    .venv/bin/python benchmarks/finetune.py --bucket var/bucket --seeds 0 1 2 3 --ensemble 2 \
        --recipe half:epochs=4

``--train-share 0.8`` trains each seed on 80 % of the training photos (whole photographers, drawn by the
seed) and scores on the same validation photos: the slope says what more photos would be worth (``--refit``).

``--fused`` also scores what the site would answer: the validation photos verified against a gallery of
the training photos, and each head (and its mirror average) fused with that evidence by a calibration
fitted on those same answers, as the tier calibrates itself (``calibration_folds`` 0). The fit sees the
photos it scores, so the figure is optimistic alike for every recipe: a comparison, not a promise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mountainid.config import Settings
    from mountainid.store import BlobStore
    from mountainid.training.job import Prepared


def recipe(text: str) -> tuple[str, dict[str, object]]:
    """``name:field=value,field=value`` over HeadConfig's fields (types taken from the defaults)."""
    from mountainid.training.train import HeadConfig

    name, _, rest = text.partition(":")
    defaults = HeadConfig()
    chosen: dict[str, object] = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        if not hasattr(defaults, key):
            raise argparse.ArgumentTypeError(f"{key} is not a HeadConfig field")
        kind = type(getattr(defaults, key))
        chosen[key] = bool(int(value)) if kind is bool else kind(float(value)) if kind is int else kind(value)
    return name, chosen


def validation_evidence(settings: Settings, store: BlobStore, prepared: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """The validation photos' verification scores against a gallery of the training photos, and the peaks
    the served gallery shows in one view: what the fine-tune tier's calibration fuses with (the job's own
    keypoints and gallery, ``verify``, as ``benchmarks/heads.py`` reads them)."""
    from mountainid.training import calibrate
    from mountainid.training.job import verify

    verified = verify(store, settings, prepared)
    photos = prepared.parts["train"] + prepared.parts["val"]
    classes = len(prepared.labels)
    held = np.asarray([0 if e.split == "val" else -1 for e in photos])
    scores = calibrate.out_of_fold(held, prepared.dataset.targets(photos), classes, [e.photo_id for e in photos],
                                   verified.keypoints["train"] + verified.keypoints["val"],
                                   lambda _, held_out: np.zeros((int(held_out.sum()), classes), np.float32)).scores
    return scores, verified.in_view


def fused_top1(probs: np.ndarray, scores: np.ndarray, targets: np.ndarray, in_view: np.ndarray) -> float:
    """Top-1 of the served answer: ``probs`` fused with the evidence by a calibration fitted on these answers."""
    from mountainid.training import calibrate, evaluate

    calibration = calibrate.fit(calibrate.Answers(probs, scores, targets), in_view)
    return evaluate.top_k(calibration.fuse(probs, scores, in_view), targets, 1)


def photographers_share(prepared: Prepared, share: float, seed: int) -> np.ndarray:
    """A mask over the training photos: whole photographers, drawn in a random order by ``seed``, until
    ``share`` of the photos (as the split keeps a photographer's photos together)."""
    groups = [e.group for e in prepared.parts["train"]]
    if share >= 1:
        return np.ones(len(groups), bool)
    counts = Counter(groups)
    order = np.random.default_rng(seed).permutation(sorted(counts))
    cumulative = np.cumsum([counts[group] for group in order])
    chosen = set(order[:int(np.searchsorted(cumulative, share * len(groups))) + 1])
    return np.asarray([group in chosen for group in groups])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", type=Path, required=True)
    parser.add_argument("--tier", default="finetune")
    parser.add_argument("--recipe", type=recipe, action="append", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--curves", type=Path, help="write every run's per-epoch figures here (JSON)")
    parser.add_argument("--ensemble", type=int, default=1,
                        help="also score each group of this many consecutive seeds' heads averaged")
    parser.add_argument("--fused", action="store_true",
                        help="also score each head fused with verification, as served (calibrated on validation)")
    parser.add_argument("--train-share", type=float, default=1.0,
                        help="train on this share of the training photos, whole photographers drawn by the seed: "
                             "what more photos would be worth (default: all)")
    args = parser.parse_args()
    os.environ["MOUNTAINID_BUCKET"] = str(args.bucket)

    from mountainid import logs
    from mountainid.config import load_settings
    from mountainid.store import open_store
    from mountainid.training import evaluate
    from mountainid.training.dataset import list_accepted
    from mountainid.training.job import TIERS, head_probabilities, prepare
    from mountainid.training.train import train_head

    settings = load_settings()
    logs.configure(settings)  # a line per epoch (a bar at a terminal): a run takes about 40 minutes
    store = open_store(settings)
    examples = list_accepted(store)
    tier = TIERS[args.tier]
    runs: list[dict] = []
    for name, fields in args.recipe:
        # The tier's own head only: a companion head (JobConfig.companion) is not what a recipe changes.
        config = dataclasses.replace(tier, head=dataclasses.replace(tier.head, **fields), companion=None)
        prepared = prepare(settings, store, config, examples)
        if prepared is None:
            raise SystemExit("not enough data in this bucket")
        x_val, y_val = prepared.arrays["val"]
        evidence = validation_evidence(settings, store, prepared) if args.fused else None
        for seed in args.seeds:
            x_train, y_train = prepared.training(("train",), photographers_share(prepared, args.train_share, seed))
            head_config = dataclasses.replace(config.head, seed=seed, mirror_average=False)
            started = time.perf_counter()
            head, history = train_head(x_train, y_train, x_val, y_val, len(prepared.labels), head_config,
                                       prepared.extractor)
            seconds = time.perf_counter() - started
            probs = head_probabilities(head, x_val, len(prepared.labels))
            figures = {"recipe": name, "seed": seed, "seconds": round(seconds, 1),
                       "val_top1": evaluate.top_k(probs, y_val, 1), "val_top3": evaluate.top_k(probs, y_val, 3),
                       "val_accuracy": history.get("val_accuracy", []), "loss": history.get("loss", []),
                       "val_probs": probs.round(5).tolist()}
            mirrored = None
            if prepared.extractor.spec.cut:
                from mountainid.training.train import mirror_averaged

                mirrored = head_probabilities(mirror_averaged(head, prepared.extractor), x_val, len(prepared.labels))
                figures["val_top1_mirror"] = evaluate.top_k(mirrored, y_val, 1)
                figures["val_probs_mirror"] = mirrored.round(5).tolist()
            if evidence is not None:
                scores, in_view = evidence
                figures["val_fused"] = fused_top1(probs, scores, y_val, in_view)
                if mirrored is not None:
                    figures["val_fused_mirror"] = fused_top1(mirrored, scores, y_val, in_view)
            runs.append(figures)
            curve = " ".join(f"{v:.3f}" for v in figures["val_accuracy"])
            print(f"{name} seed={seed} val_top1={figures['val_top1']:.3f} "
                  f"mirror={figures.get('val_top1_mirror', float('nan')):.3f} top3={figures['val_top3']:.3f} "
                  f"fused={figures.get('val_fused', float('nan')):.3f} "
                  f"fused_mirror={figures.get('val_fused_mirror', float('nan')):.3f} "
                  f"train_n={len(x_train)} val_n={len(y_val)} minutes={seconds / 60:.1f} curve=[{curve}]", flush=True)
            if args.curves:
                args.curves.write_text(json.dumps(runs, indent=1))
    print("recipe summary (validation top-1 over seeds: median, min-max; mirror-averaged)")
    for name, _ in args.recipe:
        mine = [r for r in runs if r["recipe"] == name]
        top1 = [r["val_top1"] for r in mine]
        mirror = [r.get("val_top1_mirror", float("nan")) for r in mine]
        print(f"{name}: {statistics.median(top1):.3f} ({min(top1):.3f}-{max(top1):.3f}); "
              f"mirror {statistics.median(mirror):.3f} ({min(mirror):.3f}-{max(mirror):.3f}); "
              f"minutes {statistics.median(r['seconds'] for r in mine) / 60:.1f}")
        if args.fused:
            fused = [r["val_fused"] for r in mine]
            fused_mirror = [r.get("val_fused_mirror", float("nan")) for r in mine]
            print(f"{name}: fused {statistics.median(fused):.3f} ({min(fused):.3f}-{max(fused):.3f}); "
                  f"fused mirror {statistics.median(fused_mirror):.3f} ({min(fused_mirror):.3f}-{max(fused_mirror):.3f})")
        if args.ensemble > 1:
            groups = [mine[start:start + args.ensemble] for start in range(0, len(mine), args.ensemble)]
            averaged = [evaluate.top_k(np.mean([r["val_probs"] for r in group], axis=0), y_val, 1)
                        for group in groups if len(group) == args.ensemble]
            print(f"{name}: {args.ensemble} seeds' heads averaged: " + " ".join(f"{a:.3f}" for a in averaged))


if __name__ == "__main__":
    main()
