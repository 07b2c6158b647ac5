"""The corrections' part of the OpenAPI 3.1 document (:mod:`app.openapi` adds it): the paths of
:mod:`app.corrections.routes`' API, their schemas and the reviewers' bearer token, built from the app's caps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.corrections.labels import MAX_LABEL_LENGTH, MAX_LIST, NOT_A_FISH, UNKNOWN_SPECIES
from app.corrections.models import LABEL_KINDS, STATUSES

#: Name of the reviewers' security scheme.
BEARER = "reviewerToken"

_NULLABLE_STRING = {"type": ["string", "null"]}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("Error"))


def schemas() -> dict[str, Any]:
    """The component schemas of the corrections' answers: ``Correction``, ``CorrectionCreated``,
    ``CorrectionList``."""
    return {
        "Correction": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "created_at": {"type": "string", "format": "date-time"},
                "status": {"enum": list(STATUSES)},
                "label": {"type": "string", "minLength": 1, "maxLength": MAX_LABEL_LENGTH},
                "label_kind": {"enum": list(LABEL_KINDS)},
                "predicted_label": _NULLABLE_STRING,
                "crop": {**_NULLABLE_STRING, "description": "x,y,w,h of the upright photo, or null: the whole photo"},
                "photo_sha256": {
                    "type": ["string", "null"],
                    "pattern": "^[0-9a-f]{64}$",
                    "description": "the kept photo's SHA-256, or null: the user did not consent to keeping it",
                },
                "model_id": {"type": "string"},
                "reviewed_by": {**_NULLABLE_STRING, "description": "the last reviewer's name"},
                "reviewed_at": {"type": ["string", "null"], "format": "date-time"},
            },
            "required": [
                "id",
                "created_at",
                "status",
                "label",
                "label_kind",
                "predicted_label",
                "crop",
                "photo_sha256",
                "model_id",
                "reviewed_by",
                "reviewed_at",
            ],
        },
        "CorrectionCreated": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 1}, "status": {"const": "pending"}},
            "required": ["id", "status"],
        },
        "CorrectionList": {
            "type": "object",
            "properties": {
                "corrections": {"type": "array", "items": _ref("Correction"), "maxItems": MAX_LIST},
                "pending": {"type": "integer", "minimum": 0, "description": "how many wait for review in all"},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIST},
                "offset": {"type": "integer", "minimum": 0},
            },
            "required": ["corrections", "pending", "limit", "offset"],
        },
    }


def security_schemes() -> dict[str, Any]:
    """The reviewers' bearer token (``fish-admin add-reviewer NAME`` prints it)."""
    return {BEARER: {"type": "http", "scheme": "bearer", "description": "a reviewer's token: fish-admin add-reviewer"}}


def _submit_operation(config: Mapping[str, Any]) -> dict[str, Any]:
    """``POST /api/corrections``: its multipart body and answers, with the caps from ``config``."""
    fields = {
        "image": {"type": "string", "contentMediaType": "application/octet-stream", "description": "one photo"},
        "label": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_LABEL_LENGTH,
            "description": f"what the photo shows: one of the model's species (class or scientific name), "
            f"`{UNKNOWN_SPECIES}` (a fish, but none of them), `{NOT_A_FISH}`, or another species' scientific name "
            "(genus and species, e.g. `Pterois volitans`)",
        },
        "crop": {"type": "string", "description": "optional: x,y,w,h of the upright photo, as for /api/predict"},
        "predicted_label": {"type": "string", "maxLength": MAX_LABEL_LENGTH, "description": "the model's answer"},
        "consent": {
            "type": "string",
            "description": "`true` keeps the photo for the reviewers, re-encoded without EXIF (no location); "
            "anything else keeps none",
        },
    }
    return {
        "operationId": "submitCorrection",
        "summary": "Tell the model its answer for a photo was wrong (or right)",
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": fields, "required": ["image", "label"]}
                }
            },
        },
        "responses": {
            "201": {
                **_json("stored, waiting for review", _ref("CorrectionCreated")),
                "headers": {"Location": {"schema": {"type": "string"}, "description": "the correction's URL"}},
            },
            "400": _error("no image, several, an empty file, a bad label, crop or predicted_label"),
            "413": _error("the body or the image is too large (as /api/predict)"),
            "415": _error("not a supported image"),
            "429": {
                **_error(f"more than {config['CORRECTIONS_PER_MINUTE']} corrections a minute from one address"),
                "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}},
            },
            "503": _error("busy decoding, or the database is not available"),
            "507": _error(
                f"{config['CORRECTIONS_MAX_PENDING']} corrections wait for review, or the kept photos would pass "
                f"{config['CORRECTIONS_MAX_PHOTO_MB']:g} MiB"
            ),
        },
    }


def _reviewer_operation(operation_id: str, summary: str, ok: dict[str, Any], *, by_id: bool = True) -> dict[str, Any]:
    """A reviewers-only operation: bearer token, ``ok`` for its success answers, 401 (and 404 ``by_id``)."""
    responses = {**ok, "401": _error("no reviewer token, or an unknown one")}
    if by_id:
        responses["404"] = _error("no such correction (or no photo kept)")
    operation = {"operationId": operation_id, "summary": summary, "security": [{BEARER: []}], "responses": responses}
    if by_id:
        operation["parameters"] = [_ID]
    return operation


def paths(config: Mapping[str, Any]) -> dict[str, Any]:
    """The corrections' paths of the document."""
    correction = {"200": _json("the correction", _ref("Correction"))}
    listing = _reviewer_operation(
        "listCorrections",
        "The pending corrections, oldest first (reviewers)",
        {"200": _json("the pending corrections", _ref("CorrectionList")), "400": _error("a bad query parameter")},
        by_id=False,
    )
    listing["parameters"] = [
        {"name": "status", "in": "query", "schema": {"const": "pending"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    ]
    photo = {"200": {"description": "the kept photo", "content": {"image/jpeg": {"schema": {"type": "string"}}}}}
    review = {
        action: {
            "post": _reviewer_operation(
                f"{action}Correction", f"{action.capitalize()} a correction (reviewers)", correction
            )
        }
        for action in ("accept", "reject")
    }
    return {
        "/api/corrections": {"post": _submit_operation(config), "get": listing},
        "/api/corrections/{id}": {
            "get": _reviewer_operation("getCorrection", "One correction (reviewers)", correction),
            "delete": _reviewer_operation(
                "deleteCorrection", "Delete a correction and its photo (reviewers)", {"204": {"description": "deleted"}}
            ),
        },
        "/api/corrections/{id}/photo": {"get": _reviewer_operation("getCorrectionPhoto", "Its kept photo", photo)},
        "/api/corrections/{id}/accept": review["accept"],
        "/api/corrections/{id}/reject": review["reject"],
    }
