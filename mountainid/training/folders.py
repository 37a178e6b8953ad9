"""Labelled photo folders (one subfolder per mountain) for ``train --photos`` and ``evaluate``.

Subfolders are matched to the catalog by display name or slug ("Mount Everest",
"mount-everest"); a subfolder that matches no mountain is an error named before anything is
written. A photo's id is a hash of its bytes, so importing the same folder twice adds nothing
and a photo keeps its split wherever it came from.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mountainid.catalog import Catalog
from mountainid.config import Settings
from mountainid.filter import ACCEPTED, RAW, REJECTED, RawPhoto, judge_photos
from mountainid.logs import event
from mountainid.store import BlobStore, PreconditionFailed
from mountainid.vision.backbone import get_backbone

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
JUDGE_BATCH = 32


class FolderError(ValueError):
    """The folder does not have the expected layout; the message says what to fix."""


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    slug: str


def photo_id_of(data: bytes) -> str:
    """A stable id from the photo's content."""
    return hashlib.sha256(data).hexdigest()[:20]


def labelled_files(folder: Path, catalog: Catalog) -> list[LabelledFile]:
    """Every photo file of every mountain subfolder, in name order."""
    if not folder.is_dir():
        raise FolderError(f"{folder} is not a folder (expected one subfolder of photos per mountain)")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in subfolders if catalog.find(p.name) is None]
    if unknown:
        raise FolderError(f"subfolders {unknown} match no mountain of catalog {catalog.name!r} "
                          f"(known: {', '.join(m.name for m in catalog.mountains)}); rename them or set "
                          "MOUNTAINID_CATALOG")
    files = [LabelledFile(path, catalog.find(sub.name).slug)  # type: ignore[union-attr]
             for sub in subfolders for path in sorted(sub.iterdir())
             if path.is_file() and path.suffix.lower() in PHOTO_SUFFIXES]
    if not files:
        raise FolderError(f"{folder} holds no photos in mountain subfolders")
    return files


def import_folder(store: BlobStore, settings: Settings, folder: Path, catalog: Catalog) -> Counter[str]:
    """Put every photo through the pipeline's own path: raw/ upload, then the filter's judgement.

    So photos brought this way are accepted or rejected, and their embeddings cached, exactly as
    Flickr photos are. Returns the filter outcomes by status.
    """
    files = labelled_files(folder, catalog)
    pending: list[RawPhoto] = []
    for item in files:
        data = item.path.read_bytes()
        photo_id = photo_id_of(data)
        photo = RawPhoto(f"{RAW}{item.slug}/{photo_id}.jpg", item.slug, photo_id)
        metadata = {"source": "folder", "mountain": item.slug, "photo_id": photo_id, "title": item.path.name}
        try:
            store.put(photo.name, data, metadata=metadata, content_type="image/jpeg", if_generation_match=0)
        except PreconditionFailed:
            pass  # imported before: the filter below skips what it already judged
        pending.append(photo)
    backbone = get_backbone(settings.weights)
    judged = {name for prefix in (ACCEPTED, REJECTED) for name in store.list_names(prefix)}
    todo = [p for p in pending if p.accepted_name not in judged and p.rejected_name not in judged]
    counts: Counter[str] = Counter(already_judged=len(pending) - len(todo))
    for start in range(0, len(todo), JUDGE_BATCH):
        for outcome in judge_photos(store, todo[start:start + JUDGE_BATCH], settings, backbone):
            outcome.log(source="folder")
            counts[outcome.status] += 1
    event(log, "photo folder imported", folder=str(folder), photos=len(files), **counts)
    return counts
