"""The bucket's layout: every object name the deployables share, each builder beside its parser.

The ingest function writes ``raw/``; the filter function reads it and writes ``accepted/``,
``rejected/`` and the per-photo feature caches; the training job reads those, packs them into
``features/`` shards and writes ``models/``; the web service reads ``models/`` and writes
``uploads/``. They meet only in the bucket, so these names are their contract: they are spelt here
and nowhere else, and whatever builds a name can also be read back by the parser beside it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from mountainid.vision.keypoint_settings import EXTRACTOR_ID

RAW, ACCEPTED, REJECTED = "raw/", "accepted/", "rejected/"
EMBEDDINGS, LOCAL_FEATURES, SHARDS = "embeddings/", "localfeatures/", "features/"
MODELS, UPLOADS = "models/", "uploads/"
INGEST_STATE = "state/ingest/"
SKIPPED = f"{INGEST_STATE}skipped/"  # photos the ingest gave up on, for an operator's retry
RESWEEP = f"{INGEST_STATE}resweep/"  # the cursors of re-sweeps
TRAINING_LEASE = "state/training/lease"
FOLDER_CATALOG = "catalogs/photo-folders.yaml"  # the mountains of every photo folder imported into this bucket
DHASH = "dhash"  # metadata key of accepted/ and rejected/: the photo's 256-bit difference hash (hex)

# Photo ids are Flickr's, or a hash of a folder photo's bytes: safe inside an object name.
_PHOTO_ID = r"[0-9A-Za-z_-]{1,64}"
_SLUG = r"[a-z0-9]+(?:-[a-z0-9]+)*"  # slugify() output
_RAW_NAME = re.compile(rf"^{RAW}(?P<slug>{_SLUG})/(?P<photo_id>{_PHOTO_ID})\.jpg$")
_EMBEDDING_FILE = re.compile(r"(?P<photo_id>.+?)(?:-v(?P<view>\d+))?\.npy")  # <photo_id>[-v<view>].npy
_SHARD_FILE = re.compile(r"(\d+)-of-(\d+)\.npz")
_VERSION = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-z]{4}$")


def is_photo_id(value: str) -> bool:
    return re.fullmatch(_PHOTO_ID, value) is not None


# Photos: raw/ as ingested, then exactly one of accepted/ or rejected/ as the filter judged it.

def raw_folder(slug: str) -> str:
    return f"{RAW}{slug}/"


def raw_name(slug: str, photo_id: str) -> str:
    return f"{raw_folder(slug)}{photo_id}.jpg"


def accepted_name(slug: str, photo_id: str) -> str:
    return f"{ACCEPTED}{slug}/{photo_id}.jpg"


def parse_accepted_name(name: str) -> tuple[str, str] | None:
    """(slug, photo id) of an :func:`accepted_name`; None for anything else under or beside accepted/."""
    parts = name.removeprefix(ACCEPTED).split("/")
    if not name.startswith(ACCEPTED) or len(parts) != 2 or not parts[1].endswith(".jpg"):
        return None
    return parts[0], parts[1].removesuffix(".jpg")


def rejected_name(slug: str, photo_id: str) -> str:
    return f"{REJECTED}{slug}/{photo_id}.jpg"


@dataclass(frozen=True)
class RawPhoto:
    """A photo under raw/, and where its result goes."""

    name: str
    slug: str
    photo_id: str

    @classmethod
    def of(cls, slug: str, photo_id: str) -> RawPhoto:
        return cls(raw_name(slug, photo_id), slug, photo_id)

    @classmethod
    def parse(cls, name: str) -> RawPhoto | None:
        """The photo an object name denotes, or None for anything that is not a raw/ photo."""
        match = _RAW_NAME.match(name)
        return cls(name, match["slug"], match["photo_id"]) if match else None

    @property
    def accepted_name(self) -> str:
        return accepted_name(self.slug, self.photo_id)

    @property
    def rejected_name(self) -> str:
        return rejected_name(self.slug, self.photo_id)


# Per-photo feature caches, written by the filter (view 0) and the training job.

def embedding_name(feature_id: str, photo_id: str, view: int = 0) -> str:
    """The cached embedding of a photo (view 0) or of its augmented view ``view`` (the training job's)."""
    return f"{EMBEDDINGS}{feature_id}/{photo_id}{f'-v{view}' if view else ''}.npy"


def parse_embedding_name(name: str) -> tuple[str, str, int] | None:
    """(feature id, photo id, view) of an :func:`embedding_name`; None for any other name."""
    folder, _, file = name.removeprefix(EMBEDDINGS).rpartition("/")
    match = _EMBEDDING_FILE.fullmatch(file)
    if not name.startswith(EMBEDDINGS) or not folder or "/" in folder or not match:
        return None
    return folder, match["photo_id"], int(match["view"] or 0)


# The current keypoint extractor's per-photo cache (a new extractor writes beside, never over, the old one).
LOCAL_FEATURES_FOLDER = f"{LOCAL_FEATURES}{EXTRACTOR_ID}/"


def local_features_name(photo_id: str) -> str:
    return f"{LOCAL_FEATURES_FOLDER}{photo_id}.npz"


def parse_local_features_name(name: str) -> str | None:
    """The photo id of a :func:`local_features_name`; None for any other name."""
    photo_id = name.removeprefix(LOCAL_FEATURES_FOLDER).removesuffix(".npz")
    return photo_id if name == local_features_name(photo_id) and photo_id and "/" not in photo_id else None


# Shards: the caches of one set (a feature id and view, or the keypoints) packed for bulk reads.

def shard_prefix(set_id: str) -> str:
    return f"{SHARDS}{set_id}/shards/"


def shard_name(set_id: str, index: int, count: int) -> str:
    return f"{shard_prefix(set_id)}{index:05d}-of-{count:05d}.npz"


def parse_shard_name(set_id: str, name: str) -> tuple[int, int] | None:
    """(index, count) of a :func:`shard_name` of ``set_id``; None for any other name."""
    match = _SHARD_FILE.fullmatch(name.removeprefix(shard_prefix(set_id)))
    return (int(match[1]), int(match[2])) if name.startswith(shard_prefix(set_id)) and match else None


# The ingest's state, one cursor per mountain.

def cursor_name(slug: str) -> str:
    return f"{INGEST_STATE}{slug}.json"


def resweep_name(slug: str) -> str:
    return f"{RESWEEP}{slug}.json"


def skipped_name(slug: str, photo_id: str) -> str:
    return f"{SKIPPED}{slug}/{photo_id}.json"


def skipped_slug(name: str) -> str:
    """The mountain of a :func:`skipped_name`."""
    return name.split("/")[-2]


# Model versions: one folder each, complete once its COMPLETE marker is written; LATEST names the live one.

LATEST = f"{MODELS}LATEST"
TRAINING_PROGRESS = f"{MODELS}TRAINING"  # the running training job's progress, for the site
COMPLETE = "COMPLETE"


def new_version(now: datetime | None = None) -> str:
    """A sortable, URL-safe version id: UTC time plus 4 random characters against same-second runs."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def is_version(value: str) -> bool:
    return bool(_VERSION.match(value))


def model_file(version: str, filename: str) -> str:
    return f"{MODELS}{version}/{filename}"


def parse_model_file(name: str) -> tuple[str, str] | None:
    """(version, file name) of a :func:`model_file`; None for anything else under models/."""
    parts = name.removeprefix(MODELS).split("/")
    if not name.startswith(MODELS) or len(parts) != 2 or not is_version(parts[0]):
        return None
    return parts[0], parts[1]


# Uploads the web service keeps for later labelling (only when settings.store_uploads).

def upload_name(day: datetime, upload_id: str) -> str:
    return f"{UPLOADS}{day:%Y-%m-%d}/{upload_id}.jpg"
