"""The mountain score: how much of an ImageNet prediction is mountain terrain.

The filter judges photos by it and the predictor reports it for an upload; both read it from the
same backbone pass, so it lives here, beside the backbone, below both.
"""

from __future__ import annotations

import numpy as np

# ImageNet-1k classes (0-based Keras indices) whose probability adds up to the mountain score.
# Chosen on data (benchmarks/filter.py --threshold): "promontory" is left out because it is mostly
# a headland seen from the sea (top-1 of 25 sea photos, 6 mountain ones); "mountain tent" and
# "ski" are in because they are the top-1 of high-mountain photos (8 + 8 of the 537 peaks14).
TERRAIN_CLASSES: dict[int, str] = {
    672: "mountain tent",
    795: "ski",
    970: "alp",
    972: "cliff",
    979: "valley",
    980: "volcano",
}
_TERRAIN_INDEX = np.array(sorted(TERRAIN_CLASSES), dtype=np.intp)


def mountain_score(probs: np.ndarray) -> np.ndarray:
    """Mountain score in [0, 1] per photo from ImageNet probabilities (N, 1000) -> (N,).

    Summing the terrain classes (instead of asking for one of them in the top-k) lets a photo
    that is half "alp", half "valley" count as the mountain it is.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 1:
        probs = probs[None]
    return np.clip(probs[:, _TERRAIN_INDEX].sum(axis=1), 0.0, 1.0)
