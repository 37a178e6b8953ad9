"""Labelled photo folders (one subfolder per mountain) for ``train --photos`` and ``evaluate``.

Every subfolder is a mountain: its display name is the folder name, its slug derived from it. A
catalog entry matching the name or slug ("Mount Everest", "mount-everest") adds where it is; an
optional ``mountains.yaml`` in the folder (the catalog format; only ``name`` is required) adds or
overrides that for any of them. The folder's mountains are kept in the bucket
(``catalogs/photo-folders.yaml``), never in the packaged catalogs, so a model trained on them names
them and the site places them. Every problem with the folder is found before anything is written.
A photo's id is a hash of its bytes, so importing the same folder twice adds nothing and a photo
keeps its split wherever it came from.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mountainid.bucket import ACCEPTED, FOLDER_CATALOG, REJECTED, RawPhoto
from mountainid.catalog import Catalog, CatalogError, Mountain, parse_catalog, slugify
from mountainid.config import Settings
from mountainid.filter import judge_photos
from mountainid.logs import Bar, event
from mountainid.store import BlobStore, NotFound, PreconditionFailed
from mountainid.vision.backbone import get_backbone

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
JUDGE_BATCH = 32
FOLDER_MOUNTAINS = "mountains.yaml"  # optional, inside the photo folder


class FolderError(CatalogError):
    """The folder does not have the expected layout; the message says what to fix."""


def folder_catalog(folder: Path, base: Catalog) -> Catalog:
    """The folder's mountains: one per subfolder, placed by its ``mountains.yaml`` or else by ``base``."""
    if not folder.is_dir():
        raise FolderError(f"{folder} is not a folder (expected one subfolder of photos per mountain)")
    described = folder / FOLDER_MOUNTAINS
    extra = (parse_catalog(described.read_text(encoding="utf-8"), str(described), folder.name)
             if described.is_file() else Catalog(folder.name, ()))
    mountains: dict[str, Mountain] = {}
    for sub in _subfolders(folder):
        try:
            slug = slugify(sub.name)
        except ValueError:
            raise FolderError(f"{sub}: a mountain's folder name needs letters or digits") from None
        if slug in mountains:
            raise FolderError(f"{folder}: subfolders {mountains[slug].name!r} and {sub.name!r} are the same "
                              f"mountain ({slug}); merge or rename one")
        mountains[slug] = extra.find(sub.name) or base.find(sub.name) or Mountain(sub.name, slug, sub.name)
    return Catalog(folder.name, tuple(mountains.values()))


def bucket_catalog(store: BlobStore) -> Catalog:
    """The mountains that photo folders brought into this bucket (empty if none)."""
    try:
        return parse_catalog(store.get(FOLDER_CATALOG).decode("utf-8"), store.uri(FOLDER_CATALOG), "photo-folders")
    except NotFound:
        return Catalog("photo-folders", ())


def _remember(store: BlobStore, catalog: Catalog) -> None:
    import yaml

    merged = bucket_catalog(store).merged(catalog)
    store.put(FOLDER_CATALOG, yaml.safe_dump({"name": "photo-folders", "mountains": [
        {k: v for k, v in m.to_dict().items() if v is not None} for m in merged.mountains]},
        allow_unicode=True, sort_keys=False).encode("utf-8"), content_type="application/yaml")


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    slug: str


def photo_id_of(data: bytes) -> str:
    """A stable id from the photo's content."""
    return hashlib.sha256(data).hexdigest()[:20]


def labelled_files(folder: Path, base: Catalog) -> list[LabelledFile]:
    """Every photo file of every mountain subfolder, in name order."""
    folder_catalog(folder, base)  # the folder, its names and its mountains.yaml are usable
    files = [LabelledFile(path, slugify(sub.name)) for sub in _subfolders(folder) for path in sorted(sub.iterdir())
             if path.is_file() and path.suffix.lower() in PHOTO_SUFFIXES]
    if not files:
        raise FolderError(f"{folder} holds no photos in mountain subfolders")
    return files


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def import_folder(store: BlobStore, settings: Settings, folder: Path, base: Catalog) -> Counter[str]:
    """Put every photo through the pipeline's own path: raw/ upload, then the filter's judgement.

    So photos brought this way are accepted or rejected, and their embeddings cached, exactly as
    Flickr photos are; the folder's mountains join the bucket's catalog. The weights are loaded and
    the folder checked before anything is written. Returns the filter outcomes by status.
    """
    files = labelled_files(folder, base)
    backbone = get_backbone(settings.weights)
    _remember(store, folder_catalog(folder, base))
    pending: list[RawPhoto] = []
    for item in files:
        data = item.path.read_bytes()
        photo_id = photo_id_of(data)
        photo = RawPhoto.of(item.slug, photo_id)
        metadata = {"source": "folder", "mountain": item.slug, "photo_id": photo_id, "title": item.path.name}
        try:
            store.put(photo.name, data, metadata=metadata, content_type="image/jpeg", if_generation_match=0)
        except PreconditionFailed:
            pass  # imported before: the filter below skips what it already judged
        pending.append(photo)
    judged = {name for prefix in (ACCEPTED, REJECTED) for name in store.list_names(prefix)}
    todo = [p for p in pending if p.accepted_name not in judged and p.rejected_name not in judged]
    counts: Counter[str] = Counter(already_judged=len(pending) - len(todo))
    with Bar("filter", len(todo)) as bar:
        for start in range(0, len(todo), JUDGE_BATCH):
            for outcome in judge_photos(store, todo[start:start + JUDGE_BATCH], settings, backbone):
                outcome.log(source="folder")
                counts[outcome.status] += 1
            bar.advance(len(todo[start:start + JUDGE_BATCH]))
    # the counts are outcome names, never event()'s own level/exc_info keywords
    event(log, "photo folder imported", folder=str(folder), photos=len(files), **counts)  # type: ignore[arg-type]
    return counts
