"""The decisions that need no model: the score, the verdict, object names, precision/recall."""

from __future__ import annotations

import numpy as np
import pytest

from mountainid.bucket import (
    RawPhoto,
    embedding_name,
    local_features_name,
    parse_embedding_name,
    parse_local_features_name,
)
from mountainid.config import Settings
from mountainid.filter import evaluate, judge
from mountainid.vision.terrain import TERRAIN_CLASSES, mountain_score


def _probs(**by_index: float) -> np.ndarray:
    """ImageNet probabilities with the given classes set and the rest spread over class 0."""
    probs = np.zeros(1000, np.float32)
    for key, value in by_index.items():
        probs[int(key.removeprefix("c"))] = value
    probs[0] = 1.0 - probs.sum()
    return probs


def test_score_sums_the_terrain_classes_row_by_row() -> None:
    rows = np.stack([_probs(c970=0.5, c979=0.3), _probs(c976=0.9), _probs(c672=0.2, c795=0.1, c980=0.1)])
    np.testing.assert_allclose(mountain_score(rows), [0.8, 0.0, 0.4], atol=1e-6)
    np.testing.assert_allclose(mountain_score(rows[0]), [0.8], atol=1e-6)  # one photo, 1-d


def test_terrain_classes_are_valid_imagenet_indices() -> None:
    assert TERRAIN_CLASSES and all(0 <= index < 1000 for index in TERRAIN_CLASSES)
    assert TERRAIN_CLASSES[970] == "alp"


def test_default_threshold_is_the_one_chosen_on_data() -> None:
    assert Settings().filter_threshold == 0.4


def test_judge_accepts_at_the_threshold_and_explains_a_rejection() -> None:
    accepted = judge(_probs(c970=0.3, c979=0.1), threshold=0.4)
    assert accepted.accepted and accepted.reason == "" and "reason" not in accepted.metadata
    assert accepted.metadata["mountain_score"] == "0.400"
    assert accepted.metadata["imagenet_top5"].startswith("0:0.600 970:0.300 979:0.100")
    assert accepted.metadata["terrain"] == "alp=0.300 valley=0.100"

    rejected = judge(_probs(c976=0.7, c970=0.12), threshold=0.4)
    assert not rejected.accepted
    assert rejected.reason == rejected.metadata["reason"] == "not-a-mountain score=0.12"


@pytest.mark.parametrize("name, expected", [
    ("raw/k2/53012.jpg", ("k2", "53012")),
    ("raw/mount-everest/a_b-C9.jpg", ("mount-everest", "a_b-C9")),
])
def test_raw_names_give_slug_and_photo_id(name: str, expected: tuple[str, str]) -> None:
    photo = RawPhoto.parse(name)
    assert photo is not None and (photo.slug, photo.photo_id) == expected
    assert photo.accepted_name == f"accepted/{expected[0]}/{expected[1]}.jpg"
    assert photo.rejected_name == f"rejected/{expected[0]}/{expected[1]}.jpg"


@pytest.mark.parametrize("name", [
    "accepted/k2/1.jpg", "rejected/k2/1.jpg", "embeddings/x/1.npy", "models/LATEST",  # our own outputs
    "raw/k2/1.png", "raw/k2/1", "raw/1.jpg", "raw/k2/sub/1.jpg", "raw/../k2/1.jpg", "raw/K2/1.jpg",
    "raw/k2/.jpg", "raw/k2/a.b.jpg", "raw/-k2/1.jpg", "raw/k2/1.jpg/", "raw//1.jpg", "raw/k2/1 2.jpg",
])
def test_anything_else_is_not_a_photo_to_judge(name: str) -> None:
    assert RawPhoto.parse(name) is None


@pytest.mark.parametrize("feature_id, photo_id, view", [("b1", "53012", 0), ("ft-260", "a_b-C9", 3)])
def test_cache_names_read_back(feature_id: str, photo_id: str, view: int) -> None:
    """The consolidation lists the caches and must read back exactly the ids and views the loaders wrote."""
    assert parse_embedding_name(embedding_name(feature_id, photo_id, view)) == (feature_id, photo_id, view)
    assert parse_local_features_name(local_features_name(photo_id)) == photo_id


@pytest.mark.parametrize("name", ["embeddings/1.npy", "embeddings/b1/x/1.npy", "embeddings/b1/1.npz",
                                  "accepted/b1/1.npy", "embeddings/b1/.npy"])
def test_other_names_are_not_embeddings(name: str) -> None:
    assert parse_embedding_name(name) is None


@pytest.mark.parametrize("name", ["localfeatures/old-extractor/1.npz", "embeddings/b1/1.npy", "x",
                                  local_features_name("1") + "/2.npz", local_features_name("")])
def test_other_names_are_not_current_keypoints(name: str) -> None:
    assert parse_local_features_name(name) is None


def test_precision_and_recall() -> None:
    classes = ["mountain"] * 4 + ["street"] * 3 + ["glacier"]
    scores = np.array([0.9, 0.5, 0.39, 0.1, 0.8, 0.0, 0.2, 0.6])
    result = evaluate(classes, scores, 0.4, positive={"mountain"})
    assert (result.true_positives, result.false_positives, result.false_negatives, result.n) == (2, 2, 2, 8)
    assert result.precision == pytest.approx(0.5) and result.recall == pytest.approx(0.5)
    assert result.per_class == {"glacier": (1, 1), "mountain": (4, 2), "street": (3, 1)}


def test_all_mountains_precision_is_one_unless_nothing_is_predicted() -> None:
    some = evaluate(["k2", "k2", "lhotse"], np.array([0.9, 0.1, 0.5]), 0.4)
    assert some.precision == 1.0 and some.recall == pytest.approx(2 / 3)
    none = evaluate(["k2"], np.array([0.1]), 0.4)
    assert none.precision == 0.0 and none.recall == 0.0
