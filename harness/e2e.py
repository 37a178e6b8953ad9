"""The whole pipeline on the local cloud, end to end: ``mountainid local-cloud`` and ``tests/e2e``.

What runs, all on 127.0.0.1 and each as its own process, wired as ``infra/`` wires GCP:

* the Pub/Sub emulator and fake-gcs-server, which publishes an ``OBJECT_FINALIZE`` notification
  for every object under ``raw/`` to topic ``raw-photos`` (:class:`~harness.localcloud.LocalCloud`);
* ``functions/ingest`` and ``functions/filter`` under functions-framework, fed by push
  subscriptions ``ingest-tick -> ingest`` and ``raw-photos -> filter_photo``;
* the fake Flickr (in this process) over a few peaks14 folders plus street photos as noise, with
  some K2 photos held back: they are never served, so the model cannot have trained on them;
* the web service as Cloud Run runs it: ``gunicorn -c python:web.gunicorn_conf 'web:create_app()'``
  (bound to loopback), polling ``models/LATEST`` every second;
* the training job as the Cloud Run Job runs it: ``python -m training_job.main`` with its default
  flags (fine-tuning as deployed), to completion.

:func:`run_scenario` publishes the scheduler's tick, waits until every photo Flickr offers is in
``raw/`` and every raw photo has its one result, trains, waits until the web service serves the new
version, and asks it to name the held-back K2 photos. Each stage is timed; every check that fails
raises :class:`ScenarioError` with the tails of the servers' logs. :class:`LocalPipeline` is the
same set-up with the switches the fault tests need: kill the filter, restart the emulator,
re-apply the topic and subscription set-up, run the filter's catch-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import requests

from harness.fake_flickr import FakeFlickr, FakePhoto
from harness.localcloud import (
    FunctionsFrameworkServer,
    LocalCloud,
    LocalCloudError,
    ManagedProcess,
    PubSubEmulator,
    port_is_free,
)
from mountainid.bucket import ACCEPTED, EMBEDDINGS, RAW, REJECTED, cursor_name
from mountainid.catalog import load_catalog
from mountainid.config import Settings
from mountainid.events.pubsub import PubSubBus, ensure_push_subscription, ensure_topic
from mountainid.ingest import Cursor
from mountainid.logs import event
from mountainid.registry import Registry
from mountainid.store.gcs import GcsBlobStore

log = logging.getLogger(__name__)
T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
CATALOG = "peaks14"
# Five well-known peaks with K2 among them; 18 photos each (before noise and the licence filter).
# Measured beforehand (a softmax head on the cached embeddings, trained on the served photos): it
# names the K2 photos that are not served first 68 % of the time and within its top 3 95 % of the
# time; averaged over every choice of four companions for K2 the top-1 is 46 %, so these five are
# an easier set than most, and the held-back bar in _scenario is set for it. (The deployed job
# fine-tunes the top blocks instead; on this scenario it gives K2 0.57-0.71 on the three below.)
PEAKS = ("K2", "Mount Everest", "Annapurna", "Kangchenjunga", "Nanga Parbat")
PHOTOS_PER_PEAK = 18
# Never served by the fake Flickr, so never trained on. Chosen from the K2 photos outside the
# served subset as the ones a head trained on random 70 % subsets of the served photos named K2
# most often (33: 88 %, 37: 88 %, 50: 93 % top-1; all 100 % top-3), not as the only ones it gets right.
HELD_BACK = ("K2/K2_33.jpg", "K2/K2_37.jpg", "K2/K2_50.jpg")
TOPICS = ("ingest-tick", "raw-photos", "model-published")


class ScenarioError(AssertionError):
    """A stage did not finish or a check failed; the message says which, with the servers' log tails."""


@dataclass(frozen=True)
class PipelineConfig:
    photos_dir: Path  # ../shared/data/peaks14
    noise_dir: Path | None  # ../shared/data/scenes/street
    weights: Path  # the MobileNetV2 .weights.h5
    peaks: tuple[str, ...] = PEAKS
    photos_per_peak: int = PHOTOS_PER_PEAK
    held_back: tuple[str, ...] = HELD_BACK  # "<peak folder>/<file>"
    noise_fraction: float = 0.15
    model_poll_s: float = 1.0
    min_photos_per_class: int = 5
    training_args: tuple[str, ...] = ()  # flags of training_job.main; none: the job as deployed
    # Per-stage limits: generous (a busy 2-core machine) but bounded, so a hang fails with logs.
    stage_timeout_s: float = 240.0

    @classmethod
    def from_shared(cls, shared: Path, **overrides: Any) -> PipelineConfig:
        """The standard layout of ``../shared`` (photos, street scenes, weights)."""
        return cls(photos_dir=shared / "data" / "peaks14", noise_dir=shared / "data" / "scenes" / "street",
                   weights=shared / "models" / "imagenet" / "mobilenet_v2_1.0_224_imagenet.weights.h5",
                   **overrides)


def stage_photos(config: PipelineConfig, into: Path) -> Path:
    """The fake Flickr's folder: symlinks to the first photos of each peak, held-back ones left out.

    Built under a temporary folder (``into``), never in the repository; ``../shared`` stays untouched.
    """
    held = set(config.held_back)
    for peak in config.peaks:
        source = config.photos_dir / peak
        if not source.is_dir():
            raise ScenarioError(f"no photo folder {source}: pass --shared DIR (the folder holding data/peaks14)")
        chosen = [p for p in sorted(source.iterdir()) if p.is_file() and f"{peak}/{p.name}" not in held]
        target = into / peak
        target.mkdir(parents=True, exist_ok=True)
        for photo in chosen[: config.photos_per_peak]:
            link = target / photo.name
            link.unlink(missing_ok=True)  # a kept folder from an earlier run
            link.symlink_to(photo.resolve())
    return into


class Timings:
    """Wall time per stage, in the order they ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started
            event(log, "stage finished", stage=name, seconds=round(self.seconds[name], 1))

    def table(self) -> str:
        return "\n".join(f"  {name:<10} {seconds:6.1f} s" for name, seconds in self.seconds.items())


@dataclass(frozen=True)
class BucketState:
    """Which photos are where: ``<slug>/<id>`` for raw/, accepted/, rejected/; photo ids for the filter's embeddings."""

    raw: frozenset[str]
    accepted: frozenset[str]
    rejected: frozenset[str]
    embeddings: frozenset[str]

    @classmethod
    def read(cls, store: GcsBlobStore) -> BucketState:
        def key(name: str, prefix: str) -> str:
            return name[len(prefix):].removesuffix(".jpg")

        accepted = [info for info in store.list(ACCEPTED) if info.name.endswith(".jpg")]
        # The filter's embeddings only: the folder its accepted copies name (training caches other
        # features, e.g. augmented views, beside it under their own feature ids).
        backbones = {info.metadata.get("backbone", "") for info in accepted} - {""}
        embeddings = frozenset(name.rsplit("/", 1)[-1].removesuffix(".npy") for backbone in backbones
                               for name in store.list_names(f"{EMBEDDINGS}{backbone}/"))
        return cls(frozenset(key(n, RAW) for n in store.list_names(RAW) if n.endswith(".jpg")),
                   frozenset(key(info.name, ACCEPTED) for info in accepted),
                   frozenset(key(n, REJECTED) for n in store.list_names(REJECTED) if n.endswith(".jpg")),
                   embeddings)

    @property
    def unjudged(self) -> frozenset[str]:
        return self.raw - self.accepted - self.rejected

    def problems(self) -> list[str]:
        """Everything that breaks "each raw photo has exactly one result" (empty when complete)."""
        found = []
        if self.unjudged:
            found.append(f"{len(self.unjudged)} raw photos without a result: {sorted(self.unjudged)[:5]}")
        if both := self.accepted & self.rejected:
            found.append(f"{len(both)} photos both accepted and rejected: {sorted(both)[:5]}")
        if orphans := (self.accepted | self.rejected) - self.raw:
            found.append(f"{len(orphans)} results without a raw photo: {sorted(orphans)[:5]}")
        accepted_ids = {key.split("/", 1)[1] for key in self.accepted}
        if missing := accepted_ids - self.embeddings:
            found.append(f"{len(missing)} accepted photos without an embedding: {sorted(missing)[:5]}")
        if extra := self.embeddings - accepted_ids:
            found.append(f"{len(extra)} embeddings of photos that were not accepted: {sorted(extra)[:5]}")
        return found

    def summary(self) -> str:
        return (f"raw={len(self.raw)} accepted={len(self.accepted)} rejected={len(self.rejected)} "
                f"embeddings={len(self.embeddings)} unjudged={len(self.unjudged)}")


class WebService(ManagedProcess):
    """The web service as the container runs it (gunicorn with web.gunicorn_conf), bound to loopback."""

    name = "web"
    startup_timeout_s = 120.0  # the master binds at once; the first answer waits for TensorFlow

    def __init__(self, env: Mapping[str, str], port: int | None = None) -> None:
        super().__init__(port)
        self.extra_env = dict(env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # Command-line settings beat the config file's: loopback instead of the container's 0.0.0.0.
        return [str(Path(sys.executable).parent / "gunicorn"), "-c", "python:web.gunicorn_conf",
                "--bind", f"127.0.0.1:{self.port}", "web:create_app()"]

    def process_env(self) -> Mapping[str, str]:
        return self.extra_env

    def is_ready(self) -> bool:
        try:
            requests.get(f"{self.url}/healthz", timeout=2)  # 503 (no model yet) is up too
        except requests.RequestException:
            return False
        return True


def group_alive(pgid: int) -> bool:
    """True while a process of the group runs (zombies, dead but not yet reaped, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)"
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def parse_log(text: str) -> list[dict[str, Any]]:
    """The JSON lines (MOUNTAINID_LOG_FORMAT=json) of a log; anything else (TensorFlow's chatter) is skipped."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def log_events(server: ManagedProcess) -> list[dict[str, Any]]:
    """What a server has logged so far."""
    try:
        return parse_log(server.log_path.read_text(errors="replace"))
    except FileNotFoundError:
        return []


def judged_ids(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """Photo ids of the filter's "photo accepted"/"photo rejected" lines: one per photo it judged first."""
    return [e["photo_id"] for e in events
            if e.get("message") in ("photo accepted", "photo rejected") and e.get("photo_id")]


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, diagnostics: Callable[[], str],
          interval_s: float = 0.5) -> float:
    """Poll ``check`` until true; returns the seconds waited or raises ScenarioError with the logs."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise ScenarioError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{diagnostics()}")
        time.sleep(interval_s)


class LocalPipeline:
    """The deployables on one LocalCloud (see the module docstring); ``with LocalPipeline(...) as p``."""

    def __init__(self, config: PipelineConfig, workdir: Path, settings: Settings, *, web: bool = True,
                 project: str = "mountainid-local", bucket: str = "mountainid-e2e") -> None:
        self.config = config
        self.workdir = workdir
        self.settings = settings  # the licence filter the ingest applies (the children inherit it)
        self.with_web = web
        self.cloud = LocalCloud(project=project, bucket=bucket, notify_topic="raw-photos",
                                notify_prefix=RAW, topics=TOPICS)
        self.flickr = FakeFlickr(stage_photos(config, workdir / "flickr"), config.noise_dir,
                                 noise_fraction=config.noise_fraction, catalog=load_catalog(CATALOG))
        self.ingest: FunctionsFrameworkServer | None = None
        self.filter: FunctionsFrameworkServer | None = None
        self.web: WebService | None = None
        self.retired: list[ManagedProcess] = []  # crashed servers, kept for their logs until stop()
        self._groups: dict[int, str] = {}  # every process group started, checked at stop()
        self._store: GcsBlobStore | None = None

    # Start and stop.

    @property
    def env(self) -> dict[str, str]:
        """What every deployable gets: the emulators, the bucket, the catalog, weights, Flickr."""
        return {**self.cloud.env, "MOUNTAINID_CATALOG": CATALOG, "MOUNTAINID_WEIGHTS": str(self.config.weights),
                "FLICKR_REST_URL": self.flickr.rest_url, "MOUNTAINID_MODEL_POLL_S": str(self.config.model_poll_s),
                "MOUNTAINID_MIN_PHOTOS_PER_CLASS": str(self.config.min_photos_per_class),
                "MOUNTAINID_LOG_FORMAT": "json", "TF_CPP_MIN_LOG_LEVEL": "2"}

    @property
    def store(self) -> GcsBlobStore:
        if self._store is None:
            self._store = GcsBlobStore(self.cloud.bucket, self.cloud.project,
                                       emulator_host=self.cloud.env["STORAGE_EMULATOR_HOST"])
        return self._store

    def start(self) -> None:
        try:
            self.cloud.start()
            self.flickr.start()
            self._remember(self.cloud.pubsub, self.cloud.gcs)
            # Each Python server takes seconds to import its libraries: start the three together.
            with ThreadPoolExecutor(3) as pool:
                ingest = pool.submit(self._serve, "functions/ingest/main.py", "ingest", "ingest-tick")
                filter_ = pool.submit(self._serve, "functions/filter/main.py", "filter_photo", "raw-photos")
                web = pool.submit(self._start_web) if self.with_web else None
                self.ingest, self.filter = ingest.result(), filter_.result()
                self.web = web.result() if web else None
        except BaseException:
            self.stop()
            raise

    def _serve(self, source: str, target: str, topic: str) -> FunctionsFrameworkServer:
        server = self.cloud.serve_function(REPO / source, target, topic=topic, env=self.env,
                                           subscription=self._subscription(topic, target))
        self._remember(server)
        return server

    def _start_web(self) -> WebService:
        web = WebService(self.env)
        web.start()
        self._remember(web)
        return web

    @staticmethod
    def _subscription(topic: str, target: str) -> str:
        return f"{topic}-{target}".replace("_", "-")

    def _remember(self, *servers: ManagedProcess | None) -> None:
        for server in servers:
            if server is not None and (pgid := server.pid) is not None:
                self._groups[pgid] = server.name

    def stop(self) -> list[str]:
        """Stop everything; returns what is still running or listening afterwards (should be nothing)."""
        ports = {server.name: server.port for server in self._servers() if server is not None}
        if self.web is not None:
            self.web.stop()
        self.cloud.stop()  # the functions, fake-gcs-server, the emulator
        for server in self.retired:
            server.stop()
        self.flickr.stop()

        def leftovers() -> list[str]:
            return ([f"{name} (process group {pgid})" for pgid, name in self._groups.items() if group_alive(pgid)]
                    + [f"{name} still listening on port {port}" for name, port in ports.items()
                       if not port_is_free(port)])

        deadline = time.monotonic() + 10  # a worker or a socket may take a moment to go after its parent
        while (found := leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return found

    def _servers(self) -> list[ManagedProcess | None]:
        return [self.cloud.pubsub, self.cloud.gcs, *self.cloud.functions, self.web]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        leftovers = self.stop()
        if leftovers and exc[0] is None:
            raise ScenarioError(f"processes left running after stop: {leftovers}")

    def diagnostics(self, lines: int = 25) -> str:
        """The tail of every server's log, for failure messages."""
        parts = []
        for server in [*self._servers(), *self.retired]:
            if server is not None:
                parts.append(f"--- {server.name} (port {server.port}) ---\n{server.log_tail(lines)}")
        try:
            parts.append(f"--- bucket --- {BucketState.read(self.store).summary()}")
        except Exception as error:  # noqa: BLE001 - diagnostics must not hide the original failure
            parts.append(f"--- bucket --- unreadable: {error}")
        return "\n".join(parts)

    # The scheduler tick and what it should bring in.

    def tick(self, photos_per_run: int | None = None) -> str:
        """Publish the Cloud Scheduler message for the configured peaks; returns its message id."""
        body: dict[str, Any] = {"mountains": list(self.config.peaks)}
        if photos_per_run is not None:
            body["photos_per_run"] = photos_per_run
        return PubSubBus(self.cloud.project, emulator_host=self.cloud.env["PUBSUB_EMULATOR_HOST"]).publish_json(
            "ingest-tick", body)

    def offered(self, limit: int | None = None) -> dict[str, list[FakePhoto]]:
        """Per slug, the photos Flickr offers the ingest (licence filter applied), the first ``limit``."""
        return {slug: self.flickr.photos(slug, licenses=self.settings.licenses)[:limit] for slug in self.flickr.slugs}

    def ingested(self, expected: Mapping[str, Sequence[FakePhoto]]) -> bool:
        """True once every slug's cursor has moved past the last expected photo (all of them done)."""
        for slug, photos in expected.items():
            if not photos:
                continue
            info = self.store.info(cursor_name(slug))
            # a FakePhoto carries the id and upload time covers() reads
            if info is None or not Cursor.from_json(self.store.get(cursor_name(slug))).covers(photos[-1]):  # type: ignore[arg-type]
                return False
        return True

    def wait_ingested(self, expected: Mapping[str, Sequence[FakePhoto]], timeout_s: float | None = None) -> float:
        return wait_for("the ingest to store every photo Flickr offers", lambda: self.ingested(expected),
                     timeout_s or self.config.stage_timeout_s, self.diagnostics)

    def bucket(self) -> BucketState:
        return BucketState.read(self.store)

    def wait_judged(self, keys: frozenset[str] | None = None, timeout_s: float | None = None) -> float:
        """Wait until every raw photo (or those named ``<slug>/<id>``) has an accepted/ or rejected/ result."""
        def done() -> bool:
            state = self.bucket()
            pending = state.unjudged if keys is None else keys & state.unjudged
            return not pending
        return wait_for("the filter to judge every raw photo", done, timeout_s or self.config.stage_timeout_s,
                     self.diagnostics, interval_s=1.0)

    def wait_settled(self, quiet_s: float = 5.0, timeout_s: float = 120.0) -> frozenset[str]:
        """Wait until the unjudged photos stay the same for ``quiet_s``; returns them (nothing is coming for them)."""
        seen: list[tuple[float, frozenset[str]]] = [(time.monotonic(), self.bucket().unjudged)]

        def quiet() -> bool:
            now, unjudged = time.monotonic(), self.bucket().unjudged
            if unjudged != seen[-1][1]:
                seen.append((now, unjudged))
            return now - seen[-1][0] >= quiet_s

        wait_for(f"the filter to stay idle for {quiet_s:.0f}s", quiet, timeout_s, self.diagnostics)
        return seen[-1][1]

    # Jobs: the training job and the filter's catch-up, run to completion with the deployables' env.

    def run_job(self, name: str, args: Sequence[str], timeout_s: float | None = None) -> str:
        """Run ``python ARGS`` in the repository with the pipeline's env; returns its output, raises on failure."""
        log_path = self.workdir / f"{name}.log"
        timeout_s = timeout_s or self.config.stage_timeout_s
        with open(log_path, "wb") as output:
            process = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env={**os.environ, **self.env},
                                       start_new_session=True)
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
        text = log_path.read_text(errors="replace")
        if code != 0:
            tail = "\n".join(text.splitlines()[-40:])
            what = f"ran past {timeout_s:.0f}s" if code is None else f"exited with code {code}"
            raise ScenarioError(f"{name} ({' '.join(args)}) {what}; its output ends with:\n{tail}\n"
                                f"{self.diagnostics(10)}")
        return text

    def train(self) -> tuple[str, dict[str, Any]]:
        """One run of the training job; returns the live version afterwards and its metrics."""
        self.run_job("training-job", ["-m", "training_job.main", *self.config.training_args])
        registry = Registry(self.store)
        live = registry.live()
        if live is None:
            raise ScenarioError(f"the training job finished but promoted no model (models/LATEST is missing)\n"
                                f"{(self.workdir / 'training-job.log').read_text(errors='replace')[-3000:]}")
        return live.version, registry.info(live.version)

    def catch_up(self) -> str:
        """``mountainid filter``: judge every raw photo that has no result (the reconciliation path)."""
        return self.run_job("filter-catch-up", ["-m", "mountainid.cli", "filter"])

    # The web service.

    def web_get(self, path: str) -> requests.Response:
        assert self.web is not None, "started without the web service"
        return requests.get(f"{self.web.url}{path}", timeout=30)

    def wait_model(self, version: str, timeout_s: float = 120.0) -> float:
        """Wait until the web service serves ``version`` (GET /api/v1/model) and /healthz is 200."""
        def serving() -> bool:
            response = self.web_get("/api/v1/model")
            return response.status_code == 200 and response.json().get("version") == version
        waited = wait_for(f"the web service to hot-swap to model {version}", serving, timeout_s, self.diagnostics,
                       interval_s=0.2)
        health = self.web_get("/healthz")
        if health.status_code != 200 or health.json().get("model_version") != version:
            raise ScenarioError(f"/healthz answered {health.status_code} {health.text[:200]} while serving {version}")
        return waited

    def predict(self, photo: Path) -> dict[str, Any]:
        assert self.web is not None, "started without the web service"
        response = requests.post(f"{self.web.url}/api/v1/predict", data=photo.read_bytes(),
                                 headers={"Content-Type": "image/jpeg"}, timeout=60)
        if response.status_code != 200:
            raise ScenarioError(f"POST /api/v1/predict with {photo.name} answered {response.status_code}: "
                                f"{response.text[:300]}\n{self.diagnostics(10)}")
        return response.json()

    # Faults.

    def kill_filter(self) -> int:
        """SIGKILL the filter's functions-framework (master and worker): a crash, mid-request.

        Returns how many of its log lines said a photo was judged before it died.
        """
        assert self.filter is not None
        pgid = self.filter.crash()
        port = self.filter.port
        # Its listening socket outlives the processes by a moment; restart_filter needs the port.
        wait_for("the killed filter to exit and free its port", lambda: not group_alive(pgid) and port_is_free(port),
                 30, self.diagnostics, interval_s=0.1)
        self.cloud.functions.remove(self.filter)
        self.retired.append(self.filter)
        return len(judged_ids(log_events(self.filter)))

    def restart_filter(self) -> FunctionsFrameworkServer:
        """A new filter instance on the same port: the push subscription's endpoint is unchanged."""
        assert self.filter is not None
        old = self.filter
        server = FunctionsFrameworkServer(old.source_file, old.target, old.port, env=old.extra_env)
        server.start()
        self.cloud.functions.append(server)
        self._remember(server)
        self.filter = server
        return server

    def restart_pubsub(self) -> None:
        """Stop the emulator and start a fresh one on the same port (every client is configured with it).

        The emulator keeps nothing: topics, subscriptions and undelivered messages are gone, and
        fake-gcs-server's notifications fail until the topic exists again (:meth:`apply_setup`).
        """
        assert self.cloud.pubsub is not None
        port = self.cloud.pubsub.port
        self.cloud.pubsub.stop()
        wait_for("the stopped emulator to free its port", lambda: port_is_free(port), 30, self.diagnostics,
                 interval_s=0.1)
        self.cloud.pubsub = PubSubEmulator(port=port)
        self.cloud.pubsub.start()
        self._remember(self.cloud.pubsub)

    def apply_setup(self) -> None:
        """Create the topics and push subscriptions (idempotent), as ``infra/gcp.sh`` does on GCP."""
        host = self.cloud.env["PUBSUB_EMULATOR_HOST"]
        for topic in TOPICS:
            ensure_topic(self.cloud.project, topic, emulator_host=host)
        for server, topic in ((self.ingest, "ingest-tick"), (self.filter, "raw-photos")):
            assert server is not None
            ensure_push_subscription(self.cloud.project, topic, self._subscription(topic, server.target),
                                     server.push_endpoint(self.cloud.project, topic), emulator_host=host)


# The scenario.

@dataclass
class ScenarioResult:
    timings: Timings
    total_s: float = 0.0
    bucket: BucketState | None = None
    noise: tuple[int, int] = (0, 0)  # (noise photos in raw/, of them rejected)
    version: str = ""
    test_metrics: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # photo -> top-3 (slug, p)
    leftovers: list[str] = field(default_factory=list)

    def held_back_hits(self, slug: str = "k2") -> tuple[int, int]:
        """(photos with ``slug`` top-1, photos with it in the top-3)."""
        top1 = sum(1 for guesses in self.answers.values() if guesses and guesses[0][0] == slug)
        top3 = sum(1 for guesses in self.answers.values() if slug in [s for s, _ in guesses[:3]])
        return top1, top3

    def report(self) -> str:
        bucket = self.bucket.summary() if self.bucket else "-"
        lines = ["MountainID on the local cloud", "stages:", self.timings.table(),
                 f"  {'total':<10} {self.total_s:6.1f} s", f"bucket: {bucket}",
                 f"noise photos (street scenes) rejected by the filter: {self.noise[1]}/{self.noise[0]}",
                 (f"model {self.version}: test top1={self.test_metrics.get('top1', float('nan')):.3f} "
                  f"top3={self.test_metrics.get('top3', float('nan')):.3f} n={self.test_metrics.get('n', 0)}")]
        for photo, guesses in self.answers.items():
            lines.append(f"held-back {photo}: " + ", ".join(f"{slug} {p:.2f}" for slug, p in guesses))
        top1, top3 = self.held_back_hits()
        lines.append(f"held-back K2 photos: K2 top-1 for {top1}/{len(self.answers)}, "
                     f"in the top-3 for {top3}/{len(self.answers)}")
        lines.append(f"left running after stop: {self.leftovers or 'nothing'}")
        return "\n".join(lines)


def run_scenario(config: PipelineConfig, settings: Settings, workdir: Path | None = None) -> ScenarioResult:
    """Tick -> ingest -> filter -> training job -> hot-swap -> predict, timed; raises ScenarioError."""
    result = ScenarioResult(Timings())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mountainid-e2e-") as tmp:
        pipeline = LocalPipeline(config, Path(workdir or tmp), settings)
        try:
            _scenario(pipeline, result)
        finally:
            with result.timings.stage("shutdown"):
                result.leftovers = pipeline.stop()
    result.total_s = time.perf_counter() - started
    if result.leftovers:
        raise ScenarioError(f"processes left running after stop: {result.leftovers}")
    return result


def _scenario(pipeline: LocalPipeline, result: ScenarioResult) -> None:
    timings = result.timings
    with timings.stage("start-up"):
        pipeline.start()
    before = pipeline.web_get("/healthz")
    if before.status_code != 503:
        raise ScenarioError(f"/healthz answered {before.status_code} before any model existed (expected 503)")

    offered = pipeline.offered()
    with timings.stage("ingest"):  # tick -> every offered photo in raw/ (the filter already runs meanwhile)
        pipeline.tick(photos_per_run=max(len(photos) for photos in offered.values()))
        pipeline.wait_ingested(offered)
    with timings.stage("filter"):  # -> every raw photo judged, through Pub/Sub alone (no catch-up)
        pipeline.wait_judged()
    state = result.bucket = pipeline.bucket()
    expected = {f"{slug}/{photo.id}" for slug, photos in offered.items() for photo in photos}
    if state.raw != expected:
        raise ScenarioError(f"raw/ differs from what Flickr offered: missing {sorted(expected - state.raw)[:5]}, "
                            f"unexpected {sorted(state.raw - expected)[:5]}")
    if problems := state.problems():
        raise ScenarioError("the bucket is inconsistent: " + "; ".join(problems))
    noise = {f"{slug}/{p.id}" for slug, photos in offered.items() for p in photos if p.noise}
    result.noise = (len(noise), len(noise & state.rejected))

    with timings.stage("training"):
        result.version, info = pipeline.train()
    result.test_metrics = dict(info.get("test", {}))
    with timings.stage("hot-swap"):  # training job done -> the web service answers with the new version
        pipeline.wait_model(result.version)
    with timings.stage("predict"):
        for name in pipeline.config.held_back:
            answer = pipeline.predict(pipeline.config.photos_dir / name)
            if answer.get("model_version") != result.version:
                raise ScenarioError(f"{name} was answered by model {answer.get('model_version')}, "
                                    f"not {result.version}")
            result.answers[name] = [(g["slug"], float(g["probability"])) for g in answer["guesses"]]
    top1, top3 = result.held_back_hits()
    # The bar: K2 first for at least one held-back photo, and among the three guesses for every one
    # (on these five peaks the same head names held-out K2 photos first about 70 % of the time).
    if top1 < 1 or top3 < len(result.answers):
        raise ScenarioError(f"the web service did not name the held-back K2 photos: {result.answers}")
    result.bucket = pipeline.bucket()  # training wrote models/ and its own feature cache, nothing else
    if problems := result.bucket.problems():
        raise ScenarioError("the bucket is inconsistent after training: " + "; ".join(problems))


# The `mountainid local-cloud` subcommand.

def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="the shared data folder with data/peaks14, data/scenes and models/ (default ../shared)")
    parser.add_argument("--photos-per-peak", type=int, default=PHOTOS_PER_PEAK,
                        help=f"photos of each of {', '.join(PEAKS)} the fake Flickr serves (default %(default)s)")
    parser.add_argument("--training-args", default="", metavar="ARGS",
                        help="flags for the training job, e.g. \"--cut ''\" (default: none, the job as deployed)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="write the fake Flickr folder and the job logs here instead of a temporary folder")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace, settings: Settings) -> int:
    config = PipelineConfig.from_shared(args.shared.resolve(), photos_per_peak=args.photos_per_peak,
                                        training_args=tuple(shlex.split(args.training_args)))
    if settings.weights != "imagenet":  # MOUNTAINID_WEIGHTS names a file (the Makefile exports it)
        config = dataclasses.replace(config, weights=Path(settings.weights))
    if not config.weights.is_file():
        print(f"mountainid local-cloud: weights not found at {config.weights}; set MOUNTAINID_WEIGHTS or --shared",
              file=sys.stderr)
        return 2
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    try:
        result = run_scenario(config, settings, args.keep)
    except (ScenarioError, LocalCloudError) as error:
        print(f"mountainid local-cloud: FAILED: {error}", file=sys.stderr)
        return 1
    print(result.report())
    return 0

