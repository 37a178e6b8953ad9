"""The re-sweep (issue 23, finding 7): photos the min_upload_date cursor passed over, found later.

A photo uploaded long ago under a licence we do not accept, relicensed since, sorts before the cursor:
the usual walk never sees it again. The re-sweep walks the upload dates the cursor has passed, in
bounded steps with its own resumable state, over the real fake Flickr.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest

from harness.fake_flickr import FakeFlickr, FakePhoto
from mountainid.bucket import cursor_name, raw_name, resweep_name
from mountainid.catalog import load_catalog
from mountainid.config import Settings
from mountainid.events.cloudevents import pubsub_event
from mountainid.ingest import Cursor, handle_tick, run_ingest
from mountainid.store import BlobStore

PEAKS = load_catalog("peaks14")
ACCEPTED = "4,5,7,8,9,10"  # the default policy, spelled out: the fake's other photos are not accepted


def ingest_everything(settings: Settings, store: BlobStore, slug: str) -> None:
    while run_ingest(settings, store, PEAKS, mountains=[slug]).stored:
        pass


def passed_over(fake: FakeFlickr, settings: Settings, store: BlobStore, slug: str) -> list[FakePhoto]:
    """Photos before the cursor that the accepted licences left out, oldest first."""
    cursor = Cursor.from_json(store.get(cursor_name(slug)))
    return [p for p in fake.photos(slug) if p.license not in settings.licenses and p.uploaded < cursor.uploaded]


def test_a_relicensed_old_photo_is_found_by_the_resweep_not_by_the_usual_walk(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mountainid")
    fake_flickr.upload_more(slugs=["k2"])
    settings = flickr_settings(MOUNTAINID_LICENSES=ACCEPTED, MOUNTAINID_PHOTOS_PER_RUN="50")
    assert run_ingest(settings, store, PEAKS, mountains=["k2"], resweep=True).stored == 0
    assert store.list_names("state/ingest/resweep/") == [], "nothing passed over before the first run"
    ingest_everything(settings, store, "k2")
    old = passed_over(fake_flickr, settings, store, "k2")[0]
    fake_flickr.relicense(old.id, 4)  # its owner chose CC BY 2.0, years after the upload

    assert run_ingest(settings, store, PEAKS, mountains=["k2"]).stored == 0, "the cursor is past it"
    assert not store.exists(raw_name("k2", old.id))

    step = run_ingest(settings, store, PEAKS, mountains=["k2"], resweep=True)
    assert step.ok and step.stored == 1 and store.exists(raw_name("k2", old.id))
    assert store.info(raw_name("k2", old.id)).metadata["license"] == "4"  # type: ignore[union-attr]
    assert step.present == len(fake_flickr.photos("k2", licenses=settings.licenses)) - 1, "the rest: not downloaded"
    sweep = Cursor.from_json(store.get(resweep_name("k2")))
    main = Cursor.from_json(store.get(cursor_name("k2")))
    assert sweep.finished and sweep.until == main.uploaded
    assert json.loads(store.get(resweep_name("k2")))["max_upload_date"] == main.uploaded
    assert any(r.getMessage() == "re-sweep finished" for r in caplog.records)

    again = run_ingest(settings, store, PEAKS, mountains=["k2"], resweep=True)  # a new sweep, nothing new
    assert again.ok and again.stored == 0


def test_the_resweep_is_bounded_per_step_and_resumes_where_it_stopped(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings]) -> None:
    fake_flickr.upload_more(slugs=["lhotse"])
    settings = flickr_settings(MOUNTAINID_LICENSES=ACCEPTED, MOUNTAINID_PHOTOS_PER_RUN="50",
                               MOUNTAINID_RESWEEP_PAGES="1")
    ingest_everything(settings, store, "lhotse")
    candidates = passed_over(fake_flickr, settings, store, "lhotse")
    first, last = candidates[0], candidates[-1]
    for photo in (first, last):
        fake_flickr.relicense(photo.id, 9)
    fake_flickr.max_per_page = 3  # a few photos fill many pages: the sweep takes several steps

    steps, found = 0, []
    finished = False
    while not finished:
        searches = fake_flickr.hits["search"]
        report = run_ingest(settings, store, PEAKS, mountains=["lhotse"], resweep=True)
        assert report.ok and fake_flickr.hits["search"] - searches == 1, "one search call a step"
        found += [p.id for p in (first, last) if store.exists(raw_name("lhotse", p.id)) and p.id not in found]
        finished = Cursor.from_json(store.get(resweep_name("lhotse"))).finished
        steps += 1
        assert steps < 50
    assert found == [first.id, last.id], "found in upload order, each once"
    assert steps > 2, "the sweep took several bounded steps"
    assert set(store.list_names("raw/lhotse/")) >= {raw_name("lhotse", first.id), raw_name("lhotse", last.id)}


def test_a_new_sweep_reaches_as_far_as_the_cursor_has_moved(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings]) -> None:
    settings = flickr_settings(MOUNTAINID_LICENSES=ACCEPTED, MOUNTAINID_PHOTOS_PER_RUN="50")
    ingest_everything(settings, store, "k2")
    assert run_ingest(settings, store, PEAKS, mountains=["k2"], resweep=True).ok
    first_until = Cursor.from_json(store.get(resweep_name("k2"))).until
    fake_flickr.upload_more(slugs=["k2"])
    ingest_everything(settings, store, "k2")
    later = passed_over(fake_flickr, settings, store, "k2")[-1]  # uploaded after the first sweep's end
    assert later.uploaded > (first_until or 0)
    fake_flickr.relicense(later.id, 5)
    assert run_ingest(settings, store, PEAKS, mountains=["k2"], resweep=True).stored == 1
    assert Cursor.from_json(store.get(resweep_name("k2"))).until == Cursor.from_json(
        store.get(cursor_name("k2"))).uploaded


def test_a_resweep_tick_runs_a_resweep_step(store: BlobStore, fake_flickr: FakeFlickr,
                                            flickr_settings: Callable[..., Settings]) -> None:
    """The scheduler's message (infra/gcp.sh) is a tick with {"resweep": true} on ingest-tick."""
    settings = flickr_settings(MOUNTAINID_LICENSES=ACCEPTED)
    ingest_everything(settings, store, "k2")
    old = passed_over(fake_flickr, settings, store, "k2")[0]
    fake_flickr.relicense(old.id, 10)
    tick = pubsub_event("p", "t", json.dumps({"mountains": ["k2"], "resweep": True}).encode())
    report = handle_tick(tick, settings, store, PEAKS)
    assert report is not None and report.stored == 1 and store.exists(raw_name("k2", old.id))


def test_a_lost_race_between_sweeps_keeps_the_newer_sweep() -> None:
    """The compare-and-swap merge: a newer sweep (larger ``until``) wins over an older one however far that
    got; within one sweep the further position wins, as for the main cursor."""
    old_far = Cursor(uploaded=900, query="q", until=1_000).finish()
    new_start = Cursor(uploaded=10, query="q", until=2_000)
    assert new_start.merged(old_far) == new_start and old_far.merged(new_start) == new_start
    further = Cursor(uploaded=50, done=frozenset({"a"}), query="q", until=2_000)
    assert new_start.merged(further) == further
    assert Cursor.from_json(further.to_json()) == further and Cursor.from_json(Cursor(5).to_json()).until is None
