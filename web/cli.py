"""The commands that serve the site: ``mountainid serve`` (the website and API alone, from the configured
store) and ``mountainid run`` (the embedded pipeline, :mod:`mountainid.pipeline`, then the site over its
bucket in the same process, so its model-published events reach the site)."""

from __future__ import annotations

import argparse
import logging
import shlex
import threading
import time

from mountainid.arguments import check_port_free
from mountainid.catalog import load_catalog
from mountainid.config import Settings
from mountainid.logs import event
from mountainid.pipeline import EmbeddedPipeline
from mountainid.training.cli import add_training_flags, job_config
from mountainid.training.job import JobConfig
from mountainid.vision.backbone import check_weights
from web.server import THREADS, GunicornServer, ServerThread, gunicorn_options

log = logging.getLogger(__name__)


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "run":
        configure_run(parser)
        return
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: PORT, 8080)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 to accept other machines)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"request threads (default {THREADS})")
    parser.set_defaults(func=serve)


def check_before_fork(settings: Settings, host: str, port: int) -> None:
    """The mistakes a person makes (catalog, weights file, port) stop here with one line and exit 2: in
    gunicorn's worker they would end as its traceback and 'Worker failed to boot'. No TensorFlow here.
    Weights left at the default are not checked: each model says which file it needs (serving.weights_for)."""
    load_catalog(settings.catalog)
    if settings.weights != "imagenet":
        check_weights(settings.weights)
    check_port_free(host, port)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from web import create_app

    port = args.port or settings.port
    check_before_fork(settings, args.host, port)
    event(log, "serving", url=f"http://{args.host}:{port}", bucket=settings.bucket, threads=args.threads)
    GunicornServer(lambda: create_app(settings), gunicorn_options(args.host, port, args.threads)).run()
    return 0


# `mountainid run`: the embedded pipeline, then the site.

def configure_run(parser: argparse.ArgumentParser) -> None:
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
    parser.set_defaults(func=run)


def _fine_tune_config(flags: str) -> JobConfig:
    parser = argparse.ArgumentParser(prog="--fine-tune-args")
    add_training_flags(parser)
    return job_config(parser.parse_args(["--tier", "finetune", *shlex.split(flags)]))


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.no_serve:
        check_port_free("127.0.0.1", args.port or settings.port)
    catalog = load_catalog(settings.catalog)
    with args.flickr(settings, catalog) as settings:
        pipeline = EmbeddedPipeline(settings, catalog, fine_tune=_fine_tune_config(args.fine_tune_args))
        summary = pipeline.cycle(args.photos_per_run)
        print(f"bucket {pipeline.store.uri()}: {summary['raw']} raw, {summary['accepted']} accepted, "
              f"{summary['rejected']} rejected; training (fast tier): {summary['trained']}", flush=True)
        if args.no_serve:
            if args.fine_tune:
                print(f"fine-tune tier: {pipeline.fine_tune()}")
            return 0
        return _serve_pipeline(pipeline, settings, args)


def _serve_pipeline(pipeline: EmbeddedPipeline, settings: Settings, args: argparse.Namespace) -> int:
    """Serve the site in this process, so the in-process model-published event reaches it."""
    from web import create_app

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
