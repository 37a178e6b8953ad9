"""functions/filter/main.py under the real functions-framework: CloudEvents over HTTP, the real
GCS -> Pub/Sub -> push chain, and a broken weights file failing the instance start."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from harness.localcloud import FakeGcsServer, FunctionsFrameworkServer, LocalCloudError, PubSubEmulator
from mountainid.bucket import embedding_name
from mountainid.events.cloudevents import pubsub_event, storage_finalized_event
from mountainid.events.pubsub import ensure_push_subscription, subscriber_client
from mountainid.filter import CATCH_UP_ATTRIBUTE
from mountainid.store import BlobStore, LocalBlobStore
from mountainid.store.gcs import GcsBlobStore, storage_client
from tests.emulators import PROJECT, RAW_TOPIC, unique_name

MAIN = Path(__file__).resolve().parents[2] / "functions" / "filter" / "main.py"


def _wait_for(store: BlobStore, names: list[str], server: FunctionsFrameworkServer,
              timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(store.exists(name) for name in names):
        time.sleep(0.2)
    missing = [name for name in names if not store.exists(name)]
    assert not missing, (f"never appeared: {missing}; bucket holds {store.list_names()}; "
                         f"the function's log ends with:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def bucket(fake_gcs_events: FakeGcsServer) -> str:
    name = unique_name("filter")
    storage_client(PROJECT, fake_gcs_events.url).create_bucket(name)
    return name


@pytest.fixture(scope="module")
def gcs(fake_gcs_events: FakeGcsServer, bucket: str) -> GcsBlobStore:
    return GcsBlobStore(bucket, PROJECT, emulator_host=fake_gcs_events.url)


@pytest.fixture(scope="module")
def function(fake_gcs_events: FakeGcsServer, pubsub_emulator: PubSubEmulator, bucket: str,
             weights_path: Path) -> Iterator[FunctionsFrameworkServer]:
    """filter_photo under functions-framework, pushed to by a subscription on the raw/ topic."""
    server = FunctionsFrameworkServer(MAIN, "filter_photo", env={
        **fake_gcs_events.env, "MOUNTAINID_BUCKET": f"gs://{bucket}", "GOOGLE_CLOUD_PROJECT": PROJECT,
        "MOUNTAINID_WEIGHTS": str(weights_path), "MOUNTAINID_LOG_FORMAT": "json", "MOUNTAINID_CATCH_UP_LIMIT": "1"})
    try:
        server.start()
    except LocalCloudError as error:
        pytest.fail(str(error), pytrace=False)
    subscription = ensure_push_subscription(PROJECT, RAW_TOPIC, unique_name("filter-push"),
                                            server.push_endpoint(PROJECT, RAW_TOPIC),
                                            emulator_host=pubsub_emulator.host)
    yield server
    subscriber_client(pubsub_emulator.host).delete_subscription(subscription=subscription)
    server.stop()


def test_the_real_chain_fills_accepted_and_rejected(function: FunctionsFrameworkServer, gcs: GcsBlobStore,
                                                     k2_photos: list[bytes], street_photos: list[bytes]) -> None:
    """fake-gcs-server publishes OBJECT_FINALIZE to the Pub/Sub emulator, whose push subscription
    delivers it to the function; nobody calls the function directly."""
    gcs.put("raw/k2/1001.jpg", k2_photos[0], metadata={"title": "K2"})
    gcs.put("raw/k2/1002.jpg", street_photos[0], metadata={"title": "not K2"})
    gcs.put("raw/k2/1003.jpg", b"")
    _wait_for(gcs, ["accepted/k2/1001.jpg", "rejected/k2/1002.jpg", "rejected/k2/1003.jpg"], function)
    accepted = gcs.info("accepted/k2/1001.jpg")
    assert accepted.metadata["title"] == "K2" and float(accepted.metadata["mountain_score"]) >= 0.4
    assert gcs.exists(embedding_name(accepted.metadata["backbone"], "1001"))
    assert gcs.info("rejected/k2/1002.jpg").metadata["reason"].startswith("not-a-mountain score=")
    assert gcs.info("rejected/k2/1003.jpg").metadata["reason"] == "empty"
    time.sleep(1.0)  # any stray redelivery or self-triggering would show up now
    assert sorted(gcs.list_names("accepted/") + gcs.list_names("rejected/")) == [
        "accepted/k2/1001.jpg", "rejected/k2/1002.jpg", "rejected/k2/1003.jpg"]


@pytest.mark.parametrize("mode, photo_id", [(to_binary, "2001"), (to_structured, "2002")])
def test_cloudevents_over_http(mode, photo_id: str, function: FunctionsFrameworkServer, gcs: GcsBlobStore, bucket: str,
                               k2_photos: list[bytes]) -> None:
    """Eventarc's storage event and a Pub/Sub-wrapped notification, both HTTP CloudEvent modes;
    every answer is 2xx (no retry storm), and the photo gets exactly one result."""
    name = f"raw/k2/{photo_id}.jpg"
    generation = gcs.put(name, k2_photos[1])
    _wait_for(gcs, [f"accepted/k2/{photo_id}.jpg"], function)  # the notification chain got there first
    events: list[CloudEvent] = [
        storage_finalized_event(bucket, name, generation),
        pubsub_event(PROJECT, RAW_TOPIC, b"{}", {"eventType": "OBJECT_FINALIZE", "bucketId": bucket,
                                                  "objectId": name, "objectGeneration": str(generation)}),
        storage_finalized_event(bucket, "accepted/k2/x.jpg", 1),  # our own output: ignored
        storage_finalized_event("someone-elses-bucket", name, generation),  # not our bucket: ignored
        storage_finalized_event(bucket, "raw/k2/never-written.jpg", 1),  # deleted before read: acknowledged
    ]
    for event in events:
        headers, body = mode(event)
        response = requests.post(function.url, headers=headers, data=body, timeout=30)
        assert response.status_code == 200, (event, response.text)
    assert gcs.list_names("accepted/k2/" + photo_id) == [f"accepted/k2/{photo_id}.jpg"]
    assert not gcs.exists(f"rejected/k2/{photo_id}.jpg") and not gcs.exists("rejected/k2/never-written.jpg")


@pytest.mark.parametrize("problem", ["missing", "truncated download", "not HDF5"])
def test_broken_weights_fail_the_start_naming_the_path(problem: str, tmp_path: Path, weights_path: Path) -> None:
    weights = tmp_path / "mobilenet_v2.weights.h5"
    if problem == "truncated download":
        good = weights_path.read_bytes()
        weights.write_bytes(good[: len(good) // 2])
    elif problem == "not HDF5":
        weights.write_text("<html>Service Unavailable</html>")
    server = FunctionsFrameworkServer(MAIN, "filter_photo", env={
        "MOUNTAINID_WEIGHTS": str(weights), "MOUNTAINID_BUCKET": str(tmp_path / "bucket")})
    with pytest.raises(LocalCloudError) as failure:
        server.start()
    message = str(failure.value)
    assert "exited with code" in message and str(weights) in message and "BackboneError" in message


def test_weights_that_pass_the_start_check_but_do_not_fit_fail_each_event_loudly(
        tmp_path: Path, k2_photos: list[bytes]) -> None:
    """A whole HDF5 file of the wrong model passes the fork-safe start check; the first event then
    answers 500 (so the event is retried, not lost) and the log names the path."""
    import h5py

    weights = tmp_path / "other_model.weights.h5"
    with h5py.File(weights, "w") as handle:
        handle.create_dataset("layers/dense/vars/0", data=[[1.0, 2.0]])
    bucket = tmp_path / "bucket"
    LocalBlobStore(bucket).put("raw/k2/1.jpg", k2_photos[0])
    with FunctionsFrameworkServer(MAIN, "filter_photo", env={
            "MOUNTAINID_WEIGHTS": str(weights), "MOUNTAINID_BUCKET": str(bucket)}) as server:
        headers, body = to_binary(storage_finalized_event("bucket", "raw/k2/1.jpg", 1))
        response = requests.post(server.url, headers=headers, data=body, timeout=120)
        assert response.status_code == 500
        assert f"cannot load ImageNet weights from {weights}" in server.log_tail(80)
    assert not LocalBlobStore(bucket).list_names("accepted/") and not LocalBlobStore(bucket).list_names("rejected/")


def test_a_scheduled_catch_up_judges_photos_whose_notification_was_lost(
        function: FunctionsFrameworkServer, gcs: GcsBlobStore, k2_photos: list[bytes]) -> None:
    """At most MOUNTAINID_CATCH_UP_LIMIT photos per request (1 here), the one written first first."""
    for photo_id, photo in (("3001", k2_photos[2]), ("3002", k2_photos[0])):
        gcs.put(f"raw/k2/{photo_id}.jpg", photo)
        _wait_for(gcs, [f"accepted/k2/{photo_id}.jpg"], function)
    # As if the notifications had never arrived: the photos are in raw/ with no result.
    for name in gcs.list_names("accepted/k2/300") + [n for n in gcs.list_names("embeddings/") if "/300" in n]:
        gcs.delete(name)
    request = pubsub_event(PROJECT, RAW_TOPIC, b"{}", {CATCH_UP_ATTRIBUTE: "catch-up"})  # what Cloud Scheduler sends
    headers, body = to_structured(request)
    for judged in (["3001"], ["3001", "3002"]):
        response = requests.post(function.url, headers=headers, data=body, timeout=60)
        assert response.status_code == 200, response.text
        assert gcs.list_names("accepted/k2/300") == [f"accepted/k2/{photo_id}.jpg" for photo_id in judged]
    assert len([n for n in gcs.list_names("embeddings/") if "/300" in n]) == 2
