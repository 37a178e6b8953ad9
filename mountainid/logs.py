"""Structured logging: one line per event handled, JSON on GCP, readable text locally.

Call :func:`event` with a short message and the facts as keyword arguments (always the photo id
when there is one). In JSON mode each line is an object Cloud Logging understands
(``severity``, ``message`` plus the fields as ``jsonPayload``).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

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
