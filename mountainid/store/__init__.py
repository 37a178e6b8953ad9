"""Blob storage: one interface, a local-folder backend and a Cloud Storage backend."""

from __future__ import annotations

from collections.abc import Callable

from mountainid.config import Settings
from mountainid.store.base import BlobInfo, BlobStore, NotFound, PreconditionFailed, StoreError, check_name
from mountainid.store.local import LocalBlobStore

__all__ = ["BlobInfo", "BlobStore", "LocalBlobStore", "NotFound", "PreconditionFailed", "StoreError",
           "check_name", "open_store"]


def open_store(settings: Settings, on_finalize: Callable[[BlobInfo], None] | None = None) -> BlobStore:
    """The store the settings name: ``gs://BUCKET`` for Cloud Storage, otherwise a local folder.

    ``on_finalize`` (local store only) stands in for Cloud Storage's object notifications in the
    embedded mode; on GCS the notifications come from the bucket itself.
    """
    if settings.uses_gcs:
        from mountainid.store.gcs import GcsBlobStore  # imported lazily: google-cloud-storage is heavy

        return GcsBlobStore(settings.bucket_name, project=settings.project,
                            emulator_host=settings.storage_emulator_host or None)
    return LocalBlobStore(settings.local_root, on_finalize=on_finalize)
