"""Today's code beside the working tree, for A/B benchmarks in one run on a noisy machine.

``checkout(ref)`` puts the commit ``ref`` in a temporary git worktree; a subprocess started with
``code_env(root)`` (``PYTHONPATH`` and the working directory at that root) imports *that* ``mountainid``
and ``web``, so both versions run side by side from one benchmark, interleaved, against the same photos.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The tree of ``ref`` in a temporary worktree (removed afterwards); its root path."""
    with tempfile.TemporaryDirectory(prefix="baseline-") as folder:
        root = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(root), ref], cwd=REPO, check=True)
        try:
            yield root
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(root)], cwd=REPO, check=False)


def code_env(root: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose Python imports the packages under ``root`` before the installed checkout."""
    return {**(os.environ if env is None else env), "PYTHONPATH": str(root)}


def short(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.strip()
