"""Verification proves a view, not a subject: an overlay (a watermark grid stamped on unrelated photos) is no
evidence, and mountains whose photos verify each other share their evidence, so the classifier decides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mountainid import verification
from mountainid.training.evaluate import without_own
from mountainid.verification import (
    Gallery,
    fuse,
    fuse_without_evidence,
    in_view_matrix,
    in_view_names,
    shared,
)
from mountainid.vision.local import extract_from_bytes

LIMITS = (40_000_000, 10_000_000)


def _stamped(path: Path, watermark: bool) -> bytes:
    """The photo at 640 px, with a stock agency's grid of marks and a caption bar if asked (each mark a little
    different, as an agency's carry the image id: a grid of identical marks matches itself shifted by a cell)."""
    image = Image.open(path).convert("RGB").resize((640, 427))
    if watermark:
        draw = ImageDraw.Draw(image)
        for number, (x, y) in enumerate((x, y) for x in range(0, 640, 80) for y in range(0, 427, 71)):
            bend = 8 * (number % 5)
            draw.line((x + 10, y + 10 + bend, x + 60, y + 50), fill="white", width=3)
            draw.line((x + 60, y + 10, x + 10 + bend, y + 50), fill="white", width=3)
            draw.text((x + 14, y + 25), f"st{number:02d}k", fill="white")
        draw.rectangle((0, 400, 640, 427), fill="black")
        draw.text((10, 405), "image ID 2B4XK7P www.stock.example", fill="white")
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(shared_dir: Path) -> list[Path]:
    peaks = shared_dir / "data" / "peaks14"
    return [min((peaks / "Shishapangma").iterdir()), min((peaks / "Gasherbrum I").iterdir())]


def test_a_watermark_shared_by_two_mountains_photos_is_not_evidence(photos: list[Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    upload = extract_from_bytes(_stamped(photos[0], True), *LIMITS)
    gallery_photo = extract_from_bytes(_stamped(photos[1], True), *LIMITS)
    clean = extract_from_bytes(_stamped(photos[1], False), *LIMITS)
    gallery = Gallery(["gasherbrum-i"], [0], [gallery_photo], matching=verification.SMALL_GALLERY)
    monkeypatch.setattr(verification, "OVERLAY_SHARE", 2.0)  # before: nothing counts as an overlay
    before = gallery.verify(upload)
    assert before and before[0].inliers >= verification.EVIDENCE_INLIERS  # the grid "agrees" on many points
    monkeypatch.undo()
    assert gallery.verify(upload) == []  # after: the overlay proves nothing about the subject
    # Without the stamp, two different mountains do not verify each other either way.
    plain = extract_from_bytes(_stamped(photos[0], False), *LIMITS)
    assert all(v.inliers < verification.EVIDENCE_INLIERS
               for v in Gallery(["gasherbrum-i"], [0], [clean], matching=verification.SMALL_GALLERY).verify(plain))


def test_mountains_that_share_a_view_share_their_evidence() -> None:
    """A verified match with a photo of mountain 0 (which shows mountain 1 too) no longer outweighs the
    classifier's preference for 1, and the answer's confidence stays below certainty."""
    in_view = in_view_matrix({"gasherbrum-i": ["gasherbrum-ii"], "gasherbrum-ii": ["gasherbrum-i"]},
                             ["gasherbrum-i", "gasherbrum-ii", "k2"])
    probs = np.array([[0.3, 0.6, 0.1]])
    scores = np.array([[120.0, 0.0, 0.0]], np.float32)
    assert fuse(probs, scores, 0.1)[0].argmax() == 0 and fuse(probs, scores, 0.1)[0].max() > 0.99  # today
    np.testing.assert_array_equal(shared(scores, in_view), [[120.0, 120.0, 0.0]])
    fused = fuse(probs, scores, 0.1, in_view)[0]
    assert fused.argmax() == 1 and fused.max() == pytest.approx(2 / 3, abs=1e-3)  # the classifier decides
    assert in_view_names(in_view, ["gasherbrum-i", "gasherbrum-ii", "k2"]) == {
        "gasherbrum-i": ["gasherbrum-ii"], "gasherbrum-ii": ["gasherbrum-i"]}
    # Had Gasherbrum I been unknown, its photos' evidence would be gone too: no neighbour borrows it.
    others = without_own(fuse_without_evidence(probs, scores, np.array([0]), 0.1, in_view), np.array([0]))[0]
    np.testing.assert_allclose(others, [0.0, 6 / 7, 1 / 7], atol=1e-6)


def test_the_gallery_learns_which_mountains_share_a_view(photos: list[Path]) -> None:
    """Photos of two mountains that verify each other (here: crops of one frame, by other photographers)
    put them in one view; a photographer's own burst does not."""
    frame = Image.open(photos[1]).convert("RGB")
    width, height = frame.size

    def crop(left: float, right: float) -> bytes:
        from io import BytesIO

        buffer = BytesIO()
        frame.crop((int(left * width), 0, int(right * width), height)).save(buffer, "JPEG", quality=92)
        return buffer.getvalue()

    features = [extract_from_bytes(crop(a, b), *LIMITS) for a, b in ((0, 0.8), (0.1, 0.9), (0.2, 1.0),
                                                                      (0.05, 0.85))]
    classes = [0, 1, 1, 0]
    crossing = Gallery(["a", "b", "c", "d"], classes, features).in_view(["p", "q", "r", "s"], 3)
    assert crossing[0, 1] and crossing[1, 0] and not crossing[:, 2].any()
    burst = Gallery(["a", "b", "c", "d"], classes, features).in_view(["p", "p", "p", "p"], 3)
    assert not burst.any()  # one photographer's photos are no second view
