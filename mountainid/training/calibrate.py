"""Confidence that means what it says: the fusion weight, a temperature and the "sure" threshold, fitted on
answers to photos that neither the head nor the verification gallery that answered them had seen.

With ``folds`` >= 2 every photo the gate does not need (training + validation) is answered out of fold:
the photos are split by photographer into folds, and each fold is answered by a head of the released
recipe trained on the other folds and a gallery of the other folds. That is ~450 answers on peaks14 to set
a 90 % precision point on, instead of the 82 validation photos (about ±10 points). With ``folds`` = 0 the
validation split is the one held-out fold, answered by a head of the training split (the released one,
or with ``refit`` the one trained before it) and a gallery of training photos. The test split is never read here: it stays the gate's.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mountainid import verification
from mountainid.arrays import load_arrays
from mountainid.logs import Bar, event
from mountainid.training import evaluate
from mountainid.verification import Gallery
from mountainid.vision.local import LocalFeatures

log = logging.getLogger(__name__)

TEMPERATURES = tuple(float(t) for t in np.geomspace(0.5, 4.0, 31))  # tried on the out-of-fold answers


@dataclass(frozen=True)
class Answers:
    """Held-out photos' head probabilities and verification scores (N, classes), their mountains and ids."""

    probs: np.ndarray
    scores: np.ndarray
    targets: np.ndarray
    photo_ids: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.targets)

    def to_bytes(self) -> bytes:
        """Stored with the model (``held_out.npz``), so a calibration can be re-fitted or studied without retraining."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, probs=self.probs.astype(np.float32), scores=self.scores.astype(np.float32),
                            targets=self.targets, photo_ids=np.asarray(self.photo_ids, dtype=str))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Answers:
        arrays = load_arrays(data)
        photo_ids = tuple(arrays["photo_ids"].tolist()) if "photo_ids" in arrays else ()  # not kept before 2026-12-06
        return cls(arrays["probs"], arrays["scores"], arrays["targets"], photo_ids)


@dataclass(frozen=True)
class Calibration:
    """How the head and the gallery's evidence become the served answer and when it is said outright: at
    ``threshold`` when the gallery verifies the answer (``verification.with_evidence``), else at
    ``unverified_threshold``, never the lower of the two."""

    weight: float
    temperature: float
    threshold: float
    unverified_threshold: float

    def fuse(self, probs: np.ndarray, scores: np.ndarray, in_view: np.ndarray | None) -> np.ndarray:
        return verification.fuse(probs, scores, self.weight, in_view, self.temperature)

    def thresholds(self, fused: np.ndarray, scores: np.ndarray, in_view: np.ndarray | None) -> np.ndarray:
        """Each fused answer's "sure" threshold, by whether the gallery verifies it."""
        return verification.sure_thresholds(fused, scores, in_view, self.threshold, self.unverified_threshold)


def photographer_folds(groups: Sequence[str], folds: int) -> np.ndarray:
    """Each photo's fold (0 .. folds - 1): a photographer's photos stay together (a burst of one view must
    not answer itself), the largest photographers first onto the emptiest fold, so folds come out even."""
    load = np.zeros(folds, np.int64)
    fold_of: dict[str, int] = {}
    for group, size in sorted(Counter(groups).items(), key=lambda item: (-item[1], item[0])):
        fold_of[group] = int(np.argmin(load))
        load[fold_of[group]] += size
    return np.asarray([fold_of[group] for group in groups], np.int64)


def out_of_fold(fold_of: np.ndarray, targets: np.ndarray, classes: int, photo_ids: Sequence[str],
                keypoints: Sequence[LocalFeatures | None],
                answer: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Answers:
    """The photos of every fold (``fold_of`` >= 0; -1: never held out) answered by models that never saw them:
    ``answer(trained_on, held_out)`` (boolean masks over the photos) gives the held-out photos' head
    probabilities from a head trained on ``trained_on``; their verification scores come from a gallery of
    every other photo. Answers are in photo order, the never held out left out."""
    targets = np.asarray(targets, np.int64)
    probs = np.zeros((len(targets), classes), np.float32)
    scores = np.zeros((len(targets), classes), np.float32)
    usable = np.asarray([k is not None for k in keypoints], bool)
    folds = np.unique(fold_of[fold_of >= 0])
    with Bar("calibrate", len(folds)) as bar:
        for number, fold in enumerate(folds, 1):
            held = fold_of == fold
            probs[held] = answer(~held, held)
            rows = np.flatnonzero(~held & usable).tolist()
            gallery = Gallery([photo_ids[i] for i in rows], targets[rows], [k for i in rows if (k := keypoints[i]) is not None])
            scores[held] = gallery.score_many([keypoints[i] for i in np.flatnonzero(held).tolist()], classes)
            event(log, "fold answered", fold=number, folds=len(folds), photos=int(held.sum()),
                  gallery=len(gallery))
            bar.advance()
    answered = fold_of >= 0
    return Answers(probs[answered], scores[answered], targets[answered],
                   tuple(photo_ids[i] for i in np.flatnonzero(answered).tolist()))


def fit(answers: Answers, in_view: np.ndarray | None) -> Calibration:
    """The weight with the best held-out top-1 (``verification.choose_weight``), then the temperature with the
    best held-out log-likelihood, then the thresholds on the answers so tempered: what the site calls 90 % sure
    was right 90 % of the time on photos it had not seen.

    The answers the gallery verifies and those it does not get a threshold each, fitted on their own kind
    (``evaluate.choose_unknown_threshold``): on 2026-12-07's fine-tune tier 39 of 41 verified validation answers
    were right and 14 of 41 unverified ones. Only the unverified threshold keeps the open-set term
    (``evaluate.open_set_threshold``, over every answer with its photo's own mountain and evidence taken out): a
    photo of a mountain the model does not know has no training photo to agree with (none of 150
    ``scenes/mountain`` photos was verified), so one threshold for both let the head alone name 16 % of them.
    With no verified answer to fit on, both are the unverified one."""
    probs, scores, targets = answers.probs, answers.scores, answers.targets
    weight = verification.choose_weight(probs, scores, targets, in_view)
    temperature = fit_temperature(probs, scores, targets, weight, in_view)
    fused = verification.fuse(probs, scores, weight, in_view, temperature)
    verified = verification.with_evidence(fused, scores, in_view)
    stand_ins = verification.fuse_without_evidence(probs, scores, targets, weight, in_view, temperature)
    unverified = max(evaluate.choose_unknown_threshold(fused[~verified], targets[~verified]),
                     evaluate.open_set_threshold(evaluate.without_own(stand_ins, targets)))
    threshold = evaluate.choose_unknown_threshold(fused[verified], targets[verified]) if verified.any() else unverified
    return Calibration(weight, temperature, threshold, max(threshold, unverified))


def fit_temperature(probs: np.ndarray, scores: np.ndarray, targets: np.ndarray, weight: float,
                    in_view: np.ndarray | None) -> float:
    """Temperature scaling of the fused logits: the one of ``TEMPERATURES`` with the best log-likelihood of
    the held-out answers (1.0 when there are none). It changes how sure an answer says it is, never which."""
    if not len(targets):
        return 1.0
    rows = np.arange(len(targets))

    def likelihood(temperature: float) -> float:
        fused = verification.fuse(probs, scores, weight, in_view, temperature)
        return float(np.mean(np.log(np.clip(fused[rows, targets], 1e-9, 1.0))))

    return max(TEMPERATURES, key=likelihood)
