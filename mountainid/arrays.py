"""Reading NumPy's .npy / .npz bytes safely from several threads at once.

``np.load`` parses each array's header with ``ast.literal_eval``, and CPython 3.11's AST constructor
is not safe from two threads at once: it can fail with "SystemError: AST constructor recursion depth
mismatch" (python/cpython#106905, seen here in a clean-clone test run). The cache readers run on
thread pools, so every array of ours is parsed under one lock; the bytes are read before taking it.
"""

from __future__ import annotations

import io
import threading

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
