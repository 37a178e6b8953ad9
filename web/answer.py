"""One identification, shared by the page and the API so both always give the same answer.

:func:`identify` reads the uploaded photo from the request, runs the live model on it, keeps the
photo only if the operator opted in, and returns an :class:`Answer`: the prediction plus what
people need to read it (a verdict, where the best guess is, credited training photos, and the
matched points that show why).
"""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import request, url_for
from PIL import Image
from werkzeug.datastructures import FileStorage, MultiDict

from mountainid.catalog import Catalog, Mountain
from mountainid.logs import event
from mountainid.predict import Evidence, Prediction, SimilarPhoto
from mountainid.serving import new_upload_id, store_upload
from web.context import services

log = logging.getLogger(__name__)

# Flickr's licence ids (flickr.photos.licenses.getInfo) -> short name and deed.
FLICKR_LICENSES: dict[str, tuple[str, str]] = {
    "0": ("All Rights Reserved", ""),
    "1": ("CC BY-NC-SA 2.0", "https://creativecommons.org/licenses/by-nc-sa/2.0/"),
    "2": ("CC BY-NC 2.0", "https://creativecommons.org/licenses/by-nc/2.0/"),
    "3": ("CC BY-NC-ND 2.0", "https://creativecommons.org/licenses/by-nc-nd/2.0/"),
    "4": ("CC BY 2.0", "https://creativecommons.org/licenses/by/2.0/"),
    "5": ("CC BY-SA 2.0", "https://creativecommons.org/licenses/by-sa/2.0/"),
    "6": ("CC BY-ND 2.0", "https://creativecommons.org/licenses/by-nd/2.0/"),
    "7": ("No known copyright restrictions", "https://www.flickr.com/commons/usage/"),
    "8": ("United States Government Work", "https://www.usa.gov/government-copyright"),
    "9": ("CC0 1.0 (public domain dedication)", "https://creativecommons.org/publicdomain/zero/1.0/"),
    "10": ("Public Domain Mark 1.0", "https://creativecommons.org/publicdomain/mark/1.0/"),
    "11": ("CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/"),
    "12": ("CC BY-SA 4.0", "https://creativecommons.org/licenses/by-sa/4.0/"),
    "13": ("CC BY-ND 4.0", "https://creativecommons.org/licenses/by-nd/4.0/"),
    "14": ("CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc/4.0/"),
    "15": ("CC BY-NC-SA 4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/"),
    "16": ("CC BY-NC-ND 4.0", "https://creativecommons.org/licenses/by-nc-nd/4.0/"),
}


class NoModel(RuntimeError):
    """No model has been published yet (or none could be loaded): the service cannot answer."""

    def __init__(self) -> None:
        problem = services().holder.problem  # a published model that cannot load says what to fix
        super().__init__(problem or "no model is loaded yet: the pipeline has not published its first model; "
                                    "try again in a few minutes")


def license_label(license_value: str) -> tuple[str, str]:
    """A Flickr licence id (or an already readable name) -> (name, deed URL or ""); ("", "") if unknown."""
    value = str(license_value).strip()
    return FLICKR_LICENSES.get(value, (value, ""))


@dataclass(frozen=True)
class CreditedPhoto:
    """A training photo of the best guess, with the credit its licence asks for."""

    image_url: str
    title: str
    owner: str
    license_name: str
    license_url: str
    page_url: str
    similarity: float

    @classmethod
    def of(cls, photo: SimilarPhoto) -> CreditedPhoto:
        name, deed = license_label(photo.license)
        return cls(image_url=url_for("pages.training_photo", name=photo.object_name), title=photo.title,
                   owner=photo.owner, license_name=name, license_url=deed, page_url=photo.page_url,
                   similarity=photo.similarity)


EVIDENCE_SIDE = 400.0  # SVG units: the photos' common height side by side, their common width stacked
EVIDENCE_GAP = 12.0
EVIDENCE_SHOWN = 24  # matches drawn: enough to see where they agree, few enough to follow each one
THUMBNAIL_SIDE = 480


@dataclass(frozen=True)
class EvidenceLayout:
    """Both photos in one drawing, side by side (wide) or one above the other (tall), with each shown
    match as a line between its two end points, in SVG units."""

    width: float
    height: float
    upload: tuple[float, float, float, float]  # x, y, width, height
    photo: tuple[float, float, float, float]
    lines: list[tuple[float, float, float, float]]

    @classmethod
    def of(cls, matches: list[tuple[float, float, float, float]], upload_aspect: float, photo_aspect: float,
           tall: bool) -> EvidenceLayout:
        if tall:
            uh, ph = EVIDENCE_SIDE / upload_aspect, EVIDENCE_SIDE / photo_aspect
            upload, photo = (0.0, 0.0, EVIDENCE_SIDE, uh), (0.0, uh + EVIDENCE_GAP, EVIDENCE_SIDE, ph)
        else:
            uw, pw = EVIDENCE_SIDE * upload_aspect, EVIDENCE_SIDE * photo_aspect
            upload, photo = (0.0, 0.0, uw, EVIDENCE_SIDE), (uw + EVIDENCE_GAP, 0.0, pw, EVIDENCE_SIDE)

        def at(box: tuple[float, float, float, float], x: float, y: float) -> tuple[float, float]:
            return round(box[0] + x * box[2], 1), round(box[1] + y * box[3], 1)
        lines = [(*at(upload, qx, qy), *at(photo, gx, gy)) for qx, qy, gx, gy in matches]
        return cls(round(photo[0] + photo[2], 1), round(photo[1] + photo[3], 1), upload, photo, lines)


def spread(matches: list[tuple[float, float, float, float]], k: int) -> list[tuple[float, float, float, float]]:
    """At most k matches spread over the upload (farthest-point order, deterministic): a handful on
    each ridge reads at a glance, where a hundred near-parallel lines blur into one."""
    if len(matches) <= k:
        return list(matches)
    points = np.asarray([(qx, qy) for qx, qy, _, _ in matches])
    chosen = [0]
    distance = np.linalg.norm(points - points[0], axis=1)
    while len(chosen) < k:
        chosen.append(int(distance.argmax()))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return [matches[i] for i in sorted(chosen)]


@dataclass(frozen=True)
class EvidenceView:
    """The upload and the best-verified training photo, with a sample of the points on which they agree."""

    photo: CreditedPhoto
    inliers: int
    upload_url: str  # a data: URL of a small copy (uploads are not stored unless the operator opts in)
    wide: EvidenceLayout
    tall: EvidenceLayout

    @property
    def shown(self) -> int:
        return len(self.wide.lines)

    @classmethod
    def of(cls, evidence: Evidence, upload: Image.Image) -> EvidenceView:
        (uw, uh), (pw, ph) = evidence.upload_size, evidence.photo_size
        matches = spread(list(evidence.matches), EVIDENCE_SHOWN)
        return cls(CreditedPhoto.of(evidence.photo), evidence.inliers, _thumbnail_url(upload),
                   EvidenceLayout.of(matches, uw / uh, pw / ph, tall=False),
                   EvidenceLayout.of(matches, uw / uh, pw / ph, tall=True))


def _thumbnail_url(upload: Image.Image) -> str:
    """A small JPEG of the upload, upright as the model saw it (the prediction's decode), inline in the page."""
    image = upload.copy()
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Answer:
    prediction: Prediction
    verdict: str  # "mountain", "not-sure" or "not-a-mountain"
    headline: str
    location: Mountain | None  # the best guess in the catalog (None if not a mountain or unknown)
    photos: list[CreditedPhoto]
    upload_id: str
    evidence: EvidenceView | None = None  # only on the page; the API gives the prediction's evidence

    def to_json(self) -> dict[str, Any]:
        """The API body: the prediction as the library gives it, plus the reading of it."""
        location = None
        if self.location is not None:
            m = self.location
            location = {"name": m.name, "slug": m.slug, "elevation_m": m.elevation_m,
                        "latitude": m.latitude, "longitude": m.longitude, "map_url": m.map_url}
        return {
            **self.prediction.to_dict(),
            "verdict": self.verdict,
            "headline": self.headline,
            "location": location,
            "credited_photos": [vars(photo) for photo in self.photos],
            "upload_id": self.upload_id,
        }


def build_answer(prediction: Prediction, catalog: Catalog, upload_id: str, upload: Image.Image | None = None) -> Answer:
    """The reading of a prediction; with the decoded ``upload``, also the matched-points view for the page."""
    best = prediction.guesses[0] if prediction.guesses else None
    if not prediction.is_mountain:
        verdict, headline = "not-a-mountain", "This does not look like a mountain."
    elif not prediction.sure or best is None:
        verdict, headline = "not-sure", "Not sure: it might be one of these."
    else:
        verdict, headline = "mountain", f"This looks like {best.name}."
    found = catalog.find(best.slug) if best and verdict != "not-a-mountain" else None
    location = found if found and found.map_url else None  # a mountain known by name only has no map card
    photos = [CreditedPhoto.of(p) for p in prediction.similar] if verdict != "not-a-mountain" else []
    evidence = None
    if prediction.evidence is not None and upload is not None and verdict != "not-a-mountain":
        evidence = EvidenceView.of(prediction.evidence, upload)
    return Answer(prediction=prediction, verdict=verdict, headline=headline, location=location,
                  photos=photos, upload_id=upload_id, evidence=evidence)


class UploadError(ValueError):
    """The request carries no usable file (as opposed to a file that is no usable photo): a 400."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_photo() -> bytes:
    """The uploaded bytes: the multipart field ``photo`` (first non-empty one), else the only file part
    under whatever name the client gave it (most send ``file``), or the raw body.

    Werkzeug parses the body as it streams in (file parts over 500 kB spill to a temporary file), so the
    upload is held once, never beside a raw copy. The client's file name is never read: only the bytes
    travel further. Raises UploadError naming what is wrong with the request itself.
    """
    if request.mimetype != "multipart/form-data":
        return request.get_data(cache=False)
    if not request.mimetype_params.get("boundary"):
        raise UploadError("malformed-upload", "malformed upload: a multipart body needs a boundary in its "
                                              "Content-Type")
    files = _multipart_files()
    for part in files.getlist("photo"):
        data = part.read()
        if data:
            return data
    others = [part for name, part in files.items(multi=True) if name != "photo"]
    if len(others) == 1:
        return others[0].read()
    if files.getlist("photo"):
        return b""  # the field is there but empty: BadImage("empty") says so
    names = ", ".join(sorted({name for name, _ in files.items(multi=True)})) or "none"
    raise UploadError("no-file", f"no file in field 'photo' (file fields sent: {names})")


def _multipart_files() -> MultiDict[str, FileStorage]:
    """The request's file parts, parsed by Werkzeug's own multipart parser; a body it cannot read is an
    UploadError saying why (Flask's ``request.files`` would read it as empty, hiding the cause)."""
    parser = request.make_form_data_parser()
    parser.silent = False
    try:
        _, _, files = parser.parse(request.stream, request.mimetype, request.content_length,
                                   request.mimetype_params)
    except UnicodeDecodeError:
        raise UploadError("malformed-upload", "malformed upload: a part's headers (its file name, say) are not "
                                              "UTF-8: send the name in UTF-8 or percent-encoded") from None
    except ValueError as error:
        raise UploadError("malformed-upload", f"malformed upload: the multipart body could not be read "
                                              f"({error})") from None
    return files


def identify(*, page: bool = False) -> Answer:
    """Predict on the request's photo with the live model. Raises NoModel or BadImage.

    ``page``: also draw the matched-points view (it embeds a small copy of the upload)."""
    svc = services()
    predictor = svc.holder.predictor  # read once: this request finishes on this model
    if predictor is None:
        raise NoModel()
    data = read_photo()
    upload_id = new_upload_id()
    started = time.perf_counter()
    with svc.prediction_slots:  # decoding is the memory peak: only so many at once
        image = predictor.decode(data)  # the one decode: the prediction, the page's copy and the kept one
        prediction = predictor.predict_image(image)
    stored = store_upload(svc.store, upload_id, image, prediction) if svc.settings.store_uploads else None
    answer = build_answer(prediction, svc.catalog.merged(predictor.catalog), upload_id, image if page else None)
    best = prediction.guesses[0] if prediction.guesses else None
    event(log, "photo identified", photo_id=upload_id, model_version=prediction.model_version,
          verdict=answer.verdict, guess=best.slug if best else None,
          probability=round(best.probability, 3) if best else None, bytes=len(data), stored=stored,
          ms=round((time.perf_counter() - started) * 1000, 1))
    return answer
