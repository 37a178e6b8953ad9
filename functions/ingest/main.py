"""Cloud Function (gen2, Pub/Sub trigger): one Flickr ingest run per Cloud Scheduler tick.

The tick's message may carry JSON such as ``{"mountains": ["k2"], "photos_per_run": 10}``; an empty
message ingests the whole catalog with the configured budget. Everything that decides anything is
in :mod:`mountainid.ingest`; this shell only keeps the clients warm between invocations.
"""

from __future__ import annotations

from functools import lru_cache

import functions_framework
from cloudevents.http import CloudEvent

from mountainid import logs
from mountainid.catalog import Catalog, load_catalog
from mountainid.config import Settings, get_settings
from mountainid.flickr import FlickrClient
from mountainid.ingest import handle_tick
from mountainid.store import BlobStore, open_store


@lru_cache(maxsize=1)
def _context() -> tuple[Settings, BlobStore, Catalog, FlickrClient]:
    """Created on the first tick, reused by later ones in the same instance (connection pools)."""
    settings = get_settings()
    logs.configure(settings)
    client = FlickrClient.from_settings(settings)  # fails naming FLICKR_API_KEY when it is missing
    return settings, open_store(settings), load_catalog(settings.catalog), client


@functions_framework.cloud_event
def ingest(cloud_event: CloudEvent) -> None:
    settings, store, catalog, client = _context()
    handle_tick(cloud_event, settings, store, catalog, client=client)
