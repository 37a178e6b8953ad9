"""The backbone: one pass gives ImageNet probabilities and the embedding; shared per process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mountainid.vision.backbone import EMBEDDING_DIM, SHARED_CUT, Backbone, BackboneError, get_backbone
from mountainid.vision.features import FeatureExtractor, FeatureSpec
from mountainid.vision.image import decode_for_model


def test_one_pass_gives_scores_and_embedding(weights_path: Path, shared_dir: Path) -> None:
    backbone = get_backbone(str(weights_path))
    photo = min((shared_dir / "data" / "peaks14" / "K2").iterdir()).read_bytes()
    probs, embeddings = backbone.analyze(decode_for_model(photo, backbone.input_size, 40_000_000))
    assert probs.shape == (1, 1000) and embeddings.shape == (1, EMBEDDING_DIM)
    assert probs.sum() == pytest.approx(1.0, abs=1e-3)
    assert int(np.argmax(probs)) in (970, 972, 979, 980)  # alp / cliff / valley / volcano for a K2 photo


def test_the_same_pass_gives_the_fast_tiers_features(weights_path: Path, shared_dir: Path, make_settings) -> None:
    """Serving takes a fast-tier head's features from the filter's pass (``analyze_all``): they must be the
    ones its own extractor computed for training, or the head would answer on other numbers."""
    backbone = get_backbone(str(weights_path))
    photos = sorted((shared_dir / "data" / "peaks14" / "K2").iterdir())[:2]
    images = np.stack([decode_for_model(p.read_bytes(), backbone.input_size, 40_000_000) for p in photos])
    probs, embeddings, maps = backbone.analyze_all(images)
    settings = make_settings()
    extractor = FeatureExtractor(settings, FeatureSpec(cut=SHARED_CUT))
    assert extractor.in_backbone_pass and not FeatureExtractor(settings, FeatureSpec(cut="block_15_add")).in_backbone_pass
    np.testing.assert_allclose(maps, extractor.features(images), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(embeddings, backbone.analyze(images)[1], rtol=1e-5, atol=1e-6)
    assert maps.shape == (2, extractor.dim) and probs.shape == (2, 1000)


def test_backbone_is_shared_and_a_second_instance_still_builds(weights_path: Path) -> None:
    assert get_backbone(str(weights_path)) is get_backbone(str(weights_path), 224)
    # A second model in one process gets renamed layers ("…_1"); it must still find its embedding.
    second = Backbone(str(weights_path))
    assert second.analyze(np.zeros((2, 224, 224, 3), np.float32))[1].shape == (2, EMBEDDING_DIM)
    assert second.analyze_all(np.zeros((1, 224, 224, 3), np.float32))[2].shape == (1, 7 * 7 * 160)


def test_missing_weights_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=str(tmp_path / "nope.h5")):
        Backbone(str(tmp_path / "nope.h5"))
