"""Talking to Flickr: photo search through flickrapi, photo downloads through one requests Session.

Every call is retried with exponential back-off on what can heal by waiting (HTTP 429/5xx,
timeouts, dropped connections, and the error codes Flickr documents as temporary: 10, 105, 106);
after ``retries`` retries it raises :class:`FlickrUnavailable`, so the caller can stop cleanly
and try again on the next scheduled run. What waiting cannot fix is raised at once: a rejected
API key or a client Flickr does not understand (:class:`FlickrFatal`, a :class:`ConfigError`
naming the variable to fix), a request Flickr refuses (:class:`FlickrRejected`), a photo that is
gone or too big (:class:`PhotoUnavailable`).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import flickrapi
import requests
from requests.adapters import HTTPAdapter

from mountainid.config import FLICKR_MAX_PER_PAGE, ConfigError, Settings
from mountainid.logs import event

log = logging.getLogger(__name__)
# flickrapi logs every call at INFO and every non-200 answer (with its body) at ERROR; the retry
# loop below logs each failure once, structured, so its own lines are only noise.
logging.getLogger("flickrapi").setLevel(logging.CRITICAL)

T = TypeVar("T")

# Sizes in order of preference: 800 px (c) is plenty for the models; 1024 px (l) and 640 px (z)
# stand in when Flickr has no c-size rendition of a photo (old or small uploads).
IMAGE_SIZES = ("url_c", "url_l", "url_z")
EXTRAS = ("owner_name", "license", "date_upload", "date_taken", "geo", "tags", *IMAGE_SIZES)
MAX_PER_PAGE = FLICKR_MAX_PER_PAGE
MAX_BACKOFF_S = 60.0

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})  # HTTP statuses: rate limits arrive as 429


class ErrorKind(Enum):
    """What a Flickr error code means for the caller."""

    TRANSIENT = "transient"  # Flickr is ill: retry with back-off, then stop the run; the next one resumes
    REJECTED = "rejected"  # this request is refused: retrying it cannot help, other searches may work
    FATAL = "fatal"  # every request would fail the same way (key, signature, endpoint): a configuration error


# The error codes of flickr.photos.search as its documentation lists them (www.flickr.com/services/api/
# flickr.photos.search.html), sorted by what they mean for a run. Codes not listed are REJECTED.
SEARCH_ERRORS: dict[int, tuple[ErrorKind, str]] = {
    1: (ErrorKind.REJECTED, "Too many tags in ALL query"),
    2: (ErrorKind.REJECTED, "Unknown user"),
    3: (ErrorKind.REJECTED, "Parameterless searches have been disabled"),
    4: (ErrorKind.REJECTED, "You don't have permission to view this pool"),
    5: (ErrorKind.REJECTED, "User deleted"),
    10: (ErrorKind.TRANSIENT, "Sorry, the Flickr search API is not currently available."),
    11: (ErrorKind.REJECTED, "No valid machine tags"),
    12: (ErrorKind.REJECTED, "Exceeded maximum allowable machine tags"),
    17: (ErrorKind.REJECTED, "You can only search within your own contacts"),
    18: (ErrorKind.REJECTED, "Illogical arguments"),
    # Not in the method's list: what issue 23 reports for a page past the first 4,000 results.
    20: (ErrorKind.REJECTED, "Search results beyond the first 4,000 are not available"),
    95: (ErrorKind.FATAL, "SSL is required"),
    96: (ErrorKind.FATAL, "Invalid signature"),
    97: (ErrorKind.FATAL, "Missing signature"),
    98: (ErrorKind.FATAL, "Login failed / Invalid auth token"),
    99: (ErrorKind.FATAL, "User not logged in / Insufficient permissions"),
    100: (ErrorKind.FATAL, "Invalid API Key"),
    105: (ErrorKind.TRANSIENT, "Service currently unavailable"),
    106: (ErrorKind.TRANSIENT, "Write operation failed"),
    111: (ErrorKind.FATAL, "Format not found"),
    112: (ErrorKind.FATAL, "Method not found"),
    114: (ErrorKind.FATAL, "Invalid SOAP envelope"),
    115: (ErrorKind.FATAL, "Invalid XML-RPC Method Call"),
    116: (ErrorKind.REJECTED, "Bad URL found"),
}
_KEY_CODES = frozenset({96, 97, 98, 99, 100})  # of the fatal ones: the key or secret
_STATUS_IN_MESSAGE = re.compile(r"Status code (\d+)")  # how flickrapi reports a non-200 answer


def error_kind(code: int) -> ErrorKind:
    """How a Flickr error code is handled: by the documented list, an unknown code as a refusal."""
    return SEARCH_ERRORS.get(code, (ErrorKind.REJECTED, ""))[0]


class FlickrUnavailable(RuntimeError):
    """Flickr kept failing in ways that may heal (5xx, timeouts, rate limits) after all retries."""


class FlickrRejected(RuntimeError):
    """Flickr refused the request itself (bad parameters); retrying the same request cannot help."""


class FlickrFatal(ConfigError):
    """Flickr refuses every request of this client (SSL, method, format): fatal for the run."""


class FlickrAuthError(FlickrFatal):
    """Flickr rejected the API key or signature: a configuration problem, fatal for the run."""


class PhotoUnavailable(RuntimeError):
    """This photo cannot be had (HTTP 403/404/410, over the size limit): skip it for good."""


class _Transient(Exception):
    """Internal: one attempt failed in a way worth retrying."""


@dataclass(frozen=True)
class FlickrPhoto:
    """One photo of a search result, with the extras MountainID keeps as object metadata."""

    id: str
    owner: str
    owner_name: str
    title: str
    license: int
    uploaded: int  # seconds since the epoch, Flickr's date_upload
    taken: str
    tags: str
    latitude: float | None
    longitude: float | None
    image_url: str | None

    @property
    def page_url(self) -> str:
        return f"https://www.flickr.com/photos/{self.owner}/{self.id}/"

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> FlickrPhoto:
        latitude, longitude = _coordinate(item.get("latitude")), _coordinate(item.get("longitude"))
        geotagged = latitude is not None and longitude is not None and (latitude, longitude) != (0.0, 0.0)
        return cls(
            id=str(item["id"]), owner=str(item.get("owner", "")), owner_name=str(item.get("ownername", "")),
            title=str(item.get("title", "")), license=int(item.get("license", 0) or 0),
            uploaded=int(item.get("dateupload", 0) or 0), taken=str(item.get("datetaken", "")),
            tags=str(item.get("tags", "")),
            latitude=latitude if geotagged else None, longitude=longitude if geotagged else None,
            image_url=next((item[size] for size in IMAGE_SIZES if item.get(size)), None),
        )


def _coordinate(value: Any) -> float | None:
    """Flickr sends coordinates as strings, numbers, or 0 for "not geotagged"."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class SearchPage:
    photos: list[FlickrPhoto]
    page: int
    pages: int
    total: int


class FlickrClient:
    """Search and download with retries. Search runs on the caller's thread; downloads are thread-safe."""

    def __init__(self, api_key: str, api_secret: str, *, rest_url: str, licenses: Iterable[int],
                 retries: int, backoff_s: float, timeout_s: float, max_image_bytes: int,
                 pool_size: int = 8, sleep: Callable[[float], None] = time.sleep) -> None:
        self._api = flickrapi.FlickrAPI(api_key, api_secret, format="parsed-json", store_token=False,
                                        timeout=timeout_s)
        self._api.REST_URL = rest_url  # flickrapi reads it from the instance on every call
        self.licenses = ",".join(str(code) for code in licenses)
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.max_image_bytes = max_image_bytes
        self._sleep = sleep
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 1))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._random = random.Random()
        self._random_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, sleep: Callable[[float], None] = time.sleep) -> FlickrClient:
        """The client the settings describe; fails naming FLICKR_API_KEY when real Flickr has no key."""
        key, secret = settings.require_flickr_credentials()
        return cls(key, secret, rest_url=settings.flickr_rest_url, licenses=settings.licenses,
                   retries=settings.flickr_retries, backoff_s=settings.flickr_backoff_s,
                   timeout_s=settings.flickr_timeout_s, max_image_bytes=settings.max_image_bytes,
                   pool_size=settings.download_workers, sleep=sleep)

    def close(self) -> None:
        self._session.close()

    def search(self, text: str, *, min_upload_date: int, page: int, per_page: int,
               max_upload_date: int | None = None) -> SearchPage:
        """One page of photos matching ``text``, oldest upload first, from ``min_upload_date`` on
        (to ``max_upload_date``, both inclusive, as on Flickr).

        Oldest-first with a lower bound on the upload date is what makes a cursor work: photos
        uploaded later sort after everything already seen, so paging never skips or repeats.
        """
        params = {
            "text": text, "license": self.licenses, "sort": "date-posted-asc",
            "min_upload_date": str(min_upload_date), "content_type": "1", "media": "photos",
            "extras": ",".join(EXTRAS), "page": str(page), "per_page": str(min(per_page, MAX_PER_PAGE)),
        }
        if max_upload_date is not None:
            params["max_upload_date"] = str(max_upload_date)
        answer = self._with_retries(lambda: self._call_search(params), "search", text=text, page=page)
        result = answer.get("photos")
        if not isinstance(result, dict):
            raise FlickrRejected(f"photos.search answered without 'photos': {str(answer)[:200]}")
        return SearchPage(photos=[FlickrPhoto.from_json(item) for item in result.get("photo", [])],
                          page=int(result.get("page", page)), pages=int(result.get("pages", 0)),
                          total=int(result.get("total", 0)))

    def _call_search(self, params: dict[str, str]) -> dict[str, Any]:
        try:
            return self._api.photos.search(**params)
        except flickrapi.FlickrError as error:
            raise _classify_flickr_error(error) from error
        except ValueError as error:  # a body that is not JSON: a proxy error page, a cut response
            raise _Transient(f"unreadable answer ({error})") from error
        except requests.RequestException as error:
            raise _Transient(f"{type(error).__name__}: {error}") from error

    def download(self, url: str) -> bytes:
        """The photo's bytes. PhotoUnavailable: gone or too big; FlickrUnavailable: Flickr is ill."""
        return self._with_retries(lambda: self._fetch(url), "download", url=url)

    def _fetch(self, url: str) -> bytes:
        try:
            with self._session.get(url, timeout=self.timeout_s, stream=True) as response:
                if response.status_code in TRANSIENT_STATUS or response.status_code >= 500:
                    raise _Transient(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise PhotoUnavailable(f"HTTP {response.status_code}")
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > self.max_image_bytes:
                    raise PhotoUnavailable(f"{declared} bytes is over the {self.max_image_bytes}-byte limit")
                chunks, size = [], 0
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    size += len(chunk)
                    if size > self.max_image_bytes:
                        raise PhotoUnavailable(f"more than the {self.max_image_bytes}-byte limit")
                    chunks.append(chunk)
                return b"".join(chunks)
        except requests.RequestException as error:  # timeouts, resets, a body cut short
            raise _Transient(f"{type(error).__name__}: {error}") from error

    def _with_retries(self, attempt: Callable[[], T], what: str, **fields: Any) -> T:
        for number in range(self.retries + 1):
            try:
                return attempt()
            except _Transient as error:
                if number == self.retries:
                    raise FlickrUnavailable(f"Flickr {what} failed {number + 1} times, "
                                            f"last: {error}") from None
                delay = self._backoff(number)
                event(log, "flickr retry", level=logging.WARNING, call=what, attempt=number + 1,
                      delay_s=round(delay, 3), error=str(error), **fields)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, number: int) -> float:
        """Exponential with jitter (half to full delay), so runs that failed together retry apart."""
        with self._random_lock:
            jitter = self._random.uniform(0.5, 1.0)
        return min(self.backoff_s * 2 ** number, MAX_BACKOFF_S) * jitter


def _classify_flickr_error(error: flickrapi.FlickrError) -> Exception:
    """Sort a flickrapi error by its documented code: retry (_Transient), fatal config, or rejected."""
    message = str(error)
    if error.code is None:  # not a Flickr error payload: an HTTP status flickrapi reports in the message
        match = _STATUS_IN_MESSAGE.search(message)
        status = int(match.group(1)) if match else 0
        if status in TRANSIENT_STATUS or status >= 500 or not match:
            return _Transient(message)
        return FlickrRejected(message)
    kind = error_kind(error.code)
    if kind is ErrorKind.TRANSIENT:
        return _Transient(message)
    if kind is ErrorKind.REJECTED:
        return FlickrRejected(message)
    if error.code in _KEY_CODES:
        return FlickrAuthError(f"Flickr rejected the credentials ({message}): check FLICKR_API_KEY "
                               f"and FLICKR_API_SECRET")
    return FlickrFatal(f"Flickr refuses every request of this client ({message}): check FLICKR_REST_URL")
