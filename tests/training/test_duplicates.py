"""Copies of one photo filed under two mountains: found by their perceptual hash, kept out, listed."""

from __future__ import annotations

import json

from mountainid.bucket import DHASH
from mountainid.events import InProcessBus
from mountainid.filter import filter_pending
from mountainid.registry import Registry
from mountainid.store import LocalBlobStore
from mountainid.training.dataset import list_accepted
from mountainid.training.job import train_and_register
from mountainid.vision.backbone import get_backbone
from tests.training.conftest import FAST
from web import create_app


def test_copies_under_two_mountains_are_kept_out_of_training_and_listed(local_seeded: LocalBlobStore,
                                                                        settings) -> None:
    store = local_seeded
    lhotse, nanga = (next(e for e in list_accepted(store) if e.slug == slug) for slug in ("lhotse", "nanga-parbat"))
    # The filter judges a copy of a Lhotse photo filed under Broad Peak (it stores the copy's hash) ...
    store.put("raw/broad-peak/copyoflhotse.jpg", store.get(lhotse.object_name), content_type="image/jpeg")
    filter_pending(store, settings, lambda: get_backbone(settings.weights))
    # ... and a copy of a Nanga Parbat photo sits under Lhotse from before the filter stored hashes.
    legacy = {k: v for k, v in nanga.metadata.items() if k != DHASH}
    store.put("accepted/lhotse/copyofnanga.jpg", store.get(nanga.object_name), metadata=legacy,
              content_type="image/jpeg")

    result = train_and_register(settings, store, InProcessBus(), FAST)

    info = Registry(store).info(result.version)
    pairs = {frozenset((row["a"], row["b"])): row["bits"] for row in info["label_conflicts"]}
    assert pairs == {frozenset((lhotse.object_name, "accepted/broad-peak/copyoflhotse.jpg")): 0,
                     frozenset((nanga.object_name, "accepted/lhotse/copyofnanga.jpg")): 0}
    manifest = json.loads(Registry(store).read(result.version, "dataset.json"))
    used = {name for split in manifest["splits"].values() for name in split}
    for photo in ("lhotse/" + lhotse.photo_id, "broad-peak/copyoflhotse", "nanga-parbat/" + nanga.photo_id,
                  "lhotse/copyofnanga"):
        assert photo not in used  # neither copy trains or is tested on
    page = create_app(settings, store=store).test_client().get("/model").get_data(as_text=True)
    assert "Suspected label noise" in page and "accepted/broad-peak/copyoflhotse.jpg" in page
