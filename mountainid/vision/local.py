"""Local features (RootSIFT keypoints) of a photo, and how they are stored.

A mountain's ridges and faces match across photos taken from the same standard viewpoint, in
other seasons and light; keypoints let the prediction check that geometrically instead of trusting
a global descriptor alone (``mountainid.verification``). The filter computes them once per
accepted photo and caches them in the bucket, so training and serving never decode a photo twice.

Descriptors are stored as SIFT's own uint8 values (128 bytes a keypoint) and turned into RootSIFT
(L1-normalised, square-rooted: Arandjelović & Zisserman 2012) only when matched.
"""

from __future__ import annotations

import io
import threading
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mountainid.arrays import load_arrays
from mountainid.vision.image import load_image
from mountainid.vision.keypoint_settings import KEYPOINTS, MAX_SIDE

_FIELDS = ("points", "descriptors", "size")


class CorruptFeatures(ValueError):
    """Stored local features that cannot be read back (truncated, wrong shapes): recompute them."""


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one photo, strongest first."""

    points: np.ndarray       # (N, 2) float32, x and y in pixels of the image scaled to <= MAX_SIDE
    descriptors: np.ndarray  # (N, 128) uint8 SIFT
    size: tuple[int, int]    # (width, height) of that scaled image

    def __len__(self) -> int:
        return len(self.points)

    def strongest(self, count: int) -> LocalFeatures:
        return LocalFeatures(self.points[:count], self.descriptors[:count], self.size)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, points=self.points, descriptors=self.descriptors,
                            size=np.asarray(self.size, np.int32))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LocalFeatures:
        """Raises CorruptFeatures for anything but what :meth:`to_bytes` wrote."""
        try:
            stored = load_arrays(data)
            points, descriptors, size = (stored[name] for name in _FIELDS)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as error:  # all mean "not readable"
            raise CorruptFeatures(f"unreadable local features ({type(error).__name__}: {error})") from None
        if (points.ndim != 2 or points.shape[1:] != (2,) or descriptors.shape != (len(points), 128)
                or descriptors.dtype != np.uint8 or size.shape != (2,)):
            raise CorruptFeatures(f"local features of the wrong shape: points {points.shape}, "
                                  f"descriptors {descriptors.shape} {descriptors.dtype}, size {size.shape}")
        return cls(points.astype(np.float32), descriptors, (int(size[0]), int(size[1])))


_local = threading.local()


def _detector():
    """One SIFT detector per thread (requests run side by side), created on first use. OpenCV's own threads
    (one per core, its default) build each pyramid: 137 -> 83 ms a photo on two cores, the same keypoints,
    and the same photos a second when four requests extract at once (``benchmarks/web.py``)."""
    if not hasattr(_local, "sift"):
        import cv2

        _local.sift = cv2.SIFT_create(KEYPOINTS)  # type: ignore[attr-defined]  # in cv2 >= 4.4; not in its stubs
    return _local.sift


def grey_for_keypoints(image: Image.Image, side: int = MAX_SIDE) -> np.ndarray:
    """The photo as uint8 grey, longest side at most ``side`` (detection at a fixed scale keeps costs flat)."""
    grey = image.convert("L")
    scale = side / max(grey.size)
    if scale < 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(grey, np.uint8)


def extract(grey: np.ndarray) -> LocalFeatures:
    """RootSIFT-ready keypoints of a grey image, strongest first."""
    keypoints, descriptors = _detector().detectAndCompute(grey, None)
    if descriptors is None or not keypoints:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8),
                             (grey.shape[1], grey.shape[0]))
    order = np.argsort([-k.response for k in keypoints], kind="stable")[:KEYPOINTS]
    points = np.array([keypoints[i].pt for i in order], np.float32)
    values = np.clip(np.rint(descriptors[order]), 0, 255).astype(np.uint8)  # SIFT values are 0-255 already
    return LocalFeatures(points, values, (grey.shape[1], grey.shape[0]))


def extract_from_bytes(data: bytes, max_pixels: int, max_bytes: int | None = None) -> LocalFeatures:
    """Decode (as everywhere: oriented, bounded; raises BadImage) and extract."""
    return extract(grey_for_keypoints(load_image(data, max_pixels, max_bytes, draft_size=MAX_SIDE)))


def rootsift(descriptors: np.ndarray) -> np.ndarray:
    """uint8 SIFT -> float32 RootSIFT, whose Euclidean distance is the Hellinger kernel of SIFT."""
    values = descriptors.astype(np.float32)
    values /= np.maximum(values.sum(axis=1, keepdims=True), 1e-6)
    return np.sqrt(values, out=values)  # in place: a gallery's copy is ~190 MB, a second one at load is the peak
