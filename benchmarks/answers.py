"""The answer as served, from a trained bucket: accuracy through ``predict()``, verification's share,
confidence, photos of other mountains and streets, latency, and the gallery in memory or in the bucket.

``benchmarks/train.py`` prints these after training; on a bucket it kept (``--bucket DIR``) this
measures them again without retraining:

    .venv/bin/python benchmarks/answers.py --bucket DIR [--version VERSION]
    .venv/bin/python benchmarks/answers.py --bucket DIR --against HEAD~1 [--photos 40]
    .venv/bin/python benchmarks/answers.py --bucket DIR --recalibrate

``--recalibrate`` answers with the confidence (weight, temperature, threshold) fitted again by this code from the
answers the version stored when it was trained (``held_out.npz``), as a retrain would: a change of how the
confidence is fitted, measured without retraining. ``--against REF`` compares instead, on the same test photos, the answers of the code at git ``REF`` (a
temporary worktree) with the working tree's: both load the model in their own process and answer one photo
each in turn (interleaved, so a busy machine slows both alike). It prints top-1, top-3 and the answers given
outright with how many of those are right, for each; the photos right for one only, with McNemar's exact p;
and each one's predict p50 / p95 with the ratio.

Lines: the test split through ``predict()`` (upload bytes to answer, the gallery in memory), the fused
and the classifier-alone top-1 from ``metrics.json``, the gallery's memory, the same test photos with the
gallery left in the bucket (``MOUNTAINID_GALLERY_MEMORY_MB=0``: a shortlist read per upload), how often
photos of mountains the model does not know (``scenes/mountain``) are named outright, street photos
answered "not a mountain", and predict latency (p50, one request at a time, warm).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from baseline import REPO, checkout, code_env, short

SHARED = Path(os.environ.get("MOUNTAINID_SHARED", REPO.parent / "shared")).resolve()
WEIGHTS = SHARED / "models" / "imagenet" / "mobilenet_v2_1.0_224_imagenet.weights.h5"


def recalibrated(store, version: str, predictors) -> None:
    """The version's confidence fitted again from its stored held-out answers (``held_out.npz``) by the working
    tree's ``calibrate.fit``, as a retrain on the same photos would fit it; printed, then answered with by each
    of ``predictors`` (loads of that one version)."""
    from mountainid.training import calibrate, evaluate

    first = predictors[0]
    answers = calibrate.Answers.from_bytes(store.get(f"models/{version}/held_out.npz"))
    fitted = calibrate.fit(answers, first.in_view)
    fused = fitted.fuse(answers.probs, answers.scores, first.in_view)
    held = evaluate.confident_figures(fused, answers.targets, fitted.thresholds(fused, answers.scores, first.in_view))
    print(f"re-fitted on the {len(answers)} stored held-out answers: weight {fitted.weight:g} (was "
          f"{first.fusion_weight:g}), temperature {fitted.temperature:.2f} (was {first.temperature:.2f}), "
          f"thresholds verified / unverified {fitted.threshold:.2f} / {fitted.unverified_threshold:.2f} (was "
          f"{first.unknown_threshold:.2f} / {first.unverified_threshold:.2f}); held out: answered outright "
          f"{held['coverage']:.1%}, right {held['confident_precision']:.1%} of those")
    for predictor in predictors:
        predictor.fusion_weight, predictor.temperature = fitted.weight, fitted.temperature
        predictor.unknown_threshold, predictor.unverified_threshold = fitted.threshold, fitted.unverified_threshold


def report(store, version: str, settings, recalibrate: bool = False) -> None:
    """Print the answer's figures for one model version of ``store``."""
    from mountainid.predict import SHORTLIST, SHORTLIST_CLASSES, Predictor

    predictor = Predictor.load(store, version, settings)
    shortlisted = Predictor.load(store, version, dataclasses.replace(settings, gallery_memory_mb=0))
    if recalibrate:
        recalibrated(store, version, (predictor, shortlisted))
    metrics = json.loads(store.get(f"models/{version}/metrics.json"))
    test = json.loads(store.get(f"models/{version}/dataset.json"))["splits"]["test"]
    right = {"memory": 0, "bucket": 0, "sure": 0, "sure_right": 0}
    timings: dict[str, list[float]] = {"memory": [], "bucket": []}
    predictor.predict(store.get(f"accepted/{test[0]}.jpg"))  # warm-up
    for entry in test:
        data, slug = store.get(f"accepted/{entry}.jpg"), entry.split("/")[0]
        for mode, model in (("memory", predictor), ("bucket", shortlisted)):
            started = time.perf_counter()
            answer = model.predict(data)
            timings[mode].append((time.perf_counter() - started) * 1000)
            right[mode] += answer.guesses[0].slug == slug
            if mode == "memory" and answer.sure:
                right["sure"] += 1
                right["sure_right"] += answer.guesses[0].slug == slug
    n = len(test)
    figures = metrics["test"]
    print(f"test split through predict(), n={n}: top1={right['memory'] / n:.3f}; answered outright "
          f"{right['sure'] / n:.1%}, right {right['sure_right'] / max(right['sure'], 1):.1%} of those "
          f"(thresholds {predictor.unknown_threshold:.2f} with the gallery's evidence, "
          f"{predictor.unverified_threshold:.2f} without, fitted on held-out answers)")
    gallery = predictor.verifier
    if gallery is not None:
        print(f"verification (metrics.json, test): fused top1={figures['top1']:.3f}, classifier alone "
              f"{figures['classifier_top1']:.3f} ({(figures['top1'] - figures['classifier_top1']) * 100:+.1f} points); "
              f"weight {predictor.fusion_weight:g} fitted on held-out answers; gallery {len(gallery)} photos, "
              f"{gallery.nbytes / 1e6:.0f} MB in memory ({gallery.nbytes / len(gallery) / 1e3:.0f} kB per photo)")
        print(f"gallery left in the bucket (verified per upload against the {SHORTLIST} most similar training "
              f"photos of the {SHORTLIST_CLASSES} likeliest mountains, keypoints read per request): top1="
              f"{right['bucket'] / n:.3f} against {right['memory'] / n:.3f} in memory; predict p50 "
              f"{statistics.median(timings['bucket']):.0f} ms against {statistics.median(timings['memory']):.0f} ms; "
              f"memory held 0 MB (about {SHORTLIST * gallery.nbytes / len(gallery) / 1e6:.0f} MB per request)")
    scenes = {scene: [predictor.predict(path.read_bytes())
                      for path in sorted((SHARED / "data" / "scenes" / scene).iterdir())]
              for scene in ("mountain", "street")}
    named = sum(a.is_mountain and a.sure for a in scenes["mountain"])
    rejected = sum(not a.is_mountain for a in scenes["street"])
    print(f"other mountains (scenes/mountain) named outright as one of the peaks: {named}/{len(scenes['mountain'])} "
          f"({named / len(scenes['mountain']):.1%}); street photos answered 'not a mountain': "
          f"{rejected}/{len(scenes['street'])}")
    held_out_line(metrics)
    latencies = timings["memory"]
    print(f"predict latency (upload bytes to answer, verification included): p50 {statistics.median(latencies):.0f} ms, "
          f"max {max(latencies):.0f} ms over {len(latencies)} test photos (one request at a time)")


def held_out_line(metrics: dict) -> None:
    """How the confidence was fitted: the held-out answers' figures stored with the version (none before them)."""
    held = metrics.get("held_out")
    if not held:
        print("held-out answers: none stored (a version calibrated on its validation split alone)")
        return
    how = f"{held['folds']} folds by photographer over training + validation" if held["folds"] >= 2 else "validation"
    print(f"held-out answers the confidence was fitted on ({how}), n={held['n']}: top1={held['top1']:.3f}; "
          f"answered outright {held['coverage']:.1%}, right {held['confident_precision']:.1%} of those; "
          f"calibration error {held['ece']:.3f}; temperature {metrics.get('temperature', 1.0):.2f}")


def answer_worker(store, version: str, settings) -> None:
    """Answer each object name read from stdin with one JSON line (top three, sure, milliseconds): the
    subprocess ``--against`` runs, once with each version of the code."""
    from mountainid.predict import Predictor

    predictor = Predictor.load(store, version, settings)
    print("ready", flush=True)
    for line in sys.stdin:
        data = store.get(line.strip())
        started = time.perf_counter()
        answer = predictor.predict(data)
        ms = (time.perf_counter() - started) * 1000
        print(json.dumps({"top3": [g.slug for g in answer.guesses], "sure": answer.sure, "ms": ms}), flush=True)


def against(bucket: Path, version: str, ref: str, photos: int, store) -> None:
    """Paired comparison of the code at ``ref`` and the working tree on the same test photos, interleaved."""
    from mountainid.training.evaluate import mcnemar_p

    test = json.loads(store.get(f"models/{version}/dataset.json"))["splits"]["test"][:photos or None]
    command = [sys.executable, __file__, "--bucket", str(bucket), "--version", version, "--answer-worker"]
    with checkout(ref) as old:
        workers = {name: subprocess.Popen(command, cwd=root, env=code_env(root), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True)
                   for name, root in ((f"{short(ref)} (today)", old), ("working tree", REPO))}
        for worker in workers.values():
            if worker.stdout.readline().strip() != "ready":
                sys.exit("a worker failed to load the model")

        def ask(worker: subprocess.Popen, name: str) -> dict:
            worker.stdin.write(name + "\n")
            worker.stdin.flush()
            return json.loads(worker.stdout.readline())

        warm = f"accepted/{test[0]}.jpg"
        answers = {name: [] for name in workers}
        for worker in workers.values():
            ask(worker, warm)
        for i, entry in enumerate(test):
            order = list(workers.items()) if i % 2 else list(workers.items())[::-1]
            for name, worker in order:
                answers[name].append(ask(worker, f"accepted/{entry}.jpg"))
        for worker in workers.values():
            worker.stdin.close()
            worker.wait(60)
    truth = [entry.split("/")[0] for entry in test]
    right = {}
    for name, given in answers.items():
        right[name] = [a["top3"][0] == slug for a, slug in zip(given, truth, strict=True)]
        top3 = sum(slug in a["top3"] for a, slug in zip(given, truth, strict=True))
        sure = [r for a, r in zip(given, right[name], strict=True) if a["sure"]]
        ms = sorted(a["ms"] for a in given)
        print(f"{name}: n={len(test)} top1={sum(right[name])} ({sum(right[name]) / len(test):.1%}) "
              f"top3={top3} ({top3 / len(test):.1%}) outright={len(sure)}, right {sum(sure)} "
              f"({sum(sure) / max(len(sure), 1):.1%}); predict p50 {statistics.median(ms):.0f} ms, "
              f"p95 {ms[round(0.95 * (len(ms) - 1))]:.0f} ms")
    (old_name, old_right), (new_name, new_right) = right.items()
    only_old = sum(a and not b for a, b in zip(old_right, new_right, strict=True))
    only_new = sum(b and not a for a, b in zip(old_right, new_right, strict=True))
    same = sum(a["top3"][0] == b["top3"][0] for a, b in zip(*answers.values(), strict=True))
    ratio = (statistics.median(a["ms"] for a in answers[new_name])
             / statistics.median(a["ms"] for a in answers[old_name]))
    print(f"paired: the same top guess on {same}/{len(test)}; right only for {old_name} {only_old}, only for "
          f"{new_name} {only_new} (McNemar p={mcnemar_p(only_old, only_new):.3f}); predict p50 ratio "
          f"{ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", type=Path, required=True, help="a local bucket with a trained model")
    parser.add_argument("--version", help="the model version (default: the live one)")
    parser.add_argument("--against", metavar="REF", help="compare with the code at this git commit instead")
    parser.add_argument("--photos", type=int, default=0, help="with --against: the first N test photos (0: all)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="answer with the confidence fitted again from the version's stored held-out answers by "
                             "this code (a changed calibration measured without retraining)")
    parser.add_argument("--answer-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from mountainid import logs
    from mountainid.config import load_settings
    from mountainid.registry import Registry
    from mountainid.store import LocalBlobStore

    settings = load_settings({"MOUNTAINID_BUCKET": str(args.bucket), "MOUNTAINID_CATALOG": "peaks14",
                              "MOUNTAINID_LOG_LEVEL": "WARNING",
                              "MOUNTAINID_WEIGHTS": os.environ.get("MOUNTAINID_WEIGHTS", str(WEIGHTS))})
    logs.configure(settings)
    store = LocalBlobStore(args.bucket)
    version = args.version or Registry(store).live().version
    if args.answer_worker:
        answer_worker(store, version, settings)
    elif args.against:
        against(args.bucket, version, args.against, args.photos, store)
    else:
        report(store, version, settings, args.recalibrate)


if __name__ == "__main__":
    main()
