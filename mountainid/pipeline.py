"""The whole pipeline in one process, on the embedded default (``mountainid run``, in :mod:`web.cli`,
drives it and serves the site over its bucket).

The same library handlers that run as Cloud Functions run here, wired by an in-process bus
instead of Cloud Scheduler, Pub/Sub and Eventarc:

    tick ─► ingest ─► raw/… (the local store's write notification, as GCS sends OBJECT_FINALIZE)
                        └─► filter ─► accepted/ + embeddings/ | rejected/
    then the training job (trains when enough new photos arrived) ─► model-published ─► web hot-swap

A crash half-way loses nothing: the ingest cursor only moves past stored photos, and each cycle
first judges any raw/ photo that has no result yet.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from cloudevents.http import CloudEvent

from mountainid.bucket import ACCEPTED, RAW, REJECTED
from mountainid.catalog import Catalog
from mountainid.config import ConfigError, Settings
from mountainid.events import InProcessBus
from mountainid.events.cloudevents import finalized_object
from mountainid.logs import Bar, event
from mountainid.store import BlobInfo, LocalBlobStore
from mountainid.training.job import FAST_TIER, FINETUNE_TIER, JobConfig, maybe_train

log = logging.getLogger(__name__)


def gcs_notification(bucket: str, blob: BlobInfo) -> tuple[bytes, dict[str, str]]:
    """The Pub/Sub message Cloud Storage publishes for a finalized object (payload format JSON_API_V1)."""
    resource = {"kind": "storage#object", "bucket": bucket, "name": blob.name, "generation": str(blob.generation),
                "size": str(blob.size), "contentType": blob.content_type, "metadata": dict(blob.metadata)}
    attributes = {"eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1", "bucketId": bucket,
                  "objectId": blob.name, "objectGeneration": str(blob.generation)}
    return json.dumps(resource).encode("utf-8"), attributes


class EmbeddedPipeline:
    """Ingest, filter and training wired in-process, over a local folder as the bucket."""

    def __init__(self, settings: Settings, catalog: Catalog, fast: JobConfig = FAST_TIER,
                 fine_tune: JobConfig = FINETUNE_TIER) -> None:
        if settings.uses_gcs:
            raise ConfigError("`mountainid run` is the embedded mode and needs a local MOUNTAINID_BUCKET folder; "
                              "on Google Cloud the deployed functions and job run the pipeline (see infra/)")
        self.settings = settings
        self.catalog = catalog
        self.fast, self.fine_tune_config = fast, fine_tune
        self.bus = InProcessBus(settings.project)
        self.bucket = settings.local_root.name
        self.store = LocalBlobStore(settings.local_root, on_finalize=self._notify)
        self.bus.subscribe(settings.topic_ingest_tick, self._ingest)
        self.bus.subscribe(settings.topic_raw_photos, self._filter)
        self._cycle_lock = threading.Lock()
        self._filter_bar: Bar | None = None  # at a terminal: the photos an ingest queued for the filter

    def _notify(self, blob: BlobInfo) -> None:
        # infra/ sets up the bucket notification for raw/ only; do the same here.
        if blob.name.startswith(RAW):
            data, attributes = gcs_notification(self.bucket, blob)
            self.bus.publish(self.settings.topic_raw_photos, data, attributes)

    def _ingest(self, cloud_event: CloudEvent) -> None:
        from mountainid.ingest import handle_tick

        handle_tick(cloud_event, self.settings, self.store, self.catalog)

    def _filter(self, cloud_event: CloudEvent) -> None:
        from mountainid.filter import handle_raw_object
        from mountainid.vision.backbone import get_backbone

        ref = finalized_object(cloud_event)
        if ref is None:
            return
        if self._filter_bar is None:  # the first of a batch: the rest are queued behind it
            self._filter_bar = Bar("filter", self.bus.pending() + 1).__enter__()
        handle_raw_object(self.store, ref.name, ref.generation, self.settings, get_backbone(self.settings.weights))
        self._filter_bar.advance()
        if self._filter_bar.done >= self._filter_bar.total:
            self._end_filter_bar()

    def _end_filter_bar(self) -> None:
        if self._filter_bar is not None:
            self._filter_bar.__exit__()
            self._filter_bar = None

    def cycle(self, photos_per_run: int | None = None) -> dict[str, object]:
        """One scheduler period: tick -> ingest -> filter (every photo), then train if it is time."""
        from mountainid.filter import filter_pending
        from mountainid.vision.backbone import get_backbone

        with self._cycle_lock:
            started = time.perf_counter()
            tick = {} if photos_per_run is None else {"photos_per_run": photos_per_run}
            self.bus.publish_json(self.settings.topic_ingest_tick, tick)
            delivered = self.bus.drain()
            self._end_filter_bar()
            # Catch up on photos a previous, interrupted run stored but never judged.
            caught_up = filter_pending(self.store, self.settings, lambda: get_backbone(self.settings.weights))
            result = maybe_train(self.settings, self.store, self.bus, self.fast)
            trained = "not due" if result is None else result.status
            self.bus.drain()  # model-published reaches its subscribers (the web service)
            summary: dict[str, Any] = {"events": delivered, "caught_up": caught_up, "trained": trained,
                       "raw": len(self.store.list_names(RAW)), "accepted": len(self.store.list_names(ACCEPTED)),
                       "rejected": len(self.store.list_names(REJECTED)),
                       "seconds": round(time.perf_counter() - started, 1)}
            event(log, "pipeline cycle finished", **summary)
            return summary

    def fine_tune(self) -> str:
        """The slow tier (EfficientNet-Lite2), trained while the site serves the fast tier's model.

        It goes through the same gate: promoted unless significantly worse than the live model on the
        same test photos, then ``model-published`` makes the site hot-swap it in. Returns the run's status.
        """
        with self._cycle_lock:
            result = maybe_train(self.settings, self.store, self.bus, self.fine_tune_config)
            self.bus.drain()
        status = "not due" if result is None else result.status
        event(log, "fine-tune finished", status=status, version=result.version if result else None,
              test=result.test if result else None, seconds=result.seconds if result else None)
        return status
