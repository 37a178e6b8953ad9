"""Keypoints and verification on real photos: a photo re-framed and re-exposed still verifies against
itself, photos of other things do not, and what is stored reads back exactly."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageEnhance

from mountainid import verification
from mountainid.verification import EVIDENCE_INLIERS as EVIDENCE_MIN_INLIERS
from mountainid.verification import Gallery, choose_weight, fuse
from mountainid.vision.image import load_image
from mountainid.vision.keypoint_settings import MAX_SIDE
from mountainid.vision.local import CorruptFeatures, LocalFeatures, extract_from_bytes

PIXELS = 40_000_000


@pytest.fixture(scope="module")
def peaks(shared_dir: Path) -> list[tuple[str, bytes]]:
    """Three photos each of three peaks: (mountain, bytes)."""
    return [(mountain, path.read_bytes()) for mountain in ("K2", "Lhotse", "Makalu")
            for path in sorted((shared_dir / "data" / "peaks14" / mountain).iterdir())[:3]]


@pytest.fixture(scope="module")
def gallery(peaks: list[tuple[str, bytes]]) -> Gallery:
    classes = {"K2": 0, "Lhotse": 1, "Makalu": 2}
    return Gallery([f"p{i}" for i in range(len(peaks))], [classes[m] for m, _ in peaks],
                   [extract_from_bytes(data, PIXELS) for _, data in peaks])


def _reframed(data: bytes) -> bytes:
    """The same view, cropped by a tenth on each side, darker, smaller and re-encoded: another shot of it."""
    image = load_image(data, PIXELS)
    w, h = image.size
    image = image.crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize((w * 2 // 3, h * 2 // 3))
    buffer = io.BytesIO()
    ImageEnhance.Brightness(image).enhance(0.8).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def test_keypoints_are_strongest_first_at_a_bounded_scale(peaks: list[tuple[str, bytes]]) -> None:
    features = extract_from_bytes(peaks[0][1], PIXELS)
    assert 300 < len(features) <= 1500 and max(features.size) <= MAX_SIDE
    assert features.descriptors.dtype == np.uint8 and features.descriptors.shape == (len(features), 128)
    assert (features.points >= 0).all() and (features.points[:, 0] < features.size[0]).all()


def test_stored_keypoints_read_back_exactly_and_damage_is_detected(peaks: list[tuple[str, bytes]]) -> None:
    features = extract_from_bytes(peaks[1][1], PIXELS)
    again = LocalFeatures.from_bytes(features.to_bytes())
    np.testing.assert_array_equal(again.points, features.points)
    np.testing.assert_array_equal(again.descriptors, features.descriptors)
    assert again.size == features.size
    stored = features.to_bytes()
    for damaged in (stored[: len(stored) // 2], b"", b"not numpy at all",
                    LocalFeatures(features.points, features.descriptors[:, :64].copy(), features.size).to_bytes()):
        with pytest.raises(CorruptFeatures):
            LocalFeatures.from_bytes(damaged)


def test_another_shot_of_the_same_view_verifies_against_it(gallery: Gallery,
                                                           peaks: list[tuple[str, bytes]]) -> None:
    for row in (0, 4, 8):  # one photo of each peak
        verified = gallery.verify(extract_from_bytes(_reframed(peaks[row][1]), PIXELS))
        assert verified and verified[0].row == row, [(v.row, v.inliers) for v in verified]
        assert verified[0].inliers >= 3 * EVIDENCE_MIN_INLIERS
        scores = gallery.scores(verified, 3)
        assert scores.argmax() == gallery.classes[row]
        # The matched points are where the crop put them: upload point = (photo point - the margin) x scale.
        w, h = load_image(peaks[row][1], PIXELS).size
        query_size = extract_from_bytes(_reframed(peaks[row][1]), PIXELS).size
        pairs = verified[0].pairs
        for axis, (side, margin) in enumerate(((w, w // 10), (h, h // 10))):
            photo_scale = gallery.sizes[row][axis] / side
            upload_scale = query_size[axis] / (side - 2 * margin)  # the crop, resized and scaled to <= 640 px
            expected = (pairs[:, 2 + axis] / photo_scale - margin) * upload_scale
            assert np.median(np.abs(pairs[:, axis] - expected)) < 2.0


def test_a_street_photo_verifies_against_nothing(gallery: Gallery, shared_dir: Path) -> None:
    for path in sorted((shared_dir / "data" / "scenes" / "street").iterdir())[:3]:
        verified = gallery.verify(extract_from_bytes(path.read_bytes(), PIXELS))
        assert all(v.inliers < EVIDENCE_MIN_INLIERS for v in verified), [(v.row, v.inliers) for v in verified]


class RecordingIndex:
    """The gallery's FLANN index, recording each search's thread and rows."""

    def __init__(self, index) -> None:
        self.index, self.calls = index, []

    def knnSearch(self, descriptors, k, params):  # OpenCV's name
        self.calls.append((threading.current_thread().name, len(descriptors)))
        return self.index.knnSearch(descriptors, k, params=params)


def test_a_query_searched_in_parts_side_by_side_finds_what_one_search_finds(
        gallery: Gallery, peaks: list[tuple[str, bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    query = extract_from_bytes(_reframed(peaks[1][1]), PIXELS)
    recording = RecordingIndex(gallery._index)
    monkeypatch.setattr(gallery, "_index", recording)
    monkeypatch.setattr(verification, "SEARCH_THREADS", 2)
    in_parts = gallery.verify(query)
    assert len(recording.calls) == 2 and all(name.startswith("search") for name, _ in recording.calls)
    assert sum(rows for _, rows in recording.calls) == len(query)
    recording.calls.clear()
    monkeypatch.setattr(verification, "SEARCH_THREADS", 1)
    at_once = gallery.verify(query)
    assert recording.calls == [(threading.current_thread().name, len(query))]
    assert in_parts and in_parts[0].inliers >= EVIDENCE_MIN_INLIERS
    assert [(v.row, v.inliers) for v in in_parts] == [(v.row, v.inliers) for v in at_once]
    for a, b in zip(in_parts, at_once, strict=True):
        np.testing.assert_array_equal(a.pairs, b.pairs)


def test_a_stored_gallery_answers_as_the_built_one(gallery: Gallery, peaks: list[tuple[str, bytes]]) -> None:
    query = extract_from_bytes(_reframed(peaks[4][1]), PIXELS)
    loaded = Gallery.from_bytes(gallery.to_bytes())  # for serving: smaller, and not storable again
    assert loaded.nbytes < gallery.nbytes
    with pytest.raises(ValueError):
        loaded.to_bytes()
    assert loaded.photo_ids == gallery.photo_ids and (loaded.classes == gallery.classes).all()
    assert [(v.row, v.inliers) for v in loaded.verify(query)] == [(v.row, v.inliers) for v in gallery.verify(query)]


def test_fusion_weight_zero_is_the_classifier_and_the_weight_follows_the_evidence() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 60)
    probs = rng.dirichlet(np.ones(4), 60).astype(np.float32)  # an uninformed classifier
    np.testing.assert_allclose(fuse(probs, np.zeros_like(probs), 0.2), probs, rtol=1e-5)
    np.testing.assert_allclose(fuse(probs, rng.random((60, 4)) * 50, 0.0), probs, rtol=1e-5)
    telling = np.zeros((60, 4), np.float32)
    telling[np.arange(60), targets] = 40  # verification finds the right mountain
    assert choose_weight(probs, telling, targets) > 0
    misleading = np.zeros((60, 4), np.float32)
    misleading[np.arange(60), (targets + 1) % 4] = 40  # verification finds a neighbour every time
    right = np.eye(4, dtype=np.float32)[targets] * 0.7 + 0.075  # a good classifier
    assert choose_weight(right, misleading, targets) == 0.0
