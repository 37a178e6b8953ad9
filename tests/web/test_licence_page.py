"""The model page says under which Flickr licences the training photos were taken (issue 23, finding 6)."""

from __future__ import annotations

from pathlib import Path

from mountainid.store import LocalBlobStore
from tests.web.conftest import web_settings
from web import create_app


def test_the_model_page_shows_the_licence_choice(weights_path: Path, empty_bucket: Path) -> None:
    for licenses, shown, hidden in (
            ("", ["CC BY 2.0 (Flickr licence 4): commercial use allowed, changes allowed", "CC0 1.0"],
             ["non-commercial", "CC BY-NC"]),
            ("4,2,6", ["CC BY-NC 2.0 (Flickr licence 2): non-commercial use only, changes allowed",
                       "CC BY-ND 2.0 (Flickr licence 6): commercial use allowed, no changes allowed"], ["CC0"])):
        settings = web_settings(weights_path, empty_bucket, MOUNTAINID_LICENSES=licenses)
        app = create_app(settings, LocalBlobStore(empty_bucket), watch=False)
        page = app.test_client().get("/model").get_data(as_text=True)
        assert 'id="photo-licences"' in page
        assert all(text in page for text in shown) and not any(text in page for text in hidden)
