"""The pictures users look at: the confusion matrix, the training curves and the reliability diagram (PNG bytes)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: the training job runs headless
import matplotlib.pyplot as plt
import numpy as np


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def confusion_png(matrix: list[list[int]], labels: list[str], title: str) -> bytes:
    """Heatmap of row-normalised counts (each true class sums to 1), with the counts written in."""
    counts = np.asarray(matrix, np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(5.0, 0.5 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, col), value in np.ndenumerate(counts):
        if value:
            axes.text(col, row, str(int(value)), ha="center", va="center", fontsize=8,
                      color="white" if share[row, col] > 0.5 else "black")
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    return _png(figure)


def curves_png(history: dict[str, list[float]]) -> bytes:
    """Loss and accuracy per epoch, training and validation."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                axes.plot(range(1, len(values) + 1), values, style,
                          label=("validation " if prefix else "training ") + metric)
        axes.set_xlabel("epoch")
        axes.set_title(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    return _png(figure)


def reliability_png(test: dict, held_out: dict) -> bytes:
    """Reliability diagram (``evaluate.calibration`` of two sets of answers): per confidence bin, how often
    the answers were right against how sure they said they were; on the diagonal "87 %" means right 87 %
    of the time. Marker area follows the number of photos in the bin."""
    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for figures, name, style in ((held_out, "held out (fitted on)", "s--"), (test, "test", "o-")):
        bins = figures.get("bins", [])
        if bins:
            confidence = [row["confidence"] for row in bins]
            accuracy = [row["accuracy"] for row in bins]
            axes.plot(confidence, accuracy, style, alpha=0.8,
                      label=f"{name}: n={sum(row['n'] for row in bins)}, ECE {figures['ece']:.3f}")
            axes.scatter(confidence, accuracy, s=[12 * row["n"] ** 0.8 for row in bins], alpha=0.3)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("confidence of the answer")
    axes.set_ylabel("share of answers right")
    axes.set_title("Does the confidence mean what it says?")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    return _png(figure)
