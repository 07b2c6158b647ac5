"""The OpenAPI 3.1 description of the JSON API, served at ``GET /api/openapi.json``.

A plain dict built from the running app's settings (body size, pixel and image-count limits, default ``top_k``),
the decoder's supported formats and the loaded model's classes, so the document never drifts from what the
server enforces. Its JSON Schemas (draft 2020-12, as OpenAPI 3.1 uses) describe every response body: those of
the predictions come from the pydantic models of :mod:`model.results` (``model_json_schema``), which also make
the answers; ``tests/test_openapi.py`` validates live responses against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

from app.corrections import openapi as corrections
from app.uploads import default_top_k
from model.backends import BACKENDS, SERVED_PRECISIONS
from model.decoding import SUPPORTED_FORMATS, SUPPORTED_FORMATS_TEXT
from model.predictor import Predictor
from model.results import response_schemas

#: Version of the API described (not of the app): 2 added several images per request and the OpenAPI document.
API_VERSION = "2.0.0"

_NULLABLE_STRING = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def supported_media_types() -> list[str]:
    """MIME types of :data:`model.decoding.SUPPORTED_FORMATS`, from Pillow's registry (``image/jpeg``, ...)."""
    Image.init()
    return [Image.MIME.get(fmt, f"image/{fmt.lower()}") for fmt in SUPPORTED_FORMATS]


def _schemas(config: Mapping[str, Any], predictor: Predictor) -> dict[str, Any]:
    """The component schemas: the answers' as :mod:`model.results` declares them, with this app's class names
    (``label``), class count (``top_k``), image-count limit and inference settings filled in, plus the error
    and health answers."""
    classes = list(predictor.class_names)
    max_images = config["MAX_IMAGES_PER_REQUEST"]
    schemas = response_schemas(ref_template="#/components/schemas/{model}")
    for schema in schemas.values():
        properties = schema["properties"]
        if "label" in properties:
            properties["label"]["enum"] = classes
        if "top_k" in properties:
            properties["top_k"]["maxItems"] = len(classes)
    schemas["IndexedPrediction"]["properties"]["index"]["maximum"] = max_images - 1
    schemas["BatchResponse"]["properties"]["predictions"]["maxItems"] = max_images
    schemas["ModelSummary"]["properties"]["precision"]["enum"] = list(SERVED_PRECISIONS)
    schemas["ModelSummary"]["properties"]["backend"]["enum"] = list(BACKENDS)
    return {
        **schemas,
        "Error": {
            "type": "object",
            "properties": {
                "error": {"type": "string", "minLength": 1, "description": "what is wrong, for people"},
                "index": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "with several files: position (from 0) of the first bad one; the message "
                    "names it as 'image N of M' counting from 1",
                },
            },
            "required": ["error"],
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {"const": "ok"},
                "model": {"type": "string", "description": "architecture"},
                "checkpoint": _NULLABLE_STRING,
                "classes": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            },
            "required": ["status", "model", "checkpoint", "classes"],
        },
    }


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _info(config: Mapping[str, Any]) -> dict[str, Any]:
    """The document's ``info`` object: title, API version, and a description stating the request limits."""
    max_images = config["MAX_IMAGES_PER_REQUEST"]
    max_bytes = config["MAX_CONTENT_LENGTH"]
    max_megapixels = f"{config['MAX_IMAGE_PIXELS'] / 1e6:g}"
    return {
        "title": "Reef fish identifier API",
        "version": API_VERSION,
        "summary": "Identify the species of reef fish in photos.",
        "description": (
            f"Upload one or several photos ({SUPPORTED_FORMATS_TEXT}) and get the most likely species with "
            f"their softmax probabilities. Limits: {max_bytes} bytes per request body, {max_images} images "
            f'per request, {max_megapixels} megapixels per image. Errors are JSON `{{"error": message}}` '
            "with status 400, 413 or 415; bad input never gets a 500."
        ),
    }


def _predict_request_body(max_images: int, top_k: dict[str, Any]) -> dict[str, Any]:
    """The multipart request body of ``POST /api/predict``: one to ``max_images`` ``image`` fields, in the
    decoder's media types, the optional ``top_k`` form field (``top_k`` is its schema) and ``crop`` fields."""
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "contentMediaType": "application/octet-stream"},
                            "minItems": 1,
                            "maxItems": max_images,
                            "description": f"the image file(s): {SUPPORTED_FORMATS_TEXT}",
                        },
                        "top_k": top_k,
                        "crop": {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "pattern": r"^(\s*[-+0-9.eE]+\s*,){3}\s*[-+0-9.eE]+\s*$|^\s*$",
                            },
                            "maxItems": max_images,
                            "description": "optional: the part of each photo to classify, 'x,y,w,h' as fractions "
                            "(0 to 1) of the upright (EXIF-rotated) photo's width and height, the box inside it; one "
                            "per `image` field in their order (an empty one for a whole photo), or one for one "
                            "image. Echoed as `crop` in the prediction",
                        },
                        "explain": {
                            "type": "string",
                            "enum": ["true", "false", "1", "0", "on", "off", "yes", "no"],
                            "description": "optional (also as a query parameter): `true` adds `explanation`, where "
                            "the model looked, for one image; a request with several images and `explain=true` is "
                            "refused (400): one explanation per request",
                        },
                    },
                    "required": ["image"],
                },
                "encoding": {"image": {"contentType": ", ".join(supported_media_types())}},
            }
        },
    }


def _predict_responses(config: Mapping[str, Any]) -> dict[str, Any]:
    """The answers of ``POST /api/predict`` by status code: the prediction(s), and each error with the limits
    from ``config`` that cause it."""
    max_images = config["MAX_IMAGES_PER_REQUEST"]
    max_bytes = config["MAX_CONTENT_LENGTH"]
    max_megapixels = f"{config['MAX_IMAGE_PIXELS'] / 1e6:g}"
    return {
        "200": {
            "description": "the prediction(s)",
            "content": {"application/json": {"schema": {"oneOf": [_ref("PredictionResponse"), _ref("BatchResponse")]}}},
        },
        "400": _error_response(
            "no `image` field, an empty file, a truncated or corrupt image (a JPEG with bytes its "
            "structure cannot account for included), a bad `top_k` or `crop` (malformed, empty, outside the photo, "
            "too narrow, or not one per image), `explain=true` with several images or another `explain` value, a "
            "request body that cannot be read"
        ),
        "413": _error_response(
            f"a body over {max_bytes} bytes, more than {max_images} images, too many form fields, an "
            f"image over {max_megapixels} megapixels (decompression bomb), too elongated to classify "
            "or too costly to decode (too many JPEG scans or segments, a large RLE BMP, a decode past "
            f"its deadline of {config['DECODE_TIMEOUT_S']:g} s or its memory limit)"
        ),
        "415": _error_response(f"a file that is not a {SUPPORTED_FORMATS_TEXT} image"),
        "503": _error_response(
            "the worker is busy decoding other photos (MAX_CONCURRENT_DECODES), or the request passed "
            "its deadline (REQUEST_DEADLINE_S): try again in a moment"
        ),
    }


def _predict_operation(config: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """The ``POST /api/predict`` operation: its ``top_k`` parameter (1 to ``num_classes``, default from
    ``config``), request body and responses."""
    top_k = {"type": "integer", "minimum": 1, "maximum": num_classes, "default": default_top_k(config, num_classes)}
    return {
        "operationId": "predict",
        "summary": "Classify one or several images",
        "description": (
            "Send each image as a multipart field named `image` (repeat the field for several). "
            "One image gives a `PredictionResponse`; several give a `BatchResponse` whose "
            "`predictions` follow the order of the fields. All images of a request are classified "
            "together; if any cannot be, the request fails with the error of the first bad one "
            "(`index` names it). The format is detected from the bytes: file names and declared "
            "content types are ignored. Animated images give their first frame; EXIF orientation "
            "is applied; transparency is composited on white."
        ),
        "parameters": [
            {
                "name": "top_k",
                "in": "query",
                "required": False,
                "description": "classes listed per image (also accepted as a form field)",
                "schema": top_k,
            }
        ],
        "requestBody": _predict_request_body(config["MAX_IMAGES_PER_REQUEST"], top_k),
        "responses": _predict_responses(config),
    }


def _get_operation(operation_id: str, summary: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A ``GET`` operation with one JSON answer (status 200) of the given ``schema``."""
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "responses": {"200": {"description": description, "content": {"application/json": {"schema": schema}}}},
        }
    }


def openapi_document(config: Mapping[str, Any], predictor: Predictor) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this app.

    Args:
        config: the app's config (``MAX_CONTENT_LENGTH`` in bytes, ``MAX_IMAGE_PIXELS``,
            ``MAX_IMAGES_PER_REQUEST``, ``TOP_K``).
        predictor: the loaded model (classes, for the ``label`` enum and the ``top_k`` range).

    Returns:
        A JSON-ready dict.
    """
    return {
        "openapi": "3.1.0",
        "info": _info(config),
        "paths": {
            "/api/predict": {"post": _predict_operation(config, len(predictor.class_names))},
            "/healthz": _get_operation(
                "health", "Liveness and the loaded model", "the app is up and its model is loaded", _ref("Health")
            ),
            "/api/openapi.json": _get_operation(
                "openapi", "This document", "the OpenAPI 3.1 description of the API", {"type": "object"}
            ),
            **corrections.paths(config),
        },
        "components": {
            "schemas": {**_schemas(config, predictor), **corrections.schemas()},
            "securitySchemes": corrections.security_schemes(),
        },
    }
