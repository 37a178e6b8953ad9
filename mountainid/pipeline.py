"""``mountainid run``: the whole pipeline in one process, on the embedded default.

The same library handlers that run as Cloud Functions run here, wired by an in-process bus
instead of Cloud Scheduler, Pub/Sub and Eventarc:

    tick ─► ingest ─► raw/… (the local store's write notification, as GCS sends OBJECT_FINALIZE)
                        └─► filter ─► accepted/ + embeddings/ | rejected/
    then the training job (trains when enough new photos arrived) ─► model-published ─► web hot-swap

A crash half-way loses nothing: the ingest cursor only moves past stored photos, and each cycle
first judges any raw/ photo that has no result yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from cloudevents.http import CloudEvent

from mountainid.catalog import Catalog, load_catalog
from mountainid.config import ConfigError, Settings
from mountainid.events import InProcessBus
from mountainid.events.cloudevents import finalized_object
from mountainid.logs import event
from mountainid.store import BlobInfo, LocalBlobStore

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

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        if settings.uses_gcs:
            raise ConfigError("`mountainid run` is the embedded mode and needs a local MOUNTAINID_BUCKET folder; "
                              "on Google Cloud the deployed functions and job run the pipeline (see infra/)")
        self.settings = settings
        self.catalog = catalog
        self.bus = InProcessBus(settings.project)
        self.bucket = settings.local_root.name
        self.store = LocalBlobStore(settings.local_root, on_finalize=self._notify)
        self.bus.subscribe(settings.topic_ingest_tick, self._ingest)
        self.bus.subscribe(settings.topic_raw_photos, self._filter)
        self._cycle_lock = threading.Lock()

    def _notify(self, blob: BlobInfo) -> None:
        # infra/ sets up the bucket notification for raw/ only; do the same here.
        if blob.name.startswith("raw/"):
            data, attributes = gcs_notification(self.bucket, blob)
            self.bus.publish(self.settings.topic_raw_photos, data, attributes)

    def _ingest(self, cloud_event: CloudEvent) -> None:
        from mountainid.ingest import handle_tick

        handle_tick(cloud_event, self.settings, self.store, self.catalog)

    def _filter(self, cloud_event: CloudEvent) -> None:
        from mountainid.filter import handle_raw_object
        from mountainid.vision.backbone import get_backbone

        ref = finalized_object(cloud_event)
        if ref is not None:
            handle_raw_object(self.store, ref.name, ref.generation, self.settings, get_backbone(self.settings.weights))

    def cycle(self, photos_per_run: int | None = None) -> dict[str, object]:
        """One scheduler period: tick -> ingest -> filter (every photo), then train if it is time."""
        from mountainid.filter import filter_pending
        from mountainid.training.job import maybe_train
        from mountainid.vision.backbone import get_backbone

        with self._cycle_lock:
            started = time.perf_counter()
            tick = {} if photos_per_run is None else {"photos_per_run": photos_per_run}
            self.bus.publish_json(self.settings.topic_ingest_tick, tick)
            delivered = self.bus.drain()
            # Catch up on photos a previous, interrupted run stored but never judged.
            caught_up = filter_pending(self.store, self.settings, get_backbone(self.settings.weights))
            result = maybe_train(self.settings, self.store, self.bus)
            trained = "not due" if result is None else result.status
            self.bus.drain()  # model-published reaches its subscribers (the web service)
            summary = {"events": delivered, "caught_up": caught_up, "trained": trained,
                       "raw": len(self.store.list_names("raw/")), "accepted": len(self.store.list_names("accepted/")),
                       "rejected": len(self.store.list_names("rejected/")),
                       "seconds": round(time.perf_counter() - started, 1)}
            event(log, "pipeline cycle finished", **summary)
            return summary


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fake-flickr", type=Path, metavar="DIR",
                        help="serve DIR (one subfolder per mountain) as Flickr, offline (default: real Flickr)")
    parser.add_argument("--noise", type=Path, metavar="DIR", help="with --fake-flickr: non-mountain photos mixed in")
    parser.add_argument("--photos-per-run", type=int, help="per-mountain budget (default MOUNTAINID_PHOTOS_PER_RUN)")
    parser.add_argument("--every", type=float, default=0.0, metavar="MINUTES",
                        help="while serving, run another cycle every MINUTES (0: once)")
    parser.add_argument("--no-serve", action="store_true", help="stop after the cycle instead of serving the site")
    parser.add_argument("--port", type=int, help="web port (default PORT or 8080)")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace, settings: Settings) -> int:
    with ExitStack() as stack:
        catalog = load_catalog(settings.catalog)
        if args.fake_flickr is not None:
            from mountainid.flickr.fake import FakeFlickr

            fake = stack.enter_context(FakeFlickr(args.fake_flickr, args.noise, catalog=catalog))
            settings = dataclasses.replace(settings, flickr_rest_url=fake.rest_url)
        pipeline = EmbeddedPipeline(settings, catalog)
        summary = pipeline.cycle(args.photos_per_run)
        print(f"bucket {pipeline.store.uri()}: {summary['raw']} raw, {summary['accepted']} accepted, "
              f"{summary['rejected']} rejected; training: {summary['trained']}")
        if args.no_serve:
            return 0
        return _serve(pipeline, settings, args)
    return 0


def _serve(pipeline: EmbeddedPipeline, settings: Settings, args: argparse.Namespace) -> int:
    """Serve the site in this process, so the in-process model-published event reaches it."""
    from web import create_app
    from web.server import ServerThread

    app = create_app(settings, store=pipeline.store)
    pipeline.bus.subscribe(settings.topic_model_published, app.extensions["mountainid"].holder.on_model_published)
    server = ServerThread(app, "127.0.0.1", args.port or settings.port).start()
    print(f"MountainID is serving at {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(args.every * 60 if args.every > 0 else 3600)
            if args.every > 0:
                pipeline.cycle(args.photos_per_run)
    except KeyboardInterrupt:
        server.stop()
    return 0
