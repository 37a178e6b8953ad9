"""Ingest throughput: N photos from the fake Flickr server (real peaks14 photos + street noise) into
(a) a local folder and (b) fake-gcs-server, through the real client, validation and store.

Run: ``.venv/bin/python benchmarks/ingest.py [--photos 200] [--rounds 3] [--workers 8]``. Each round
ingests into a fresh bucket; prints, per backend, the median photos/s over rounds and the median
per-photo time (download + decode check + conditional write, taken from the "photo stored" log
lines). Target: at least 20 photos/s into fake-gcs-server on the 2-core dev machine.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from harness.fake_flickr import FakeFlickr
from harness.localcloud import FakeGcsServer
from mountainid.catalog import load_catalog
from mountainid.config import load_settings
from mountainid.ingest import run_ingest
from mountainid.store import BlobStore, LocalBlobStore
from mountainid.store.gcs import GcsBlobStore, storage_client

SHARED = Path(os.environ.get("MOUNTAINID_SHARED", Path(__file__).resolve().parents[2] / "shared"))


class PhotoTimes(logging.Handler):
    """Collects the per-photo milliseconds the ingest logs with each stored photo."""

    def __init__(self) -> None:
        super().__init__()
        self.ms: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "photo stored":
            self.ms.append(record.mountainid_fields["ms"])  # type: ignore[attr-defined]


def bench(name: str, new_store: Callable[[], BlobStore], rest_url: str, photos: int, rounds: int,
          workers: int) -> None:
    catalog = load_catalog("peaks14")
    settings = load_settings({"FLICKR_REST_URL": rest_url, "MOUNTAINID_CATALOG": "peaks14",
                              "MOUNTAINID_PHOTOS_PER_RUN": str(math.ceil(photos / len(catalog.mountains))),
                              "MOUNTAINID_DOWNLOAD_WORKERS": str(workers), "MOUNTAINID_LOG_LEVEL": "WARNING"})
    times = PhotoTimes()
    logger = logging.getLogger("mountainid.ingest")
    logger.addHandler(times)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    rates, stored = [], []
    try:
        for _ in range(rounds):
            report = run_ingest(settings, new_store(), catalog)
            assert report.ok, report.as_dict()
            rates.append(report.stored / report.seconds)
            stored.append(report.stored)
    finally:
        logger.removeHandler(times)
    print(f"{name:<16} {statistics.median(stored):4.0f} photos/run  {statistics.median(rates):7.1f} photos/s "
          f"(min {min(rates):.1f}, max {max(rates):.1f}, rounds={rounds})  "
          f"per photo median {statistics.median(times.ms):6.1f} ms  p90 {_p90(times.ms):6.1f} ms")


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200, help="photos per run, spread over the 14 peaks")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="download threads (MOUNTAINID_DOWNLOAD_WORKERS)")
    args = parser.parse_args()

    peaks, street = SHARED / "data" / "peaks14", SHARED / "data" / "scenes" / "street"
    with FakeFlickr(peaks, street, catalog=load_catalog("peaks14")) as flickr, \
            tempfile.TemporaryDirectory() as folder, FakeGcsServer() as gcs:
        print(f"fake Flickr over {peaks} (+ noise), {args.workers} download workers")
        bench("local folder", lambda: LocalBlobStore(Path(folder) / uuid.uuid4().hex), flickr.rest_url,
              args.photos, args.rounds, args.workers)

        def gcs_store() -> BlobStore:
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            storage_client("mountainid-local", gcs.url).create_bucket(bucket)
            return GcsBlobStore(bucket, "mountainid-local", emulator_host=gcs.url)

        bench("fake-gcs-server", gcs_store, flickr.rest_url, args.photos, args.rounds, args.workers)


if __name__ == "__main__":
    main()
