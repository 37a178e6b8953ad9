"""Photo features for the mountain classifier, and their cache in the bucket.

The default features are exactly the 1280-d embedding the filter already computed and cached
(``embeddings/<backbone-id>/<id>.npy``), so a retrain reads vectors instead of photos. Richer
features (a larger input, earlier blocks, a spatial grid, flip averaging) come from the same
shared weights and are cached the same way under their own id, so they are computed once per
photo too. Whatever ``FeatureSpec`` a model was trained with is saved with it, and the predictor
recomputes exactly those features for an upload (both through ``mountainid.vision.features``). ``mountainid consolidate`` packs the
per-photo cache into a few shards, read first (``mountainid.training.shards``).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from mountainid.arrays import load_array
from mountainid.bucket import embedding_name, local_features_name
from mountainid.config import Settings
from mountainid.logs import Bar, event
from mountainid.store import BlobStore, NotFound
from mountainid.training import shards
from mountainid.vision.features import FeatureExtractor
from mountainid.vision.image import BadImage, decode_for_model
from mountainid.vision.keypoint_settings import EXTRACTOR_ID
from mountainid.vision.local import CorruptFeatures, LocalFeatures, extract_from_bytes

log = logging.getLogger(__name__)

IO_WORKERS = 16  # blob reads are latency-bound on GCS
AUGMENT_MARGIN = 1.15  # augmented views are cropped from a photo decoded this much larger


def augmented_view(data: bytes, size: int, seed: str, settings: Settings) -> np.ndarray:
    """A random crop (75-100 % of the side), mirror image and colour jitter of a photo.

    Deterministic in ``seed`` (photo id and view number), so augmented views can be cached like
    any other features and a retrain sees exactly the same views.
    """
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    big = decode_for_model(data, round(size * AUGMENT_MARGIN), settings.max_image_pixels, settings.max_image_bytes)
    side = big.shape[0]
    crop = int(side * rng.uniform(0.75, 1.0))
    left, top = rng.integers(0, side - crop + 1, size=2)
    patch = Image.fromarray(big[top:top + crop, left:left + crop].astype(np.uint8))
    view = np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR), np.float32)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    view = view * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)  # contrast and brightness
    grey = view.mean(axis=2, keepdims=True)
    view = grey + (view - grey) * rng.uniform(0.7, 1.3)  # saturation
    return np.clip(view, 0, 255).astype(np.float32)


def encode_vector(vector: np.ndarray, dtype: type = np.float32) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, dtype), allow_pickle=False)
    return buffer.getvalue()


def decode_vector(data: bytes, dim: int) -> np.ndarray | None:
    """The cached vector, or None if it is not a finite float vector of the expected length."""
    try:
        vector = load_array(data)
    except (ValueError, OSError, EOFError):
        return None
    if vector.shape != (dim,) or not np.issubdtype(vector.dtype, np.floating) or not np.isfinite(vector).all():
        return None
    return vector.astype(np.float32)


def load_features(store: BlobStore, photos: list[tuple[str, str]], extractor: FeatureExtractor,
                  settings: Settings, view: int = 0, tally: Counter[str] | None = None) -> tuple[np.ndarray, list[bool]]:
    """Features of (photo_id, object_name) pairs, from the cache where it holds a valid vector: the
    consolidated shards first (``mountainid.training.shards``), then the per-photo objects.

    ``view`` 0 is the photo as the predictor sees it; ``view`` n > 0 is augmented view n
    (:func:`augmented_view`), cached as ``<photo_id>-v<n>``.

    Missing or corrupt cache entries are recomputed from the photo and written back. Returns the
    features of the usable photos and, per input photo, whether it was usable (a photo that no
    longer decodes is logged and left out rather than failing the whole run).

    ``tally``, if given, receives the summary's counts (a caller that loads in chunks sums them and logs
    one line of its own; this one then drops to DEBUG).
    """
    def cache_name(photo_id: str) -> str:
        return embedding_name(extractor.feature_id, photo_id, view)

    dtype = np.float16 if extractor.spec.cut else np.float32  # activation maps are big: half precision
    codec = shards.Vectors(extractor.dim, dtype)
    bulk = shards.read(store, shards.vectors_set(extractor.feature_id, view), [p for p, _ in photos], codec)

    def read_cached(photo: tuple[str, str]) -> tuple[np.ndarray | None, bool]:
        if photo[0] in bulk.values:
            return bulk.values[photo[0]], False
        try:
            data = store.get(cache_name(photo[0]))
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
            data = store.get(object_name)
            if view:
                return augmented_view(data, extractor.input_size, f"{photo_id}/{view}", settings)
            return decode_for_model(data, extractor.input_size, settings.max_image_pixels, settings.max_image_bytes)
        except (BadImage, NotFound) as error:
            event(log, "photo left out of training", photo_id=photo_id, object_name=object_name,
                  reason=getattr(error, "reason", "missing"), level=logging.WARNING)
            return None

    vectors: list[np.ndarray | None] = [vector for vector, _ in cached]
    chunk = 64  # bounded memory: decode and embed a chunk at a time
    with ThreadPoolExecutor(IO_WORKERS) as pool, Bar(f"features{f' v{view}' if view else ''}", len(missing)) as bar:
        for start in range(0, len(missing), chunk):
            indices = missing[start:start + chunk]
            images = list(pool.map(decode, indices))
            good = [(i, image) for i, image in zip(indices, images, strict=True) if image is not None]
            if not good:
                continue
            # Rounded to the cache's precision, so a retrain from the cache sees the very same numbers.
            computed = extractor.features(np.stack([image for _, image in good])).astype(dtype).astype(np.float32)
            for (i, _), vector in zip(good, computed, strict=True):
                vectors[i] = vector
            list(pool.map(lambda item: store.put(cache_name(photos[item[0]][0]), encode_vector(item[1], dtype),
                                                 content_type="application/x-npy"),
                          zip([i for i, _ in good], computed, strict=True)))
            bar.advance(len(indices))
    usable = [vector is not None for vector in vectors]
    shards.rebuild(store, bulk.corrupt, {p: v for (p, _), v in zip(photos, vectors, strict=True) if v is not None},
                   codec)
    _summary("features ready", tally, feature_id=extractor.feature_id, view=view, photos=len(photos),
             counts=Counter(from_shards=len(bulk.values), cached=len(photos) - len(missing),
                            computed=sum(usable[i] for i in missing), unusable=usable.count(False)))
    matrix = np.stack([v for v in vectors if v is not None]) if any(usable) else np.zeros((0, extractor.dim),
                                                                                             np.float32)
    return matrix.astype(np.float32), usable


def load_local_features(store: BlobStore, photos: list[tuple[str, str]], settings: Settings,
                        tally: Counter[str] | None = None) -> list[LocalFeatures | None]:
    """Keypoints of (photo_id, object_name) pairs from the shards, then the filter's per-photo cache; a missing
    or corrupt entry is recomputed from the photo and written back (photos accepted before keypoints existed are
    backfilled). None for a photo that no longer decodes. ``tally``: as :func:`load_features`."""
    codec = shards.Keypoints()
    bulk = shards.read(store, shards.KEYPOINTS_SET, [p for p, _ in photos], codec)

    def one(photo: tuple[str, str]) -> tuple[LocalFeatures | None, str]:
        photo_id, object_name = photo
        if photo_id in bulk.values:
            return bulk.values[photo_id], "shard"
        name = local_features_name(photo_id)
        try:
            return LocalFeatures.from_bytes(store.get(name)), "cached"
        except NotFound:
            status = "computed"
        except CorruptFeatures as error:
            event(log, "corrupt keypoints recomputed", photo_id=photo_id, error=str(error), level=logging.WARNING)
            status = "recomputed"
        try:
            features = extract_from_bytes(store.get(object_name), settings.max_image_pixels, settings.max_image_bytes)
        except (BadImage, NotFound) as error:
            event(log, "photo left out of verification", photo_id=photo_id, object_name=object_name,
                  reason=getattr(error, "reason", "missing"), level=logging.WARNING)
            return None, "unusable"
        store.put(name, features.to_bytes(), content_type="application/octet-stream")
        return features, status

    with ThreadPoolExecutor(IO_WORKERS) as pool, Bar("keypoints", len(photos)) as bar:
        results = []
        for result in pool.map(one, photos):
            results.append(result)
            bar.advance()
    shards.rebuild(store, bulk.corrupt, {p: f for (p, _), (f, _) in zip(photos, results, strict=True) if f is not None},
                   codec)
    _summary("keypoints ready", tally, extractor=EXTRACTOR_ID, photos=len(photos),
             counts=Counter(status for _, status in results))
    return [features for features, _ in results]


def _summary(message: str, tally: Counter[str] | None, counts: Counter[str], **fields: Any) -> None:
    """A loader's summary line, or its counts added to the caller's ``tally`` (the line then at DEBUG)."""
    if tally is not None:
        tally.update(counts)
    # the counts' keys are what was counted, never event()'s own level/exc_info keywords
    event(log, message, level=logging.INFO if tally is None else logging.DEBUG, **fields, **counts)  # type: ignore[arg-type]
