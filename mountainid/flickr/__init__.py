"""Flickr: the client the ingest uses (flickrapi + requests, with retries) and a fake server for tests."""

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
