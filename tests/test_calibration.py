"""Calibration: expected calibration error, temperature scaling, and the temperature a checkpoint is served with."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flask.testing import FlaskClient
from PIL import Image

from model.network import build_model
from model.predictor import Predictor
from model.transforms import Preprocessing
from tests.helpers import COLOURS, TINY_ARCH, make_app
from training.data import scan_image_folder
from training.evaluation import evaluate_predictor
from training.metrics import (
    TEMPERATURE_RANGE,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from training.reports import format_report, report

CLASS_NAMES = sorted(COLOURS)


def sampled_targets(logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One class per row drawn from ``softmax(logits)``: targets for which those probabilities are calibrated."""
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)


def random_logits(n: int, classes: int = 5, scale: float = 2.0, seed: int = 0) -> torch.Tensor:
    """float32 ``(n, classes)`` logits, normal with standard deviation ``scale``."""
    return torch.randn(n, classes, generator=torch.Generator().manual_seed(seed)) * scale


# --- expected calibration error ----------------------------------------------------------------------------------


def test_ece_of_a_small_example_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [0.25, 0.75]])
    targets = np.array([0, 1, 1, 1])  # right, wrong (0.55), right (0.7), right (0.75)
    # 5 bins: (0.4, 0.6] holds 0.55 (accuracy 0); (0.6, 0.8] holds 0.7, 0.75 (accuracy 1); (0.8, 1] holds 0.9
    expected = 0.25 * 0.55 + 0.5 * (1 - 0.725) + 0.25 * (1 - 0.9)
    assert expected_calibration_error(probs, targets, n_bins=5) == pytest.approx(expected)
    assert expected == pytest.approx(0.3)
    # one bin: |accuracy - mean confidence| = |0.75 - 0.725|
    assert expected_calibration_error(probs, targets, n_bins=1) == pytest.approx(0.025)
    # bins are closed on the right: 0.5 is in (0, 0.5] with 2 bins, not with 0.9 in (0.5, 1]
    edge = expected_calibration_error([[0.5, 0.5], [0.9, 0.1]], [0, 1], n_bins=2)
    assert edge == pytest.approx(0.5 * 0.5 + 0.5 * 0.9)
    # tensors are accepted too
    assert expected_calibration_error(torch.tensor(probs), torch.tensor(targets), n_bins=5) == pytest.approx(0.3)


def test_ece_is_near_zero_when_calibrated_and_large_when_over_confident() -> None:
    logits = random_logits(20_000)
    targets = sampled_targets(logits)
    calibrated = expected_calibration_error(torch.softmax(logits, dim=1), targets)
    over_confident = expected_calibration_error(torch.softmax(3 * logits, dim=1), targets)
    assert calibrated < 0.02
    assert over_confident > 0.15


def test_ece_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError):
        expected_calibration_error(np.full((4, 2), 0.5), np.zeros(3, dtype=int))
    with pytest.raises(ValueError):
        expected_calibration_error(np.full((4, 2), 0.5), np.zeros(4, dtype=int), n_bins=0)


# --- temperature scaling -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("true_temperature", [3.0, 0.4])
def test_fit_temperature_recovers_a_known_temperature(true_temperature: float) -> None:
    logits = random_logits(4000)
    targets = sampled_targets(logits)
    fitted = fit_temperature(logits * true_temperature, targets)
    assert fitted == pytest.approx(true_temperature, rel=0.06)
    # it is the minimum of the NLL: nudging it either way is worse
    nll = negative_log_likelihood(logits * true_temperature, targets, fitted)
    assert nll < negative_log_likelihood(logits * true_temperature, targets, fitted * 1.05)
    assert nll < negative_log_likelihood(logits * true_temperature, targets, fitted / 1.05)
    assert fit_temperature(logits * true_temperature, targets) == fitted  # deterministic


def test_fit_temperature_improves_calibration_and_keeps_predictions() -> None:
    logits = random_logits(3000, seed=1) * 3  # over-confident
    targets = sampled_targets(logits / 3, seed=1)
    temperature = fit_temperature(logits, targets)
    before, after = torch.softmax(logits, dim=1), torch.softmax(logits / temperature, dim=1)
    assert expected_calibration_error(after, targets) < expected_calibration_error(before, targets) / 3
    assert negative_log_likelihood(logits, targets, temperature) < negative_log_likelihood(logits, targets)
    assert torch.equal(before.argmax(1), after.argmax(1))


def test_fit_temperature_is_clamped_and_guards_against_no_data() -> None:
    logits = random_logits(2000)
    targets = sampled_targets(logits)
    assert fit_temperature(logits * 0.01, targets) == TEMPERATURE_RANGE[0]  # the optimum, 0.01, is below the range
    assert fit_temperature(logits * 100, targets) == TEMPERATURE_RANGE[1]
    assert fit_temperature(torch.zeros(6, 3), torch.zeros(6, dtype=torch.long)) == pytest.approx(1.0)  # no signal
    with pytest.raises(ValueError, match="N > 0"):
        fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError):
        fit_temperature(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


def test_format_report_shows_ece_before_and_after() -> None:
    metrics = {
        "per_class": {"a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}},
        "macro_precision": 1.0,
        "macro_recall": 1.0,
        "macro_f1": 1.0,
        "accuracy": 1.0,
    }
    assert "ECE" not in format_report(metrics)  # older metrics dicts still format
    plain = format_report({**metrics, "ece": 0.0312, "nll": 0.41, "temperature": 1.0})
    assert "ECE 0.0312" in plain and "->" not in plain
    fitted = format_report(
        {**metrics, "ece": 0.0123, "nll": 0.3, "temperature": 1.8, "ece_before": 0.0987, "nll_before": 0.5}
    )
    assert "ECE 0.0987 -> 0.0123" in fitted and "temperature 1.800" in fitted


# --- the predictor -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_checkpoint(checkpoint_factory: Callable[..., Path]) -> Path:
    """The tiny checkpoint with a fitted temperature (2.5) and calibration metrics, as ``write_release`` makes."""
    return checkpoint_factory(
        "warm.pt",
        serving={"confidence_threshold": 0.4, "coverage": 0.8, "selective_accuracy": 0.9, "temperature": 2.5},
        metrics={
            "val_accuracy": 0.9,
            "val_macro_f1": 0.9,
            "val_ece": 0.0234,
            "val_ece_before": 0.1567,
            "val_nll": 0.3,
            "temperature": 2.5,
        },
    )


def test_predictor_serves_the_checkpoint_temperature(tiny_checkpoint: Path, warm_checkpoint: Path) -> None:
    plain = Predictor.from_checkpoint(tiny_checkpoint)  # written before temperature scaling: no key
    warm = Predictor.from_checkpoint(warm_checkpoint)
    assert plain.temperature == 1.0 and warm.temperature == 2.5
    assert plain.summary()["temperature"] == 1.0 and warm.summary()["temperature"] == 2.5
    assert warm.describe()["temperature"] == 2.5 and warm.describe()["card"].serving.temperature == 2.5
    assert plain.describe()["card"].serving.temperature is None  # the page says nothing of a temperature

    batch = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = plain.logits(batch)
    assert torch.allclose(warm.logits(batch), logits)  # raw logits are not scaled
    p1, p25 = plain.probabilities(batch), warm.probabilities(batch)
    assert torch.allclose(p25, torch.softmax(logits / 2.5, dim=1), atol=1e-6)
    assert torch.allclose(p25.sum(1), torch.ones(8))
    assert torch.equal(p1.argmax(1), p25.argmax(1))
    assert (p25.max(1).values < p1.max(1).values).all()  # flatter
    entropy = lambda p: -(p * p.log()).sum(1)  # noqa: E731
    assert (entropy(p25) > entropy(p1)).all()
    # the predictions carry the calibrated confidences
    predictions = warm.predict_batch(batch, top_k=3)
    assert [p.confidence for p in predictions] == pytest.approx(p25.max(1).values.tolist(), abs=1e-6)


def test_predictor_temperature_two_is_flatter_than_one(tiny_checkpoint: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    batch = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sharp = predictor.probabilities(batch)
    predictor.temperature = 2.0
    flat = predictor.probabilities(batch)
    assert torch.equal(sharp.argmax(1), flat.argmax(1))
    assert (flat.max(1).values < sharp.max(1).values).all()
    assert (flat.min(1).values > sharp.min(1).values).all()


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf])
def test_predictor_refuses_a_bad_temperature(temperature: float) -> None:
    model = build_model(TINY_ARCH, num_classes=len(CLASS_NAMES))
    with pytest.raises(ValueError, match="temperature"):
        Predictor(model, CLASS_NAMES, Preprocessing.for_image_size(32), temperature=temperature)
    predictor = Predictor(model, CLASS_NAMES, Preprocessing.for_image_size(32), temperature=0.5)
    with pytest.raises(ValueError, match="temperature"):
        predictor.temperature = temperature
    assert predictor.temperature == 0.5


@pytest.mark.slow  # converts the model for OpenVINO
def test_openvino_backend_uses_the_temperature(warm_checkpoint: Path) -> None:
    pytest.importorskip("openvino", reason="optional backend: pip install openvino")
    torch_predictor = Predictor.from_checkpoint(warm_checkpoint)
    ov_predictor = Predictor.from_checkpoint(warm_checkpoint, backend="openvino")
    batch = torch.randn(3, 3, 32, 32)
    assert ov_predictor.temperature == 2.5
    assert (torch_predictor.probabilities(batch) - ov_predictor.probabilities(batch)).abs().max() < 1e-4


# --- evaluation --------------------------------------------------------------------------------------------------


def test_evaluate_predictor_fits_the_temperature(tiny_checkpoint: Path, image_folder: Path, tmp_path: Path) -> None:
    _, samples = scan_image_folder(image_folder)
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    raw = evaluate_predictor(predictor, image_folder, samples, workers=0)
    assert raw["temperature"] == 1.0 and "ece_before" not in raw
    assert 0.0 <= raw["ece"] <= 1.0 and raw["nll"] > 0

    fitted = evaluate_predictor(predictor, image_folder, samples, workers=0, fit_temperature=True)
    temperature = fitted["temperature"]
    assert predictor.temperature == temperature != 1.0
    assert fitted["ece_before"] == pytest.approx(raw["ece"]) and fitted["nll_before"] == pytest.approx(raw["nll"])
    assert fitted["nll"] <= fitted["nll_before"]
    assert fitted["confusion_matrix"] == raw["confusion_matrix"]  # the temperature never changes the class
    assert fitted["mean_confidence"] != pytest.approx(raw["mean_confidence"])  # calibrated confidences

    # the predictor now serves the fitted temperature: evaluating it again gives the same calibrated numbers
    again = evaluate_predictor(predictor, image_folder, samples, workers=0)
    assert again["temperature"] == temperature
    assert again["ece"] == pytest.approx(fitted["ece"]) and again["selective"] == fitted["selective"]

    text = report(fitted, predictor.class_names, tmp_path)
    assert f"ECE {fitted['ece_before']:.4f} -> {fitted['ece']:.4f}" in text
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert {"ece", "ece_before", "nll", "nll_before", "temperature"} <= set(written)
    assert written["temperature"] == pytest.approx(temperature)


# --- the app -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_client(warm_checkpoint: Path) -> FlaskClient:
    """The app serving :func:`warm_checkpoint` in fp32, like the predictors its answers are compared with."""
    return make_app(MODEL_PATH=str(warm_checkpoint), PRECISION="fp32").test_client()


def test_model_page_shows_temperature_and_ece(warm_client: FlaskClient) -> None:
    html = warm_client.get("/model").get_data(as_text=True)
    assert "<dt>Temperature</dt>" in html and "2.50:" in html
    assert "<dt>Calibration error</dt>" in html
    assert "2.3% with the temperature, 15.7% without it" in html


def test_model_page_of_an_uncalibrated_checkpoint_has_no_temperature(client: FlaskClient) -> None:
    html = client.get("/model").get_data(as_text=True)
    assert "<dt>Temperature</dt>" not in html and "<dt>Calibration error</dt>" not in html


def test_api_reports_the_temperature(
    warm_client: FlaskClient, tiny_checkpoint: Path, warm_checkpoint: Path, jpeg_bytes: Callable[..., bytes]
) -> None:
    image = jpeg_bytes()
    response = warm_client.post(
        "/api/predict", data={"image": (io.BytesIO(image), "fish.jpg")}, content_type="multipart/form-data"
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"]["temperature"] == 2.5
    # the confidence is the calibrated one, not the one the same photo gets at temperature 1
    decoded = Image.open(io.BytesIO(image)).convert("RGB")
    warm = Predictor.from_checkpoint(warm_checkpoint).predict([decoded])[0]
    plain = Predictor.from_checkpoint(tiny_checkpoint).predict([decoded])[0]
    assert warm.confidence < plain.confidence and warm.label == plain.label == body["label"] == "clownfish"
    # (the API decodes JPEGs at a reduced size, so its probabilities differ from these in the 4th decimal)
    assert abs(body["confidence"] - warm.confidence) < 1e-3 < abs(body["confidence"] - plain.confidence) / 5
