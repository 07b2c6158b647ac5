"""JSON API: ``POST /api/predict`` classifies one or several uploaded images, ``GET /healthz`` reports the loaded
model, ``GET /api/openapi.json`` describes both (OpenAPI 3.1, see :mod:`app.openapi`).

One ``image`` field gives one prediction object (``{"label", "confidence", ..., "model"}``); several give
``{"predictions": [{..., "index": i}, ...], "model"}``, in the order of the fields. All images of a request are
classified in one batch; if any of them cannot be, the whole request fails with the error of the first bad one.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from PIL import Image
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from app.images import ImageError
from app.inference import get_batcher, get_predictor
from app.openapi import openapi_document
from app.uploads import decode_upload, form_limit_message

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


def decode_uploads(uploads: list[FileStorage], *, max_images: int) -> list[Image.Image]:
    """Decode the files of one request, in order, stopping at the first that cannot be classified.

    Each image is shrunk right after decoding to what the model needs (see :func:`app.uploads.decode_upload`), so a
    request holds at most one full-size image in memory at a time.

    Args:
        uploads: the request's ``image`` fields.
        max_images: most files allowed in one request.

    Returns:
        One RGB image per upload.

    Raises:
        ImageError: 400 without any file; 413 with more than ``max_images`` files; otherwise the error of the
            first bad file (see :func:`app.images.decode_image`), its message prefixed with ``image N of M:``
            (N counted from 1) and its ``index`` (from 0) set when the request has several files.
    """
    if not uploads:
        raise ImageError("no image uploaded: send the file(s) in the multipart form field 'image'", 400)
    if len(uploads) > max_images:
        raise ImageError(f"too many images: {len(uploads)} in one request, the limit is {max_images}", 413)
    images = []
    for index, upload in enumerate(uploads):
        try:
            images.append(decode_upload(upload))
        except ImageError as exc:
            if len(uploads) == 1:
                raise
            raise ImageError(f"image {index + 1} of {len(uploads)}: {exc.message}", exc.status, index=index) from exc
    return images


@bp.post("/api/predict")
def predict() -> Response:
    """Classify the images in the multipart field ``image`` (repeat the field for several); optional ``top_k``
    as a form field or query parameter.

    Returns:
        One image: ``Prediction.to_dict()`` plus ``"model"`` (``Predictor.summary()``). Several images:
        ``{"predictions": [Prediction.to_dict() + {"index": i}, ...], "model": {...}}``, ``index`` being the
        position (from 0) of the file among the ``image`` fields. Errors are ``{"error": message}`` (plus
        ``"index"`` for a bad file among several) with status 400, 413 or 415.
    """
    predictor = get_predictor()
    top_k = parse_top_k(request.values.get("top_k"), current_app.config["TOP_K"], len(predictor.class_names))
    uploads = request.files.getlist("image")
    images = decode_uploads(uploads, max_images=current_app.config["MAX_IMAGES_PER_REQUEST"])
    predictions = get_batcher().predict(images, top_k=top_k)
    model = predictor.summary()
    if len(predictions) == 1:
        return jsonify({**predictions[0].to_dict(), "model": model})
    return jsonify(predictions=[{**p.to_dict(), "index": i} for i, p in enumerate(predictions)], model=model)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness and model check: ``{"status": "ok", "model": arch, "checkpoint": file name, "classes": [...]}``."""
    info = get_predictor().describe()
    return jsonify(status="ok", model=info["arch"], checkpoint=info.get("checkpoint"), classes=info["classes"])


@bp.get("/api/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API, with this app's limits and the loaded model's classes."""
    return jsonify(openapi_document(current_app.config, get_predictor()))


@bp.errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge) -> tuple[Response, int]:
    """``{"error": message}`` with 413 for a body over ``MAX_CONTENT_LENGTH``, saying what the limit is."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    message = form_limit_message() or (
        f"the request is too large: the limit is {limit} bytes ({limit / 2**20:.3g} MiB) for all its files"
    )
    return jsonify(error=message), 413


@bp.errorhandler(ImageError)
def image_error(error: ImageError) -> tuple[Response, int]:
    """``{"error": message}`` with the error's status (400, 413 or 415), plus ``"index"`` for one of several files."""
    body: dict[str, Any] = {"error": error.message}
    if error.index is not None:
        body["index"] = error.index
    return jsonify(body), error.status
