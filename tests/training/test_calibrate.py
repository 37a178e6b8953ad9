"""Calibration sees only answers to photos their models had not seen: folds keep a photographer together,
each fold is answered by a head trained on the others and a gallery of the others, and temperature scaling
makes an over-sure answer say so less without changing it."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mountainid import verification
from mountainid.training import calibrate, evaluate
from mountainid.vision.local import extract_from_bytes

LIMITS = (40_000_000, 10_000_000)


def test_folds_keep_a_photographer_together_and_come_out_even() -> None:
    groups = [f"owner:{i % 7}" for i in range(60)] + [f"photo{i}" for i in range(40)]
    fold_of = calibrate.photographer_folds(groups, 4)
    for group in set(groups):
        assert len({int(f) for f, g in zip(fold_of, groups, strict=True) if g == group}) == 1
    sizes = np.bincount(fold_of, minlength=4)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= max(groups.count(g) for g in set(groups))
    np.testing.assert_array_equal(fold_of, calibrate.photographer_folds(groups, 4))  # the same every run


def _crops(path: Path, spans: list[tuple[float, float]]) -> list:
    """Keypoints of overlapping crops of one frame: photos of one view, which verify each other."""
    frame = Image.open(path).convert("RGB")
    width, height = frame.size
    features = []
    for left, right in spans:
        buffer = BytesIO()
        frame.crop((int(left * width), 0, int(right * width), height)).save(buffer, "JPEG", quality=92)
        features.append(extract_from_bytes(buffer.getvalue(), *LIMITS))
    return features


@pytest.fixture(scope="module")
def two_views(shared_dir: Path) -> list:
    """Two crops of a Gasherbrum I frame (class 0), then two of a Shishapangma frame (class 1)."""
    peaks = shared_dir / "data" / "peaks14"
    spans = [(0.0, 0.8), (0.2, 1.0)]
    return _crops(min((peaks / "Gasherbrum I").iterdir()), spans) + _crops(min((peaks / "Shishapangma").iterdir()),
                                                                          spans)


def test_each_fold_is_answered_by_a_head_and_gallery_that_never_held_it(two_views: list) -> None:
    targets = np.array([0, 0, 1, 1])
    ids = ["g1", "g2", "s1", "s2"]
    asked: list[tuple[np.ndarray, np.ndarray]] = []

    def answer(trained_on: np.ndarray, held: np.ndarray) -> np.ndarray:
        asked.append((trained_on.copy(), held.copy()))
        return np.tile([[0.5, 0.5]], (int(held.sum()), 1))

    # A view's two photos in different folds: each is answered by the other's evidence.
    apart = calibrate.out_of_fold(np.array([0, 1, 0, 1]), targets, 2, ids, two_views, answer)
    assert len(apart) == 4 and (apart.scores[np.arange(4), targets] >= verification.EVIDENCE_INLIERS).all()
    for trained_on, held in asked:
        assert not (trained_on & held).any() and (trained_on | held).all()
    assert sorted(int(i) for _, held in asked for i in np.flatnonzero(held)) == [0, 1, 2, 3]  # each once
    # In one fold, a view has no other photo left to match: the held-out photo never meets itself or its pair.
    together = calibrate.out_of_fold(np.array([0, 0, 1, 1]), targets, 2, ids, two_views, answer)
    assert (together.scores[np.arange(4), targets] < verification.EVIDENCE_INLIERS).all()
    # Photos never held out (fold -1) only train and verify: answers are of the held-out ones alone.
    val_only = calibrate.out_of_fold(np.array([-1, 0, -1, 0]), targets, 2, ids, two_views, answer)
    np.testing.assert_array_equal(val_only.targets, [0, 1])
    assert (val_only.scores[np.arange(2), val_only.targets] >= verification.EVIDENCE_INLIERS).all()


def test_temperature_makes_an_over_sure_head_less_sure_and_keeps_every_answer() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 300)
    right = rng.random(300) < 0.6  # right 60 % of the time, yet 97 % sure every time
    answers = np.where(right, targets, (targets + 1) % 3)
    probs = np.full((300, 3), 0.015)
    probs[np.arange(300), answers] = 0.97
    scores = np.zeros((300, 3), np.float32)
    temperature = calibrate.fit_temperature(probs, scores, targets, 0.1, None)
    assert temperature > 1.5
    tempered = verification.fuse(probs, scores, 0.1, None, temperature)
    np.testing.assert_array_equal(tempered.argmax(axis=1), probs.argmax(axis=1))
    assert abs(tempered.max(axis=1).mean() - 0.6) < 0.1  # "60 %" now means right 60 % of the time
    # An under-sure one (right 95 % at 40 %) is made surer.
    humble = np.full((300, 3), 0.3)
    humble[np.arange(300), np.where(rng.random(300) < 0.95, targets, (targets + 2) % 3)] = 0.4
    assert calibrate.fit_temperature(humble, scores, targets, 0.1, None) < 1.0


def test_the_fit_is_of_the_held_out_answers_alone() -> None:
    """The stored weight, temperature and threshold are exactly what the fit gives on the held-out answers."""
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), 200)
    probs[np.arange(200), targets] += rng.random(200)
    probs /= probs.sum(axis=1, keepdims=True)
    scores = np.where(rng.random((200, 4)) < 0.3, rng.integers(0, 30, (200, 4)), 0).astype(np.float32)
    seen = rng.random(200) < 0.5  # half the photos verify against their own mountain's photos
    scores[np.flatnonzero(seen), targets[seen]] = rng.integers(30, 100, int(seen.sum()))
    answers = calibrate.Answers(probs, scores, targets)
    fitted = calibrate.fit(answers, None)
    assert fitted.weight == verification.choose_weight(probs, scores, targets)
    assert fitted.temperature == calibrate.fit_temperature(probs, scores, targets, fitted.weight, None)
    fused = fitted.fuse(probs, scores, None)
    answered = fused.max(axis=1) >= fitted.thresholds(fused, scores, None)
    assert answered.any() and (fused.argmax(axis=1) == targets)[answered].mean() >= 0.9


def test_answers_the_gallery_does_not_verify_are_held_to_their_own_threshold() -> None:
    """Verified answers right 95 % of the time, unverified ones (the head alone) as confident but right a third of
    the time: one threshold for both names unverified answers that are mostly wrong; each kind gets its own,
    and the unverified one keeps its promise on its own answers."""
    rng = np.random.default_rng(3)
    n, classes = 400, 5
    targets = rng.integers(0, classes, n)
    seen = np.arange(n) < n // 2  # the first half verify against a photo of their answer
    right = np.where(seen, rng.random(n) < 0.95, rng.random(n) < 0.35)
    answer = np.where(right, targets, (targets + rng.integers(1, classes, n)) % classes)
    probs = np.full((n, classes), 0.02)
    probs[np.arange(n), answer] = rng.uniform(0.1, 0.95, n)
    probs /= probs.sum(axis=1, keepdims=True)
    scores = np.zeros((n, classes), np.float32)
    scores[np.flatnonzero(seen), answer[seen]] = 40.0
    fitted = calibrate.fit(calibrate.Answers(probs, scores, targets), None)
    fused = fitted.fuse(probs, scores, None)
    verified = verification.with_evidence(fused, scores)
    np.testing.assert_array_equal(verified, seen)
    assert fitted.unverified_threshold > fitted.threshold
    sure = fused.max(axis=1) >= fitted.thresholds(fused, scores, None)
    correct = fused.argmax(axis=1) == targets
    assert sure[seen].mean() > 0.9 and correct[sure & seen].mean() >= 0.9  # verified: nearly all said outright
    assert not (sure & ~seen).any() or correct[sure & ~seen].mean() >= 0.9
    single = fused.max(axis=1) >= evaluate.choose_unknown_threshold(fused, targets)  # the rule before 2026-12-07
    assert correct[single & ~seen].mean() < 0.9  # what one threshold for both let through

    # With no answer verified (a version without a gallery), there is one threshold.
    alone = calibrate.fit(calibrate.Answers(probs, np.zeros_like(scores), targets), None)
    assert alone.threshold == alone.unverified_threshold
