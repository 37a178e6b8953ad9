"""The Flickr client (flickrapi + requests) against the fake Flickr server, faults included."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.fake_flickr import FakeFlickr, Fault
from mountainid.catalog import load_catalog
from mountainid.config import FLICKR_MAX_RESULTS, ConfigError, Settings, load_settings
from mountainid.flickr import (
    FlickrAuthError,
    FlickrClient,
    FlickrFatal,
    FlickrRejected,
    FlickrUnavailable,
    PhotoUnavailable,
)
from mountainid.flickr.client import SEARCH_ERRORS, ErrorKind, error_kind
from mountainid.vision.image import load_image

ALLOWED = tuple(range(1, 17))  # opted in: every licence but All Rights Reserved, CC 4.0 included


def client_for(fake: FakeFlickr, *, retries: int = 2, timeout_s: float = 2.0, max_image_bytes: int = 10**7,
               sleep: Callable[[float], None] | None = None, key: str = "test-key") -> FlickrClient:
    return FlickrClient(key, "test-secret", rest_url=fake.rest_url, licenses=ALLOWED, retries=retries,
                        backoff_s=0.01, timeout_s=timeout_s, max_image_bytes=max_image_bytes,
                        sleep=sleep or time.sleep)


def test_search_answers_like_flickr(fake_flickr: FakeFlickr) -> None:
    client = client_for(fake_flickr)
    expected = fake_flickr.photos("k2", licenses=ALLOWED)
    assert len(expected) < len(fake_flickr.photos("k2")), "some photos must be All Rights Reserved"
    assert any(p.license >= 11 for p in expected), "some photos must carry a CC 4.0 licence (ids 11-16)"

    first = client.search("K2", min_upload_date=0, page=1, per_page=3)
    assert (first.page, first.total, first.pages) == (1, len(expected), -(-len(expected) // 3))
    pages = [client.search("K2", min_upload_date=0, page=p, per_page=3).photos
             for p in range(1, first.pages + 1)]
    found = [photo for page in pages for photo in page]
    assert [p.id for p in found] == [p.id for p in expected]
    assert [p.uploaded for p in found] == sorted(p.uploaded for p in found)
    assert all(p.license in ALLOWED and p.owner and p.owner_name and p.taken and p.tags for p in found)
    assert all(p.image_url and p.image_url.startswith(fake_flickr.base_url) for p in found)
    # Like Flickr, a page past the last repeats the last page: a client must stop on `pages`.
    beyond = client.search("K2", min_upload_date=0, page=first.pages + 5, per_page=3)
    assert [p.id for p in beyond.photos] == [p.id for p in pages[-1]]
    # min_upload_date is inclusive, as on Flickr.
    later = client.search("K2", min_upload_date=found[2].uploaded, page=1, per_page=100)
    assert [p.id for p in later.photos] == [p.id for p in found if p.uploaded >= found[2].uploaded]


def test_search_text_matches_folders_and_mixes_in_noise(fake_flickr: FakeFlickr, peaks_dir: Path,
                                                       street_dir: Path) -> None:
    assert set(fake_flickr.slugs) == set(load_catalog("peaks14").slugs), "every folder is a catalog mountain"
    client = client_for(fake_flickr)
    fake_flickr.upload_more()
    everest = client.search("mount everest", min_upload_date=0, page=1, per_page=500).photos
    assert everest and all("Mount Everest" in p.title for p in everest)
    assert client.search("Matterhorn", min_upload_date=0, page=1, per_page=10).total == 0
    every = fake_flickr.photos("mount-everest")
    noise = [p for p in every if p.noise]
    assert 0.08 < len(noise) / len(every) < 0.2 and all(p.path.parent == street_dir for p in noise)
    # Deterministic: a second server over the same folders is the same Flickr.
    again = FakeFlickr(peaks_dir, street_dir, catalog=load_catalog("peaks14"))
    assert [(p.id, p.license, p.uploaded) for p in again.photos("mount-everest")] == \
        [(p.id, p.license, p.uploaded) for p in every]
    # Geo comes from the catalog for geotagged mountain photos, never for noise.
    geotagged = [p for p in everest if p.latitude is not None]
    assert geotagged and all(abs(p.latitude - 27.9881) < 0.2 for p in geotagged)  # type: ignore[operator]
    assert all(p.latitude is None for p in everest if p.id in {n.id for n in noise})


def test_downloads_are_real_photos_with_size_fallback(fake_flickr: FakeFlickr) -> None:
    client = client_for(fake_flickr)
    fake_flickr.upload_more()
    photos = client.search("Lhotse", min_upload_date=0, page=1, per_page=500).photos
    sizes = {p.image_url.rsplit("_", 1)[1] for p in photos if p.image_url}
    assert sizes == {"c.jpg", "b.jpg"}, "some photos only have url_l: the client must fall back to it"
    for photo in photos[:4]:
        data = client.download(photo.image_url)  # type: ignore[arg-type]
        assert data == fake_flickr.photo(photo.id).path.read_bytes()
        assert load_image(data, 40_000_000).size[0] > 0


@pytest.mark.parametrize("fault", [
    Fault("search", "http", times=2, status=500),
    Fault("search", "http", times=1, status=429),
    Fault("search", "slow", times=1, delay_s=1.5),
    Fault("search", "flickr", times=2, code=105),
    Fault("search", "flickr", times=1, code=10),
    Fault("search", "flickr", times=1, code=106),
], ids=["http-500", "http-429", "timeout", "service-unavailable", "search-databases-unavailable",
        "write-failed"])
def test_search_retries_transient_faults(fake_flickr: FakeFlickr, fault: Fault) -> None:
    times = fault.times or 0
    fake_flickr.inject(fault)
    result = client_for(fake_flickr, timeout_s=0.5).search("K2", min_upload_date=0, page=1, per_page=5)
    assert len(result.photos) == 5
    assert fake_flickr.hits["search"] == times + 1


def test_search_gives_up_after_retries_with_growing_backoff(fake_flickr: FakeFlickr) -> None:
    delays: list[float] = []
    fake_flickr.inject(Fault("search", "http", times=None, status=503))
    with pytest.raises(FlickrUnavailable, match="failed 4 times"):
        client_for(fake_flickr, retries=3, sleep=delays.append).search("K2", min_upload_date=0, page=1,
                                                                        per_page=5)
    assert fake_flickr.hits["search"] == 4
    assert len(delays) == 3
    for number, delay in enumerate(delays):  # 0.01 * 2**n, jittered to between half and all of it
        assert 0.005 * 2**number <= delay <= 0.01 * 2**number


def test_rejected_key_is_fatal_and_names_the_variable(peaks_dir: Path) -> None:
    with FakeFlickr(peaks_dir, api_key="the-right-key") as fake:
        with pytest.raises(FlickrAuthError, match="FLICKR_API_KEY"):
            client_for(fake, key="a-wrong-key").search("K2", min_upload_date=0, page=1, per_page=5)
        assert fake.hits["search"] == 1, "an invalid key is not retried"
        assert client_for(fake, key="the-right-key").search("K2", min_upload_date=0, page=1, per_page=5).total


def test_error_codes_are_sorted_by_flickrs_documentation() -> None:
    """Issue 23, finding 4: 10 ("search API not currently available") is transient, not a rejection;
    0 and 429 are no Flickr error codes (a rate limit is HTTP 429); a bad key or endpoint is fatal."""
    assert {code for code, (kind, _) in SEARCH_ERRORS.items() if kind is ErrorKind.TRANSIENT} == {10, 105, 106}
    assert 0 not in SEARCH_ERRORS and 429 not in SEARCH_ERRORS
    assert error_kind(0) is error_kind(429) is error_kind(999) is ErrorKind.REJECTED  # unknown: not retried
    assert {error_kind(code) for code in (95, 96, 97, 98, 99, 100, 111, 112, 114, 115)} == {ErrorKind.FATAL}
    assert {error_kind(code) for code in (1, 2, 3, 4, 5, 11, 12, 17, 18, 20, 116)} == {ErrorKind.REJECTED}


@pytest.mark.parametrize(("code", "raised"), [
    (100, FlickrAuthError), (96, FlickrAuthError), (112, FlickrFatal), (95, FlickrFatal), (18, FlickrRejected),
    (0, FlickrRejected),
])
def test_fatal_and_rejected_codes_are_not_retried(fake_flickr: FakeFlickr, code: int,
                                                  raised: type[Exception]) -> None:
    fake_flickr.inject(Fault("search", "flickr", code=code))
    with pytest.raises(raised) as error:
        client_for(fake_flickr).search("K2", min_upload_date=0, page=1, per_page=5)
    assert fake_flickr.hits["search"] == 1
    assert isinstance(error.value, ConfigError) == (raised is not FlickrRejected)  # fatal: names a variable


def test_search_api_unavailable_for_good_is_flickr_unavailable_not_a_rejection(fake_flickr: FakeFlickr) -> None:
    fake_flickr.inject(Fault("search", "flickr", times=None, code=10))
    with pytest.raises(FlickrUnavailable, match="not currently available"):
        client_for(fake_flickr, retries=1).search("K2", min_upload_date=0, page=1, per_page=5)
    assert fake_flickr.hits["search"] == 2


def test_the_fake_serves_only_the_first_results_like_flickr(peaks_dir: Path) -> None:
    """Issue 23, finding 5: Flickr serves a search's first 4,000 results and refuses pages beyond them."""
    assert FakeFlickr(peaks_dir).max_results == FLICKR_MAX_RESULTS == 4_000
    with FakeFlickr(peaks_dir, max_per_page=4, max_results=10) as fake:
        client = client_for(fake)
        assert client.search("K2", min_upload_date=0, page=3, per_page=4).photos  # results 9-12: starts inside
        with pytest.raises(FlickrRejected, match="4,000"):
            client.search("K2", min_upload_date=0, page=4, per_page=4)
        assert fake.hits["search"] == 2, "refused, not retried"


@pytest.mark.parametrize("name", ["MOUNTAINID_INGEST_SEARCH_PAGES", "MOUNTAINID_RESWEEP_PAGES"])
def test_search_pages_beyond_flickrs_cap_are_refused_at_configuration(name: str) -> None:
    assert getattr(load_settings({name: "8"}), name.removeprefix("MOUNTAINID_").lower()) == 8  # 4,000 results
    with pytest.raises(ConfigError, match=rf"{name} must be at most 8.*4,000"):
        load_settings({name: "9"})


def test_bad_request_is_not_retried(fake_flickr: FakeFlickr) -> None:
    with pytest.raises(FlickrRejected, match="Parameterless"):
        client_for(fake_flickr).search("", min_upload_date=0, page=1, per_page=5)
    assert fake_flickr.hits["search"] == 1


def test_download_faults(fake_flickr: FakeFlickr) -> None:
    client = client_for(fake_flickr, timeout_s=0.5)
    photo = client.search("K2", min_upload_date=0, page=1, per_page=1).photos[0]
    original = fake_flickr.photo(photo.id).path.read_bytes()
    url = photo.image_url or ""

    fake_flickr.inject(Fault("photo", "http", status=404, photo_id=photo.id))
    with pytest.raises(PhotoUnavailable, match="404"):
        client.download(url)
    for transient in (Fault("photo", "http", status=503), Fault("photo", "cut"),
                      Fault("photo", "slow", delay_s=1.5)):
        fake_flickr.inject(transient)
        assert client.download(url) == original, transient.kind
    fake_flickr.inject(Fault("photo", "http", status=500, times=None))
    with pytest.raises(FlickrUnavailable):
        client.download(url)
    fake_flickr.faults.clear()
    with pytest.raises(PhotoUnavailable, match="limit"):
        client_for(fake_flickr, max_image_bytes=len(original) - 1).download(url)
    # Damaged bytes arrive as sent: judging them is the ingest's job (tests/ingest).
    fake_flickr.inject(Fault("photo", "truncate"))
    assert client.download(url) == original[: len(original) // 2]


def test_missing_key_for_real_flickr_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="FLICKR_API_KEY"):
        FlickrClient.from_settings(load_settings({}))
    # A fake server on loopback needs no key.
    assert FlickrClient.from_settings(load_settings({"FLICKR_REST_URL": "http://127.0.0.1:1/services/rest/"}))


def test_fake_flickr_command(peaks_dir: Path, street_dir: Path,
                             flickr_settings: Callable[..., Settings]) -> None:
    """`mountainid fake-flickr` serves until stopped and prints the URL to configure."""
    env = {**os.environ, "MOUNTAINID_CATALOG": "peaks14"}
    command = [sys.executable, "-m", "mountainid.cli", "fake-flickr", "--photos", str(peaks_dir),
               "--noise", str(street_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline().strip()  # type: ignore[union-attr]
        assert line.startswith("FLICKR_REST_URL=http://127.0.0.1:"), line
        settings = flickr_settings(FLICKR_REST_URL=line.split("=", 1)[1])
        client = FlickrClient.from_settings(settings)
        page = client.search("Nanga Parbat", min_upload_date=0, page=1, per_page=5)
        assert page.total > 20 and len(page.photos) == 5
    finally:
        process.terminate()
        process.wait(timeout=10)
