"""Blob store and local-cloud figures: emulator start-up times and put/get latency of a 200 KB
object on GcsBlobStore (fake-gcs-server on loopback) versus LocalBlobStore.

Run: ``.venv/bin/python benchmarks/store.py [--rounds 50] [--size 200000]``. Prints medians (the
machine is shared and noisy) and the GCS/local ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from harness.localcloud import FakeGcsServer, FunctionsFrameworkServer, PubSubEmulator
from mountainid.store import BlobStore, LocalBlobStore
from mountainid.store.gcs import GcsBlobStore, storage_client

RECORDER = os.path.join(os.path.dirname(__file__), "..", "tests", "events", "recorder_function.py")


def median_ms(action: Callable[[int], object], rounds: int) -> float:
    samples = []
    for i in range(rounds):
        started = time.perf_counter()
        action(i)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def put_get(store: BlobStore, data: bytes, rounds: int) -> tuple[float, float]:
    store.put("warmup", data)  # first request opens the connection
    put = median_ms(lambda i: store.put(f"bench/{i}.jpg", data, content_type="image/jpeg"), rounds)
    get = median_ms(lambda i: store.get(f"bench/{i}.jpg"), rounds)
    return put, get


def startup_s(server: FakeGcsServer | PubSubEmulator | FunctionsFrameworkServer) -> float:
    with server:
        assert server.startup_s is not None
        return server.startup_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--startups", type=int, default=3, help="start each server this many times")
    args = parser.parse_args()

    for make in (FakeGcsServer, PubSubEmulator, lambda: FunctionsFrameworkServer(RECORDER, "record")):
        times = [startup_s(make()) for _ in range(args.startups)]
        name = make().name
        print(f"start-up {name:<32} median {statistics.median(times):6.2f} s  "
              f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)})")

    data = os.urandom(args.size)
    with tempfile.TemporaryDirectory() as folder, FakeGcsServer() as server:
        storage_client("bench", server.url).create_bucket("bench")
        local = put_get(LocalBlobStore(folder), data, args.rounds)
        gcs = put_get(GcsBlobStore("bench", "bench", emulator_host=server.url), data, args.rounds)
    print(f"{args.size // 1000} KB object, median of {args.rounds}:")
    print(f"  LocalBlobStore          put {local[0]:7.2f} ms   get {local[1]:7.2f} ms")
    print(f"  GcsBlobStore (fake-gcs) put {gcs[0]:7.2f} ms   get {gcs[1]:7.2f} ms")
    print(f"  ratio gcs/local         put {gcs[0] / local[0]:7.1f} x    get {gcs[1] / local[1]:7.1f} x")


if __name__ == "__main__":
    main()
