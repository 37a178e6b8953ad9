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


def test_a_photographers_photos_share_one_split_and_photos_without_owner_split_by_id() -> None:
    bursts = {owner: [Example(f"{owner}-{i}", "k2", f"accepted/k2/{owner}-{i}.jpg", {"owner": owner})
                      for i in range(6)] for owner in ("12345@N00", "777@N01", "4242@N05")}
    for photos in bursts.values():
        assert len({e.split for e in photos}) == 1  # a burst never spans training and test
    # Enough photographers spread over all three splits, about 70/15/15 by photographer.
    owners = Counter(Example("1", "k2", "accepted/k2/1.jpg", {"owner": f"{i}@N00"}).split for i in range(3000))
    assert 0.66 < owners["train"] / 3000 < 0.74 and 0.12 < owners["test"] / 3000 < 0.18
    unowned = [Example(str(i), "k2", f"accepted/k2/{i}.jpg", {"owner": " "}) for i in range(8)]
    assert [e.split for e in unowned] == [split_of(str(i)) for i in range(8)]


def test_the_fake_flickr_has_photographers_with_bursts(shared_dir) -> None:
    """Enough owners for a split by owner to mean something, a few photos each."""
    from harness.fake_flickr import BURST, FakeFlickr

    fake = FakeFlickr(shared_dir / "data" / "peaks14")
    photos = [p for slug in fake.slugs for p in fake.photos(slug, visible_only=False) if not p.noise]
    owners = Counter(p.owner for p in photos)
    assert len(owners) >= len(photos) // (BURST + 1) and max(owners.values()) <= 2 * BURST
    assert all(len({p.slug for p in photos if p.owner == owner}) == 1 for owner in list(owners)[:40])
    assert len({p.owner_name for p in photos}) > 50
