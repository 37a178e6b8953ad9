"""Decoding for a small model input: large photos are brought down at decode time, never kept at full size."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mountainid.vision.image import load_image


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_a_large_png_is_reduced_to_no_less_than_the_size_asked_for() -> None:
    ramp = np.linspace(0, 255, 3000, dtype=np.float32)
    pixels = np.stack([np.broadcast_to(ramp[None, :], (2000, 3000))] * 3, axis=2).astype(np.uint8)
    image = load_image(encoded(Image.fromarray(pixels), "PNG"), 40_000_000, draft_size=640)
    assert image.size == (1000, 667) and image.mode == "RGB"  # 3 x smaller: the shorter side stays >= 640
    assert load_image(encoded(Image.fromarray(pixels), "PNG"), 40_000_000).size == (3000, 2000)  # no size asked


def test_a_palette_image_is_decoded_whole_and_made_rgb() -> None:
    image = Image.new("P", (1400, 1400))
    image.putpalette([0, 0, 255] * 256)
    assert load_image(encoded(image, "PNG"), 40_000_000, draft_size=640).size == (1400, 1400)
