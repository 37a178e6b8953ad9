"""Photo features for the mountain classifier, and their cache in the bucket.

The default features are exactly the 1280-d embedding the filter already computed and cached
(``embeddings/<backbone-id>/<id>.npy``), so a retrain reads vectors instead of photos. Richer
features (a larger input, earlier blocks, a spatial grid, flip averaging) come from the same
shared weights and are cached the same way under their own id, so they are computed once per
photo too. Whatever :class:`FeatureSpec` a model was trained with is saved with it, and the
predictor recomputes exactly those features for an upload.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from mountainid.config import Settings
from mountainid.filter import embedding_name
from mountainid.logs import event
from mountainid.store import BlobStore, NotFound
from mountainid.vision.backbone import EMBEDDING_DIM, INPUT_SIZE, Backbone, get_backbone
from mountainid.vision.image import BadImage, decode_for_model

log = logging.getLogger(__name__)

IO_WORKERS = 16  # blob reads are latency-bound on GCS


@dataclass(frozen=True)
class FeatureSpec:
    """How a photo becomes a feature vector. The default is the filter's cached embedding."""

    input_size: int = INPUT_SIZE
    flip: bool = False  # average the features of the photo and its mirror image
    layers: tuple[str, ...] = ()  # extra MobileNetV2 layers whose pooled outputs are appended
    grid: int = 1  # >1: also pool the last feature map over a grid x grid layout (keeps where things are)

    @property
    def is_filter_embedding(self) -> bool:
        return self == FeatureSpec()

    def to_dict(self) -> dict:
        return asdict(self) | {"layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        return cls(int(data["input_size"]), bool(data["flip"]), tuple(data["layers"]), int(data["grid"]))

    def tag(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class FeatureExtractor:
    """Computes the features of a :class:`FeatureSpec` with the shared weights (thread-safe)."""

    weights: str
    spec: FeatureSpec = field(default_factory=FeatureSpec)

    def __post_init__(self) -> None:
        self.backbone: Backbone = get_backbone(self.weights)  # also checks the weights file exists
        if self.spec.is_filter_embedding:
            self.feature_id = self.backbone.backbone_id
            self._forward = lambda images: self.backbone.analyze(images)[1]
            self.dim = EMBEDDING_DIM
            return
        import keras
        import tensorflow as tf

        size = self.spec.input_size
        self.feature_id = f"mobilenet_v2_{size}_{self.backbone.fingerprint}-{self.spec.tag()}"
        base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                              weights="imagenet" if self.weights == "imagenet" else None)
        if self.weights != "imagenet":
            base.load_weights(self.weights, skip_mismatch=True)  # the full model's file; the top is unused
        pooled = [keras.ops.mean(base.get_layer(name).output, axis=(1, 2)) for name in self.spec.layers]
        last = base.get_layer("out_relu").output
        pooled.append(keras.ops.mean(last, axis=(1, 2)))  # the 1280-d embedding
        if self.spec.grid > 1:
            cells = keras.layers.AveragePooling2D(last.shape[1] // self.spec.grid)(last)
            pooled.append(keras.layers.Flatten()(cells))
        model = keras.Model(base.input, pooled)
        spec = tf.TensorSpec([None, size, size, 3], tf.float32)

        def forward(images: tf.Tensor) -> tf.Tensor:
            views = [images, tf.reverse(images, axis=[2])] if self.spec.flip else [images]
            outs = []
            for view in views:
                parts = model(view / 127.5 - 1.0, training=False)
                parts = parts if isinstance(parts, list | tuple) else [parts]
                outs.append(tf.concat([tf.math.l2_normalize(p, axis=1) for p in parts], axis=1))
            return tf.add_n(outs) / len(outs)

        compiled = tf.function(forward, input_signature=[spec])
        self._forward = lambda images: compiled(np.asarray(images, np.float32)).numpy()
        self.dim = int(self._forward(np.zeros((1, size, size, 3), np.float32)).shape[1])

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def features(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """float32 (N, size, size, 3) in [0, 255] -> (N, dim)."""
        if images.ndim == 3:
            images = images[None]
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([self._forward(images[start:start + batch_size])
                               for start in range(0, len(images), batch_size)]).astype(np.float32)


def encode_vector(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, np.float32), allow_pickle=False)
    return buffer.getvalue()


def decode_vector(data: bytes, dim: int) -> np.ndarray | None:
    """The cached vector, or None if it is not a finite float vector of the expected length."""
    try:
        vector = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if vector.shape != (dim,) or not np.issubdtype(vector.dtype, np.floating) or not np.isfinite(vector).all():
        return None
    return vector.astype(np.float32)


def load_features(store: BlobStore, photos: list[tuple[str, str]], extractor: FeatureExtractor,
                  settings: Settings) -> tuple[np.ndarray, list[bool]]:
    """Features of (photo_id, object_name) pairs, from the cache where it holds a valid vector.

    Missing or corrupt cache entries are recomputed from the photo and written back. Returns the
    features of the usable photos and, per input photo, whether it was usable (a photo that no
    longer decodes is logged and left out rather than failing the whole run).
    """
    def read_cached(photo: tuple[str, str]) -> tuple[np.ndarray | None, bool]:
        try:
            data = store.get(embedding_name(extractor.feature_id, photo[0]))
        except NotFound:
            return None, False
        vector = decode_vector(data, extractor.dim)
        return vector, vector is None  # (vector, corrupt)

    with ThreadPoolExecutor(IO_WORKERS) as pool:
        cached = list(pool.map(read_cached, photos))
    for (photo_id, _), (_, corrupt) in zip(photos, cached, strict=True):
        if corrupt:
            event(log, "corrupt embedding recomputed", photo_id=photo_id, feature_id=extractor.feature_id,
                  level=logging.WARNING)
    missing = [i for i, (vector, _) in enumerate(cached) if vector is None]

    def decode(index: int) -> np.ndarray | None:
        photo_id, object_name = photos[index]
        try:
            return decode_for_model(store.get(object_name), extractor.input_size, settings.max_image_pixels,
                                    settings.max_image_bytes)
        except (BadImage, NotFound) as error:
            event(log, "photo left out of training", photo_id=photo_id, object_name=object_name,
                  reason=getattr(error, "reason", "missing"), level=logging.WARNING)
            return None

    vectors: list[np.ndarray | None] = [vector for vector, _ in cached]
    chunk = 64  # bounded memory: decode and embed a chunk at a time
    with ThreadPoolExecutor(IO_WORKERS) as pool:
        for start in range(0, len(missing), chunk):
            indices = missing[start:start + chunk]
            images = list(pool.map(decode, indices))
            good = [(i, image) for i, image in zip(indices, images, strict=True) if image is not None]
            if not good:
                continue
            computed = extractor.features(np.stack([image for _, image in good]))
            for (i, _), vector in zip(good, computed, strict=True):
                vectors[i] = vector
            list(pool.map(lambda item: store.put(embedding_name(extractor.feature_id, photos[item[0]][0]),
                                                 encode_vector(item[1]), content_type="application/x-npy"),
                          zip([i for i, _ in good], computed, strict=True)))
    usable = [vector is not None for vector in vectors]
    event(log, "features ready", feature_id=extractor.feature_id, photos=len(photos),
          cached=len(photos) - len(missing), computed=sum(usable[i] for i in missing),
          unusable=usable.count(False))
    matrix = np.stack([v for v in vectors if v is not None]) if any(usable) else np.zeros((0, extractor.dim),
                                                                                             np.float32)
    return matrix.astype(np.float32), usable
