"""``mountainid consolidate``: the per-photo feature caches of the accepted photos packed into shards.

A training run then reads a few large objects instead of one per photo (``mountainid.training.shards``).
It runs at the end of a backfill (which calls :func:`consolidate`) or on its own, e.g. before a big
retrain. It reads what the current shards hold plus the per-photo objects written since, so running it
again costs little more than the photos accepted meanwhile. The per-photo objects are kept: they stay
the source of truth, and a photo accepted later is read from its own object until the next run.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from mountainid.arrays import load_array
from mountainid.bucket import (
    EMBEDDINGS,
    LOCAL_FEATURES_FOLDER,
    parse_embedding_name,
    parse_local_features_name,
    shard_prefix,
)
from mountainid.config import Settings
from mountainid.logs import Bar, event
from mountainid.store import BlobStore, NotFound
from mountainid.training import shards
from mountainid.training.dataset import Example, list_accepted
from mountainid.training.features import IO_WORKERS, decode_vector
from mountainid.vision.local import CorruptFeatures, LocalFeatures

log = logging.getLogger(__name__)

_Reader = Callable[[bytes], object]


def consolidate(store: BlobStore, settings: Settings, examples: list[Example] | None = None,
                feature_ids: Collection[str] | None = None) -> dict[str, int]:
    """Shard the keypoints and every embedding set (or those of ``feature_ids``, all views) cached for the
    accepted photos (``examples``: a listing the caller already made); returns the photos sharded per set."""
    accepted = {e.photo_id for e in (list_accepted(store) if examples is None else examples)}
    sets: dict[str, tuple[shards.Codec, _Reader, dict[str, str]]] = {}
    for set_id, objects in _cached_vectors(store, accepted, feature_ids).items():
        codec = _vectors_codec(store, objects.values())
        if codec is not None:
            sets[set_id] = (codec, partial(decode_vector, dim=codec.dim), objects)
    keypoints = {photo_id: name for name in store.list_names(LOCAL_FEATURES_FOLDER)
                 if (photo_id := parse_local_features_name(name)) in accepted}
    sets[shards.KEYPOINTS_SET] = (shards.Keypoints(), _keypoints_or_none, keypoints)
    return {set_id: _consolidate_set(store, settings, set_id, *parts, accepted) for set_id, parts in sets.items()}


def _cached_vectors(store: BlobStore, accepted: set[str],
                    feature_ids: Collection[str] | None) -> dict[str, dict[str, str]]:
    """set id -> photo id -> per-photo object, for every embeddings/<feature_id>/ folder (or those of
    ``feature_ids``: one listing each) and view."""
    sets: dict[str, dict[str, str]] = defaultdict(dict)
    prefixes = [EMBEDDINGS] if feature_ids is None else [f"{EMBEDDINGS}{fid}/" for fid in sorted(set(feature_ids))]
    for name in (name for prefix in prefixes for name in store.list_names(prefix)):
        parsed = parse_embedding_name(name)
        if parsed is not None and parsed[1] in accepted:
            feature_id, photo_id, view = parsed
            sets[shards.vectors_set(feature_id, view)][photo_id] = name
    return sets


def _vectors_codec(store: BlobStore, names: Iterable[str]) -> shards.Vectors | None:
    """A set's dimension and precision, from the first of its per-photo vectors that reads."""
    for name in names:
        try:
            vector = load_array(store.get(name))
        except (NotFound, ValueError, OSError, EOFError):
            continue
        if vector.ndim == 1 and np.issubdtype(vector.dtype, np.floating):
            return shards.Vectors(len(vector), vector.dtype.type)
    return None


def _keypoints_or_none(data: bytes) -> LocalFeatures | None:
    try:
        return LocalFeatures.from_bytes(data)
    except CorruptFeatures:
        return None


def shard_count(photos: int, row_bytes: int, shard_mb: int) -> int:
    """Shards of about ``shard_mb`` each, a power of two: when the count changes, each new shard takes
    its photos from one old shard (growing) or a few (shrinking), never from all."""
    needed = max(1, math.ceil(photos * row_bytes / (shard_mb << 20)))
    return 1 << (needed - 1).bit_length()


def _consolidate_set(store: BlobStore, settings: Settings, set_id: str, codec: shards.Codec, read_one: _Reader,
                     objects: dict[str, str], accepted: set[str]) -> int:
    """Write the set's shards one at a time (memory: one shard and its sources), then drop the old layout.
    A shard that already holds exactly its photos is left alone: an unchanged set costs reads, no writes."""
    old = shards.listed(store, set_id)
    if not objects and not old:
        return 0
    count = shard_count(len(objects), codec.row_bytes, settings.shard_mb)
    members: dict[int, list[str]] = defaultdict(list)
    for key in objects:
        members[shards.shard_of(key, count)].append(key)

    def per_photo(key: str) -> object:
        try:
            return read_one(store.get(objects[key]))
        except NotFound:  # deleted since the listing
            return None

    photos = read_singly = written = 0
    with ThreadPoolExecutor(IO_WORKERS) as pool, Bar(f"shards {set_id[:12]}", count) as bar:
        for index in range(count):
            shard = shards.Shard(set_id, index, count)
            values: dict[str, object] = {}
            unchanged = False
            for source in old:
                if source.may_share_photos_with(shard):
                    held = shards.read_valid(store, source, codec)  # None: corrupt, rebuilt below
                    if held is None:
                        continue
                    unchanged |= source == shard and held.keys() == set(members[index])
                    values.update((key, value) for key, value in held.items() if key in accepted)
            bar.advance()
            if unchanged:  # this very shard already holds exactly its photos: rewriting it would change nothing
                photos += len(values)
                continue
            missing = [key for key in members[index] if key not in values]
            read_singly += len(missing)
            values.update((key, value) for key, value in zip(missing, pool.map(per_photo, missing), strict=True)
                          if value is not None)
            photos += shards.write(store, shard, values, codec)
            written += 1
    for source in old:
        if source.count != count:
            try:
                store.delete(source.name)
            except NotFound:
                pass
    event(log, "features consolidated", set=set_id, photos=photos, shards=count, written=written,
          read_singly=read_singly)
    return photos


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mountainid.store import open_store

    counts = consolidate(open_store(settings), settings)
    for set_id, photos in counts.items():
        print(f"{set_id}: {photos} photos in {shard_prefix(set_id)}")
    return 0


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=run)
