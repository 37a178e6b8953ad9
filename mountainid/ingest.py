"""The Flickr ingest: new photos of each mountain into ``raw/<slug>/<photo_id>.jpg``.

One run, per mountain: read the cursor ``state/ingest/<slug>.json``, list ``raw/<slug>/`` once,
search Flickr for photos uploaded since (oldest first), download up to ``photos_per_run`` of those
not listed concurrently, check each is a real JPEG photo, write it with its Flickr metadata, then
move the cursor past the photos that are done. Photos listed are already stored: passed without a
request each and not counted against ``photos_per_run``, so a mountain whose search changed walks
past thousands stored before instead of spending its budget re-finding them. The walk is bounded
by ``Settings.ingest_search_pages`` search calls (Flickr's quota is per key and hour); the cursor
moves over what it walked, so the next run goes on from there. What keeps it safe to run any
number of times, even two at once:

* Photos are written with ``if_generation_match=0``: an object is never written twice, so a tick
  delivered twice or two overlapping runs store each photo once (the loser of such a race has
  downloaded the photo for nothing and counts it as already present).
* The cursor only moves over the unbroken run of photos that are done (stored, already there, or
  skipped for good: a 404, not an image, truncated). At the first photo that failed in a way that
  may heal (Flickr 5xx or time-outs after retries, a store error) that mountain stops; the next run
  starts from that photo. Photos stored past it are listed then and count as already present.
* So a photo that fails on every run cannot hold its mountain for ever, the cursor counts the runs
  its head photo failed on; at ``Settings.ingest_max_attempts`` the photo is given up: recorded
  under ``state/ingest/skipped/<slug>/<id>.json`` (reason, attempts, time, its metadata) for an
  operator, logged once as a warning, and passed like any skipped photo.
* The cursor is written with a generation precondition; on a lost race it is re-read and merged
  (the further of the two wins), so concurrent runs never move it backwards or corrupt it.

The cursor is an upload date plus the ids already done *at* that date (Flickr dates are seconds,
and burst uploads share one), and remembers the search (text and licence filter): change either
and the mountain starts over, walking past what it stored before as already present.

The re-sweep (a tick ``{"resweep": true}``, scheduled a few times a day by infra/gcp.sh) finds what
the cursor passed over: photos uploaded before it that became eligible later (relicensed to a
licence we accept, made public, indexed late). It walks the upload dates from the start to where the
main cursor stood when the sweep began (``max_upload_date``), with its own cursor
``state/ingest/resweep/<slug>.json``, in steps of at most ``Settings.resweep_pages`` search calls and
``photos_per_run`` downloads per mountain: bounded and resumable like the main walk, with the same
stored-photo skipping, give-up and compare-and-swap rules. Once a sweep has reached its end, the
next step starts a new one up to the main cursor's new position.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from cloudevents.http import CloudEvent

from mountainid.bucket import (
    RESWEEP,
    SKIPPED,
    cursor_name,
    is_photo_id,
    raw_folder,
    raw_name,
    resweep_name,
    skipped_name,
    skipped_slug,
)
from mountainid.catalog import Catalog, Mountain, load_catalog
from mountainid.config import Settings
from mountainid.events.cloudevents import pubsub_json
from mountainid.flickr.client import (
    MAX_PER_PAGE,
    FlickrClient,
    FlickrPhoto,
    FlickrRejected,
    FlickrUnavailable,
    PhotoUnavailable,
)
from mountainid.logs import Bar, event, item_level
from mountainid.store import BlobStore, NotFound, PreconditionFailed, StoreError, open_store
from mountainid.vision.image import BadImage, load_image

log = logging.getLogger(__name__)

# Version 1 gained "attempts" without a bump: a cursor written before reads as no failures, and code
# from before ignores the field (it only resets the counts), so old and new runs can share a bucket.
CURSOR_VERSION = 1
CURSOR_WRITE_ATTEMPTS = 20
VALIDATE_DRAFT_SIZE = 256  # decode downscaled: still reads every byte (so truncation shows), 4x faster
_JPEG_MAGIC = b"\xff\xd8\xff"
# Cloud Storage allows 8 KiB of custom metadata per object, counted in UTF-8 bytes (a CJK character is
# 3): these caps keep the whole raw/ metadata under 3.5 KiB, leaving room for what the filter adds.
_MAX_METADATA_BYTES = {"owner_name": 300, "title": 1000, "tags": 1500}


def _clip(text: str, max_bytes: int) -> str:
    """At most ``max_bytes`` of UTF-8, never cutting a character in half."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class Cursor:
    """Where a mountain's ingest stands: everything uploaded before ``uploaded``, plus ``done`` at it.

    ``attempts``: photo id -> runs it failed on while it was the next photo (the head), reset when
    the cursor moves. ``until``: a re-sweep's last upload date (None for the main cursor); the sweep
    is finished once ``uploaded`` is past it.
    """

    uploaded: int = 0
    done: frozenset[str] = frozenset()
    query: str = ""
    attempts: Mapping[str, int] = field(default_factory=dict, hash=False)
    until: int | None = None

    @property
    def finished(self) -> bool:
        return self.until is not None and self.uploaded > self.until

    def finish(self) -> Cursor:
        """A re-sweep that has walked everything up to ``until``."""
        assert self.until is not None, "only a re-sweep finishes"
        return dataclasses.replace(self, uploaded=self.until + 1, done=frozenset(), attempts={})

    def covers(self, photo: FlickrPhoto) -> bool:
        return photo.uploaded < self.uploaded or (photo.uploaded == self.uploaded and photo.id in self.done)

    def past(self, photo: FlickrPhoto) -> Cursor:
        """The cursor once ``photo`` (the next in upload order) is done."""
        if photo.uploaded > self.uploaded:
            return dataclasses.replace(self, uploaded=photo.uploaded, done=frozenset({photo.id}), attempts={})
        if photo.uploaded == self.uploaded:
            return dataclasses.replace(self, done=self.done | {photo.id}, attempts={})
        return self

    def failed(self, photo_id: str) -> Cursor:
        """The cursor held at ``photo_id``, which failed once more (counts of an earlier head are stale)."""
        return dataclasses.replace(self, attempts={photo_id: self.attempts.get(photo_id, 0) + 1})

    def merged(self, other: Cursor) -> Cursor:
        """The further of two cursors for the same search: both only ever cover done photos.

        At the same date the done ids add up, and a photo not done keeps the larger of its two
        counts: two runs that failed it at once count one attempt, never lose one.
        """
        if other.query != self.query or (other.until or 0) < (self.until or 0):
            return self  # another search, or an older sweep
        if (other.until or 0) > (self.until or 0):
            return other  # a newer sweep
        if other.uploaded < self.uploaded:
            return self
        if other.uploaded > self.uploaded:
            return other
        done = self.done | other.done
        attempts = {photo_id: max(self.attempts.get(photo_id, 0), other.attempts.get(photo_id, 0))
                    for photo_id in self.attempts.keys() | other.attempts.keys() if photo_id not in done}
        return dataclasses.replace(self, done=done, attempts=attempts)

    def to_json(self) -> bytes:
        doc = {"version": CURSOR_VERSION, "min_upload_date": self.uploaded, "done_at_date": sorted(self.done),
               "query": self.query, "attempts": dict(sorted(self.attempts.items())),
               "updated": datetime.now(UTC).isoformat(timespec="seconds")}
        if self.until is not None:
            doc["max_upload_date"] = self.until
        return json.dumps(doc, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Cursor:
        doc = json.loads(data)
        if doc.get("version") != CURSOR_VERSION:
            raise ValueError(f"cursor version {doc.get('version')!r}, expected {CURSOR_VERSION}")
        done = frozenset(str(photo_id) for photo_id in doc["done_at_date"])
        attempts = doc.get("attempts", {})  # absent in cursors written before attempts were counted
        if not isinstance(attempts, dict):
            raise TypeError(f"cursor attempts must be an object, got {attempts!r}")
        until = doc.get("max_upload_date")  # only a re-sweep has one
        return cls(int(doc["min_upload_date"]), done, str(doc["query"]),
                   {str(photo_id): int(count) for photo_id, count in attempts.items()},
                   None if until is None else int(until))


class IngestOutcome(Enum):
    STORED = "stored"
    PRESENT = "already-present"
    SKIPPED = "skipped"  # for good: the cursor moves past it
    FAILED = "failed"  # may heal: the cursor stops before it
    GIVEN_UP = "given-up"  # failed on ingest_max_attempts runs: recorded under state/, then passed


@dataclass
class MountainReport:
    slug: str
    stored: int = 0
    present: int = 0
    skipped: int = 0
    given_up: int = 0  # photos that failed once too often, recorded under state/ingest/skipped/
    errors: int = 0  # photos that failed, or 1 when the search itself did
    stopped: str | None = None  # why this mountain stopped early (the next run resumes there)
    cursor: int = 0  # upload date the next run searches from

    def count(self, outcome: IngestOutcome) -> None:
        if outcome is IngestOutcome.STORED:
            self.stored += 1
        elif outcome is IngestOutcome.PRESENT:
            self.present += 1
        elif outcome is IngestOutcome.SKIPPED:
            self.skipped += 1
        elif outcome is IngestOutcome.GIVEN_UP:
            self.given_up += 1
        else:
            self.errors += 1


@dataclass
class IngestReport:
    mountains: dict[str, MountainReport] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: str | None = None  # why the whole run ended early (Flickr unavailable)

    def _total(self, name: str) -> int:
        return sum(getattr(report, name) for report in self.mountains.values())

    @property
    def stored(self) -> int:
        return self._total("stored")

    @property
    def present(self) -> int:
        return self._total("present")

    @property
    def skipped(self) -> int:
        return self._total("skipped")

    @property
    def given_up(self) -> int:
        return self._total("given_up")

    @property
    def errors(self) -> int:
        return self._total("errors")

    @property
    def ok(self) -> bool:
        """Nothing failed and nothing was lost (a photo given up waits for an operator)."""
        return self.errors == 0 and self.given_up == 0 and self.stopped is None

    def as_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "already_present": self.present, "skipped": self.skipped,
                "given_up": self.given_up, "errors": self.errors, "seconds": round(self.seconds, 3),
                "stopped": self.stopped, "mountains": {slug: dataclasses.asdict(r) for slug, r in self.mountains.items()}}


class UnknownMountain(ValueError):
    """A requested mountain is not in the catalog."""


def select_mountains(catalog: Catalog, names: Sequence[str] | None) -> list[Mountain]:
    """The catalog's mountains, or those named (display names or slugs, any case or accents)."""
    if not names:
        return list(catalog.mountains)
    found = {name: catalog.find(name) for name in names}
    unknown = [name for name, mountain in found.items() if mountain is None]
    if unknown:
        raise UnknownMountain(f"not in catalog {catalog.name!r}: {unknown}; "
                              f"known: {', '.join(catalog.slugs)}")
    return list(dict.fromkeys(m for m in found.values() if m is not None))


class _Run:
    """One ingest run (or re-sweep step): the shared client, store and download pool, one mountain at a time."""

    def __init__(self, settings: Settings, store: BlobStore, client: FlickrClient, pool: ThreadPoolExecutor,
                 budget: int, *, resweep: bool = False) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.pool = pool
        self.budget = budget
        self.resweep = resweep

    def mountain(self, mountain: Mountain) -> MountainReport:
        report = MountainReport(mountain.slug)
        query = f"text={mountain.search}&license={self.client.licenses}"
        name = resweep_name(mountain.slug) if self.resweep else cursor_name(mountain.slug)
        cursor, generation = self._read_cursor(name)
        if self.resweep:
            start = self._sweep_start(mountain.slug, cursor, query)
            if start is None:
                return report  # the main cursor has passed nothing yet
            cursor = start
        elif cursor.query != query:
            if generation:
                event(log, "search changed: starting over", slug=mountain.slug, was=cursor.query, now=query)
            cursor = Cursor(query=query)
        stored = self._stored_ids(mountain.slug)
        photos, complete = self._walk(mountain, cursor, stored)  # FlickrUnavailable ends the run (caller)
        futures = {photo.id: self.pool.submit(self._handle, mountain.slug, photo)
                   for photo in photos if photo.id not in stored}
        advanced = cursor
        limit = self.settings.ingest_max_attempts
        for photo in photos:
            future = futures.get(photo.id)
            if future is None:
                outcome, reason = IngestOutcome.PRESENT, ""
            elif future.cancelled():
                continue
            else:
                outcome, reason = future.result()
            if outcome is IngestOutcome.FAILED and report.stopped is None:
                attempts = advanced.attempts.get(photo.id, 0) + 1
                if attempts >= limit and self._give_up(mountain.slug, photo, reason, attempts):
                    outcome = IngestOutcome.GIVEN_UP
                else:
                    report.stopped = f"photo {photo.id} failed (attempt {attempts} of {limit}); " \
                                     "the next run resumes there"
                    advanced = advanced.failed(photo.id)
                    for later in futures.values():
                        later.cancel()
            report.count(outcome)
            if report.stopped is None:
                advanced = advanced.past(photo)
        if self.resweep and complete and report.stopped is None:
            advanced = advanced.finish()
            event(log, "re-sweep finished", slug=mountain.slug, until=advanced.until)
        if advanced != cursor:
            advanced = self._save_cursor(name, advanced, generation)
        report.cursor = advanced.uploaded
        return report

    def _sweep_start(self, slug: str, sweep: Cursor, query: str) -> Cursor | None:
        """Where this re-sweep step starts: the sweep under way, or a new one over all the main cursor has
        passed (None: it has passed nothing yet). A changed search starts a new sweep too."""
        if sweep.query == query and sweep.until is not None and not sweep.finished:
            return sweep
        main, _ = self._read_cursor(cursor_name(slug))
        if main.query != query or main.uploaded == 0:
            return None
        event(log, "re-sweep starting", slug=slug, until=main.uploaded)
        return Cursor(query=query, until=main.uploaded)

    def retry(self, slug: str, record: str) -> IngestOutcome:
        """One more try of a given-up photo; its record goes once the photo no longer waits for anyone."""
        try:
            photo = _photo_from_metadata(json.loads(self.store.get(record))["photo"])
        except NotFound:  # a retry running beside this one took it
            return IngestOutcome.PRESENT
        except (ValueError, KeyError, TypeError) as error:  # a record edited by hand: left for the operator
            event(log, "given-up record unreadable: kept", level=logging.WARNING, record=record, error=str(error))
            return IngestOutcome.FAILED
        present = self.store.exists(raw_name(slug, photo.id))  # stored since (by hand): no download
        outcome = IngestOutcome.PRESENT if present else self._handle(slug, photo)[0]
        if outcome is not IngestOutcome.FAILED:
            try:
                self.store.delete(record)
            except NotFound:
                pass
        return outcome

    def _stored_ids(self, slug: str) -> frozenset[str]:
        """The ids under ``raw/<slug>/``, from one listing rather than a request per photo."""
        prefix = raw_folder(slug)
        return frozenset(name[len(prefix):].removesuffix(".jpg") for name in self.store.list_names(prefix))

    def _walk(self, mountain: Mountain, cursor: Cursor, stored: frozenset[str]) -> tuple[list[FlickrPhoto], bool]:
        """The photos the cursor does not cover, in upload order, up to ``budget`` of them not ``stored``,
        and whether they are all the search has left (True: nothing cut off by the budget or page limit).

        Full pages, as the stored ones do not count: one call walks 500 of them. At most
        ``ingest_search_pages`` calls (``resweep_pages`` for a re-sweep), never past the 4,000 results
        Flickr serves (the settings refuse more pages); photos walked so far are the run's, the next
        run goes on from there.
        """
        limit = self.settings.resweep_pages if self.resweep else self.settings.ingest_search_pages
        found: dict[str, FlickrPhoto] = {}
        page = wanted = 0
        complete = False
        while wanted < self.budget:
            page += 1
            result = self.client.search(mountain.search, min_upload_date=cursor.uploaded, page=page,
                                        per_page=MAX_PER_PAGE, max_upload_date=cursor.until)
            for photo in result.photos:
                if not cursor.covers(photo) and photo.id not in found:
                    found[photo.id] = photo
                    wanted += photo.id not in stored
            if page >= result.pages:
                complete = True
                break
            if page >= limit:
                event(log, "search page limit: the next run goes on", slug=mountain.slug, pages=page,
                      walked=len(found), already_present=len(found) - wanted)
                break
        walked = sorted(found.values(), key=lambda p: p.uploaded)
        to_download = 0
        for index, photo in enumerate(walked):
            to_download += photo.id not in stored
            if to_download > self.budget:
                return walked[:index], False
        return walked, complete

    def _handle(self, slug: str, photo: FlickrPhoto) -> tuple[IngestOutcome, str]:
        """Store one photo; runs on a download thread. Logs one line, always with the photo id."""
        started = time.perf_counter()
        outcome, reason, size = self._store_photo(slug, photo)
        level = logging.WARNING if outcome is IngestOutcome.FAILED else item_level()
        why: dict[str, Any] = {"reason": reason} if reason else {}
        event(log, f"photo {outcome.value}", level=level, photo_id=photo.id, slug=slug, **why, bytes=size,
              ms=round((time.perf_counter() - started) * 1000, 1))
        return outcome, reason

    def _give_up(self, slug: str, photo: FlickrPhoto, reason: str, attempts: int) -> bool:
        """Record a photo that failed on ``attempts`` runs where an operator finds it (with what a retry
        needs: its metadata and image URL). False when the record could not be written: then the
        photo holds the cursor as before, so it is never lost without a trace."""
        name = skipped_name(slug, photo.id)
        record = {"photo_id": photo.id, "mountain": slug, "reason": reason, "attempts": attempts,
                  "skipped": datetime.now(UTC).isoformat(timespec="seconds"), "photo": photo_metadata(slug, photo)}
        try:
            self.store.put(name, json.dumps(record, indent=1).encode("utf-8"), content_type="application/json")
        except Exception as error:  # noqa: BLE001 - any store failure: keep holding, retry next run
            event(log, "given-up record not written: photo held", level=logging.WARNING, photo_id=photo.id,
                  slug=slug, attempts=attempts, error=str(error))
            return False
        event(log, "photo given up", level=logging.WARNING, photo_id=photo.id, slug=slug, attempts=attempts,
              reason=reason, record=name)
        return True

    def _store_photo(self, slug: str, photo: FlickrPhoto) -> tuple[IngestOutcome, str, int]:
        if not is_photo_id(photo.id):
            return IngestOutcome.SKIPPED, "unsafe-photo-id", 0
        name = raw_name(slug, photo.id)
        if photo.image_url is None:
            return IngestOutcome.SKIPPED, "no-image-url", 0
        try:
            data = self.client.download(photo.image_url)
        except PhotoUnavailable as error:
            return IngestOutcome.SKIPPED, f"gone: {error}", 0
        except FlickrUnavailable as error:
            return IngestOutcome.FAILED, str(error), 0
        if not data.startswith(_JPEG_MAGIC):
            return IngestOutcome.SKIPPED, "not-jpeg", len(data)
        try:
            load_image(data, self.settings.max_image_pixels, self.settings.max_image_bytes,
                       draft_size=VALIDATE_DRAFT_SIZE)
        except BadImage as error:
            return IngestOutcome.SKIPPED, error.reason, len(data)
        try:
            self.store.put(name, data, metadata=photo_metadata(slug, photo), content_type="image/jpeg",
                           if_generation_match=0)
        except PreconditionFailed:
            return IngestOutcome.PRESENT, "written by a concurrent run", len(data)
        except Exception as error:  # noqa: BLE001 - any store failure means "not stored": retry next run
            return IngestOutcome.FAILED, f"store: {error}", len(data)
        return IngestOutcome.STORED, "", len(data)

    def _read_cursor(self, name: str) -> tuple[Cursor, int]:
        """The cursor stored as ``name`` and its generation (0: none). An unreadable one starts over, safely."""
        info = self.store.info(name)
        if info is None:
            return Cursor(), 0
        try:
            return Cursor.from_json(self.store.get(name)), info.generation
        except (ValueError, KeyError, TypeError) as error:
            event(log, "cursor unreadable: starting over", level=logging.WARNING, cursor=name, error=str(error))
            return Cursor(), info.generation

    def _save_cursor(self, name: str, cursor: Cursor, generation: int) -> Cursor:
        """Compare-and-swap the cursor; on a lost race merge with the winner's and try again."""
        for _ in range(CURSOR_WRITE_ATTEMPTS):
            try:
                self.store.put(name, cursor.to_json(), content_type="application/json",
                               if_generation_match=generation)
                return cursor
            except PreconditionFailed:
                theirs, generation = self._read_cursor(name)
                merged = cursor.merged(theirs)
                if merged == theirs:
                    return theirs
                cursor = merged
        raise StoreError(f"cursor {name} kept changing under {CURSOR_WRITE_ATTEMPTS} writes")


def photo_metadata(slug: str, photo: FlickrPhoto) -> dict[str, str]:
    """The object metadata of ``raw/<slug>/<id>.jpg``: credit, licence, provenance, geo."""
    metadata = {
        "source": "flickr", "mountain": slug, "photo_id": photo.id, "owner": photo.owner,
        "owner_name": _clip(photo.owner_name, _MAX_METADATA_BYTES["owner_name"]), "license": str(photo.license),
        "title": _clip(photo.title, _MAX_METADATA_BYTES["title"]),
        "tags": _clip(photo.tags, _MAX_METADATA_BYTES["tags"]),
        "url": photo.page_url, "image_url": photo.image_url or "", "taken": photo.taken,
        "uploaded": str(photo.uploaded),
    }
    if photo.latitude is not None and photo.longitude is not None:
        metadata.update(latitude=f"{photo.latitude:.6f}", longitude=f"{photo.longitude:.6f}")
    return metadata


def _photo_from_metadata(metadata: Mapping[str, str]) -> FlickrPhoto:
    """The photo :func:`photo_metadata` describes (a given-up record keeps it for a retry)."""
    latitude, longitude = metadata.get("latitude") or "", metadata.get("longitude") or ""
    placed = bool(latitude and longitude)
    return FlickrPhoto(id=metadata["photo_id"], owner=metadata["owner"], owner_name=metadata["owner_name"],
                       title=metadata["title"], license=int(metadata["license"]), uploaded=int(metadata["uploaded"]),
                       taken=metadata["taken"], tags=metadata["tags"],
                       latitude=float(latitude) if placed else None, longitude=float(longitude) if placed else None,
                       image_url=metadata["image_url"] or None)


def retry_given_up(settings: Settings, store: BlobStore, *, client: FlickrClient | None = None) -> IngestReport:
    """Try every given-up photo once more (an operator's command, once Flickr or the store has healed).

    A photo stored, already there, or gone for good loses its record; one that fails again keeps it
    (and the report says so). The cursors are not touched: they moved past these photos already.
    """
    started = time.perf_counter()
    report = IngestReport()
    records = store.list_names(SKIPPED)
    with _client(settings, client) as flickr, Bar("retry", len(records)) as bar, \
            ThreadPoolExecutor(1, thread_name_prefix="ingest") as pool:
        run = _Run(settings, store, flickr, pool, budget=len(records))
        for name in records:
            slug = skipped_slug(name)
            report.mountains.setdefault(slug, MountainReport(slug)).count(run.retry(slug, name))
            bar.advance()
    report.seconds = time.perf_counter() - started
    event(log, "given-up photos retried", level=logging.INFO if report.ok else logging.WARNING,
          records=len(records), stored=report.stored, already_present=report.present, skipped=report.skipped,
          still_failing=report.errors, seconds=round(report.seconds, 2))
    return report


def run_ingest(settings: Settings, store: BlobStore, catalog: Catalog, *,
               mountains: Sequence[str] | None = None, photos_per_run: int | None = None,
               client: FlickrClient | None = None, resweep: bool = False) -> IngestReport:
    """One ingest run (``resweep``: one re-sweep step) over the catalog or the named mountains; never
    raises for Flickr being ill.

    Raises ConfigError (missing or rejected Flickr key) and UnknownMountain, which no retry fixes.
    """
    started = time.perf_counter()
    chosen = select_mountains(catalog, mountains)
    budget = settings.photos_per_run if photos_per_run is None else photos_per_run
    if budget < 1:
        raise ValueError(f"photos_per_run must be at least 1, got {budget}")
    report = IngestReport()
    with _client(settings, client) as flickr, Bar("ingest", len(chosen)) as bar, \
            ThreadPoolExecutor(max(settings.download_workers, 1), thread_name_prefix="ingest") as pool:
        run = _Run(settings, store, flickr, pool, budget, resweep=resweep)
        for mountain in chosen:
            bar.advance(0, mountain.slug)
            try:
                report.mountains[mountain.slug] = run.mountain(mountain)
                bar.advance(note=f"{mountain.slug}: {report.mountains[mountain.slug].stored} new")
            except FlickrRejected as error:
                report.mountains[mountain.slug] = MountainReport(mountain.slug, errors=1,
                                                                   stopped=f"search rejected: {error}")
                event(log, "search rejected", level=logging.ERROR, slug=mountain.slug, error=str(error))
            except FlickrUnavailable as error:
                report.mountains[mountain.slug] = MountainReport(mountain.slug, errors=1, stopped=str(error))
                report.stopped = f"Flickr unavailable at {mountain.slug}: {error}"
                event(log, "flickr unavailable: run stops", level=logging.ERROR, slug=mountain.slug,
                      error=str(error))
                break
    report.seconds = time.perf_counter() - started
    event(log, "ingest run finished", level=logging.INFO if report.ok else logging.WARNING, resweep=resweep,
          stored=report.stored, already_present=report.present, skipped=report.skipped,
          given_up=report.given_up, errors=report.errors,
          mountains=len(report.mountains), seconds=round(report.seconds, 2), stopped=report.stopped)
    return report


@contextmanager
def _client(settings: Settings, client: FlickrClient | None) -> Iterator[FlickrClient]:
    """The caller's client (a function keeps one warm), or one for this run only."""
    if client is not None:
        yield client
        return
    own = FlickrClient.from_settings(settings)
    try:
        yield own
    finally:
        own.close()


def tick_options(message: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a tick's optional JSON: ``{"mountains": ["k2"], "photos_per_run": 10, "resweep": true}``."""
    if not isinstance(message, Mapping):
        kind = type(message).__name__
        raise ValueError(f"a tick carries a JSON object or nothing, got {kind}")  # noqa: TRY004 - bad input
    unknown = set(message) - {"mountains", "photos_per_run", "resweep"}
    if unknown:
        raise ValueError(f"unknown tick fields {sorted(unknown)}; allowed: mountains, photos_per_run, resweep")
    options: dict[str, Any] = {}
    mountains = message.get("mountains")
    if mountains is not None:
        if not isinstance(mountains, list) or not all(isinstance(m, str) and m for m in mountains):
            raise ValueError(f"'mountains' must be a list of names, got {mountains!r}")
        options["mountains"] = mountains
    budget = message.get("photos_per_run")
    if budget is not None:
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise ValueError(f"'photos_per_run' must be a positive whole number, got {budget!r}")
        options["photos_per_run"] = budget
    resweep = message.get("resweep")
    if resweep is not None:
        if not isinstance(resweep, bool):
            raise ValueError(f"'resweep' must be true or false, got {resweep!r}")
        options["resweep"] = resweep
    return options


def handle_tick(cloud_event: CloudEvent, settings: Settings, store: BlobStore, catalog: Catalog,
                client: FlickrClient | None = None) -> IngestReport | None:
    """The scheduler's Pub/Sub tick -> one run. A malformed message is logged and dropped (None):
    redelivering it could never succeed."""
    try:
        options = tick_options(pubsub_json(cloud_event))
        select_mountains(catalog, options.get("mountains"))
    except ValueError as error:  # bad JSON (JSONDecodeError is a ValueError) or UnknownMountain
        event(log, "tick rejected", level=logging.ERROR, event_id=cloud_event["id"], error=str(error))
        return None
    event(log, "tick received", event_id=cloud_event["id"], **options)
    return run_ingest(settings, store, catalog, client=client, **options)


# The `mountainid ingest` subcommand.

def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mountain", action="append", dest="mountains", metavar="NAME",
                        help="only this mountain (name or slug; repeat for more); default: the whole catalog")
    parser.add_argument("--photos-per-run", type=int,
                        help="per-mountain budget (default: MOUNTAINID_PHOTOS_PER_RUN)")
    parser.add_argument("--resweep", action="store_true",
                        help=f"one re-sweep step instead of the usual walk: photos before the cursor that became "
                             f"eligible later (state under {RESWEEP})")
    parser.add_argument("--retry-given-up", action="store_true",
                        help=f"instead of a search: try once more every photo given up after "
                             f"MOUNTAINID_INGEST_MAX_ATTEMPTS failed runs (records under {SKIPPED})")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace, settings: Settings) -> int:
    catalog = load_catalog(settings.catalog)
    store = open_store(settings)

    def once(run_settings: Settings) -> IngestReport:
        if args.retry_given_up:
            return retry_given_up(run_settings, store)
        return run_ingest(run_settings, store, catalog, mountains=args.mountains, photos_per_run=args.photos_per_run,
                          resweep=args.resweep)

    try:
        with args.flickr(settings, catalog) as run_settings:  # the CLI's: real Flickr, or --fake-flickr
            report = once(run_settings)
    except ValueError as error:  # UnknownMountain, a budget below 1
        print(f"mountainid ingest: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=1))
    return 0 if report.ok else 1
