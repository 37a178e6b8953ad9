"""A tiny functions-framework target for the push-delivery tests: it appends what it received
(CloudEvent attributes, the Pub/Sub payload, and what ``finalized_object`` makes of it) as one JSON
line to the file named by RECORD_TO. A message with attribute ``case=fail-first`` gets a 500 on its
first delivery, to prove Pub/Sub redelivers."""

from __future__ import annotations

import json
from pathlib import Path

import functions_framework
from cloudevents.http import CloudEvent

from mountainid.config import get_settings
from mountainid.events.cloudevents import finalized_object, pubsub_payload


@functions_framework.cloud_event
def record(event: CloudEvent) -> None:
    env = get_settings().env
    log = Path(env["RECORD_TO"])
    data, attributes = pubsub_payload(event)
    ref = finalized_object(event)
    message_id = (event.data or {}).get("message", {}).get("messageId")
    seen = log.read_text().count(f'"message_id": "{message_id}"') if log.exists() else 0
    line = {"type": event["type"], "source": event["source"], "id": event["id"], "message_id": message_id,
            "data": data.decode("utf-8", "replace"), "attributes": attributes,
            "object": None if ref is None else {"bucket": ref.bucket, "name": ref.name,
                                                "generation": ref.generation}}
    with log.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    if attributes.get("case") == "fail-first" and seen == 0:
        raise RuntimeError("failing the first delivery on purpose")
