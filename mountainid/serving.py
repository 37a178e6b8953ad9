"""Serving the live model: follow ``models/LATEST`` and swap new versions in without dropping a request.

:class:`ModelHolder` owns one reference to the live :class:`~mountainid.predict.Predictor`. A
Predictor is immutable once loaded, so a swap is a single reference assignment: a request reads
``holder.predictor`` once and finishes on that object even if a newer one is swapped in meanwhile.
New versions are loaded (and validated by ``Predictor.load``'s probe prediction) in a background
thread while the old one keeps serving. A version that fails to load is remembered and skipped, so
a broken upload costs one log line, not a retry loop; ``check_now(force=True)`` (the admin reload)
tries it again.

The holder learns about new versions by polling the generation of ``models/LATEST`` every
``settings.model_poll_s`` (cheap: one metadata read) and, where an event arrives in the same process
(the embedded pipeline's ``model-published``), immediately through :meth:`ModelHolder.notify`.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import io
import json
import logging
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent
from PIL import Image

from mountainid.bucket import upload_name
from mountainid.config import Settings
from mountainid.logs import event
from mountainid.predict import Prediction, Predictor
from mountainid.registry import ModelLoadError, Registry
from mountainid.store import BlobStore, NotFound

log = logging.getLogger(__name__)

# glibc's malloc, tuned in the serving process itself (wherever it is started: ``mountainid serve``, the
# image, ``mountainid run``), not by an environment variable one start-up path sets and another forgets.
# By default each request thread may get an arena of its own (up to 8 per core), and freed photo buffers
# stay cached in them: 32 threads took the worker to 2.6 GB under 40 Mpx uploads (benchmarks/web.py).
MALLOC_ARENAS = 2
# Blocks from this size up are mapped on their own and given back to the system when freed: decoded
# photos and model inputs never linger. glibc would raise this threshold by itself as big blocks are
# freed (up to 32 MB), after which they would stay in the arenas.
MALLOC_MMAP_THRESHOLD = 256 * 1024
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # mallopt's parameter numbers (malloc.h)


def bound_memory() -> bool:
    """Apply the allocator limits above to this process (and to processes it forks). Call it before
    request threads start; returns False where the C library is not glibc (the limits do not apply)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_ARENA_MAX, MALLOC_ARENAS)) and bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD))


class WeightsNotFound(ModelLoadError):
    """The weights file a version was trained on is not on this machine: a cause outside the version,
    so it is retried at every poll (the file may be copied in) instead of being remembered as failed."""


def weights_for(config: dict[str, Any], configured: str, version: str) -> str:
    """The backbone weights to load a version with, found the way its training found them.

    A version records the weights file it was trained on. With MOUNTAINID_WEIGHTS left at its default
    ('imagenet', a download) that file is used, so a model trained on a local file serves in a shell that
    never set the variable, and nothing downloads; a file set explicitly always wins.
    """
    recorded = config.get("weights")
    if configured != "imagenet" or not recorded or recorded == "imagenet":
        return configured
    if not Path(recorded).is_file():
        raise WeightsNotFound(version, f"needs the MobileNetV2 ImageNet weights it was trained on, {recorded}, "
                                       "which is not on this machine: set MOUNTAINID_WEIGHTS to that "
                                       ".weights.h5 file (the site retries by itself every "
                                       "MOUNTAINID_MODEL_POLL_S seconds)")
    return recorded


class ModelHolder:
    """The live Predictor of one process, kept in step with ``models/LATEST``."""

    def __init__(self, store: BlobStore, settings: Settings, registry: Registry | None = None) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry or Registry(store)
        self._predictor: Predictor | None = None
        self._loaded_at: float | None = None
        self._seen_generation: int | None = None
        self._failed: dict[str, str] = {}  # version -> why it could not be loaded
        self._last_error: str | None = None
        self._waiting: str | None = None  # a version whose weights are missing: retried at every poll
        self._check_lock = threading.Lock()  # one check (and so one load) at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def predictor(self) -> Predictor | None:
        """The live Predictor, or None before the first model exists. Read it once per request."""
        return self._predictor

    def check_now(self, *, force: bool = False) -> Predictor | None:
        """Look at models/LATEST and load it if it is new; returns the (possibly new) live Predictor.

        Without ``force`` an unchanged LATEST generation costs one metadata read, and a version that
        already failed is skipped. ``force`` reloads the live version even if it is the one serving
        or failed before (the admin reload, e.g. after fixing a broken upload in place).
        """
        with self._check_lock:
            live = self.registry.live()
            current = self._predictor
            if live is None:
                return current
            version, generation = live.version, live.generation
            if not force and generation == self._seen_generation and self._waiting != version:
                return current
            self._seen_generation = generation
            if not force and current is not None and current.version == version:
                return current
            if not force and version in self._failed:
                event(log, "model version skipped: it failed to load before", level=logging.WARNING,
                      version=version, reason=self._failed[version],
                      serving=current.version if current else None)
                return current
            return self._load(version, current)

    def _load(self, version: str, current: Predictor | None) -> Predictor | None:
        started = time.perf_counter()
        try:
            weights = weights_for(self._config(version), self.settings.weights, version)
            predictor = Predictor.load(self.store, version, replace(self.settings, weights=weights))
        except WeightsNotFound as error:
            if self._waiting != version:  # one line per cause, not one per poll
                event(log, "model waits for its weights", level=logging.ERROR, version=version, reason=error.reason)
            self._waiting, self._last_error = version, str(error)
            return current
        except ModelLoadError as error:  # Predictor.load reports every failure of a version this way
            self._waiting = None
            self._failed[version] = str(error)
            self._last_error = str(error)
            event(log, "model load failed, keeping the old model", level=logging.ERROR, version=version,
                  reason=str(error), serving=current.version if current else None)
            return current
        self._predictor = predictor  # the swap: one reference assignment
        self._loaded_at = time.time()
        self._waiting = self._last_error = None
        self._failed.pop(version, None)
        event(log, "model swapped in", version=version, previous=current.version if current else None,
              seconds=round(time.perf_counter() - started, 2))
        return predictor

    def _config(self, version: str) -> dict[str, Any]:
        """The version's config.json, or {} where it is missing or damaged (Predictor.load says why)."""
        try:
            return json.loads(self.registry.read(version, "config.json"))
        except (NotFound, ValueError):
            return {}

    def notify(self) -> None:
        """Wake the watcher now (a model was published in this process) instead of at the next poll."""
        self._wake.set()

    def on_model_published(self, cloud_event: CloudEvent) -> None:
        """Handler for the ``model-published`` topic on the in-process bus."""
        event(log, "model-published event received", message_id=cloud_event["id"])
        self.notify()

    def start(self) -> None:
        """Load the live model now, then watch in the background (a check every model_poll_s).

        The first check runs in the caller's thread: the server does not accept a request before it
        returns, so a cold instance (Cloud Run scaling from zero) never answers "no model yet" while a
        model exists. With no model yet it returns at once.
        """
        if self._thread is not None:
            return
        self._check_safely()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _watch(self) -> None:
        while True:
            self._wake.wait(self.settings.model_poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._check_safely()

    def _check_safely(self) -> None:
        try:
            self.check_now()
        except Exception as error:  # noqa: BLE001 - nothing may kill the watcher; the next poll retries
            self._last_error = f"checking models/LATEST: {error}"
            event(log, "model check failed, will retry", level=logging.WARNING, error=str(error))

    @property
    def problem(self) -> str | None:
        """Why no model serves although one is published (what to fix), or None."""
        return self._last_error if self._predictor is None else None

    def status(self) -> dict[str, Any]:
        """What the admin endpoint and the model API report about serving."""
        predictor = self._predictor
        return {
            "version": predictor.version if predictor else None,
            "loaded_at": _iso(self._loaded_at) if self._loaded_at else None,
            "latest_generation": self._seen_generation,
            "failed_versions": dict(self._failed),
            "last_error": self._last_error,
        }


def store_upload(store: BlobStore, upload_id: str, image: Image.Image, prediction: Prediction) -> str:
    """Keep an upload for later labelling (only when settings.store_uploads; the caller checks).

    ``image`` is the upload as the prediction decoded it (:meth:`Predictor.decode`: large enough for
    every model input, so for any later training). It is re-encoded, which drops EXIF (camera serial
    numbers, GPS position), and named by date and ``upload_id`` (a random id from :func:`new_upload_id`):
    nothing the client sent (its file name) reaches the store.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    now = dt.datetime.now(dt.UTC)
    name = upload_name(now, upload_id)
    best = prediction.guesses[0] if prediction.guesses else None
    store.put(name, buffer.getvalue(), content_type="image/jpeg", metadata={
        "model_version": prediction.model_version,
        "guess": best.slug if best else "",
        "probability": f"{best.probability:.4f}" if best else "",
        "sure": str(prediction.sure).lower(),
        "is_mountain": str(prediction.is_mountain).lower(),
        "uploaded": now.isoformat(timespec="seconds"),
    })
    return name


def new_upload_id() -> str:
    """A random id for one upload: names it in the logs and, when kept, in the store."""
    return uuid.uuid4().hex


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")
