"""Response headers every answer carries, and the error answers (HTML for people, JSON for the API).

The Content-Security-Policy allows only this origin's own scripts and styles (no inline code, so
an injected ``<script>`` cannot run), blob: images for the local preview of a chosen photo, data:
images for the small copy of the upload beside its matched training photo, and no framing. Errors never show a traceback: the detail goes to the log, the client gets a sentence.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from mountainid.logs import event
from mountainid.vision.image import BadImage
from web.answer import NoModel, UploadError
from web.context import services
from web.limits import BodyTimeout

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "geolocation=(), microphone=(), camera=()",
}
RETRY_AFTER_S = 30


def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


JSON_PATHS = ("/api/", "/admin/", "/health")


def wants_json() -> bool:
    """API, health and admin routes answer JSON; the pages answer HTML. By path too: a request whose
    method does not match (405) never reaches a blueprint."""
    return request.blueprint in ("api", "admin") or request.path.startswith(JSON_PATHS)


def error_response(status: int, reason: str, message: str) -> Response:
    if wants_json():
        response = jsonify({"error": reason, "message": message})
    else:
        template = "_error.html" if request.args.get("fragment") == "1" else "error_page.html"
        response = Response(render_template(template, status=status, reason=reason, message=message),
                            mimetype="text/html")
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def install_security(app: Flask) -> None:
    app.after_request(add_security_headers)

    @app.errorhandler(BadImage)
    def bad_image(error: BadImage) -> Response:
        event(log, "photo refused", level=logging.INFO, reason=error.reason, detail=str(error))
        return error_response(413 if error.reason == "too-large" else 400, error.reason, str(error))

    @app.errorhandler(NoModel)
    def no_model(error: NoModel) -> Response:
        return error_response(503, "no-model", str(error))

    @app.errorhandler(BodyTimeout)
    def body_timeout(error: BodyTimeout) -> Response:
        event(log, "upload refused: the body did not arrive in time", level=logging.WARNING,
              deadline_s=services().settings.body_deadline_s, length=request.content_length)
        response = error_response(408, "upload-timeout", f"the upload did not arrive within "
                                                         f"{services().settings.body_deadline_s:g} s")
        response.headers["Connection"] = "close"
        return response

    @app.errorhandler(UploadError)
    def upload_error(error: UploadError) -> Response:
        event(log, "upload refused", level=logging.INFO, reason=error.reason, detail=str(error))
        return error_response(400, error.reason, str(error))

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(error: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        if request.content_length is not None and request.content_length <= limit:
            # Werkzeug's form parser also answers 413 past its limit on form parts (max_form_parts).
            event(log, "upload refused: too many form parts", length=request.content_length)
            return error_response(413, "too-many-form-parts", "too many form parts: send the photo alone")
        limit_mb = services().settings.max_image_bytes / 1e6
        event(log, "upload refused: over the size limit", length=request.content_length)
        return error_response(413, "too-large", f"the upload is larger than the {limit_mb:.0f} MB limit")

    @app.errorhandler(InternalServerError)
    def internal_error(error: InternalServerError) -> Response:
        original = error.original_exception or error
        event(log, "request failed", level=logging.ERROR, exc_info=True, path=request.path, error=repr(original))
        return error_response(500, "internal-error", "something went wrong on our side; please try again")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        reason = (error.name or "error").lower().replace(" ", "-")
        response = error_response(error.code or 500, reason, error.description or reason)
        for name, value in error.get_headers():  # e.g. the Allow header a 405 must carry
            if name.lower() != "content-type":
                response.headers[name] = value
        return response
