"""Cloud Function (gen2, storage trigger): judge each photo written under raw/.

Triggered by ``google.cloud.storage.object.v1.finalized`` (Eventarc) or by the bucket's Pub/Sub
notification (what fake-gcs-server sends locally); both reach ``filter_photo`` as a CloudEvent.
Every decision is in :mod:`mountainid.filter`; this shell parses the event and keeps the store
client and the model warm between invocations.

Start-up: functions-framework imports this module in gunicorn's master process and then forks
the worker that serves events, and TensorFlow does not survive a fork (its thread pools stay
behind: inference would hang). So the import checks the settings and reads the weights file
without TensorFlow (a missing or damaged file stops the instance here, its path in the log, and
Cloud Functions refuses the deploy instead of failing every event), and the model itself is
loaded lazily, once per instance, by the first event.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import functions_framework
from cloudevents.http import CloudEvent

from mountainid import logs
from mountainid.config import get_settings
from mountainid.events.cloudevents import finalized_object
from mountainid.filter import filter_pending, handle_raw_object, is_catch_up_request
from mountainid.logs import event
from mountainid.store import BlobStore, open_store
from mountainid.vision.backbone import Backbone, check_weights, get_backbone

log = logging.getLogger("functions.filter")

logs.configure(get_settings())
check_weights(get_settings().weights)


@lru_cache(maxsize=1)
def _store() -> BlobStore:
    return open_store(get_settings())


def _backbone() -> Backbone:
    return get_backbone(get_settings().weights)  # loaded by the first event, then cached


@functions_framework.cloud_event
def filter_photo(cloud_event: CloudEvent) -> None:
    settings = get_settings()
    if is_catch_up_request(cloud_event):
        filter_pending(_store(), settings, _backbone, limit=settings.catch_up_limit)  # within the time-out
        return
    ref = finalized_object(cloud_event)
    if ref is None or (settings.uses_gcs and ref.bucket != settings.bucket_name):
        event(log, "event ignored", type=cloud_event["type"], id=cloud_event["id"],
              bucket=ref.bucket if ref else None)
        return
    handle_raw_object(_store(), ref.name, ref.generation, settings, _backbone())
