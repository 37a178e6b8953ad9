"""Verification's matching settings, chosen by cross-validation on a trained bucket's training photos.

The training and validation photos (never the test split) are cut into 5 folds by photographer (the
split's own grouping, so a burst never sits on both sides); each fold's photos are verified against a
gallery of the other folds' photos, exactly as the job verifies a validation photo against the training
split. The classifier half of the fused answer is a class-weighted logistic regression on the filter's
(L2-normalised) embeddings, fitted on the other folds: a stand-in for the tier's head, whose probabilities
on its own training photos would be overfit. That is what chose the ``Matching`` settings in
``mountainid/verification.py`` (on ``benchmarks/train.py --bucket``'s peaks14 bucket):

    .venv/bin/python benchmarks/verification.py --bucket DIR \\
        --setting ratio=0.8,neighbours=3,checks=32 --setting ratio=0.85,neighbours=5,checks=48

One line per setting: verification alone (the mountain with most inliers; the stand-in where nothing
matched), the fused top-1 at the best of the job's weights, the photos with any verified match, those
that verify with at least 15 inliers against another mountain (as a photo of a mountain the model does not
know might: the evidence threshold of the answer page), the query's p50, and against the first setting
the photos only it / only the first got right with McNemar's exact p. A setting overrides, for its line only, fields of the ``Matching`` a gallery of that
size gets (lower case) and constants of the module (upper case, e.g. ``CANDIDATES=15``). ``--gallery N``
verifies against a seeded sample of N photos (a smaller bucket); ``--nearest K`` against a gallery of
each photo's own, the K photos most like it by embedding, as the site does when the gallery is left in
the bucket.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mountainid.store import BlobStore
    from mountainid.training.dataset import Example
    from mountainid.vision.local import LocalFeatures

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


def extracted_at(store: BlobStore, photos: Sequence[Example], side: int) -> list[LocalFeatures]:
    """Every photo's keypoints extracted anew at ``side`` px; prints the extraction's p50 (decode excluded)."""
    from mountainid.vision import local
    from mountainid.vision.image import load_image

    found, seconds = [], []
    for photo in photos:
        image = load_image(store.get(photo.object_name), 10**9, draft_size=side)
        started = time.perf_counter()
        found.append(local.extract(local.grey_for_keypoints(image, side)))
        seconds.append(time.perf_counter() - started)
    print(f"keypoints extracted at {side} px: p50 {statistics.median(seconds) * 1000:.0f} ms a photo, "
          f"median {statistics.median(len(f) for f in found):.0f} keypoints")
    return found


def setting(text: str) -> dict[str, float]:
    """``ratio=0.85,neighbours=5,CANDIDATES=15``: fields of the whole gallery's ``Matching`` (lower case) or
    other constants of ``mountainid.verification`` (upper case)."""
    from mountainid import verification

    chosen: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        default = getattr(verification.LARGE_GALLERY if name.islower() else verification, name, None)
        if not isinstance(default, int | float):
            raise argparse.ArgumentTypeError(f"{name} is neither a field of Matching nor a constant of verification")
        chosen[name] = type(default)(float(value))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", type=Path, required=True, help="a local bucket a training run filled")
    parser.add_argument("--setting", type=setting, action="append", default=[],
                        help="name=value,... of the Matching, NAME=VALUE,... of mountainid.verification's constants "
                             "(repeat; default: the current ones)")
    parser.add_argument("--nearest", type=int, default=0, metavar="K",
                        help="verify each photo against only the K other-fold photos most like it by embedding, "
                             "of any mountain (a per-upload gallery), instead of all of them")
    parser.add_argument("--gallery", type=int, default=0, metavar="N",
                        help="a gallery of N of the other folds' photos (seeded sample), as a smaller bucket has")
    parser.add_argument("--side", type=int, default=0, metavar="PX",
                        help="extract every photo's keypoints anew with the longest side at PX (gallery and query "
                             "alike, as a changed MAX_SIDE would) instead of reading the cached ones")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from mountainid import verification
    from mountainid.arrays import load_array
    from mountainid.bucket import embedding_name, local_features_name
    from mountainid.store import LocalBlobStore
    from mountainid.training.dataset import list_accepted
    from mountainid.training.evaluate import mcnemar_p
    from mountainid.training.shards import shard_of
    from mountainid.verification import EVIDENCE_INLIERS as EVIDENCE_MIN_INLIERS
    from mountainid.vision.local import LocalFeatures

    store = LocalBlobStore(args.bucket)
    photos = [e for e in list_accepted(store) if e.split != "test"]  # the test split is never read
    labels = sorted({e.slug for e in photos})
    targets = np.array([labels.index(e.slug) for e in photos])
    fold = np.array([shard_of(f"fold:{e.group}", FOLDS) for e in photos])
    embeddings = np.stack([load_array(store.get(embedding_name(e.metadata["backbone"], e.photo_id))) for e in photos])
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    keypoints = (extracted_at(store, photos, args.side) if args.side
                 else [LocalFeatures.from_bytes(store.get(local_features_name(e.photo_id))) for e in photos])
    print(f"{len(photos)} training and validation photos of {len(labels)} mountains, {FOLDS} folds by photographer "
          f"({', '.join(map(str, np.bincount(fold)))})")

    probs = np.zeros((len(photos), len(labels)))
    for k in range(FOLDS):
        rest, held = fold != k, fold == k
        probs[held] = stand_in_classifier(embeddings[rest], targets[rest], len(labels))(embeddings[held])
    print(f"stand-in classifier alone: top-1 {np.mean(probs.argmax(axis=1) == targets):.3f}")

    def gallery(rows: np.ndarray, fields: dict[str, float]) -> verification.Gallery:
        """The gallery of those photos, with the matching chosen for its size but for ``fields``."""
        matching = dataclasses.replace(verification.matching_for(len(rows)), **fields)
        return verification.Gallery([photos[i].photo_id for i in rows], targets[rows], [keypoints[i] for i in rows],
                                    matching=matching)

    constants = {name: getattr(verification, name) for overrides in args.setting for name in overrides
                 if name.isupper()}
    first: np.ndarray | None = None
    for overrides in args.setting or [{}]:
        for name, value in {**constants, **overrides}.items():
            if name.isupper():  # the module reads its constants when it runs: set for this line only
                setattr(verification, name, value)
        fields = {k: v for k, v in overrides.items() if k.islower()}

        scores = np.zeros_like(probs, np.float32)
        seconds = []
        for k in range(FOLDS):
            rest = np.nonzero(fold != k)[0]
            if args.gallery:  # a smaller training split: a seeded sample of it
                rest = np.sort(np.random.default_rng(k).choice(rest, min(args.gallery, len(rest)), replace=False))
            whole = gallery(rest, fields) if not args.nearest else None
            for i in np.nonzero(fold == k)[0]:
                started = time.perf_counter()
                own = whole
                if own is None:  # a gallery of its own: the K other-fold photos most like it
                    own = gallery(rest[np.argsort(-(embeddings[rest] @ embeddings[i]))[:args.nearest]], fields)
                scores[i] = own.scores(own.verify(keypoints[i]), len(labels))
                seconds.append(time.perf_counter() - started)
        alone = np.where(scores.max(axis=1) > 0, scores.argmax(axis=1), probs.argmax(axis=1)) == targets
        fused = max((verification.fuse(probs, scores, w).argmax(axis=1) == targets for w in verification.WEIGHTS),
                    key=np.mean)
        elsewhere = scores.copy()
        elsewhere[np.arange(len(targets)), targets] = 0  # what a photo of an unknown mountain could score
        line = (f"{overrides or 'current'}: verification alone {alone.mean():.3f}, fused {fused.mean():.3f}, "
                f"matched {np.mean(scores.max(axis=1) > 0):.3f}, another mountain >= {EVIDENCE_MIN_INLIERS} inliers "
                f"{np.mean(elsewhere.max(axis=1) >= EVIDENCE_MIN_INLIERS):.3f}, "
                f"query p50 {statistics.median(seconds) * 1000:.0f} ms")
        if first is None:
            first = fused
        else:
            only_this, only_first = int(np.sum(fused & ~first)), int(np.sum(first & ~fused))
            line += (f"; fused right for this only {only_this}, for the first only {only_first} "
                     f"(McNemar p={mcnemar_p(only_first, only_this):.4f})")
        print(line, flush=True)


if __name__ == "__main__":
    main()
