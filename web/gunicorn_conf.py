"""Gunicorn settings for the container: ``gunicorn -c python:web.gunicorn_conf 'web:create_app()'``.

The same choices as ``mountainid serve`` (web.server.gunicorn_options), bound on every interface
at ``PORT`` as Cloud Run expects.
"""

from mountainid.config import get_settings
from web.server import gunicorn_options

_options = gunicorn_options("0.0.0.0", get_settings().port)
bind = _options["bind"]
workers = _options["workers"]
threads = _options["threads"]
worker_class = _options["worker_class"]
timeout = _options["timeout"]
graceful_timeout = _options["graceful_timeout"]
preload_app = _options["preload_app"]
errorlog = _options["errorlog"]
loglevel = _options["loglevel"]
