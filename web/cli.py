"""``mountainid serve [--port N]``: the website and API alone, from the configured store."""

from __future__ import annotations

import argparse
import logging

from mountainid.arguments import check_port_free
from mountainid.catalog import load_catalog
from mountainid.config import Settings
from mountainid.logs import event
from mountainid.vision.backbone import check_weights
from web.server import THREADS, GunicornServer, gunicorn_options

log = logging.getLogger(__name__)


def configure(name: str, parser: argparse.ArgumentParser) -> None:
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
