"""Web test fixtures: one small real model trained once per session, and apps/servers around it.

The model is trained through the training engineer's public API (``import_folder`` then
``train_and_register``) on 4 peaks x 12 real photos from ../shared/data/peaks14, the features the
filter caches and a quick head, so it trains in seconds. Every test that publishes versions gets
its own copy of that bucket.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from mountainid.catalog import load_catalog
from mountainid.config import Settings, load_settings
from mountainid.events import InProcessBus
from mountainid.predict import Predictor
from mountainid.registry import Registry
from mountainid.serving import ModelHolder
from mountainid.store import LocalBlobStore
from mountainid.training.folders import import_folder
from mountainid.training.job import JobConfig, train_and_register
from mountainid.training.train import HeadConfig
from mountainid.vision.features import FeatureSpec
from mountainid.vision.image import load_image
from web import create_app
from web.server import ServerThread

MOUNTAINS = ("K2", "Mount Everest", "Annapurna", "Nanga Parbat")
PER_MOUNTAIN = 12
# A quick head, calibrated on the validation split (one head; the fast tier's four folds train five).
QUICK = JobConfig(FeatureSpec(), HeadConfig(epochs=60, patience=15), lease_s=600, calibration_folds=0)
STREET_PHOTO = "street/10015.jpg"


def web_settings(weights_path: Path, bucket: Path, **env: str) -> Settings:
    base = {"MOUNTAINID_BUCKET": str(bucket), "MOUNTAINID_WEIGHTS": str(weights_path),
            "MOUNTAINID_CATALOG": "peaks14", "MOUNTAINID_MIN_PHOTOS_PER_CLASS": "5",
            "MOUNTAINID_MODEL_POLL_S": "0.2"}
    return load_settings(base | env)


def publish_copy(store: LocalBlobStore, source_version: str, *, broken: str | None = None) -> str:
    """Publish a new version with the files of an existing one (optionally one of them, ``broken``, not the
    archive it should be) and move LATEST to it, the way the training job does: files, COMPLETE, then LATEST."""
    from mountainid.bucket import LATEST, new_version

    registry = Registry(store)
    version = new_version()
    prefix = f"models/{source_version}/"
    files = {blob.name[len(prefix):]: store.get(blob.name) for blob in store.list(prefix)
             if blob.name != f"{prefix}COMPLETE"}
    if broken:
        files[broken] = b"PK\x03\x04 this is not an archive"
    registry.write_version(version, files)
    current = store.info(LATEST)
    registry.promote(version, current.generation if current else 0)
    return version


@pytest.fixture(scope="session")
def k2_heldout(shared_dir: Path) -> Path:
    """A K2 photo the fixture model never saw (the last in name order; training takes the first 12)."""
    return max((shared_dir / "data" / "peaks14" / "K2").iterdir())


@pytest.fixture(scope="session")
def street_photo(shared_dir: Path) -> Path:
    return shared_dir / "data" / "scenes" / STREET_PHOTO


@pytest.fixture(scope="session")
def trained_bucket(shared_dir: Path, weights_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local bucket holding one real trained, promoted model version."""
    photos = tmp_path_factory.mktemp("web-photos")
    for mountain in MOUNTAINS:
        (photos / mountain).mkdir()
        for path in sorted((shared_dir / "data" / "peaks14" / mountain).iterdir())[:PER_MOUNTAIN]:
            (photos / mountain / path.name).symlink_to(path)
    bucket = tmp_path_factory.mktemp("web-bucket")
    settings = web_settings(weights_path, bucket)
    store = LocalBlobStore(bucket)
    import_folder(store, settings, photos, load_catalog(settings.catalog))
    result = train_and_register(settings, store, InProcessBus(), QUICK)
    assert result.promoted, result
    return bucket


@pytest.fixture(scope="session")
def reframed_training_photo(predictor: Predictor, trained_bucket: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another shot of the view of a gallery photo (cropped by an eighth a side, half the size, re-encoded):
    verification must find that training photo and show it as the evidence."""
    store = LocalBlobStore(trained_bucket)
    photo_id = predictor.verifier.photo_ids[0]
    original = store.get(next(n for n in store.list_names("accepted/") if n.endswith(f"/{photo_id}.jpg")))
    image = load_image(original, 40_000_000)
    w, h = image.size
    path = tmp_path_factory.mktemp("reframed") / f"{photo_id}.jpg"
    image.crop((w // 8, h // 8, w - w // 8, h - h // 8)).resize((w // 2, h // 2)).save(path, quality=80)
    return path


@pytest.fixture()
def bucket_copy(trained_bucket: Path, tmp_path: Path) -> Path:
    """A private copy of the trained bucket, for tests that publish or store things."""
    return Path(shutil.copytree(trained_bucket, tmp_path / "bucket", symlinks=True))


@pytest.fixture(scope="session")
def session_settings(weights_path: Path, trained_bucket: Path) -> Settings:
    return web_settings(weights_path, trained_bucket)


@pytest.fixture(scope="session")
def live_holder(session_settings: Settings, trained_bucket: Path) -> ModelHolder:
    """One loaded holder shared by the read-only app tests (loading a model costs about a second)."""
    holder = ModelHolder(LocalBlobStore(trained_bucket), session_settings)
    assert holder.check_now() is not None
    return holder


@pytest.fixture(scope="session")
def predictor(live_holder: ModelHolder) -> Predictor:
    return live_holder.predictor  # type: ignore[return-value]


@pytest.fixture(scope="session")
def app(session_settings: Settings, trained_bucket: Path, live_holder: ModelHolder) -> Flask:
    return create_app(session_settings, LocalBlobStore(trained_bucket), live_holder, watch=False)


@pytest.fixture()
def client(app: Flask):
    return app.test_client()


@pytest.fixture()
def serve():
    """Start apps on real HTTP (werkzeug threads on 127.0.0.1); all are stopped after the test."""
    servers: list[ServerThread] = []

    def start(app: Flask) -> ServerThread:
        servers.append(ServerThread(app).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
        server.server.app.extensions["mountainid"].holder.stop()


def png_bomb(side: int = 30_000) -> bytes:
    """A real, valid 1-bit PNG of side x side pixels (900 megapixels for 30000) in about 110 kB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + side // 8)  # filter byte + one bit per pixel
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def bomb() -> bytes:
    return png_bomb()


@pytest.fixture()
def empty_bucket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "empty-bucket"
    path.mkdir()
    yield path
