"""The MountainID website and JSON API (Flask), a thin shell over :mod:`mountainid`.

Production: ``gunicorn -c python:web.gunicorn_conf 'web:create_app()'`` (Cloud Run). Locally:
``mountainid serve [--port N]``. The embedded pipeline builds the app with its own settings and
store and tells it about new models through ``app.extensions["mountainid"].holder.notify()``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from mountainid.config import Settings

if TYPE_CHECKING:
    from flask import Flask

    from mountainid.serving import ModelHolder
    from mountainid.store import BlobStore

# Multipart framing around a file at exactly the byte limit; load_image enforces the exact limit.
MULTIPART_SLACK = 64 * 1024


def create_app(settings: Settings | None = None, store: BlobStore | None = None,
               holder: ModelHolder | None = None, *, watch: bool = True) -> Flask:
    """Build the app. ``watch`` starts the background model watcher (first check at once).

    With no arguments (gunicorn's entry point) it reads the settings from the environment,
    configures logging and opens the configured store. Imports happen here, not at module level,
    so the gunicorn master (which reads web.gunicorn_conf) never loads TensorFlow before forking.
    """
    from flask import Flask

    from mountainid import logs
    from mountainid.catalog import load_catalog
    from mountainid.config import get_settings
    from mountainid.serving import ModelHolder, bound_memory
    from mountainid.store import open_store
    from web import admin, api, pages
    from web.context import Services
    from web.limits import BodyDeadline
    from web.security import install_security

    bound_memory()  # before any request thread or model exists, however the process was started
    if settings is None:
        settings = get_settings()
        logs.configure(settings)
    store = store or open_store(settings)
    holder = holder or ModelHolder(store, settings)
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_image_bytes + MULTIPART_SLACK,
        TEMPLATES_AUTO_RELOAD=False,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.debug = False  # never the interactive debugger: it executes code for whoever sees it
    app.extensions["mountainid"] = Services(
        settings=settings, store=store, holder=holder, catalog=load_catalog(settings.catalog),
        prediction_slots=threading.BoundedSemaphore(max(1, settings.max_concurrent_predictions)))
    app.wsgi_app = BodyDeadline(app.wsgi_app, settings.body_deadline_s)  # type: ignore[method-assign]
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    install_security(app)
    if watch:
        holder.start()
    return app
