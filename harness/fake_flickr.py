"""A fake Flickr on loopback: ``flickr.photos.search`` over a photo folder, plus the photo files.

Built over a folder with one subfolder per mountain (``../shared/data/peaks14``): a search whose
text slugifies to a subfolder's slug finds that subfolder's photos, mixed with a deterministic
share of noise photos from another folder (``../shared/data/scenes/street``) the way real
Flickr results hold street scenes titled "Everest trip". Ids, owners (one photographer per
``BURST`` consecutive photos of a mountain, so splitting by owner has bursts to keep together),
licences (some "All Rights Reserved", so the licence filter matters), upload dates and geo are
derived from file names, so
every run of every test sees the same Flickr. Upload dates come in pairs that share a second,
like a burst upload, so a cursor must handle ties.

Answers follow Flickr's JSON: ``{"photos": {"page", "pages", "perpage", "total", "photo": [...]},
"stat": "ok"}``, errors as ``{"stat": "fail", "code", "message"}``; a page past the last answers
the last page again, as Flickr does. Only part of each mountain's photos may be "uploaded" at
first (``visible``); :meth:`FakeFlickr.upload_more` uploads more, later in time.

Faults are programmable (:class:`Fault`): HTTP errors, slow answers (client time-outs), Flickr
error payloads with the codes and messages Flickr documents (``mountainid.flickr.client.SEARCH_ERRORS``:
10 "search API not currently available", 105 "Service currently unavailable", ...), truncated or
non-image photo bytes, a connection cut short. As on Flickr, a search serves only its first 4,000
results (``max_results``; a page past them is refused), and a photo's licence can change after its
upload (:meth:`FakeFlickr.relicense`), so the ingest's cursor has passed it.

Used by the tests, the benchmark and ``make run`` (in-process), and as ``mountainid fake-flickr``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from mountainid.arguments import existing_folder
from mountainid.catalog import Catalog, load_catalog, slugify
from mountainid.config import FLICKR_MAX_RESULTS, Settings
from mountainid.flickr.client import SEARCH_ERRORS
from mountainid.logs import event

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FIRST_UPLOAD = 1_600_000_000  # 2020-09-13: the fake's first upload
UPLOAD_STEP_S = 600  # two photos share each upload second, then ten minutes pass
# About one in six "All Rights Reserved"; the rest spread over the reusable ids, CC 4.0 (11-16) included.
LICENSE_POOL = (0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)
FIRST_NAMES = ("Ana", "Pemba", "Li", "Karim", "Sofia", "Tom", "Mira", "Jonas", "Dawa", "Elena", "Hiro", "Nadia")
LAST_NAMES = ("Ortiz", "Sherpa", "Wei", "Baig", "Rossi", "Walker", "Shah", "Berg", "Tamang", "Novak", "Sato", "Khan")
BURST = 3  # consecutive photos (by file name) of one mountain share a photographer, like a real burst
_PHOTO_PATH = re.compile(r"^/(\d+)/(\d+)_([0-9a-f]+)_([a-z])\.jpg$")
_CONSUMER_KEY = re.compile(r'oauth_consumer_key="([^"]*)"')


def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("/".join(parts).encode("utf-8")).digest()[:8], "big")


def _owner(h: int) -> tuple[str, str]:
    """A Flickr NSID and display name, the same for the same hash (one photographer per burst)."""
    return (f"{h % 10**8:08d}@N0{h >> 30 & 7}",
            f"{FIRST_NAMES[(h >> 8) % len(FIRST_NAMES)]} {LAST_NAMES[(h >> 24) % len(LAST_NAMES)]}")


@dataclass(frozen=True)
class FakePhoto:
    id: str
    path: Path
    slug: str  # the mountain whose search finds it
    noise: bool
    owner: str
    owner_name: str
    title: str
    license: int
    uploaded: int
    tags: str
    latitude: float | None
    longitude: float | None
    secret: str
    server: str
    size: str  # "c" (800 px) or "b" (Flickr's suffix for url_l): the fake's only rendition

    def as_json(self, extras: set[str], base_url: str) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.id, "owner": self.owner, "secret": self.secret,
                                "server": self.server, "farm": 66, "title": self.title,
                                "ispublic": 1, "isfriend": 0, "isfamily": 0}
        if "license" in extras:
            item["license"] = str(self.license)
        if "date_upload" in extras:
            item["dateupload"] = str(self.uploaded)
        if "date_taken" in extras:
            taken = datetime.fromtimestamp(self.uploaded - 86_400 * (1 + _digest(self.id) % 300), UTC)
            item.update(datetaken=taken.strftime("%Y-%m-%d %H:%M:%S"), datetakengranularity=0,
                        datetakenunknown="0")
        if "owner_name" in extras:
            item["ownername"] = self.owner_name
        if "tags" in extras:
            item["tags"] = self.tags
        if "geo" in extras:
            if self.latitude is None or self.longitude is None:
                item.update(latitude=0, longitude=0, accuracy=0)
            else:
                item.update(latitude=f"{self.latitude:.6f}", longitude=f"{self.longitude:.6f}", accuracy="13")
        wanted = "url_c" if self.size == "c" else "url_l"
        if wanted in extras:
            item[wanted] = f"{base_url}/{self.server}/{self.id}_{self.secret}_{self.size}.jpg"
        return item


@dataclass
class Fault:
    """One injected misbehaviour, used ``times`` times (None: for ever) then dropped.

    ``target`` is "search" (the REST endpoint) or "photo" (file downloads; ``photo_id`` narrows it
    to one photo). ``kind``: "http" (answer ``status``), "slow" (sleep ``delay_s`` then answer
    normally), "flickr" (``stat: fail`` with ``code`` and ``message``, by default the one Flickr
    documents for the code), "truncate" (the file's first half, correctly framed), "not-image" (HTML instead of JPEG), "cut" (announce the full length,
    send half, close: a dropped connection).
    """

    target: str
    kind: str
    times: int | None = 1
    photo_id: str | None = None
    status: int = 500
    delay_s: float = 0.0
    code: int = 105
    message: str = ""

    def __post_init__(self) -> None:
        if not self.message:
            self.message = SEARCH_ERRORS.get(self.code, (None, f"Error {self.code}"))[1]
        if self.target not in ("search", "photo"):
            raise ValueError(f"fault target must be 'search' or 'photo', not {self.target!r}")
        kinds = ("http", "slow", "flickr") if self.target == "search" else \
            ("http", "slow", "truncate", "not-image", "cut")
        if self.kind not in kinds:
            raise ValueError(f"fault kind for {self.target} must be one of {kinds}, not {self.kind!r}")


@dataclass
class _Mountain:
    slug: str
    photos: list[FakePhoto]
    visible: int


@dataclass
class FakeFlickr:
    """The fake service; ``start()`` serves it on 127.0.0.1 (``with FakeFlickr(...) as flickr``)."""

    photos_dir: Path
    noise_dir: Path | None = None
    noise_fraction: float = 0.15
    catalog: Catalog | None = None
    visible: int | None = None  # photos per mountain uploaded at start (None: all)
    api_key: str | None = None  # when set, any other key gets Flickr's code 100
    max_per_page: int = 500  # Flickr's cap on per_page; lower, a few photos fill many pages
    max_results: int = FLICKR_MAX_RESULTS  # Flickr serves a search's first 4,000 results; lower in tests
    port: int = 0
    faults: list[Fault] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.photos_dir = Path(self.photos_dir)
        self._lock = threading.Lock()
        self._mountains = self._build()
        self._by_id = {photo.id: photo for m in self._mountains.values() for photo in m.photos}
        if len(self._by_id) != sum(len(m.photos) for m in self._mountains.values()):
            raise ValueError("photo ids collide; rename a file")
        self._server: ThreadingHTTPServer | None = None
        self._base_url = ""
        self._thread: threading.Thread | None = None

    # Building the collection.

    def _build(self) -> dict[str, _Mountain]:
        if not self.photos_dir.is_dir():
            raise FileNotFoundError(f"photo folder {self.photos_dir} does not exist")
        noise = _image_files(Path(self.noise_dir)) if self.noise_dir else []
        mountains: dict[str, _Mountain] = {}
        for folder in sorted(p for p in self.photos_dir.iterdir() if p.is_dir()):
            slug = slugify(folder.name)
            files = _image_files(folder)
            if not files:
                continue
            mountain = self.catalog.find(folder.name) if self.catalog else None
            home = None if mountain is None or mountain.latitude is None or mountain.longitude is None \
                else (mountain.latitude, mountain.longitude)
            share = round(len(files) * self.noise_fraction)
            picked = sorted(noise, key=lambda p: _digest(slug, p.name))[:share]
            entries = [(path, False) for path in files] + [(path, True) for path in picked]
            entries.sort(key=lambda entry: _digest(slug, entry[0].name, "order"))
            burst = {path: rank // BURST for rank, path in enumerate(files)}
            photos = sorted((self._photo(folder.name, slug, path, is_noise, index, home, burst.get(path, -1))
                             for index, (path, is_noise) in enumerate(entries)), key=_posted)
            mountains[slug] = _Mountain(slug, photos, len(photos) if self.visible is None else self.visible)
        if not mountains:
            raise ValueError(f"{self.photos_dir} has no subfolders with photos")
        return mountains

    @staticmethod
    def _photo(name: str, slug: str, path: Path, noise: bool, index: int,
               home: tuple[float, float] | None, burst: int) -> FakePhoto:
        h = _digest(slug, path.name)
        owner, owner_name = _owner(_digest(slug, "burst", str(burst)) if burst >= 0 else h)
        geotagged = home is not None and not noise and h % 5 < 3
        title = f"{name} trip, day {h % 9 + 1}" if noise else f"{name} from camp {h % 4 + 1}"
        tags = "travel city street" if noise else f"{slug.replace('-', '')} mountain himalaya karakoram"
        return FakePhoto(
            id=str(10**10 + h % (9 * 10**10)), path=path, slug=slug, noise=noise, owner=owner,
            owner_name=owner_name, title=title, license=LICENSE_POOL[(h >> 8) % len(LICENSE_POOL)],
            uploaded=FIRST_UPLOAD + (index // 2) * UPLOAD_STEP_S, tags=tags,
            latitude=home[0] + ((h >> 16) % 200 - 100) / 1000 if geotagged and home else None,
            longitude=home[1] + ((h >> 24) % 200 - 100) / 1000 if geotagged and home else None,
            secret=f"{h >> 32 & 0xFFFFFFFFFF:010x}", server=str(65535 - h % 1000),
            size="b" if (h >> 40) % 4 == 0 else "c",
        )

    # What tests look at and change.

    @property
    def slugs(self) -> list[str]:
        return list(self._mountains)

    def photos(self, slug: str, *, visible_only: bool = True, licenses: tuple[int, ...] | None = None,
               ) -> list[FakePhoto]:
        """A mountain's photos in upload order (the uploaded ones, optionally only these licences)."""
        mountain = self._mountains[slug]
        with self._lock:
            chosen = mountain.photos[:mountain.visible] if visible_only else list(mountain.photos)
        return [p for p in chosen if licenses is None or p.license in licenses]

    def photo(self, photo_id: str) -> FakePhoto:
        return self._by_id[photo_id]

    def upload_more(self, count: int | None = None, slugs: list[str] | None = None) -> None:
        """Upload ``count`` more photos per mountain (None: all the rest); they sort after the others."""
        with self._lock:
            for slug in slugs or list(self._mountains):
                mountain = self._mountains[slug]
                mountain.visible = len(mountain.photos) if count is None else \
                    min(len(mountain.photos), mountain.visible + count)

    def relicense(self, photo_id: str, license_id: int) -> None:
        """Change a photo's licence, keeping its upload date (an owner relicensing an old photo)."""
        with self._lock:
            photo = dataclasses.replace(self._by_id[photo_id], license=license_id)
            self._by_id[photo_id] = photo
            photos = self._mountains[photo.slug].photos
            photos[next(i for i, p in enumerate(photos) if p.id == photo_id)] = photo

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def heal(self) -> None:
        """Drop every injected fault, even the endless ones: Flickr is well again."""
        with self._lock:
            self.faults.clear()

    def pending_faults(self) -> int:
        with self._lock:
            return len(self.faults)

    def _take_fault(self, target: str, photo_id: str | None = None) -> Fault | None:
        """Count the request and return the fault it should suffer, if any."""
        with self._lock:
            self.hits[target] += 1
            for fault in self.faults:
                if fault.target == target and fault.photo_id in (None, photo_id):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    # Serving.

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("the fake Flickr server is not started")
        return self._base_url

    @property
    def rest_url(self) -> str:
        return f"{self.base_url}/services/rest/"

    def start(self) -> Self:
        self._server = _Server(("127.0.0.1", self.port), _handler_for(self))
        self._base_url = f"http://127.0.0.1:{self._server.server_port}"  # kept after stop(): a late request still gets an answer
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-flickr",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # The REST method.

    def search(self, params: dict[str, str], api_key: str | None) -> dict[str, Any]:
        """``flickr.photos.search`` as Flickr answers it (the subset MountainID and tests use)."""
        if self.api_key is not None and api_key != self.api_key:
            return _fail(100, "Invalid API Key (Key has invalid format)")
        method = params.get("method", "")
        if method != "flickr.photos.search":
            return _fail(112, f'Method "{method}" not found')
        text = params.get("text", "").strip()
        if not text and not params.get("tags"):
            return _fail(3, "Parameterless searches have been disabled. "
                            "Please use flickr.photos.getRecent instead.")
        try:
            page = max(1, int(params.get("page") or 1))
            per_page = min(self.max_per_page, max(1, int(params.get("per_page") or 100)))
            min_date = int(params.get("min_upload_date") or 0)
            max_date = int(params.get("max_upload_date") or 2**62)
            licenses = tuple(int(code) for code in params["license"].split(",")) \
                if params.get("license") else None
        except ValueError as error:
            return _fail(3, f"Bad parameter: {error}")
        try:
            wanted = slugify(text)
        except ValueError:
            wanted = ""
        candidates = self.photos(wanted, licenses=licenses) if wanted in self._mountains else []
        found = [photo for photo in candidates if min_date <= photo.uploaded <= max_date]
        found = _sorted(found, params.get("sort", "relevance"))
        total = len(found)
        if (page - 1) * per_page >= self.max_results and total > self.max_results:
            return _fail(20, SEARCH_ERRORS[20][1])
        pages = math.ceil(total / per_page)
        page = min(page, pages) if pages else page  # past the end, Flickr repeats the last page
        chunk = found[(page - 1) * per_page: page * per_page]
        extras = {name.strip() for name in params.get("extras", "").split(",") if name.strip()}
        return {"photos": {"page": page, "pages": pages, "perpage": per_page, "total": total,
                           "photo": [photo.as_json(extras, self.base_url) for photo in chunk]},
                "stat": "ok"}


def _posted(photo: FakePhoto) -> tuple[int, str]:
    """Flickr's date-posted order (ties by id): the order photos were uploaded in."""
    return photo.uploaded, photo.id


def _sorted(photos: list[FakePhoto], sort: str) -> list[FakePhoto]:
    if sort == "date-posted-asc":
        return sorted(photos, key=_posted)
    if sort == "date-posted-desc":
        return sorted(photos, key=_posted, reverse=True)
    return sorted(photos, key=lambda p: _digest(p.id, "relevance"))


def _fail(code: int, message: str) -> dict[str, Any]:
    return {"stat": "fail", "code": code, "message": message}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (time-out tests) is expected; anything else is still reported."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(fake: FakeFlickr) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real service; every answer has a length
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests and the benchmark make thousands of requests."""

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path.rstrip("/") == "/services/rest":
                self._rest(dict(parse_qsl(url.query)))
            else:
                self._photo(url.path)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8") if length else ""
            if urlsplit(self.path).path.rstrip("/") != "/services/rest":
                self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
                return
            self._rest(dict(parse_qsl(body)) | dict(parse_qsl(urlsplit(self.path).query)))

        def _rest(self, params: dict[str, str]) -> None:
            fault = fake._take_fault("search")
            if self._common_fault(fault, b"<html>Flickr is having a moment</html>", "text/html"):
                return
            if fault is not None and fault.kind == "flickr":
                self._send(HTTPStatus.OK, json.dumps(_fail(fault.code, fault.message)).encode(),
                           "application/json")
                return
            match = _CONSUMER_KEY.search(self.headers.get("Authorization", ""))
            api_key = match.group(1) if match else params.get("api_key")
            self._send(HTTPStatus.OK, json.dumps(fake.search(params, api_key)).encode(), "application/json")

        def _photo(self, path: str) -> None:
            match = _PHOTO_PATH.match(path)
            photo = fake._by_id.get(match.group(2)) if match else None
            if photo is None or match is None or match.group(3) != photo.secret:
                self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
                return
            fault = fake._take_fault("photo", photo.id)
            data = photo.path.read_bytes()
            if self._common_fault(fault, b"error", "text/plain"):
                return
            if fault is not None:
                if fault.kind == "truncate":
                    data = data[: len(data) // 2]
                elif fault.kind == "not-image":
                    self._send(HTTPStatus.OK, b"<html><body>This photo is no longer available</body></html>",
                               "image/jpeg")
                    return
                elif fault.kind == "cut":
                    self.send_response(HTTPStatus.OK)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
            self._send(HTTPStatus.OK, data, "image/jpeg")

        def _common_fault(self, fault: Fault | None, error_body: bytes, content_type: str) -> bool:
            """The faults every endpoint knows: "slow" delays, "http" answers an error status.
            True when the answer was sent."""
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.delay_s)
            elif fault is not None and fault.kind == "http":
                self._send(fault.status, error_body, content_type)
                return True
            return False

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


# The `mountainid fake-flickr` subcommand.

def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", type=existing_folder, required=True,
                        help="folder with one subfolder of photos per mountain (e.g. ../shared/data/peaks14)")
    parser.add_argument("--noise", type=existing_folder, help="folder of non-mountain photos mixed into results")
    parser.add_argument("--noise-fraction", type=float, default=0.15, help="noise photos per mountain photo")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--api-key", help="accept only this key (default: any)")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until interrupted; prints the FLICKR_REST_URL to use."""
    fake = FakeFlickr(args.photos, args.noise, noise_fraction=args.noise_fraction,
                      catalog=load_catalog(settings.catalog), api_key=args.api_key, port=args.port)
    with fake:
        photos = sum(len(fake.photos(slug)) for slug in fake.slugs)
        event(log, "fake flickr serving", rest_url=fake.rest_url, mountains=len(fake.slugs), photos=photos)
        print(f"FLICKR_REST_URL={fake.rest_url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0
