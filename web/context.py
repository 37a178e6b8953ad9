"""What every request handler needs, stored once on the app (no module-level globals)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from flask import current_app

from mountainid.catalog import Catalog
from mountainid.config import Settings
from mountainid.serving import ModelHolder
from mountainid.store import BlobStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: BlobStore
    holder: ModelHolder
    catalog: Catalog
    prediction_slots: threading.BoundedSemaphore  # settings.max_concurrent_predictions


def services() -> Services:
    return current_app.extensions["mountainid"]
