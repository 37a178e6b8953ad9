"""A training run end to end: promotion, crash safety, the lease, the cache and one listing of accepted/ per
run on both backends; the gate's decisions, which do not depend on the backend, in a local folder."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest

from mountainid.bucket import ACCEPTED, COMPLETE, SHARDS, TRAINING_LEASE, embedding_name, model_file
from mountainid.catalog import load_catalog
from mountainid.events import InProcessBus
from mountainid.predict import Predictor
from mountainid.registry import ModelLoadError, Registry
from mountainid.store import BlobStore, LocalBlobStore
from mountainid.training import shards
from mountainid.training.dataset import build_dataset, list_accepted
from mountainid.training.features import load_features
from mountainid.training.folders import import_folder
from mountainid.training.job import maybe_train, train_and_register
from mountainid.training.train import HeadConfig
from mountainid.vision.features import FeatureExtractor
from tests.concurrency import run_together
from tests.training.conftest import FAST

# Untrained in effect: one epoch at a tiny learning rate leaves the head near its random start.
WORSE = replace(FAST, head=HeadConfig(epochs=1, learning_rate=1e-7, seed=7))
VERSION_FILES = {"model.keras", "labels.json", "metrics.json", "confusion.png", "curves.png", "reliability.png",
                 "held_out.npz", "config.json", "dataset.json", "gallery.npz", "gallery.json", "verification.npz",
                 COMPLETE}


def published(bus: InProcessBus, topic: str) -> list[dict]:
    received: list[dict] = []
    bus.subscribe(topic, lambda event: received.append(json.loads(
        __import__("base64").b64decode(event.data["message"]["data"]))))
    return received


def accepted_listings(monkeypatch: pytest.MonkeyPatch, store: BlobStore) -> list[str]:
    """A spy on ``store.list`` (``list_names`` goes through it): the prefix of every listing covering accepted/."""
    listings: list[str] = []
    real_list = store.list

    def spied(prefix: str = ""):
        if ACCEPTED.startswith(prefix) or prefix.startswith(ACCEPTED):
            listings.append(prefix)
        return real_list(prefix)

    monkeypatch.setattr(store, "list", spied)
    return listings


def test_first_model_is_promoted_complete_and_published(seeded: BlobStore, settings) -> None:
    bus = InProcessBus()
    messages = published(bus, settings.topic_model_published)
    result = train_and_register(settings, seeded, bus, FAST)
    bus.drain()
    assert result.status == "promoted"
    registry = Registry(seeded)
    assert registry.live().version == result.version
    names = {name.rsplit("/", 1)[1] for name in seeded.list_names(f"models/{result.version}/")}
    assert names == VERSION_FILES
    info = registry.info(result.version)
    assert info["labels"] == ["broad-peak", "lhotse", "nanga-parbat"]
    assert info["test"]["n"] >= 15 and info["test"]["top1"] > 0.5  # three peaks, real photos: clearly learnt
    assert 0.0 <= info["unknown_threshold"] <= 1.0
    assert seeded.get(f"models/{result.version}/confusion.png").startswith(b"\x89PNG")
    assert [m["version"] for m in messages] == [result.version]
    assert not seeded.exists(TRAINING_LEASE)  # released
    packed = {name.split("/")[1] for name in seeded.list_names(SHARDS)}  # the next run reads shards
    assert shards.KEYPOINTS_SET in packed and len(packed) >= 2, packed  # keypoints and embeddings
    predictor = Predictor.load(seeded, result.version, settings)
    photo = seeded.get(next(n for n in seeded.list_names("accepted/lhotse/")))
    prediction = predictor.predict(photo).to_dict()
    assert prediction["model_version"] == result.version and len(prediction["guesses"]) == 3
    assert all(p["slug"] == prediction["guesses"][0]["slug"] for p in prediction["similar"])


def test_gate_promotes_an_equal_model_and_keeps_the_live_one_on_too_few_test_photos(
        local_seeded: LocalBlobStore, settings, extra_dir, caplog) -> None:
    caplog.set_level(logging.INFO)
    bus = InProcessBus()
    first = train_and_register(settings, local_seeded, bus, FAST)
    assert first.status == "promoted"
    again = train_and_register(settings, local_seeded, bus, FAST)  # same photos, same seed: the same figures
    assert again.test["top1"] == pytest.approx(first.test["top1"])
    assert again.live_top1 == pytest.approx(first.test["top1"])
    assert again.status == "promoted" and Registry(local_seeded).live().version == again.version
    assert again.gate.reason == "not significantly worse" and again.gate.compared_on == first.test["n"]
    assert again.gate.right_only_live == again.gate.right_only_new == 0  # paired photo by photo
    # The bucket grows; the live model is re-evaluated on today's test split before the comparison. A worse
    # model on a test split smaller than the minimum: whatever the difference, it is noise.
    import_folder(local_seeded, settings, extra_dir, load_catalog(settings.catalog))
    strict = replace(settings, promotion_min_test=again.test["n"] + 1)
    worse = train_and_register(strict, local_seeded, bus, WORSE)
    assert worse.test["classifier_top1"] < again.test["classifier_top1"]  # verification may still carry the fused answer
    assert worse.status == "kept" and worse.gate.reason == "too few test photos to compare"
    assert worse.live_version == again.version and worse.live_top1 == pytest.approx(again.test["top1"])
    assert Registry(local_seeded).live().version == again.version
    assert worse.version in Registry(local_seeded).versions()  # kept for inspection, never served
    decision = next(r for r in caplog.records if r.getMessage().startswith("model kept"))
    assert decision.mountainid_fields["test_top1_same_photos"] == round(again.test["top1"], 4)
    assert decision.mountainid_fields["test_top1"] == round(worse.test["top1"], 4)
    assert decision.mountainid_fields["decision"] == "keep"
    assert decision.mountainid_fields["min_test"] == again.test["n"] + 1
    assert Registry(local_seeded).info(worse.version)["live_at_training"] == {"version": again.version,
                                                                       **worse.gate.figures()}


def test_gate_promotes_a_better_model_and_replaces_an_unusable_one(local_seeded: LocalBlobStore, settings,
                                                                   caplog) -> None:
    caplog.set_level(logging.INFO)
    bus = InProcessBus()
    first = train_and_register(settings, local_seeded, bus, WORSE)
    assert first.promoted and first.gate.reason == "no live model"  # whatever it scores: nothing to compare with
    better = train_and_register(settings, local_seeded, bus, FAST)
    assert better.promoted and better.gate.new_top1 > better.gate.live_top1
    assert better.gate.right_only_new > better.gate.right_only_live and better.gate.difference_interval[1] > 0
    assert Registry(local_seeded).live().version == better.version
    decision = next(r for r in caplog.records if r.getMessage() == "model promoted"
                    and r.mountainid_fields["version"] == better.version)
    assert decision.mountainid_fields["mcnemar_p"] == round(better.gate.p_value, 4)
    assert decision.mountainid_fields["right_only_new"] == better.gate.right_only_new
    registry = Registry(local_seeded)
    local_seeded.put(model_file(better.version, "dataset.json"), b"{ damaged")  # the live model cannot be compared
    replacing = train_and_register(settings, local_seeded, bus, WORSE)
    assert replacing.promoted and replacing.gate.reason == "live model unusable"
    assert registry.live().version == replacing.version
    assert registry.info(replacing.version)["live_at_training"]["version"] == better.version


def test_upload_failure_leaves_the_old_model_live_and_no_loadable_half_version(seeded: BlobStore, settings,
                                                                               monkeypatch) -> None:
    bus = InProcessBus()
    old = train_and_register(settings, seeded, bus, FAST)
    real_put = seeded.put

    def dies_mid_upload(name: str, data: bytes, **kwargs):
        if name.endswith("/gallery.npz"):  # the store connection drops half-way through the folder
            raise ConnectionError("injected: connection reset during upload")
        return real_put(name, data, **kwargs)

    monkeypatch.setattr(seeded, "put", dies_mid_upload)
    with pytest.raises(ConnectionError):
        train_and_register(settings, seeded, bus, FAST)
    monkeypatch.undo()
    registry = Registry(seeded)
    assert registry.live().version == old.version
    assert registry.versions() == [old.version]
    half = {name.split("/")[1] for name in seeded.list_names("models/")} - {old.version, "LATEST", "TRAINING"}
    assert len(half) == 1  # the half-written folder exists ...
    with pytest.raises(ModelLoadError, match="COMPLETE"):
        Predictor.load(seeded, half.pop(), settings)  # ... but can never be served
    assert not seeded.exists(TRAINING_LEASE)  # the failed run let go of the lease
    assert train_and_register(settings, seeded, bus, FAST).status == "promoted"


def test_two_runs_at_once_only_one_promotes(seeded: BlobStore, settings) -> None:
    bus = InProcessBus()
    results = run_together(lambda: train_and_register(settings, seeded, bus, FAST), 2)
    assert sorted(r.status for r in results) == ["lease-held", "promoted"]
    winner = next(r for r in results if r.promoted)
    assert Registry(seeded).live().version == winner.version
    assert Registry(seeded).versions() == [winner.version]


def test_corrupt_embeddings_are_recomputed_not_trusted(seeded: BlobStore, settings, caplog) -> None:
    caplog.set_level(logging.INFO)
    extractor = FeatureExtractor(settings)
    photos = [(e.photo_id, e.object_name) for e in list_accepted(seeded)[:3]]
    good, _ = load_features(seeded, photos, extractor, settings)
    names = [embedding_name(extractor.feature_id, pid) for pid, _ in photos]
    seeded.put(names[0], b"\x93NUMPY garbage")                       # unreadable
    seeded.put(names[1], seeded.get(names[1])[:-400])                 # truncated
    buffer = __import__("io").BytesIO()
    np.save(buffer, np.full(1280, np.nan, np.float32))
    seeded.put(names[2], buffer.getvalue())                            # readable but not finite
    again, usable = load_features(seeded, photos, extractor, settings)
    assert usable == [True, True, True]
    np.testing.assert_allclose(again, good, rtol=1e-4, atol=1e-4)
    recomputed = [r for r in caplog.records if r.getMessage() == "corrupt embedding recomputed"]
    assert {r.mountainid_fields["photo_id"] for r in recomputed} == {pid for pid, _ in photos}
    for name, vector in zip(names, good, strict=True):  # the cache is repaired
        np.testing.assert_allclose(np.load(__import__("io").BytesIO(seeded.get(name))), vector, atol=1e-4)


def test_maybe_train_at_start_then_only_after_enough_new_photos_listing_accepted_once(
        seeded: BlobStore, settings, extra_dir, monkeypatch) -> None:
    bus = InProcessBus()
    listings = accepted_listings(monkeypatch, seeded)
    first = maybe_train(settings, seeded, bus, FAST)
    assert first is not None and first.promoted
    assert listings == [ACCEPTED]  # one listing decided that the run was due and was trained on
    assert maybe_train(settings, seeded, bus, FAST) is None  # nothing new
    assert listings == [ACCEPTED] * 2  # one more to find that nothing was due
    counts = import_folder(seeded, settings, extra_dir, load_catalog(settings.catalog))
    assert counts["accepted"] >= settings.retrain_min_new_photos
    listings.clear()
    assert maybe_train(settings, seeded, bus, FAST) is not None
    assert listings == [ACCEPTED]
    assert len(build_dataset(list_accepted(seeded), 5).examples) > first.test["n"]


def test_the_gate_compares_only_on_test_photos_the_live_model_never_trained_on(local_seeded: LocalBlobStore,
                                                                               settings) -> None:
    """If the split rule changed (say, to one split per photographer) since the live model was trained,
    some of today's test photos were its training photos: it must not win on those."""
    bus = InProcessBus()
    live = train_and_register(settings, local_seeded, bus, FAST)
    registry = Registry(local_seeded)
    manifest = json.loads(registry.read(live.version, "dataset.json"))
    moved = manifest["splits"]["test"][:5]
    manifest["splits"]["train"] += moved  # as if these had been training photos of the live model
    local_seeded.put(model_file(live.version, "dataset.json"), json.dumps(manifest).encode())
    again = train_and_register(settings, local_seeded, bus, FAST)
    compared = registry.info(again.version)["live_at_training"]
    assert compared["version"] == live.version
    assert compared["compared_on"] == again.test["n"] - len(moved)
    assert again.promoted and compared["reason"] == "not significantly worse"  # the same model, retrained
