"""Hot-swap under load: clients on loopback keep predicting while new versions are published."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from mountainid.registry import Registry
from mountainid.store import LocalBlobStore
from tests.web.conftest import publish_copy, web_settings
from web import create_app

CLIENTS = 4


@pytest.mark.slow
def test_no_request_fails_while_models_are_swapped(serve, weights_path: Path, bucket_copy: Path,
                                                   k2_heldout: Path) -> None:
    store = LocalBlobStore(bucket_copy)
    app = create_app(web_settings(weights_path, bucket_copy, MOUNTAINID_MODEL_POLL_S="0.1"), store)
    server = serve(app)
    first = Registry(store).live().version
    photo = k2_heldout.read_bytes()
    deadline = time.monotonic() + 60
    while requests.get(f"{server.url}/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the app never loaded its model"
        time.sleep(0.1)

    stop = threading.Event()
    answers: list[list[str]] = [[] for _ in range(CLIENTS)]  # model version of each answer, per client
    failures: list[str] = []

    def client(seen: list[str]) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    response = session.post(f"{server.url}/api/v1/predict", files={"photo": ("k2.jpg", photo)},
                                            timeout=30)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                    else:
                        seen.append(response.json()["model_version"])
                except requests.RequestException as error:
                    failures.append(repr(error))

    threads = [threading.Thread(target=client, args=(seen,)) for seen in answers]
    for thread in threads:
        thread.start()

    def wait_for(version: str, answers_after: int = 5) -> None:
        """Until every client got ``answers_after`` answers from ``version`` (or fail after 60 s)."""
        limit = time.monotonic() + 60
        while not all(seen[-answers_after:] == [version] * answers_after for seen in answers):
            assert time.monotonic() < limit and not failures, (failures, [seen[-3:] for seen in answers])
            time.sleep(0.05)

    try:
        wait_for(first)
        broken = publish_copy(store, first, broken="model.keras")  # must be skipped, first keeps serving
        holder = app.extensions["mountainid"].holder
        limit = time.monotonic() + 60
        while broken not in holder.status()["failed_versions"]:  # the watcher tried it and gave up on it
            assert time.monotonic() < limit, holder.status()
            time.sleep(0.05)
        wait_for(first)  # ... while every client kept getting answers from the first
        second = publish_copy(store, first)
        wait_for(second)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    assert failures == []
    total = sum(len(seen) for seen in answers)
    assert total >= 20
    for seen in answers:
        assert broken not in seen
        # Each client's requests are sequential: once one was answered by the new model, every later one is.
        switch = seen.index(second)
        assert set(seen[:switch]) == {first} and set(seen[switch:]) == {second}
    assert app.extensions["mountainid"].holder.status()["failed_versions"].keys() == {broken}
