"""Web service: warm ``POST /api/v1/predict`` latency and throughput, and time from start to ready.

The app runs as in production: ``gunicorn -c python:web.gunicorn_conf 'web:create_app()'`` (one
worker, several threads) in its own process, on loopback. Clients post real peaks14 photos as
multipart uploads over keep-alive connections.

Run: ``.venv/bin/python benchmarks/web.py [--bucket DIR] [--requests 80] [--seconds 20] [--starts 3]``.
Without ``--bucket`` it first trains a small real model (4 peaks x 12 photos) into a temporary
bucket. Prints the median time to ready over ``--starts`` cold starts, then p50/p95 latency and
requests/s with 1 and with 4 concurrent clients. Targets (2-core machine): p50 <= 100 ms,
>= 15 requests/s with 4 clients, ready within 15 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOUNTAINID_SHARED", REPO.parent / "shared"))
WEIGHTS = SHARED / "models" / "imagenet" / "mobilenet_v2_1.0_224_imagenet.weights.h5"
MOUNTAINS = ("K2", "Mount Everest", "Annapurna", "Nanga Parbat")
PER_MOUNTAIN = 12


def train_small_model(bucket: Path) -> None:
    """The same small real model as the web tests' fixture, through the training API."""
    from mountainid.catalog import load_catalog
    from mountainid.config import load_settings
    from mountainid.events import InProcessBus
    from mountainid.store import LocalBlobStore
    from mountainid.training.folders import import_folder
    from mountainid.training.job import JobConfig, train_and_register

    photos = bucket.parent / "photos"
    for mountain in MOUNTAINS:
        (photos / mountain).mkdir(parents=True)
        for path in sorted((SHARED / "data" / "peaks14" / mountain).iterdir())[:PER_MOUNTAIN]:
            (photos / mountain / path.name).symlink_to(path)
    settings = load_settings(server_env(bucket, 0))
    store = LocalBlobStore(bucket)
    import_folder(store, settings, photos, load_catalog(settings.catalog))
    result = train_and_register(settings, store, InProcessBus(), JobConfig())
    if not result.promoted:
        sys.exit(f"training did not promote a model: {result}")


def server_env(bucket: Path, port: int) -> dict[str, str]:
    return {**os.environ, "MOUNTAINID_BUCKET": str(bucket), "MOUNTAINID_WEIGHTS": str(WEIGHTS),
            "MOUNTAINID_CATALOG": "peaks14", "MOUNTAINID_MIN_PHOTOS_PER_CLASS": "5", "PORT": str(port),
            "MOUNTAINID_LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bucket: Path, log: Path) -> tuple[subprocess.Popen, str, float]:
    """Start gunicorn (its output goes to ``log``); return it, its URL and the seconds until ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with log.open("ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "python:web.gunicorn_conf",
                                    "--bind", f"127.0.0.1:{port}", "web:create_app()"],
                                   cwd=REPO, env=server_env(bucket, port), stdout=output, stderr=output)
    while True:
        if process.poll() is not None:
            sys.exit(f"gunicorn exited with {process.returncode}; its log:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url, time.perf_counter() - started
        except requests.ConnectionError:
            pass
        if time.perf_counter() - started > 120:
            process.kill()
            sys.exit(f"the server was not ready after 120 s; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(30)


def client(url: str, photos: list[bytes], count: int, latencies: list[float], offset: int) -> None:
    with requests.Session() as session:
        for i in range(count):
            photo = photos[(offset + i) % len(photos)]
            started = time.perf_counter()
            response = session.post(f"{url}/api/v1/predict", files={"photo": ("photo.jpg", photo)}, timeout=60)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                sys.exit(f"request failed: {response.status_code} {response.text[:200]}")


def load(url: str, photos: list[bytes], clients: int, per_client: int) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, requests/s) with ``clients`` concurrent clients."""
    latencies: list[float] = []
    threads = [threading.Thread(target=client, args=(url, photos, per_client, latencies, i * 7))
               for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], len(ms) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", type=Path, help="a local bucket with a live model (default: train one)")
    parser.add_argument("--requests", type=int, default=80, help="requests per client count (default 80)")
    parser.add_argument("--starts", type=int, default=3, help="cold starts to time (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bucket = args.bucket
        if bucket is None:
            bucket = Path(tmp) / "bucket"
            print("training a small model (4 peaks x 12 photos) ...", flush=True)
            train_small_model(bucket)
        photos = [p.read_bytes() for m in MOUNTAINS
                  for p in sorted((SHARED / "data" / "peaks14" / m).iterdir())[PER_MOUNTAIN:PER_MOUNTAIN + 5]]

        log = Path(tmp) / "gunicorn.log"
        ready = []
        for _ in range(args.starts - 1):
            process, _url, seconds = start_server(bucket, log)
            ready.append(seconds)
            stop_server(process)
        process, url, seconds = start_server(bucket, log)
        ready.append(seconds)
        try:
            load(url, photos, 1, 10)  # warm-up: first requests pay for lazy initialisation
            results = {n: load(url, photos, n, max(1, args.requests // n)) for n in (1, 4)}
        finally:
            stop_server(process)

    print(f"start to ready (gunicorn, 1 worker): median {statistics.median(ready):.1f} s "
          f"over {len(ready)} starts {[round(s, 1) for s in ready]}  (target <= 15 s)")
    for n, (p50, p95, rate) in results.items():
        print(f"{n} client{'s' if n > 1 else ' '}: p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  {rate:5.1f} requests/s")
    p50_one, _, _ = results[1]
    print(f"targets: p50 <= 100 ms: {'met' if p50_one <= 100 else 'MISSED'} ({p50_one:.0f} ms, 1 client); "
          f">= 15 req/s with 4 clients: {'met' if results[4][2] >= 15 else 'MISSED'} ({results[4][2]:.1f}); "
          f"ready <= 15 s: {'met' if statistics.median(ready) <= 15 else 'MISSED'}")


if __name__ == "__main__":
    main()
