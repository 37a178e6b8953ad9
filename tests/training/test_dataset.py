"""The hash split is stable as the bucket grows; small classes are left out with a log line."""

from __future__ import annotations

import logging
from collections import Counter

from mountainid.training.dataset import Example, build_dataset, split_of


def examples(slug: str, ids: range) -> list[Example]:
    return [Example(str(i), slug, f"accepted/{slug}/{i}.jpg", {}) for i in ids]


def test_split_values_are_pinned() -> None:
    # Changing the hash would silently move test photos into training for every existing bucket.
    assert {pid: split_of(pid) for pid in ("1", "5", "8", "53012345678")} == {
        "1": "train", "5": "val", "8": "test", "53012345678": "val"}


def test_split_proportions_are_about_70_15_15() -> None:
    counts = Counter(split_of(f"photo-{i}") for i in range(20000))
    assert abs(counts["train"] / 20000 - 0.70) < 0.02
    assert abs(counts["val"] / 20000 - 0.15) < 0.02
    assert abs(counts["test"] / 20000 - 0.15) < 0.02


def test_adding_photos_never_moves_an_existing_photo() -> None:
    before = build_dataset(examples("k2", range(300)) + examples("lhotse", range(1000, 1200)), 10)
    after = build_dataset(examples("k2", range(900)) + examples("lhotse", range(1000, 1700))
                          + examples("makalu", range(5000, 5400)), 10)
    old = {split: set(ids) for split, ids in before.manifest()["splits"].items()}
    new = {split: set(ids) for split, ids in after.manifest()["splits"].items()}
    for split in ("train", "val", "test"):
        assert old[split] <= new[split]  # every old photo is still in the same split
    assert before.fingerprint() != after.fingerprint()


def test_small_classes_are_left_out_with_a_log_line(caplog) -> None:
    caplog.set_level(logging.INFO)
    dataset = build_dataset(examples("k2", range(12)) + examples("lhotse", range(100, 103)), 10)
    assert dataset.labels == ("k2",)
    assert dataset.excluded == {"lhotse": 3}
    assert {e.slug for e in dataset.examples} == {"k2"}
    assert any(r.getMessage() == "class left out of training" and r.mountainid_fields["slug"] == "lhotse"
               for r in caplog.records)
