"""A folder that behaves like a bucket: the embedded default.

Objects are plain files under the root (browse them with a file manager); their generation,
content type and metadata live in a JSON sidecar under ``.meta/``. Writes go to a temporary file
and are renamed into place, so a reader never sees half an object, and every write that checks a
precondition holds an exclusive ``flock`` on the root, so separate processes (ingest, training,
web) sharing one folder get the same compare-and-swap guarantees as Cloud Storage.

When ``on_finalize`` is given it is called after each successful write, the way Cloud Storage
sends an ``OBJECT_FINALIZE`` notification.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mountainid.store.base import BlobInfo, BlobStore, NotFound, PreconditionFailed, check_name

META_DIR = ".meta"


class LocalBlobStore(BlobStore):
    def __init__(self, root: str | os.PathLike[str],
                 on_finalize: Callable[[BlobInfo], None] | None = None) -> None:
        self.root = Path(root).resolve()
        (self.root / META_DIR).mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / META_DIR / ".lock"
        self.on_finalize = on_finalize

    # Paths and sidecars.

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def _meta_path(self, name: str) -> Path:
        return self.root / META_DIR / f"{check_name(name)}.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_meta(self, name: str) -> dict | None:
        try:
            return json.loads(self._meta_path(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _current_generation(self, name: str) -> int:
        meta = self._read_meta(name)
        return int(meta["generation"]) if meta and self._path(name).exists() else 0

    def _check(self, name: str, if_generation_match: int | None) -> None:
        if if_generation_match is None:
            return
        current = self._current_generation(name)
        if current != if_generation_match:
            raise PreconditionFailed(
                f"{self.uri(name)}: generation is {current}, expected {if_generation_match}")

    # BlobStore.

    def put(self, name: str, data: bytes, *, metadata: Mapping[str, str] | None = None,
            content_type: str | None = None, if_generation_match: int | None = None) -> int:
        path = self._path(name)
        with self._locked():
            self._check(name, if_generation_match)
            # Nanosecond clock: increasing, and unique enough to tell two writes apart.
            generation = max(time.time_ns(), self._current_generation(name) + 1)
            self._atomic_write(path, data)
            sidecar = {"generation": generation, "content_type": content_type,
                       "metadata": dict(metadata or {})}
            self._atomic_write(self._meta_path(name), json.dumps(sidecar).encode("utf-8"))
        if self.on_finalize is not None:
            self.on_finalize(BlobInfo(name, len(data), generation, content_type, dict(metadata or {}),
                                      time.time()))
        return generation

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(self.uri(name)) from None

    def info(self, name: str) -> BlobInfo | None:
        path = self._path(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        meta = self._read_meta(name) or {"generation": stat.st_mtime_ns, "content_type": None, "metadata": {}}
        return BlobInfo(name, stat.st_size, int(meta["generation"]), meta.get("content_type"),
                        meta.get("metadata") or {}, stat.st_mtime)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Walks only the folder the prefix is inside (``raw/k2/`` reads ``raw/k2``, not the bucket)."""
        names = []
        start = self.root / prefix.rpartition("/")[0]
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != META_DIR]
                rel_dir = ""
            for filename in filenames:
                if filename.startswith(".tmp-"):
                    continue
                name = f"{rel_dir}/{filename}" if rel_dir else filename
                if name.startswith(prefix):
                    names.append(name)
        for name in sorted(names):
            blob = self.info(name)
            if blob is not None:
                yield blob

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        with self._locked():
            if not self._path(name).is_file():
                raise NotFound(self.uri(name))
            self._check(name, if_generation_match)
            self._path(name).unlink()
            self._meta_path(name).unlink(missing_ok=True)

    def copy(self, src: str, dst: str, *, metadata: Mapping[str, str] | None = None,
             if_generation_match: int | None = None) -> int:
        source = self.info(src)
        if source is None:
            raise NotFound(self.uri(src))
        return self.put(dst, self.get(src), metadata=source.metadata if metadata is None else metadata,
                        content_type=source.content_type, if_generation_match=if_generation_match)

    def uri(self, name: str = "") -> str:
        return (self.root / name).as_uri() if name else self.root.as_uri()
