"""Bring your own mountains: any folder names train into a model that names them on the site, a
``mountains.yaml`` places them on the map, and every mistake stops with one line before anything is written."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from harness.localcloud import free_port
from mountainid.config import load_settings
from mountainid.serving import ModelHolder
from mountainid.store import LocalBlobStore
from tests.training.conftest import cli_args, run_at_a_terminal, training_env
from web import create_app

REPO = Path(__file__).resolve().parents[2]
MADE_UP = {"Hausberg": "K2", "Zuckerhütl": "Nanga Parbat", "Schneekoppe": "Lhotse"}
PER_MOUNTAIN = 10


def own_folder(root: Path, shared_dir: Path, names: dict[str, str] = MADE_UP) -> Path:
    for name, source in names.items():
        (root / name).mkdir(parents=True)
        for path in sorted((shared_dir / "data" / "peaks14" / source).iterdir())[:PER_MOUNTAIN]:
            shutil.copy(path, root / name / path.name)
    return root


def test_made_up_mountains_are_trained_named_and_placed_without_a_catalog(tmp_path, shared_dir,
                                                                          weights_path) -> None:
    photos = own_folder(tmp_path / "mine", shared_dir)
    (photos / "mountains.yaml").write_text("mountains:\n  - {name: Zuckerhütl, latitude: 46.9655, longitude: 11.1524,"
                                           " elevation_m: 3507}\n", encoding="utf-8")
    settings = load_settings(training_env(weights_path, str(tmp_path / "bucket")))  # the catalog knows none
    args = cli_args("train", ["--photos", str(photos), "--cut", "", "--augment-views", "0", "--epochs", "40",
                              "--learning-rate", "3e-3", "--dropout", "0.2"])
    assert args.func(args, settings) == 0
    store = LocalBlobStore(tmp_path / "bucket")
    holder = ModelHolder(store, settings)
    predictor = holder.check_now()
    assert sorted(predictor.names.values()) == sorted(MADE_UP)
    client = create_app(settings, store, holder, watch=False).test_client()

    held_out = max((shared_dir / "data" / "peaks14" / "K2").iterdir())  # not among the 10 copied
    body = client.post("/api/v1/predict", data=held_out.read_bytes(), content_type="image/jpeg").get_json()
    assert body["guesses"][0]["name"] in MADE_UP and {g["name"] for g in body["guesses"]} <= set(MADE_UP)
    if body["guesses"][0]["name"] != "Zuckerhütl":
        assert body["location"] is None  # known by name only: no map card, no made-up coordinates

    splits = json.loads(store.get(f"models/{predictor.version}/dataset.json"))["splits"]
    own = store.get(f"accepted/{next(e for e in splits['train'] if e.startswith('zuckerhutl/'))}.jpg")
    page = client.post("/", data={"photo": (io.BytesIO(own), "z.jpg")}, content_type="multipart/form-data")
    html = page.get_data(as_text=True)
    assert "Zuckerhütl" in html and "46.9655, 11.1524" in html and "3,507 m" in html  # placed by mountains.yaml
    model_page = client.get("/model").get_data(as_text=True)
    assert all(name in model_page for name in MADE_UP)


def _mountainid(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mountainid.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300, check=False)


@pytest.mark.parametrize("case", ["broken mountains.yaml", "same mountain twice", "no such catalog",
                                  "weights missing", "imagenet offline"])
def test_a_mistake_stops_with_one_line_on_stderr_and_writes_nothing(tmp_path, shared_dir, weights_path,
                                                                   case: str) -> None:
    photos = own_folder(tmp_path / "mine", shared_dir, {"Hausberg": "K2"})
    env = training_env(weights_path, str(tmp_path / "bucket"))
    expected = {"broken mountains.yaml": f"{photos / 'mountains.yaml'}: mountains[0] (Hausberg): 'latitude' must be",
                "same mountain twice": "are the same mountain (hausberg)",
                "no such catalog": "catalog 'nosuch' not found",
                "weights missing": "set MOUNTAINID_WEIGHTS",
                "imagenet offline": "cannot download the ImageNet weights"}[case]
    if case == "broken mountains.yaml":
        (photos / "mountains.yaml").write_text("mountains:\n  - {name: Hausberg, latitude: north, longitude: 11}\n")
    elif case == "same mountain twice":
        shutil.copytree(photos / "Hausberg", photos / "hausberg ")
    elif case == "no such catalog":
        env["MOUNTAINID_CATALOG"] = "nosuch"
    elif case == "weights missing":
        env["MOUNTAINID_WEIGHTS"] = str(tmp_path / "nowhere.weights.h5")
    else:  # the default 'imagenet' with no way out: an empty Keras cache and a proxy that refuses connections
        refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        env.update(MOUNTAINID_WEIGHTS="imagenet", KERAS_HOME=str(tmp_path / "keras"), HTTPS_PROXY=refused,
                   https_proxy=refused)
    result = _mountainid(env, "train", "--photos", str(photos))
    tried = "Downloading data from https://storage.googleapis.com/" if case == "imagenet offline" else ""
    assert result.returncode == 2 and result.stdout.startswith(tried) and result.stdout.count("\n") == bool(tried)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mountainid train: "), result.stderr
    assert expected in result.stderr
    if case == "imagenet offline":  # says which variable to set, and to what
        assert "set MOUNTAINID_WEIGHTS to a MobileNetV2 .weights.h5 file" in result.stderr
    assert not (tmp_path / "bucket").exists()  # nothing written, not even the bucket folder


def test_a_terminal_sees_progress_bars_and_logs_one_line_per_epoch(tmp_path, shared_dir, weights_path) -> None:
    photos = own_folder(tmp_path / "mine", shared_dir, {"Hausberg": "K2", "Schneekoppe": "Lhotse"})
    argv = [sys.executable, "-m", "mountainid.cli", "train", "--photos", str(photos), "--cut", "",
            "--augment-views", "0", "--epochs", "5", "--patience", "50"]
    env = {**os.environ, **training_env(weights_path, str(tmp_path / "bucket"))}
    returncode, terminal = run_at_a_terminal(argv, env, REPO)
    assert returncode == 0, terminal[-2000:]
    assert re.search(r"filter +━+ +20/20 ETA", terminal)  # counts and an ETA, filled at the end
    assert re.search(r"training +━+ +5/5 ETA 0:00:00 loss \d", terminal)
    assert "photo accepted" not in terminal and "epoch finished" not in terminal  # per-photo lines: DEBUG here
    assert "photo folder imported" in terminal  # the stage's one summary line stays
    assert "absl::InitializeLog" not in terminal and "oneDNN" not in terminal  # no TensorFlow start-up noise

    env.update(MOUNTAINID_LOG_FORMAT="json", MOUNTAINID_BUCKET=str(tmp_path / "bucket-json"))
    logged = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert logged.returncode == 0 and "\r" not in logged.stderr and "━" not in logged.stderr
    lines = [json.loads(line) for line in logged.stderr.splitlines() if line.startswith("{")]
    assert [line["epoch"] for line in lines if line["message"] == "epoch finished"] == [1, 2, 3, 4, 5]
    accepted = [line for line in lines if line["message"] == "photo accepted"]
    assert len(accepted) >= 18 and all(line["photo_id"] for line in accepted)  # one line per photo, with its id


def _served(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """`mountainid serve` on a free port, its stderr to ``log``; returns once it accepts connections."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mountainid.cli", "serve", "--port", str(port)], cwd=REPO,
                               env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        try:
            requests.get(f"{url}/health", timeout=5)
            return process, url
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.3)
    raise AssertionError("serve did not accept connections in 120 s")


def _wait_for(url: str, status: int, seconds: float = 120) -> requests.Response:
    deadline = time.monotonic() + seconds
    while True:
        answer = requests.get(f"{url}/health", timeout=10)
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.3)


def test_a_photo_folder_reaches_the_site_with_train_then_serve(tmp_path, shared_dir, weights_path) -> None:
    """The documented path (docs/running.md): `train --photos DIR`, then `serve` in a shell that never set MOUNTAINID_WEIGHTS
    finds the weights file training used; moved away, serve says on stderr and in /health what to set,
    and serves by itself once the file is back."""
    photos = own_folder(tmp_path / "mine", shared_dir, {"Hausberg": "K2", "Schneekoppe": "Lhotse"})
    env = training_env(weights_path, str(tmp_path / "bucket"))
    trained = _mountainid(env, "train", "--photos", str(photos), "--cut", "", "--augment-views", "0",
                          "--epochs", "5", "--patience", "50")
    assert trained.returncode == 0, trained.stderr[-2000:]
    unset = {key: value for key, value in {**os.environ, **env}.items() if key != "MOUNTAINID_WEIGHTS"}
    serving = {**unset, "MOUNTAINID_MODEL_POLL_S": "0.5", "KERAS_HOME": str(tmp_path / "keras")}  # no download

    process, url = _served(serving, tmp_path / "serve.log")
    try:
        assert _wait_for(url, 200).status_code == 200, (tmp_path / "serve.log").read_text()[-2000:]
        page = requests.get(url + "/", timeout=10).text
        assert "Training photos from a local photo folder" in page and "from Flickr" not in page
    finally:
        process.terminate()
        process.wait(30)

    moved = tmp_path / "moved" / weights_path.name
    store = LocalBlobStore(tmp_path / "bucket")
    version = json.loads(store.get("models/LATEST"))["version"]
    config = json.loads(store.get(f"models/{version}/config.json"))
    assert config["weights"] == str(weights_path.resolve())  # the model records the weights it needs
    store.put(f"models/{version}/config.json", json.dumps({**config, "weights": str(moved)}).encode())
    process, url = _served(serving, tmp_path / "serve2.log")
    try:
        health = _wait_for(url, 503, seconds=0)
        assert health.status_code == 503 and f"{moved}, which is not on this machine: set MOUNTAINID_WEIGHTS" in (
            health.json()["message"])
        said = [line for line in (tmp_path / "serve2.log").read_text().splitlines() if "MOUNTAINID_WEIGHTS" in line]
        assert len(said) == 1 and str(moved) in said[0]  # one line on stderr, not one per poll
        moved.parent.mkdir()
        shutil.copy(weights_path, moved)
        assert _wait_for(url, 200).status_code == 200  # retried by itself
    finally:
        process.terminate()
        process.wait(30)
