"""One contract for every BlobStore: each test runs on LocalBlobStore and on GcsBlobStore against a
real fake-gcs-server (the ``store`` fixture), so code written against one backend works on the other."""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mountainid.store import BlobStore, LocalBlobStore, NotFound, PreconditionFailed


def increment(store: BlobStore, name: str) -> None:
    """Add one to a counter object with a compare-and-swap loop (re-read and retry on a lost race)."""
    while True:
        current = store.info(name)
        value = int(store.get(name)) if current else 0
        try:
            store.put(name, str(value + 1).encode(), if_generation_match=current.generation if current else 0)
            return
        except PreconditionFailed:
            continue


def test_put_get_info_round_trip(store: BlobStore) -> None:
    data = os.urandom(200_000)
    metadata = {"owner": "12345@N00", "title": "Mont Blanc – côté italien", "tags": "alps,snow"}
    generation = store.put("raw/mont-blanc/1.jpg", data, metadata=metadata, content_type="image/jpeg")
    assert store.get("raw/mont-blanc/1.jpg") == data
    info = store.info("raw/mont-blanc/1.jpg")
    assert info is not None
    assert (info.name, info.size, info.generation) == ("raw/mont-blanc/1.jpg", len(data), generation)
    assert info.content_type == "image/jpeg"
    assert dict(info.metadata) == metadata
    assert info.updated > 0
    assert store.exists("raw/mont-blanc/1.jpg")


def test_empty_object_and_text(store: BlobStore) -> None:
    store.put("state/empty", b"")
    assert store.get("state/empty") == b""
    assert store.info("state/empty").size == 0  # type: ignore[union-attr]
    store.put("models/LATEST", b"v2024-01-01", content_type="text/plain")
    assert store.get_text("models/LATEST") == "v2024-01-01"


def test_overwrite_replaces_data_and_metadata_and_increases_generation(store: BlobStore) -> None:
    first = store.put("a.txt", b"one", metadata={"k": "1", "old": "x"})
    second = store.put("a.txt", b"two", metadata={"k": "2"})
    assert second > first
    assert store.get("a.txt") == b"two"
    assert dict(store.info("a.txt").metadata) == {"k": "2"}  # type: ignore[union-attr]


def test_list_by_prefix_in_name_order(store: BlobStore) -> None:
    names = ["raw/k2/3.jpg", "raw/k2/10.jpg", "raw/k2-north/1.jpg", "raw/eiger/2.jpg", "accepted/k2/3.jpg",
             "raw/k2/sub/4.jpg", "rawfile"]
    for name in names:
        store.put(name, name.encode())
    assert store.list_names() == sorted(names)
    assert store.list_names("raw/k2/") == ["raw/k2/10.jpg", "raw/k2/3.jpg", "raw/k2/sub/4.jpg"]
    assert store.list_names("raw/k2") == ["raw/k2-north/1.jpg", "raw/k2/10.jpg", "raw/k2/3.jpg",
                                          "raw/k2/sub/4.jpg"]
    assert store.list_names("nothing/") == []
    listed = {blob.name: blob for blob in store.list("raw/eiger/")}
    assert listed["raw/eiger/2.jpg"].size == len(b"raw/eiger/2.jpg")
    assert listed["raw/eiger/2.jpg"].generation == store.info("raw/eiger/2.jpg").generation  # type: ignore


def test_missing_objects(store: BlobStore) -> None:
    assert store.info("no/such.jpg") is None
    assert not store.exists("no/such.jpg")
    with pytest.raises(NotFound):
        store.get("no/such.jpg")
    with pytest.raises(NotFound):
        store.delete("no/such.jpg")
    with pytest.raises(NotFound):
        store.delete("no/such.jpg", if_generation_match=5)
    with pytest.raises(NotFound):
        store.copy("no/such.jpg", "dst.jpg")
    assert not store.exists("dst.jpg")


def test_delete(store: BlobStore) -> None:
    generation = store.put("x/1", b"1")
    store.put("x/2", b"2")
    with pytest.raises(PreconditionFailed):
        store.delete("x/1", if_generation_match=generation + 1)
    assert store.get("x/1") == b"1"
    store.delete("x/1", if_generation_match=generation)
    store.delete("x/2")
    assert store.list_names("x/") == []
    with pytest.raises(NotFound):
        store.get("x/1")


def test_copy_keeps_or_replaces_metadata(store: BlobStore) -> None:
    store.put("raw/k2/1.jpg", b"jpeg", metadata={"owner": "a", "title": "K2"}, content_type="image/jpeg")
    generation = store.copy("raw/k2/1.jpg", "accepted/k2/1.jpg")
    copied = store.info("accepted/k2/1.jpg")
    assert copied is not None and copied.generation == generation
    assert (copied.size, copied.content_type, dict(copied.metadata)) == (4, "image/jpeg",
                                                                         {"owner": "a", "title": "K2"})
    store.copy("raw/k2/1.jpg", "rejected/k2/1.jpg", metadata={"reason": "not a mountain"})
    rejected = store.info("rejected/k2/1.jpg")
    assert dict(rejected.metadata) == {"reason": "not a mountain"}  # type: ignore[union-attr]
    assert rejected.content_type == "image/jpeg"  # type: ignore[union-attr]
    assert store.get("rejected/k2/1.jpg") == b"jpeg"
    assert store.get("raw/k2/1.jpg") == b"jpeg"  # the source is untouched


def test_copy_with_generation_precondition(store: BlobStore) -> None:
    store.put("src", b"new")
    existing = store.put("dst", b"old")
    with pytest.raises(PreconditionFailed):
        store.copy("src", "dst", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        store.copy("src", "dst", if_generation_match=existing + 1)
    assert store.get("dst") == b"old"
    assert store.copy("src", "dst", if_generation_match=existing) > existing
    assert store.get("dst") == b"new"
    store.copy("src", "fresh", if_generation_match=0)
    assert store.get("fresh") == b"new"


def test_if_generation_match_zero_means_must_not_exist(store: BlobStore) -> None:
    generation = store.put("state/lease", b"owner-1", if_generation_match=0)
    assert generation > 0
    with pytest.raises(PreconditionFailed):
        store.put("state/lease", b"owner-2", if_generation_match=0)
    assert store.get("state/lease") == b"owner-1"


def test_if_generation_match_stale_and_current(store: BlobStore) -> None:
    first = store.put("state/ingest/k2.json", b'{"page": 1}')
    second = store.put("state/ingest/k2.json", b'{"page": 2}', if_generation_match=first)
    assert second > first
    with pytest.raises(PreconditionFailed):
        store.put("state/ingest/k2.json", b'{"page": 99}', if_generation_match=first)  # stale
    with pytest.raises(PreconditionFailed):
        store.put("missing.json", b"{}", if_generation_match=first)  # expects an object that is not there
    assert store.get("state/ingest/k2.json") == b'{"page": 2}'
    assert not store.exists("missing.json")


@pytest.mark.parametrize("name", ["", "/abs", "../escape", "a/../../b", "a//b", "dir/", "./a", "a b",
                                  "a/./b", "raw/k2/..", "tab\there", "ünïcode"])
def test_unsafe_names_rejected(store: BlobStore, name: str) -> None:
    with pytest.raises(ValueError, match="unsafe object name"):
        store.put(name, b"x")
    with pytest.raises(ValueError, match="unsafe object name"):
        store.get(name)


def test_local_names_stay_inside_the_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "bucket")
    with pytest.raises(ValueError):
        store.put("../outside.txt", b"x")
    assert not (tmp_path / "outside.txt").exists()
    assert store.list_names() == []  # the .meta sidecars are not objects


def test_uri(store: BlobStore) -> None:
    uri = store.uri("raw/k2/1.jpg")
    assert uri.endswith("/raw/k2/1.jpg")
    assert uri.startswith("gs://" if type(store).__name__ == "GcsBlobStore" else "file:///")


def test_concurrent_compare_and_swap_has_exactly_one_winner(store: BlobStore) -> None:
    threads = 6
    generation = store.put("models/LATEST", b"v0")
    for round_number in range(1, 5):
        barrier = threading.Barrier(threads)

        def attempt(worker: int, expected: int, value: bytes, start: threading.Barrier) -> int | None:
            start.wait()  # all writers fire together, each expecting the same generation
            try:
                return store.put("models/LATEST", value, if_generation_match=expected)
            except PreconditionFailed:
                return None

        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(attempt, worker, generation, f"v{round_number}-w{worker}".encode(), barrier)
                       for worker in range(threads)]
            results = [future.result() for future in futures]
        winners = [(worker, gen) for worker, gen in enumerate(results) if gen is not None]
        assert len(winners) == 1, f"round {round_number}: {results}"
        worker, generation = winners[0]
        assert store.get("models/LATEST") == f"v{round_number}-w{worker}".encode()
        assert store.info("models/LATEST").generation == generation  # type: ignore[union-attr]


def test_counter_with_cas_retry_loop_loses_no_update(store: BlobStore) -> None:
    workers, per_worker = 4, 8
    barrier = threading.Barrier(workers)

    def work(_: int) -> None:
        barrier.wait()  # start together so the workers really race
        for _ in range(per_worker):
            increment(store, "counter")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(workers)))
    assert int(store.get("counter")) == workers * per_worker


def _increment_many(root: str, times: int) -> None:
    store = LocalBlobStore(root)
    for _ in range(times):
        increment(store, "counter")


def test_local_store_cas_across_processes(tmp_path: Path) -> None:
    root = str(tmp_path / "bucket")
    LocalBlobStore(root)
    context = multiprocessing.get_context("spawn")  # no fork of a process holding gRPC threads
    processes = [context.Process(target=_increment_many, args=(root, 15)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert int(LocalBlobStore(root).get("counter")) == 45
