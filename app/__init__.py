"""The fish-species classifier web app: an HTML upload page and a JSON API over one :class:`Predictor`.

This module owns the application factory ``create_app`` (Flask tutorial style), a list of small named steps
(cookiecutter-flask style): the settings (:func:`configure`), the model (:func:`init_model`, wired by
:mod:`app.inference`), the blueprints (:mod:`app.web`, :mod:`app.api`), JSON errors for API paths and the security
headers. Serve it with ``gunicorn -c gunicorn.conf.py wsgi:app``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from app import api, inference, web
from app.request_class import InMemoryRequest
from app.uploads import DEFAULT_MAX_IMAGES_PER_REQUEST, start_deadline
from model.checkpoint import CheckpointError
from model.decoder_pool import DEFAULT_DECODE_MEMORY_MB, DEFAULT_DECODE_TIMEOUT_S
from model.decoding import DEFAULT_MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]
#: Prefix of environment variables that override the defaults, e.g. ``FISH_MODEL_PATH``, ``FISH_TOP_K``.
ENV_PREFIX = "FISH"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app and load its model once.

    Configuration, later sources winning: the defaults below, ``FISH_*`` environment variables (values parsed
    as JSON where possible, so ``FISH_TOP_K=3`` is an int), then ``config`` (tests).

    Settings:
        MODEL_PATH: checkpoint written by ``train.py`` (default ``weights/fish4knowledge_lite0.pt``).
        MAX_CONTENT_LENGTH: largest request body, in bytes (default 16 MiB; bigger requests get 413).
        MAX_IMAGE_PIXELS: largest decoded image, in pixels (width x height, default 50 million).
        MAX_IMAGES_PER_REQUEST: most images (``image`` fields) in one request, to the page or the API (default
            16; 413 above).
        TOP_K: how many classes to list by default (clipped to the number of classes).
        DEVICE: torch device for inference (default ``"cpu"``).
        PRECISION: ``"auto"`` (default: OpenVINO keeps the faster of fp32 and bf16, measured at start-up; torch
            takes bf16 where the CPU or GPU computes it natively, else fp32), ``"fp32"`` or ``"bf16"``.
        BACKEND: ``"auto"`` (default: OpenVINO on the CPU, torch on a GPU or where OpenVINO cannot compile the
            model), ``"openvino"`` or ``"torch"`` (see ``model.runtime.resolve_backend``).
        THREADS: CPU threads of this process's inference (OpenVINO's, or torch's intra-op threads), or None for
            all the cores it may use (gunicorn.conf.py sets it to the cores divided among the workers).
        BATCH_MAX_SIZE: most images that concurrent requests of one worker share in one batch (1 turns batching
            off; see ``model.batching``).
        BATCH_WAIT_MS: how long, in milliseconds, an open batch waits for more requests (default 0: a batch is
            what queued while the previous one ran, so a lone request never waits).
        CONFIDENCE_THRESHOLD: predictions below this probability are shown as "not sure"; None (default) uses
            the threshold recorded in the checkpoint, chosen on validation data.
        MAX_CONCURRENT_DECODES: image decodes running at once in one worker (default 2), each in its own decoder
            process; a request that waits more than DECODE_WAIT_S seconds (default 10) for one gets 503.
        DECODE_TIMEOUT_S: deadline of one image's decode, in seconds (default 3): past it the decoder process is
            killed and replaced, and the request gets 413 (see ``model.decoder_pool``).
        DECODE_MEMORY_MB: address-space limit of each decoder process, in MiB (default 1024); a decode that needs
            more gets 413.
        REQUEST_DEADLINE_S: seconds after its arrival past which a request starts no more decoding and gets 503
            (default 30): a bound on one request's work, which gthread workers cannot interrupt.
        NOVELTY_THRESHOLD: novelty above which the answer is "unknown species"; SUBJECT_THRESHOLD: subject score
            below which it is "not a fish" (see ``model.open_set``). None (default) keeps the checkpoint's.

    Raises:
        model.checkpoint.CheckpointError: the checkpoint at MODEL_PATH is missing or invalid.
        ValueError: a setting has an invalid value.
    """
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.request_class = InMemoryRequest
    configure(app, config)
    init_model(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_security_headers(app)
    return app


def configure(app: Flask, config: dict[str, Any] | None = None) -> None:
    """Defaults, then ``FISH_*`` environment variables, then ``config``; validate the result.

    Raises:
        ValueError: TOP_K, MAX_IMAGE_PIXELS, MAX_IMAGES_PER_REQUEST, MAX_CONTENT_LENGTH, BATCH_MAX_SIZE,
            MAX_CONCURRENT_DECODES, DECODE_MEMORY_MB or THREADS (if set) is not a positive integer, DECODE_TIMEOUT_S
            is not a positive number, or a threshold is out of range.
    """
    app.config.from_mapping(
        MODEL_PATH=str(ROOT / "weights" / "fish4knowledge_lite0.pt"),
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
        MAX_IMAGE_PIXELS=DEFAULT_MAX_PIXELS,
        MAX_IMAGES_PER_REQUEST=DEFAULT_MAX_IMAGES_PER_REQUEST,
        TOP_K=5,
        DEVICE="cpu",
        PRECISION="auto",
        BACKEND="auto",
        THREADS=None,
        CONFIDENCE_THRESHOLD=None,
        NOVELTY_THRESHOLD=None,
        SUBJECT_THRESHOLD=None,
        MAX_CONCURRENT_DECODES=2,
        DECODE_TIMEOUT_S=DEFAULT_DECODE_TIMEOUT_S,
        DECODE_MEMORY_MB=DEFAULT_DECODE_MEMORY_MB,
        DECODE_WAIT_S=10.0,
        REQUEST_DEADLINE_S=30.0,
        BATCH_MAX_SIZE=16,
        BATCH_WAIT_MS=0.0,
    )
    app.config.from_prefixed_env(ENV_PREFIX)
    # Debug mode (interactive tracebacks, reloading) is never taken from the environment (FLASK_DEBUG, FISH_DEBUG):
    # gunicorn serves this app. Only an explicit ``config`` can turn it on, for local experiments.
    app.config["DEBUG"] = False
    if config is not None:
        app.config.from_mapping(config)
    for key in (
        "TOP_K",
        "MAX_IMAGE_PIXELS",
        "MAX_IMAGES_PER_REQUEST",
        "MAX_CONTENT_LENGTH",
        "THREADS",
        "BATCH_MAX_SIZE",
        "MAX_CONCURRENT_DECODES",
        "DECODE_MEMORY_MB",
    ):
        value = app.config[key]
        if value is None and key == "THREADS":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} (env {ENV_PREFIX}_{key}) must be a positive integer, got {value!r}")
    timeout = app.config["DECODE_TIMEOUT_S"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ValueError(
            f"DECODE_TIMEOUT_S (env {ENV_PREFIX}_DECODE_TIMEOUT_S) must be a number of seconds > 0, got {timeout!r}"
        )
    for key, upper in (("CONFIDENCE_THRESHOLD", 1.0), ("SUBJECT_THRESHOLD", 1.0), ("NOVELTY_THRESHOLD", math.inf)):
        threshold = app.config[key]
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < upper + 1e-9
        ):
            bounds = "[0, 1]" if upper == 1.0 else "a finite number >= 0"
            raise ValueError(f"{key} (env {ENV_PREFIX}_{key}) must be {bounds}, got {threshold!r}")


def init_model(app: Flask) -> None:
    """Load the model into ``app`` (:func:`app.inference.init_app`).

    Raises:
        model.checkpoint.CheckpointError: the checkpoint at MODEL_PATH is missing or invalid; the message says how
            to point the app at another one.
        ValueError, model.predictor.BackendUnavailableError: see :func:`app.inference.init_app`.
    """
    try:
        inference.init_app(app)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc}. Set the environment variable {ENV_PREFIX}_MODEL_PATH to a checkpoint written by train.py."
        ) from exc


def register_blueprints(app: Flask) -> None:
    """Mount the HTML page (``/``) and the JSON API (``/api/...``, ``/healthz``), and start each request's deadline
    for the decoding they do (``REQUEST_DEADLINE_S``, see :func:`app.uploads.start_deadline`)."""
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
