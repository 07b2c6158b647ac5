"""JSON API: ``POST /api/predict`` classifies an uploaded image, ``GET /healthz`` reports the loaded model."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from werkzeug.wrappers import Response

from app import get_predictor
from app.images import ImageError, decode_image

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__)


def parse_top_k(value: str | None, default: int, num_classes: int) -> int:
    """The ``top_k`` request parameter as an int in ``[1, num_classes]``.

    Args:
        value: the raw parameter, or None when absent (then ``default``, clipped to ``num_classes``, is used).
        default: the configured TOP_K.
        num_classes: how many classes the model has.

    Raises:
        ImageError: 400 when ``value`` is not an integer in range.
    """
    if value is None or value.strip() == "":
        return max(1, min(default, num_classes))
    try:
        top_k = int(value)
    except ValueError:
        top_k = 0
    if not 1 <= top_k <= num_classes:
        raise ImageError(f"top_k must be an integer from 1 to {num_classes}, got {value[:20]!r}", 400)
    return top_k


@bp.post("/api/predict")
def predict() -> Response:
    """Classify the image in multipart field ``image``; optional ``top_k`` as a form field or query parameter.

    Returns ``{"label", "confidence", "top_k": [{"label", "confidence"}, ...], "model": {...}}`` with
    confidences (softmax probabilities) in [0, 1], most probable first; errors are ``{"error": message}``.
    """
    predictor = get_predictor()
    top_k = parse_top_k(request.values.get("top_k"), current_app.config["TOP_K"], len(predictor.class_names))
    image = decode_image(
        request.files.get("image"),
        max_pixels=current_app.config["MAX_IMAGE_PIXELS"],
        resize_short_side=predictor.preprocessing.resize_size,
    )
    prediction = predictor.predict([image], top_k=top_k)[0]
    return jsonify({**prediction.to_dict(), "model": predictor.describe()})


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness and model check: ``{"status": "ok", "model": arch, "checkpoint": file name, "classes": [...]}``."""
    info = get_predictor().describe()
    return jsonify(status="ok", model=info["arch"], checkpoint=info.get("checkpoint"), classes=info["classes"])


@bp.errorhandler(ImageError)
def image_error(error: ImageError) -> tuple[Response, int]:
    """``{"error": message}`` with the error's status (400, 413 or 415)."""
    return jsonify(error=error.message), error.status
