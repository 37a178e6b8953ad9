"""The embedded bus: Pub/Sub semantics (CloudEvents, at-least-once, dead letters) without a server."""

from __future__ import annotations

import pytest
from cloudevents.http import CloudEvent

from mountainid.events import InProcessBus, open_bus
from mountainid.events.cloudevents import PUBSUB_PUBLISHED, finalized_object, pubsub_json, pubsub_payload


def test_delivers_queued_cloudevents_to_every_subscriber() -> None:
    bus = InProcessBus("proj-x")
    first: list[CloudEvent] = []
    second: list[CloudEvent] = []
    bus.subscribe("raw-photos", first.append)
    bus.subscribe("raw-photos", second.append)
    bus.subscribe("other-topic", lambda event: pytest.fail("wrong topic delivered"))
    message_id = bus.publish("raw-photos", b"payload", {"photo_id": "42"})
    assert (first, bus.pending()) == ([], 2)  # queued, not run inside publish
    assert bus.drain() == 2
    assert [e["id"] for e in first] == [message_id] == [e["id"] for e in second]
    event = first[0]
    assert event["type"] == PUBSUB_PUBLISHED
    assert event["source"] == "//pubsub.googleapis.com/projects/proj-x/topics/raw-photos"
    assert pubsub_payload(event) == (b"payload", {"photo_id": "42"})
    assert bus.pending() == 0


def test_publish_json_round_trips() -> None:
    bus = InProcessBus()
    got: list[dict] = []
    bus.subscribe("model-published", lambda event: got.append(pubsub_json(event)))
    bus.publish_json("model-published", {"version": "v7", "accuracy": 0.91})
    bus.drain()
    assert got == [{"version": "v7", "accuracy": 0.91}]


def test_failing_handler_is_retried_then_dead_lettered_without_blocking_others() -> None:
    bus = InProcessBus(max_attempts=3)
    attempts: list[str] = []
    healthy: list[str] = []

    def flaky(event: CloudEvent) -> None:
        attempts.append(event["id"])
        raise ValueError("corrupt photo")

    bus.subscribe("raw-photos", flaky)
    bus.subscribe("raw-photos", lambda event: healthy.append(event["id"]))
    bad = bus.publish("raw-photos", b"1")
    good = bus.publish("raw-photos", b"2")
    assert bus.drain() == 2  # the healthy handler got both messages
    assert sorted(healthy) == sorted([bad, good])
    assert attempts.count(bad) == 3 and attempts.count(good) == 3
    assert sorted(event["id"] for _, event in bus.dead_letters) == sorted([bad, good])
    assert bus.pending() == 0


def test_handler_that_fails_once_succeeds_on_redelivery() -> None:
    bus = InProcessBus(max_attempts=3)
    calls: list[int] = []

    def transient(event: CloudEvent) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("bucket briefly unavailable")

    bus.subscribe("raw-photos", transient)
    bus.publish("raw-photos", b"x")
    assert bus.drain() == 1
    assert len(calls) == 2 and bus.dead_letters == []


def test_handler_publishing_more_messages_is_drained_too() -> None:
    bus = InProcessBus()
    chain: list[str] = []

    def ingest(event: CloudEvent) -> None:
        chain.append("tick")
        for photo in ("1", "2"):
            bus.publish("raw-photos", photo.encode(), {"eventType": "OBJECT_FINALIZE", "bucketId": "b",
                                                       "objectId": f"raw/k2/{photo}.jpg",
                                                       "objectGeneration": photo})

    def filter_photo(event: CloudEvent) -> None:
        ref = finalized_object(event)
        assert ref is not None
        chain.append(f"{ref.name}@{ref.generation}")

    bus.subscribe("ingest-tick", ingest)
    bus.subscribe("raw-photos", filter_photo)
    bus.publish("ingest-tick", b"")
    assert bus.drain() == 3
    assert chain == ["tick", "raw/k2/1.jpg@1", "raw/k2/2.jpg@2"]


def test_open_bus_picks_the_embedded_bus_by_default(make_settings) -> None:
    assert isinstance(open_bus(make_settings()), InProcessBus)
