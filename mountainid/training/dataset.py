"""The training set: every accepted photo, labelled by its mountain, split by a hash of its photographer.

A photo's split is a hash of its Flickr owner when it has one, else of its id: a photographer's
burst (the same view, minutes apart) is never split between training and test, where it would
flatter every figure. The split depends on nothing that changes, so a photo never changes split as
the bucket grows and every model version is tested on test photos no version ever trained on.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass

from mountainid.bucket import ACCEPTED, parse_accepted_name
from mountainid.logs import event
from mountainid.store import BlobStore

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Percent of photos per split (train, validation, test).
SPLIT_PERCENT = (70, 15, 15)


def split_of(key: str) -> str:
    """'train', 'val' or 'test' from a stable hash of ``key`` (not Python's salted hash())."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < SPLIT_PERCENT[0]:
        return "train"
    return "val" if bucket < SPLIT_PERCENT[0] + SPLIT_PERCENT[1] else "test"


@dataclass(frozen=True)
class Example:
    photo_id: str
    slug: str
    object_name: str  # accepted/<slug>/<photo_id>.jpg
    metadata: dict[str, str]

    @property
    def group(self) -> str:
        """What is never divided between splits (or folds): the photographer where Flickr names one
        (``owner``: a burst of one view), else the photo."""
        owner = self.metadata.get("owner", "").strip()
        return f"owner:{owner}" if owner else self.photo_id

    @property
    def split(self) -> str:
        return split_of(self.group)


@dataclass(frozen=True)
class Dataset:
    examples: tuple[Example, ...]  # only photos of kept classes, sorted by object name
    labels: tuple[str, ...]        # kept slugs, sorted; a label's index is its class number
    excluded: dict[str, int]       # slug -> photo count of classes left out (too few photos)

    def part(self, split: str) -> list[Example]:
        return [e for e in self.examples if e.split == split]

    def targets(self, examples: list[Example]) -> list[int]:
        index = {slug: i for i, slug in enumerate(self.labels)}
        return [index[e.slug] for e in examples]

    def fingerprint(self) -> str:
        """Which photos (and labels) this dataset holds, as one short hash."""
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(f"{example.slug}/{example.photo_id}\n".encode())
        return digest.hexdigest()[:16]

    def manifest(self) -> dict:
        """dataset.json of a model version: the photo ids per split, and what was left out."""
        return {"fingerprint": self.fingerprint(), "labels": list(self.labels), "excluded": self.excluded,
                "splits": {split: [f"{e.slug}/{e.photo_id}" for e in self.part(split)] for split in SPLITS}}


def list_accepted(store: BlobStore) -> list[Example]:
    """Every accepted photo (accepted/<slug>/<id>.jpg) with its metadata."""
    examples = []
    for blob in store.list(ACCEPTED):
        parsed = parse_accepted_name(blob.name)
        if parsed is None:
            continue
        slug, photo_id = parsed
        examples.append(Example(photo_id, slug, blob.name, dict(blob.metadata)))
    return examples


def build_dataset(examples: list[Example], min_per_class: int) -> Dataset:
    """Keep classes with at least ``min_per_class`` photos; log the ones left out."""
    counts = Counter(e.slug for e in examples)
    excluded = {slug: n for slug, n in sorted(counts.items()) if n < min_per_class}
    for slug, count in excluded.items():
        event(log, "class left out of training", slug=slug, photos=count, minimum=min_per_class)
    kept = sorted((e for e in examples if e.slug not in excluded), key=lambda e: e.object_name)
    return Dataset(tuple(kept),
                   tuple(sorted(set(counts) - set(excluded))), excluded)
