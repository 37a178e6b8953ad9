"""Decoding photos safely, and turning them into model input the same way everywhere.

The filter, the training job and the web service all call :func:`load_image` and
:func:`to_model_input`, so a photo is decoded, oriented and resized identically at judging,
training and prediction time. Anything that is not a usable photo raises :class:`BadImage` with a
short machine-readable ``reason`` and a sentence for people; nothing else escapes.

This module imports only Pillow and NumPy, so the ingest can validate downloads without TensorFlow.
"""

from __future__ import annotations

import io
import threading
import warnings
from contextlib import nullcontext

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

MIN_SIDE = 32  # smaller than this is an icon or a tracking pixel, not a photo
# A decode this large (after any JPEG draft) holds a full-size copy, ~3 bytes a pixel: a 40 Mpx PNG is
# 120 MB. Such decodes take turns, one at a time in the process, so concurrent uploads never hold
# several (a JPEG photo drafts far below this; a phone's 12 Mpx photo decoded whole is 36 MB).
LARGE_DECODE_PIXELS = 16_000_000
_large_decode = threading.Lock()


class BadImage(ValueError):
    """The bytes are not a usable photo. ``reason`` is a stable code for metadata and API answers."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def load_image(data: bytes, max_pixels: int, max_bytes: int | None = None,
               draft_size: int | None = None) -> Image.Image:
    """Decode bytes into an upright RGB image, or raise BadImage.

    The pixel count is checked from the header before any pixel is decoded, so a decompression
    bomb costs nothing. ``draft_size`` lets JPEG decoding downscale in the DCT (several times
    faster for big photos) when only a small image is needed; other formats (PNG has no draft) are
    reduced by an integer factor right after decoding, so their one full-size copy lives only
    briefly and everything after works on the small one. Neither goes below that size.
    """
    if not data:
        raise BadImage("empty", "the file is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise BadImage("too-large", f"the file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage("too-many-pixels", f"the image has more than {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise BadImage("not-an-image", "the file is not an image format we can read") from None
    except (OSError, ValueError, SyntaxError):  # the imaging library's words stay out of our message
        raise BadImage("corrupt", "the image header is damaged") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage("too-many-pixels", f"the image is {width}x{height}; the limit is {max_pixels:,} pixels")
    if min(width, height) < MIN_SIDE:
        raise BadImage("too-small", f"the image is {width}x{height}; a photo needs at least {MIN_SIDE} px a side")
    if draft_size and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))
    with _large_decode if image.width * image.height > LARGE_DECODE_PIXELS else nullcontext():
        try:
            image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            if "truncated" in str(error):
                raise BadImage("truncated", "the file ends too early: it was cut off while copying or uploading") from None
            raise BadImage("corrupt", "the image data is damaged") from None
        if draft_size:
            image = _reduce(image, draft_size)
        ImageOps.exif_transpose(image, in_place=True)  # in place: a copy would double the peak (~120 MB at 40 Mpx)
        return _to_rgb(image)


def _reduce(image: Image.Image, size: int) -> Image.Image:
    """Box-average by the largest integer factor that keeps the shorter side at least ``size`` (a
    drafted JPEG is usually there already). Palette, bilevel and 16-bit modes cannot be averaged."""
    factor = min(image.size) // size
    if factor < 2 or image.mode in ("P", "1") or image.mode.startswith("I;16"):
        return image
    return image.reduce(factor)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: 16-bit and float are rescaled, transparency is laid on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop: float32 (size, size, 3) in [0, 255].

    Centre-cropping keeps proportions (a squashed mountain is a different mountain) and keeps the
    middle of the frame, where photographers put the peak.
    """
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                           Image.Resampling.BILINEAR, reducing_gap=3.0)
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    return np.asarray(cropped, dtype=np.float32)


def difference_hash(pixels: np.ndarray) -> str:
    """A 256-bit perceptual hash (dHash: is each pixel brighter than its left neighbour, on a 17x16 grey
    thumbnail) as 64 hex digits. Copies of a photo, resized or re-encoded, differ in a few bits only."""
    grey = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("L")
    small = np.asarray(grey.resize((17, 16), Image.Resampling.BILINEAR), np.int16)
    return np.packbits(small[:, 1:] > small[:, :-1]).tobytes().hex()


def decode_for_model(data: bytes, size: int, max_pixels: int, max_bytes: int | None = None) -> np.ndarray:
    """Bytes to model input in one call: what the filter, training and web use."""
    return to_model_input(load_image(data, max_pixels, max_bytes, draft_size=size), size)


# Pillow refuses truncated files by default; keep it that way explicitly (a truncated photo is rejected).
ImageFile.LOAD_TRUNCATED_IMAGES = False
