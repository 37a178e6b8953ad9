"""Naming the mountain in one photo with one model version from the registry.

A :class:`Predictor` is built once per model version and never changes afterwards, so the web
service hot-swaps models by replacing one reference while requests keep using the old one.
One upload is decoded once (:meth:`Predictor.decode`) and every input is taken from that image. It
costs one pass of the shared 224 px backbone (ImageNet mountain score and the gallery embedding)
plus, only when the model was trained on richer features, one pass of each head's feature extractor (none
for the fast tier's, which that same pass gives); then its heads (a version may serve two, their
probabilities averaged: ``HEAD_FILES``), and the keypoint verification against the training photos
(``mountainid.verification``) whose score is fused with the head's probabilities. Keypoints and their
verification run on a second thread beside the network passes (TensorFlow and OpenCV release the
GIL: on two cores the two chains overlap). The best-verified
training photo and its matched points are the answer's evidence. A gallery bigger than
``Settings.gallery_memory_mb`` is not loaded: each upload is verified against a shortlist (its most
similar training photos among the likeliest mountains) whose keypoints are read from the bucket.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mountainid.arrays import in_batches, load_arrays
from mountainid.bucket import local_features_name, model_file
from mountainid.catalog import Catalog, Mountain
from mountainid.config import Settings
from mountainid.logs import event
from mountainid.registry import ModelLoadError, Registry
from mountainid.store import BlobStore, NotFound
from mountainid.verification import (
    EVIDENCE_INLIERS,
    VERIFICATION_FILE,
    Gallery,
    Verified,
    fuse,
    in_view_matrix,
    shared,
    sure_thresholds,
    with_evidence,
)
from mountainid.vision import local
from mountainid.vision.backbone import INPUT_SIZE, get_backbone
from mountainid.vision.features import FeatureExtractor, FeatureSpec
from mountainid.vision.image import load_image, to_model_input
from mountainid.vision.layers import custom_objects
from mountainid.vision.local import CorruptFeatures, LocalFeatures
from mountainid.vision.terrain import mountain_score

log = logging.getLogger(__name__)

TOP_K = 3
SIMILAR = 4

EVIDENCE_LINES = 40        # matched points drawn, spread over the inliers
SHORTLIST = 24             # a gallery too big for memory: photos verified per upload (read from the bucket)
SHORTLIST_CLASSES = 3      # ... the most similar ones among the classifier's likeliest mountains
# A version's heads: its own, then a companion trained beside it on the same photos with other features
# (config.json "companions"; training.job.JobConfig.companion). The answer averages their probabilities.
HEAD_FILES = ("model.keras", "companion.keras")


@dataclass(frozen=True)
class Guess:
    slug: str
    name: str
    probability: float


@dataclass(frozen=True)
class SimilarPhoto:
    photo_id: str
    slug: str
    object_name: str  # accepted/<slug>/<id>.jpg, readable through the store
    owner: str
    license: str
    title: str
    page_url: str
    similarity: float


@dataclass(frozen=True)
class Evidence:
    """The training photo of the best guess that matched the upload best, and where the points agree."""

    photo: SimilarPhoto
    inliers: int
    matches: list[list[float]]  # [upload x, y, photo x, y], each as a fraction of its image's width/height
    upload_size: tuple[int, int]
    photo_size: tuple[int, int]


@dataclass(frozen=True)
class Prediction:
    model_version: str
    is_mountain: bool
    mountain_score: float
    guesses: list[Guess]
    sure: bool
    similar: list[SimilarPhoto]
    evidence: Evidence | None = None
    also_in_view: list[str] = field(default_factory=list)  # mountains in the answer's verified view (names)
    verified: bool = False  # the gallery backs the answer (it was held to unknown_threshold, else unverified_threshold)

    def to_dict(self) -> dict:
        return asdict(self)


class Predictor:
    """One loaded model version; immutable after load, so hot-swap = replacing a reference."""

    def __init__(self, version: str, labels: list[str], names: dict[str, str], mountains: dict[str, dict],
                 info: dict, heads: list,
                 extractors: list[FeatureExtractor], gallery: np.ndarray, gallery_rows: list[dict],
                 verifier: Gallery | None, settings: Settings, keypoint_store: BlobStore | None = None) -> None:
        import tensorflow as tf

        self.version = version
        self.labels = labels
        self.names = names
        # Where the model's mountains are, as it was trained (folder mountains included); empty for old versions.
        self.catalog = Catalog(version, tuple(Mountain(**m) for m in mountains.values()))
        self.info = info
        # "Sure" at unknown_threshold when the gallery verifies the answer, else at unverified_threshold
        # (one threshold for both in versions before 2026-12-07's).
        self.unknown_threshold = float(info["unknown_threshold"])
        self.unverified_threshold = float(info.get("unverified_threshold", self.unknown_threshold))
        self.extractors = extractors  # one per head, in HEAD_FILES order
        self.backbone = get_backbone(settings.weights)
        self.settings = settings
        self._gallery = gallery
        self._gallery_rows = gallery_rows
        # Where its training photos came from, so the site credits them rightly (a Flickr photo has a page).
        self.photo_sources = frozenset("flickr" if row.get("page_url") else "folder" for row in gallery_rows)
        # Verification: the whole gallery in memory, or (keypoint_store) a shortlist read per request;
        # neither for versions trained before verification, where the head answers alone.
        self.verifier = verifier
        self._keypoint_store = keypoint_store
        self.fusion_weight = float(info.get("fusion_weight", 0.0))
        self.temperature = float(info.get("temperature", 1.0))  # fitted with the weight; older versions have none
        self.in_view = in_view_matrix(info.get("also_in_view", {}), labels)  # learnt from its gallery
        self._row_of = {row["photo_id"]: i for i, row in enumerate(gallery_rows)}
        self._gallery_by_slug = {slug: np.array([i for i, row in enumerate(gallery_rows) if row["slug"] == slug],
                                                np.intp) for slug in labels}
        # Keypoints beside the network passes: one thread per prediction the site runs at once.
        self._keypoint_threads = ThreadPoolExecutor(max(1, settings.max_concurrent_predictions),
                                                    thread_name_prefix="keypoints")
        # Each head's input width is its own: an extractor served from the backbone's pass is never built.
        self._heads = [tf.function(lambda x, head=head: head(x, training=False),
                                   input_signature=[tf.TensorSpec([None, head.inputs[0].shape[-1]], tf.float32)])
                       for head in heads]

    @classmethod
    def load(cls, store: BlobStore, version: str, settings: Settings) -> Predictor:
        """Load and check models/<version>/; raises ModelLoadError on any failure."""
        started = time.perf_counter()
        registry = Registry(store)
        if not registry.is_complete(version):
            raise ModelLoadError(version, "not a complete model version (COMPLETE marker missing)")
        try:
            info = registry.info(version)
            config = json.loads(registry.read(version, "config.json"))
            labels_doc = json.loads(registry.read(version, "labels.json"))
            gallery = load_arrays(registry.read(version, "gallery.npz"))["embeddings"]
            gallery_rows = json.loads(registry.read(version, "gallery.json"))
            companions = config.get("companions", [])  # none before 2026-12-07
            heads = [load_keras(registry.read(version, name)) for name in HEAD_FILES[:1 + len(companions)]]
            verifier, keypoint_store = None, None
            if store.exists(model_file(version, VERIFICATION_FILE)):
                if info.get("gallery", {}).get("keypoints_mb", 0) <= settings.gallery_memory_mb:
                    verifier = Gallery.from_bytes(registry.read(version, VERIFICATION_FILE))
                else:
                    keypoint_store = store
            trained = [config, *companions]
            extractors = [FeatureExtractor(settings, FeatureSpec.from_dict(member["features"])) for member in trained]
        except ModelLoadError:
            raise
        except Exception as error:  # keras, json, numpy and the store raise many kinds
            raise ModelLoadError(version, f"cannot load ({type(error).__name__}: {error})") from error
        for member, extractor in zip(trained, extractors, strict=True):
            if extractor.feature_id != member["feature_id"]:
                raise ModelLoadError(version, f"trained on features {member['feature_id']} but these weights give "
                                              f"{extractor.feature_id} (check MOUNTAINID_WEIGHTS)")
        predictor = cls(version, list(labels_doc["labels"]), dict(labels_doc["names"]),
                        dict(labels_doc.get("mountains", {})), info, heads, extractors,
                        gallery.astype(np.float32), gallery_rows, verifier, settings, keypoint_store)
        predictor._probe()
        event(log, "model loaded", version=version, classes=len(predictor.labels),
              verification="in memory" if verifier else "shortlist from the bucket" if keypoint_store else "none",
              seconds=round(time.perf_counter() - started, 2))
        return predictor

    def _probe(self) -> None:
        """One prediction on a blank image, the way uploads are answered, so a broken model fails at load, not on
        a user."""
        try:
            probs = self._classify(Image.new("RGB", (INPUT_SIZE, INPUT_SIZE), (127, 127, 127)))[2]
        except Exception as error:
            raise ModelLoadError(self.version, f"probe prediction failed ({error})") from error
        if probs.shape != (1, len(self.labels)) or not np.isfinite(probs).all():
            raise ModelLoadError(self.version, f"probe prediction gave shape {probs.shape} for "
                                               f"{len(self.labels)} labels")

    def probabilities(self, features: list[np.ndarray]) -> np.ndarray:
        """Class probabilities (N, labels) from each head's features of the same photos (N, its dim), averaged."""
        return np.mean([in_batches(head, np.asarray(x, np.float32)) for head, x in zip(self._heads, features, strict=True)],
                       axis=0)

    def _classify(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The network half of an answer: the backbone's one pass (ImageNet scores, gallery embedding) and the
        heads' probabilities, each head on its features of the same decoded image."""
        model_input = to_model_input(image, INPUT_SIZE)
        imagenet, embedding, maps = self.backbone.analyze_all(model_input)
        return imagenet, embedding, self.probabilities(self.features(image, model_input, embedding, maps))

    def features(self, image: Image.Image, model_input: np.ndarray, embedding: np.ndarray,
                 maps: np.ndarray) -> list[np.ndarray]:
        """Each head's features of one decoded upload, given the backbone's 224 px input and what its pass gave."""
        found = []
        for extractor in self.extractors:
            if extractor.spec.is_filter_embedding:
                found.append(embedding)
            elif extractor.in_backbone_pass:
                found.append(maps)
            else:
                size = extractor.input_size
                found.append(extractor.features(to_model_input(image, size) if size != INPUT_SIZE else model_input))
        return found

    def predict(self, image_bytes: bytes) -> Prediction:
        """Everything the site shows for one upload. Raises BadImage for unusable bytes."""
        return self.predict_image(self.decode(image_bytes))

    def decode(self, image_bytes: bytes) -> Image.Image:
        """The upload's one decode (raises BadImage): upright RGB, its shorter side reduced to no less
        than the largest input taken from it (the keypoints' MAX_SIDE), so a 40 Mpx photo is never
        held at full size for long, nor more than once."""
        return load_image(image_bytes, self.settings.max_image_pixels, self.settings.max_image_bytes,
                          draft_size=local.MAX_SIDE)

    def predict_image(self, image: Image.Image) -> Prediction:
        """:meth:`predict` of an upload already decoded by :meth:`decode` (the site reuses the image)."""
        matching = self._keypoint_threads.submit(self._match, image, self.verifier) if self.verifies else None
        imagenet, embedding, probs = self._classify(image)
        score = float(mountain_score(imagenet)[0])
        keypoints, verified = matching.result() if matching else (None, [])
        gallery = self.verifier or (self._shortlist(probs[0], embedding[0]) if self._keypoint_store else None)
        if gallery and self.verifier is None and keypoints is not None:  # the shortlist needed the head's answer
            verified = gallery.verify(keypoints)
        # Each mountain's evidence credited to those in its view too (once, here: fuse gets it already shared).
        scores = shared(gallery.scores(verified, len(self.labels))[None] if gallery
                        else np.zeros((1, len(self.labels)), np.float32), self.in_view)[0]
        if gallery:
            probs = fuse(probs, scores[None], self.fusion_weight, temperature=self.temperature)
        probs = probs[0]
        order = np.argsort(-probs)[:TOP_K]
        evidence = bool(with_evidence(probs[None], scores[None])[0])  # the answer's view was verified (scores shared)
        guesses = [Guess(self.labels[i], self.names.get(self.labels[i], self.labels[i]), float(probs[i]))
                   for i in order]
        return Prediction(self.version, score >= self.settings.filter_threshold, score, guesses,
                          bool(probs[order[0]] >= (self.unknown_threshold if evidence else self.unverified_threshold)),
                          self._similar(embedding[0], guesses[0].slug),
                          self._evidence(gallery, verified, int(order[0]), keypoints, embedding[0]),
                          [self.names.get(self.labels[i], self.labels[i])
                           for i in np.flatnonzero(self.in_view[order[0]])] if evidence else [], evidence)

    @staticmethod
    def _match(image: Image.Image, gallery: Gallery | None) -> tuple[LocalFeatures, list[Verified]]:
        """The upload's keypoints, and their verification when the gallery is known before the head
        answers (in memory); a shortlist is verified by the caller once it is chosen."""
        keypoints = local.extract(local.grey_for_keypoints(image))
        return keypoints, gallery.verify(keypoints) if gallery else []

    @property
    def verifies(self) -> bool:
        """Whether this version checks answers against its training photos (in memory or from the bucket)."""
        return self.verifier is not None or self._keypoint_store is not None

    def verified_probabilities(self, probs: np.ndarray,
                               keypoints: list[LocalFeatures | None]) -> tuple[np.ndarray, np.ndarray]:
        """The head's probabilities (N, labels) fused with verification against the whole gallery, as
        :meth:`predict` answers when the gallery fits in memory (evaluation, the training gate), and each
        answer's "sure" threshold."""
        gallery = self.verifier
        if gallery is None and self._keypoint_store is not None:  # a batch job: load it for this call only
            gallery = Gallery.from_bytes(Registry(self._keypoint_store).read(self.version, VERIFICATION_FILE))
        if gallery is None:
            return probs, np.full(len(probs), self.unverified_threshold)
        scores = gallery.score_many(keypoints, len(self.labels))
        fused = fuse(probs, scores, self.fusion_weight, self.in_view, self.temperature)
        return fused, sure_thresholds(fused, scores, self.in_view, self.unknown_threshold, self.unverified_threshold)

    def _shortlist(self, probs: np.ndarray, embedding: np.ndarray) -> Gallery:
        """A gallery of the training photos most like the upload among its likeliest mountains, their
        keypoints read from the bucket (the filter's cache): the work per request stays bounded."""
        rows = np.concatenate([self._gallery_by_slug[self.labels[i]] for i in np.argsort(-probs)[:SHORTLIST_CLASSES]])
        chosen = rows[np.argsort(-(self._gallery[rows] @ _unit(embedding)))[:SHORTLIST]]
        photo_ids = [self._gallery_rows[row]["photo_id"] for row in chosen]

        store = self._keypoint_store
        assert store is not None  # only called when the gallery is left in the bucket

        def read(photo_id: str) -> LocalFeatures | None:
            try:
                return LocalFeatures.from_bytes(store.get(local_features_name(photo_id)))
            except (NotFound, CorruptFeatures):  # the next training run repairs it; this request does without
                return None

        with ThreadPoolExecutor(8) as pool:
            found = [(photo_id, row, f) for photo_id, row, f in zip(photo_ids, chosen, pool.map(read, photo_ids),
                                                                      strict=True) if f is not None]
        index = {slug: i for i, slug in enumerate(self.labels)}
        return Gallery([p for p, _, _ in found], [index[self._gallery_rows[row]["slug"]] for _, row, _ in found],
                       [f for _, _, f in found], storable=False)

    def _evidence(self, gallery: Gallery | None, verified: list[Verified], label: int,
                  keypoints: LocalFeatures | None, embedding: np.ndarray) -> Evidence | None:
        """The best-verified training photo of the answer, if it agrees on enough points to show."""
        if gallery is None or keypoints is None:
            return None
        match = next((v for v in verified if gallery.classes[v.row] == label), None)
        row = self._row_of.get(gallery.photo_ids[match.row]) if match else None
        if match is None or row is None or match.inliers < EVIDENCE_INLIERS:
            return None
        photo_size = (int(gallery.sizes[match.row][0]), int(gallery.sizes[match.row][1]))
        spread = match.pairs[np.linspace(0, len(match.pairs) - 1, min(EVIDENCE_LINES, len(match.pairs))).astype(int)]
        scale = np.array([*keypoints.size, *photo_size], np.float32)
        return Evidence(self._similar_photo(row, embedding), match.inliers, np.round(spread / scale, 4).tolist(),
                        keypoints.size, photo_size)

    def _similar(self, embedding: np.ndarray, slug: str) -> list[SimilarPhoto]:
        """Training photos of this mountain nearest the upload (cosine similarity)."""
        rows = self._gallery_by_slug.get(slug)
        if rows is None or not len(rows):
            return []
        similarity = self._gallery[rows] @ _unit(embedding)
        return [self._similar_photo(rows[i], embedding) for i in np.argsort(-similarity)[:SIMILAR]]

    def _similar_photo(self, row: int, embedding: np.ndarray) -> SimilarPhoto:
        return SimilarPhoto(**self._gallery_rows[row], similarity=float(self._gallery[row] @ _unit(embedding)))


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-6)


def load_keras(data: bytes):
    """Keras loads from a path only: go through a private temporary file."""
    import keras

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        path.write_bytes(data)
        return keras.models.load_model(path, compile=False, custom_objects=custom_objects())
