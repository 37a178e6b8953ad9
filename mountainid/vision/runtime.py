"""Bringing TensorFlow into a process: once, before any model is built, without its start-up noise.

Both the CLI (for the commands that load a model in their own process) and the backfill workers
(each a fresh process) need it, so it lives with the rest of the TensorFlow code, below both.
"""

from __future__ import annotations

import os

from mountainid.config import Settings


def import_tensorflow_quietly(settings: Settings) -> None:
    """TensorFlow's C++ start-up lines (absl, oneDNN) go straight to file descriptor 2 at import, below
    any log level: import it once with that descriptor on /dev/null so a person (or a script reading
    stderr) sees only our lines. Python errors still surface as exceptions. With JSON logs (Cloud Run)
    they are left alone: there a crash inside TensorFlow's start-up must leave its trace in the logs."""
    if settings.log_format == "json":
        return
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
