"""Verification in the training run: keypoints come from the filter's cache (backfilled, repaired), the
gallery holds the training and validation photos, never test, and the fusion weight, temperature and
threshold are fitted on answers to photos the answering models had not seen."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from mountainid.bucket import local_features_name
from mountainid.events import InProcessBus
from mountainid.predict import Predictor
from mountainid.registry import Registry
from mountainid.store import LocalBlobStore
from mountainid.training import calibrate
from mountainid.training.dataset import list_accepted
from mountainid.training.features import load_features, load_local_features
from mountainid.training.job import train_and_register
from mountainid.verification import LARGE_FROM, LARGE_GALLERY, SMALL_GALLERY, Gallery
from mountainid.vision.features import FeatureSpec
from mountainid.vision.local import LocalFeatures
from tests.training.conftest import FAST, FOLDED


def test_keypoints_are_read_from_the_cache_repaired_and_backfilled(local_seeded: LocalBlobStore, settings) -> None:
    photos = [(e.photo_id, e.object_name) for e in list_accepted(local_seeded)][:4]
    names = [local_features_name(photo_id) for photo_id, _ in photos]
    generations = [local_seeded.info(name).generation for name in names]  # the filter wrote them all
    original = [LocalFeatures.from_bytes(local_seeded.get(name)) for name in names]
    local_seeded.put(names[1], b"half a file")           # damaged
    local_seeded.delete(names[2])                          # accepted before keypoints existed
    loaded = load_local_features(local_seeded, photos, settings)
    for features, expected in zip(loaded, original, strict=True):
        assert features is not None
        np.testing.assert_array_equal(features.descriptors, expected.descriptors)
    # Reused as they were (not rewritten); the damaged and the missing one written back, readable.
    assert [local_seeded.info(names[i]).generation for i in (0, 3)] == [generations[0], generations[3]]
    for name in names[1:3]:
        assert LocalFeatures.from_bytes(local_seeded.get(name)).size == original[1 if name == names[1] else 2].size


def test_a_photo_gone_from_the_bucket_is_left_out_not_fatal(local_seeded: LocalBlobStore, settings) -> None:
    photo_id, object_name = next((e.photo_id, e.object_name) for e in list_accepted(local_seeded))
    local_seeded.delete(local_features_name(photo_id))
    local_seeded.delete(object_name)
    assert load_local_features(local_seeded, [(photo_id, object_name)], settings) == [None]


def test_a_model_that_learnt_from_validation_photos_is_calibrated_out_of_fold_and_gated_on_unseen_photos(
        local_seeded: LocalBlobStore, settings, monkeypatch: pytest.MonkeyPatch) -> None:
    held_out: list[tuple[list[str], calibrate.Answers]] = []
    out_of_fold = calibrate.out_of_fold

    def recorded(fold_of, targets, classes, photo_ids, keypoints, answer):  # what the fit is given
        answers = out_of_fold(fold_of, targets, classes, photo_ids, keypoints, answer)
        held_out.append(([i for i, f in zip(photo_ids, fold_of, strict=True) if f >= 0], answers))
        return answers

    monkeypatch.setattr(calibrate, "out_of_fold", recorded)
    result = train_and_register(settings, local_seeded, InProcessBus(), FOLDED)
    assert result.promoted
    registry = Registry(local_seeded)
    info = registry.info(result.version)
    splits = json.loads(registry.read(result.version, "dataset.json"))["splits"]
    ids = {split: {entry.split("/", 1)[1] for entry in entries} for split, entries in splits.items()}
    predictor = Predictor.load(local_seeded, result.version, settings)
    # The head and the galleries learnt from training and validation photos; test is the gate's alone.
    assert info["train"]["splits"] == ["train", "val"]
    assert set(predictor.verifier.photo_ids) == ids["train"] | ids["val"]
    assert {row["photo_id"] for row in json.loads(registry.read(result.version, "gallery.json"))} == (
        ids["train"] | ids["val"])
    assert info["test"]["n"] == len(ids["test"]) == result.gate.compared_on

    # Calibration: every training and validation photo answered once, out of fold; never a test photo.
    [(answered, answers)] = held_out
    assert sorted(answered) == sorted(ids["train"] | ids["val"]) and not set(answered) & ids["test"]
    assert info["held_out"]["n"] == len(answers) and info["held_out"]["folds"] == FOLDED.calibration_folds
    in_view = predictor.in_view  # learnt from the gallery, stored with the model
    fitted = calibrate.fit(answers, in_view)  # the stored choices are exactly the fit on those answers
    assert (info["fusion_weight"], info["temperature"]) == (fitted.weight, fitted.temperature)
    assert info["unknown_threshold"] == pytest.approx(fitted.threshold)
    assert info["unverified_threshold"] == pytest.approx(fitted.unverified_threshold)
    fused = fitted.fuse(answers.probs, answers.scores, in_view)
    assert info["held_out"]["top1"] == pytest.approx(float(np.mean(fused.argmax(axis=1) == answers.targets)))
    # The gain of verification is stated next to the classifier's own figure.
    assert info["held_out"]["classifier_top1"] == pytest.approx(
        float(np.mean(answers.probs.argmax(axis=1) == answers.targets)))
    assert {"classifier_top1", "top1", "confident_precision", "confident_interval", "coverage",
            "coverage_interval"} <= set(info["test"])
    assert "ece" in info["test_detail"]["calibration"]
    assert registry.read(result.version, "reliability.png").startswith(b"\x89PNG")


def test_without_folds_the_validation_split_is_answered_by_the_released_heads_and_a_training_gallery(
        local_seeded: LocalBlobStore, settings) -> None:
    """The fine-tune tier's way (a head per fold is too slow on a CPU): the weight and threshold are recomputed
    exactly from the validation photos, scored against the training photos alone; the answers are both served
    heads' (a companion on other features, the mirror-averaged embedding), averaged."""
    companion = replace(FAST, features=FeatureSpec(flip=True))
    result = train_and_register(settings, local_seeded, InProcessBus(), replace(FAST, companion=companion))
    registry = Registry(local_seeded)
    info = registry.info(result.version)
    assert info["train"]["splits"] == ["train"] and info["held_out"]["folds"] == 0
    splits = json.loads(registry.read(result.version, "dataset.json"))["splits"]
    ids = {split: {entry.split("/", 1)[1] for entry in entries} for split, entries in splits.items()}
    examples = {e.photo_id: e for e in list_accepted(local_seeded)}
    stored = calibrate.Answers.from_bytes(registry.read(result.version, "held_out.npz"))
    assert sorted(stored.photo_ids) == sorted(ids["val"])  # the validation photos, in the order they were answered
    # The training gallery in the run's order: FLANN's approximate search depends on the order it indexed.
    train = [examples[entry.split("/", 1)[1]] for entry in splits["train"]]
    val = [examples[i] for i in stored.photo_ids]
    predictor = Predictor.load(local_seeded, result.version, settings)
    assert [e.spec for e in predictor.extractors] == [FAST.features, companion.features]
    loaded = [load_features(local_seeded, [(e.photo_id, e.object_name) for e in val], extractor, settings)
              for extractor in predictor.extractors]
    assert all(all(usable) for _, usable in loaded)
    features = [x for x, _ in loaded]
    keypoints = {split: load_local_features(local_seeded, [(e.photo_id, e.object_name) for e in photos], settings)
                 for split, photos in (("train", train), ("val", val))}
    gallery = Gallery([e.photo_id for e in train], [predictor.labels.index(e.slug) for e in train],
                      keypoints["train"])
    # The answers it fitted on: the validation photos, by the served head and a gallery of training photos.
    assert stored.targets.tolist() == [predictor.labels.index(e.slug) for e in val]
    assert np.allclose(stored.probs, predictor.probabilities(features), atol=1e-4)
    alone = predictor.probabilities([features[0], features[0]])  # the first head twice: not what was served
    assert not np.allclose(stored.probs, alone, atol=1e-3)
    assert np.allclose(stored.scores, gallery.score_many(keypoints["val"], len(predictor.labels)))
    fitted = calibrate.fit(stored, predictor.in_view)  # and the stored choices are exactly the fit on them
    assert info["fusion_weight"] == fitted.weight and info["temperature"] == fitted.temperature
    assert info["unknown_threshold"] == pytest.approx(fitted.threshold)
    assert info["unverified_threshold"] == pytest.approx(fitted.unverified_threshold)
    assert info["held_out"]["n"] == len(val)


def test_a_refitted_head_learns_from_validation_photos_calibrated_by_one_that_never_saw_them(
        local_seeded: LocalBlobStore, settings) -> None:
    """``--refit`` (no folds): the validation photos' answers that fit the confidence come from a head of the
    training split; the head released beside them trains on training + validation photos; the gate sees only
    test photos, which neither head nor the gallery ever held."""
    result = train_and_register(settings, local_seeded, InProcessBus(), replace(FAST, refit=True))
    registry = Registry(local_seeded)
    info = registry.info(result.version)
    assert info["train"]["splits"] == ["train", "val"] and info["held_out"]["folds"] == 0
    assert json.loads(registry.read(result.version, "config.json"))["refit"] is True
    splits = json.loads(registry.read(result.version, "dataset.json"))["splits"]
    ids = {split: {entry.split("/", 1)[1] for entry in entries} for split, entries in splits.items()}
    stored = calibrate.Answers.from_bytes(registry.read(result.version, "held_out.npz"))
    assert sorted(stored.photo_ids) == sorted(ids["val"]) and info["held_out"]["n"] == len(ids["val"])
    # The released head learnt the validation photos; the answers that calibrated it came from one that had not.
    examples = {e.photo_id: e for e in list_accepted(local_seeded)}
    val = [examples[i] for i in stored.photo_ids]
    predictor = Predictor.load(local_seeded, result.version, settings)
    features, usable = load_features(local_seeded, [(e.photo_id, e.object_name) for e in val],
                                     predictor.extractors[0], settings)
    assert all(usable)
    released = predictor.probabilities([features]).argmax(axis=1) == stored.targets
    calibrating = stored.probs.argmax(axis=1) == stored.targets
    assert released.mean() > calibrating.mean() + 0.1
    # The test split stays the gate's: held by neither head nor the gallery, and every test photo compared.
    assert set(predictor.verifier.photo_ids) == ids["train"] | ids["val"] and not ids["test"] & set(stored.photo_ids)
    assert info["test"]["n"] == len(ids["test"]) == result.gate.compared_on


def test_a_gallery_matches_as_cross_validation_chose_for_its_size() -> None:
    """The looser matching only from LARGE_FROM photos: in a smaller gallery it finds chance inliers everywhere."""
    rng = np.random.default_rng(0)

    def gallery(photos: int) -> Gallery:
        features = [LocalFeatures(rng.uniform(0, 640, (20, 2)).astype(np.float32),
                                  rng.integers(0, 255, (20, 128), dtype=np.uint8), (640, 480)) for _ in range(photos)]
        return Gallery([str(i) for i in range(photos)], [i % 2 for i in range(photos)], features, storable=False)

    assert gallery(LARGE_FROM - 1).matching == SMALL_GALLERY
    assert gallery(LARGE_FROM).matching == LARGE_GALLERY
