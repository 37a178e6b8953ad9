"""Web service: warm ``POST /api/v1/predict`` latency and throughput, peak memory, time from start to ready;
the working tree against the code at ``--against REF`` (default ``HEAD``), measured in the same run.

Each version runs as docs/web.md starts it: ``mountainid serve`` (gunicorn, one worker, several threads),
with nothing in the environment the command does not set itself (no ``MALLOC_ARENA_MAX``), in its own
process on loopback; the code of ``REF`` from a temporary git worktree. Clients post real peaks14 photos
as multipart uploads over keep-alive connections.

Run: ``.venv/bin/python benchmarks/web.py [--bucket DIR] [--against REF] [--requests 40] [--rounds 2]``.
Without ``--bucket`` it first trains a small real model (4 peaks x 12 photos) into a temporary
bucket. Both servers run at once and take turns (1 client, then 4, per version, ``--rounds`` times), so a
busy machine slows both alike; it prints p50/p95 latency and requests/s with 1 and with 4 concurrent
clients for each, and the ratio. Then, one server at a time, the worker's peak memory while 8 clients
upload worst-case photos (and a normal upload's latency meanwhile), and a normal upload's latency while 16
uploads stall; and the time to ready. Targets (2-core machine, keypoint verification included, issue 21):
p50 <= 150 ms, p95 <= 250 ms, >= 10 requests/s with 4 clients, peak RSS <= 1.5 GiB, ready within 15 s,
a normal answer within 1 s beside 16 stalled uploads. Pass ``--bucket`` the folder ``benchmarks/train.py
--bucket`` trained into to measure with the full peaks14 gallery.
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
from baseline import REPO, checkout, code_env, short

SHARED = Path(os.environ.get("MOUNTAINID_SHARED", REPO.parent / "shared")).resolve()
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
    """The service's settings, and no allocator tuning from outside: what a person starting it has."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    return {**env, "MOUNTAINID_BUCKET": str(bucket), "MOUNTAINID_WEIGHTS": str(WEIGHTS),
            "MOUNTAINID_CATALOG": "peaks14", "MOUNTAINID_MIN_PHOTOS_PER_CLASS": "5", "PORT": str(port),
            "MOUNTAINID_LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, bucket: Path, log: Path) -> tuple[subprocess.Popen, str, float]:
    """Start ``mountainid serve`` with the code under ``root`` (its output goes to ``log``); return it, its
    URL and the seconds until ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with log.open("ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "mountainid.cli", "serve", "--port", str(port)],
                                   cwd=root, env=code_env(root, server_env(bucket, port)), stdout=output,
                                   stderr=output)
    while True:
        if process.poll() is not None:
            sys.exit(f"gunicorn exited with {process.returncode}; its log:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url, time.perf_counter() - started
        except (requests.ConnectionError, requests.Timeout):
            pass  # not ready yet: gunicorn accepts connections while its worker still loads the model
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


def load(url: str, photos: list[bytes], clients: int, per_client: int) -> tuple[list[float], float]:
    """(latencies in ms, seconds) of ``clients`` concurrent clients sending ``per_client`` photos each."""
    latencies: list[float] = []
    threads = [threading.Thread(target=client, args=(url, photos, per_client, latencies, i * 7))
               for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [x * 1000 for x in latencies], time.perf_counter() - started


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def worst_case_uploads() -> dict[str, bytes]:
    """What costs the most memory per request: a PNG that decodes to 6300 x 6300 (39.7 Mpx, just under
    the 40 Mpx limit) in a few hundred kB, and a JPEG as large as the limits allow."""
    import io

    import numpy as np
    from PIL import Image

    side = 6300
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    grey = ((ramp[None, :] + ramp[:, None]) / 2).astype(np.uint8)
    image = Image.fromarray(np.stack([grey, grey[::-1], grey.T], axis=2))
    png, jpeg = io.BytesIO(), io.BytesIO()
    image.save(png, format="PNG", optimize=False)
    image.save(jpeg, format="JPEG", quality=92)
    return {"png": png.getvalue(), "jpeg": jpeg.getvalue()}


def worker_peak_rss_mb(master: subprocess.Popen) -> float:
    """Peak resident memory (VmHWM) of gunicorn's worker process, in MB."""
    children = subprocess.run(["pgrep", "-P", str(master.pid)], check=False, capture_output=True,
                              text=True).stdout.split()
    peaks = []
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks, default=float("nan"))


def flood(url: str, master: subprocess.Popen, heavy: dict[str, bytes], normal: bytes) -> dict[str, float]:
    """8 clients uploading the worst-case photos (16 in all) while one client sends normal photos;
    then 16 stalled uploads (headers and 2 bytes of 1 MB) while one client sends normal photos."""
    before = worker_peak_rss_mb(master)
    during: list[float] = []
    done = threading.Event()

    def normal_client() -> None:
        with requests.Session() as session:
            while not done.is_set():
                started = time.perf_counter()
                session.post(f"{url}/api/v1/predict", files={"photo": ("n.jpg", normal)}, timeout=120)
                during.append((time.perf_counter() - started) * 1000)

    def heavy_client(index: int) -> None:
        with requests.Session() as session:
            for kind in ("png", "jpeg") if index % 2 else ("jpeg", "png"):
                session.post(f"{url}/api/v1/predict", files={"photo": ("h", heavy[kind])}, timeout=300)

    watcher = threading.Thread(target=normal_client)
    watcher.start()
    heavies = [threading.Thread(target=heavy_client, args=(i,)) for i in range(8)]
    for thread in heavies:
        thread.start()
    for thread in heavies:
        thread.join()
    done.set()
    watcher.join()
    peak = worker_peak_rss_mb(master)
    stalled = []
    port = int(url.rsplit(":", 1)[1])
    for _ in range(16):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 1000000\r\n\r\n\xff\xd8")
        stalled.append(sock)
    stalled_ms = []
    with requests.Session() as session:
        for _ in range(5):
            started = time.perf_counter()
            session.post(f"{url}/api/v1/predict", files={"photo": ("n.jpg", normal)}, timeout=60)
            stalled_ms.append((time.perf_counter() - started) * 1000)
    for sock in stalled:
        sock.close()
    return {"rss_before_mb": before, "rss_peak_mb": peak, "normal_p50_ms": statistics.median(during),
            "normal_p95_ms": percentile(during, 0.95), "normal_n": len(during), "stalled_max_ms": max(stalled_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", type=Path, help="a local bucket with a live model (default: train one)")
    parser.add_argument("--against", default="HEAD", metavar="REF", help="today's code: a git commit (default HEAD)")
    parser.add_argument("--requests", type=int, default=40, help="requests per client count and round (default 40)")
    parser.add_argument("--rounds", type=int, default=2, help="turns each version takes at each load (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, checkout(args.against) as old:
        bucket = args.bucket
        if bucket is None:
            bucket = Path(tmp) / "bucket"
            print("training a small model (4 peaks x 12 photos) ...", flush=True)
            train_small_model(bucket)
        photos = [p.read_bytes() for m in MOUNTAINS
                  for p in sorted((SHARED / "data" / "peaks14" / m).iterdir())[PER_MOUNTAIN:PER_MOUNTAIN + 5]]
        versions = {f"{short(args.against)} (today)": old, "working tree": REPO}
        servers = {name: start_server(root, bucket, Path(tmp) / f"{i}.log")
                   for i, (name, root) in enumerate(versions.items())}
        latencies = {(name, n): [] for name in versions for n in (1, 4)}
        seconds = dict.fromkeys(latencies, 0.0)
        hostile = {}
        try:
            for _, url, _ in servers.values():
                load(url, photos, 1, 10)  # warm-up: first requests pay for lazy initialisation
            for turn in range(args.rounds):
                for n in (1, 4):
                    for name in list(versions)[::1 if turn % 2 else -1]:
                        ms, elapsed = load(servers[name][1], photos, n, max(1, args.requests // n))
                        latencies[name, n] += ms
                        seconds[name, n] += elapsed
            heavy = worst_case_uploads()
            for name, (process, url, _) in servers.items():
                hostile[name] = flood(url, process, heavy, photos[0])
        finally:
            for process, _, _ in servers.values():
                stop_server(process)

    for name, (_, _, ready) in servers.items():
        print(f"{name}: start to ready {ready:.1f} s (target <= 15 s)")
    for n in (1, 4):
        for name in versions:
            ms = latencies[name, n]
            print(f"{name}, {n} client{'s' if n > 1 else ' '}: p50 {statistics.median(ms):6.1f} ms  "
                  f"p95 {percentile(ms, 0.95):6.1f} ms  {len(ms) / seconds[name, n]:5.1f} requests/s  (n={len(ms)})")
    print(f"8 clients uploading worst-case photos ({len(heavy['png']) / 1e3:.0f} kB PNG of 6300x6300, "
          f"{len(heavy['jpeg']) / 1e6:.1f} MB JPEG of 6300x6300; 16 uploads), `mountainid serve` as docs/web.md starts it:")
    for name, figures in hostile.items():
        print(f"  {name}: worker peak RSS {figures['rss_peak_mb']:.0f} MB (before {figures['rss_before_mb']:.0f} MB; "
              f"target <= 1536 MB); a normal upload meanwhile p50 {figures['normal_p50_ms']:.0f} ms, "
              f"p95 {figures['normal_p95_ms']:.0f} ms (n={figures['normal_n']}); beside 16 stalled uploads at most "
              f"{figures['stalled_max_ms']:.0f} ms (5 tries; target <= 1000 ms)")
    (old_name, new_name) = versions
    ratio = {n: statistics.median(latencies[new_name, n]) / statistics.median(latencies[old_name, n]) for n in (1, 4)}
    rate = {name: len(latencies[name, 4]) / seconds[name, 4] for name in versions}
    one = latencies[new_name, 1]
    print(f"working tree against today: p50 ratio {ratio[1]:.2f} (1 client), {ratio[4]:.2f} (4 clients); "
          f"requests/s at 4 clients x{rate[new_name] / rate[old_name]:.2f}; peak RSS "
          f"x{hostile[new_name]['rss_peak_mb'] / hostile[old_name]['rss_peak_mb']:.2f}")
    print(f"targets (working tree): p50 <= 150 ms: {'met' if statistics.median(one) <= 150 else 'MISSED'} "
          f"({statistics.median(one):.0f} ms); p95 <= 250 ms: {'met' if percentile(one, 0.95) <= 250 else 'MISSED'} "
          f"({percentile(one, 0.95):.0f} ms); >= 10 req/s with 4 clients: "
          f"{'met' if rate[new_name] >= 10 else 'MISSED'} ({rate[new_name]:.1f}); peak RSS <= 1536 MB: "
          f"{'met' if hostile[new_name]['rss_peak_mb'] <= 1536 else 'MISSED'} ({hostile[new_name]['rss_peak_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
