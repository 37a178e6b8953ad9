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
import shlex
import threading
import time
from contextlib import ExitStack

from cloudevents.http import CloudEvent

from mountainid.arguments import check_port_free, existing_folder
from mountainid.bucket import ACCEPTED, RAW, REJECTED
from mountainid.catalog import Catalog, load_catalog
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
            summary = {"events": delivered, "caught_up": caught_up, "trained": trained,
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


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fake-flickr", type=existing_folder, metavar="DIR",
                        help="serve DIR (one subfolder per mountain) as Flickr, offline (default: real Flickr)")
    parser.add_argument("--noise", type=existing_folder, metavar="DIR",
                        help="with --fake-flickr: non-mountain photos mixed in")
    parser.add_argument("--photos-per-run", type=int, help="per-mountain budget (default MOUNTAINID_PHOTOS_PER_RUN)")
    parser.add_argument("--every", type=float, default=0.0, metavar="MINUTES",
                        help="while serving, run another cycle every MINUTES (0: once)")
    parser.add_argument("--no-serve", action="store_true", help="stop after the cycle instead of serving the site")
    parser.add_argument("--port", type=int, help="web port (default PORT or 8080)")
    parser.add_argument("--fine-tune", action=argparse.BooleanOptionalAction, default=True,
                        help="after the fast tier, fine-tune EfficientNet-Lite2 (in the background while serving) "
                             "and swap it in when it passes the gate (default: %(default)s)")
    parser.add_argument("--fine-tune-args", default="", metavar="ARGS",
                        help="flags of `mountainid train --tier finetune` for that run, e.g. \"--epochs 6\"")
    parser.set_defaults(func=_command)


def _fine_tune_config(flags: str) -> JobConfig:
    from mountainid.training.cli import add_training_flags, job_config

    parser = argparse.ArgumentParser(prog="--fine-tune-args")
    add_training_flags(parser)
    return job_config(parser.parse_args(["--tier", "finetune", *shlex.split(flags)]))


def _command(args: argparse.Namespace, settings: Settings) -> int:
    if not args.no_serve:
        check_port_free("127.0.0.1", args.port or settings.port)
    with ExitStack() as stack:
        catalog = load_catalog(settings.catalog)
        if args.fake_flickr is not None:
            from mountainid.flickr.fake import FakeFlickr

            fake = stack.enter_context(FakeFlickr(args.fake_flickr, args.noise, catalog=catalog))
            settings = dataclasses.replace(settings, flickr_rest_url=fake.rest_url)
        pipeline = EmbeddedPipeline(settings, catalog, fine_tune=_fine_tune_config(args.fine_tune_args))
        summary = pipeline.cycle(args.photos_per_run)
        print(f"bucket {pipeline.store.uri()}: {summary['raw']} raw, {summary['accepted']} accepted, "
              f"{summary['rejected']} rejected; training (fast tier): {summary['trained']}", flush=True)
        if args.no_serve:
            if args.fine_tune:
                print(f"fine-tune tier: {pipeline.fine_tune()}")
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
    if args.fine_tune:
        threading.Thread(target=pipeline.fine_tune, name="fine-tune", daemon=True).start()
        print("Fine-tuning EfficientNet-Lite2 in the background (one log line per epoch, with an ETA); "
              "the site switches to it by itself if it passes the gate.", flush=True)
    try:
        while True:
            time.sleep(args.every * 60 if args.every > 0 else 3600)
            if args.every > 0:
                pipeline.cycle(args.photos_per_run)
                if args.fine_tune:
                    pipeline.fine_tune()  # trains only when enough new photos arrived since the last one
    except KeyboardInterrupt:
        server.stop()
    return 0
