"""Choose and report the open-set thresholds of a trained model (see :mod:`model.open_set` for the verdicts).

At release, ``train.py`` runs the served :class:`model.predictor.Predictor` over the training images (un-augmented)
to fit what the scores need (the subject's ImageNet classes, the class Gaussians), then over the validation images
and, when given, real photos of known and unknown species (``--open-set-photos``) and pictures of something else
(``--not-subject``), and chooses:

- the ``not_a_fish`` threshold: the highest subject score that calls at most ``subject_rejection`` of each set of
  the subject's pictures (validation, known photos, unknown-species photos) "not a fish";
- the ``unknown_species`` threshold: the novelty that at most ``novelty_rejection`` of the known photos (the
  validation images when there are none) exceed.

The ``--not-subject`` pictures are never used to choose anything: they only measure the result.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.open_set import DEFAULT_SUBJECT_COVERAGE, ClassGaussians, OpenSetRule, subject_classes
from model.predictor import VERDICTS, Predictor
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
    """How the predictor answers a set: ``images``, the fraction of each verdict (``species``, ``not_sure``,
    ``unknown_species``, ``not_a_fish``), and for images of known classes ``top1`` (the best class is right,
    whatever the verdict), ``species_accuracy`` (right among the ``species`` answers) and ``confidently_wrong``
    (a ``species`` answer naming the wrong class, as a fraction of all images)."""
    predictions = predictor.predictions(outputs.logits, outputs.features, outputs.imagenet_logits, top_k=1)
    verdicts = np.array([p.verdict for p in predictions])
    report: dict[str, float] = {"images": float(len(predictions))}
    for verdict in VERDICTS:
        report[verdict] = float((verdicts == verdict).mean())
    targets = outputs.targets.numpy()
    if (targets >= 0).all():
        right = np.array([predictor.class_names.index(p.label) for p in predictions]) == targets
        asserted = verdicts == "species"
        report["top1"] = float(right.mean())
        report["species_accuracy"] = float(right[asserted].mean()) if asserted.any() else 0.0
        report["confidently_wrong"] = float((asserted & ~right).mean())
    return report


def choose_open_set(
    predictor: Predictor,
    train: Outputs,
    calibration: dict[str, Outputs],
    *,
    subject: str | None = None,
    subject_rejection: float = 0.02,
    novelty_rejection: float = 0.05,
    max_confidently_wrong: float = 0.05,
    coverage: float = DEFAULT_SUBJECT_COVERAGE,
) -> tuple[dict[str, Any], OpenSetRule]:
    """Fit the scores on ``train`` and choose thresholds on ``calibration``; set them on ``predictor``.

    Args:
        predictor: the model as served; its ``subject_classes``, ``gaussians`` and ``open_set`` are replaced.
        train: outputs on the un-augmented training images (targets are class indices).
        calibration: ``"val"`` (required), and optionally ``"known_photos"`` and ``"unknown_photos"``: pictures
            of the subject used to choose the thresholds.
        subject: noun for messages (e.g. ``"fish"``).
        subject_rejection: fraction of each calibration set allowed below the subject threshold.
        novelty_rejection: fraction of the known photos (else validation images) allowed above the novelty
            threshold.
        max_confidently_wrong: with known photos, the "not sure" threshold is raised (never lowered below the
            predictor's, chosen on validation) until at most this fraction of them get a ``species`` answer that
            names the wrong class.
        coverage: see :func:`model.open_set.subject_classes`.

    Returns:
        ``(open_set record for the checkpoint, the rule)``; the record is ``{"subject_classes": [...] (absent
        without an ImageNet head), "gaussians": {...}}``.
    """
    record: dict[str, Any] = {}
    subject_threshold = None
    if train.imagenet_logits.shape[1]:
        classes = subject_classes(torch.softmax(train.imagenet_logits, dim=1), coverage)
        record["subject_classes"] = classes
        predictor.subject_classes = classes
        quantiles = []
        for outputs in calibration.values():
            scores, _ = predictor.open_set_scores(outputs.features, outputs.imagenet_logits)
            assert scores is not None
            quantiles.append(float(torch.quantile(scores.double(), subject_rejection)))
        subject_threshold = max(0.0, min(quantiles))
        logger.info(
            "subject: %d ImageNet classes (first: %s); 'not a fish' below subject score %.4f",
            len(classes),
            classes[:10],
            subject_threshold,
        )
    else:
        logger.info("the model keeps no ImageNet head: no 'not a fish' check")
    gaussians = ClassGaussians.fit(train.features, train.targets, len(predictor.class_names))
    record["gaussians"] = gaussians.to_dict()
    predictor.gaussians = gaussians
    reference = calibration.get("known_photos", calibration["val"])
    _, novelty = predictor.open_set_scores(reference.features, reference.imagenet_logits)
    assert novelty is not None
    novelty_threshold = float(torch.quantile(novelty.double(), 1.0 - novelty_rejection))
    logger.info("'unknown species' above novelty %.1f", novelty_threshold)
    confidence_threshold = predictor.confidence_threshold
    if "known_photos" in calibration:
        confidence_threshold = max(
            confidence_threshold,
            _confidence_for_known_photos(
                predictor, calibration["known_photos"], subject_threshold, novelty_threshold, max_confidently_wrong
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
    predictor.open_set = rule
    return record, rule


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


def format_verdicts(name: str, root: str | os.PathLike[str], report: dict[str, float]) -> str:
    """One line for a :func:`verdict_report`, e.g. ``known_photos (239 images of DIR): species 80.3 % ...``."""
    parts = [f"{key.replace('_', ' ')} {100 * value:.1f} %" for key, value in report.items() if key != "images"]
    return f"{name} ({int(report['images'])} images of {root}): " + ", ".join(parts)


def _confidence_for_known_photos(
    predictor: Predictor,
    known: Outputs,
    subject_threshold: float | None,
    novelty_threshold: float,
    max_confidently_wrong: float,
) -> float:
    """The lowest calibrated confidence threshold at which at most ``max_confidently_wrong`` of the ``known``
    photos pass every check and name the wrong class."""
    probs = predictor.calibrated(known.logits)
    confidence, predicted = probs.max(1)
    subject, novelty = predictor.open_set_scores(known.features, known.imagenet_logits)
    passes = novelty <= novelty_threshold
    if subject is not None and subject_threshold is not None:
        passes &= subject >= subject_threshold
    wrong = (passes & (predicted != known.targets)).numpy()
    confidence = confidence.numpy()
    allowed = int(np.floor(max_confidently_wrong * len(confidence)))
    wrong_confidences = np.sort(confidence[wrong])[::-1]
    if len(wrong_confidences) <= allowed:
        return 0.0
    # above the (allowed + 1)-th most confident wrong answer, only `allowed` wrong answers remain
    return float(min(1.0, np.nextafter(wrong_confidences[allowed], np.inf)))
