"""The ingest over a real fake-Flickr server and real photos, into a local folder and fake-gcs-server.

Every fault of the issue is a test here; each asserts what is stored, what the cursor says, and that
the next run finishes the job with nothing lost and nothing written twice.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.fake_flickr import FakeFlickr, FakePhoto, Fault
from mountainid.bucket import cursor_name, raw_name, skipped_name
from mountainid.catalog import load_catalog
from mountainid.config import ConfigError, Settings
from mountainid.events.cloudevents import pubsub_event
from mountainid.flickr import FlickrAuthError, FlickrPhoto
from mountainid.ingest import Cursor, handle_tick, photo_metadata, retry_given_up, run_ingest
from mountainid.store import BlobInfo, BlobStore, LocalBlobStore, StoreError
from tests.concurrency import run_together

PEAKS = load_catalog("peaks14")


def allowed(fake: FakeFlickr, settings: Settings, slug: str) -> list[FakePhoto]:
    """What Flickr would let the ingest have for ``slug`` now, in upload order."""
    return fake.photos(slug, licenses=settings.licenses)


def stored_ids(store: BlobStore, slug: str) -> list[str]:
    return sorted(name.rsplit("/", 1)[1].removesuffix(".jpg") for name in store.list_names(f"raw/{slug}/"))


def cursor_of(store: BlobStore, slug: str) -> dict:
    return json.loads(store.get(cursor_name(slug)))


class CountingStore(LocalBlobStore):
    """A local store that counts every write per object: proof that nothing is written twice."""

    def __init__(self, root: Path) -> None:
        self.writes: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        super().__init__(root, on_finalize=self._count)

    def _count(self, blob: BlobInfo) -> None:
        with self._count_lock:
            self.writes[blob.name] += 1

    def photo_writes(self) -> Counter[str]:
        return Counter({name: n for name, n in self.writes.items() if name.startswith("raw/")})


@pytest.fixture()
def counting_store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "counted")


def photo_log(caplog: pytest.LogCaptureFixture, message: str) -> dict[str, dict]:
    """The structured fields of each log line ``message``, by photo id."""
    return {record.mountainid_fields["photo_id"]: record.mountainid_fields  # type: ignore[attr-defined]
            for record in caplog.records if record.getMessage() == message}


def test_happy_path_stores_photos_with_metadata(store: BlobStore, fake_flickr: FakeFlickr,
                                                flickr_settings: Callable[..., Settings],
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mountainid")
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="4")
    report = run_ingest(settings, store, PEAKS, mountains=["K2", "lhotse"])

    assert report.ok and report.stored == 8 and set(report.mountains) == {"k2", "lhotse"}
    licences = {int(blob.metadata["license"]) for blob in store.list("raw/")}
    assert licences & {11, 12, 13, 14, 15, 16}, "CC 4.0 photos are reusable: the default filter lets them in"
    for slug in ("k2", "lhotse"):
        expected = allowed(fake_flickr, settings, slug)[:4]
        assert stored_ids(store, slug) == sorted(p.id for p in expected)
        for photo in expected:
            info = store.info(raw_name(slug, photo.id))
            assert info is not None and info.content_type == "image/jpeg"
            assert store.get(info.name) == photo.path.read_bytes()
            meta = dict(info.metadata)
            assert meta["source"] == "flickr" and meta["mountain"] == slug and meta["photo_id"] == photo.id
            assert (meta["owner"], meta["owner_name"]) == (photo.owner, photo.owner_name)
            assert meta["title"] == photo.title
            assert int(meta["license"]) == photo.license and photo.license != 0
            assert meta["url"] == f"https://www.flickr.com/photos/{photo.owner}/{photo.id}/"
            assert meta["uploaded"] == str(photo.uploaded) and meta["taken"] and meta["tags"] == photo.tags
            assert meta["image_url"].startswith(fake_flickr.base_url)
            if photo.latitude is None:
                assert "latitude" not in meta
            else:
                assert float(meta["latitude"]) == pytest.approx(photo.latitude, abs=1e-6)
        assert cursor_of(store, slug)["min_upload_date"] == expected[-1].uploaded
    assert set(photo_log(caplog, "photo stored")) == {p.id for s in ("k2", "lhotse")
                                                     for p in allowed(fake_flickr, settings, s)[:4]}
    assert any(r.getMessage() == "ingest run finished" for r in caplog.records)


def test_second_run_adds_nothing_and_later_uploads_are_picked_up(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings]) -> None:
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="50")
    first = run_ingest(settings, store, PEAKS, mountains=["k2"])
    expected = allowed(fake_flickr, settings, "k2")
    assert first.stored == len(expected) and stored_ids(store, "k2") == sorted(p.id for p in expected)
    generations = {b.name: b.generation for b in store.list("")}

    second = run_ingest(settings, store, PEAKS, mountains=["k2"])
    assert (second.stored, second.present, second.skipped, second.errors) == (0, 0, 0, 0)
    assert {b.name: b.generation for b in store.list("")} == generations, "nothing rewritten, not the cursor"

    fake_flickr.upload_more(10)
    newer = allowed(fake_flickr, settings, "k2")[len(expected):]
    assert newer, "the fake uploaded more photos"
    third = run_ingest(settings, store, PEAKS, mountains=["k2"])
    assert third.stored == len(newer) and third.present == 0
    assert stored_ids(store, "k2") == sorted(p.id for p in expected + newer)


def test_small_budgets_page_through_ties_without_gaps_or_repeats(
        counting_store: CountingStore, fake_flickr: FakeFlickr,
        flickr_settings: Callable[..., Settings]) -> None:
    """Budget 3 splits the fake's burst uploads (two photos per second): the cursor keeps the ids done
    at its date, so each run continues exactly where the last stopped."""
    fake_flickr.upload_more()
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="3")
    expected = allowed(fake_flickr, settings, "cho-oyu")
    runs = 0
    while run_ingest(settings, counting_store, PEAKS, mountains=["Cho Oyu"]).stored:
        runs += 1
        assert stored_ids(counting_store, "cho-oyu") == sorted(p.id for p in expected[: 3 * runs])
    assert runs == -(-len(expected) // 3)
    assert set(counting_store.photo_writes().values()) == {1}


@pytest.mark.parametrize("fault", [
    Fault("search", "http", times=None, status=500),
    Fault("search", "slow", times=None, delay_s=1.0),
    Fault("search", "flickr", times=None, code=10),
    Fault("search", "flickr", times=None, code=105),
], ids=["http-500", "timeout", "search-databases-unavailable", "service-unavailable"])
def test_flickr_down_ends_the_run_cleanly_and_the_next_run_resumes(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings],
        fault: Fault) -> None:
    settings = flickr_settings(MOUNTAINID_FLICKR_TIMEOUT_S="0.3", MOUNTAINID_PHOTOS_PER_RUN="4")
    assert run_ingest(settings, store, PEAKS, mountains=["k2"]).stored == 4
    cursor = cursor_of(store, "k2")

    fake_flickr.inject(fault)
    report = run_ingest(settings, store, PEAKS, mountains=["k2", "lhotse"])
    assert not report.ok and report.stopped and "k2" in report.stopped
    assert list(report.mountains) == ["k2"], "the run stops: no point hammering an unavailable Flickr"
    assert fake_flickr.hits["search"] == 1 + settings.flickr_retries + 1
    assert cursor_of(store, "k2") == cursor and len(stored_ids(store, "k2")) == 4

    fake_flickr.faults.clear()
    report = run_ingest(settings, store, PEAKS, mountains=["k2", "lhotse"])
    k2 = allowed(fake_flickr, settings, "k2")[:8]
    assert report.ok and report.stored == len(k2) - 4 + 4
    assert stored_ids(store, "k2") == sorted(p.id for p in k2)


def _store_before_cc4(store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings],
                      slug: str) -> dict[str, int]:
    """Every photo of ``slug`` under the licences before CC 4.0 (1-10) stored: the generation of each."""
    fake_flickr.upload_more(slugs=[slug])
    old = flickr_settings(MOUNTAINID_LICENSES="1,2,3,4,5,6,7,8,9,10", MOUNTAINID_PHOTOS_PER_RUN="100")
    assert run_ingest(old, store, PEAKS, mountains=[slug]).stored == len(allowed(fake_flickr, old, slug))
    return {blob.name: blob.generation for blob in store.list(f"raw/{slug}/")}


def test_a_changed_search_spends_its_budget_on_new_photos_not_on_stored_ones(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings]) -> None:
    """The licence set grew (CC 4.0): the mountain starts over, but walks past what it stored under the old
    one without downloading it, so each run stores up to its budget of new photos."""
    before = _store_before_cc4(store, fake_flickr, flickr_settings, "k2")
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="3")
    photos = allowed(fake_flickr, settings, "k2")
    new = [p for p in photos if raw_name("k2", p.id) not in before]
    assert len(before) > 3 * 5 and len(new) > 3, "many stored, a few runs' worth new"
    downloads = fake_flickr.hits["photo"]

    report = run_ingest(settings, store, PEAKS, mountains=["k2"])
    fourth = photos.index(new[3])  # the run walks past stored photos up to the next photo to download
    assert report.ok and (report.stored, report.present) == (3, fourth - 3)
    assert fake_flickr.hits["photo"] - downloads == 3, "stored photos are not downloaded again"
    assert set(store.list_names("raw/k2/")) == set(before) | {raw_name("k2", p.id) for p in new[:3]}
    cursor = Cursor.from_json(store.get(cursor_name("k2")))
    assert cursor.query.endswith("license=" + ",".join(map(str, range(1, 17))))
    assert [cursor.covers(_as_flickr(p)) for p in photos] == [index < fourth for index in range(len(photos))]

    runs = 1
    while run_ingest(settings, store, PEAKS, mountains=["k2"]).stored:
        runs += 1
    assert runs == -(-len(new) // 3) and stored_ids(store, "k2") == sorted(p.id for p in photos)
    assert fake_flickr.hits["photo"] - downloads == len(new), "each new photo downloaded once"
    assert {name: store.info(name).generation for name in before} == before, "nothing rewritten"  # type: ignore[union-attr]


def test_the_walk_past_stored_photos_is_bounded_by_search_pages_and_the_next_run_goes_on(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings],
        caplog: pytest.LogCaptureFixture) -> None:
    """At most MOUNTAINID_INGEST_SEARCH_PAGES Flickr calls per mountain and run (the quota is per key and
    hour), however much is stored: the cursor moves over the photos walked, the next run continues."""
    caplog.set_level(logging.INFO, logger="mountainid")
    before = _store_before_cc4(store, fake_flickr, flickr_settings, "lhotse")
    fake_flickr.max_per_page = 4
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="50", MOUNTAINID_INGEST_SEARCH_PAGES="2")
    photos = allowed(fake_flickr, settings, "lhotse")
    downloads, searches = fake_flickr.hits["photo"], fake_flickr.hits["search"]

    report = run_ingest(settings, store, PEAKS, mountains=["lhotse"])
    walked = photos[:8]  # two pages of four
    new = [p for p in walked if raw_name("lhotse", p.id) not in before]
    assert report.ok and (report.stored, report.present) == (len(new), 8 - len(new)) and report.present
    assert (fake_flickr.hits["search"] - searches, fake_flickr.hits["photo"] - downloads) == (2, len(new))
    cursor = Cursor.from_json(store.get(cursor_name("lhotse")))
    assert [cursor.covers(_as_flickr(p)) for p in photos] == [index < 8 for index in range(len(photos))]
    assert any(r.getMessage() == "search page limit: the next run goes on" for r in caplog.records)

    covered = 8
    while covered < len(photos):  # every run walks on from the last, within its two calls
        searches = fake_flickr.hits["search"]
        assert run_ingest(settings, store, PEAKS, mountains=["lhotse"]).ok
        assert fake_flickr.hits["search"] - searches <= 2
        cursor = Cursor.from_json(store.get(cursor_name("lhotse")))
        now = sum(cursor.covers(_as_flickr(p)) for p in photos)
        assert now > covered
        covered = now
    assert stored_ids(store, "lhotse") == sorted(p.id for p in photos)
    assert fake_flickr.hits["photo"] - downloads == len(photos) - len(before), "each new photo downloaded once"


def test_transient_search_faults_are_retried_within_the_run(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings]) -> None:
    settings = flickr_settings(MOUNTAINID_FLICKR_TIMEOUT_S="0.3", MOUNTAINID_FLICKR_RETRIES="3")
    fake_flickr.inject(Fault("search", "http", status=502), Fault("search", "slow", delay_s=1.0),
                       Fault("search", "flickr", code=105))
    report = run_ingest(settings, store, PEAKS, mountains=["k2", "lhotse"])
    assert report.ok and report.stored == 10 and fake_flickr.pending_faults() == 0


@pytest.mark.parametrize("fault_kind", ["http", "slow"], ids=["http-500", "timeout"])
def test_photo_failing_transiently_holds_the_cursor_and_is_fetched_next_run(
        counting_store: CountingStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings],
        fault_kind: str) -> None:
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="6", MOUNTAINID_FLICKR_TIMEOUT_S="0.3")
    expected = allowed(fake_flickr, settings, "k2")[:6]
    bad = expected[2]
    fake_flickr.inject(Fault("photo", fault_kind, times=None, photo_id=bad.id, status=500, delay_s=1.0))

    report = run_ingest(settings, counting_store, PEAKS, mountains=["k2"])
    assert not report.ok and report.mountains["k2"].errors == 1
    assert bad.id in (report.mountains["k2"].stopped or "")
    stored = stored_ids(counting_store, "k2")
    assert bad.id not in stored and {expected[0].id, expected[1].id} <= set(stored)
    cursor = Cursor.from_json(counting_store.get(cursor_name("k2")))
    assert not cursor.covers(_as_flickr(bad)), "the cursor never moves past a photo that was not stored"
    assert cursor.covers(_as_flickr(expected[1]))

    fake_flickr.faults.clear()
    report = run_ingest(settings, counting_store, PEAKS, mountains=["k2"])
    every = allowed(fake_flickr, settings, "k2")  # this run covers every photo after the first two
    assert report.ok and report.stored + report.present == len(every) - 2
    assert stored_ids(counting_store, "k2") == sorted(p.id for p in every)
    assert set(counting_store.photo_writes().values()) == {1}, "nothing written twice"


def test_photo_failing_on_every_run_is_given_up_after_max_attempts_and_recorded(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings],
        caplog: pytest.LogCaptureFixture) -> None:
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="4", MOUNTAINID_INGEST_MAX_ATTEMPTS="3")
    expected = allowed(fake_flickr, settings, "k2")
    bad = expected[1]
    fake_flickr.inject(Fault("photo", "http", times=None, photo_id=bad.id, status=503))

    for attempt in (1, 2):  # runs 1..N-1: the photo holds its mountain's cursor, counted
        report = run_ingest(settings, store, PEAKS, mountains=["k2"])
        assert not report.ok and (report.mountains["k2"].errors, report.given_up) == (1, 0)
        assert f"photo {bad.id} failed (attempt {attempt} of 3)" in (report.mountains["k2"].stopped or "")
        cursor = Cursor.from_json(store.get(cursor_name("k2")))
        assert cursor.covers(_as_flickr(expected[0])) and not cursor.covers(_as_flickr(bad))
        assert cursor.attempts == {bad.id: attempt}
        assert store.list_names("state/ingest/skipped/") == []
    # Stored photos do not count against the budget, so the held photo does not hold back those after it.
    assert stored_ids(store, "k2") == sorted(p.id for p in expected if p is not bad)

    caplog.set_level(logging.INFO, logger="mountainid")
    report = run_ingest(settings, store, PEAKS, mountains=["k2"])  # run N: given up, the cursor passes all
    assert (report.given_up, report.errors, report.stored, report.present) == (1, 0, 0, len(expected) - 2)
    assert report.stopped is None
    assert not report.ok, "a photo given up needs an operator"
    assert report.as_dict()["given_up"] == 1
    cursor = Cursor.from_json(store.get(cursor_name("k2")))
    assert cursor.covers(_as_flickr(expected[-1])) and cursor.attempts == {}
    assert store.list_names("state/ingest/skipped/") == [skipped_name("k2", bad.id)]
    record = json.loads(store.get(skipped_name("k2", bad.id)))
    assert (record["photo_id"], record["mountain"], record["attempts"]) == (bad.id, "k2", 3)
    assert "503" in record["reason"] and record["skipped"].startswith("20")
    assert record["photo"]["image_url"].startswith(fake_flickr.base_url)  # what a retry by hand needs
    given_up = [r for r in caplog.records if r.getMessage() == "photo given up"]
    assert len(given_up) == 1 and given_up[0].levelno == logging.WARNING
    assert given_up[0].mountainid_fields["photo_id"] == bad.id  # type: ignore[attr-defined]
    assert given_up[0].mountainid_fields["attempts"] == 3  # type: ignore[attr-defined]

    hits = fake_flickr.hits["photo"]
    fake_flickr.upload_more(2, ["k2"])
    newer = allowed(fake_flickr, settings, "k2")[len(expected):]
    report = run_ingest(settings, store, PEAKS, mountains=["k2"])
    assert newer and report.ok and report.given_up == 0 and report.stored == len(newer)
    assert fake_flickr.hits["photo"] - hits == len(newer), "the photo given up is not fetched again"

    # The operator's retry (`mountainid ingest --retry-given-up`): still failing, the record stays; once
    # Flickr is well, the photo is stored with its Flickr metadata and the record goes.
    report = retry_given_up(settings, store)
    assert (report.errors, report.stored, report.ok) == (1, 0, False)
    assert store.list_names("state/ingest/skipped/") == [skipped_name("k2", bad.id)]
    fake_flickr.heal()
    report = retry_given_up(settings, store)
    assert (report.errors, report.stored, report.ok) == (0, 1, True)
    assert store.list_names("state/ingest/skipped/") == []
    assert store.info(raw_name("k2", bad.id)).metadata == record["photo"]  # as a search would have stored it
    assert retry_given_up(settings, store).as_dict()["stored"] == 0  # nothing left to retry


class RecordlessStore(LocalBlobStore):
    """A local store whose writes under state/ingest/skipped/ fail: the one fault no fake causes."""

    def put(self, name: str, data: bytes, **options: Any) -> int:
        if name.startswith("state/ingest/skipped/"):
            raise StoreError(f"{name}: 503 Service Unavailable")
        return super().put(name, data, **options)


def test_a_photo_whose_record_cannot_be_written_is_held_not_lost(
        tmp_path: Path, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings]) -> None:
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="2", MOUNTAINID_INGEST_MAX_ATTEMPTS="1")
    bad = allowed(fake_flickr, settings, "k2")[0]
    fake_flickr.inject(Fault("photo", "http", times=None, photo_id=bad.id, status=500))
    report = run_ingest(settings, RecordlessStore(tmp_path / "bucket"), PEAKS, mountains=["k2"])
    store = LocalBlobStore(tmp_path / "bucket")
    assert (report.given_up, report.mountains["k2"].errors) == (0, 1) and bad.id in (report.mountains["k2"].stopped or "")
    assert not Cursor.from_json(store.get(cursor_name("k2"))).covers(_as_flickr(bad))

    report = run_ingest(settings, store, PEAKS, mountains=["k2"])  # the store heals: recorded, then passed
    assert report.given_up == 1 and store.exists(skipped_name("k2", bad.id))
    assert Cursor.from_json(store.get(cursor_name("k2"))).covers(_as_flickr(bad))


def test_photo_failing_twice_then_succeeding_is_stored_and_its_count_resets(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings]) -> None:
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="3", MOUNTAINID_INGEST_MAX_ATTEMPTS="3")
    expected = allowed(fake_flickr, settings, "lhotse")
    flaky = expected[0]
    fake_flickr.inject(Fault("photo", "http", times=None, photo_id=flaky.id, status=500))
    for _ in range(2):
        assert run_ingest(settings, store, PEAKS, mountains=["lhotse"]).errors == 1
    assert Cursor.from_json(store.get(cursor_name("lhotse"))).attempts == {flaky.id: 2}

    fake_flickr.faults.clear()
    report = run_ingest(settings, store, PEAKS, mountains=["lhotse"])
    assert report.ok and report.given_up == 0
    assert flaky.id in stored_ids(store, "lhotse")
    cursor = Cursor.from_json(store.get(cursor_name("lhotse")))
    assert cursor.covers(_as_flickr(flaky)) and cursor.attempts == {}
    assert store.list_names("state/ingest/skipped/") == []


def test_a_cursor_written_before_attempts_were_counted_still_loads(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings]) -> None:
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="2")
    expected = allowed(fake_flickr, settings, "k2")
    run_ingest(settings, store, PEAKS, mountains=["k2"])
    old = cursor_of(store, "k2")
    del old["attempts"]  # the cursor as the ingest wrote it until now
    store.put(cursor_name("k2"), json.dumps(old).encode(), content_type="application/json")
    assert Cursor.from_json(store.get(cursor_name("k2"))).attempts == {}

    report = run_ingest(settings, store, PEAKS, mountains=["k2"])
    assert report.ok and (report.stored, report.present) == (2, 0), "continued from the old cursor, not the start"
    assert stored_ids(store, "k2") == sorted(p.id for p in expected[:4])
    assert cursor_of(store, "k2")["attempts"] == {}


@pytest.mark.parametrize("kind,reason", [("http", "gone: HTTP 404"), ("not-image", "not-jpeg"),
                                         ("truncate", "truncated")])
def test_bad_photo_is_skipped_logged_and_not_retried(
        store: BlobStore, fake_flickr: FakeFlickr, flickr_settings: Callable[..., Settings],
        caplog: pytest.LogCaptureFixture, kind: str, reason: str) -> None:
    caplog.set_level(logging.INFO, logger="mountainid")
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="5")
    expected = allowed(fake_flickr, settings, "lhotse")
    bad = expected[1]
    fake_flickr.inject(Fault("photo", kind, times=None, photo_id=bad.id, status=404))

    report = run_ingest(settings, store, PEAKS, mountains=["lhotse"])
    assert report.ok and (report.stored, report.skipped) == (4, 1)
    assert stored_ids(store, "lhotse") == sorted(p.id for p in expected[:5] if p is not bad)
    assert photo_log(caplog, "photo skipped")[bad.id]["reason"] == reason
    assert cursor_of(store, "lhotse")["min_upload_date"] == expected[4].uploaded

    hits = fake_flickr.hits["photo"]
    run_ingest(settings, store, PEAKS, mountains=["lhotse"])
    assert bad.id not in stored_ids(store, "lhotse")
    assert fake_flickr.hits["photo"] - hits == len(expected) - 5, "the bad photo is not fetched again"


def test_dropped_connection_is_retried(store: BlobStore, fake_flickr: FakeFlickr,
                                       flickr_settings: Callable[..., Settings]) -> None:
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="3")
    first = allowed(fake_flickr, settings, "k2")[0]
    fake_flickr.inject(Fault("photo", "cut", photo_id=first.id))
    report = run_ingest(settings, store, PEAKS, mountains=["k2"])
    assert report.ok and report.stored == 3
    assert store.get(raw_name("k2", first.id)) == first.path.read_bytes()


def test_same_tick_twice_and_concurrent_runs_write_each_photo_once(
        counting_store: CountingStore, fake_flickr: FakeFlickr,
        flickr_settings: Callable[..., Settings]) -> None:
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="4")
    body = json.dumps({"mountains": ["k2"]}).encode()
    tick = pubsub_event(settings.project, settings.topic_ingest_tick, body)
    expected = allowed(fake_flickr, settings, "k2")
    # Slow photos so the runs overlap for certain.
    fake_flickr.inject(Fault("photo", "slow", times=None, delay_s=0.05))

    reports = run_together(lambda: handle_tick(tick, settings, counting_store, PEAKS), 3, timeout=60)
    assert len(reports) == 3 and all(r is not None and r.ok for r in reports)
    assert set(counting_store.photo_writes().values()) == {1}, "no object written twice"
    stored = stored_ids(counting_store, "k2")
    assert sum(r.stored for r in reports if r) == len(stored)
    # The cursor covers exactly a prefix of the uploads, and everything it covers is stored.
    cursor = Cursor.from_json(counting_store.get(cursor_name("k2")))
    covered = [p for p in expected if cursor.covers(_as_flickr(p))]
    assert covered == expected[: len(covered)] and len(covered) >= 4
    assert {p.id for p in covered} <= set(stored)

    # The same tick delivered again later: it is just another run, continuing from the cursor.
    fake_flickr.faults.clear()
    while (again := handle_tick(tick, settings, counting_store, PEAKS)) and again.stored:
        pass
    assert stored_ids(counting_store, "k2") == sorted(p.id for p in expected)
    assert set(counting_store.photo_writes().values()) == {1}


def test_cursor_merge_never_goes_backwards() -> None:
    def photo(pid: str, uploaded: int) -> FlickrPhoto:
        return FlickrPhoto(pid, "o", "", "", 1, uploaded, "", "", None, None, None)

    start = Cursor(query="q")
    a = start.past(photo("1", 10)).past(photo("2", 10))
    b = start.past(photo("1", 10)).past(photo("3", 10)).past(photo("4", 20))
    assert a.covers(photo("2", 10)) and not a.covers(photo("3", 10)) and a.covers(photo("0", 9))
    assert a.merged(b) == b and b.merged(a) == b
    assert a.merged(start.past(photo("3", 10))).done == {"1", "2", "3"}
    assert a.merged(Cursor(99, frozenset({"x"}), "other search")) == a
    assert Cursor.from_json(b.to_json()) == b
    # Attempts: a lost race never loses a count, and a photo done (or passed) elsewhere drops its count.
    held = start.past(photo("1", 10)).failed("2")
    twice = held.failed("2")
    assert (held.attempts, twice.attempts, held.failed("3").attempts) == ({"2": 1}, {"2": 2}, {"3": 1})
    assert held.merged(twice) == twice and twice.merged(held) == twice
    passed = start.past(photo("1", 10)).past(photo("2", 10))
    assert twice.merged(passed) == passed and passed.merged(twice) == passed and passed.attempts == {}
    assert twice.merged(b) == b and b.merged(twice) == b
    assert Cursor.from_json(twice.to_json()) == twice


def test_mountain_names_never_escape_their_prefix(tmp_path: Path, fake_flickr: FakeFlickr,
                                                  flickr_settings: Callable[..., Settings]) -> None:
    catalog_file = tmp_path / "odd.yaml"
    catalog_file.write_text(
        "name: odd\nmountains:\n"
        "  - {name: 'Cerro Chaltén / ../../etc', search: K2, latitude: 1, longitude: 2, elevation_m: 3}\n",
        encoding="utf-8")
    catalog = load_catalog(str(catalog_file))
    root = tmp_path / "bucket"
    store = LocalBlobStore(root)
    settings = flickr_settings(MOUNTAINID_PHOTOS_PER_RUN="2")
    assert run_ingest(settings, store, catalog).stored == 2
    assert {name.split("/")[1] for name in store.list_names("raw/")} == {"cerro-chalten-etc"}
    assert store.list_names("state/") == ["state/ingest/cerro-chalten-etc.json"]
    assert {p.name for p in tmp_path.iterdir()} == {"bucket", "odd.yaml"}, "nothing outside the bucket"
    # A tick naming a path is refused before anything runs.
    before = store.list_names("")
    tick = pubsub_event("p", "t", json.dumps({"mountains": ["../../etc/passwd"]}).encode())
    assert handle_tick(tick, settings, store, catalog) is None
    assert store.list_names("") == before


@pytest.mark.parametrize("body", [b"not json", b'["k2"]', b'{"mountains": "k2"}', b'{"photos_per_run": 0}',
                                  b'{"mountain": ["k2"]}', b'{"mountains": ["Matterhorn"]}', b'{"resweep": "yes"}'])
def test_malformed_ticks_are_rejected_without_running(store: BlobStore, fake_flickr: FakeFlickr,
                                                      flickr_settings: Callable[..., Settings],
                                                      body: bytes) -> None:
    assert handle_tick(pubsub_event("p", "t", body), flickr_settings(), store, PEAKS) is None
    assert fake_flickr.hits["search"] == 0 and store.list_names("") == []


def test_missing_key_on_a_real_run_names_the_variable(make_settings: Callable[..., Settings],
                                                      tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "bucket")
    with pytest.raises(ConfigError, match="FLICKR_API_KEY"):
        run_ingest(make_settings(MOUNTAINID_CATALOG="peaks14"), store, PEAKS)
    assert store.list_names("") == []


def test_rejected_key_stops_the_run_with_a_config_error(peaks_dir: Path, tmp_path: Path,
                                                        make_settings: Callable[..., Settings]) -> None:
    with FakeFlickr(peaks_dir, api_key="right") as fake:
        settings = make_settings(FLICKR_REST_URL=fake.rest_url, FLICKR_API_KEY="wrong", FLICKR_API_SECRET="s")
        with pytest.raises(FlickrAuthError, match="FLICKR_API_KEY"):
            run_ingest(settings, LocalBlobStore(tmp_path / "b"), PEAKS, mountains=["k2"])


def _as_flickr(photo: FakePhoto) -> FlickrPhoto:
    return FlickrPhoto(photo.id, photo.owner, photo.owner_name, photo.title, photo.license, photo.uploaded,
                       "", photo.tags, photo.latitude, photo.longitude, None)


def test_metadata_stays_under_the_storage_limit_in_bytes_for_any_script() -> None:
    """Cloud Storage counts metadata in UTF-8 bytes (8 KiB): a long CJK title must not make a photo unstorable."""
    long = "富士山の夕焼け🌄" * 400  # 3,600 characters, ~11,000 bytes
    photo = FlickrPhoto("123", "o@N00", long, long, 4, 1_700_000_000, "2024-01-01 10:00:00", long,
                        35.36, 138.73, "https://live.staticflickr.com/1/123_s_c.jpg")
    metadata = photo_metadata("mount-fuji", photo)
    size = sum(len(key.encode()) + len(value.encode()) for key, value in metadata.items())
    assert size < 4 * 1024, size  # room left for what the filter adds when it copies to accepted/
    assert metadata["title"].startswith("富士山の夕焼け") and "\ufffd" not in metadata["title"]  # no half character
