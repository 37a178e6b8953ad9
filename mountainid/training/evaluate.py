"""Honest figures for a model: top-1, top-3, per-class accuracy, macro-F1, confusion matrix.

Also chooses the confidence threshold above which the site says "This looks like X" (and below
which it says "not sure" and shows its top 3), on held-out answers (never test): the lowest
confidence at which the answers given there show, with 90 % confidence (``BOUND_Z``), that at least
``CONFIDENT_PRECISION`` of them are right, raised if needed so that a photo of a mountain the model
does not know (simulated by taking each held-out photo's own mountain out of its answer) is named
outright at most ``OPEN_SET_NAMED`` of the time, with the same confidence. A bound, not the share
itself: picking the lowest threshold whose share reaches 90 % picks the luckiest one, and on 82
photos that promise fell to 87 % on the test split and named 18 % of other mountains outright.
``training.calibrate.fit`` applies these rules to verified and unverified answers separately.

Also the paired statistics of two models scored on the same photos, on which the promotion gate
(:mod:`mountainid.training.gate`) decides.
"""

from __future__ import annotations

import numpy as np


def top_k(probs: np.ndarray, targets: np.ndarray, k: int) -> float:
    if len(targets) == 0:
        return 0.0
    best = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean([t in row for t, row in zip(targets, best, strict=True)]))


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a proportion (Wilson score): on a test split of 73 photos top-1 is known to about ±11 points."""
    if n == 0:
        return 0.0, 1.0
    low, high = wilson_bounds(hits, n, z)
    return float(low), float(high)


def wilson_bounds(hits: np.ndarray | int, n: np.ndarray | int, z: float) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval's ends for each share ``hits / n`` (n > 0), element-wise."""
    n = np.asarray(n, np.float64)
    p = np.asarray(hits, np.float64) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def mcnemar_p(live_only: int, new_only: int) -> float:
    """Two-sided exact McNemar p-value: how likely a split of the discordant photos (right for one model
    only) at least this uneven is if both models are equally good. Exact (binomial, integer arithmetic),
    because on a test split of tens of photos only a handful are discordant."""
    discordant = live_only + new_only
    term = tail = 1  # C(discordant, 0); each next binomial coefficient from the last, exactly
    for k in range(min(live_only, new_only)):
        term = term * (discordant - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / 2 ** discordant)


def paired_difference_interval(live_only: int, new_only: int, n: int, resamples: int = 10_000, seed: int = 0,
                               level: float = 0.95) -> tuple[float, float]:
    """Paired bootstrap interval of top-1 (new) - top-1 (live) over the same ``n`` photos, resampled together.

    A photo's difference is -1 (right for the live model only), +1 (the new one only) or 0, so a
    resample is a multinomial draw of those three counts: the same distribution as resampling photo
    indices, without an n-by-resamples matrix. Seeded: a run's figures are reproducible.
    """
    if n == 0:
        return -1.0, 1.0
    drawn = np.random.default_rng(seed).multinomial(n, np.array([live_only, new_only, n - live_only - new_only]) / n,
                                                    size=resamples)
    low, high = np.quantile((drawn[:, 1] - drawn[:, 0]) / n, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def confusion(targets: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """rows: true class, columns: predicted class."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (targets, predicted), 1)
    return matrix


def metrics(probs: np.ndarray, targets: np.ndarray, labels: list[str], threshold: float | np.ndarray) -> dict:
    """Everything metrics.json reports about one split, answering outright at ``threshold`` (or each photo at its own)."""
    targets = np.asarray(targets, np.int64)
    predicted = probs.argmax(axis=1) if len(targets) else np.zeros(0, np.int64)
    matrix = confusion(targets, predicted, len(labels))
    support = matrix.sum(axis=1)
    hits = np.diag(matrix)
    precision = np.divide(hits, matrix.sum(axis=0), out=np.zeros(len(labels)), where=matrix.sum(axis=0) > 0)
    recall = np.divide(hits, support, out=np.zeros(len(labels)), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(labels)),
                   where=(precision + recall) > 0)
    present = support > 0
    top1 = top_k(probs, targets, 1)
    return {
        "n": len(targets),
        "top1": top1,
        "top1_interval": wilson_interval(round(top1 * len(targets)), len(targets)),
        "top3": top_k(probs, targets, 3),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {label: {"accuracy": float(recall[i]), "n": int(support[i])}
                      for i, label in enumerate(labels)},
        "confusion": matrix.tolist(),
        "calibration": calibration(probs, targets),
        **confident_figures(probs, targets, threshold),
    }


CONFIDENT_PRECISION = 0.90
# How sure the held-out answers must make us of each promise: one-sided 90 % Wilson bounds (the standard
# normal's 90th percentile). On 82 answers that holds the fine-tune tier's threshold at 0.62 instead of 0.38
# (held-out coverage 49 % instead of 63 %); on ~450 out-of-fold answers a bound is a few points from the share.
BOUND_Z = 1.2816


def choose_unknown_threshold(probs: np.ndarray, targets: np.ndarray, precision: float = CONFIDENT_PRECISION,
                             z: float = BOUND_Z) -> float:
    """The lowest confidence whose answers (every photo at or above it) were right ``precision`` of the
    time, by the lower bound of their share (``z``, by default ``BOUND_Z``): ten right answers out of ten
    prove less than thirty out of thirty.

    Of the thresholds that reach the precision, the one answering the most photos; when none does, a
    threshold above every confidence seen (the model is never sure until a better one is trained).
    """
    if len(targets) == 0:
        return 1.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(targets)
    order = np.argsort(-confidence, kind="stable")
    precise = wilson_bounds(np.cumsum(correct[order]), np.arange(1, len(order) + 1), z)[0] >= precision
    # Only where the next photo is less confident can the answered set stop (ties are answered together).
    cut = np.append(confidence[order][1:] < confidence[order][:-1], True)
    usable = np.flatnonzero(precise & cut)
    if not len(usable):
        return float(confidence.max()) + 1e-6
    return float(confidence[order[usable[-1]]])


OPEN_SET_NAMED = 0.10  # at most this share of photos of mountains the model does not know may be named outright


def open_set_threshold(others: np.ndarray, rate: float = OPEN_SET_NAMED, z: float = BOUND_Z) -> float:
    """The confidence that only ``rate`` of held-out photos reach once their own mountain is taken out
    (``others``: their answers without it, :func:`without_own`), by the upper bound of that share
    (``z``, by default ``BOUND_Z``): a stand-in, from held-out answers alone, for photos of a mountain the
    model does not know, which it must not name outright."""
    if len(others) == 0:
        return 0.0
    top = np.sort(others.max(axis=1))[::-1]
    named = np.arange(len(top) + 1)  # photos whose best other mountain reaches the threshold
    allowed = np.flatnonzero(wilson_bounds(named, len(top), z)[1] <= rate)
    if not len(allowed):  # too few photos to promise anything: above all of them
        return float(top[0]) + 1e-6
    most = int(allowed[-1])
    return float(top[most]) + 1e-6 if most < len(top) else 0.0


def without_own(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Probabilities with each photo's own mountain taken out, the rest renormalised (a classifier alone)."""
    others = np.array(probs, np.float64)
    others[np.arange(len(targets)), np.asarray(targets)] = 0.0
    return others / np.maximum(others.sum(axis=1, keepdims=True), 1e-12)


def choose_answer_threshold(probs: np.ndarray, targets: np.ndarray, unknown: np.ndarray | None = None) -> float:
    """The site's "This looks like X" threshold: answers at least CONFIDENT_PRECISION right, and photos of
    unknown mountains named at most OPEN_SET_NAMED of the time, each with 90 % confidence (both from held-out answers;
    ``unknown``: the answers before each photo's own mountain is taken out, by default ``probs``; a fused
    answer passes them with that mountain's verification evidence already gone,
    ``verification.fuse_without_evidence``)."""
    others = without_own(probs if unknown is None else unknown, targets)
    return max(choose_unknown_threshold(probs, targets), open_set_threshold(others))


def confident_figures(probs: np.ndarray, targets: np.ndarray, threshold: float | np.ndarray) -> dict[str, object]:
    """Of the photos answered outright (confidence >= threshold, one or each photo's): how many, and how many rightly."""
    if not len(targets):
        return {"coverage": 0.0, "confident_precision": 0.0}
    answered = probs.max(axis=1) >= threshold
    right = answered & (probs.argmax(axis=1) == np.asarray(targets))
    return {"coverage": float(answered.mean()),
            "confident_precision": float(right.sum() / answered.sum()) if answered.any() else 0.0,
            "confident_interval": wilson_interval(int(right.sum()), int(answered.sum())),
            "coverage_interval": wilson_interval(int(answered.sum()), len(targets))}


TOP_SHARE = 0.3  # "the most confident 30 %": how right the answers are that the model is surest of


def calibration(probs: np.ndarray, targets: np.ndarray, bins: int = 10) -> dict:
    """Whether "87 %" means right 87 % of the time: per confidence bin the photos, their mean confidence
    and how many were right; the expected calibration error (their gap, weighted by photos); and the
    precision of the ``TOP_SHARE`` most confident answers."""
    if not len(targets):
        return {"ece": 0.0, "bins": [], "top_share": TOP_SHARE, "top_share_precision": 0.0}
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == np.asarray(targets)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    table = [{"low": b / bins, "high": (b + 1) / bins, "n": int((which == b).sum()),
              "confidence": float(confidence[which == b].mean()), "accuracy": float(right[which == b].mean())}
             for b in range(bins) if (which == b).any()]
    top = np.argsort(-confidence, kind="stable")[:max(1, round(TOP_SHARE * len(targets)))]
    return {"ece": float(sum(row["n"] * abs(row["confidence"] - row["accuracy"]) for row in table) / len(targets)),
            "bins": table, "top_share": TOP_SHARE, "top_share_precision": float(right[top].mean())}


def summary_line(figures: dict) -> str:
    """The last line of ``mountainid evaluate``: ``top1=0.712 top3=0.904 n=136 confident_precision=0.92 coverage=0.51``."""
    return (f"top1={figures['top1']:.3f} top3={figures['top3']:.3f} n={figures['n']} "
            f"confident_precision={figures['confident_precision']:.3f} coverage={figures['coverage']:.3f}")
