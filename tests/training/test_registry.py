"""Registry and lease on both backends: complete-or-invisible versions, guarded LATEST, one lease holder."""

from __future__ import annotations

import json
import time

import pytest

from mountainid.bucket import LATEST, TRAINING_LEASE, is_version, model_file, new_version
from mountainid.registry import Lease, LeaseHeld, LiveModel, ModelLoadError, Registry
from mountainid.store import BlobStore, PreconditionFailed

FILES = {"model.keras": b"m", "labels.json": b'{"labels": []}', "metrics.json": b'{"test": {"top1": 0.5}}'}


def test_version_ids_sort_by_time_and_are_url_safe() -> None:
    first = new_version()
    time.sleep(1.01)
    second = new_version()
    assert is_version(first) and is_version(second)
    assert first < second


def test_a_version_is_visible_only_once_complete(store: BlobStore) -> None:
    registry = Registry(store)
    assert registry.live() is None and registry.versions() == []
    half = new_version()
    store.put(model_file(half, "model.keras"), b"partial")  # an upload that died before COMPLETE
    assert registry.versions() == []
    with pytest.raises(ModelLoadError, match=half):
        registry.info(half)
    with pytest.raises(ModelLoadError):
        registry.promote(half, 0)
    done = new_version()
    registry.write_version(done, FILES)
    assert registry.versions() == [done]
    assert registry.info(done) == {"test": {"top1": 0.5}}
    with pytest.raises(ValueError, match="already exists"):
        registry.write_version(done, FILES)


def test_latest_moves_only_from_the_generation_that_was_read(store: BlobStore) -> None:
    registry = Registry(store)
    first, second, third = "20260101-000000-aaaa", "20260102-000000-bbbb", "20260103-000000-cccc"
    for version in (first, second, third):
        registry.write_version(version, FILES)
    generation = registry.promote(first, 0)
    assert registry.live() == LiveModel(first, generation)
    with pytest.raises(PreconditionFailed):
        registry.promote(second, 0)  # "no model yet" is stale: there is one
    registry.promote(second, generation)
    with pytest.raises(PreconditionFailed):
        registry.promote(third, generation)  # someone else moved LATEST since we read it
    assert registry.live().version == second
    assert json.loads(store.get(LATEST))["version"] == second


def test_only_one_lease_holder_and_an_expired_lease_is_taken_over(store: BlobStore) -> None:
    first = Lease(store, ttl_s=1.5)
    first.acquire()
    second = Lease(store, ttl_s=60)
    with pytest.raises(LeaseHeld):
        second.acquire()
    first.renew()
    time.sleep(1.6)  # first crashed: it never renews or releases
    second.acquire()
    with pytest.raises(LeaseHeld):
        first.renew()  # the crashed run, if it wakes up, knows it lost
    first.release()  # leaves the new holder's lease alone
    assert json.loads(store.get(TRAINING_LEASE))["owner"] == second.owner
    second.release()
    assert not store.exists(TRAINING_LEASE)
    Lease(store, ttl_s=60).acquire()  # free again
