"""NumPy arrays: read from .npy / .npz bytes safely from several threads at once, and run through a
network a batch at a time.

``np.load`` parses each array's header with ``ast.literal_eval``, and CPython 3.11's AST constructor
is not safe from two threads at once: it can fail with "SystemError: AST constructor recursion depth
mismatch" (python/cpython#106905, seen here in a clean-clone test run). The cache readers run on
thread pools, so every array of ours is parsed under one lock; the bytes are read before taking it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

_PARSE = threading.Lock()


def load_array(data: bytes) -> np.ndarray:
    """One .npy array (raises what np.load raises for bad bytes)."""
    with _PARSE:
        return np.load(io.BytesIO(data), allow_pickle=False)


def load_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Every array of a .npz archive, read whole (NpzFile would parse lazily, outside the lock)."""
    with _PARSE, np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


PREDICT_BATCH = 16  # photos a network answers at once outside training


def in_batches(network: Callable[[np.ndarray], Any], x: np.ndarray, size: int = PREDICT_BATCH) -> np.ndarray:
    """``network`` over the rows of ``x``, ``size`` at a time, as one array: its activations grow with the
    rows it is given (the fine-tune's head held about 50 MB a photo, 11 GB for one calibration fold's 223)."""
    if len(x) <= size:
        return np.asarray(network(x))
    return np.concatenate([np.asarray(network(x[start:start + size])) for start in range(0, len(x), size)])
