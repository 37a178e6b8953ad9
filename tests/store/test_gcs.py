"""What only the Cloud Storage backend has: endpoint and client handling, and its failure modes."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.localcloud import FakeGcsServer, free_port
from mountainid.store import NotFound, StoreError, open_store
from mountainid.store.gcs import GcsBlobStore
from tests.emulators import PROJECT


def test_open_store_reaches_the_emulator_through_the_settings(make_settings, gcs_env: dict[str, str]) -> None:
    store = open_store(make_settings(**gcs_env))
    assert isinstance(store, GcsBlobStore)
    assert store.uri("a.txt") == f"{gcs_env['MOUNTAINID_BUCKET']}/a.txt"
    store.put("a.txt", b"via settings")
    assert store.get("a.txt") == b"via settings"


def test_stores_share_one_lazily_created_client(fake_gcs: FakeGcsServer, gcs_bucket: str) -> None:
    first = GcsBlobStore(gcs_bucket, PROJECT, emulator_host=fake_gcs.url)
    second = GcsBlobStore(gcs_bucket, PROJECT, emulator_host=fake_gcs.url)
    assert first.bucket.client is second.bucket.client


def test_missing_bucket_is_not_found_and_names_it(fake_gcs: FakeGcsServer) -> None:
    store = GcsBlobStore("no-such-bucket", PROJECT, emulator_host=fake_gcs.url)
    with pytest.raises(NotFound, match="gs://no-such-bucket/x"):
        store.put("x", b"1")
    assert store.info("x") is None


def test_unreachable_server_is_a_store_error_within_the_retry_deadline() -> None:
    store = GcsBlobStore("bucket", PROJECT, emulator_host=f"http://127.0.0.1:{free_port()}",
                         timeout_s=1, retry_deadline_s=1)  # constructing it contacts nothing
    for operation in (lambda: store.put("x", b"1"), lambda: store.get("x"), lambda: store.delete("x")):
        started = time.monotonic()
        with pytest.raises(StoreError, match="gs://bucket/x"):
            operation()
        assert time.monotonic() - started < 10


def test_sixteen_concurrent_readers_reuse_pooled_connections(gcs_store: GcsBlobStore, caplog) -> None:
    """Training reads features on 16 threads: no connection may be opened and dropped per request."""
    caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
    for index in range(16):
        gcs_store.put(f"embeddings/x/{index}.npy", bytes(1000))
    with ThreadPoolExecutor(16) as pool:
        sizes = list(pool.map(lambda i: len(gcs_store.get(f"embeddings/x/{i % 16}.npy")), range(160)))
    assert sizes == [1000] * 160
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
