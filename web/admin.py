"""Admin actions, behind a bearer token (``MOUNTAINID_ADMIN_TOKEN``; unset = admin disabled)."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Response, abort, jsonify, request

from mountainid.logs import event
from web.context import services

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__)


def require_admin() -> None:
    token = services().settings.admin_token
    if not token:
        abort(403, "admin actions are disabled: set MOUNTAINID_ADMIN_TOKEN to enable them")
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    # compare_digest takes the same time whatever prefix matches, so the token cannot be guessed byte by byte
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        event(log, "admin request refused", level=logging.WARNING, path=request.path, remote=request.remote_addr)
        response = jsonify({"error": "unauthorized", "message": "a valid admin token is required "
                                                                "(Authorization: Bearer TOKEN)"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="mountainid-admin"'
        abort(response)


@bp.post("/admin/reload")
def reload() -> Response:
    """Re-read models/LATEST and load it now, even a version that failed before."""
    require_admin()
    holder = services().holder
    predictor = holder.check_now(force=True)
    event(log, "admin reload", version=predictor.version if predictor else None)
    return jsonify(holder.status())
