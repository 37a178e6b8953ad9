"""The training tiers: all go through the same gate, each keeps its own pace, features never mix."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from mountainid.bucket import TRAINING_PROGRESS
from mountainid.events import InProcessBus
from mountainid.predict import Predictor
from mountainid.registry import Registry
from mountainid.store import LocalBlobStore
from mountainid.training import calibrate
from mountainid.training.dataset import list_accepted
from mountainid.training.features import load_features
from mountainid.training.job import FINETUNE_TIER, GPU_TIER, maybe_train, train_and_register
from mountainid.training.progress import STALE_S, Progress, current
from mountainid.vision import efficientnet_lite
from mountainid.vision.features import FeatureExtractor, FeatureSpec
from tests.training.conftest import FAST, FOLDED, TINY_FINE_TUNE
from web import create_app


def test_both_tiers_pass_through_the_gate_on_the_same_test_photos(local_seeded: LocalBlobStore, settings) -> None:
    bus = InProcessBus()
    fast = train_and_register(settings, local_seeded, bus, FAST)
    assert fast.promoted
    tuned = train_and_register(settings, local_seeded, bus, TINY_FINE_TUNE)
    # The live (fast) model was re-scored on the very test photos the fine-tuned one was scored on.
    assert tuned.live_version == fast.version
    assert tuned.live_top1 == pytest.approx(fast.test["top1"])
    assert tuned.test["n"] == fast.test["n"]
    assert tuned.gate.compared_on == fast.test["n"]
    assert tuned.status == ("promoted" if tuned.gate.promote else "kept")
    registry = Registry(local_seeded)
    info = registry.info(tuned.version)
    assert info["tier"] == "finetune" and info["feature_id"].startswith("efficientnet_lite2_160_")
    # Calibrated out of fold over training + validation photos, released trained on both.
    assert info["train"]["splits"] == ["train", "val"] and info["held_out"]["folds"] == 2
    low, high = info["test"]["top1_interval"]
    assert low <= info["test"]["top1"] <= high and high - low > 0.1  # a small test split: a wide interval
    live = registry.live().version
    assert live == (tuned.version if tuned.promoted else fast.version)
    photo = local_seeded.get(list_accepted(local_seeded)[0].object_name)
    prediction = Predictor.load(local_seeded, tuned.version, settings).predict(photo)
    assert prediction.model_version == tuned.version and len(prediction.guesses) == 3


def test_the_gpu_tier_learns_from_validation_photos_and_is_still_gated_on_photos_it_never_saw(
        local_seeded: LocalBlobStore, settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """TRAINING_GPU=1's tier: the fine-tune at GPU length, its released head trained on training + validation
    photos, its confidence fitted out of fold over both, and the gate on the test photos alone. Each fold's
    head reports its epochs to the site, as the released head does (at GPU length a fold trains for hours)."""
    reports: list[dict] = []
    report = Progress.report
    monkeypatch.setattr(Progress, "report", lambda self, step, **facts: (reports.append({"step": step, **facts}),
                                                                          report(self, step, **facts)))
    assert GPU_TIER.features == FINETUNE_TIER.features and GPU_TIER.calibration_folds >= 2
    assert (GPU_TIER.head.epochs, GPU_TIER.head.augment_views) > (FINETUNE_TIER.head.epochs,
                                                                  FINETUNE_TIER.head.augment_views)
    bus = InProcessBus()
    fast = train_and_register(settings, local_seeded, bus, FAST)
    small = dataclasses.replace(GPU_TIER, features=TINY_FINE_TUNE.features, head=TINY_FINE_TUNE.head, lease_s=600,
                                calibration_folds=FOLDED.calibration_folds)  # two folds show it, four cost twice
    gpu = train_and_register(settings, local_seeded, bus, small)
    registry = Registry(local_seeded)
    metrics = json.loads(registry.read(gpu.version, "metrics.json"))
    splits = json.loads(registry.read(gpu.version, "dataset.json"))["splits"]
    assert metrics["tier"] == "gpu" and metrics["train"]["splits"] == ["train", "val"]
    assert metrics["held_out"]["folds"] == FOLDED.calibration_folds
    answered = calibrate.Answers.from_bytes(registry.read(gpu.version, "held_out.npz")).photo_ids
    assert len(answered) == metrics["held_out"]["n"] == len(splits["train"]) + len(splits["val"])
    test_ids = {e.photo_id for e in list_accepted(local_seeded)
                if e.object_name.removeprefix("accepted/").removesuffix(".jpg") in splits["test"]}
    assert len(test_ids) == len(splits["test"]) and not test_ids & set(answered)
    assert gpu.gate.compared_on == metrics["test"]["n"] == fast.test["n"] == len(splits["test"])
    epochs = small.head.epochs
    assert [(r["fold"], r["epoch"]) for r in reports if r["step"] == "calibrating" and "epoch" in r] == [
        (fold, epoch) for fold in (1, 2) for epoch in range(1, epochs + 1)]
    assert {r["folds"] for r in reports if "fold" in r} == {FOLDED.calibration_folds}


def test_each_tier_retrains_at_its_own_pace(local_seeded: LocalBlobStore, settings) -> None:
    bus = InProcessBus()
    assert maybe_train(settings, local_seeded, bus, FAST).promoted
    assert maybe_train(settings, local_seeded, bus, FAST) is None  # nothing new for the fast tier ...
    tuned = maybe_train(settings, local_seeded, bus, TINY_FINE_TUNE)
    assert tuned is not None and tuned.version  # ... but the fine-tune tier has never run
    assert maybe_train(settings, local_seeded, bus, TINY_FINE_TUNE) is None
    assert maybe_train(settings, local_seeded, bus, FAST) is None


def test_features_of_two_backbone_versions_never_share_a_cache_entry(local_seeded: LocalBlobStore, settings,
                                                                      tmp_path: Path) -> None:
    spec = TINY_FINE_TUNE.features
    original = FeatureExtractor(settings, spec)
    altered_weights = tmp_path / "altered.pth"  # the same network with one weight changed (a new version)
    shutil.copy(efficientnet_lite.package_weights_path(), altered_weights)
    with altered_weights.open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(np.float32(0.5).tobytes())
    altered = FeatureExtractor(dataclasses.replace(settings, classifier_weights=str(altered_weights)), spec)
    mobilenet = FeatureExtractor(settings, FeatureSpec(160, cut="block_15_add"))
    ids = {original.feature_id, altered.feature_id, mobilenet.feature_id}
    assert len(ids) == 3 and altered.feature_id.startswith("efficientnet_lite2_160_")

    photos = [(e.photo_id, e.object_name) for e in list_accepted(local_seeded)[:3]]
    load_features(local_seeded, photos, original, settings)
    before = {b.name: b.generation for b in local_seeded.list(f"embeddings/{original.feature_id}/")}
    assert len(before) == 3
    load_features(local_seeded, photos, altered, settings)
    assert len(local_seeded.list_names(f"embeddings/{altered.feature_id}/")) == 3  # computed, not read across
    assert {b.name: b.generation for b in local_seeded.list(f"embeddings/{original.feature_id}/")} == before


def test_a_running_fine_tune_shows_its_progress_on_the_site(local_seeded: LocalBlobStore, settings) -> None:
    train_and_register(settings, local_seeded, InProcessBus(), FAST)
    assert current(local_seeded) is None  # the finished run's last report is not shown
    progress = Progress(local_seeded, "finetune")
    progress.epoch(3, 14, eta_s=600)
    client = create_app(settings, store=local_seeded).test_client()
    assert client.get("/api/v1/model").get_json()["training"]["epoch"] == 3
    page = client.get("/model").get_data(as_text=True)
    assert "A new model is training" in page and "epoch 3 of 14, about 10 min left" in page
    progress.epoch(2, 8, eta_s=300, step="calibrating", fold=1, folds=2)  # a calibration fold's head
    assert ("from photos it did not train on: fold 1 of 2, epoch 2 of 8, about 5 min left in this fold"
            in client.get("/model").get_data(as_text=True))
    body = json.loads(local_seeded.get(TRAINING_PROGRESS))
    local_seeded.put(TRAINING_PROGRESS, json.dumps({**body, "updated": time.time() - STALE_S - 1}).encode())
    assert current(local_seeded) is None  # a run that stopped reporting died: nothing is shown
    assert "A new model is training" not in client.get("/model").get_data(as_text=True)
