"""Run the same call from several threads released together, to make races happen for certain."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def run_together(call: Callable[[], T], times: int, timeout: float = 120.0) -> list[T]:
    """Call ``call`` from ``times`` threads that all start at once; their results (errors re-raised)."""
    barrier = threading.Barrier(times)

    def released() -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(times) as pool:
        futures = [pool.submit(released) for _ in range(times)]
        return [future.result(timeout=timeout) for future in futures]
