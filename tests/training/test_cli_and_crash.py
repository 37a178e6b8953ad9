"""The console commands and a training job killed with SIGKILL (local store, real processes)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mountainid.bucket import TRAINING_LEASE
from mountainid.config import load_settings
from mountainid.events import InProcessBus
from mountainid.predict import Predictor
from mountainid.registry import Registry
from mountainid.store import LocalBlobStore
from mountainid.training.cli import job_config
from mountainid.training.job import train_and_register
from tests.training.conftest import FAST, TINY_FINE_TUNE_FLAGS, cli_args, training_env

REPO = Path(__file__).resolve().parents[2]


def test_train_photos_imports_through_the_filter_then_trains(tmp_path, photo_dir, weights_path, capsys) -> None:
    settings = load_settings(training_env(weights_path, str(tmp_path / "bucket")))
    # Head only on the filter's embeddings (the fast mode), so the cache the filter wrote is all it needs.
    args = cli_args("train", ["--photos", str(photo_dir), "--cut", "", "--augment-views", "0", "--epochs", "40",
                              "--learning-rate", "3e-3", "--dropout", "0.2"])
    assert args.func(args, settings) == 0
    store = LocalBlobStore(tmp_path / "bucket")
    photos = sum(1 for p in photo_dir.rglob("*.jpg"))
    assert len(store.list_names("raw/")) == photos
    accepted = store.list_names("accepted/")
    backbone_id = Registry(store).info(Registry(store).live().version)["feature_id"]
    assert store.list_names("embeddings/") == [n for n in store.list_names("embeddings/") if backbone_id in n]
    assert len(store.list_names(f"embeddings/{backbone_id}/")) == len(accepted) >= photos - 3
    assert capsys.readouterr().out.startswith("promoted tier=fast version=")
    assert args.func(args, settings) == 0  # importing the same folder again adds no photo
    assert len(store.list_names("raw/")) == photos


def test_evaluate_prints_the_summary_line_last(local_seeded: LocalBlobStore, photo_dir, weights_path,
                                               capsys) -> None:
    store = local_seeded
    settings = load_settings(training_env(weights_path, str(store.root)))
    version = train_and_register(settings, store, InProcessBus(), FAST).version
    args = cli_args("evaluate", [str(photo_dir)])
    assert args.func(args, settings) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = re.fullmatch(r"top1=(\d\.\d{3}) top3=(\d\.\d{3}) n=(\d+) confident_precision=(\d\.\d{3}) "
                         r"coverage=(\d\.\d{3})", lines[-1])
    assert match, lines[-1]
    assert int(match[3]) == sum(1 for _ in photo_dir.rglob("*.jpg"))
    assert 0.5 < float(match[1]) <= float(match[2]) <= 1.0  # mostly photos it trained on: well above chance
    assert lines[0].startswith(f"model {version}:")
    named = cli_args("evaluate", [str(photo_dir), "--model", "20200101-000000-dead"])
    assert named.func(named, settings) == 2
    assert "20200101-000000-dead" in capsys.readouterr().err


def test_calibration_folds_are_a_flag_over_the_tiers_default(capsys) -> None:
    """``--calibration-folds``: 0 (the validation photos) or >= 2 folds; one fold could only answer itself."""
    assert job_config(cli_args("train", ["--tier", "finetune"])).calibration_folds == 2
    config = job_config(cli_args("train", ["--tier", "finetune", "--calibration-folds", "0", "--refit"]))
    assert (config.calibration_folds, config.refit, config.tier) == (0, True, "finetune")
    with pytest.raises(SystemExit):
        cli_args("train", ["--calibration-folds", "1"])
    assert "must be 0 or at least 2, not 1" in capsys.readouterr().err


@pytest.fixture()
def live_bucket(local_seeded: LocalBlobStore, weights_path) -> tuple[dict[str, str], LocalBlobStore, str]:
    """A bucket with a live model: the job's environment, the store and the live version."""
    env = training_env(weights_path, str(local_seeded.root))
    return env, local_seeded, train_and_register(load_settings(env), local_seeded, InProcessBus(), FAST).version


def test_scheduled_job_with_nothing_new_trains_nothing(live_bucket) -> None:
    """The nightly job only trains when enough new photos arrived (unless --force)."""
    env, store, old = live_bucket
    job = subprocess.run([sys.executable, "-m", "training_job.main"], cwd=REPO, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300, check=False)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "retraining not due" in job.stderr
    assert Registry(store).versions() == [old] and Registry(store).live().version == old


@pytest.mark.slow
@pytest.mark.parametrize("tier", [["--tier", "fast"], TINY_FINE_TUNE_FLAGS], ids=["fast", "finetune"])
def test_job_killed_during_training_leaves_the_live_model_alone(live_bucket, tier) -> None:
    env, store, old = live_bucket
    settings = load_settings(env)
    job = subprocess.Popen([sys.executable, "-m", "training_job.main", *tier, "--force", "--lease-s", "3",
                            "--epochs", "2000", "--patience", "2000"], cwd=REPO, env={**os.environ, **env},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in job.stderr:  # the job logs one line per epoch: kill it after the first, mid-training
        seen.append(line)
        if "epoch finished" in line:
            break
    else:
        pytest.fail("the job ended before its first epoch: " + "".join(seen[-20:]))
    assert store.exists(TRAINING_LEASE)
    job.send_signal(signal.SIGKILL)
    job.wait()
    registry = Registry(store)
    assert registry.live().version == old and registry.versions() == [old]
    assert Predictor.load(store, old, settings).predict(store.get(store.list_names("accepted/")[0])).guesses
    assert store.exists(TRAINING_LEASE)  # a killed run cannot release its lease ...
    time.sleep(3.1)
    # ... it expires: the next run trains to the end (promoted or kept by the gate, not "lease-held").
    assert train_and_register(settings, store, InProcessBus(), FAST).status in ("promoted", "kept")
