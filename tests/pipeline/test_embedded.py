"""`mountainid run` on the embedded default: ingest -> filter -> training, in-process, on real photos."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.fake_flickr import FakeFlickr
from mountainid.catalog import load_catalog
from mountainid.config import Settings
from mountainid.pipeline import EmbeddedPipeline
from mountainid.registry import Registry
from mountainid.store import LocalBlobStore
from mountainid.training.job import JobConfig
from mountainid.training.train import HeadConfig
from mountainid.vision.features import FeatureSpec
from tests.training.conftest import FAST, TINY_FINE_TUNE
from web import create_app
from web.server import ServerThread

PEAKS = ("K2", "Lhotse", "Makalu")


@pytest.fixture()
def flickr(tmp_path: Path, shared_dir: Path) -> Iterator[FakeFlickr]:
    """A fake Flickr holding three real peaks (plus street photos as noise)."""
    folder = tmp_path / "flickr"
    folder.mkdir()
    for peak in PEAKS:
        (folder / peak).symlink_to(shared_dir / "data" / "peaks14" / peak)
    with FakeFlickr(folder, shared_dir / "data" / "scenes" / "street", catalog=load_catalog("peaks14")) as fake:
        yield fake


@pytest.fixture()
def settings(make_settings, flickr: FakeFlickr) -> Settings:
    return make_settings(FLICKR_REST_URL=flickr.rest_url, MOUNTAINID_CATALOG="peaks14",
                         MOUNTAINID_MIN_PHOTOS_PER_CLASS="5", MOUNTAINID_RETRAIN_MIN_NEW_PHOTOS="1000")


def photo_ids(store: LocalBlobStore, prefix: str) -> list[str]:
    return [name.rsplit("/", 1)[1].removesuffix(".jpg").removesuffix(".npy") for name in store.list_names(prefix)]


def test_one_cycle_fills_judges_and_trains_then_a_second_adds_only_new_photos(settings: Settings) -> None:
    # The tests' quick fast tier: the tier's defaults train five heads here, and `mountainid train` is their test.
    pipeline = EmbeddedPipeline(settings, load_catalog(settings.catalog), fast=FAST)
    published: list[object] = []
    pipeline.bus.subscribe(settings.topic_model_published, published.append)

    first = pipeline.cycle(photos_per_run=12)

    store = pipeline.store
    raw, accepted, rejected = photo_ids(store, "raw/"), photo_ids(store, "accepted/"), photo_ids(store, "rejected/")
    assert len(raw) >= 30, first
    # Every stored photo was judged exactly once, through the in-process GCS-style notification.
    assert sorted(accepted + rejected) == sorted(raw)
    assert rejected, "the street photos mixed into the search results should be rejected"
    assert set(photo_ids(store, "embeddings/")) >= set(accepted)  # accepted photos have cached embeddings
    assert first["trained"] == "promoted" and len(published) == 1
    assert not pipeline.bus.dead_letters

    before = {blob.name: blob.generation for blob in store.list("") if not blob.name.startswith("state/")}
    second = pipeline.cycle(photos_per_run=12)
    after = {blob.name: blob.generation for blob in store.list("") if not blob.name.startswith("state/")}

    assert {name: after[name] for name in before} == before  # nothing already there was rewritten
    new_raw = set(photo_ids(store, "raw/")) - set(raw)
    assert new_raw, "the second cycle continues from the cursor and fetches the next photos"
    assert sorted(photo_ids(store, "accepted/") + photo_ids(store, "rejected/")) == sorted(photo_ids(store, "raw/"))
    assert second["trained"] == "not due"  # fewer new photos than MOUNTAINID_RETRAIN_MIN_NEW_PHOTOS


def test_photos_stored_before_a_crash_are_judged_by_the_next_cycle(make_settings, shared_dir: Path) -> None:
    # A run that died after the ingest stored photos but before the filter saw their events:
    # the photos are in raw/, with no notification pending and no result.
    settings = make_settings(MOUNTAINID_CATALOG="peaks14", MOUNTAINID_MIN_PHOTOS_PER_CLASS="1000")
    orphan_store = LocalBlobStore(settings.local_root)
    k2 = sorted((shared_dir / "data" / "peaks14" / "K2").iterdir())[:2]
    street = sorted((shared_dir / "data" / "scenes" / "street").iterdir())[:1]
    for index, path in enumerate(k2 + street):
        orphan_store.put(f"raw/k2/orphan{index}.jpg", path.read_bytes(), content_type="image/jpeg")

    # Nothing new on Flickr this time: the cycle's only work is the catch-up.
    with FakeFlickr(shared_dir / "data" / "peaks14", catalog=load_catalog("peaks14"), visible=0) as quiet_flickr:
        quiet = dataclasses.replace(settings, flickr_rest_url=quiet_flickr.rest_url)
        summary = EmbeddedPipeline(quiet, load_catalog(quiet.catalog)).cycle()

    assert sum(summary["caught_up"].values()) == 3
    results = photo_ids(orphan_store, "accepted/") + photo_ids(orphan_store, "rejected/")
    assert sorted(results) == ["orphan0", "orphan1", "orphan2"]
    assert "orphan2" in photo_ids(orphan_store, "rejected/")  # the street photo


def test_the_site_serves_the_fast_tier_at_once_then_swaps_to_the_fine_tune(settings: Settings,
                                                                             shared_dir: Path) -> None:
    """What `make run` does: serve the fast tier's model, fine-tune in the background, hot-swap when it passes."""
    # A fast tier that learns nothing (a random last layer), so the fine-tune is surely not significantly
    # worse; the gate compares on the few test photos of this small bucket (its minimum is tested elsewhere).
    untrained = JobConfig(FeatureSpec(), HeadConfig(epochs=1, learning_rate=1e-9), lease_s=600)
    settings = dataclasses.replace(settings, promotion_min_test=0)
    pipeline = EmbeddedPipeline(settings, load_catalog(settings.catalog), fast=untrained, fine_tune=TINY_FINE_TUNE)
    assert pipeline.cycle(photos_per_run=20)["trained"] == "promoted"
    fast_version = Registry(pipeline.store).live().version
    app = create_app(settings, store=pipeline.store)
    pipeline.bus.subscribe(settings.topic_model_published, app.extensions["mountainid"].holder.on_model_published)
    server = ServerThread(app, "127.0.0.1", 0).start()
    photo = (shared_dir / "data" / "peaks14" / "K2").iterdir().__next__().read_bytes()
    try:
        fine_tune = threading.Thread(target=pipeline.fine_tune)
        fine_tune.start()
        answer = requests.post(f"{server.url}/api/v1/predict", data=photo, timeout=60)
        assert answer.status_code == 200 and answer.json()["model_version"] == fast_version
        assert fine_tune.is_alive(), "the site answered while the fine-tune was still running"
        fine_tune.join(600)
        tuned_version = Registry(pipeline.store).live().version
        assert tuned_version != fast_version
        assert Registry(pipeline.store).info(tuned_version)["tier"] == "finetune"
        deadline = time.monotonic() + 60
        while requests.get(f"{server.url}/api/v1/model", timeout=10).json().get("version") != tuned_version:
            assert time.monotonic() < deadline, "the site did not swap to the fine-tuned model"
            time.sleep(0.2)
        answer = requests.post(f"{server.url}/api/v1/predict", data=photo, timeout=60)
        assert answer.json()["model_version"] == tuned_version
    finally:
        server.stop()
        app.extensions["mountainid"].holder.stop()


def test_a_busy_port_is_reported_before_anything_runs(make_settings, tmp_path: Path, capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mountainid import cli
    from mountainid.config import get_settings

    settings = make_settings()
    monkeypatch.setenv("MOUNTAINID_BUCKET", str(settings.local_root))
    monkeypatch.setenv("MOUNTAINID_WEIGHTS", settings.weights)
    get_settings.cache_clear()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        assert cli.main(["run", "--port", str(port), "--fake-flickr", str(tmp_path)]) == 2
    get_settings.cache_clear()
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"port {port} is not free" in err[0]
    assert not settings.local_root.exists()  # nothing was written
