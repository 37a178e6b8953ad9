"""Flickr: the client the ingest uses (flickrapi + requests, with retries); its fake is ``harness.fake_flickr``."""

from mountainid.flickr.client import (
    FlickrAuthError,
    FlickrClient,
    FlickrFatal,
    FlickrPhoto,
    FlickrRejected,
    FlickrUnavailable,
    PhotoUnavailable,
    SearchPage,
)

__all__ = ["FlickrAuthError", "FlickrClient", "FlickrFatal", "FlickrPhoto", "FlickrRejected", "FlickrUnavailable",
           "PhotoUnavailable", "SearchPage"]
