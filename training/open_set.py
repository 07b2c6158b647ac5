"""Choosing and measuring the open-set thresholds of a trained model (see :mod:`model.open_set` for the verdicts).

Every choice here is a pure function of the network's outputs (:class:`training.evaluation.Outputs`) and numbers.
At release (:mod:`training.release`) the outputs come from the training images (un-augmented), to fit what the
scores need (the subject's ImageNet classes, the class Gaussians), from the validation images and, when given, from
real photos of known and unknown species (``--open-set-photos``) and pictures of something else
(``--not-subject``); :func:`choose_open_set` then chooses:

- the ``not_a_fish`` threshold: the highest subject score that calls at most ``subject_rejection`` of each set of
  the subject's pictures (validation, known photos, unknown-species photos) "not a fish";
- the ``unknown_species`` threshold: the novelty that at most ``novelty_rejection`` of the known photos (the
  validation images when there are none) exceed;
- a higher "not sure" threshold, where known photos would otherwise be confidently wrong too often.

The ``--not-subject`` pictures are never used to choose anything: they only measure the result
(:func:`verdict_counts`). Also here: the photo folders' samples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.open_set import (
    DEFAULT_SUBJECT_COVERAGE,
    ClassGaussians,
    OpenSetRule,
    open_set_scores,
    subject_classes,
    subject_score,
)
from model.predictor import VERDICTS, Predictor, calibrated_probabilities
from training.data import Sample, is_image_file
from training.evaluation import Outputs

logger = logging.getLogger(__name__)


def photo_samples(folder: str | os.PathLike[str], class_names: Sequence[str]) -> tuple[list[Sample], list[Sample]]:
    """Photos in ``folder/<species>/``: ``(known, unknown)``, known where ``<species>`` is one of ``class_names``
    (target = its index), unknown otherwise (target -1). Files directly in ``folder`` count as unknown.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of photos")
    known, unknown = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p)):
        species = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else ""
        relative = str(path.relative_to(root))
        if species in class_names:
            known.append(Sample(relative, class_names.index(species)))
        else:
            unknown.append(Sample(relative, -1))
    return known, unknown


def all_images(folder: str | os.PathLike[str]) -> list[Sample]:
    """Every image below ``folder``, target -1.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of pictures")
    return [Sample(str(p.relative_to(root)), -1) for p in sorted(root.rglob("*")) if p.is_file() and is_image_file(p)]


def verdict_report(predictor: Predictor, outputs: Outputs) -> dict[str, float]:
    """How ``predictor`` answers a set (its temperature, open-set statistics and thresholds): see
    :func:`verdict_counts`."""
    subject, novelty = predictor.open_set_scores(outputs.features, outputs.imagenet_logits)
    return verdict_counts(predictor.calibrated(outputs.logits), outputs.targets, subject, novelty, predictor.open_set)


def verdict_counts(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    subject: torch.Tensor | None,
    novelty: torch.Tensor | None,
    rule: OpenSetRule,
) -> dict[str, float]:
    """How ``rule`` answers a set, from its calibrated ``probabilities`` float ``(N, C)``, ``targets`` int64
    ``(N,)`` (-1 for images of none of the classes) and scores ``(N,)`` (None where the model has none); each
    image's verdict is :meth:`model.open_set.OpenSetRule.verdict` of its top-1 probability and scores, as
    :meth:`model.predictor.Predictor.predictions` serves it.

    Returns:
        ``images``, the fraction of each verdict (``species``, ``not_sure``, ``unknown_species``,
        ``not_a_fish``), and where every image is of a known class ``top1`` (the best class is right, whatever
        the verdict), ``species_accuracy`` (right among the ``species`` answers) and ``confidently_wrong`` (a
        ``species`` answer naming the wrong class, as a fraction of all images).
    """
    values, indices = probabilities.topk(1, dim=1)
    verdicts = np.array(
        [
            rule.verdict(
                confidence,
                float(subject[row]) if subject is not None else None,
                float(novelty[row]) if novelty is not None else None,
            )
            for row, confidence in enumerate(values[:, 0].tolist())
        ]
    )
    report: dict[str, float] = {"images": float(len(verdicts))}
    for verdict in VERDICTS:
        report[verdict] = float((verdicts == verdict).mean())
    labels = targets.numpy()
    if (labels >= 0).all():
        right = indices[:, 0].numpy() == labels
        asserted = verdicts == "species"
        report["top1"] = float(right.mean())
        report["species_accuracy"] = float(right[asserted].mean()) if asserted.any() else 0.0
        report["confidently_wrong"] = float((asserted & ~right).mean())
    return report


@dataclass(frozen=True)
class OpenSetFit:
    """What :func:`choose_open_set` chooses for a release.

    Attributes:
        subject_classes: the subject's ImageNet classes (:func:`model.open_set.subject_classes`), or None
            without a kept ImageNet head.
        gaussians: the class means and shared covariance of the training features.
        rule: the thresholds of the four verdicts.
    """

    subject_classes: list[int] | None
    gaussians: ClassGaussians
    rule: OpenSetRule

    def record(self) -> dict[str, Any]:
        """The checkpoint's ``open_set`` record: ``{"subject_classes": [...] (absent without an ImageNet head),
        "gaussians": {...}}`` (see :mod:`model.checkpoint`)."""
        record: dict[str, Any] = {}
        if self.subject_classes is not None:
            record["subject_classes"] = self.subject_classes
        record["gaussians"] = self.gaussians.to_dict()
        return record

    def scores(self, outputs: Outputs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(subject_score (N,), novelty (N,))`` of a set's outputs, as serving computes them
        (:func:`model.open_set.open_set_scores`); subject None without subject classes."""
        return open_set_scores(outputs.features, outputs.imagenet_logits, self.subject_classes, self.gaussians)


def choose_open_set(
    train: Outputs,
    calibration: dict[str, Outputs],
    *,
    temperature: float,
    confidence_threshold: float,
    subject: str | None = None,
    subject_rejection: float = 0.02,
    novelty_rejection: float = 0.05,
    max_confidently_wrong: float = 0.05,
    coverage: float = DEFAULT_SUBJECT_COVERAGE,
) -> OpenSetFit:
    """Fit the scores on ``train`` and choose the thresholds on ``calibration``: a pure function of the network's
    outputs and the options.

    Args:
        train: outputs on the un-augmented training images (targets are class indices).
        calibration: ``"val"`` (required), and optionally ``"known_photos"`` and ``"unknown_photos"``: pictures
            of the subject used to choose the thresholds.
        temperature: the softmax temperature fitted on the validation images.
        confidence_threshold: the "not sure" threshold chosen on the validation images.
        subject: noun for messages (e.g. ``"fish"``).
        subject_rejection: fraction of each calibration set allowed below the subject threshold.
        novelty_rejection: fraction of the known photos (else validation images) allowed above the novelty
            threshold.
        max_confidently_wrong: with known photos, the "not sure" threshold is raised (never lowered below
            ``confidence_threshold``) until at most this fraction of them get a ``species`` answer that names the
            wrong class (:func:`confidence_threshold_for_known_photos`).
        coverage: see :func:`model.open_set.subject_classes`.
    """
    classes, subject_threshold = None, None
    if train.imagenet_logits.shape[1]:
        classes = subject_classes(torch.softmax(train.imagenet_logits, dim=1), coverage)
        quantiles = [
            float(torch.quantile(subject_score(outputs.imagenet_logits, classes).double(), subject_rejection))
            for outputs in calibration.values()
        ]
        subject_threshold = max(0.0, min(quantiles))
        logger.info(
            "subject: %d ImageNet classes (first: %s); 'not a fish' below subject score %.4f",
            len(classes),
            classes[:10],
            subject_threshold,
        )
    else:
        logger.info("the model keeps no ImageNet head: no 'not a fish' check")
    gaussians = ClassGaussians.fit(train.features, train.targets, train.logits.shape[1])
    reference = calibration.get("known_photos", calibration["val"])
    novelty_threshold = float(torch.quantile(gaussians.novelty(reference.features).double(), 1.0 - novelty_rejection))
    logger.info("'unknown species' above novelty %.1f", novelty_threshold)
    if "known_photos" in calibration:
        known = calibration["known_photos"]
        confidence_threshold = max(
            confidence_threshold,
            confidence_threshold_for_known_photos(
                calibrated_probabilities(known.logits, temperature),
                known.targets,
                subject_score(known.imagenet_logits, classes) if classes else None,
                gaussians.novelty(known.features),
                subject_threshold=subject_threshold,
                novelty_threshold=novelty_threshold,
                max_confidently_wrong=max_confidently_wrong,
            ),
        )
        logger.info(
            "'not sure' below %.3f (at most %.0f %% of known photos confidently wrong)",
            confidence_threshold,
            100 * max_confidently_wrong,
        )
    rule = OpenSetRule(
        confidence_threshold=confidence_threshold,
        subject_threshold=subject_threshold,
        novelty_threshold=novelty_threshold,
        subject=subject,
    )
    return OpenSetFit(classes, gaussians, rule)


def open_set_samples(
    photos: str | os.PathLike[str] | None, not_subject: str | os.PathLike[str] | None, class_names: Sequence[str]
) -> dict[str, tuple[str | os.PathLike[str], list[Sample]]]:
    """The sets :func:`verdict_report` describes: ``{"known_photos" | "unknown_photos" | "not_subject": (root,
    samples)}``, for whichever folders are given and hold such images.

    Raises:
        FileNotFoundError: a folder that is given does not exist.
    """
    sets: dict[str, tuple[str | os.PathLike[str], list[Sample]]] = {}
    if photos:
        known, unknown = photo_samples(photos, class_names)
        sets.update(
            {name: (photos, rows) for name, rows in (("known_photos", known), ("unknown_photos", unknown)) if rows}
        )
    if not_subject:
        sets["not_subject"] = (not_subject, all_images(not_subject))
    return sets


def confidence_threshold_for_known_photos(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    subject: torch.Tensor | None,
    novelty: torch.Tensor,
    *,
    subject_threshold: float | None,
    novelty_threshold: float,
    max_confidently_wrong: float,
) -> float:
    """The lowest calibrated confidence threshold at which at most ``max_confidently_wrong`` of the known photos
    pass every check and name the wrong class.

    Args:
        probabilities: calibrated float ``(N, C)``; targets: int64 ``(N,)`` class indices.
        subject, novelty: the photos' scores ``(N,)``; subject None where the model has none.
        subject_threshold, novelty_threshold: the open-set thresholds chosen (subject None: no check).
        max_confidently_wrong: the fraction of the photos allowed to be confidently wrong, in [0, 1].

    Returns:
        A threshold in [0, 1]: 0 when few enough are wrong at any confidence.
    """
    confidence, predicted = probabilities.max(1)
    passes = novelty <= novelty_threshold
    if subject is not None and subject_threshold is not None:
        passes &= subject >= subject_threshold
    wrong = (passes & (predicted != targets)).numpy()
    confidence = confidence.numpy()
    allowed = int(np.floor(max_confidently_wrong * len(confidence)))
    wrong_confidences = np.sort(confidence[wrong])[::-1]
    if len(wrong_confidences) <= allowed:
        return 0.0
    # above the (allowed + 1)-th most confident wrong answer, only `allowed` wrong answers remain
    return float(min(1.0, np.nextafter(wrong_confidences[allowed], np.inf)))
