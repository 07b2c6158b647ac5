"""JSON API: ``POST /api/predict`` classifies one or several uploaded images, ``GET /healthz`` reports the loaded
model, ``GET /api/openapi.json`` describes both (OpenAPI 3.1, see :mod:`app.openapi`).

One ``image`` field gives one prediction object (``{"label", "confidence", ..., "model"}``); several give
``{"predictions": [{..., "index": i}, ...], "model"}``, in the order of the fields (both declared in
:mod:`model.results`). All images of a request are
classified in one batch; if any of them cannot be, the whole request fails with the error of the first bad one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from app.inference import get_batcher, get_predictor
from app.openapi import openapi_document
from app.uploads import CROP_FIELD, EXPLAIN_FIELD, check_uploads, decode_uploads, explained, form_limit_message
from model.errors import ImageError
from model.results import api_answer

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__)


@bp.post("/api/predict")
def predict() -> Response:
    """Classify the images in the multipart field ``image`` (repeat the field for several); optional ``top_k``
    as a form field or query parameter, ``crop`` (``x,y,w,h``, fractions of the upright photo) per image, and
    ``explain=true`` (one image) for the heat map of where the model looked.

    Returns:
        :func:`model.results.api_answer`: one image gives a ``PredictionResponse`` (the prediction plus
        ``"model"``, ``Predictor.summary()``), several a ``BatchResponse`` (``{"predictions": [... + "index"],
        "model"}``, ``index`` being the position, from 0, of the file among the ``image`` fields). Errors are
        ``{"error": message}`` (plus ``"index"`` for a bad file among several) with status 400, 413, 415 or 503.
    """
    values = request.values
    uploads = check_uploads(request.files, values.get("top_k"), values.getlist(CROP_FIELD), values.get(EXPLAIN_FIELD))
    images = decode_uploads(uploads.files, uploads.crops)
    predictions = get_batcher().predict(images, top_k=uploads.top_k)
    predictions = [dataclasses.replace(p, crop=crop) for p, crop in zip(predictions, uploads.crops, strict=True)]
    if uploads.explain:  # one image (check_uploads): where the model looked for its answer
        predictions = [explained(predictions[0], images[0])]
    return jsonify(api_answer(predictions, get_predictor().summary()))


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
