"""The site and API through Flask's test client, on a real trained model and real photos."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mountainid.predict import Predictor
from mountainid.store import LocalBlobStore
from tests.web.conftest import web_settings
from web import create_app
from web.answer import license_label


def post_photo(client, data: bytes, path: str = "/api/v1/predict", filename: str = "photo.jpg"):
    return client.post(path, data={"photo": (io.BytesIO(data), filename)}, content_type="multipart/form-data")


def test_home_page_has_picker_camera_dropzone_and_no_inline_code(client, predictor: Predictor) -> None:
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert re.search(r'<input id="photo"[^>]*type="file"[^>]*name="photo"[^>]*accept="image/\*"', html)
    assert re.search(r'<input id="camera"[^>]*accept="image/\*"[^>]*capture="environment"', html)
    assert 'id="dropzone"' in html and 'enctype="multipart/form-data"' in html
    assert predictor.version in html
    # The CSP forbids inline code, so the page must have none: every script is a file, no style attributes.
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert " style=" not in html and "<style" not in html
    assert "never stored" in html


def test_api_answers_what_the_model_answers(client, predictor: Predictor, k2_heldout: Path) -> None:
    data = k2_heldout.read_bytes()
    expected = predictor.predict(data)
    response = post_photo(client, data)
    assert response.status_code == 200
    body = response.get_json()
    assert body["model_version"] == predictor.version
    assert [g["slug"] for g in body["guesses"]] == [g.slug for g in expected.guesses]
    assert [g["probability"] for g in body["guesses"]] == pytest.approx([g.probability for g in expected.guesses])
    assert "k2" in [g["slug"] for g in body["guesses"]]
    assert body["is_mountain"] is True and body["is_mountain"] == expected.is_mountain
    assert body["verdict"] == ("mountain" if expected.sure else "not-sure")
    best = expected.guesses[0]
    assert body["location"]["slug"] == best.slug
    assert body["location"]["map_url"].startswith("https://www.openstreetmap.org/?mlat=")
    assert len(body["credited_photos"]) == len(expected.similar) > 0
    assert response.headers["Cache-Control"] == "no-store"
    # The similar training photos are served from the store, as JPEGs.
    image = client.get(body["credited_photos"][0]["image_url"])
    assert image.status_code == 200 and image.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(image.data)).size[0] > 0


def test_the_answer_carries_its_evidence(client, predictor: Predictor, reframed_training_photo: Path) -> None:
    """The API gives the best-verified training photo and the matched points (as fractions of each
    photo's size); the page draws them."""
    data = reframed_training_photo.read_bytes()
    expected = predictor.predict(data)
    evidence = post_photo(client, data).get_json()["evidence"]
    assert evidence["photo"]["photo_id"] == reframed_training_photo.stem == expected.evidence.photo.photo_id
    assert evidence["inliers"] == expected.evidence.inliers >= 15
    assert all(0 <= value <= 1 for match in evidence["matches"] for value in match)
    assert expected.guesses[0].slug == evidence["photo"]["slug"]  # evidence for the answer given
    page = post_photo(client, data, path="/").get_data(as_text=True)
    assert f'data-inliers="{expected.evidence.inliers}"' in page
    assert page.count("<line ") == 2 * min(len(expected.evidence.matches), 24)  # a sample, side by side and stacked
    assert 'href="data:image/jpeg;base64,' in page and f'href="/photos/{evidence["photo"]["object_name"]}"' in page


def test_raw_body_gives_the_same_answer_as_multipart(client, k2_heldout: Path) -> None:
    data = k2_heldout.read_bytes()
    raw = client.post("/api/v1/predict", data=data, content_type="image/jpeg").get_json()
    form = post_photo(client, data).get_json()
    assert raw["guesses"] == form["guesses"] and raw["verdict"] == form["verdict"]


def test_street_photo_is_not_a_mountain_in_api_and_page(client, predictor: Predictor, street_photo: Path) -> None:
    data = street_photo.read_bytes()
    assert predictor.predict(data).is_mountain is False
    body = post_photo(client, data).get_json()
    assert body["verdict"] == "not-a-mountain" and body["location"] is None and body["credited_photos"] == []
    page = post_photo(client, data, path="/").get_data(as_text=True)
    assert "This does not look like a mountain." in page and 'data-verdict="not-a-mountain"' in page
    assert 'id="evidence"' not in page  # no matched points are drawn for a photo that is no mountain


def test_page_renders_answer_with_location_bars_and_credits(client, predictor: Predictor,
                                                            k2_heldout: Path) -> None:
    data = k2_heldout.read_bytes()
    expected = predictor.predict(data)
    fragment = client.post("/?fragment=1", data={"photo": (io.BytesIO(data), "x.jpg")},
                           content_type="multipart/form-data")
    html = fragment.get_data(as_text=True)
    assert fragment.status_code == 200 and not html.lstrip().startswith("<!doctype")
    names = re.findall(r'<span class="guess-name">([^<]+)</span>', html)
    assert names == [g.name for g in expected.guesses]
    assert html.count("<progress") == 3
    assert "Open in OpenStreetMap" in html and "openstreetmap.org" in html
    assert html.count('<img src="/photos/accepted/') == len(expected.similar)
    full = post_photo(client, data, path="/")
    assert full.status_code == 200 and "<!doctype html>" in full.get_data(as_text=True)


def test_not_sure_below_the_unknown_threshold(app, predictor: Predictor, k2_heldout: Path) -> None:
    """An answer below the model's unknown threshold reads "not sure", never a confident name."""
    from dataclasses import replace

    from flask import render_template

    from web.answer import build_answer

    prediction = predictor.predict(k2_heldout.read_bytes())
    with app.test_request_context():
        catalog = app.extensions["mountainid"].catalog
        unsure = build_answer(replace(prediction, sure=False), catalog, "id")
        # Why it is not sure: the threshold it missed, the higher one when no training photo verified it.
        said = {verified: render_template("_result.html", model=predictor, answer=build_answer(
            replace(prediction, sure=False, verified=verified), catalog, "id")) for verified in (True, False)}
    assert unsure.verdict == "not-sure" and unsure.headline.startswith("Not sure")
    assert f"confidence threshold ({predictor.unknown_threshold * 100:.0f}%)" in said[True]
    assert "None of its training photos shows the same view" not in said[True]
    assert (f"None of its training photos shows the same view, and without that the model names a mountain only "
            f"above {predictor.unverified_threshold * 100:.0f}% confidence") in said[False]


@pytest.mark.parametrize("case", ["not-an-image", "empty", "empty-part", "corrupt", "truncated", "bomb"])
def test_bad_input_gets_a_clear_4xx_in_api_and_page(client, k2_heldout: Path, bomb: bytes, case: str) -> None:
    good = k2_heldout.read_bytes()
    data, reasons = {
        "not-an-image": (b"hello, this is a text file\n" * 40, {"not-an-image"}),
        "empty": (b"", {"empty"}),
        "empty-part": (b"", {"empty"}),
        "corrupt": (good[:4] + b"\x00garbage" * 200, {"corrupt", "not-an-image"}),
        "truncated": (good[: len(good) // 2], {"truncated", "corrupt"}),
        "bomb": (bomb, {"too-many-pixels"}),
    }[case]
    if case == "empty":
        api = client.post("/api/v1/predict", data=b"", content_type="image/jpeg")
    else:
        api = post_photo(client, data)
    assert api.status_code == 400
    body = api.get_json()
    assert body["error"] in reasons and len(body["message"]) > 10
    page = post_photo(client, data, path="/")
    html = page.get_data(as_text=True)
    assert page.status_code == 400
    assert "We could not use that file" in html and body["message"][1:] in html
    # In our words: no imaging library wording ("image file is truncated (47 bytes not processed)"), one full stop.
    assert "image file is" not in html and "bytes not processed" not in html and f"{body['message'][1:]}.." not in html
    # The service is still up and answering.
    assert post_photo(client, good).status_code == 200


def test_upload_over_the_size_limit_is_413(client, k2_heldout: Path) -> None:
    oversize = k2_heldout.read_bytes() + b"\x00" * (10 * 1024 * 1024)
    api = post_photo(client, oversize)
    assert api.status_code == 413
    assert api.get_json()["error"] == "too-large" and "10 MB" in api.get_json()["message"]
    raw = client.post("/api/v1/predict", data=oversize, content_type="image/jpeg")
    assert raw.status_code == 413 and raw.get_json()["error"] == "too-large"
    page = post_photo(client, oversize, path="/")
    assert page.status_code == 413 and "That photo is too big" in page.get_data(as_text=True)
    assert post_photo(client, k2_heldout.read_bytes()).status_code == 200


def test_the_model_page_says_both_thresholds(client, predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer no training photo verifies must clear the higher threshold: the page says both, the API gives both
    (this small test model is never sure, so the live one is given thresholds for the length of the test)."""
    monkeypatch.setattr(predictor, "unknown_threshold", 0.61)
    monkeypatch.setattr(predictor, "unverified_threshold", 0.83)
    page = client.get("/model").get_data(as_text=True)
    assert ('Below 61% confidence the site answers "not sure" rather than a name, and below 83% when none of its '
            "training photos shows the same view") in page
    body = client.get("/api/v1/model").get_json()
    assert (body["unknown_threshold"], body["unverified_threshold"]) == (0.61, 0.83)


def test_model_page_and_api(client, predictor: Predictor) -> None:
    page = client.get("/model").get_data(as_text=True)
    assert predictor.version in page
    for name in predictor.names.values():
        assert name in page
    test = predictor.info["test"]
    assert f"{test['top1'] * 100:.1f}%" in page
    assert f"against {test['classifier_top1'] * 100:.1f}% for the classifier alone" in page
    assert f"checked against the {len(predictor.verifier)} photos the model learnt from" in page
    held = predictor.info["held_out"]  # how the "not sure" threshold was fitted, and what it promises
    assert (f"answers above them were right {held['confident_precision'] * 100:.0f}% of the time there, enough to "
            "show with 90 % confidence that at least 90 % are") in page
    body = client.get("/api/v1/model").get_json()
    assert (body["unknown_threshold"], body["unverified_threshold"]) == (predictor.unknown_threshold,
                                                                       predictor.unverified_threshold)
    assert body["version"] == predictor.version and body["labels"] == predictor.labels
    assert body["test"] == test and body["created"] == predictor.info["created"]
    for url in body["plots"].values():
        plot = client.get(url)
        assert plot.status_code == 200 and plot.mimetype == "image/png" and plot.data[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'"{url}"' in page  # shown (curves) or linked (the confusion matrix, drawn as a table)


@pytest.mark.parametrize("path", ["/healthz", "/health"])  # Cloud Run only passes /health to the app
def test_health_ready_with_a_model(client, predictor: Predictor, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.get_json()["model_version"] == predictor.version


def test_no_model_yet(weights_path: Path, empty_bucket: Path, k2_heldout: Path) -> None:
    settings = web_settings(weights_path, empty_bucket)
    app = create_app(settings, LocalBlobStore(empty_bucket), watch=False)
    app.extensions["mountainid"].holder.check_now()
    client = app.test_client()
    home = client.get("/")
    assert home.status_code == 200 and "No model yet" in home.get_data(as_text=True)
    assert "No model yet" in client.get("/model").get_data(as_text=True)
    assert client.get("/healthz").status_code == 503
    assert client.get("/health").status_code == 503
    for response in (post_photo(client, k2_heldout.read_bytes()), client.get("/api/v1/model")):
        assert response.status_code == 503 and response.get_json()["error"] == "no-model"
        assert response.headers["Retry-After"].isdigit()
    page = post_photo(client, k2_heldout.read_bytes(), path="/")
    assert page.status_code == 503 and "Not ready yet" in page.get_data(as_text=True)


def test_security_headers_everywhere(client, k2_heldout: Path) -> None:
    responses = [client.get("/"), client.get("/model"), client.get("/static/app.js"), client.get("/nope"),
                 post_photo(client, k2_heldout.read_bytes()), post_photo(client, b"junk" * 100)]
    for response in responses:
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert client.get("/static/app.js").mimetype == "text/javascript"


def test_not_found_and_debug_off(app, client) -> None:
    assert app.debug is False
    api = client.get("/api/v1/nothing")
    assert api.status_code == 404 and api.get_json()["error"] == "not-found"
    wrong_method = client.get("/api/v1/predict")
    assert wrong_method.status_code == 405 and wrong_method.is_json
    page = client.get("/nothing")
    assert page.status_code == 404 and "Traceback" not in page.get_data(as_text=True)


@pytest.mark.parametrize("url", [
    "/photos/../../etc/passwd", "/photos/accepted/k2/..%2F..%2Fmodels%2FLATEST", "/photos/models/LATEST",
    "/photos/accepted/k2/x.png", "/photos/raw/k2/x.jpg", "/photos/accepted/K2!/x.jpg",
    "/models/..%2F..%2Fetc/confusion.png", "/models/LATEST/confusion.png", "/models/x/model.keras",
])
def test_only_safe_names_reach_the_store(client, url: str) -> None:
    assert client.get(url).status_code == 404


def test_model_files_other_than_plots_are_not_served(client, predictor: Predictor) -> None:
    for name in ("model.keras", "metrics.json", "gallery.npz", "verification.npz", "COMPLETE"):
        assert client.get(f"/models/{predictor.version}/{name}").status_code == 404
    assert client.get(f"/models/{predictor.version}/curves.png").status_code == 200


def test_admin_reload_needs_the_token(session_settings, trained_bucket: Path, live_holder, weights_path) -> None:
    store = LocalBlobStore(trained_bucket)
    disabled = create_app(session_settings, store, live_holder, watch=False).test_client()
    refused = disabled.post("/admin/reload", headers={"Authorization": "Bearer anything"})
    assert refused.status_code == 403 and "disabled" in refused.get_json()["message"]

    settings = web_settings(weights_path, trained_bucket, MOUNTAINID_ADMIN_TOKEN="s3cret-token")
    client = create_app(settings, store, live_holder, watch=False).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"},
                    {"Authorization": "Bearer s3cret-toke"}):
        response = client.post("/admin/reload", headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    ok = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and ok.get_json()["version"] == live_holder.predictor.version
    assert client.get("/admin/reload").status_code == 405


def test_uploads_are_not_stored_by_default(client, trained_bucket: Path, k2_heldout: Path) -> None:
    assert post_photo(client, k2_heldout.read_bytes()).status_code == 200
    assert LocalBlobStore(trained_bucket).list_names("uploads/") == []


def test_uploads_opt_in_keeps_a_clean_copy_under_a_random_name(weights_path: Path, bucket_copy: Path,
                                                               live_holder, k2_heldout: Path) -> None:
    settings = web_settings(weights_path, bucket_copy, MOUNTAINID_STORE_UPLOADS="true")
    store = LocalBlobStore(bucket_copy)
    client = create_app(settings, store, live_holder, watch=False).test_client()
    # A photo carrying EXIF (camera, GPS-like data) under a revealing file name.
    image = Image.open(k2_heldout)
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    body = post_photo(client, buffer.getvalue(), filename="../../jane-doe-home.jpg").get_json()
    assert post_photo(client, b"not an image" * 10).status_code == 400  # refused photos are never kept
    names = store.list_names("uploads/")
    assert len(names) == 1
    assert re.fullmatch(r"uploads/\d{4}-\d{2}-\d{2}/[0-9a-f]{32}\.jpg", names[0])
    assert names[0].endswith(f"/{body['upload_id']}.jpg") and "jane" not in names[0]
    kept = Image.open(io.BytesIO(store.get(names[0])))
    assert kept.format == "JPEG" and kept.size == image.size and len(kept.getexif()) == 0
    info = store.info(names[0])
    assert info.metadata["model_version"] == body["model_version"]
    assert info.metadata["guess"] == body["guesses"][0]["slug"]
    assert not any("jane" in str(path) for path in bucket_copy.rglob("*"))


def test_an_upload_is_decoded_once_for_the_answer_the_page_and_the_kept_copy(weights_path: Path, bucket_copy: Path,
                                                                               live_holder, monkeypatch,
                                                                               reframed_training_photo: Path) -> None:
    """Both networks, the keypoints, the page's thumbnail and the kept copy all come from one decode."""
    settings = web_settings(weights_path, bucket_copy, MOUNTAINID_STORE_UPLOADS="true")
    client = create_app(settings, LocalBlobStore(bucket_copy), live_holder, watch=False).test_client()
    assert live_holder.predictor.verifies  # the keypoints are part of the answer
    opened: list[int] = []
    real_open = Image.open

    def counting_open(*args, **kwargs):  # the real decoder, counted
        opened.append(1)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    page = post_photo(client, reframed_training_photo.read_bytes(), path="/")  # a page with matched points
    assert page.status_code == 200 and 'href="data:image/jpeg;base64,' in page.get_data(as_text=True)
    assert len(LocalBlobStore(bucket_copy).list_names("uploads/")) == 1
    assert len(opened) == 1


def test_license_labels() -> None:
    assert license_label("4") == ("CC BY 2.0", "https://creativecommons.org/licenses/by/2.0/")
    assert license_label("9")[0].startswith("CC0")
    assert license_label("0") == ("All Rights Reserved", "")
    assert license_label("") == ("", "")
    assert license_label("CC BY-SA 4.0") == ("CC BY-SA 4.0", "")


def test_flickr_credit_is_rendered_with_owner_licence_and_links(app, predictor: Predictor,
                                                               k2_heldout: Path) -> None:
    """Photos from the Flickr ingest carry owner, licence id and page: all three reach the page."""
    from dataclasses import replace

    from flask import render_template

    from mountainid.predict import SimilarPhoto
    from web.answer import build_answer

    flickr = SimilarPhoto(photo_id="5312", slug="k2", object_name="accepted/k2/5312.jpg", owner="Ada Climber",
                          license="4", title="K2 at dawn", page_url="https://www.flickr.com/photos/ada/5312/",
                          similarity=0.9)
    prediction = replace(predictor.predict(k2_heldout.read_bytes()), similar=[flickr], is_mountain=True)
    with app.test_request_context():
        html = render_template("_result.html", answer=build_answer(prediction, app.extensions["mountainid"].catalog,
                                                                   "id"))
    assert '<img src="/photos/accepted/k2/5312.jpg"' in html
    assert '<a href="https://www.flickr.com/photos/ada/5312/"' in html and "K2 at dawn" in html
    assert "by Ada Climber" in html
    assert '<a href="https://creativecommons.org/licenses/by/2.0/"' in html and "CC BY 2.0" in html


def test_every_request_problem_gets_its_own_4xx(client, k2_heldout: Path) -> None:
    good = k2_heldout.read_bytes()
    other_name = client.post("/api/v1/predict", data={"file": (io.BytesIO(good), "k2.jpg")},
                             content_type="multipart/form-data")
    assert other_name.status_code == 200  # a single file part under another name is the photo
    no_file = client.post("/api/v1/predict", data={"caption": "K2"}, content_type="multipart/form-data")
    assert no_file.status_code == 400 and no_file.get_json()["error"] == "no-file"
    assert "no file in field 'photo'" in no_file.get_json()["message"]
    two_files = client.post("/api/v1/predict", data={"a": (io.BytesIO(good), "a.jpg"), "b": (io.BytesIO(good), "b.jpg")},
                            content_type="multipart/form-data")
    assert two_files.status_code == 400 and two_files.get_json()["error"] == "no-file"
    no_boundary = client.post("/api/v1/predict", data=b"--x\r\n\r\n", content_type="multipart/form-data")
    assert no_boundary.status_code == 400 and no_boundary.get_json()["error"] == "malformed-upload"
    garbage = client.post("/api/v1/predict", data=b"\x00\x01 not multipart at all" * 10,
                          content_type="multipart/form-data; boundary=zzz")
    assert garbage.status_code == 400 and garbage.get_json()["error"] == "malformed-upload"
    parts = {f"field{i}": "x" for i in range(2000)}
    many = client.post("/api/v1/predict", data=parts, content_type="multipart/form-data")
    assert many.status_code == 413 and many.get_json()["error"] == "too-many-form-parts"
    page = client.post("/", data={"caption": "K2"}, content_type="multipart/form-data")
    assert page.status_code == 400 and "No file in field" in page.get_data(as_text=True)


def test_wrong_methods_answer_405_with_allow_and_json_where_the_api_is(client) -> None:
    for path, allowed in (("/api/v1/predict", {"POST"}), ("/admin/reload", {"POST"}), ("/api/v1/model", {"GET"})):
        response = client.delete(path) if "GET" in allowed else client.get(path)
        assert response.status_code == 405, path
        assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
        assert response.is_json and response.get_json()["error"] == "method-not-allowed"


def test_a_file_name_that_is_not_utf8_gets_a_clear_error(client, k2_heldout: Path) -> None:
    """Werkzeug's parser reads part headers as UTF-8 (RFC 7578: UTF-8 or percent-encoded names); a body it
    cannot read is a 400 saying why, never a 500 nor a photo silently missing."""
    good = k2_heldout.read_bytes()
    body = (b'--zzz\r\nContent-Disposition: form-data; name="photo"; filename="\xff\xfe\xe9t\xe9.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + good + b"\r\n--zzz--\r\n")
    response = client.post("/api/v1/predict", data=body, content_type="multipart/form-data; boundary=zzz")
    assert response.status_code == 400 and response.get_json()["error"] == "malformed-upload"
    assert "not UTF-8" in response.get_json()["message"]
    utf8 = body.replace(b"\xff\xfe\xe9t\xe9.jpg", "été.jpg".encode())
    response = client.post("/api/v1/predict", data=utf8, content_type="multipart/form-data; boundary=zzz")
    assert response.status_code == 200 and len(response.get_json()["guesses"]) == 3
    assert response.get_json() | {"upload_id": ""} == post_photo(client, good).get_json() | {"upload_id": ""}


def test_photos_are_decoded_and_analysed_a_bounded_number_at_a_time(weights_path: Path, trained_bucket: Path,
                                                                     live_holder, monkeypatch) -> None:
    """Decoding is the memory peak (a 40 Mpx PNG is ~160 MB decoded): 8 at once may not all decode together."""
    settings = web_settings(weights_path, trained_bucket, MOUNTAINID_MAX_CONCURRENT_PREDICTIONS="2")
    app = create_app(settings, LocalBlobStore(trained_bucket), live_holder, watch=False)
    predictor = live_holder.predictor
    decode, predict_image, lock, in_flight, peak = predictor.decode, predictor.predict_image, threading.Lock(), [0], [0]

    def decoding(data: bytes):  # instrumentation around the real decode and prediction: how many at once
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        return decode(data)

    def predicting(image):
        try:
            return predict_image(image)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(predictor, "decode", decoding)
    monkeypatch.setattr(predictor, "predict_image", predicting)
    ramp = np.linspace(0, 255, 3000, dtype=np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([(ramp[None, :] + ramp[:, None]) / 2] * 3, axis=2).astype(np.uint8)).save(buffer, "PNG")
    statuses: list[int] = []

    def upload() -> None:
        statuses.append(post_photo(app.test_client(), buffer.getvalue()).status_code)

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == [200] * 8 and peak[0] == 2
