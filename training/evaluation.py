"""Evaluating a trained model on labelled images: the library of ``evaluate.py``, also used by the release step
(:mod:`training.release`) and ``quantize.py``.

A :class:`model.predictor.Predictor` (the checkpoint as served) runs over the images (:func:`collect_outputs`): its
eval transform and ``predictor.outputs``, the code path the web app serves with. The metrics are then a pure
function of the logits (:func:`evaluate_logits`), with the probabilities ``softmax(logits / temperature)`` that
``predictor.calibrated`` serves, so the numbers printed here are the numbers users get.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from model.predictor import Predictor, calibrated_probabilities
from training.data import ImageListDataset, Sample, collate_skip_none, read_split, scan_image_folder
from training.metrics import (
    classification_metrics,
    expected_calibration_error,
    negative_log_likelihood,
    selective_threshold,
)
from training.metrics import fit_temperature as fit_softmax_temperature

#: Default accuracy wanted of the predictions shown as confident (the rest are "not sure"); a choice, not a measurement.
DEFAULT_TARGET_ACCURACY = 0.95


class ClassMismatchError(ValueError):
    """The data's class folders are not the classes the checkpoint was trained on."""


@dataclass
class Outputs:
    """What the network says of a set of images (see :meth:`model.predictor.Predictor.outputs`).

    Attributes:
        logits: float32 ``(N, C)``; features: ``(N, D)``; imagenet_logits: ``(N, 1000)`` or ``(N, 0)``;
        targets: int64 ``(N,)``, -1 where the image shows none of the model's classes.
    """

    logits: torch.Tensor
    features: torch.Tensor
    imagenet_logits: torch.Tensor
    targets: torch.Tensor


def readable_batches(
    predictor: Predictor, root: str | os.PathLike[str], samples: Sequence[Sample], batch_size: int, workers: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``samples`` (paths under ``root``) in order, through ``predictor.transform`` (the checkpoint's eval preset),
    in batches of ``(images (N,3,S,S) float32, targets (N,) int64)``; unreadable images are left out (a warning
    each, see :class:`training.data.ImageListDataset`), and so are batches with none left."""
    loader = DataLoader(
        ImageListDataset(root, samples, predictor.transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skip_none,
    )
    for batch in loader:
        if batch is not None:
            yield batch


def collect_outputs(
    predictor: Predictor,
    root: str | os.PathLike[str],
    samples: Sequence[Sample],
    *,
    batch_size: int = 64,
    workers: int = 2,
) -> Outputs:
    """Run ``predictor`` (its eval transform and network, as served) over ``samples`` (paths under ``root``).

    Raises:
        ValueError: no readable image.
    """
    parts: list[tuple[torch.Tensor, ...]] = []
    for images, targets in readable_batches(predictor, root, samples, batch_size, workers):
        parts.append((*predictor.outputs(images), targets))
    if not parts:
        raise ValueError(f"no readable image under {root}")
    return Outputs(*(torch.cat([p[i] for p in parts]) for i in range(4)))


def compare_predictors(
    reference: Predictor,
    candidates: dict[str, Predictor],
    root: str | os.PathLike[str],
    samples: Sequence[Sample],
    *,
    batch_size: int = 64,
    workers: int = 2,
) -> dict[str, dict[str, float]]:
    """How closely each of ``candidates`` (other backends or precisions of the same checkpoint) follows
    ``reference`` (torch fp32) on ``samples``, each image decoded and preprocessed once for all of them.

    Returns:
        ``{name: {"images", "top1_agreement", "max_probability_difference", "accuracy_reference", "accuracy"}}``
        (fractions in [0, 1]; probabilities are the calibrated ones each predictor serves).

    Raises:
        ValueError: no readable image.
    """
    stats = {name: {"agree": 0, "correct": 0, "max_diff": 0.0} for name in candidates}
    total = correct_reference = 0
    for images, targets in readable_batches(reference, root, samples, batch_size, workers):
        expected = reference.probabilities(images)
        correct_reference += int((expected.argmax(1) == targets).sum())
        total += len(targets)
        for name, candidate in candidates.items():
            probabilities = candidate.probabilities(images)
            s = stats[name]
            s["agree"] += int((expected.argmax(1) == probabilities.argmax(1)).sum())
            s["correct"] += int((probabilities.argmax(1) == targets).sum())
            s["max_diff"] = max(s["max_diff"], float((expected - probabilities).abs().max()))
    if not total:
        raise ValueError(f"no readable image under {root}")
    return {
        name: {
            "images": total,
            "top1_agreement": s["agree"] / total,
            "max_probability_difference": s["max_diff"],
            "accuracy_reference": correct_reference / total,
            "accuracy": s["correct"] / total,
        }
        for name, s in stats.items()
    }


def evaluate_predictor(
    predictor: Predictor,
    root: str | os.PathLike[str],
    samples: Sequence[Sample],
    *,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    fit_temperature: bool = False,
    batch_size: int = 64,
    workers: int = 2,
) -> dict[str, Any]:
    """Classify ``samples`` (paths relative to ``root``, targets indexing ``predictor.class_names``): the
    images through :func:`collect_outputs`, then :func:`evaluate_logits` at the predictor's temperature and
    "not sure" threshold.

    Args:
        fit_temperature: fit the softmax temperature on these images instead (see :func:`evaluate_logits`) and
            set ``predictor.temperature`` to it, so that the predictor then serves the calibrated probabilities.

    Raises:
        ValueError: no readable image.
    """
    outputs = collect_outputs(predictor, root, samples, batch_size=batch_size, workers=workers)
    metrics = evaluate_logits(
        outputs.logits,
        outputs.targets,
        predictor.class_names,
        temperature=predictor.temperature,
        confidence_threshold=predictor.confidence_threshold,
        target_accuracy=target_accuracy,
        fit_temperature=fit_temperature,
    )
    if fit_temperature:
        predictor.temperature = metrics["temperature"]
    return metrics


def evaluate_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_names: Sequence[str],
    *,
    temperature: float = 1.0,
    confidence_threshold: float = 0.0,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    fit_temperature: bool = False,
) -> dict[str, Any]:
    """The metrics of logits ``(N, C)`` float32 for labelled images (``targets`` ``(N,)`` int64, indexing
    ``class_names``), with the probabilities ``softmax(logits / temperature)`` a predictor at ``temperature``
    serves (see :meth:`model.predictor.Predictor.calibrated`). A pure function of its arguments.

    Args:
        temperature: the softmax temperature T > 0.
        confidence_threshold: the "not sure" threshold to measure (``"at_model_threshold"``).
        target_accuracy: the accuracy the chosen "not sure" threshold is to reach (``"selective"``).
        fit_temperature: first fit the temperature on these images (temperature scaling, see
            :func:`training.metrics.fit_temperature`), replacing ``temperature``; the confidences, the "not sure"
            threshold and the calibration numbers are then those of the calibrated probabilities.

    Returns:
        :func:`training.metrics.classification_metrics` plus ``"images"`` (how many were classified),
        ``"mean_confidence"``, ``"selective"``: the "not sure" threshold for ``target_accuracy`` (see
        :func:`training.metrics.selective_threshold`), ``"at_model_threshold"``: the accuracy above
        ``confidence_threshold``, ``"temperature"`` (the one used, fitted or given), ``"ece"`` (15-bin expected
        calibration error, :func:`training.metrics.expected_calibration_error`) and ``"nll"`` (mean negative
        log-likelihood, nats) of the calibrated probabilities; with ``fit_temperature`` also ``"ece_before"`` and
        ``"nll_before"`` at temperature 1.
    """
    calibration: dict[str, float] = {}
    if fit_temperature:
        calibration["ece_before"] = expected_calibration_error(torch.softmax(logits, dim=1), targets)
        calibration["nll_before"] = negative_log_likelihood(logits, targets)
        temperature = fit_softmax_temperature(logits, targets)
    probs = calibrated_probabilities(logits, temperature)
    calibration["temperature"] = temperature
    calibration["ece"] = expected_calibration_error(probs, targets)
    calibration["nll"] = negative_log_likelihood(logits, targets, temperature)
    metrics = classification_metrics(targets.tolist(), probs.argmax(1).tolist(), class_names)
    metrics["images"] = int(targets.numel())
    confidences, predicted = probs.max(1)
    correct = (predicted == targets).numpy()
    metrics["mean_confidence"] = float(confidences.mean())
    metrics["selective"] = selective_threshold(confidences.numpy(), correct, target_accuracy)
    accepted = (confidences >= confidence_threshold).numpy()
    metrics["at_model_threshold"] = {
        "confidence_threshold": confidence_threshold,
        "coverage": float(accepted.mean()),
        "selective_accuracy": float(correct[accepted].mean()) if accepted.any() else 0.0,
    }
    metrics.update(calibration)
    return metrics


def samples_for_checkpoint(
    data: str | os.PathLike[str], class_names: Sequence[str], split_file: str | os.PathLike[str] | None = None
) -> list[Sample]:
    """The labelled images of ``data`` indexed by the checkpoint's ``class_names``.

    With ``split_file``, only its ``val`` rows; otherwise every image of the ImageFolder tree.

    Raises:
        ClassMismatchError: the folder's classes differ from ``class_names`` (names both sides' extras).
        FileNotFoundError, ValueError: see :func:`training.data.scan_image_folder` and ``read_split``.
    """
    if split_file is not None:
        return read_split(split_file, class_names, split="val")
    folder_classes, samples = scan_image_folder(data)
    if list(folder_classes) != list(class_names):
        extra = sorted(set(folder_classes) - set(class_names))
        missing = sorted(set(class_names) - set(folder_classes))
        raise ClassMismatchError(
            f"the class folders of {data} do not match the checkpoint's classes: "
            f"not in the checkpoint: {extra or 'none'}; missing from the data: {missing or 'none'}"
            + ("" if extra or missing else "; same names in a different order")
        )
    return samples
