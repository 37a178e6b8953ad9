"""``mountainid serve [--port N]``: the website and API alone, from the configured store."""

from __future__ import annotations

import argparse
import logging

from mountainid.config import Settings
from mountainid.logs import event
from web.server import THREADS, GunicornServer, gunicorn_options

log = logging.getLogger(__name__)


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: PORT, 8080)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 to accept other machines)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"request threads (default {THREADS})")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from web import create_app

    port = args.port or settings.port
    event(log, "serving", url=f"http://{args.host}:{port}", bucket=settings.bucket, threads=args.threads)
    GunicornServer(lambda: create_app(settings), gunicorn_options(args.host, port, args.threads)).run()
    return 0
