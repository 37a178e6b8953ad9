"""Features read in bulk: consolidated shards agree with the per-photo cache they are built from.

A photo accepted after the last consolidation is read from its own object, a corrupt shard is rebuilt
from per-photo objects rather than trusted, and photos that left accepted/ are never used, on both stores.
"""

from __future__ import annotations

import argparse
import io
import logging
from dataclasses import replace

import numpy as np
import pytest

from mountainid.arrays import load_arrays
from mountainid.bucket import embedding_name, local_features_name
from mountainid.store import BlobStore, LocalBlobStore
from mountainid.training import shards
from mountainid.training.consolidate import consolidate, run, shard_count
from mountainid.training.dataset import list_accepted
from mountainid.training.features import encode_vector, load_features, load_local_features
from mountainid.vision.features import FeatureExtractor


def ready(caplog: pytest.LogCaptureFixture, message: str) -> dict:
    """The fields of the last summary line ``message`` (features ready / keypoints ready)."""
    return [r for r in caplog.records if r.getMessage() == message][-1].mountainid_fields


def only_shards(store: BlobStore, photo_ids: list[str], feature_id: str) -> None:
    """Delete the per-photo caches, so a value can only have come from a shard."""
    for photo_id in photo_ids:
        store.delete(embedding_name(feature_id, photo_id))
        store.delete(local_features_name(photo_id))


def test_shards_are_read_first_and_a_photo_accepted_since_from_its_own_object(seeded: BlobStore, settings,
                                                                               caplog) -> None:
    caplog.set_level(logging.INFO)
    extractor = FeatureExtractor(settings)
    examples = list_accepted(seeded)
    photos = [(e.photo_id, e.object_name) for e in examples]
    expected, _ = load_features(seeded, photos, extractor, settings)
    expected_keypoints = load_local_features(seeded, photos, settings)
    later = photos[len(photos) // 2]  # accepted after the consolidation: absent from its listing
    counts = consolidate(seeded, settings, [e for e in examples if e.photo_id != later[0]])
    assert counts == {extractor.feature_id: len(photos) - 1, shards.KEYPOINTS_SET: len(photos) - 1}
    only_shards(seeded, [p for p, _ in photos if p != later[0]], extractor.feature_id)
    matrix, usable = load_features(seeded, photos, extractor, settings)
    assert all(usable)
    np.testing.assert_array_equal(matrix, expected)
    summary = ready(caplog, "features ready")
    assert (summary["photos"], summary["from_shards"], summary["computed"]) == (len(photos), len(photos) - 1, 0)
    keypoints = load_local_features(seeded, photos, settings)
    for got, want in zip(keypoints, expected_keypoints, strict=True):
        np.testing.assert_array_equal(got.descriptors, want.descriptors)
        np.testing.assert_array_equal(got.points, want.points)
        assert got.size == want.size
    assert ready(caplog, "keypoints ready") == {"extractor": shards.KEYPOINTS_SET, "photos": len(photos),
                                                "shard": len(photos) - 1, "cached": 1}


def tampered(data: bytes) -> bytes:
    """The shard with one number changed and its checksum left as it was."""
    arrays = load_arrays(data)
    first = next(name for name in ("matrix", "descriptors") if name in arrays)
    arrays[first].flat[0] += 1
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 2], tampered], ids=["truncated", "checksum"])
def test_a_corrupt_shard_is_rebuilt_from_per_photo_objects_never_trusted(seeded: BlobStore, settings, caplog,
                                                                        damage) -> None:
    caplog.set_level(logging.INFO)
    extractor = FeatureExtractor(settings)
    photos = [(e.photo_id, e.object_name) for e in list_accepted(seeded)]
    expected, _ = load_features(seeded, photos, extractor, settings)
    expected_keypoints = load_local_features(seeded, photos, settings)
    consolidate(seeded, settings)
    names = [shard.name for set_id in (extractor.feature_id, shards.KEYPOINTS_SET)
             for shard in shards.listed(seeded, set_id)]
    for name in names:
        seeded.put(name, damage(seeded.get(name)))
    matrix, _ = load_features(seeded, photos, extractor, settings)
    np.testing.assert_array_equal(matrix, expected)
    assert ready(caplog, "features ready")["from_shards"] == 0
    keypoints = load_local_features(seeded, photos, settings)
    assert all(np.array_equal(got.descriptors, want.descriptors)
               for got, want in zip(keypoints, expected_keypoints, strict=True))
    assert {r.mountainid_fields["shard"] for r in caplog.records
            if r.getMessage() == "corrupt shard rebuilt"} == set(names)
    only_shards(seeded, [p for p, _ in photos], extractor.feature_id)  # the rebuilt shards alone suffice
    again, usable = load_features(seeded, photos, extractor, settings)
    assert all(usable) and ready(caplog, "features ready")["from_shards"] == len(photos)
    np.testing.assert_array_equal(again, expected)
    assert all(k is not None for k in load_local_features(seeded, photos, settings))


def test_photos_no_longer_accepted_are_ignored_and_dropped_at_the_next_consolidation(seeded: BlobStore,
                                                                                  settings) -> None:
    extractor = FeatureExtractor(settings)
    examples = list_accepted(seeded)
    consolidate(seeded, settings)
    gone = examples[0]
    seeded.delete(gone.object_name)  # its caches stay behind, as after a manual clean-up of accepted/
    kept = [(e.photo_id, e.object_name) for e in examples[1:]]
    expected, _ = load_features(seeded, kept, extractor, settings)
    assert len(expected) == len(kept)
    counts = consolidate(seeded, settings)
    assert counts[extractor.feature_id] == len(kept)
    held = {key for set_id in (extractor.feature_id, shards.KEYPOINTS_SET) for shard in shards.listed(seeded, set_id)
            for key in load_arrays(seeded.get(shard.name))["ids"].tolist()}
    assert gone.photo_id not in held and {p for p, _ in kept} <= held
    only_shards(seeded, [p for p, _ in kept], extractor.feature_id)
    np.testing.assert_array_equal(load_features(seeded, kept, extractor, settings)[0], expected)


def synthetic(store: BlobStore, photos: range, seed: int = 3) -> dict[str, np.ndarray]:
    """Accepted placeholder photos with cached 4096-d vectors (16 kB each) of the feature id 'synthetic'."""
    rng = np.random.default_rng(seed)
    vectors = {f"p{i:03d}": rng.normal(size=4096).astype(np.float32) for i in photos}
    for photo_id, vector in vectors.items():
        store.put(f"accepted/somewhere/{photo_id}.jpg", b"placeholder")
        store.put(embedding_name("synthetic", photo_id), encode_vector(vector))
    return vectors


def test_a_growing_bucket_changes_the_shard_count_without_losing_a_photo(store: BlobStore, settings) -> None:
    """100 vectors of 16 kB: 2 shards at 1 MB each, 1 at 64 MB; each new shard is built from the old ones."""
    vectors = synthetic(store, range(100))
    codec = shards.Vectors(4096)
    for shard_mb, count in ((1, 2), (64, 1), (1, 2)):
        consolidate(store, replace(settings, shard_mb=shard_mb))
        assert [(s.index, s.count) for s in shards.listed(store, "synthetic")] == [(i, count) for i in range(count)]
        bulk = shards.read(store, "synthetic", vectors, codec)  # shards only: never a per-photo object
        assert bulk.corrupt == [] and bulk.values.keys() == vectors.keys()
        assert all(np.array_equal(bulk.values[k], v) for k, v in vectors.items())
    assert [shard_count(photos, 16384, 1) for photos in (10, 64, 65, 200)] == [1, 1, 2, 4]


def test_a_consolidation_rewrites_only_the_shards_that_changed(store: BlobStore, settings) -> None:
    settings = replace(settings, shard_mb=1)  # 100 vectors of 16 kB: 2 shards
    synthetic(store, range(100))

    def generations() -> dict[str, int]:
        return {s.name: store.info(s.name).generation for s in shards.listed(store, "synthetic")}

    consolidate(store, settings)
    first = generations()
    consolidate(store, settings)  # nothing new: nothing written
    assert generations() == first
    new = synthetic(store, range(100, 101), seed=4)  # one photo accepted since: only its shard is rewritten
    consolidate(store, settings)
    changed = {name for name, generation in generations().items() if first[name] != generation}
    assert changed == {shards.Shard("synthetic", shards.shard_of("p100", 2), 2).name}
    bulk = shards.read(store, "synthetic", new, shards.Vectors(4096))
    assert np.array_equal(bulk.values["p100"], new["p100"])


def test_a_partial_read_holds_copies_not_views_of_the_whole_shard(store: BlobStore, settings) -> None:
    """A split or a backfill chunk that keeps a few photos must not keep their whole shard in memory."""
    vectors = synthetic(store, range(20))
    consolidate(store, settings)
    codec = shards.Vectors(4096)
    few = shards.read(store, "synthetic", ["p003", "p007"], codec).values
    assert few.keys() == {"p003", "p007"} and all(v.base is None and v.nbytes == 4096 * 4 for v in few.values())
    assert all(np.array_equal(few[k], vectors[k]) for k in few)
    every = shards.read(store, "synthetic", vectors, codec).values
    assert every["p003"].base is not None  # all of a shard: rows of its matrix, no copies


def test_a_training_run_packs_only_the_feature_ids_it_read(store: BlobStore, settings) -> None:
    vectors = synthetic(store, range(10))
    for photo_id, vector in vectors.items():  # the cache of an older backbone, no longer read by anyone
        store.put(embedding_name("older", photo_id), encode_vector(vector))
    counts = consolidate(store, settings, feature_ids=("synthetic",))
    assert counts == {"synthetic": 10, shards.KEYPOINTS_SET: 0}
    assert shards.listed(store, "older") == []


def test_the_command_consolidates_the_configured_bucket(local_seeded: LocalBlobStore, settings, capsys) -> None:
    store = local_seeded
    assert run(argparse.Namespace(), replace(settings, bucket=str(store.root))) == 0
    out = capsys.readouterr().out
    assert f"{shards.KEYPOINTS_SET}: {len(list_accepted(store))} photos in features/{shards.KEYPOINTS_SET}/shards/" in out
    assert shards.listed(store, shards.KEYPOINTS_SET) == [shards.Shard(shards.KEYPOINTS_SET, 0, 1)]
