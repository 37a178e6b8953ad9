"""`mountainid run` on the embedded default: ingest -> filter -> training, in-process, on real photos."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from mountainid.catalog import load_catalog
from mountainid.config import Settings
from mountainid.flickr.fake import FakeFlickr
from mountainid.pipeline import EmbeddedPipeline
from mountainid.store import LocalBlobStore

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
    pipeline = EmbeddedPipeline(settings, load_catalog(settings.catalog))
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
