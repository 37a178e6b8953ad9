"""The blob store interface every part of MountainID reads and writes the bucket through.

Two backends implement it: :class:`~mountainid.store.local.LocalBlobStore` (a folder, the
embedded default) and :class:`~mountainid.store.gcs.GcsBlobStore` (Cloud Storage). Both pass
the same contract tests (``tests/store``).

Generations: every write gives the object a new, increasing generation number. A write with
``if_generation_match=G`` succeeds only if the object's current generation is ``G``;
``if_generation_match=0`` means "only if the object does not exist". That is how the ingest
cursor, ``models/LATEST`` and the training lease avoid lost updates.
"""

from __future__ import annotations

import builtins
import posixpath
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._\-/]+$")


class StoreError(RuntimeError):
    """Base class for blob store errors."""


class NotFound(StoreError):
    """The object does not exist (or was deleted between listing and reading)."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object's generation was not the one expected."""


def check_name(name: str) -> str:
    """Reject object names that could escape the bucket root or confuse a folder backend."""
    if (not name or name.startswith("/") or name.endswith("/") or not _SAFE_NAME.match(name)
            or posixpath.normpath(name) != name or name.split("/")[0] in ("..", ".")
            or ".." in name.split("/")):
        raise ValueError(f"unsafe object name {name!r}")
    return name


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    generation: int
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    updated: float = 0.0  # seconds since the epoch


class BlobStore(ABC):
    """Objects addressed by '/'-separated names, with user metadata and generations."""

    @abstractmethod
    def put(self, name: str, data: bytes, *, metadata: Mapping[str, str] | None = None,
            content_type: str | None = None, if_generation_match: int | None = None) -> int:
        """Write an object; returns its new generation. Raises PreconditionFailed."""

    @abstractmethod
    def get(self, name: str) -> bytes:
        """Read an object's bytes. Raises NotFound."""

    @abstractmethod
    def info(self, name: str) -> BlobInfo | None:
        """Size, generation and metadata of an object, or None if it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every object whose name starts with prefix, in name order."""

    @abstractmethod
    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        """Delete an object. Raises NotFound or PreconditionFailed."""

    @abstractmethod
    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None,
             if_generation_match: int | None = None) -> int:
        """Server-side copy; metadata given replaces the source's. Returns dst's generation."""

    @abstractmethod
    def uri(self, name: str = "") -> str:
        """A human-readable address (file:///… or gs://…) for logs and messages."""

    # Conveniences shared by both backends.

    def exists(self, name: str) -> bool:
        return self.info(name) is not None

    def get_text(self, name: str) -> str:
        return self.get(name).decode("utf-8")

    def list_names(self, prefix: str = "") -> builtins.list[str]:  # `list` here is the method above
        return [blob.name for blob in self.list(prefix)]
