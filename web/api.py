"""The JSON API: ``POST /api/v1/predict``, ``GET /api/v1/model`` and ``GET /healthz``."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from mountainid.training.progress import current as training_progress
from web.answer import NoModel, identify
from web.context import services
from web.describe import MODEL_PLOTS, mountain_list

bp = Blueprint("api", __name__)


@bp.post("/api/v1/predict")
def predict() -> Response:
    """Multipart field ``photo``, or the image as the raw request body."""
    response = jsonify(identify().to_json())
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/api/v1/model")
def model() -> Response:
    holder = services().holder
    predictor = holder.predictor
    if predictor is None:
        raise NoModel()
    info = predictor.info
    return jsonify({
        "version": predictor.version,
        "training": training_progress(services().store),
        "created": info.get("created"),
        "labels": predictor.labels,
        "mountains": mountain_list(predictor.labels, predictor.catalog),
        "test": info.get("test"),
        "unknown_threshold": predictor.unknown_threshold,
        "unverified_threshold": predictor.unverified_threshold,
        "plots": {name.removesuffix(".png"): url_for("pages.model_plot", version=predictor.version,
                                                     filename=name) for name in MODEL_PLOTS},
        "serving": holder.status(),
        "metrics": info,
    })


@bp.get("/healthz")
@bp.get("/health")  # Cloud Run's front end answers /healthz itself (paths ending in "z"): check this one there
def healthz() -> Response:
    """Ready (200) only with a model loaded, so a load balancer never routes to a service that cannot answer."""
    predictor = services().holder.predictor
    if predictor is None:
        raise NoModel()
    return jsonify({"status": "ok", "model_version": predictor.version})
