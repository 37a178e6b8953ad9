"""Feature caches read in bulk: the cached features of many photos in one object, a shard.

The filter caches one object per accepted photo (its embedding, its keypoints). A training run over tens
of thousands of photos would read as many objects, each a round trip to Cloud Storage, so
``mountainid consolidate`` packs them into a few shards, ``features/<set>/shards/<s>-of-<n>.npz`` (a set
is one feature id and view, or the keypoint extractor), and the loaders read those first, then
per-photo objects only for the photos no shard holds (accepted since the last consolidation).

The per-photo objects stay the source of truth. A photo belongs to shard ``hash(id) % n``, so a shard
that fails its checksum or does not parse is known to lack exactly its photos: they are read one by one
and the shard is rebuilt from them, never trusted. A shard may hold photos that left accepted/: only the
photos asked for are taken out of it.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
import zipfile
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

from mountainid.arrays import load_arrays
from mountainid.bucket import parse_shard_name, shard_name, shard_prefix
from mountainid.logs import event
from mountainid.store import BlobStore, NotFound
from mountainid.vision.keypoint_settings import EXTRACTOR_ID, KEYPOINTS
from mountainid.vision.local import LocalFeatures

log = logging.getLogger(__name__)

SHARD_WORKERS = 4  # shards are large: a few in flight keep the link busy and memory bounded
_CHECKSUM = "sha256"

T = TypeVar("T")


class CorruptShard(ValueError):
    """A shard that cannot be trusted (unreadable, checksum mismatch, wrong shapes, foreign ids)."""


def vectors_set(feature_id: str, view: int = 0) -> str:
    """The set of a feature id's vectors of one view (0: the photo; n: augmented view n)."""
    return f"{feature_id}-v{view}" if view else feature_id


KEYPOINTS_SET = EXTRACTOR_ID


def shard_of(key: str, count: int) -> int:
    """A photo's shard among ``count``: a stable hash (not Python's salted hash())."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    set_id: str
    index: int
    count: int

    @property
    def name(self) -> str:
        return shard_name(self.set_id, self.index, self.count)

    def holds(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index

    def may_share_photos_with(self, other: Shard) -> bool:
        """Whether a photo can belong to both (h = a mod n and h = b mod m are solvable together)."""
        return (self.index - other.index) % math.gcd(self.count, other.count) == 0


class Codec(Protocol[T]):
    """How one kind of cached feature is packed into a shard's arrays."""

    @property
    def compressed(self) -> bool: ...

    @property
    def row_bytes(self) -> int:
        """About the bytes one photo adds to a shard, to size shards."""
        ...

    def pack(self, values: list[T]) -> dict[str, np.ndarray]: ...

    def unpack(self, arrays: dict[str, np.ndarray], count: int) -> list[T]:
        """The ``count`` values back; raises ValueError or KeyError for arrays it did not write."""
        ...


@dataclass(frozen=True)
class Vectors:
    """Feature vectors as one matrix, in the precision of their per-photo cache."""

    dim: int
    dtype: type = np.float32
    compressed: bool = False  # float noise does not compress

    @property
    def row_bytes(self) -> int:
        return self.dim * np.dtype(self.dtype).itemsize

    def pack(self, values: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {"matrix": np.stack(values).astype(self.dtype) if values else np.zeros((0, self.dim), self.dtype)}

    def unpack(self, arrays: dict[str, np.ndarray], count: int) -> list[np.ndarray]:
        matrix = arrays["matrix"]
        if (matrix.shape != (count, self.dim) or not np.issubdtype(matrix.dtype, np.floating)
                or not np.isfinite(matrix).all()):
            raise ValueError(f"a {matrix.shape} {matrix.dtype} matrix, expected ({count}, {self.dim}) finite floats")
        return list(matrix.astype(np.float32, copy=False))


@dataclass(frozen=True)
class Keypoints:
    """Local features of many photos: their arrays concatenated, with offsets."""

    compressed: bool = True  # as the per-photo cache
    row_bytes: int = KEYPOINTS * (128 + 8) // 2  # uint8 descriptors and float32 points, compressed about 2 x

    def pack(self, values: list[LocalFeatures]) -> dict[str, np.ndarray]:
        return {"points": np.concatenate([v.points for v in values] + [np.zeros((0, 2), np.float32)]),
                "descriptors": np.concatenate([v.descriptors for v in values] + [np.zeros((0, 128), np.uint8)]),
                "offsets": np.cumsum([0] + [len(v) for v in values]).astype(np.int64),
                "sizes": np.asarray([v.size for v in values], np.int32).reshape(-1, 2)}

    def unpack(self, arrays: dict[str, np.ndarray], count: int) -> list[LocalFeatures]:
        points, descriptors, offsets, sizes = (arrays[k] for k in ("points", "descriptors", "offsets", "sizes"))
        if (offsets.shape != (count + 1,) or offsets[0] != 0 or (np.diff(offsets) < 0).any()
                or points.shape != (offsets[-1], 2) or descriptors.shape != (offsets[-1], 128)
                or descriptors.dtype != np.uint8 or sizes.shape != (count, 2)):
            raise ValueError(f"keypoint arrays of the wrong shapes: points {points.shape}, descriptors "
                             f"{descriptors.shape} {descriptors.dtype}, offsets {offsets.shape}, sizes {sizes.shape}")
        points = points.astype(np.float32)
        return [LocalFeatures(points[a:b], descriptors[a:b], (int(w), int(h)))
                for a, b, (w, h) in zip(offsets[:-1], offsets[1:], sizes, strict=True)]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def encode(values: dict[str, T], codec: Codec[T]) -> bytes:
    """A shard's bytes: the ids, the codec's arrays and a checksum over all of them."""
    keys = sorted(values)
    arrays = {"ids": np.asarray(keys, dtype=str), **codec.pack([values[k] for k in keys])}
    buffer = io.BytesIO()
    # numpy's stubs read ** as its allow_pickle keyword too; these keys are array names only
    (np.savez_compressed if codec.compressed else np.savez)(buffer, **arrays, **{_CHECKSUM: np.asarray(_digest(arrays))})  # type: ignore[arg-type]
    return buffer.getvalue()


def decode(shard: Shard, data: bytes, codec: Codec[T]) -> dict[str, T]:
    """id -> value of every photo in the shard; raises CorruptShard for anything :func:`encode` did not write."""
    try:
        arrays = load_arrays(data)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise CorruptShard(f"unreadable ({type(error).__name__}: {error})") from None
    checksum = arrays.pop(_CHECKSUM, None)
    if checksum is None or checksum.shape != () or str(checksum) != _digest(arrays):
        raise CorruptShard("checksum mismatch")
    ids = arrays.pop("ids", np.zeros(0, np.int8))
    keys = ids.tolist()
    if ids.ndim != 1 or ids.dtype.kind != "U" or len(set(keys)) != len(keys) or not all(map(shard.holds, keys)):
        raise CorruptShard("ids that are not this shard's")
    try:
        return dict(zip(keys, codec.unpack(arrays, len(keys)), strict=True))
    except (KeyError, ValueError) as error:
        raise CorruptShard(str(error)) from None


def listed(store: BlobStore, set_id: str) -> list[Shard]:
    """The shards of a set in the bucket (while a consolidation changes their number, both layouts)."""
    found = []
    for name in store.list_names(shard_prefix(set_id)):
        parsed = parse_shard_name(set_id, name)
        if parsed and parsed[0] < parsed[1]:
            found.append(Shard(set_id, *parsed))
    return found


def read_valid(store: BlobStore, shard: Shard, codec: Codec[T],
               keep: AbstractSet[str] | None = None) -> dict[str, T] | None:
    """The values of ``keep`` (None: all) the shard holds; None (logged) for a shard that cannot be trusted."""
    try:
        values = decode(shard, store.get(shard.name), codec)
    except NotFound:  # replaced by a consolidation since it was listed: its photos are read one by one
        return {}
    except CorruptShard as error:
        event(log, "corrupt shard not trusted", shard=shard.name, error=str(error), level=logging.WARNING)
        return None
    if keep is None or keep >= set(values):
        return values
    # Copies: a value of a shard views the shard's arrays, and one kept view would keep all of them alive.
    return {key: copy.deepcopy(value) for key, value in values.items() if key in keep}


@dataclass
class Bulk(Generic[T]):
    """What the shards of one set hold of the photos asked for."""

    values: dict[str, T]
    corrupt: list[Shard]  # to rebuild (:func:`rebuild`) once their photos were read one by one


def read(store: BlobStore, set_id: str, keys: Iterable[str], codec: Codec[T]) -> Bulk[T]:
    """The values of ``keys`` held by the set's valid shards, read a few shards at a time (only the shards
    a wanted photo hashes to: a backfill chunk or a split reads its part, not the whole set)."""
    wanted = set(keys)
    every = listed(store, set_id) if wanted else []
    homes = {count: {shard_of(key, count) for key in wanted} for count in {shard.count for shard in every}}
    found = [shard for shard in every if shard.index in homes[shard.count]]  # only those that may hold one
    bulk: Bulk[T] = Bulk({}, [])
    with ThreadPoolExecutor(SHARD_WORKERS) as pool:
        for shard, values in zip(found, pool.map(lambda s: read_valid(store, s, codec, wanted), found), strict=True):
            if values is None:
                bulk.corrupt.append(shard)
            else:
                bulk.values.update(values)
    return bulk


def write(store: BlobStore, shard: Shard, values: dict[str, T], codec: Codec[T]) -> int:
    """Write the shard with those of ``values`` that belong to it; returns how many."""
    own = {key: value for key, value in values.items() if shard.holds(key)}
    store.put(shard.name, encode(own, codec), content_type="application/octet-stream")
    return len(own)


def rebuild(store: BlobStore, corrupt: list[Shard], values: dict[str, T], codec: Codec[T]) -> None:
    """Replace corrupt shards by the values just read from per-photo objects (the photos asked for; the
    others of the shard are read one by one until the next consolidation)."""
    for shard in corrupt:
        event(log, "corrupt shard rebuilt", shard=shard.name, photos=write(store, shard, values, codec),
              level=logging.WARNING)
