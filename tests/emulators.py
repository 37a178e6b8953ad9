"""Emulator fixtures: real fake-gcs-server and the real Pub/Sub emulator, started by the tests.

Loaded by tests/conftest.py as a plugin, so every test area can use:

- ``pubsub_emulator`` (session): the Pub/Sub emulator; ``.host`` / ``.env``.
- ``fake_gcs`` (session): fake-gcs-server without notifications; ``.url`` / ``.env``.
- ``fake_gcs_events`` (session): a second fake-gcs-server that publishes OBJECT_FINALIZE
  notifications for ``raw/`` objects to topic ``RAW_TOPIC`` on ``pubsub_emulator``.
- ``gcs_bucket`` / ``gcs_store`` / ``gcs_env``: a fresh bucket per test on ``fake_gcs``, a
  GcsBlobStore on it, and the env for ``make_settings(**gcs_env)`` (MOUNTAINID_BUCKET=gs://…).
- ``store``: parametrized over ["local", "gcs"] so one test runs on both backends.

A server that cannot start fails the test with its log tail: CI must prove the real chain, so
nothing is skipped. Tests using these fixtures are marked ``emulator`` automatically.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.localcloud import FakeGcsServer, LocalCloudError, ManagedProcess, PubSubEmulator
from mountainid.store import BlobStore, LocalBlobStore
from mountainid.store.gcs import GcsBlobStore, storage_client

PROJECT = "mountainid-test"
RAW_TOPIC = "raw-photos"
EMULATOR_FIXTURES = {"pubsub_emulator", "fake_gcs", "fake_gcs_events", "gcs_bucket", "gcs_store", "gcs_env"}


def _started(server: ManagedProcess) -> Iterator[ManagedProcess]:
    try:
        server.start()
    except LocalCloudError as exc:
        pytest.fail(f"could not start {server.name}: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def unique_name(prefix: str) -> str:
    """A bucket/topic/subscription name no other test uses (3-63 lowercase characters)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    yield from _started(PubSubEmulator())  # type: ignore[misc]


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[FakeGcsServer]:
    yield from _started(FakeGcsServer(project=PROJECT))  # type: ignore[misc]


@pytest.fixture(scope="session")
def fake_gcs_events(pubsub_emulator: PubSubEmulator) -> Iterator[FakeGcsServer]:
    from mountainid.events.pubsub import ensure_topic

    ensure_topic(PROJECT, RAW_TOPIC, emulator_host=pubsub_emulator.host)
    yield from _started(FakeGcsServer(project=PROJECT, notify_topic=RAW_TOPIC,  # type: ignore[misc]
                                      notify_prefix="raw/", pubsub_emulator_host=pubsub_emulator.host))


@pytest.fixture()
def gcs_bucket(fake_gcs: FakeGcsServer) -> str:
    """A new, empty bucket on fake_gcs."""
    name = unique_name("test")
    storage_client(PROJECT, fake_gcs.url).create_bucket(name)
    return name


@pytest.fixture()
def gcs_store(fake_gcs: FakeGcsServer, gcs_bucket: str) -> GcsBlobStore:
    return GcsBlobStore(gcs_bucket, PROJECT, emulator_host=fake_gcs.url)


@pytest.fixture()
def gcs_env(fake_gcs: FakeGcsServer, gcs_bucket: str) -> dict[str, str]:
    """Environment naming the fresh bucket: ``make_settings(**gcs_env)`` -> open_store gives GCS."""
    return {**fake_gcs.env, "MOUNTAINID_BUCKET": f"gs://{gcs_bucket}", "GOOGLE_CLOUD_PROJECT": PROJECT}


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.emulator)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """The same test on both backends: a fresh local folder, then a fresh fake-gcs-server bucket."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "bucket")
    return request.getfixturevalue("gcs_store")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses an emulator fixture, so ``-m "not emulator"`` works everywhere."""
    for item in items:
        if EMULATOR_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.emulator)
