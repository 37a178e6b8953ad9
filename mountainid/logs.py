"""Structured logging: one line per event handled, JSON on GCP, readable text locally.

Call :func:`event` with a short message and the facts as keyword arguments (always the photo id
when there is one). In JSON mode each line is an object Cloud Logging understands
(``severity``, ``message`` plus the fields as ``jsonPayload``).

At a terminal (text logs to a TTY) long work shows a :class:`Bar` (rich's progress) instead of a line per photo or
epoch: those lines drop to DEBUG there (:func:`item_level`), and each stage still logs its summary.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from mountainid.config import Settings

_FIELDS = "mountainid_fields"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
        }
        payload.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extra = getattr(record, _FIELDS, {})
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(settings: Settings) -> None:
    """Install the formatter once per process (idempotent)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("urllib3", "google", "werkzeug", "absl", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def event(logger: logging.Logger, message: str, *, level: int = logging.INFO, exc_info: bool = False,
          **fields: Any) -> None:
    """Log one structured line: ``event(log, "photo stored", photo_id="123", slug="k2")``."""
    logger.log(level, message, extra={_FIELDS: fields}, exc_info=exc_info)


def _terminal() -> Any:
    """The stream of a text log handler that is a terminal, or None (logs to a file, JSON, tests)."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(handler.formatter, TextFormatter) and stream is not None and not stream.closed \
                and stream.isatty():
            return stream
    return None


def item_level() -> int:
    """The level of a per-photo or per-epoch line: INFO in logs, DEBUG at a terminal where a bar shows it."""
    return logging.DEBUG if _terminal() is not None else logging.INFO


_bars_hidden = 0  # > 0 inside bars_hidden()


@contextmanager
def bars_hidden() -> Iterator[None]:
    """Bars opened inside draw nothing: for work under a bar of its own that calls code with bars (a
    backfill runs the feature loaders chunk by chunk); two bars would overwrite one line."""
    global _bars_hidden
    _bars_hidden += 1
    try:
        yield
    finally:
        _bars_hidden -= 1


class Bar:
    """``with Bar("filter", 537) as bar: bar.advance(32)``: rich's progress bar (counts, an ETA and a note)
    at a terminal; nothing anywhere else (nor inside :func:`bars_hidden`), where the per-item log lines at
    :func:`item_level` tell the same story one line per step."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.note = label, total, 0, ""
        stream = _terminal() if total > 0 and not _bars_hidden else None
        self._progress = None if stream is None else Progress(
            TextColumn("{task.description:<10}"), BarColumn(bar_width=28), MofNCompleteColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
            console=Console(file=stream), redirect_stdout=False, redirect_stderr=False)
        self._task = self._progress.add_task(label, total=total, note="") if self._progress else TaskID(0)

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def advance(self, count: int = 1, note: str = "") -> None:
        self.done, self.note = min(self.total, self.done + count), note or self.note
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, note=self.note)

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()
