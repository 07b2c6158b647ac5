"""LP after FT: ``python -m training.refit`` replaces a run's head with a class-balanced logistic regression on
L2-normalised features (:class:`model.heads.NormalizedLinear`) and releases it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import train
from model.checkpoint import load_checkpoint
from model.heads import NormalizedLinear
from model.network import build_model, classifier_name
from model.predictor import Predictor
from tests.helpers import COLOURS, make_imagefolder, synthetic_image
from training.refit import fit_normalized_head, main


def _features(counts: list[int], dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(counts), dim, generator=gen) * 3
    targets = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    features = centres[targets] + torch.randn(len(targets), dim, generator=gen)
    # each image at its own scale: the head must not care
    return features * torch.rand(len(targets), 1, generator=gen).add(0.5) * 10, targets


def test_normalized_head_is_the_balanced_logistic_regression_on_unit_features() -> None:
    features, targets = _features([40, 10, 25])
    head = fit_normalized_head(features, targets, 3, c=1.0)
    unit = torch.nn.functional.normalize(features.double(), dim=1).numpy()
    reference = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000).fit(unit, targets.numpy())
    with torch.no_grad():
        logits = head(features)
        assert torch.allclose(logits, head(features * 7.5), atol=1e-5)  # the features' norm does not count
    np.testing.assert_allclose(logits.numpy(), reference.decision_function(unit), atol=1e-4)
    assert (logits.argmax(1) == targets).float().mean() > 0.9


def test_normalized_head_binary_and_bad_input() -> None:
    features, targets = _features([30, 30], seed=1)
    head = fit_normalized_head(features, targets, 2, c=0.5)
    with torch.no_grad():
        assert (head(features).argmax(1) == targets).float().mean() > 0.9
    with pytest.raises(ValueError, match="every class"):
        fit_normalized_head(features, targets, 3, c=1.0)
    with pytest.raises(ValueError, match="C must be"):
        fit_normalized_head(features, targets, 2, c=0.0)


def test_normalized_head_is_a_head_build_model_makes() -> None:
    model = build_model("resnet18", 3, head={"type": "normalized"})
    assert isinstance(model.get_submodule(classifier_name(model)), NormalizedLinear)


@pytest.mark.slow
def test_refit_releases_the_run_with_the_new_head(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", per_class=8, groups_per_class=4)
    run = tmp_path / "run"
    args = [
        "--data", str(data), "--out", str(run), "--arch", "resnet18", "--weights", "none", "--epochs", "1",
        "--batch-size", "8", "--image-size", "32", "--workers", "0", "--group-pattern", r"fish_(\d+)_",
        "--val-fraction", "0.25",
    ]  # fmt: skip
    assert train.main(args) == 0
    assert main([str(run), "--out", str(tmp_path / "refit"), "--workers", "0"]) == 0
    release = load_checkpoint(tmp_path / "refit" / "release.pt").to_dict()
    assert release["head"] == {"type": "normalized"} and release["config"]["head"] == "normalized"
    assert release["config"]["refit"] == {"from": str(run), "C": 4.0}
    assert release["class_names"] == load_checkpoint(run / "release.pt").class_names
    assert (tmp_path / "refit" / "split.csv").read_text() == (run / "split.csv").read_text()
    metrics = json.loads((tmp_path / "refit" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(release["metrics"]["val_accuracy"])
    assert metrics["open_set"] == release["metrics"]["open_set"]  # the verdicts, as train.py writes them
    predictor = Predictor.from_checkpoint(tmp_path / "refit" / "release.pt")
    assert isinstance(predictor.model.get_submodule(classifier_name(predictor.model)), NormalizedLinear)
    assert predictor.predict([synthetic_image(COLOURS["clownfish"])])[0].label in COLOURS
    # a folder that is not a run is a user error
    assert main([str(tmp_path / "data"), "--out", str(tmp_path / "x")]) == 2
