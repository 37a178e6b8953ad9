"""A real fake-Flickr server over real photos (../shared/data/peaks14 + street scenes as noise).

Each test gets its own server (building one takes milliseconds), so faults and uploads never leak
between tests. tests/ingest imports these fixtures too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.fake_flickr import FakeFlickr
from mountainid.catalog import load_catalog
from mountainid.config import Settings

VISIBLE = 8  # photos per mountain "uploaded" when a test starts; upload_more() adds the rest
# Every licence but All Rights Reserved (NonCommercial, NoDerivs and CC 4.0 opted in): the ingest tests
# are about the walk, and the default policy (commercial reuse only) leaves few of the fake's photos.
WIDE_LICENSES = ",".join(map(str, range(1, 17)))


@pytest.fixture(scope="session")
def peaks_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "peaks14"


@pytest.fixture(scope="session")
def street_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "scenes" / "street"


@pytest.fixture()
def fake_flickr(peaks_dir: Path, street_dir: Path) -> Iterator[FakeFlickr]:
    with FakeFlickr(peaks_dir, street_dir, catalog=load_catalog("peaks14"), visible=VISIBLE) as fake:
        yield fake


@pytest.fixture()
def flickr_settings(make_settings: Callable[..., Settings],
                    fake_flickr: FakeFlickr) -> Callable[..., Settings]:
    """Settings pointing at ``fake_flickr`` with fast retries; override any variable."""

    def build(**env: str) -> Settings:
        base = {"FLICKR_REST_URL": fake_flickr.rest_url, "MOUNTAINID_CATALOG": "peaks14",
                "MOUNTAINID_LICENSES": WIDE_LICENSES,
                "MOUNTAINID_FLICKR_RETRIES": "2", "MOUNTAINID_FLICKR_BACKOFF_S": "0.01",
                "MOUNTAINID_FLICKR_TIMEOUT_S": "2", "MOUNTAINID_PHOTOS_PER_RUN": "5",
                "MOUNTAINID_DOWNLOAD_WORKERS": "4"}
        return make_settings(**{**base, **env})

    return build
