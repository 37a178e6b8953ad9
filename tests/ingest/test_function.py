"""functions/ingest under a real functions-framework server, fed by the real Pub/Sub emulator, writing
to fake-gcs-server, reading the fake Flickr: the Cloud Scheduler -> Pub/Sub -> function chain."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cloudevents.conversion import to_structured

from harness.fake_flickr import FakeFlickr
from harness.localcloud import FakeGcsServer, FunctionsFrameworkServer, PubSubEmulator
from mountainid.bucket import cursor_name
from mountainid.events.cloudevents import pubsub_event
from mountainid.events.pubsub import PubSubBus, ensure_push_subscription, ensure_topic
from mountainid.ingest import Cursor
from mountainid.store.gcs import GcsBlobStore
from tests.emulators import PROJECT, unique_name
from tests.flickr.conftest import WIDE_LICENSES
from tests.ingest.test_ingest import _as_flickr, stored_ids

MAIN = Path(__file__).resolve().parents[2] / "functions" / "ingest" / "main.py"


@pytest.fixture()
def ingest_function(fake_gcs: FakeGcsServer, gcs_bucket: str,
                    fake_flickr: FakeFlickr) -> Iterator[FunctionsFrameworkServer]:
    env = {**fake_gcs.env, "MOUNTAINID_BUCKET": f"gs://{gcs_bucket}", "GOOGLE_CLOUD_PROJECT": PROJECT,
           "FLICKR_REST_URL": fake_flickr.rest_url, "MOUNTAINID_CATALOG": "peaks14",
           "MOUNTAINID_LICENSES": WIDE_LICENSES, "MOUNTAINID_PHOTOS_PER_RUN": "3", "MOUNTAINID_FLICKR_BACKOFF_S": "0.01"}
    with FunctionsFrameworkServer(MAIN, "ingest", env=env) as server:
        yield server


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_scheduler_tick_through_pubsub_runs_the_ingest(
        pubsub_emulator: PubSubEmulator, fake_gcs: FakeGcsServer, gcs_bucket: str, fake_flickr: FakeFlickr,
        ingest_function: FunctionsFrameworkServer) -> None:
    store = GcsBlobStore(gcs_bucket, PROJECT, emulator_host=fake_gcs.url)
    topic = unique_name("ingest-tick")
    ensure_topic(PROJECT, topic, emulator_host=pubsub_emulator.host)
    ensure_push_subscription(PROJECT, topic, f"{topic}-ingest", ingest_function.push_endpoint(PROJECT, topic),
                             emulator_host=pubsub_emulator.host)
    expected = fake_flickr.photos("k2", licenses=tuple(map(int, WIDE_LICENSES.split(","))))

    PubSubBus(PROJECT, emulator_host=pubsub_emulator.host).publish_json(topic, {"mountains": ["K2"]})
    wait_for(lambda: store.exists(cursor_name("k2")))
    assert stored_ids(store, "k2") == sorted(p.id for p in expected[:3])
    meta = store.info(f"raw/k2/{expected[0].id}.jpg").metadata  # type: ignore[union-attr]
    assert meta["owner"] == expected[0].owner and meta["source"] == "flickr"

    # The same tick (same CloudEvent id) delivered twice at once, as at-least-once delivery allows.
    body = json.dumps({"mountains": ["k2"], "photos_per_run": 3}).encode()
    tick = to_structured(pubsub_event(PROJECT, topic, body))
    answers: list[int] = []

    def deliver() -> None:
        answer = requests.post(ingest_function.url, headers=tick[0], data=tick[1], timeout=60)
        answers.append(answer.status_code)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200, 200]
    stored = stored_ids(store, "k2")
    cursor = Cursor.from_json(store.get(cursor_name("k2")))
    covered = [p for p in expected if cursor.covers(_as_flickr(p))]
    assert covered == expected[: len(covered)] and len(covered) >= 6, "the cursor covers an unbroken prefix"
    assert stored == sorted(p.id for p in expected[: len(stored)]) and {p.id for p in covered} <= set(stored)


def test_malformed_tick_is_acknowledged_and_ignored(fake_gcs: FakeGcsServer, gcs_bucket: str,
                                                    ingest_function: FunctionsFrameworkServer) -> None:
    tick = to_structured(pubsub_event(PROJECT, "ingest-tick", b'{"mountains": ["../../etc"]}'))
    assert requests.post(ingest_function.url, headers=tick[0], data=tick[1], timeout=60).status_code == 200
    assert GcsBlobStore(gcs_bucket, PROJECT, emulator_host=fake_gcs.url).list_names("") == []
