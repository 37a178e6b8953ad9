"""Pub/Sub for real: the official emulator, fake-gcs-server's GCS notifications, and push delivery
into a functions-framework server, the chain the filter function runs on (see harness.localcloud)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.localcloud import (
    FakeGcsServer,
    FunctionsFrameworkServer,
    LocalCloudError,
    PubSubEmulator,
    free_port,
)
from mountainid.events import open_bus
from mountainid.events.pubsub import (
    PublishError,
    PubSubBus,
    ensure_pull_subscription,
    ensure_push_subscription,
    ensure_topic,
    pull,
    subscriber_client,
)
from mountainid.store.gcs import GcsBlobStore, storage_client
from tests.emulators import PROJECT, RAW_TOPIC, unique_name

RECORDER = Path(__file__).with_name("recorder_function.py")


def wait_for(read: Callable[[], list[dict]], ready: Callable[[list[dict]], bool],
             timeout_s: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = read()
        if ready(rows):
            return rows
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s; got {read()}")


class Recorder:
    """A functions-framework server running tests/events/recorder_function.py, and what it recorded."""

    def __init__(self, server: FunctionsFrameworkServer, path: Path) -> None:
        self.server = server
        self.path = path

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorder]:
    path = tmp_path_factory.mktemp("recorder") / "events.jsonl"
    server = FunctionsFrameworkServer(RECORDER, "record", env={"RECORD_TO": str(path)})
    try:
        server.start()
    except LocalCloudError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield Recorder(server, path)
    server.stop()


@pytest.fixture()
def topic(pubsub_emulator: PubSubEmulator) -> str:
    return ensure_topic(PROJECT, unique_name("topic"), emulator_host=pubsub_emulator.host).rsplit("/", 1)[1]


def test_publish_then_pull_returns_data_and_attributes(pubsub_emulator: PubSubEmulator, topic: str) -> None:
    ensure_pull_subscription(PROJECT, topic, f"{topic}-pull", emulator_host=pubsub_emulator.host)
    bus = PubSubBus(PROJECT, emulator_host=pubsub_emulator.host)
    ids = [bus.publish(topic, b"\x00binary\xff", {"photo_id": "7", "slug": "k2"}),
           bus.publish_json(topic, {"version": "v3"})]
    assert all(ids) and len(set(ids)) == 2
    messages = pull(PROJECT, f"{topic}-pull", emulator_host=pubsub_emulator.host, min_messages=2)
    by_id = {m.message_id: m for m in messages}
    assert set(by_id) == set(ids)
    assert (by_id[ids[0]].data, by_id[ids[0]].attributes) == (b"\x00binary\xff", {"photo_id": "7", "slug": "k2"})
    assert json.loads(by_id[ids[1]].data) == {"version": "v3"}
    # Acknowledged: nothing is delivered twice.
    assert pull(PROJECT, f"{topic}-pull", emulator_host=pubsub_emulator.host, timeout_s=1.0) == []


def test_open_bus_uses_pubsub_through_the_settings(pubsub_emulator: PubSubEmulator, topic: str,
                                                   make_settings) -> None:
    ensure_pull_subscription(PROJECT, topic, f"{topic}-pull", emulator_host=pubsub_emulator.host)
    bus = open_bus(make_settings(MOUNTAINID_EVENTS="pubsub", GOOGLE_CLOUD_PROJECT=PROJECT,
                                 **pubsub_emulator.env))
    assert isinstance(bus, PubSubBus)
    message_id = bus.publish(topic, b"tick")
    [message] = pull(PROJECT, f"{topic}-pull", emulator_host=pubsub_emulator.host)
    assert (message.message_id, message.data) == (message_id, b"tick")


def test_publish_to_a_missing_topic_fails_clearly(pubsub_emulator: PubSubEmulator) -> None:
    bus = PubSubBus(PROJECT, emulator_host=pubsub_emulator.host)
    with pytest.raises(PublishError, match="no-such-topic"):
        bus.publish("no-such-topic", b"x")


def test_publish_to_an_unreachable_server_fails_within_the_timeout() -> None:
    host = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(PublishError, match=f"reachable at {host}"):
        PubSubBus(PROJECT, emulator_host=host, timeout_s=1).publish("ingest-tick", b"x")
    assert time.monotonic() - started < 10


def test_ensure_helpers_are_idempotent(pubsub_emulator: PubSubEmulator, topic: str) -> None:
    host = pubsub_emulator.host
    assert ensure_topic(PROJECT, topic, emulator_host=host) == f"projects/{PROJECT}/topics/{topic}"
    for _ in range(2):
        ensure_pull_subscription(PROJECT, topic, f"{topic}-sub", emulator_host=host)
    path = ensure_push_subscription(PROJECT, topic, f"{topic}-sub", "http://127.0.0.1:9/push",
                                    emulator_host=host)  # re-points the existing subscription
    assert subscriber_client(host).get_subscription(subscription=path).push_config.push_endpoint == \
        "http://127.0.0.1:9/push"


def test_gcs_notification_reaches_pubsub(pubsub_emulator: PubSubEmulator,
                                         fake_gcs_events: FakeGcsServer) -> None:
    subscription = unique_name("notifications")
    ensure_pull_subscription(PROJECT, RAW_TOPIC, subscription, emulator_host=pubsub_emulator.host)
    bucket = unique_name("notify")
    storage_client(PROJECT, fake_gcs_events.url).create_bucket(bucket)
    store = GcsBlobStore(bucket, PROJECT, emulator_host=fake_gcs_events.url)
    generation = store.put("raw/k2/123.jpg", b"jpeg", metadata={"owner": "me"}, content_type="image/jpeg")
    store.put("accepted/k2/123.jpg", b"jpeg")  # outside the notification prefix: no message

    messages = pull(PROJECT, subscription, emulator_host=pubsub_emulator.host, timeout_s=15)
    mine = [m for m in messages if m.attributes.get("bucketId") == bucket]
    assert len(mine) == 1, messages
    attributes = mine[0].attributes
    assert attributes["eventType"] == "OBJECT_FINALIZE"
    assert attributes["payloadFormat"] == "JSON_API_V1"
    assert (attributes["objectId"], int(attributes["objectGeneration"])) == ("raw/k2/123.jpg", generation)
    resource = json.loads(mine[0].data)
    assert (resource["name"], resource["bucket"], resource["contentType"]) == ("raw/k2/123.jpg", bucket,
                                                                               "image/jpeg")
    assert resource["metadata"] == {"owner": "me"}
    assert pull(PROJECT, subscription, emulator_host=pubsub_emulator.host, timeout_s=1.0) == []


def test_object_finalize_is_pushed_to_functions_framework_as_a_cloudevent(
        pubsub_emulator: PubSubEmulator, fake_gcs_events: FakeGcsServer, recorder: Recorder) -> None:
    """GCS write -> notification -> push subscription -> functions-framework -> finalized_object."""
    ensure_push_subscription(PROJECT, RAW_TOPIC, "raw-photos-recorder",
                             recorder.server.push_endpoint(PROJECT, RAW_TOPIC), emulator_host=pubsub_emulator.host)
    bucket = unique_name("push")
    storage_client(PROJECT, fake_gcs_events.url).create_bucket(bucket)
    store = GcsBlobStore(bucket, PROJECT, emulator_host=fake_gcs_events.url)
    generation = store.put("raw/eiger/9.jpg", b"jpeg")

    rows = wait_for(recorder.rows, lambda rows: any((r["object"] or {}).get("bucket") == bucket for r in rows))
    [row] = [r for r in rows if (r["object"] or {}).get("bucket") == bucket]
    assert row["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert row["source"] == f"//pubsub.googleapis.com/projects/{PROJECT}/topics/{RAW_TOPIC}"
    assert row["object"] == {"bucket": bucket, "name": "raw/eiger/9.jpg", "generation": generation}
    assert row["attributes"]["eventType"] == "OBJECT_FINALIZE"


def test_failed_push_is_redelivered(pubsub_emulator: PubSubEmulator, topic: str, recorder: Recorder) -> None:
    """A handler error answers 500; Pub/Sub delivers the same message again (at-least-once)."""
    ensure_push_subscription(PROJECT, topic, f"{topic}-push", recorder.server.push_endpoint(PROJECT, topic),
                             emulator_host=pubsub_emulator.host)
    message_id = PubSubBus(PROJECT, emulator_host=pubsub_emulator.host).publish(
        topic, b'{"photo": 1}', {"case": "fail-first"})

    rows = wait_for(recorder.rows, lambda rows: sum(r["message_id"] == message_id for r in rows) >= 2)
    deliveries = [r for r in rows if r["message_id"] == message_id]
    assert [d["data"] for d in deliveries[:2]] == ['{"photo": 1}'] * 2
    assert deliveries[0]["object"] is None  # not a storage event: finalized_object says so
    time.sleep(1.0)  # the successful delivery was acknowledged: no third one
    assert sum(r["message_id"] == message_id for r in recorder.rows()) == 2
