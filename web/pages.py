"""The pages people see: the upload form and its answer, the model page, and the images they show."""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, render_template, request, url_for

from mountainid.bucket import model_file
from mountainid.store import NotFound
from mountainid.training.progress import current as training_progress
from web.answer import identify
from web.context import services
from web.describe import MODEL_PLOTS, mountain_list

bp = Blueprint("pages", __name__)

# Only these names are ever read from the store by a public route: a training photo, or a model plot.
TRAINING_PHOTO = re.compile(r"^accepted/[a-z0-9]+(?:-[a-z0-9]+)*/[A-Za-z0-9_-]{1,80}\.jpg$")
MODEL_VERSION = re.compile(r"^[0-9a-z][0-9a-z-]{0,63}$")
DAY = 86400


@bp.app_context_processor
def page_globals() -> dict[str, object]:
    svc = services()
    return {"model": svc.holder.predictor, "model_problem": svc.holder.problem,
            "store_uploads": svc.settings.store_uploads,
            "max_upload_bytes": svc.settings.max_image_bytes}


@bp.app_template_filter("sentence")
def sentence(message: str) -> str:
    """A message as a sentence: capitalised, one full stop (werkzeug's descriptions bring their own)."""
    text = message.strip().rstrip(".")
    return f"{text[:1].upper()}{text[1:]}."


@bp.get("/")
def home() -> str:
    return render_template("index.html", answer=None)


@bp.post("/")
def identify_page() -> str:
    """The form's target. ``?fragment=1`` (the page's script) returns only the answer block."""
    answer = identify(page=True)
    if request.args.get("fragment") == "1":
        return render_template("_result.html", answer=answer)
    return render_template("index.html", answer=answer)


@bp.get("/model")
def model_page() -> str:
    predictor = services().holder.predictor
    mountains = mountain_list(predictor.labels, predictor.catalog) if predictor else []
    names = {m["slug"]: m["name"] for m in mountains}
    info = predictor.info if predictor else {}
    return render_template("model.html", predictor=predictor, info=info, mountains=mountains,
                           confusion=confusion_rows(info, predictor.labels if predictor else [], names),
                           conflicts=label_conflicts(info, names), training=training_progress(services().store),
                           licenses=services().settings.license_terms)


@bp.get("/api")
def api_page() -> str:
    return render_template("api.html")


@bp.get("/photos/<path:name>")
def training_photo(name: str) -> Response:
    """A training photo shown next to an answer. The name must look like accepted/<slug>/<id>.jpg."""
    if not TRAINING_PHOTO.match(name):
        abort(404)
    return _from_store(name, "image/jpeg", max_age=DAY)


@bp.get("/models/<version>/<filename>")
def model_plot(version: str, filename: str) -> Response:
    """A model version's confusion matrix or training curves (versions never change once written)."""
    if not MODEL_VERSION.match(version) or filename not in MODEL_PLOTS:
        abort(404)
    return _from_store(model_file(version, filename), "image/png", max_age=30 * DAY)


def _from_store(name: str, mimetype: str, max_age: int) -> Response:
    try:
        data = services().store.get(name)
    except NotFound:
        abort(404)
    response = Response(data, mimetype=mimetype)
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    return response


CONFUSION_SHADES = 5  # a cell's share of its row, in steps the stylesheet colours (no inline styles: CSP)


def confusion_rows(info: dict, labels: list[str], names: dict[str, str]) -> list[dict[str, object]]:
    """The test confusion matrix as table rows a phone can read: named rows, numbered columns, shaded
    by share of the row; a row with no test photos says so instead of a line of zeros."""
    matrix = (info.get("test_detail") or {}).get("confusion") or []
    rows = []
    for index, (slug, counts) in enumerate(zip(labels, matrix, strict=False)):
        total = sum(counts)
        rows.append({"number": index + 1, "name": names.get(slug, slug), "n": total,
                     "cells": [{"count": count, "right": column == index,
                                "shade": round(CONFUSION_SHADES * count / total) if total else 0}
                               for column, count in enumerate(counts)]})
    return rows


def label_conflicts(info: dict, names: dict[str, str]) -> list[dict[str, object]]:
    """Suspected label noise as pairs of photos (a thumbnail and the mountain each is filed under)
    rather than bucket paths; a name that is not a training photo's is left out."""
    def photo(name: str) -> dict[str, str] | None:
        if not TRAINING_PHOTO.match(name):
            return None
        slug = name.split("/")[1]
        return {"url": url_for("pages.training_photo", name=name), "mountain": names.get(slug, slug)}

    pairs = []
    for pair in info.get("label_conflicts") or []:
        a, b = photo(pair["a"]), photo(pair["b"])
        if a and b:
            pairs.append({"a": a, "b": b, "bits": pair["bits"]})
    return pairs
