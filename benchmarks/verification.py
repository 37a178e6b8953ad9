"""Verification's matching settings, chosen by cross-validation on a trained bucket's training photos.

The training and validation photos (never the test split) are cut into 5 folds by photographer (the
split's own grouping, so a burst never sits on both sides); each fold's photos are verified against a
gallery of the other folds' photos, exactly as the job verifies a validation photo against the training
split. The classifier half of the fused answer is a class-weighted logistic regression on the filter's
(L2-normalised) embeddings, fitted on the other folds: a stand-in for the tier's head, whose probabilities on its own
training photos would be overfit. That is what chose ``RATIO``, ``NEIGHBOURS`` and ``CHECKS`` in
``mountainid/verification.py`` (on ``benchmarks/train.py --bucket``'s peaks14 bucket):

    .venv/bin/python benchmarks/verification.py --bucket DIR \\
        --setting RATIO=0.8,NEIGHBOURS=3,CHECKS=32 --setting RATIO=0.85,NEIGHBOURS=5,CHECKS=48

One line per setting: verification alone (the mountain with most inliers; the stand-in where nothing
matched), the fused top-1 at the best of the job's weights, the photos with any verified match, the
query's p50, and against the first setting the photos only it / only the first got right with
McNemar's exact p. The settings given override the module's constants for that line only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

FOLDS = 5


def stand_in_classifier(x: np.ndarray, targets: np.ndarray, classes: int, l2: float = 1e-3,
                        steps: int = 500, rate: float = 0.5):
    """Multinomial logistic regression on standardised features, class-weighted like the heads; returns
    a function from features to probabilities."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = (x - mean) / scale
    weights, bias = np.zeros((x.shape[1], classes)), np.zeros(classes)
    onehot = np.eye(classes)[targets]
    balance = (len(targets) / (classes * np.maximum(np.bincount(targets, minlength=classes), 1)))[targets][:, None]

    def probabilities(features: np.ndarray) -> np.ndarray:
        logits = ((features - mean) / scale) @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    for _ in range(steps):
        gradient = (probabilities(x) - onehot) * balance / len(targets)
        weights -= rate * (xs.T @ gradient + l2 * weights)
        bias -= rate * gradient.sum(axis=0)
    return probabilities


def setting(text: str) -> dict[str, float]:
    """``RATIO=0.85,NEIGHBOURS=5`` -> {"RATIO": 0.85, "NEIGHBOURS": 5}."""
    from mountainid import verification

    chosen = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if not hasattr(verification, name):
            raise argparse.ArgumentTypeError(f"mountainid.verification has no {name}")
        chosen[name] = type(getattr(verification, name))(float(value))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", type=Path, required=True, help="a local bucket a training run filled")
    parser.add_argument("--setting", type=setting, action="append", default=[],
                        help="NAME=VALUE,... of mountainid.verification (repeat; default: the current constants)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from mountainid import verification
    from mountainid.arrays import load_array
    from mountainid.filter import embedding_name, local_features_name
    from mountainid.store import LocalBlobStore
    from mountainid.training.dataset import list_accepted
    from mountainid.training.evaluate import mcnemar_p
    from mountainid.training.shards import shard_of
    from mountainid.vision.local import LocalFeatures

    store = LocalBlobStore(args.bucket)
    photos = [e for e in list_accepted(store) if e.split != "test"]  # the test split is never read
    labels = sorted({e.slug for e in photos})
    targets = np.array([labels.index(e.slug) for e in photos])
    fold = np.array([shard_of(f"fold:{e.group}", FOLDS) for e in photos])
    embeddings = np.stack([load_array(store.get(embedding_name(e.metadata["backbone"], e.photo_id))) for e in photos])
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    keypoints = [LocalFeatures.from_bytes(store.get(local_features_name(e.photo_id))) for e in photos]
    print(f"{len(photos)} training and validation photos of {len(labels)} mountains, {FOLDS} folds by photographer "
          f"({', '.join(map(str, np.bincount(fold)))})")

    probs = np.zeros((len(photos), len(labels)))
    for k in range(FOLDS):
        rest, held = fold != k, fold == k
        probs[held] = stand_in_classifier(embeddings[rest], targets[rest], len(labels))(embeddings[held])
    print(f"stand-in classifier alone: top-1 {np.mean(probs.argmax(axis=1) == targets):.3f}")

    defaults = {name: getattr(verification, name) for overrides in args.setting for name in overrides}
    first: np.ndarray | None = None
    for overrides in args.setting or [{}]:
        for name, value in {**defaults, **overrides}.items():
            setattr(verification, name, value)
        scores = np.zeros_like(probs, np.float32)
        seconds = []
        for k in range(FOLDS):
            rest = np.nonzero(fold != k)[0]
            gallery = verification.Gallery([photos[i].photo_id for i in rest], targets[rest],
                                           [keypoints[i] for i in rest])
            for i in np.nonzero(fold == k)[0]:
                started = time.perf_counter()
                scores[i] = gallery.scores(gallery.verify(keypoints[i]), len(labels))
                seconds.append(time.perf_counter() - started)
        alone = np.where(scores.max(axis=1) > 0, scores.argmax(axis=1), probs.argmax(axis=1)) == targets
        fused = max((verification.fuse(probs, scores, w).argmax(axis=1) == targets for w in verification.WEIGHTS),
                    key=np.mean)
        line = (f"{overrides or 'current'}: verification alone {alone.mean():.3f}, fused {fused.mean():.3f}, "
                f"matched {np.mean(scores.max(axis=1) > 0):.3f}, query p50 {statistics.median(seconds) * 1000:.0f} ms")
        if first is None:
            first = fused
        else:
            only_this, only_first = int(np.sum(fused & ~first)), int(np.sum(first & ~fused))
            line += (f"; fused right for this only {only_this}, for the first only {only_first} "
                     f"(McNemar p={mcnemar_p(only_first, only_this):.4f})")
        print(line, flush=True)


if __name__ == "__main__":
    main()
