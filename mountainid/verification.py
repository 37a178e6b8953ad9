"""Verification: which training photos show the same mountain face, checked geometrically, fused with the classifier.

Landmark recognition's recipe, sized for a 2-core CPU (figures in ``../shared/RECOGNITION.md``):
one approximate nearest-neighbour query of the upload's RootSIFT descriptors against an index of
every gallery photo's descriptors gives both the candidate photos (by votes) and the
correspondences to verify; a fundamental matrix by MAGSAC per candidate counts the matches that
agree on one camera geometry (inliers). Pairwise brute-force matching would cost 32 ms per
candidate; this costs one query plus ~1 ms per candidate.

A mountain's score is the sum of its two best photos' inliers; the fused answer is
``softmax((log p_classifier + weight * min(score, INLIER_CAP)) / temperature)`` with ``weight`` and
``temperature`` fitted on answers to photos that neither the head nor the gallery held
(``mountainid.training.calibrate``), never on the test split, which the gallery never holds.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mountainid.arrays import load_arrays
from mountainid.vision.keypoint_settings import KEYPOINTS
from mountainid.vision.local import LocalFeatures, rootsift

GALLERY_KEYPOINTS = 1000  # per training photo in the index (0.5 MB each as float32); 600 lost 3 points on val
CANDIDATES = 30           # gallery photos verified per upload, by votes
MIN_MATCHES = 8           # the fewest correspondences a fundamental matrix can be estimated from
RANSAC_PX = 1.0
INLIER_CAP = 100          # beyond this many inliers a match is certain; more must not outweigh everything
# Fusion weights tried on the held-out answers. 0.6-1.0 added 2026-12-06, when the fast tier chose 0.4 at the
# grid's edge: on its 446 out-of-fold answers 0.4 stays the best (top-1 60.1 %, then 59.9 % up to 1.0), the
# larger ones only cost likelihood and outright answers.
WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_WEIGHT = 0.1      # the probe's weight, used only when there is no validation photo to choose on
VERIFICATION_FILE = "verification.npz"  # a model version's gallery keypoints (absent in versions before it)
# An overlay (a stock agency's watermark grid, a logo, a caption bar, a border) or a copy of the photo matches
# at the same place in both frames; a mountain seen in two photos almost never does. Of 437 verified pairs of
# one mountain's photos in peaks14 (at least 15 inliers), 8 had half their inliers within 1 % of the side of the
# same relative position (all copies or bursts), of 70 pairs across mountains 13 (copies, watermarks).
OVERLAY_TOLERANCE = 0.01  # of the image's width and height: "the same place"
OVERLAY_SHARE = 0.5       # a match whose inliers sit this much at the same place proves nothing about the subject
EVIDENCE_INLIERS = 15     # fewer agreeing points can be chance (sky, snow texture): no evidence of a mountain
IN_VIEW_PAIRS = 2         # verified pairs of two mountains' training photos that put them in one view
# An upload's descriptors are searched in this many parts side by side (each row's neighbours do not depend
# on the others, so the answer is the same): 108 -> 47 ms a query on two cores, with the whole gallery.
SEARCH_THREADS = max(1, min(4, len(os.sched_getaffinity(0))))
SEARCH_PART = 256         # fewer rows than this a part are not worth a thread's hand-off


@dataclass(frozen=True)
class Matching:
    """How an upload's keypoints are matched against a gallery's index: chosen by 5-fold cross-validation
    (by photographer) on peaks14's training and validation photos, test never read (``benchmarks/verification.py``)."""

    neighbours: int  # gallery keypoints per upload keypoint; the next one is the ratio test's reference
    ratio: float     # Lowe's ratio, on distances: "clearly closer than" that reference
    checks: int      # FLANN leaves visited per query descriptor
    keypoints: int = KEYPOINTS  # the upload's strongest keypoints queried (the query's cost is linear in them)


# Against a gallery of a few hundred photos (peaks14's 367 training photos of the other folds): right on 18
# photos the former 0.8 / 3 / 32 missed and wrong on 4 it got (fused top-1 56.9 % against 53.8 %, n = 459,
# McNemar p = 0.004), for a query p50 of 83 ms against 56 ms; on a sample of 200 of them, 32 against 11.
LARGE_GALLERY = Matching(neighbours=5, ratio=0.85, checks=48)
# Against fewer photos the looser ratio lets chance through: with 120 photos (or a per-upload gallery of 24)
# most photos find 15 inliers with some other mountain and it gains nothing (47.1 % against 47.5 %).
SMALL_GALLERY = Matching(neighbours=3, ratio=0.8, checks=32)
LARGE_FROM = 200  # photos in the gallery


def matching_for(photos: int) -> Matching:
    return LARGE_GALLERY if photos >= LARGE_FROM else SMALL_GALLERY


@dataclass(frozen=True)
class Verified:
    """One gallery photo that matched the upload, and the correspondences that agree geometrically."""

    row: int
    inliers: int
    pairs: np.ndarray  # (inliers, 4) float32: upload x, y, gallery x, y in pixels of their scaled images


class Gallery:
    """The training photos' local features in one approximate nearest-neighbour index (read-only once built)."""

    def __init__(self, photo_ids: Sequence[str], classes: Sequence[int] | np.ndarray, features: Sequence[LocalFeatures],
                 *, storable: bool = True, matching: Matching | None = None) -> None:
        """``storable=False`` (serving) drops the uint8 descriptors once indexed: a fifth less memory,
        and no :meth:`to_bytes`. ``matching``: by default the one chosen for the gallery's size."""
        self.matching = matching or matching_for(len(features))
        kept = [f.strongest(GALLERY_KEYPOINTS) for f in features]
        self.photo_ids = list(photo_ids)
        self.classes = np.asarray(classes, np.int32)
        self.sizes = np.array([f.size for f in kept], np.int32).reshape(-1, 2)
        self._offsets = np.cumsum([0] + [len(f) for f in kept])
        self._points = np.concatenate([f.points for f in kept]) if kept else np.zeros((0, 2), np.float32)
        raw = np.concatenate([f.descriptors for f in kept]) if kept else np.zeros((0, 128), np.uint8)
        self._raw = raw if storable else None
        self._owner = np.repeat(np.arange(len(kept), dtype=np.int32), [len(f) for f in kept])
        self._descriptors = rootsift(raw)  # FLANN keeps a pointer to this array: it lives as long as the index
        self._index = None
        if len(self._descriptors) > self.matching.neighbours:
            import cv2

            cv2.setRNGSeed(0)  # the kd-trees are randomised: the same gallery must give the same answers
            self._index = cv2.flann_Index(  # type: ignore[attr-defined]  # randomised kd-trees; absent from the stubs
                self._descriptors, {"algorithm": 1, "trees": 4})

    def __len__(self) -> int:
        return len(self.photo_ids)

    @property
    def nbytes(self) -> int:
        """Memory held for the index's data (the kd-trees add about 10 %)."""
        return sum(a.nbytes for a in (self._points, self._raw, self._owner, self._descriptors) if a is not None)

    def verify(self, query: LocalFeatures) -> list[Verified]:
        """Gallery photos sharing geometrically consistent keypoints with ``query``, most inliers first."""
        if self._index is None or len(query) < MIN_MATCHES:
            return []
        import cv2

        k, ratio = self.matching.neighbours, self.matching.ratio
        query = query.strongest(self.matching.keypoints)
        # No lock: a search only reads the kd-trees, so uploads search side by side and find the same
        # neighbours as one at a time (tests/web/test_verification.py).
        neighbours, distances = _search(self._index, rootsift(query.descriptors), k + 1, self.matching.checks)
        close = distances[:, :k] < ratio * ratio * distances[:, k:]  # squared L2
        query_rows, column = np.nonzero(close)
        gallery_points = neighbours[query_rows, column]
        photos = self._owner[gallery_points]
        # One correspondence per (upload keypoint, gallery photo): the closest, listed first by FLANN.
        _, first = np.unique(photos.astype(np.int64) * len(query) + query_rows, return_index=True)
        query_rows, gallery_points, photos = query_rows[first], gallery_points[first], photos[first]
        votes = np.bincount(photos, minlength=len(self))
        results = []
        for photo in np.argsort(-votes, kind="stable")[:CANDIDATES]:
            if votes[photo] < MIN_MATCHES:
                break
            mine = photos == photo
            a, b = query.points[query_rows[mine]], self._points[gallery_points[mine]]
            try:
                _, mask = cv2.findFundamentalMat(a, b, cv2.USAC_MAGSAC, RANSAC_PX, 0.999, 10000)
            except cv2.error:  # degenerate configurations (all points on a line) have no model
                continue
            if mask is None or not mask.any():
                continue
            inlier = mask.ravel().astype(bool)
            pairs = np.hstack([a[inlier], b[inlier]])
            if same_place(pairs, query.size, self.sizes[photo]).mean() >= OVERLAY_SHARE:
                continue  # an overlay or a copy: not evidence of the mountain
            results.append(Verified(int(photo), int(inlier.sum()), pairs))
        return sorted(results, key=lambda v: -v.inliers)

    def photo(self, row: int) -> LocalFeatures:
        """A gallery photo's indexed keypoints (a storable gallery only)."""
        if self._raw is None:
            raise ValueError("this gallery was loaded for serving (storable=False): its descriptors are gone")
        start, end = self._offsets[row], self._offsets[row + 1]
        return LocalFeatures(self._points[start:end], self._raw[start:end], (int(self.sizes[row][0]),
                                                                              int(self.sizes[row][1])))

    def in_view(self, groups: Sequence[str], classes: int) -> np.ndarray:
        """(classes, classes) bool: which mountains stand in one view, learnt from the gallery itself.

        Each training photo is verified against the others (its photographer's own photos left out, as a
        burst is no second view); two mountains whose photos verify each other, with at least
        ``EVIDENCE_INLIERS`` inliers, in at least ``IN_VIEW_PAIRS`` pairs, share a view (Gasherbrum I and II,
        Everest and Lhotse): a match with one of them is then no proof of which of the two a photo shows.
        """
        pairs = np.zeros((classes, classes), np.int32)
        for row in range(len(self)):
            for match in self.verify(self.photo(row)):
                other = match.row
                if groups[other] != groups[row] and match.inliers >= EVIDENCE_INLIERS:
                    pairs[self.classes[row], self.classes[other]] += 1
        pairs = pairs + pairs.T  # a pair found from either side
        np.fill_diagonal(pairs, 0)
        return pairs >= 2 * IN_VIEW_PAIRS

    def scores(self, verified: Sequence[Verified], classes: int) -> np.ndarray:
        """Per class: the inliers of its two best-verified photos, summed (one lucky match is not enough)."""
        best: dict[int, list[int]] = {}
        for match in verified:  # most inliers first
            best.setdefault(int(self.classes[match.row]), []).append(match.inliers)
        scores = np.zeros(classes, np.float32)
        for label, inliers in best.items():
            if label < classes:
                scores[label] = sum(inliers[:2])
        return scores

    def score_many(self, queries: Sequence[LocalFeatures | None], classes: int) -> np.ndarray:
        """(N, classes) scores; a photo without local features scores zero everywhere (classifier alone)."""
        return np.stack([self.scores(self.verify(q), classes) if q is not None else np.zeros(classes, np.float32)
                         for q in queries]) if len(queries) else np.zeros((0, classes), np.float32)

    def to_bytes(self) -> bytes:
        if self._raw is None:
            raise ValueError("this gallery was loaded for serving (storable=False): it cannot be stored again")
        buffer = io.BytesIO()
        np.savez(buffer, photo_ids=np.array(self.photo_ids, dtype=str), classes=self.classes, sizes=self.sizes,
                 offsets=self._offsets, points=self._points, descriptors=self._raw)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, storable: bool = False) -> Gallery:
        stored = load_arrays(data)
        offsets, points, descriptors = stored["offsets"], stored["points"], stored["descriptors"]
        features = [LocalFeatures(points[start:end], descriptors[start:end], (int(w), int(h)))
                    for start, end, (w, h) in zip(offsets[:-1], offsets[1:], stored["sizes"], strict=True)]
        return cls([str(p) for p in stored["photo_ids"]], stored["classes"], features, storable=storable)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _search(index, descriptors: np.ndarray, k: int, checks: int) -> tuple[np.ndarray, np.ndarray]:
    """FLANN's k nearest gallery keypoints of each descriptor, in up to ``SEARCH_THREADS`` parts at once
    (OpenCV releases the GIL; the kd-trees are only read)."""
    global _pool
    parts = min(SEARCH_THREADS, len(descriptors) // SEARCH_PART)
    if parts < 2:
        return index.knnSearch(descriptors, k, params={"checks": checks})
    with _pool_lock:  # created once, on the first query that needs it
        if _pool is None:
            _pool = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="search")
    found = list(_pool.map(lambda part: index.knnSearch(part, k, params={"checks": checks}),
                           np.array_split(descriptors, parts)))
    return np.concatenate([n for n, _ in found]), np.concatenate([d for _, d in found])


def in_view_names(in_view: np.ndarray, labels: Sequence[str]) -> dict[str, list[str]]:
    """The matrix as stored with a model: each mountain's slug -> the slugs in its view (only those with any)."""
    return {labels[a]: [labels[int(b)] for b in np.flatnonzero(row)] for a, row in enumerate(in_view) if row.any()}


def in_view_matrix(names: dict[str, list[str]], labels: Sequence[str]) -> np.ndarray:
    """Back from :func:`in_view_names`; mountains the labels do not hold are ignored."""
    index = {slug: i for i, slug in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), bool)
    for slug, others in names.items():
        for other in others:
            if slug in index and other in index:
                matrix[index[slug], index[other]] = True
    return matrix


def same_place(pairs: np.ndarray, query_size: Sequence[int], gallery_size: Sequence[int]) -> np.ndarray:
    """Per correspondence (upload x, y, gallery x, y): whether both points sit at the same relative position."""
    upload = pairs[:, :2] / np.asarray(query_size, np.float32)
    gallery = pairs[:, 2:] / np.asarray(gallery_size, np.float32)
    return np.asarray((np.abs(upload - gallery) <= OVERLAY_TOLERANCE).all(axis=1))


def shared(scores: np.ndarray, in_view: np.ndarray | None) -> np.ndarray:
    """Verification scores (N, C) with each mountain's evidence credited to the mountains in its view too:
    a verified match with a photo of Gasherbrum I that also shows Gasherbrum II cannot tell them apart, so
    the classifier decides between them (and the answer's confidence says so) instead of the match."""
    if in_view is None or not in_view.any():
        return scores
    spread = np.where(in_view[None, :, :], scores[:, :, None], 0.0).max(axis=1)  # best neighbour's score
    return np.maximum(scores, spread)


def with_evidence(fused: np.ndarray, scores: np.ndarray, in_view: np.ndarray | None = None) -> np.ndarray:
    """Whether each answer (the top of ``fused``, N x C) is backed by the gallery: its mountain's verification
    score, shared within its view, reaches ``EVIDENCE_INLIERS``. A photo of a mountain the model does not know
    has nothing to match, so the answers without evidence are the ones it must hold to a higher bar."""
    if not len(fused):
        return np.zeros(0, bool)
    return shared(scores, in_view)[np.arange(len(fused)), fused.argmax(axis=1)] >= EVIDENCE_INLIERS


def sure_thresholds(fused: np.ndarray, scores: np.ndarray, in_view: np.ndarray | None, threshold: float,
                    unverified_threshold: float) -> np.ndarray:
    """Each answer's "sure" threshold: ``threshold`` where the gallery backs it (:func:`with_evidence`), else
    ``unverified_threshold`` (fitted on such answers alone, ``training.calibrate.fit``)."""
    return np.where(with_evidence(fused, scores, in_view), threshold, unverified_threshold)


def fuse(probs: np.ndarray, scores: np.ndarray, weight: float, in_view: np.ndarray | None = None,
         temperature: float = 1.0) -> np.ndarray:
    """Classifier probabilities (N, C) and verification scores (N, C) -> fused probabilities (N, C);
    ``in_view`` (C, C): mountains that share a view share their evidence (:func:`shared`); ``temperature``
    (fitted out of fold, ``training.calibrate``) scales how sure the answer says it is, never which it is."""
    logits = np.log(np.clip(probs, 1e-9, 1.0)) + weight * np.minimum(shared(scores, in_view), INLIER_CAP)
    logits /= temperature
    logits -= logits.max(axis=1, keepdims=True)
    fused = np.exp(logits)
    return fused / fused.sum(axis=1, keepdims=True)


def fuse_without_evidence(probs: np.ndarray, scores: np.ndarray, targets: np.ndarray, weight: float,
                          in_view: np.ndarray | None = None, temperature: float = 1.0) -> np.ndarray:
    """Each photo's fused answer with its own mountain's gallery evidence gone (so no neighbour in its view
    borrows it): with its head probability taken out too (``evaluate.choose_answer_threshold``), a stand-in
    from labelled photos alone for a photo of a mountain the model does not know."""
    return fuse(probs, own_evidence_gone(scores, targets), weight, in_view, temperature)


def own_evidence_gone(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Verification scores (N, C) with each photo's own mountain's set to none (a copy)."""
    scores = np.array(scores, np.float32)
    scores[np.arange(len(targets)), np.asarray(targets, np.int64)] = 0.0
    return scores


def choose_weight(probs: np.ndarray, scores: np.ndarray, targets: np.ndarray, in_view: np.ndarray | None = None) -> float:
    """The weight with the best validation top-1; ties go to the better log-likelihood (confidence that
    means something), then to the smaller weight."""
    targets = np.asarray(targets, np.int64)
    if not len(targets):
        return DEFAULT_WEIGHT
    best: tuple[float, float] | None = None
    chosen = WEIGHTS[0]
    for weight in WEIGHTS:
        fused = fuse(probs, scores, weight, in_view)
        top1 = float(np.mean(fused.argmax(axis=1) == targets))
        likelihood = float(np.mean(np.log(np.clip(fused[np.arange(len(targets)), targets], 1e-9, 1.0))))
        if best is None or (top1, likelihood) > best:
            best, chosen = (top1, likelihood), weight
    return chosen
