"""Filter test fixtures: the real backbone (once per session), real photos, and generated bad ones."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mountainid.store import LocalBlobStore
from mountainid.vision.backbone import Backbone, get_backbone


@pytest.fixture(scope="session")
def backbone(weights_path: Path) -> Backbone:
    """The process-wide backbone (the same object the CLI and handlers get for these weights)."""
    return get_backbone(str(weights_path))


def _photos(folder: Path, count: int) -> list[bytes]:
    return [path.read_bytes() for path in sorted(folder.iterdir())[:count]]


@pytest.fixture(scope="session")
def k2_photos(shared_dir: Path) -> list[bytes]:
    """Three real photos of K2 (peaks14): the filter must accept them."""
    return _photos(shared_dir / "data" / "peaks14" / "K2", 3)


@pytest.fixture(scope="session")
def street_photos(shared_dir: Path) -> list[bytes]:
    """Three real street scenes: the filter must reject them."""
    return _photos(shared_dir / "data" / "scenes" / "street", 3)


@pytest.fixture()
def local_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "bucket")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims width x height: a decompression bomb costs no disk here."""
    data = bytearray(encode(Image.new("L", (32, 32), 128), "PNG"))
    ihdr = data[12:29]  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def as_mode(photo: bytes, kind: str) -> bytes:
    """A real photo re-encoded the unusual ways cameras and editors produce."""
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    if kind == "png-alpha":
        rgba = image.convert("RGBA")
        alpha = np.full(image.size[::-1], 255, np.uint8)
        alpha[: alpha.shape[0] // 8] = 0  # a transparent band at the top, as cut-outs have
        rgba.putalpha(Image.fromarray(alpha))
        return encode(rgba, "PNG")
    if kind == "cmyk":
        return encode(image.convert("CMYK"), "JPEG", quality=90)
    if kind == "16-bit":
        grey = np.asarray(image.convert("L"), np.uint16) * 257
        return encode(Image.fromarray(grey), "PNG")  # mode I;16
    raise ValueError(kind)
