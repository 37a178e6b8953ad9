"""Cloud Storage behind the :class:`~mountainid.store.base.BlobStore` interface.

Generations are Cloud Storage's own, and ``if_generation_match`` is passed straight to the API,
so compare-and-swap is enforced by the server (fake-gcs-server enforces it too, which is what
the contract tests run against).

Retries: every call uses the library's retry policy (429, 5xx and connection errors,
exponential back-off), bounded by ``retry_deadline_s`` so an unreachable server becomes a
:class:`StoreError` instead of a hang; a 412 is never retried, it becomes
:class:`PreconditionFailed` at once. Unconditional writes are retried too: writing the same bytes
twice leaves the same object (one more generation and finalize event, which at-least-once
subscribers tolerate). One ambiguity is inherent to any retried request: if a conditional write
(or a delete) lands but its response is lost, the retry gets a 412 (or a 404), so a caller's CAS
loop re-reads and finds its own write; keep such updates idempotent.

With ``emulator_host`` (``STORAGE_EMULATOR_HOST``, e.g. ``http://127.0.0.1:4443``) the client
talks to that server with anonymous credentials: no cloud account is needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache

import requests
from google.api_core import exceptions as google_exceptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from mountainid.store.base import BlobInfo, BlobStore, NotFound, PreconditionFailed, StoreError, check_name

HTTP_POOL_SIZE = 32


@cache
def storage_client(project: str, emulator_host: str | None = None) -> storage.Client:
    """One client per (project, endpoint) for the whole process, made on first use (they pool
    HTTP connections). Also used by tests and the local cloud to create buckets."""
    if emulator_host:
        client = storage.Client(project=project, credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": emulator_host})
    else:
        client = storage.Client(project=project)
    # The default pool keeps 10 connections; thread pools (ingest downloads, training feature reads)
    # run up to 16 requests at once, and each extra one would open and drop a connection.
    adapter = requests.adapters.HTTPAdapter(pool_connections=HTTP_POOL_SIZE, pool_maxsize=HTTP_POOL_SIZE)
    for scheme in ("https://", "http://"):
        client._http.mount(scheme, adapter)  # _http is the client's requests session
    return client


class GcsBlobStore(BlobStore):
    def __init__(self, bucket_name: str, project: str, *, emulator_host: str | None = None,
                 timeout_s: float = 60.0, retry_deadline_s: float = 120.0) -> None:
        self.bucket_name = bucket_name
        self.project = project
        self.emulator_host = emulator_host or None
        self.timeout_s = timeout_s
        self._retry: Retry = DEFAULT_RETRY.with_timeout(retry_deadline_s)
        self._bucket: storage.Bucket | None = None

    @property
    def bucket(self) -> storage.Bucket:
        """Created on first use, so importing or constructing the store costs nothing."""
        if self._bucket is None:
            self._bucket = storage_client(self.project, self.emulator_host).bucket(self.bucket_name)
        return self._bucket

    @contextmanager
    def _mapped(self, name: str) -> Iterator[None]:
        """Turn google's HTTP errors into the store's own, naming the object."""
        try:
            yield
        except google_exceptions.NotFound as exc:  # the object, or the whole bucket
            raise NotFound(f"{self.uri(name)}: {exc.message}") from None
        except google_exceptions.PreconditionFailed:
            raise PreconditionFailed(f"{self.uri(name)}: generation does not match") from None
        except google_exceptions.GoogleAPIError as exc:  # other HTTP errors, retries exhausted
            raise StoreError(f"{self.uri(name)}: {exc}") from exc

    @staticmethod
    def _info(blob: storage.Blob) -> BlobInfo:
        return BlobInfo(blob.name, int(blob.size or 0), int(blob.generation), blob.content_type,
                        dict(blob.metadata or {}), blob.updated.timestamp() if blob.updated else 0.0)

    # BlobStore.

    def put(self, name: str, data: bytes, *, metadata: Mapping[str, str] | None = None,
            content_type: str | None = None, if_generation_match: int | None = None) -> int:
        blob = self.bucket.blob(check_name(name))
        blob.metadata = dict(metadata) if metadata else None
        with self._mapped(name):
            blob.upload_from_string(data, content_type=content_type or "application/octet-stream",
                                    if_generation_match=if_generation_match, timeout=self.timeout_s,
                                    retry=self._retry)
        return int(blob.generation)

    def get(self, name: str) -> bytes:
        with self._mapped(name):
            return self.bucket.blob(check_name(name)).download_as_bytes(timeout=self.timeout_s,
                                                                       retry=self._retry)

    def info(self, name: str) -> BlobInfo | None:
        with self._mapped(name):
            blob = self.bucket.get_blob(check_name(name), timeout=self.timeout_s, retry=self._retry)
        return None if blob is None else self._info(blob)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        with self._mapped(prefix):
            # Cloud Storage lists in name (UTF-8 byte) order, the order the interface promises.
            for blob in self.bucket.client.list_blobs(self.bucket, prefix=prefix or None,
                                                      timeout=self.timeout_s, retry=self._retry):
                yield self._info(blob)

    def _precheck(self, name: str, current: BlobInfo | None, if_generation_match: int | None) -> None:
        """Client-side generation check before a conditional delete or copy.

        Cloud Storage enforces these preconditions atomically on the server (they are passed on as
        well); fake-gcs-server 1.54 enforces them only on uploads, so this check is what makes the
        emulator honour them too (in the uncontended case) and keeps both backends' errors alike.
        """
        generation = current.generation if current else 0
        if if_generation_match is not None and generation != if_generation_match:
            raise PreconditionFailed(f"{self.uri(name)}: generation is {generation}, "
                                     f"expected {if_generation_match}")

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        if if_generation_match is not None:
            current = self.info(name)
            if current is None:
                raise NotFound(self.uri(name))
            self._precheck(name, current, if_generation_match)
        with self._mapped(name):
            self.bucket.blob(check_name(name)).delete(if_generation_match=if_generation_match,
                                                      timeout=self.timeout_s, retry=self._retry)

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None,
             if_generation_match: int | None = None) -> int:
        current = self.info(src)
        if current is None:
            raise NotFound(self.uri(src))
        if if_generation_match is not None:
            self._precheck(dst, self.info(dst), if_generation_match)
        # Copy exactly the version just read, and spell out the destination's metadata and content
        # type: a rewrite with a destination resource does not inherit them from the source.
        source = self.bucket.blob(src, generation=current.generation)
        target = self.bucket.blob(check_name(dst))
        target.metadata = dict(current.metadata if metadata is None else metadata) or None
        target.content_type = current.content_type
        with self._mapped(dst):
            token, _, _ = target.rewrite(source, if_generation_match=if_generation_match,
                                         timeout=self.timeout_s, retry=self._retry)
            while token is not None:  # large objects across locations take several calls
                token, _, _ = target.rewrite(source, token=token, if_generation_match=if_generation_match,
                                             timeout=self.timeout_s, retry=self._retry)
        return int(target.generation)

    def uri(self, name: str = "") -> str:
        return f"gs://{self.bucket_name}/{name}"
