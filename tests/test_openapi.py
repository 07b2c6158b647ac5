"""The OpenAPI document at ``/api/openapi.json``: a valid OpenAPI 3.1 description whose schemas match live answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from model.decoding import SUPPORTED_FORMATS
from model.results import (
    VERDICTS,
    BatchResponse,
    ClassScoreResult,
    IndexedPrediction,
    ModelSummary,
    PredictionResponse,
    PredictionResult,
    response_schemas,
)
from tests.helpers import COLOURS, answer_with_verdicts, assert_matches, make_app, post_numbered_images

CLASS_NAMES = sorted(COLOURS)


@pytest.fixture(scope="module")
def document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/api/openapi.json")
    assert response.status_code == 200 and response.is_json
    return response.get_json()


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises OpenAPIValidationError with the path of the problem
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_document_is_built_from_the_real_limits(tiny_checkpoint: Path) -> None:
    config = {"MAX_IMAGES_PER_REQUEST": 4, "MAX_CONTENT_LENGTH": 12345, "MAX_IMAGE_PIXELS": 2_000_000, "TOP_K": 2}
    app = make_app(MODEL_PATH=str(tiny_checkpoint), **config)
    doc = app.test_client().get("/api/openapi.json").get_json()
    operation = doc["paths"]["/api/predict"]["post"]
    body = operation["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["image"]["maxItems"] == 4
    assert body["schema"]["properties"]["top_k"] == {"type": "integer", "minimum": 1, "maximum": 3, "default": 2}
    assert body["encoding"]["image"]["contentType"].count("image/") == len(SUPPORTED_FORMATS)
    assert doc["components"]["schemas"]["BatchResponse"]["properties"]["predictions"]["maxItems"] == 4
    assert doc["components"]["schemas"]["ClassScore"]["properties"]["label"]["enum"] == CLASS_NAMES
    assert "12345 bytes" in operation["responses"]["413"]["description"]
    assert "2 megapixels" in operation["responses"]["413"]["description"]
    assert set(doc["paths"]) == {"/api/predict", "/healthz", "/api/openapi.json"} | {
        "/api/corrections" + tail for tail in ("", "/{id}", "/{id}/photo", "/{id}/accept", "/{id}/reject")
    }


def test_one_image_answer_matches_the_document(
    app: Flask, document: dict[str, Any], jpeg_bytes: Callable[..., bytes]
) -> None:
    for form in ({}, {"top_k": "1"}):
        response = post_numbered_images(app.test_client(), [jpeg_bytes()], **form)
        assert response.status_code == 200
        assert_matches(document, "/api/predict", "post", 200, response.get_json())
        assert "label" in response.get_json()  # the one-image shape, not the batch one


def test_several_images_answer_matches_the_document(
    app: Flask, document: dict[str, Any], jpeg_bytes: Callable[..., bytes]
) -> None:
    response = post_numbered_images(app.test_client(), [jpeg_bytes(colour) for colour in COLOURS.values()], top_k="2")
    assert response.status_code == 200
    assert_matches(document, "/api/predict", "post", 200, response.get_json())
    assert [p["index"] for p in response.get_json()["predictions"]] == [0, 1, 2]


def test_answers_have_exactly_the_keys_of_the_declared_result(
    app: Flask, document: dict[str, Any], jpeg_bytes: Callable[..., bytes]
) -> None:
    """The JSON of both answers is made from the pydantic models of model.results: exactly their fields (the model
    summary: exactly Predictor.summary()'s keys, all declared), and the document's schemas are theirs."""
    one = post_numbered_images(app.test_client(), [jpeg_bytes()]).get_json()
    several = post_numbered_images(app.test_client(), [jpeg_bytes(), jpeg_bytes()], top_k="2").get_json()
    summary_keys = set(app.extensions["predictor"].summary())
    assert set(one) == set(PredictionResponse.model_fields)
    assert set(one["top_k"][0]) == set(ClassScoreResult.model_fields)
    assert set(several) == set(BatchResponse.model_fields)
    assert all(set(p) == set(IndexedPrediction.model_fields) for p in several["predictions"])
    assert set(one["model"]) == set(several["model"]) == summary_keys == set(ModelSummary.model_fields)
    assert (
        set(one) - {"model"}
        == set(PredictionResult.model_fields)
        == set(document["components"]["schemas"]["Prediction"]["properties"])
    )
    for name, schema in response_schemas().items():
        served = document["components"]["schemas"][name]
        assert set(served["properties"]) == set(schema["properties"])  # (the served JSON has its keys sorted)
        assert served.get("required") == schema.get("required")


def test_verdicts_are_documented(document: dict[str, Any]) -> None:
    prediction = document["components"]["schemas"]["Prediction"]
    verdict = prediction["properties"]["verdict"]
    assert verdict["enum"] == list(VERDICTS)
    assert all(f"`{name}`:" in verdict["description"] for name in VERDICTS)
    assert {"verdict", "subject_score", "novelty", "confident"} <= set(prediction["required"])
    assert "verdict" in prediction["properties"]["confident"]["description"]


@pytest.mark.parametrize(
    "thresholds",
    [{"not_sure": 0.4, "unknown_species": 55.5, "not_a_fish": 0.3}, {"not_sure": 0.4, "unknown_species": None}],
)
def test_every_verdict_matches_the_document(
    app: Flask,
    document: dict[str, Any],
    jpeg_bytes: Callable[..., bytes],
    monkeypatch: pytest.MonkeyPatch,
    thresholds: dict[str, Any],
) -> None:
    """Each verdict, one image at a time and all in one batch, with a model summary that records its subject and
    its verdict thresholds (None for a check the model lacks)."""
    answer_with_verdicts(monkeypatch, app, list(VERDICTS), subject="fish", verdict_thresholds=thresholds)
    client = app.test_client()
    for verdict in VERDICTS:
        body = post_numbered_images(client, [jpeg_bytes()]).get_json()
        assert body["verdict"] == verdict
        assert_matches(document, "/api/predict", "post", 200, body)
    body = post_numbered_images(client, [jpeg_bytes()] * len(VERDICTS)).get_json()
    assert [p["verdict"] for p in body["predictions"]] == list(VERDICTS)
    assert body["model"]["subject"] == "fish"
    assert_matches(document, "/api/predict", "post", 200, body)


@pytest.mark.parametrize(
    ("files", "status"),
    [([b"plain text"], 415), ([b""], 400), ([b"\xff\xd8\xff\xe0broken"], 400), ([b"ok", b"plain text"], 415)],
    ids=["text", "empty", "corrupt-jpeg", "second-of-two"],
)
def test_error_answers_match_the_document(
    app: Flask, document: dict[str, Any], jpeg_bytes: Callable[..., bytes], files: list[bytes], status: int
) -> None:
    files = [jpeg_bytes() if f == b"ok" else f for f in files]
    response = post_numbered_images(app.test_client(), files)
    assert response.status_code == status
    assert_matches(document, "/api/predict", "post", status, response.get_json())


def test_too_many_images_and_too_large_bodies_match_the_document(
    tiny_checkpoint: Path, document: dict[str, Any], jpeg_bytes: Callable[..., bytes]
) -> None:
    app = make_app(MODEL_PATH=str(tiny_checkpoint), MAX_IMAGES_PER_REQUEST=2, MAX_CONTENT_LENGTH=4096)
    for response in (
        post_numbered_images(app.test_client(), [jpeg_bytes()] * 3),
        post_numbered_images(app.test_client(), [b"x" * 5000]),
    ):
        assert response.status_code == 413
        assert_matches(document, "/api/predict", "post", 413, response.get_json())


def test_healthz_matches_the_document(app: Flask, document: dict[str, Any]) -> None:
    response = app.test_client().get("/healthz")
    assert_matches(document, "/healthz", "get", 200, response.get_json())
