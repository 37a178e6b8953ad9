"""A real headless Chromium (Debian's) on the page served over loopback: upload, see the answer."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from mountainid.predict import Predictor
from mountainid.store import LocalBlobStore
from tests.web.conftest import web_settings
from web import create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: run `make system-deps` (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, serve, session_settings, trained_bucket: Path, live_holder):
    server = serve(create_app(session_settings, LocalBlobStore(trained_bucket), live_holder, watch=False))
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []  # CSP violations, script errors, failed loads
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(server.url + "/")
    yield page, problems
    context.close()


def test_upload_k2_then_a_street_photo(page, predictor: Predictor, k2_heldout: Path, street_photo: Path,
                                       tmp_path: Path) -> None:
    page, problems = page
    expected = predictor.predict(k2_heldout.read_bytes())
    page.set_input_files("#photo", str(k2_heldout))
    answer = page.locator("#answer")
    answer.wait_for()
    assert page.locator("#preview").is_visible()  # the chosen photo is previewed
    names = page.locator(".guess-name").all_inner_texts()
    assert names == [g.name for g in expected.guesses] and "K2" in names
    verdict = "mountain" if expected.sure else "not-sure"
    assert answer.get_attribute("data-verdict") == verdict
    best = expected.guesses[0].name
    assert page.locator(".location").inner_text().count(best) >= 1
    assert page.locator(".map-link").get_attribute("href").startswith("https://www.openstreetmap.org/")
    gallery = page.locator(".gallery img")
    assert gallery.count() == len(expected.similar) > 0
    page.wait_for_function("() => [...document.querySelectorAll('.gallery img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "k2.png"), full_page=True)
    assert (tmp_path / "k2.png").stat().st_size > 10_000

    page.set_input_files("#photo", str(street_photo))
    page.locator('#answer[data-verdict="not-a-mountain"]').wait_for()
    assert "This does not look like a mountain." in page.locator("#answer h2").inner_text()
    assert page.locator(".location").count() == 0 and page.locator("#evidence").count() == 0
    page.screenshot(path=str(tmp_path / "street.png"), full_page=True)
    assert problems == []


@pytest.mark.parametrize("width", [390, 1280])
def test_the_answer_shows_why_the_matched_points_between_upload_and_training_photo(
        browser, serve, app, predictor: Predictor, reframed_training_photo: Path, tmp_path: Path, width: int) -> None:
    """Another shot of a training photo's view: a readable sample of the agreeing points, each drawn as a
    dot on both photos (joined by a line), side by side on a desktop and stacked on a phone; enlargeable."""
    expected = predictor.predict(reframed_training_photo.read_bytes()).evidence
    assert expected is not None and expected.photo.photo_id == reframed_training_photo.stem
    context = browser.new_context(viewport={"width": width, "height": 900}, is_mobile=width < 500)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(serve(app).url + "/")
        page.set_input_files("#photo", str(reframed_training_photo))
        evidence = page.locator("#evidence")
        evidence.wait_for()
        assert int(evidence.get_attribute("data-inliers")) == expected.inliers
        assert f"{expected.inliers} points agree" in evidence.locator("h3").inner_text()
        evidence.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / f"evidence-{width}.png"), full_page=True)
        drawing = evidence.locator("svg.matches:visible")
        assert drawing.count() == 1
        shown = drawing.locator("g.match").count()
        assert shown == min(len(expected.matches), 24) >= 15  # a sample one can follow, not a blur of lines
        assert drawing.locator("circle.on-upload").count() == drawing.locator("circle.on-training").count() == shown
        # Measured at one instant: the page scrolls smoothly to the answer.
        upload, training, ends, starts = drawing.evaluate("""svg => {
            const box = element => element.getBoundingClientRect().toJSON();
            return [box(svg.querySelector('use.upload')), box(svg.querySelector('use.training')),
                    [...svg.querySelectorAll('circle.on-upload')].map(box),
                    [...svg.querySelectorAll('circle.on-training')].map(box)]; }""")

        def inside(box, dot) -> bool:  # a dot's centre on its photo
            x, y = dot["x"] + dot["width"] / 2, dot["y"] + dot["height"] / 2
            return (box["x"] - 1 <= x <= box["x"] + box["width"] + 1
                    and box["y"] - 1 <= y <= box["y"] + box["height"] + 1)
        assert all(inside(upload, dot) for dot in ends) and all(inside(training, dot) for dot in starts)
        if width < 500:  # stacked: the upload above the training photo, each nearly the card's width
            assert upload["y"] + upload["height"] <= training["y"] and upload["width"] > 250
        else:  # side by side
            assert upload["x"] + upload["width"] <= training["x"] and upload["height"] > 150
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width
        training_url = evidence.locator("symbol#evidence-photo image").get_attribute("href")
        assert page.evaluate("async (url) => (await fetch(url)).headers.get('content-type')",
                             training_url) == "image/jpeg"
        assert evidence.locator(".credit").inner_text().startswith("Training photo:")

        before = drawing.bounding_box()
        evidence.locator("button.enlarge").click()  # enlarge: the drawing fills the screen
        big = evidence.locator("svg.matches:visible").bounding_box()
        assert big["width"] > before["width"] and evidence.locator(".enlarged").count() == 1
        page.screenshot(path=str(tmp_path / f"evidence-enlarged-{width}.png"))
        page.keyboard.press("Escape")
        assert evidence.locator(".enlarged").count() == 0
        assert problems == []  # no CSP violation: the inline copy of the upload is an allowed data: image
    finally:
        context.close()


def test_drag_and_drop_and_a_bad_file(page, street_photo: Path) -> None:
    page, problems = page
    payload = base64.b64encode(street_photo.read_bytes()).decode()
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "street.jpg", {type: "image/jpeg"}));
        return transfer;
    }""", payload)
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    page.locator('#answer[data-verdict="not-a-mountain"]').wait_for()

    page.set_input_files("#photo", files=[{"name": "notes.jpg", "mimeType": "image/jpeg",
                                           "buffer": b"these are my notes, not a photo\n" * 20}])
    error = page.locator("#error")
    error.wait_for()
    assert error.get_attribute("data-reason") == "not-an-image"
    assert "We could not use that file" in error.inner_text()
    # The 400 itself is logged by Chromium as a failed resource; nothing else may be.
    assert [p for p in problems if "400" not in p] == []


@pytest.mark.parametrize("width", [360, 390, 414])
def test_at_phone_width_nothing_overflows_and_no_broken_preview_shows(browser, serve, app, width) -> None:
    server = serve(app)
    context = browser.new_context(viewport={"width": width, "height": 800}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        for path in ("/", "/model", "/api"):
            page.goto(server.url + path)
            overflow = page.evaluate("() => document.documentElement.scrollWidth")
            assert overflow <= width, f"{path} is {overflow} px wide at {width} px"
            links = page.locator(".nav a")
            for index in range(links.count()):  # every header link fully on screen
                box = links.nth(index).bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (path, box)
        page.goto(server.url + "/")
        assert not page.locator("#preview").is_visible()  # no empty image before a photo is chosen
    finally:
        context.close()


def test_one_photo_is_sent_once_even_if_identify_is_clicked(page, k2_heldout: Path) -> None:
    page, problems = page
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.set_input_files("#photo", str(k2_heldout))
    page.locator("#answer").wait_for()
    page.click("#submit")
    page.wait_for_function("() => !document.querySelector('#upload-form').classList.contains('busy')")
    assert len(posts) == 1, posts
    assert problems == []


def test_not_a_mountain_shows_the_guesses_muted(page, street_photo: Path) -> None:
    page, _ = page
    page.set_input_files("#photo", str(street_photo))
    page.locator('#answer[data-verdict="not-a-mountain"]').wait_for()
    opacity = page.evaluate("() => getComputedStyle(document.querySelector('.guesses')).opacity")
    assert float(opacity) < 1
    assert "not an answer" in page.locator("#answer header").inner_text()


def test_the_page_without_a_model_switches_itself_on_when_one_is_published(browser, serve, weights_path,
                                                                            empty_bucket: Path,
                                                                            trained_bucket: Path) -> None:
    settings = web_settings(weights_path, empty_bucket)
    store = LocalBlobStore(empty_bucket)
    server = serve(create_app(settings, store))
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        assert page.locator("#no-model").is_visible() and page.locator("#submit").is_disabled()
        for name in LocalBlobStore(trained_bucket).list_names("models/"):  # the training job publishes
            if not name.endswith("LATEST"):
                store.put(name, LocalBlobStore(trained_bucket).get(name))
        store.put("models/LATEST", LocalBlobStore(trained_bucket).get("models/LATEST"))
        page.locator("#submit:not([disabled])").wait_for(timeout=60_000)  # the page polls the API by itself
        assert page.locator("#no-model").count() == 0 and page.locator("#photo").is_enabled()
    finally:
        page.close()
