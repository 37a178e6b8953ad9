"""``mountainid serve`` really serves: gunicorn in its own process, ready once the model is loaded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_command_answers_on_the_given_port(trained_bucket: Path, weights_path: Path, k2_heldout: Path,
                                                 tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MOUNTAINID_BUCKET": str(trained_bucket), "MOUNTAINID_WEIGHTS": str(weights_path),
           "MOUNTAINID_CATALOG": "peaks14"}
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "mountainid.cli", "serve", "--port", str(port)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "not ready after 90 s"
            try:
                if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not ready yet: gunicorn accepts connections while its worker still loads the model
            time.sleep(0.2)
        answer = requests.post(f"{url}/api/v1/predict", data=k2_heldout.read_bytes(), timeout=30)
        assert answer.status_code == 200 and len(answer.json()["guesses"]) == 3
        assert "gunicorn" in answer.headers.get("Server", "")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()
    assert process.returncode == 0
