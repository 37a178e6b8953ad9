"""Verification in the training run: keypoints come from the filter's cache (backfilled, repaired), the
gallery holds the training split only, and the fusion weight and threshold are chosen on validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mountainid.bucket import local_features_name
from mountainid.events import InProcessBus
from mountainid.predict import Predictor
from mountainid.registry import Registry
from mountainid.store import BlobStore, LocalBlobStore
from mountainid.training.dataset import list_accepted
from mountainid.training.evaluate import choose_answer_threshold
from mountainid.training.features import load_features, load_local_features
from mountainid.training.job import train_and_register
from mountainid.verification import (
    LARGE_FROM,
    LARGE_GALLERY,
    SMALL_GALLERY,
    Gallery,
    choose_weight,
    fuse,
    fuse_without_evidence,
)
from mountainid.vision.local import LocalFeatures
from tests.training.conftest import FAST


@pytest.fixture()
def local_seeded(tmp_path, template: LocalBlobStore) -> LocalBlobStore:
    store = LocalBlobStore(tmp_path / "bucket")
    for prefix in ("accepted/", "embeddings/", "localfeatures/"):
        for blob in template.list(prefix):
            store.put(blob.name, template.get(blob.name), metadata=blob.metadata)
    return store


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


def test_the_gallery_holds_the_training_split_and_validation_chooses_weight_and_threshold(
        seeded: BlobStore, settings) -> None:
    result = train_and_register(settings, seeded, InProcessBus(), FAST)
    assert result.promoted
    registry = Registry(seeded)
    splits = json.loads(registry.read(result.version, "dataset.json"))["splits"]
    ids = {split: {entry.split("/", 1)[1] for entry in entries} for split, entries in splits.items()}
    predictor = Predictor.load(seeded, result.version, settings)
    gallery = set(predictor.verifier.photo_ids)
    assert gallery and gallery <= ids["train"]  # never a photo that is evaluated
    assert not gallery & (ids["val"] | ids["test"])

    # Recompute from the validation split alone: the stored weight and threshold are exactly what it gives.
    examples = {e.photo_id: e for e in list_accepted(seeded)}
    val = [examples[i] for i in sorted(ids["val"])]
    features, usable = load_features(seeded, [(e.photo_id, e.object_name) for e in val], predictor.extractor,
                                     settings)
    assert all(usable)
    probs = predictor.probabilities(features)
    scores = predictor.verifier.score_many(load_local_features(seeded, [(e.photo_id, e.object_name) for e in val],
                                                               settings), len(predictor.labels))
    targets = np.array([predictor.labels.index(e.slug) for e in val])
    info = registry.info(result.version)
    in_view = predictor.in_view  # learnt from the gallery, stored with the model
    assert info["fusion_weight"] == choose_weight(probs, scores, targets, in_view)
    fused = fuse(probs, scores, info["fusion_weight"], in_view)
    unknown = fuse_without_evidence(probs, scores, targets, info["fusion_weight"], in_view)
    assert info["unknown_threshold"] == pytest.approx(choose_answer_threshold(fused, targets, unknown))
    assert info["val"]["top1"] == pytest.approx(float(np.mean(fused.argmax(axis=1) == targets)))
    # The gain of verification is stated next to the classifier's own figure.
    assert info["val"]["classifier_top1"] == pytest.approx(float(np.mean(probs.argmax(axis=1) == targets)))
    assert {"classifier_top1", "top1", "confident_precision", "confident_interval", "coverage",
            "coverage_interval"} <= set(info["test"])
    assert "ece" in info["test_detail"]["calibration"]


def test_a_gallery_matches_as_cross_validation_chose_for_its_size() -> None:
    """The looser matching only from LARGE_FROM photos: in a smaller gallery it finds chance inliers everywhere."""
    rng = np.random.default_rng(0)

    def gallery(photos: int) -> Gallery:
        features = [LocalFeatures(rng.uniform(0, 640, (20, 2)).astype(np.float32),
                                  rng.integers(0, 255, (20, 128), dtype=np.uint8), (640, 480)) for _ in range(photos)]
        return Gallery([str(i) for i in range(photos)], [i % 2 for i in range(photos)], features, storable=False)

    assert gallery(LARGE_FROM - 1).matching == SMALL_GALLERY
    assert gallery(LARGE_FROM).matching == LARGE_GALLERY
