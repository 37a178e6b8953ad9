"""The backbone: one pass gives ImageNet probabilities and the embedding; shared per process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mountainid.vision.backbone import EMBEDDING_DIM, Backbone, BackboneError, get_backbone
from mountainid.vision.image import decode_for_model


def test_one_pass_gives_scores_and_embedding(weights_path: Path, shared_dir: Path) -> None:
    backbone = get_backbone(str(weights_path))
    photo = min((shared_dir / "data" / "peaks14" / "K2").iterdir()).read_bytes()
    probs, embeddings = backbone.analyze(decode_for_model(photo, backbone.input_size, 40_000_000))
    assert probs.shape == (1, 1000) and embeddings.shape == (1, EMBEDDING_DIM)
    assert probs.sum() == pytest.approx(1.0, abs=1e-3)
    assert int(np.argmax(probs)) in (970, 972, 979, 980)  # alp / cliff / valley / volcano for a K2 photo


def test_backbone_is_shared_and_a_second_instance_still_builds(weights_path: Path) -> None:
    assert get_backbone(str(weights_path)) is get_backbone(str(weights_path), 224)
    # A second model in one process gets renamed layers ("…_1"); it must still find its embedding.
    second = Backbone(str(weights_path))
    assert second.analyze(np.zeros((2, 224, 224, 3), np.float32))[1].shape == (2, EMBEDDING_DIM)


def test_missing_weights_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=str(tmp_path / "nope.h5")):
        Backbone(str(tmp_path / "nope.h5"))
