"""Honest figures for a model: top-1, top-3, per-class accuracy, macro-F1, confusion matrix.

Also chooses the "unknown" threshold: the confidence below which the site says "not sure"
rather than risk a wrong name. It is chosen on the validation split (never on test) as the
threshold that maximises right answers minus wrong answers, i.e. the site names a mountain when
it is more often right than wrong at that confidence.
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
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def confusion(targets: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """rows: true class, columns: predicted class."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (targets, predicted), 1)
    return matrix


def metrics(probs: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict:
    """Everything metrics.json reports about one split."""
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
    }


def choose_unknown_threshold(probs: np.ndarray, targets: np.ndarray) -> float:
    """The lowest confidence at which answering gains more right answers than wrong ones."""
    if len(targets) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(targets)
    order = np.argsort(-confidence)
    # Answering the i most confident photos scores (right - wrong) among them.
    gain = np.cumsum(np.where(correct[order], 1, -1))
    best = int(np.argmax(gain))
    if gain[best] <= 0:
        return float(confidence[order[0]]) + 1e-6  # never more right than wrong: always "not sure"
    return float(confidence[order[best]])


def summary_line(figures: dict) -> str:
    """The last line of ``mountainid evaluate``: ``top1=0.712 top3=0.904 n=136``."""
    return f"top1={figures['top1']:.3f} top3={figures['top3']:.3f} n={figures['n']}"
