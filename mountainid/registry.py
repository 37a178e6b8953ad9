"""The model registry: versioned model folders in the bucket and the ``models/LATEST`` pointer.

A version folder ``models/<version>/`` is only ever written once, file by file, with the
``COMPLETE`` marker last; a reader (the web service, :meth:`Registry.versions`) ignores a folder
without it, so a training job that dies half-way through an upload leaves nothing that can be
served. ``models/LATEST`` is the only mutable object: it is replaced with a generation
precondition, so two writers can never both believe they promoted. A lease object
(``state/training/lease``) keeps two training runs from working towards a promotion at once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from mountainid.bucket import (
    COMPLETE,
    LATEST,
    MODELS,
    TRAINING_LEASE,
    is_version,
    model_file,
    parse_model_file,
)
from mountainid.logs import event
from mountainid.store import BlobStore, NotFound, PreconditionFailed

log = logging.getLogger(__name__)



class ModelLoadError(RuntimeError):
    """A model version cannot be loaded or validated; the message names the version and why."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(f"model {version}: {reason}")
        self.version = version
        self.reason = reason


class LeaseHeld(RuntimeError):
    """Another training run holds the lease (until ``expires``)."""

    def __init__(self, owner: str, expires: float) -> None:
        super().__init__(f"training lease held by {owner} until "
                         f"{datetime.fromtimestamp(expires, UTC):%Y-%m-%dT%H:%M:%SZ}")
        self.owner = owner
        self.expires = expires


@dataclass(frozen=True)
class LiveModel:
    """The promoted version, and the generation of ``models/LATEST`` that named it: a promotion over it
    must still find that generation (compare-and-swap), and a server polls it to notice a new one."""

    version: str
    generation: int


class Registry:
    """Reads and writes ``models/`` in one blob store."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    # Reading (the web service and the promotion gate).

    def live(self) -> LiveModel | None:
        """The live model, or None when no model was ever promoted."""
        info = self.store.info(LATEST)
        if info is None:
            return None
        try:
            pointer = json.loads(self.store.get(LATEST))
        except NotFound:  # deleted between info and get
            return None
        version = pointer.get("version", "") if isinstance(pointer, dict) else ""
        if not is_version(version):
            raise ModelLoadError(str(version), f"{LATEST} does not name a valid version")
        return LiveModel(version, info.generation)

    def versions(self) -> list[str]:
        """Complete versions, oldest first (a folder without COMPLETE is an aborted upload)."""
        found = []
        for blob in self.store.list(MODELS):
            parsed = parse_model_file(blob.name)
            if parsed and parsed[1] == COMPLETE:
                found.append(parsed[0])
        return sorted(found)

    def is_complete(self, version: str) -> bool:
        return is_version(version) and self.store.exists(model_file(version, COMPLETE))

    def info(self, version: str) -> dict:
        """The parsed metrics.json of a complete version."""
        if not self.is_complete(version):
            raise ModelLoadError(version, "no such complete version")
        try:
            return json.loads(self.store.get(model_file(version, "metrics.json")))
        except (NotFound, ValueError) as error:
            raise ModelLoadError(version, f"metrics.json unreadable ({error})") from error

    def read(self, version: str, filename: str) -> bytes:
        """One file of a complete version."""
        if not self.is_complete(version):
            raise ModelLoadError(version, "no such complete version (COMPLETE marker missing)")
        try:
            return self.store.get(model_file(version, filename))
        except NotFound:
            raise ModelLoadError(version, f"{filename} is missing") from None

    # Writing (the training job).

    def write_version(self, version: str, files: Mapping[str, bytes]) -> None:
        """Upload every file, then the COMPLETE marker, so readers see all or nothing."""
        if not is_version(version):
            raise ValueError(f"bad version id {version!r}")
        if self.store.exists(model_file(version, COMPLETE)):
            raise ValueError(f"version {version} already exists")
        for filename, data in files.items():
            self.store.put(model_file(version, filename), data)
        self.store.put(model_file(version, COMPLETE), json.dumps({"files": sorted(files)}).encode(),
                       content_type="application/json", if_generation_match=0)

    def promote(self, version: str, expected: int, **facts: object) -> int:
        """Point LATEST at ``version`` if LATEST's generation is still ``expected`` (0: no LATEST).

        Raises PreconditionFailed when someone else moved LATEST since it was read.
        """
        if not self.is_complete(version):
            raise ModelLoadError(version, "cannot promote an incomplete version")
        body = {"version": version, "promoted": datetime.now(UTC).isoformat(timespec="seconds"), **facts}
        return self.store.put(LATEST, json.dumps(body).encode(), content_type="application/json",
                              if_generation_match=expected)


@dataclass
class Lease:
    """A time-limited exclusive claim on training, held as one object with a known generation.

    Acquire and renew are compare-and-swap writes, so of two runs only one holds the lease at a
    time; a run that crashed stops blocking others once its lease expires.
    """

    store: BlobStore
    ttl_s: float
    owner: str = ""
    generation: int = 0

    def __post_init__(self) -> None:
        self.owner = self.owner or uuid.uuid4().hex[:12]

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.ttl_s}).encode()

    def acquire(self) -> None:
        """Take the lease if it is free or expired; raise LeaseHeld otherwise."""
        current = self.store.info(TRAINING_LEASE)
        if current is not None:
            try:
                held = json.loads(self.store.get(TRAINING_LEASE))
                owner, expires = str(held["owner"]), float(held["expires"])
            except (NotFound, ValueError, KeyError, TypeError):
                owner, expires = "unknown", 0.0  # unreadable lease: treat as expired
            if expires > time.time() and owner != self.owner:
                raise LeaseHeld(owner, expires)
        try:
            self.generation = self.store.put(TRAINING_LEASE, self._body(), content_type="application/json",
                                             if_generation_match=current.generation if current else 0)
        except PreconditionFailed:
            raise LeaseHeld("another run", time.time()) from None
        event(log, "training lease acquired", owner=self.owner, ttl_s=self.ttl_s)

    def renew(self) -> None:
        """Extend the lease; raises LeaseHeld if it was lost (expired and taken by another run)."""
        try:
            self.generation = self.store.put(TRAINING_LEASE, self._body(), content_type="application/json",
                                             if_generation_match=self.generation)
        except PreconditionFailed:
            raise LeaseHeld("another run", time.time()) from None

    def release(self) -> None:
        """Give the lease back; a lease already taken over is left alone."""
        try:
            self.store.delete(TRAINING_LEASE, if_generation_match=self.generation)
        except (NotFound, PreconditionFailed):
            return
        event(log, "training lease released", owner=self.owner)
