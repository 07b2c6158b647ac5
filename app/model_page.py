"""The model page's view-model: what ``templates/model.html`` shows, made from ``Predictor.describe()``.

The checkpoint's model card (:class:`model.checkpoint.ModelCard`: how it was trained, its validation metrics,
per-class scores, confusion matrix and open-set report) and the verdict thresholds become plain rows and
``(term, description)`` facts; what the checkpoint lacks is left out, so any checkpoint renders. No Flask here:
:func:`model_page_context` is all that ``app.web`` renders.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

from model.checkpoint import ClassMetrics, ClassNames, EvaluationRecord, ModelCard, TrainingRecord
from model.network import arch_library
from model.open_set import set_kind
from model.results import pretty_label

logger = logging.getLogger(__name__)

#: Confusion-matrix cells are shaded in this many steps of their share of the row (the true class).
SHADE_LEVELS = 5


def model_subject(info: dict[str, Any]) -> str | None:
    """The noun for what the model's photos show (``"fish"``), from ``Predictor.summary()["subject"]``, or None
    when the checkpoint does not record one (the page then words its answers generically)."""
    subject = info.get("subject")
    return (subject.strip() or None) if isinstance(subject, str) else None


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def training_facts(training: TrainingRecord, evaluation: EvaluationRecord, epoch: int | None) -> list[tuple[str, str]]:
    """How the model was trained, as ``(term, description)`` pairs, from the checkpoint's :class:`TrainingRecord`.

    Only settings that describe the model are listed: file-system paths (data, output, resume, local weights)
    and machine settings (workers, device) are left out. Missing settings are skipped.
    """
    facts: list[tuple[str, str]] = []
    if training.arch:
        facts.append(("Architecture", training.arch))
    if training.weights is not None:
        try:
            library = arch_library(str(training.arch))
        except ValueError:
            library = "an unknown library"
        described = {"none": "none: trained from scratch", "imagenet": f"ImageNet-pretrained ({library})"}
        facts.append(("Initial weights", described.get(training.weights, "a local pretrained state dict")))
    if training.epochs is not None:
        text = f"{training.epochs}"
        best = evaluation.best_epoch if evaluation.best_epoch is not None else epoch
        if best is not None:
            text += f" (the weights served are from epoch {int(best) + 1}, the best by validation macro-F1)"
        facts.append(("Epochs", text))
    if (size := training.image_size) is not None:
        text = f"{size} × {size} pixels"
        if training.crop_pct is not None:
            text += f" (evaluation: short side resized to {round(size / training.crop_pct)} px, centre crop)"
        facts.append(("Input size", text))
    if training.batch_size is not None:
        facts.append(("Batch size", str(training.batch_size)))
    facts += _optimizer_facts(training)
    if training.label_smoothing is not None:
        facts.append(("Label smoothing", f"{training.label_smoothing:g}"))
    if split := _split_fact(training):
        facts.append(("Data split", split))
    if training.seed is not None:
        facts.append(("Random seed", str(training.seed)))
    if training.release_dtype:
        facts.append(("Weights stored as", training.release_dtype))
    return facts


def _optimizer_facts(training: TrainingRecord) -> list[tuple[str, str]]:
    """The optimizer and the learning-rate schedule, as :func:`training_facts` pairs (none where not recorded)."""
    facts: list[tuple[str, str]] = []
    if training.lr is not None:
        parts = [training.optimizer, f"learning rate {training.lr:g}"]
        if training.momentum is not None:
            parts.append(f"momentum {training.momentum:g}")
        if training.weight_decay is not None:
            parts.append(f"weight decay {training.weight_decay:g}")
        facts.append(("Optimizer", ", ".join(parts)))
    if scheduler := training.scheduler:
        text = scheduler
        if scheduler == "step" and training.lr_step_size:
            text += f": learning rate × {training.lr_gamma:g} every {training.lr_step_size} epochs"
        if training.warmup_epochs:
            text += f", after {training.warmup_epochs:g} epochs of linear warm-up"
        facts.append(("Learning-rate schedule", text))
    return facts


def _split_fact(training: TrainingRecord) -> str | None:
    """How the validation images were held out, or None where the checkpoint does not say."""
    if training.val_data:
        return "a separate validation folder"
    if training.val_fraction is None:
        return None
    text = f"{training.val_fraction:.0%} of the images held out for validation, stratified by species"
    if training.group_pattern:
        text += (
            f"; files whose names share the group of the pattern {training.group_pattern} (e.g. frames of "
            "one video track) stay on one side, so validation images are not near-copies of training images"
        )
    return text


def class_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per class: ``label, display_name, common_name, scientific_name`` (``Predictor.describe()``'s
    ``class_info``), its ``family`` and ``family_common_name`` (None without a taxonomy) and, where the checkpoint
    has them, its validation ``precision, recall, f1, support``."""
    names = info.get("class_info") or {}
    card: ModelCard = info["card"]
    rows = []
    for label in info["classes"]:
        known = names.get(label) or {}
        taxonomy = card.class_info.get(label) or ClassNames()
        rows.append(
            {
                "label": label,
                "display_name": known.get("display_name") or pretty_label(label),
                "common_name": known.get("common_name"),
                "scientific_name": known.get("scientific_name"),
                "family": taxonomy.family,
                "family_common_name": taxonomy.family_common_name,
                **dataclasses.asdict(card.evaluation.per_class.get(label) or ClassMetrics()),
            }
        )
    return rows


def shade_level(count: int, total: int, levels: int = SHADE_LEVELS) -> int:
    """Shade step of a confusion-matrix cell: 0 for no images, else 1 to ``levels`` by its share of ``total``
    (with 5 levels: up to 20% is 1, up to 40% is 2, ..., above 80% is 5)."""
    if count <= 0 or total <= 0:
        return 0
    return max(1, min(levels, math.ceil(levels * count / total - 1e-9)))


def confusion_rows(matrix: Any, classes: Sequence[str]) -> list[dict[str, Any]] | None:
    """The confusion matrix as table rows with shading classes, or None when absent or not C x C of counts.

    Each row: ``{"label", "total", "cells": [{"count", "share", "css"}]}`` for one true class; cells are the
    predicted classes in the order of ``classes``. ``css`` is ``cm-hit`` (diagonal) or ``cm-miss`` plus
    ``cm-N``, N the :func:`shade_level` of the cell's share of its row.
    """
    n = len(classes)
    if not isinstance(matrix, list) or len(matrix) != n:
        return None
    if not all(isinstance(row, list) and len(row) == n for row in matrix):
        logger.warning("ignoring a confusion matrix that is not %d x %d", n, n)
        return None
    rows = []
    for i, row in enumerate(matrix):
        counts = [int(c) if _number(c) is not None else 0 for c in row]
        total = sum(counts)
        cells = [
            {
                "count": count,
                "share": count / total if total else 0.0,
                "css": f"{'cm-hit' if i == j else 'cm-miss'} cm-{shade_level(count, total)}",
            }
            for j, count in enumerate(counts)
        ]
        rows.append({"label": classes[i], "total": total, "cells": cells})
    return rows


def verdict_thresholds(info: dict[str, Any]) -> dict[str, float]:
    """The thresholds behind this model's verdicts, ``{"not_sure": confidence, "not_sure_logit": the best class's
    logit, "unknown_species": novelty, "not_a_fish": subject score, "not_a_fish_taxon": taxon score,
    "not_a_fish_contrast": other-organism score minus taxon score, "not_a_fish_novelty": the novelty above which
    those two judge, "family": family probability}``, from
    ``Predictor.summary()["verdict_thresholds"]`` (the confidence threshold alone where the summary has none).
    Checks the model does not have (None) are left out, as is a ``not_sure`` threshold of 0 (never "not sure")."""
    recorded = info.get("verdict_thresholds")
    if not isinstance(recorded, dict):
        recorded = {"not_sure": info.get("confidence_threshold")}
    names = (
        "not_sure",
        "not_sure_logit",
        "unknown_species",
        "not_a_fish",
        "not_a_fish_taxon",
        "not_a_fish_contrast",
        "not_a_fish_novelty",
        "family",
    )
    thresholds = {name: _number(recorded.get(name)) for name in names}
    return {
        name: value
        for name, value in thresholds.items()
        if value is not None and not (name == "not_sure" and value <= 0)
    }


#: Rows of the model page's real-photo table: ``metrics["open_set"]`` key and what it holds.
OPEN_SET_SETS = (
    ("val", "Validation photos (video crops of its species)"),
    ("known_photos", "Photographs of species it knows"),
    ("unknown_photos", "Photographs of species it does not know"),
    ("not_subject", "Pictures of something else"),
)


def open_set_rows(evaluation: EvaluationRecord) -> list[dict[str, Any]]:
    """The verdicts measured when the model was trained (the card's ``open_set`` report, see
    ``training.open_set``), one row per set it was measured on, in :data:`OPEN_SET_SETS`' order (a second folder of
    a kind, named ``"kind:folder"``, after the first, with its folder in brackets): ``{"name", "images", "species",
    "not_sure", "unknown_species", "not_a_fish", "top1", "confidently_wrong", "family_right", "family_wrong"}``
    (fractions, None where the set has no such number)."""
    rows = []
    for kind, name in OPEN_SET_SETS:
        # stable: first folder first
        for key, shares in sorted(evaluation.open_set.items(), key=lambda item: ":" in item[0]):
            if set_kind(key) == kind:
                folder = key.partition(":")[2]
                rows.append({"name": f"{name} ({folder})" if folder else name, **dataclasses.asdict(shares)})
    return rows


def model_page_context(info: dict[str, Any]) -> dict[str, Any]:
    """The template variables of ``model.html`` for a model described by ``Predictor.describe()``: ``model``
    (``info`` itself), ``metrics`` (the card's :class:`EvaluationRecord`), ``serving`` (its
    :class:`ServingRecord`), ``subject``, ``thresholds``, ``open_set``, ``classes``, ``has_per_class``,
    ``training``, ``confusion`` and ``short_names`` (class name -> the name the confusion matrix shows)."""
    card: ModelCard = info["card"]
    classes = class_rows(info)
    return {
        "model": info,
        "metrics": card.evaluation,
        "serving": card.serving,
        "subject": model_subject(info),
        "thresholds": verdict_thresholds(info),
        "open_set": open_set_rows(card.evaluation),
        "classes": classes,
        "has_per_class": any(row["f1"] is not None for row in classes),
        "has_families": any(row["family"] for row in classes),
        # a run that left --image-size to the weights' default records none: the size it serves at is the one
        "training": training_facts(
            dataclasses.replace(card.training, image_size=card.training.image_size or info.get("image_size")),
            card.evaluation,
            card.epoch,
        ),
        "confusion": confusion_rows(card.evaluation.confusion_matrix, info["classes"]),
        "short_names": {row["label"]: row["common_name"] or row["display_name"] for row in classes},
    }
