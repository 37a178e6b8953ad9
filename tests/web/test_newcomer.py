"""What a newcomer meets (issue 20), in a real headless Chromium at a phone's and a desktop's width:
error pages with their own copy, a "why" view that reads at a glance, a model page readable on a phone,
and a model trained on a photo folder that serves without setting anything more."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import requests

from mountainid.store import LocalBlobStore
from tests.web.conftest import web_settings
from tests.web.test_browser import browser  # noqa: F401 - the shared headless Chromium
from web import create_app

pytestmark = pytest.mark.browser
WIDTHS = [390, 1280]


@pytest.fixture()
def site(serve, session_settings, trained_bucket: Path, live_holder):
    """The site on loopback with one route that fails, to see the 500 page."""
    app = create_app(session_settings, LocalBlobStore(trained_bucket), live_holder, watch=False)

    def fail() -> str:
        raise RuntimeError("a bug")
    app.add_url_rule("/fail", view_func=fail)
    return serve(app).url


def open_page(browser, width: int):  # noqa: F811
    context = browser.new_context(viewport={"width": width, "height": 900}, is_mobile=width < 500,
                                  has_touch=width < 500)
    page = context.new_page()
    page.set_default_timeout(30_000)
    return context, page


def fits(page, width: int) -> None:
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(("method", "path", "status", "title"), [
    ("GET", "/nosuchpage", 404, "Page not found"), ("PUT", "/", 405, "Not available that way"),
    ("GET", "/fail", 500, "Something went wrong on our side")])
def test_error_pages_have_their_own_copy_in_the_site_style(browser, site: str, width: int, method: str,  # noqa: F811
                                                           path: str, status: int, title: str, tmp_path: Path) -> None:
    context, page = open_page(browser, width)
    try:
        if method == "GET":
            response = page.goto(site + path)
        else:  # a browser only sends PUT from a script: render its answer as the page
            page.goto(site + "/api")
            html = page.evaluate("async (url) => (await fetch(url, {method: 'PUT'})).text()", site + path)
            page.set_content(html)
            response = None
        assert response is None or response.status == status
        assert page.locator("h1").inner_text() == title
        text = page.locator("main").inner_text()
        assert "Try another photo" not in text and "could not use that file" not in text and ".." not in text
        assert page.locator(".site-header .brand").is_visible()  # the site's own header and footer
        assert page.locator(".error-actions a").first.is_visible()
        fits(page, width)
        page.screenshot(path=str(tmp_path / f"{status}-{width}.png"), full_page=True)
    finally:
        context.close()


def test_api_errors_stay_json(site: str) -> None:
    for method, path, status in [("GET", "/api/v1/nosuch", 404), ("PUT", "/api/v1/predict", 405)]:
        response = requests.request(method, site + path, timeout=10)
        assert response.status_code == status and response.headers["Content-Type"] == "application/json"
        assert not response.json()["message"].endswith("..")


def test_a_refused_upload_keeps_the_upload_copy_with_one_full_stop(site: str) -> None:
    response = requests.post(site + "/", files={"photo": ("notes.jpg", b"not a photo\n" * 50, "image/jpeg")},
                             timeout=10)
    assert response.status_code == 400
    assert "We could not use that file" in response.text and "Try another photo" in response.text
    assert ".." not in response.text.replace("...", "")


def move_recorded_weights(bucket: Path, where: Path) -> None:
    """Make the live version record its weights at ``where`` (as if trained on another machine's path)."""
    store = LocalBlobStore(bucket)
    version = json.loads(store.get("models/LATEST"))["version"]
    name = f"models/{version}/config.json"
    config = json.loads(store.get(name))
    assert Path(config["weights"]).is_file()  # training recorded the file it used
    store.put(name, json.dumps({**config, "weights": str(where)}).encode())


@pytest.mark.parametrize("width", WIDTHS)
def test_a_model_finds_its_weights_or_says_what_to_set_and_retries(browser, serve, bucket_copy: Path,  # noqa: F811
                                                                    weights_path: Path, tmp_path: Path,
                                                                    width: int) -> None:
    """MOUNTAINID_WEIGHTS left unset ('imagenet', a download): the model loads from the file it records;
    where that file is missing, the page and /health say what to set, and it loads once the file is there."""
    missing = tmp_path / "elsewhere" / weights_path.name
    move_recorded_weights(bucket_copy, missing)
    settings = web_settings(weights_path, bucket_copy, MOUNTAINID_WEIGHTS="imagenet")
    server = serve(create_app(settings, LocalBlobStore(bucket_copy)))
    health = requests.get(server.url + "/health", timeout=10)
    assert health.status_code == 503 and health.headers["Content-Type"] == "application/json"
    assert f"{missing}, which is not on this machine: set MOUNTAINID_WEIGHTS to that .weights.h5 file" in (
        health.json()["message"])
    context, page = open_page(browser, width)
    try:
        page.goto(server.url + "/")
        problem = page.locator("#model-problem")
        assert "set MOUNTAINID_WEIGHTS" in problem.inner_text() and str(missing) in problem.inner_text()
        assert "still collecting photos" not in page.locator("main").inner_text()
        fits(page, width)
        page.screenshot(path=str(tmp_path / f"no-weights-{width}.png"), full_page=True)
        missing.parent.mkdir()
        shutil.copy(weights_path, missing)  # the cause fixed: the site retries by itself at its next poll
        page.locator("#submit:not([disabled])").wait_for(timeout=60_000)
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
        page.goto(server.url + "/model")
        assert "local photo folder" in page.locator("#photo-sources").inner_text()  # the photos came from files
        assert "shown by file name" in page.locator("#photo-folder").inner_text()
    finally:
        context.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_the_model_page_reads_on_a_phone(browser, serve, bucket_copy: Path, weights_path: Path,  # noqa: F811
                                         tmp_path: Path, width: int) -> None:
    """Confusion matrix as a table with readable names, an empty row explained, label noise as thumbnails
    with the mountains they are filed under (not bucket paths)."""
    store = LocalBlobStore(bucket_copy)
    version = json.loads(store.get("models/LATEST"))["version"]
    metrics = json.loads(store.get(f"models/{version}/metrics.json"))
    labels = metrics["labels"]
    metrics["test_detail"]["confusion"][0] = [0] * len(labels)  # a mountain with no test photo
    photos = [next(name for name in store.list_names(f"accepted/{slug}/") if name.endswith(".jpg"))
              for slug in labels[1:3]]
    metrics["label_conflicts"] = [{"a": photos[0], "b": photos[1], "bits": 3}]
    store.put(f"models/{version}/metrics.json", json.dumps(metrics).encode())
    server = serve(create_app(web_settings(weights_path, bucket_copy), store))
    context, page = open_page(browser, width)
    try:
        page.goto(server.url + "/model")
        rows = page.locator("#confusion tbody th.row-head")
        assert rows.count() == len(labels)
        names = rows.all_inner_texts()
        assert all(metrics["names"][slug] in text for slug, text in zip(labels, names))
        for index in range(rows.count()):  # every name whole, on screen, at a readable size
            box = rows.nth(index).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width
        assert float(rows.first.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")) >= 12
        empty = page.locator("#confusion tbody tr.empty")
        assert empty.count() == 1 and "No test photos" in empty.inner_text()
        assert metrics["names"][labels[0]] in page.locator("#confusion-empty").inner_text()
        conflicts = page.locator("#label-conflicts")
        conflicts.scroll_into_view_if_needed()
        images = conflicts.locator("img")
        assert images.count() == 2
        page.wait_for_function("() => [...document.querySelectorAll('#label-conflicts img')]"
                               ".every(img => img.complete && img.naturalWidth > 0)")
        captions = conflicts.locator("figcaption").all_inner_texts()
        assert [metrics["names"][slug] in text for slug, text in zip(labels[1:3], captions)] == [True, True]
        assert "accepted/" not in page.locator("main").inner_text()
        fits(page, width)
        page.screenshot(path=str(tmp_path / f"model-{width}.png"), full_page=True)
    finally:
        context.close()
