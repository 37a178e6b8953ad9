"""The local-cloud process managers: the documented wiring works, and failures say why."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from harness.localcloud import (
    FakeGcsServer,
    FunctionsFrameworkServer,
    LocalCloud,
    LocalCloudError,
    PubSubEmulator,
)
from mountainid.config import load_settings
from mountainid.store import open_store
from mountainid.store.gcs import GcsBlobStore
from tests.emulators import unique_name

RECORDER = Path(__file__).with_name("recorder_function.py")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.emulator
def test_local_cloud_wires_storage_notifications_to_a_function(tmp_path: Path) -> None:
    """The wiring the module docstring shows, end to end, through the settings like a deployable."""
    record = tmp_path / "events.jsonl"
    with LocalCloud(project="mountainid-wiring", bucket="photos", notify_topic="raw-photos",
                    notify_prefix="raw/", topics=["ingest-tick"]) as cloud:
        function = cloud.serve_function(RECORDER, "record", topic="raw-photos", env={"RECORD_TO": str(record)})
        store = open_store(load_settings(cloud.env))
        assert isinstance(store, GcsBlobStore) and store.uri() == "gs://photos/"
        generation = store.put("raw/k2/1.jpg", b"jpeg")
        store.put("models/LATEST", b"v1")  # not under raw/: no event
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not record.exists():
            time.sleep(0.1)
        time.sleep(0.5)
        rows = [json.loads(line) for line in record.read_text().splitlines()]
        assert [row["object"] for row in rows] == [{"bucket": "photos", "name": "raw/k2/1.jpg",
                                                    "generation": generation}]
        ports = [cloud.pubsub.port, cloud.gcs.port, function.port]  # type: ignore[union-attr]
    assert not any(_listening(port) for port in ports)  # everything stopped


def test_a_server_that_exits_reports_its_log() -> None:
    server = FunctionsFrameworkServer(RECORDER, "no_such_function")
    with pytest.raises(LocalCloudError, match="no_such_function") as failure:
        server.start()
    assert "exited with code" in str(failure.value)
    assert not server.running


@pytest.mark.emulator
def test_a_busy_port_is_a_clear_error(fake_gcs: FakeGcsServer) -> None:
    with pytest.raises(LocalCloudError, match=f"port {fake_gcs.port} on 127.0.0.1 is already in use"):
        FakeGcsServer(port=fake_gcs.port).start()


def test_notifications_need_an_emulator() -> None:
    with pytest.raises(ValueError, match="PubSubEmulator"):
        FakeGcsServer(notify_topic=unique_name("topic"))


def test_a_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LocalCloudError, match="not found"):
        PubSubEmulator(binary=tmp_path / "cloud-pubsub-emulator").start()


@pytest.mark.emulator
def test_a_chosen_port_taken_before_start_is_replaced(fake_gcs: FakeGcsServer) -> None:
    """free_port() binds and releases; if another server takes that port first, start on another one."""
    server = FakeGcsServer()
    server.port = fake_gcs.port  # as if fake_gcs had been handed the same free port a moment earlier
    with server:
        assert server.port != fake_gcs.port and server.is_ready()
