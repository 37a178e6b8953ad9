"""CloudEvents in and out: the envelope every handler receives, whichever way it is delivered.

Handlers take a CloudEvent, as ``functions-framework`` passes it. The same event reaches them
three ways: on GCP (Eventarc / Pub/Sub triggers), from a Pub/Sub push subscription into a local
``functions-framework`` server (a raw push body, which functions-framework converts), and from
the in-process bus, which builds the same envelopes with the helpers below.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cloudevents.http import CloudEvent

PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def pubsub_event(project: str, topic: str, data: bytes, attributes: Mapping[str, str] | None = None,
                 message_id: str | None = None) -> CloudEvent:
    """The CloudEvent a Pub/Sub trigger delivers for one message."""
    message_id = message_id or uuid.uuid4().hex
    return CloudEvent(
        {"type": PUBSUB_PUBLISHED, "source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}",
         "id": message_id, "time": _now(), "datacontenttype": "application/json"},
        {"message": {"data": base64.b64encode(data).decode("ascii"), "attributes": dict(attributes or {}),
                     "messageId": message_id, "publishTime": _now()}},
    )


def storage_finalized_event(bucket: str, name: str, generation: int, size: int = 0,
                            metadata: Mapping[str, str] | None = None,
                            content_type: str | None = None) -> CloudEvent:
    """The CloudEvent Eventarc delivers when an object is written (OBJECT_FINALIZE)."""
    return CloudEvent(
        {"type": STORAGE_FINALIZED, "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
         "subject": f"objects/{name}", "id": f"{bucket}/{name}/{generation}", "time": _now(),
         "datacontenttype": "application/json"},
        {"bucket": bucket, "name": name, "generation": str(generation), "size": str(size),
         "contentType": content_type, "metadata": dict(metadata or {})},
    )


def pubsub_payload(event: CloudEvent) -> tuple[bytes, dict[str, str]]:
    """The message bytes and attributes of a Pub/Sub CloudEvent."""
    message = (event.data or {}).get("message") or {}
    raw = message.get("data") or ""
    return base64.b64decode(raw), dict(message.get("attributes") or {})


def pubsub_json(event: CloudEvent) -> dict[str, Any]:
    """A Pub/Sub message whose body is JSON (empty body -> {})."""
    body, _ = pubsub_payload(event)
    return json.loads(body) if body.strip() else {}


@dataclass(frozen=True)
class ObjectRef:
    """Which object an OBJECT_FINALIZE event is about."""

    bucket: str
    name: str
    generation: int


def finalized_object(event: CloudEvent) -> ObjectRef | None:
    """The object a storage-finalize event names, or None for any other event.

    Accepts both shapes: Eventarc's ``object.v1.finalized`` (data is the object resource) and a
    GCS Pub/Sub notification (attributes ``eventType=OBJECT_FINALIZE``, ``bucketId``, ``objectId``,
    ``objectGeneration``), which is what fake-gcs-server and a Pub/Sub-triggered function get.
    """
    if event["type"] == STORAGE_FINALIZED:
        data = event.data or {}
        return ObjectRef(data["bucket"], data["name"], int(data.get("generation") or 0))
    if event["type"] == PUBSUB_PUBLISHED:
        body, attributes = pubsub_payload(event)
        if attributes.get("eventType") != "OBJECT_FINALIZE":
            return None
        generation = attributes.get("objectGeneration")
        if generation is None and body:
            generation = json.loads(body).get("generation")
        return ObjectRef(attributes["bucketId"], attributes["objectId"], int(generation or 0))
    return None
