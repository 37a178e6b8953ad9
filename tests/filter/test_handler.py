"""handle_raw_object and filter_pending on a real store with the real backbone and real photos."""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from mountainid.bucket import embedding_name, local_features_name
from mountainid.config import Settings
from mountainid.filter import filter_pending, handle_raw_object
from mountainid.store import BlobStore, LocalBlobStore
from mountainid.vision.backbone import Backbone
from mountainid.vision.image import decode_for_model
from mountainid.vision.local import LocalFeatures, extract_from_bytes
from tests.concurrency import run_together
from tests.filter.conftest import as_mode, encode, png_with_header_size

FLICKR = {"owner": "12345@N00", "license": "4", "title": "K2 from Concordia", "url": "https://flickr.com/p/1"}


def _results(store: BlobStore) -> list[str]:
    return [name for name in store.list_names() if not name.startswith("raw/")]


def _accepted(backbone: Backbone, photo_id: str) -> list[str]:
    """Everything accepting photo ``photo_id`` of K2 writes."""
    return [f"accepted/k2/{photo_id}.jpg", embedding_name(backbone.backbone_id, photo_id),
            local_features_name(photo_id)]


def _embedding(store: BlobStore, backbone: Backbone, photo_id: str) -> np.ndarray:
    return np.load(io.BytesIO(store.get(embedding_name(backbone.backbone_id, photo_id))))


def test_mountains_are_accepted_with_scores_metadata_and_embedding(
        local_store: LocalBlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes]) -> None:
    settings = make_settings()
    for index, photo in enumerate(k2_photos):
        generation = local_store.put(f"raw/k2/{index}.jpg", photo, metadata=FLICKR)
        outcome = handle_raw_object(local_store, f"raw/k2/{index}.jpg", generation, settings, backbone)
        assert (outcome.status, outcome.photo_id, outcome.slug) == ("accepted", str(index), "k2")
        assert outcome.score is not None and outcome.score >= settings.filter_threshold
        accepted = local_store.info(f"accepted/k2/{index}.jpg")
        assert accepted is not None and local_store.get(accepted.name) == photo
        assert {k: accepted.metadata[k] for k in FLICKR} == FLICKR  # Flickr credit travels with the photo
        assert float(accepted.metadata["mountain_score"]) == pytest.approx(outcome.score, abs=1e-3)
        assert accepted.metadata["imagenet_top5"].split()[0].startswith(("970:", "980:", "979:"))
        assert accepted.metadata["backbone"] == backbone.backbone_id
        # The cached embedding is the one the backbone gives for this photo.
        expected = backbone.analyze(decode_for_model(photo, backbone.input_size, 40_000_000))[1][0]
        np.testing.assert_allclose(_embedding(local_store, backbone, str(index)), expected, rtol=1e-4, atol=1e-4)
        # So are its keypoints, computed once here for training and verification.
        keypoints = LocalFeatures.from_bytes(local_store.get(local_features_name(str(index))))
        again = extract_from_bytes(photo, settings.max_image_pixels)
        assert len(keypoints) > 100 and keypoints.size == again.size
        np.testing.assert_array_equal(keypoints.descriptors, again.descriptors)
    assert not local_store.list_names("rejected/")


def test_non_mountains_are_rejected_with_their_score(
        local_store: LocalBlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        street_photos: list[bytes]) -> None:
    settings = make_settings()
    for index, photo in enumerate(street_photos):
        local_store.put(f"raw/k2/s{index}.jpg", photo, metadata=FLICKR)
        outcome = handle_raw_object(local_store, f"raw/k2/s{index}.jpg", 1, settings, backbone)
        assert outcome.status == "rejected"
        metadata = local_store.info(f"rejected/k2/s{index}.jpg").metadata
        assert metadata["reason"] == outcome.reason == f"not-a-mountain score={outcome.score:.2f}"
        assert outcome.score < settings.filter_threshold and metadata["title"] == FLICKR["title"]
    assert not local_store.list_names("accepted/") and not local_store.list_names("embeddings/")
    assert not local_store.list_names("localfeatures/")  # keypoints only of photos that can be matched


def _truncated(photo: bytes) -> bytes:
    return photo[: len(photo) // 2]


BAD_INPUTS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated JPEG": (_truncated, "truncated"),
    "zero bytes": (lambda _: b"", "empty"),
    "text file named .jpg": (lambda _: b"<html>404 Not Found</html>\n", "not-an-image"),
    "1x1 image": (lambda _: encode(Image.new("RGB", (1, 1), (90, 120, 200)), "PNG"), "too-small"),
    "30000x30000 bomb": (lambda _: png_with_header_size(30000, 30000), "too-many-pixels"),
    "7000x7000 over our limit": (lambda _: png_with_header_size(7000, 7000), "too-many-pixels"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_bytes_are_rejected_with_a_clear_reason(
        case: str, local_store: LocalBlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes]) -> None:
    make, reason = BAD_INPUTS[case]
    data = make(k2_photos[0])
    local_store.put("raw/k2/7.jpg", data, metadata=FLICKR)
    outcome = handle_raw_object(local_store, "raw/k2/7.jpg", 1, make_settings(), backbone)  # does not raise
    assert (outcome.status, outcome.reason, outcome.score) == ("rejected", reason, None)
    rejected = local_store.info("rejected/k2/7.jpg")
    assert rejected is not None and local_store.get(rejected.name) == data  # nothing lost
    assert rejected.metadata["reason"] == reason and rejected.metadata["reason_detail"]
    assert rejected.metadata["owner"] == FLICKR["owner"]
    assert _results(local_store) == ["rejected/k2/7.jpg"]


def test_a_file_over_the_size_limit_is_rejected_unread(
        local_store: LocalBlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes]) -> None:
    settings = make_settings(MOUNTAINID_MAX_IMAGE_BYTES=str(len(k2_photos[0]) - 1))
    local_store.put("raw/k2/big.jpg", k2_photos[0])
    outcome = handle_raw_object(local_store, "raw/k2/big.jpg", 1, settings, backbone)
    assert (outcome.status, outcome.reason) == ("rejected", "too-large")


@pytest.mark.parametrize("kind", ["png-alpha", "cmyk", "16-bit"])
def test_unusual_modes_are_decoded_and_judged_on_content(
        kind: str, local_store: LocalBlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes], street_photos: list[bytes]) -> None:
    """A PNG with alpha, a CMYK JPEG, a 16-bit PNG: a mountain is still accepted, a street still
    rejected with its score, so the odd format neither crashes the filter nor decides for it."""
    settings = make_settings()
    local_store.put("raw/k2/m.jpg", as_mode(k2_photos[1], kind))
    local_store.put("raw/k2/s.jpg", as_mode(street_photos[0], kind))
    mountain = handle_raw_object(local_store, "raw/k2/m.jpg", 1, settings, backbone)
    street = handle_raw_object(local_store, "raw/k2/s.jpg", 1, settings, backbone)
    assert mountain.status == "accepted", mountain
    assert street.status == "rejected" and street.reason.startswith("not-a-mountain score=")


def test_the_same_event_twice_leaves_one_result(
        store: BlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes]) -> None:
    """On both backends: the second delivery finds the result and changes nothing."""
    settings = make_settings()
    generation = store.put("raw/k2/1.jpg", k2_photos[0], metadata=FLICKR)
    first = handle_raw_object(store, "raw/k2/1.jpg", generation, settings, backbone)
    result_generation = store.info("accepted/k2/1.jpg").generation
    second = handle_raw_object(store, "raw/k2/1.jpg", generation, settings, backbone)
    assert (first.status, second.status) == ("accepted", "duplicate")
    assert store.info("accepted/k2/1.jpg").generation == result_generation
    assert _results(store) == _accepted(backbone, "1")


def test_out_of_order_generations_leave_one_result(
        local_store: LocalBlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes], street_photos: list[bytes]) -> None:
    """The photo was written twice; the newer event arrives first, the stale one later."""
    settings = make_settings()
    old = local_store.put("raw/k2/5.jpg", street_photos[0])
    new = local_store.put("raw/k2/5.jpg", k2_photos[0])
    assert handle_raw_object(local_store, "raw/k2/5.jpg", new, settings, backbone).status == "accepted"
    assert handle_raw_object(local_store, "raw/k2/5.jpg", old, settings, backbone).status == "duplicate"
    assert _results(local_store) == _accepted(backbone, "5")


def test_concurrent_deliveries_leave_one_result(
        local_store: LocalBlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes]) -> None:
    """Two instances judging the same photo at once: the if-absent writes let exactly one win."""
    settings = make_settings()
    local_store.put("raw/k2/9.jpg", k2_photos[2])
    outcomes = run_together(lambda: handle_raw_object(local_store, "raw/k2/9.jpg", 1, settings, backbone), 4)
    statuses = [outcome.status for outcome in outcomes]
    assert sorted(statuses) == ["accepted", "duplicate", "duplicate", "duplicate"]
    assert _results(local_store) == _accepted(backbone, "9")


def test_a_retry_after_a_crash_between_embedding_and_copy_completes(
        local_store: LocalBlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes]) -> None:
    local_store.put("raw/k2/3.jpg", k2_photos[0])
    leftover = local_store.put(embedding_name(backbone.backbone_id, "3"), b"written before the crash")
    assert handle_raw_object(local_store, "raw/k2/3.jpg", 1, make_settings(), backbone).status == "accepted"
    assert local_store.info(embedding_name(backbone.backbone_id, "3")).generation == leftover


def test_a_photo_already_rejected_is_not_judged_again(
        local_store: LocalBlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes]) -> None:
    local_store.put("raw/k2/4.jpg", k2_photos[0])
    local_store.put("rejected/k2/4.jpg", b"", metadata={"reason": "empty"})
    assert handle_raw_object(local_store, "raw/k2/4.jpg", 1, make_settings(), backbone).status == "duplicate"
    assert not local_store.exists("accepted/k2/4.jpg")


class _DeletedAfterRead(LocalBlobStore):
    """A photo deleted right after the filter read it (the user removed it meanwhile)."""

    def get(self, name: str) -> bytes:
        data = super().get(name)
        self.delete(name)
        return data


@pytest.mark.parametrize("when", ["before the read", "between read and copy"])
def test_a_photo_deleted_under_the_filter_is_logged_and_acknowledged(
        when: str, tmp_path, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    store = LocalBlobStore(tmp_path / "b") if when == "before the read" else _DeletedAfterRead(tmp_path / "b")
    if when != "before the read":
        store.put("raw/k2/8.jpg", k2_photos[0])
    with caplog.at_level(logging.INFO, logger="mountainid.filter"):
        outcome = handle_raw_object(store, "raw/k2/8.jpg", 1, make_settings(), backbone)
    assert (outcome.status, outcome.photo_id) == ("missing", "8")
    assert not store.exists("accepted/k2/8.jpg") and not store.exists("rejected/k2/8.jpg")
    [record] = [r for r in caplog.records if r.name == "mountainid.filter"]
    assert record.levelno == logging.WARNING and record.mountainid_fields["photo_id"] == "8"


def test_the_filter_never_triggers_itself(
        tmp_path, make_settings: Callable[..., Settings], backbone: Backbone, k2_photos: list[bytes],
        caplog: pytest.LogCaptureFixture) -> None:
    """Every write notifies (as a whole-bucket GCS notification would); only raw/ is judged, and
    each event handled logs exactly one line with its outcome."""
    settings = make_settings()
    seen: list[str] = []

    def on_finalize(blob) -> None:
        seen.append(handle_raw_object(store, blob.name, blob.generation, settings, backbone).status)

    store = LocalBlobStore(tmp_path / "bucket", on_finalize=on_finalize)
    with caplog.at_level(logging.INFO, logger="mountainid.filter"):
        store.put("raw/k2/1.jpg", k2_photos[0])
    # The raw write, then (nested inside it) the embedding, the keypoints and the accepted copy, all ignored.
    assert sorted(seen) == ["accepted", "ignored", "ignored", "ignored"]
    lines = [r.mountainid_fields for r in caplog.records if r.name == "mountainid.filter"]
    assert sorted(line["outcome"] for line in lines) == sorted(seen)
    assert [line["photo_id"] for line in lines if line["outcome"] == "accepted"] == ["1"]


def test_catch_up_judges_only_photos_without_a_result(
        local_store: LocalBlobStore, make_settings: Callable[..., Settings], backbone: Backbone,
        k2_photos: list[bytes], street_photos: list[bytes]) -> None:
    settings = make_settings()
    local_store.put("raw/k2/done.jpg", k2_photos[0])
    handle_raw_object(local_store, "raw/k2/done.jpg", 1, settings, backbone)
    before = local_store.info("accepted/k2/done.jpg").generation
    for index, photo in enumerate(k2_photos[1:] + street_photos[:2]):
        local_store.put(f"raw/k2/p{index}.jpg", photo)
    local_store.put("raw/k2/empty.jpg", b"")
    local_store.put("raw/README.txt", b"not a photo")
    counts = filter_pending(local_store, settings, lambda: backbone, batch_size=2)
    assert counts == {"accepted": 2, "rejected": 3}
    assert local_store.info("accepted/k2/done.jpg").generation == before
    assert sorted(local_store.list_names("rejected/")) == ["rejected/k2/empty.jpg", "rejected/k2/p2.jpg",
                                                           "rejected/k2/p3.jpg"]
    # Nothing pending: the backbone is not even loaded (a second `mountainid run` starts in seconds).
    assert filter_pending(local_store, settings, lambda: pytest.fail("loaded the backbone for nothing")) == {}


def test_catch_up_works_off_a_backlog_oldest_first_at_most_limit_per_run(
        store: BlobStore, make_settings: Callable[..., Settings], backbone: Backbone, k2_photos: list[bytes],
        street_photos: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    """A backlog larger than one run: the first judges the ``limit`` photos written first, the next the
    rest, none twice; what is left is logged."""
    settings = make_settings()
    written = ["p5", "p4", "p3", "p2", "p1"]  # the order they reach raw/, not their names' order
    for photo_id, photo in zip(written, k2_photos + street_photos[:2]):
        store.put(f"raw/k2/{photo_id}.jpg", photo)
        time.sleep(0.02)  # distinct write times, even with a coarse file-system clock

    def judged() -> dict[str, int]:
        """Photo id -> generation of its result."""
        return {blob.name.rsplit("/", 1)[1].removesuffix(".jpg"): blob.generation
                for prefix in ("accepted/", "rejected/") for blob in store.list(prefix)}

    caplog.set_level(logging.INFO, logger="mountainid.filter")
    first = filter_pending(store, settings, lambda: backbone, batch_size=2, limit=3)
    assert sum(first.values()) == 3 and sorted(judged()) == sorted(written[:3])
    summary = [r.mountainid_fields for r in caplog.records if r.getMessage().startswith("filter catch-up stopped")]
    assert [(line["pending"], line["remaining"]) for line in summary] == [(5, 2)]  # type: ignore[attr-defined]

    results = judged()
    second = filter_pending(store, settings, lambda: backbone, batch_size=2, limit=3)
    assert sum(second.values()) == 2 and sorted(judged()) == sorted(written)
    assert {photo_id: judged()[photo_id] for photo_id in results} == results, "nothing judged twice"
    assert dict(Counter(first) + Counter(second)) == {"accepted": 3, "rejected": 2}
    assert filter_pending(store, settings, lambda: pytest.fail("nothing left"), limit=3) == {}
