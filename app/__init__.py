"""The fish-species classifier web app: an HTML upload page and a JSON API over one :class:`Predictor`.

This module owns the application factory ``create_app`` (Flask tutorial style), a list of small named steps
(cookiecutter-flask style): the settings (:func:`configure`, from their one declaration in :mod:`app.settings`), the
model (:func:`init_model`, wired by :mod:`app.inference`), the blueprints (:mod:`app.web`, :mod:`app.api`), JSON
errors for API paths and the security headers. Serve it with ``gunicorn -c gunicorn.conf.py wsgi:app``.

The steps import the blueprints and the model's modules when they run (as Flask's tutorial imports its blueprints
inside the factory), so importing a light part of the package (``app.settings``, the corrections store that
``fish-admin`` uses) does not load torch: ``fish-admin --help`` answers in a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from app import settings
from app.request_class import InMemoryRequest
from app.settings import ENV_PREFIX

ROOT = Path(__file__).resolve().parents[1]


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app and load its model once.

    Configuration, later sources winning: the defaults, ``FISH_*`` environment variables (values parsed as JSON
    where possible, so ``FISH_TOP_K=3`` is an int), then ``config`` (tests); see :func:`configure`. The settings
    (MODEL_PATH, TOP_K, MAX_CONTENT_LENGTH, THREADS, DECODE_TIMEOUT_S, the thresholds...) are declared once, with
    their types, units, defaults, bounds and help, in :data:`app.settings.SETTINGS`; the README's configuration
    table lists the same.

    Raises:
        model.checkpoint.CheckpointError: the checkpoint at MODEL_PATH is missing or invalid.
        ValueError: a setting has an invalid value.
    """
    from app.corrections import extension as corrections

    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.request_class = InMemoryRequest
    configure(app, config)
    init_model(app)
    corrections.init_app(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_security_headers(app)
    return app


def configure(app: Flask, config: dict[str, Any] | None = None) -> None:
    """Set ``app.config`` from :mod:`app.settings`: its defaults, then ``FISH_*`` environment variables, then
    ``config``; then check every declared setting (:func:`app.settings.validate`).

    Every ``FISH_*`` variable reaches the config, each value read by :func:`app.settings.parse_value` (JSON where
    possible): the declared settings, and Flask's own settings too (e.g. ``FISH_MAX_FORM_PARTS``), unchecked, as
    before. Keys of ``config`` that are not declared settings (``TESTING``...) pass through as well.

    Raises:
        ValueError: a declared setting's value is out of its type, bounds or choices, e.g. ``"TOP_K (env
            FISH_TOP_K) must be a positive integer, got 0"``: TOP_K, MAX_IMAGE_PIXELS, MAX_IMAGES_PER_REQUEST,
            MAX_CONTENT_LENGTH, BATCH_MAX_SIZE, MAX_CONCURRENT_DECODES, DECODE_MEMORY_MB or THREADS (if set) is not a
            positive integer, DECODE_TIMEOUT_S is not a positive number, a threshold is out of range, or PRECISION or
            BACKEND is not one of its names.
    """
    app.config.from_mapping(settings.defaults())
    app.config.from_prefixed_env(settings.ENV_PREFIX, loads=settings.parse_value)
    # Debug mode (interactive tracebacks, reloading) is never taken from the environment (FLASK_DEBUG, FISH_DEBUG):
    # gunicorn serves this app. Only an explicit ``config`` can turn it on, for local experiments.
    app.config["DEBUG"] = False
    if config is not None:
        app.config.from_mapping(config)
    settings.validate(app.config)


def init_model(app: Flask) -> None:
    """Load the model into ``app`` (:func:`app.inference.init_app`).

    Raises:
        model.checkpoint.CheckpointError: the checkpoint at MODEL_PATH is missing or invalid; the message says how
            to point the app at another one.
        ValueError, model.backends.BackendUnavailableError: see :func:`app.inference.init_app`.
    """
    from app import inference
    from model.checkpoint import CheckpointError

    try:
        inference.init_app(app)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc}. Set the environment variable {ENV_PREFIX}_MODEL_PATH to a checkpoint written by train.py."
        ) from exc


def register_blueprints(app: Flask) -> None:
    """Mount the HTML page (``/``) and the JSON API (``/api/...``, ``/healthz``), and start each request's deadline
    for the decoding they do (``REQUEST_DEADLINE_S``, see :func:`app.uploads.start_deadline`)."""
    from app import api, web
    from app.uploads import start_deadline

    app.register_blueprint(web.bp)
    app.register_blueprint(api.bp)
    app.before_request(start_deadline)


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path.rstrip("/") == "/healthz"


def register_errorhandlers(app: Flask) -> None:
    """Answer HTTP errors (404, 405, 413, 500...) on API paths with ``{"error": message}`` JSON.

    Other paths keep Flask's HTML error pages; the upload page handles its own upload errors.
    """

    def handle_http_error(error: HTTPException) -> Any:
        if not _wants_json():
            return error.get_response()
        message = error.description or error.name
        if error.code == 404:
            message = f"no such endpoint: {request.method} {request.path}"
            if request.path.endswith("/") and request.path != "/":
                message += f" (without the trailing slash: {request.path.rstrip('/')})"
        response = jsonify(error=message)
        response.status_code = error.code or 500
        if error.code == 405 and (allow := error.get_response().headers.get("Allow")):
            response.headers["Allow"] = allow
        return response

    app.register_error_handler(HTTPException, handle_http_error)

    @app.after_request
    def json_options(response: Response) -> Response:
        """Flask's automatic OPTIONS answer on API paths as JSON: ``{"methods": [...]}`` beside ``Allow``."""
        if request.method == "OPTIONS" and _wants_json() and response.status_code == 200 and not response.data:
            methods = sorted(m.strip() for m in response.headers.get("Allow", "").split(",") if m.strip())
            response.set_data(json.dumps({"methods": methods}) + "\n")  # same response: its headers stay
            response.mimetype = "application/json"
        return response


#: Headers sent with every response. The pages use no inline scripts or styles and nothing from other origins;
#: ``data:`` and ``blob:`` images are the thumbnails and the previews of the photos being sent.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def register_security_headers(app: Flask) -> None:
    """Add :data:`SECURITY_HEADERS` to every response: pages, API answers, static files and errors."""

    @app.after_request
    def add_security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
