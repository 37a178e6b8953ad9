"""A bounded cost for a slow or stalled upload: the whole request body must arrive within a deadline.

Gunicorn's threads read the body on the client's schedule, so a client that sends its headers and then
a trickle (or nothing) would hold a thread for as long as it likes; a handful of them would leave no
thread for ``/health`` or other uploads. :class:`BodyDeadline` wraps the WSGI input so every read
waits at most until the request's deadline, then fails with :class:`BodyTimeout` (answered 408).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from typing import Any


class BodyTimeout(RuntimeError):
    """The client did not send its request body within the deadline.

    Not an OSError: Werkzeug turns an OSError while reading the body into a 400 "client disconnected".
    """


class _DeadlineInput:
    """``wsgi.input`` whose reads fail once the deadline has passed (the socket times out at it)."""

    def __init__(self, stream: Any, sock: socket.socket, deadline: float) -> None:
        self._stream, self._sock, self._deadline = stream, sock, deadline

    def _call(self, method: str, *args: Any) -> Any:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise BodyTimeout("the request body did not arrive in time")
        self._sock.settimeout(remaining)
        try:
            return getattr(self._stream, method)(*args)
        except TimeoutError:
            raise BodyTimeout("the request body did not arrive in time") from None

    def read(self, *args: Any) -> bytes:
        return self._call("read", *args)

    def readline(self, *args: Any) -> bytes:
        return self._call("readline", *args)

    def __iter__(self):
        return iter(self.readline, b"")


class BodyDeadline:
    """WSGI middleware: reading the body of a request must finish ``deadline_s`` after it started.

    Applies where the server exposes the client socket (gunicorn's ``gunicorn.socket``); the socket's
    timeout is restored afterwards so keep-alive handling is unchanged.
    """

    def __init__(self, app: Callable, deadline_s: float) -> None:
        self.app, self.deadline_s = app, deadline_s

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        if sock is None or self.deadline_s <= 0:
            return self.app(environ, start_response)
        previous = sock.gettimeout()
        environ["wsgi.input"] = _DeadlineInput(environ["wsgi.input"], sock, time.monotonic() + self.deadline_s)
        try:
            return self.app(environ, start_response)
        finally:
            sock.settimeout(previous)
