"""Choosing and measuring the open-set thresholds of a trained model (see :mod:`model.open_set` for the verdicts).

Every choice here is a pure function of the network's outputs (:class:`training.evaluation.Outputs`) and numbers.
At release (:mod:`training.release`) the outputs come from the training images (un-augmented), to fit what the
scores need (the subject's ImageNet classes, the class Gaussians), from the validation images and, when given, from
real photos of known and unknown species (``--open-set-photos``) and pictures of something else
(``--not-subject``); :func:`choose_open_set` then chooses:

- the ``unknown_species`` threshold: the novelty that at most ``novelty_rejection`` of the known photos (the
  validation images when there are none) exceed;
- the ``not_a_fish`` thresholds (:meth:`model.open_set.OpenSetRule.not_subject`): the highest subject score that
  calls at most ``subject_rejection`` of each set of the subject's pictures (validation, known photos,
  unknown-species photos) "not a fish"; then, where ``--subject`` names a WordNet noun
  (:mod:`model.imagenet_hierarchy`), the novelty above which the hierarchy's test judges and its pair (taxon score,
  contrast) that call at most ``subject_rejection`` more of each set so and, among those, the most of the
  ``--not-subject`` pictures (their mean fraction over the folders; :func:`choose_contrast_rule` for each gate of
  :func:`hierarchy_gates`). Without the hierarchy the ``--not-subject`` pictures only measure the result;
- a higher "not sure" threshold, where known photos would otherwise be confidently wrong too often, and, with
  ``--max-unknown-named``, a "not sure" threshold on the best class's logit, where unknown-species photos would
  otherwise be named too often (:func:`unknown_thresholds`).

The photo folders' samples, one set per folder, come from :mod:`training.photo_sets`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.checkpoint import OpenSetRecord, ServingRecord
from model.imagenet_hierarchy import SubjectClasses
from model.open_set import (
    DEFAULT_SUBJECT_COVERAGE,
    ClassGaussians,
    HierarchyClasses,
    OpenSetRule,
    OpenSetScores,
    lowest_confidence_threshold,
    lowest_threshold,
    open_set_scores,
    set_kind,
    subject_classes,
    subject_score,
)
from model.predictor import Predictor, calibrated_probabilities
from model.results import VERDICTS
from training.evaluation import Outputs

logger = logging.getLogger(__name__)


def verdict_report(predictor: Predictor, outputs: Outputs) -> dict[str, float]:
    """How ``predictor`` answers a set (its temperature, open-set statistics and thresholds): see
    :func:`verdict_counts`."""
    scores = predictor.open_set_scores(outputs.features, outputs.imagenet_logits)
    return verdict_counts(
        predictor.calibrated(outputs.logits),
        outputs.targets,
        scores,
        predictor.open_set,
        max_logits=outputs.logits.max(1).values,
    )


def verdict_counts(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    scores: OpenSetScores,
    rule: OpenSetRule,
    *,
    max_logits: torch.Tensor | None = None,
) -> dict[str, float]:
    """How ``rule`` answers a set, from its calibrated ``probabilities`` float ``(N, C)``, ``targets`` int64
    ``(N,)`` (-1 for images of none of the classes), open-set scores (each ``(N,)``, None where the model has
    none) and the best class's uncalibrated logit ``max_logits`` float ``(N,)`` (None: the logit check is skipped);
    each image's verdict is :meth:`model.open_set.OpenSetRule.verdict` of its top-1 probability, scores and logit,
    as :meth:`model.predictor.Predictor.predictions` serves it.

    Returns:
        ``images``, the fraction of each verdict (``species``, ``not_sure``, ``unknown_species``,
        ``not_a_fish``), and where every image is of a known class ``top1`` (the best class is right, whatever
        the verdict), ``species_accuracy`` (right among the ``species`` answers) and ``confidently_wrong`` (a
        ``species`` answer naming the wrong class, as a fraction of all images).
    """
    values, indices = probabilities.topk(1, dim=1)
    logits = max_logits.tolist() if max_logits is not None else [None] * len(values)
    verdicts = np.array(
        [
            rule.verdict(confidence, *scores.row(row), max_logit=logits[row])
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
        hierarchy: the taxon's and the other living things' ImageNet classes, or None (no hierarchy test).
    """

    subject_classes: list[int] | None
    gaussians: ClassGaussians
    rule: OpenSetRule
    hierarchy: HierarchyClasses | None = None

    def record(self) -> OpenSetRecord:
        """The checkpoint's open-set record (:class:`model.checkpoint.OpenSetRecord`)."""
        return OpenSetRecord(self.subject_classes, self.gaussians, self.hierarchy)

    def serving(self, base: ServingRecord, *, coverage: float, accuracy: float) -> ServingRecord:
        """``base`` (the temperature and the selective "not sure" threshold) with this fit's thresholds, and the
        ``coverage`` and ``accuracy`` of the ``species`` answers they give on the validation images."""
        return dataclasses.replace(base.with_rule(self.rule), coverage=coverage, selective_accuracy=accuracy)

    def scores(self, outputs: Outputs) -> OpenSetScores:
        """The open-set scores of a set's outputs, as serving computes them
        (:func:`model.open_set.open_set_scores`)."""
        return open_set_scores(
            outputs.features, outputs.imagenet_logits, self.subject_classes, self.gaussians, self.hierarchy
        )


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
    hierarchy: SubjectClasses | None = None,
    not_subject: Sequence[Outputs] = (),
    max_unknown_named: float | None = None,
) -> OpenSetFit:
    """Fit the scores on ``train`` and choose the thresholds on ``calibration``: a pure function of the network's
    outputs and the options.

    Args:
        train: outputs on the un-augmented training images (targets are class indices).
        calibration: ``"val"`` (required), and optionally ``"known_photos"`` and any number of other sets of the
            subject's pictures (unknown-species photos), used to choose the thresholds.
        temperature: the softmax temperature fitted on the validation images.
        confidence_threshold: the "not sure" threshold chosen on the validation images.
        subject: noun for messages (e.g. ``"fish"``).
        subject_rejection: fraction of each calibration set allowed to be called "not a fish".
        novelty_rejection: fraction of the known photos (else validation images) allowed above the novelty
            threshold.
        max_confidently_wrong: with known photos, the "not sure" threshold is raised (never lowered below
            ``confidence_threshold``) until at most this fraction of them get a ``species`` answer that names the
            wrong class (:func:`lowest_confidence_threshold`).
        coverage: see :func:`model.open_set.subject_classes` (without ``hierarchy`` only).
        hierarchy: the subject's and the other organisms' ImageNet classes
            (:func:`model.imagenet_hierarchy.subject_classes_for`); None: the coverage rule.
        not_subject: outputs on pictures that are not of the subject; with ``hierarchy``, the "not a fish"
            thresholds call the most of them so (see :func:`choose_contrast_rule`).
        max_unknown_named: where given, a second "not sure" threshold, on the best class's logit, is set where at
            most this fraction of each set of unknown-species photos (``calibration`` sets of kind
            ``unknown_photos``) is named as a species (:func:`unknown_thresholds`).
    """
    gaussians = ClassGaussians.fit(train.features, train.targets, train.logits.shape[1])
    novelty_threshold = float(torch.quantile(reference_novelty(gaussians, calibration), 1.0 - novelty_rejection))
    logger.info("'unknown species' above novelty %.1f", novelty_threshold)
    rule = OpenSetRule(confidence_threshold, novelty_threshold=novelty_threshold, subject=subject)
    classes, rule = _subject_rule(train, calibration, rule, coverage, subject_rejection)
    taxa = None
    if classes is not None and hierarchy is not None:
        taxa = HierarchyClasses(hierarchy.subject, hierarchy.other_organisms)
        rule = _hierarchy_rule(
            OpenSetFit(classes, gaussians, rule, taxa), calibration, not_subject, hierarchy, subject_rejection
        )
    rule = _raised_confidence_rule(
        OpenSetFit(classes, gaussians, rule, taxa), calibration, temperature, max_confidently_wrong, max_unknown_named
    )
    return OpenSetFit(classes, gaussians, rule, taxa)


def _subject_rule(
    train: Outputs,
    calibration: dict[str, Outputs],
    rule: OpenSetRule,
    coverage: float,
    subject_rejection: float,
) -> tuple[list[int] | None, OpenSetRule]:
    """The subject's ImageNet classes (:func:`model.open_set.subject_classes` of ``train``'s ImageNet softmax, at
    ``coverage``) and ``rule`` with the "not a fish" subject-score threshold: the highest that calls at most
    ``subject_rejection`` of each ``calibration`` set so. ``(None, rule)`` unchanged when the model keeps no
    ImageNet head."""
    if not train.imagenet_logits.shape[1]:
        logger.info("the model keeps no ImageNet head: no 'not a fish' check")
        return None, rule
    classes = subject_classes(torch.softmax(train.imagenet_logits, dim=1), coverage)
    quantiles = [
        float(torch.quantile(subject_score(outputs.imagenet_logits, classes).double(), subject_rejection))
        for outputs in calibration.values()
    ]
    rule = dataclasses.replace(rule, subject_threshold=max(0.0, min(quantiles)))
    logger.info(
        "subject: %d ImageNet classes (first: %s); 'not a fish' below subject score %.4f",
        len(classes),
        classes[:10],
        rule.subject_threshold,
    )
    return classes, rule


def _hierarchy_rule(
    fit: OpenSetFit,
    calibration: dict[str, Outputs],
    not_subject: Sequence[Outputs],
    hierarchy: SubjectClasses,
    subject_rejection: float,
) -> OpenSetRule:
    """``fit.rule`` with the hierarchy's novelty gate, taxon and contrast thresholds: for each gate of
    :func:`hierarchy_gates`, :func:`choose_contrast_rule` on ``fit``'s scores of the ``calibration`` sets and of
    the ``not_subject`` pictures; the gate whose pair calls the largest mean fraction of the ``not_subject`` sets "not
    a fish" wins (ties: the higher gate, which judges fewer pictures). ``fit`` holds the subject classes, the
    Gaussians, the rule so far and the taxa of ``hierarchy`` (whose noun and class counts are logged)."""
    subject_sets = [fit.scores(outputs) for outputs in calibration.values()]
    other_sets = [fit.scores(outputs) for outputs in not_subject]
    best: tuple[tuple[float, float], OpenSetRule] | None = None
    for gate in hierarchy_gates(fit, calibration) if other_sets else [fit.rule.novelty_threshold]:
        rule = dataclasses.replace(fit.rule, hierarchy_novelty_threshold=gate)
        taxon_threshold, contrast = choose_contrast_rule(subject_sets, other_sets, rule, subject_rejection)
        rule = dataclasses.replace(rule, taxon_threshold=taxon_threshold, contrast_threshold=contrast)
        key = (refused_share(other_sets, rule), gate or 0.0)
        if best is None or key > best[0]:
            best = (key, rule)
    assert best is not None
    (share, _), rule = best
    logger.info(
        "subject %s (WordNet %s): %d ImageNet classes, %d other organisms; beyond novelty %.1f, also 'not a "
        "fish' below taxon score %.4f or where the other organisms' score exceeds it by %.3f (%.1f %% of the "
        "pictures that are not fish)",
        rule.subject,
        hierarchy.synset,
        len(hierarchy.subject),
        len(hierarchy.other_organisms),
        rule.judged_above or 0.0,
        rule.taxon_threshold,
        rule.contrast_threshold,
        100 * share,
    )
    return rule


#: The hierarchy's candidate novelty gates besides the "unknown species" threshold: these quantiles of the known
#: photos' novelty (else the validation images'). Measured on the dev sets (EXPERIMENTS.md section 12): judging
#: from the known photos' median instead of the "unknown species" threshold refuses 47.5 % of the reef sea life
#: instead of 30.7 % (held-out halves).
GATE_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def reference_novelty(gaussians: ClassGaussians, calibration: dict[str, Outputs]) -> torch.Tensor:
    """The novelty (float64 ``(N,)``) of the photos the novelty thresholds are chosen on: the known photos of
    ``calibration``, else its validation images."""
    reference = calibration.get("known_photos", calibration["val"])
    return gaussians.novelty(reference.features).double()


def hierarchy_gates(fit: OpenSetFit, calibration: dict[str, Outputs]) -> list[float | None]:
    """The novelty gates :func:`_hierarchy_rule` tries: ``fit.rule``'s "unknown species" threshold, then the
    :data:`GATE_QUANTILES` of the known photos' (else the validation images') novelty under ``fit``'s Gaussians."""
    novelty = reference_novelty(fit.gaussians, calibration)
    quantiles = torch.quantile(novelty, torch.tensor(GATE_QUANTILES, dtype=torch.float64)).tolist()
    return [fit.rule.novelty_threshold, *quantiles]


def refused_share(sets: Sequence[OpenSetScores], rule: OpenSetRule) -> float:
    """The mean over ``sets`` of the fraction of each that ``rule`` calls not the subject
    (:meth:`model.open_set.OpenSetRule.not_subject`); 0 without sets."""
    shares = [
        np.mean([rule.not_subject(*scores.row(i)) for i in range(len(scores.novelty))])
        for scores in sets
        if scores.novelty is not None
    ]
    return float(np.mean(shares)) if shares else 0.0


def _raised_confidence_rule(
    fit: OpenSetFit,
    calibration: dict[str, Outputs],
    temperature: float,
    max_confidently_wrong: float,
    max_unknown_named: float | None,
) -> OpenSetRule:
    """``fit.rule`` with its "not sure" checks set by the photo sets of ``calibration``: the confidence threshold
    raised (never lowered) to the highest that the known photos ask for (:func:`raised_confidence_thresholds`), then,
    with ``max_unknown_named``, the logit threshold that the unknown-species photos ask for and the confidence
    threshold they would ask for without it (:func:`unknown_thresholds`). Unchanged without such sets."""
    rule = fit.rule
    raised = raised_confidence_thresholds(fit, calibration, temperature, max_confidently_wrong)
    if raised:
        rule = dataclasses.replace(rule, confidence_threshold=max(rule.confidence_threshold, *raised))
        logger.info(
            "'not sure' below %.3f (at most %.0f %% of known photos confidently wrong)",
            rule.confidence_threshold,
            100 * max_confidently_wrong,
        )
    if max_unknown_named is not None:
        logit, without = unknown_thresholds(
            dataclasses.replace(fit, rule=rule), calibration, temperature, max_unknown_named
        )
        if logit is not None:
            rule = dataclasses.replace(rule, logit_threshold=logit, unknown_confidence_threshold=without)
            logger.info(
                "also 'not sure' below logit %.3f (at most %.0f %% of unknown ones named)",
                logit,
                100 * max_unknown_named,
            )
    return rule


def _named(
    rule: OpenSetRule, scores: OpenSetScores, outputs: Outputs, temperature: float
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Which of a set's images ``rule`` names a species (bool ``(N,)``, its logit check skipped), from their open-set
    ``scores``, with their calibrated top-1 confidence and best class (``(N,)`` each)."""
    confidence, predicted = calibrated_probabilities(outputs.logits, temperature).max(1)
    named = np.array([rule.verdict(float(c), *scores.row(i)) == "species" for i, c in enumerate(confidence)])
    return named, confidence, predicted


def raised_confidence_thresholds(
    fit: OpenSetFit, calibration: dict[str, Outputs], temperature: float, max_confidently_wrong: float
) -> list[float]:
    """The "not sure" confidence thresholds that the known photos of ``calibration`` ask for
    (:func:`lowest_confidence_threshold`): at most ``max_confidently_wrong`` of them named wrongly. Only the photos
    that ``fit``'s "not a fish" and "unknown species" checks let through count. Empty without known photos."""
    raised = []
    for name, outputs in calibration.items():
        if set_kind(name) == "known_photos":
            passes, confidence, predicted = _named(
                _without_not_sure(fit.rule), fit.scores(outputs), outputs, temperature
            )
            counted = passes & (predicted != outputs.targets).numpy()
            raised.append(lowest_confidence_threshold(confidence.numpy(), counted, max_confidently_wrong))
    return raised


def unknown_thresholds(
    fit: OpenSetFit, calibration: dict[str, Outputs], temperature: float, max_unknown_named: float
) -> tuple[float | None, float]:
    """What the unknown-species photos of ``calibration`` ask for, each set at most ``max_unknown_named`` named:

    - the lowest threshold on the best class's logit (:func:`model.open_set.lowest_threshold` of each set's, their
      highest) over ``fit.rule``'s other checks; None without such sets or where none need be refused. The maximum
      logit tells the species the network lacks from those it knows better than the calibrated confidence does
      (Hendrycks et al., ICML 2022; EXPERIMENTS.md section 12);
    - the lowest confidence threshold that would do it without the logit check (the "not sure" rule of releases
      before 2026-12-03; their highest, 0 without such sets): what
      :attr:`model.open_set.OpenSetRule.unknown_confidence_threshold` records for heads without network logits.
    """
    logits, confidences = [], [0.0]
    for name, outputs in calibration.items():
        if set_kind(name) == "unknown_photos":
            scores = fit.scores(outputs)
            named, _, _ = _named(fit.rule, scores, outputs, temperature)
            logits.append(lowest_threshold(outputs.logits.max(1).values.numpy(), named, max_unknown_named))
            named, confidence, _ = _named(_without_not_sure(fit.rule), scores, outputs, temperature)
            confidences.append(lowest_confidence_threshold(confidence.numpy(), named, max_unknown_named))
    logit = max(logits, default=-math.inf)
    return (float(logit) if math.isfinite(logit) else None), max(confidences)


def _without_not_sure(rule: OpenSetRule) -> OpenSetRule:
    """``rule`` without its "not sure" checks: the other checks alone."""
    return dataclasses.replace(rule, confidence_threshold=0.0, logit_threshold=None)


#: The grid of :func:`choose_contrast_rule`: taxon-score thresholds from 0 to 0.5 and contrast thresholds from -1 to
#: 1, by 0.005 and 0.01 (the dev sets' scores: EXPERIMENTS.md, "not a fish").
TAXON_GRID = torch.linspace(0.0, 0.5, 101, dtype=torch.float64)
CONTRAST_GRID = torch.linspace(-1.0, 1.0, 201, dtype=torch.float64)


def choose_contrast_rule(
    subject_sets: Sequence[OpenSetScores],
    other_sets: Sequence[OpenSetScores],
    rule: OpenSetRule,
    rejection: float,
) -> tuple[float, float]:
    """The ``(taxon_threshold, contrast_threshold)`` of the hierarchy's test
    (:meth:`model.open_set.OpenSetRule.not_subject`), searched on :data:`TAXON_GRID` x :data:`CONTRAST_GRID`.

    Counting only the pictures that ``rule`` (its subject-score test and novelty threshold) does not already call
    "not a fish": among the pairs that call at most ``rejection`` of each set of the subject's pictures so, the one
    that calls the largest mean fraction of the ``other_sets`` so; ties go to the pair that refuses fewest of the
    subject's pictures, then to the higher contrast and the lower taxon threshold. Without ``other_sets``, the
    highest taxon threshold that passes, with the contrast test off (threshold 1). Where no pair passes, ``(0,
    1)``: the test never fires.

    Args:
        subject_sets: scores (subject, novelty, taxon and other) of each set of the subject's pictures.
        other_sets: scores of each set of pictures that are not of the subject.
        rule: the thresholds chosen so far (subject score, novelty).
        rejection: in [0, 1).

    Raises:
        ValueError: a set without novelty, taxon or other scores.
    """

    def refused_fractions(sets: Sequence[OpenSetScores]) -> torch.Tensor:
        """``(len(sets), taxon grid, contrast grid)``: the fraction of each set that the pair alone refuses."""
        fractions = []
        for scores in sets:
            if scores.novelty is None or scores.taxon is None or scores.other is None:
                raise ValueError("the hierarchy's test needs novelty, taxon and other scores")
            judged = scores.novelty.double() > (rule.judged_above or 0.0)
            if scores.subject is not None and rule.subject_threshold is not None:
                judged &= scores.subject.double() >= rule.subject_threshold  # not refused already
            judged = judged[None, None, :]
            low = scores.taxon.double()[None, None, :] < TAXON_GRID[:, None, None]
            contrast = (scores.other - scores.taxon).double()[None, None, :] > CONTRAST_GRID[None, :, None]
            fractions.append((judged & (low | contrast)).double().mean(2))
        return torch.stack(fractions) if fractions else torch.zeros(0, len(TAXON_GRID), len(CONTRAST_GRID))

    subject_refused = refused_fractions(subject_sets)
    allowed = (subject_refused <= rejection + 1e-12).all(0)
    if not allowed.any():
        logger.warning("no 'not a fish' thresholds refuse at most %.1f %% of each subject set", 100 * rejection)
        return 0.0, 1.0
    if not other_sets:
        return float(TAXON_GRID[int(allowed[:, -1].nonzero().max())]), 1.0
    gain = refused_fractions(other_sets).mean(0)
    cost = subject_refused.mean(0)
    # lexicographic: most of the other pictures refused, fewest of the subject's, higher contrast, lower taxon
    keys = [(float(gain[i, j]), -float(cost[i, j]), j, -i) for i, j in allowed.nonzero().tolist()]
    _, _, j, minus_i = max(keys)
    return float(TAXON_GRID[-minus_i]), float(CONTRAST_GRID[j])
