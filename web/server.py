"""Running the app: gunicorn (production, ``mountainid serve``) or a werkzeug thread (embedded, tests).

Gunicorn runs one worker process with several threads: the model is loaded once per process and
TensorFlow releases the GIL while it computes, so threads share one copy of the weights and still
overlap. The app is created inside the worker (never before the fork: TensorFlow is not fork-safe).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from werkzeug.serving import BaseWSGIServer, make_server

WORKERS = 1
# More threads than Cloud Run's concurrency (8): a slow upload holds its thread until the body deadline,
# and the others must still answer /health and uploads. Predictions themselves run a few at a time
# (MOUNTAINID_MAX_CONCURRENT_PREDICTIONS), so threads cost little memory.
THREADS = 32
# Cloud Run enforces the request timeout; a worker killed mid-load would only slow start-up.
TIMEOUT_S = 0
GRACEFUL_TIMEOUT_S = 20


def gunicorn_options(host: str, port: int, threads: int = THREADS) -> dict[str, Any]:
    return {"bind": f"{host}:{port}", "workers": WORKERS, "threads": threads, "worker_class": "gthread",
            "timeout": TIMEOUT_S, "graceful_timeout": GRACEFUL_TIMEOUT_S, "preload_app": False,
            "accesslog": None, "errorlog": "-", "loglevel": "warning"}


class GunicornServer(BaseApplication):
    """Gunicorn driven from Python, so ``mountainid serve`` needs no separate command line."""

    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.factory()


class ServerThread:
    """The app on a threaded werkzeug server in a background thread (``port=0`` picks a free port).

    For the embedded pipeline (which shares its process, and so its events, with the site) and for
    tests that need real HTTP. Never the debugger: this is werkzeug's plain WSGI server.
    """

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server: BaseWSGIServer = make_server(host, port, app, threaded=True)
        self.host = host
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"web-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)
