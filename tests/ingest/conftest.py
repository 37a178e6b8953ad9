"""The ingest tests use the fake-Flickr fixtures of tests/flickr."""

from tests.flickr.conftest import fake_flickr, flickr_settings, peaks_dir, street_dir  # noqa: F401
