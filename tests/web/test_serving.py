"""ModelHolder (mountainid/serving.py) without Flask: following LATEST, skipping broken versions."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from mountainid.bucket import LATEST
from mountainid.events import InProcessBus
from mountainid.registry import Registry
from mountainid.serving import ModelHolder
from mountainid.store import LocalBlobStore
from tests.web.conftest import publish_copy, web_settings


@pytest.fixture()
def store(bucket_copy: Path) -> LocalBlobStore:
    return LocalBlobStore(bucket_copy)


@pytest.fixture()
def holder(store: LocalBlobStore, weights_path: Path, bucket_copy: Path):
    holder = ModelHolder(store, web_settings(weights_path, bucket_copy, MOUNTAINID_MODEL_POLL_S="60"))
    yield holder
    holder.stop()


def test_no_model_until_latest_exists(weights_path: Path, empty_bucket: Path) -> None:
    holder = ModelHolder(LocalBlobStore(empty_bucket), web_settings(weights_path, empty_bucket))
    assert holder.check_now() is None and holder.predictor is None
    assert holder.status()["version"] is None


def test_loads_latest_and_keeps_it_while_latest_is_unchanged(holder: ModelHolder, store: LocalBlobStore) -> None:
    first = holder.check_now()
    assert first is not None and first.version == Registry(store).live().version
    assert holder.check_now() is first  # same generation: nothing loaded again


def test_swaps_to_a_new_version_and_old_references_keep_working(holder: ModelHolder, store: LocalBlobStore,
                                                                 k2_heldout: Path) -> None:
    old = holder.check_now()
    new_version = publish_copy(store, old.version)
    new = holder.check_now()
    assert new is not old and new.version == new_version and holder.predictor is new
    # A request that took the old reference before the swap finishes on the old model.
    assert old.predict(k2_heldout.read_bytes()).model_version == old.version
    assert new.predict(k2_heldout.read_bytes()).model_version == new_version


def test_broken_version_is_skipped_and_remembered(holder: ModelHolder, store: LocalBlobStore,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    good = holder.check_now()
    broken = publish_copy(store, good.version, broken="model.keras")
    with caplog.at_level(logging.INFO, logger="mountainid.serving"):
        assert holder.check_now() is good  # the old model keeps serving
        assert broken in holder.status()["failed_versions"]
        # LATEST rewritten to the same broken version (new generation): skipped without another load.
        registry = Registry(store)
        registry.promote(broken, registry.live().generation)
        assert holder.check_now() is good
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("model load failed, keeping the old model") == 1
    assert "model version skipped: it failed to load before" in messages
    # A forced reload (the admin action) tries again, and still keeps the good one when it fails.
    assert holder.check_now(force=True) is good
    # The next good version is picked up.
    fixed = publish_copy(store, good.version)
    assert holder.check_now().version == fixed


def test_a_version_whose_keypoint_gallery_is_damaged_is_skipped(holder: ModelHolder, store: LocalBlobStore) -> None:
    good = holder.check_now()
    broken = publish_copy(store, good.version, broken="verification.npz")
    assert holder.check_now() is good  # the old model keeps serving
    status = holder.status()
    assert broken in status["failed_versions"] and "cannot load" in status["last_error"]


def test_unreadable_latest_keeps_the_model_and_the_watcher_alive(holder: ModelHolder, store: LocalBlobStore) -> None:
    good = holder.check_now()
    store.put(LATEST, b'{"version": "../../etc"}')
    holder.start()
    deadline = time.monotonic() + 30
    while "LATEST" not in (holder.status()["last_error"] or ""):  # the watcher read the bad pointer
        assert time.monotonic() < deadline, holder.status()
        time.sleep(0.05)
    assert holder.predictor is good
    fixed = publish_copy(store, good.version)
    holder.notify()
    deadline = time.monotonic() + 30
    while holder.predictor.version != fixed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder.predictor.version == fixed


def test_model_published_event_wakes_the_watcher(holder: ModelHolder, store: LocalBlobStore) -> None:
    """Poll interval 60 s: only the in-process event can make the swap happen within the test."""
    bus = InProcessBus()
    bus.subscribe("model-published", holder.on_model_published)
    holder.start()
    deadline = time.monotonic() + 30
    while holder.predictor is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first = holder.predictor
    new_version = publish_copy(store, first.version)
    bus.publish_json("model-published", {"version": new_version})
    bus.drain()
    while holder.predictor.version != new_version and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder.predictor.version == new_version


def test_start_loads_the_live_model_before_returning(holder: ModelHolder, store: LocalBlobStore) -> None:
    """A cold instance serves the live model from its first request (no "no model yet" 503)."""
    holder.start()
    assert holder.predictor is not None and holder.predictor.version == Registry(store).live().version


def test_start_without_any_model_returns_at_once(weights_path: Path, empty_bucket: Path) -> None:
    holder = ModelHolder(LocalBlobStore(empty_bucket), web_settings(weights_path, empty_bucket))
    started = time.perf_counter()
    holder.start()
    try:
        assert holder.predictor is None and time.perf_counter() - started < 2.0
    finally:
        holder.stop()
