"""Open-set answers: one of the model's classes, another of its kind, or not its subject at all.

A closed-set classifier always names one of its ``C`` classes. This module turns its outputs into one of four
verdicts (:data:`model.results.VERDICTS`), with three scores, each compared with a threshold that
``train.py`` chooses on validation data and records in the checkpoint (``serving``):

``subject_score``  How much the picture looks like the training data's subject (fish, flowers, ...), from the
                   network's *pretrained ImageNet classifier*, kept beside the new head (and kept working during
                   fine-tuning by distillation, "Learning without Forgetting", Li & Hoiem 2016): the ImageNet
                   probability mass of the subject's ImageNet classes. Those classes come from the training data
                   (:func:`subject_classes`: for reef-fish crops, fish, coral reef, scuba diver...), so it works
                   for any subject, not only fish.
``taxon_score``,   Where ``--subject`` names a WordNet noun with ImageNet classes under it
``other_score``    (:mod:`model.imagenet_hierarchy`), the mass of those classes (the 16 fish classes) and of the
                   other living things (394 classes: coral, sea anemones, jellyfish, starfish, crabs, turtles...).
                   See :meth:`OpenSetRule.not_subject` for how the three scores say ``not_a_fish``.
``novelty``        Squared Mahalanobis distance of the image's penultimate features to the nearest class mean,
                   with one covariance shared by all classes (Lee et al., "A Simple Unified Framework for
                   Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018). Above its
                   threshold: ``unknown_species``.
``confidence``     The calibrated softmax probability of the best class (temperature scaling). Below its
                   threshold: ``not_sure``.
``max_logit``      The best class's logit before the softmax (Hendrycks et al., ICML 2022): how strongly the
                   picture matches any known class. Below its threshold (releases from 2026-12-03): also
                   ``not_sure``; a look-alike of another species often matches every known one weakly.

The checks run in that order: a picture that is not of the subject is never called an unknown species.

Measured on the dev sets (EXPERIMENTS.md, "not a fish"): the subject score alone lets most underwater pictures
without fish through (its classes include coral reef and sea creatures), and ImageNet's classes see
Fish4Knowledge's murky video crops as something other than fish about as often as they see a sea anemone as a fish.
So the hierarchy's test only judges pictures that are also unlike the training images (novelty above a gate of
its own, chosen at release: :attr:`OpenSetRule.judged_above`): the video crops pass, and among the pictures unlike
them, sea life without fish is told from fish of other species.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Fraction of the training images' mean ImageNet probability that the subject's classes cover
#: (:func:`subject_classes`). Measured on Fish4Knowledge with fine-tuned EfficientNet-Lite0 (EXPERIMENTS.md, the
#: `photo` run): 0.5 gives 6 classes, too few to tell flowers from fish photos (81 % of flowers below a 0.1 score,
#: 16 % of clownfish photos); 0.8 gives 130 classes, and with the other two checks 2.5 % of flowers are named a
#: species (the default model: 112 classes, 0.6 %).
DEFAULT_SUBJECT_COVERAGE = 0.8
#: Ridge added to the shared covariance, as a fraction of its mean eigenvalue, so that it can be inverted.
COVARIANCE_SHRINKAGE = 0.01


@dataclass(frozen=True)
class OpenSetRule:
    """Thresholds that turn scores into a verdict; recorded in a checkpoint's ``serving`` record.

    Attributes:
        confidence_threshold: calibrated top-1 probability below which the answer is ``not_sure``; in [0, 1].
        subject_threshold: ``subject_score`` below which the answer is ``not_a_fish``, or None (no check).
        novelty_threshold: ``novelty`` above which the answer is ``unknown_species``, or None (no check).
        subject: a noun for the subject, e.g. ``"fish"``, for messages; None when the checkpoint has none.
        taxon_threshold: with the ImageNet hierarchy, ``taxon_score`` below which a picture unlike the training
            images is ``not_a_fish``; in [0, 1], or None (releases before the hierarchy).
        contrast_threshold: with the ImageNet hierarchy, ``other_score - taxon_score`` above which a picture
            unlike the training images is ``not_a_fish``; in [-1, 1], or None. See :meth:`not_subject`.
        hierarchy_novelty_threshold: the ``novelty`` above which a picture counts as unlike the training images for
            the hierarchy's test; None: ``novelty_threshold`` (releases before 2026-12-03).
        logit_threshold: the best class's *uncalibrated* logit below which the answer is also ``not_sure``: how
            strongly the features match any known class, which the softmax normalises away (the maximum-logit
            score of Hendrycks et al., ICML 2022; EXPERIMENTS.md section 12); None: no such check.
        unknown_confidence_threshold: with ``logit_threshold``, the calibrated confidence that would keep as few of
            the unknown-species photos named without the logit check (the rule of earlier releases): what a head
            that has no network logits (a corrections memory, :mod:`model.memory`) is held to
            (:attr:`confidence_threshold_without_logit`); in [0, 1], or None.

    Raises:
        ValueError: a threshold out of range (confidence, subject and taxon in [0, 1], novelty >= 0 and finite,
            contrast in [-1, 1]).
    """

    confidence_threshold: float = 0.0
    subject_threshold: float | None = None
    novelty_threshold: float | None = None
    subject: str | None = None
    taxon_threshold: float | None = None
    contrast_threshold: float | None = None
    hierarchy_novelty_threshold: float | None = None
    logit_threshold: float | None = None
    unknown_confidence_threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"confidence threshold must be in [0, 1], got {self.confidence_threshold}")
        if self.subject_threshold is not None and not 0.0 <= self.subject_threshold <= 1.0:
            raise ValueError(f"subject threshold must be in [0, 1], got {self.subject_threshold}")
        for name in ("novelty_threshold", "hierarchy_novelty_threshold"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name.replace('_', ' ')} must be a finite number >= 0, got {value}")
        if self.logit_threshold is not None and not math.isfinite(self.logit_threshold):
            raise ValueError(f"logit threshold must be a finite number, got {self.logit_threshold}")
        if self.unknown_confidence_threshold is not None and not 0.0 <= self.unknown_confidence_threshold <= 1.0:
            raise ValueError(f"unknown confidence threshold must be in [0, 1], got {self.unknown_confidence_threshold}")
        if self.taxon_threshold is not None and not 0.0 <= self.taxon_threshold <= 1.0:
            raise ValueError(f"taxon threshold must be in [0, 1], got {self.taxon_threshold}")
        if self.contrast_threshold is not None and not -1.0 <= self.contrast_threshold <= 1.0:
            raise ValueError(f"contrast threshold must be in [-1, 1], got {self.contrast_threshold}")

    @property
    def confidence_threshold_without_logit(self) -> float:
        """The "not sure" confidence threshold for answers that have no network logit to check (a corrections
        memory's head): the higher of ``confidence_threshold`` and ``unknown_confidence_threshold``."""
        return max(self.confidence_threshold, self.unknown_confidence_threshold or 0.0)

    @property
    def judged_above(self) -> float | None:
        """The novelty above which the hierarchy's test judges a picture: ``hierarchy_novelty_threshold``, else
        ``novelty_threshold``; None: every picture."""
        return self.novelty_threshold if self.hierarchy_novelty_threshold is None else self.hierarchy_novelty_threshold

    def not_subject(
        self,
        subject_score: float | None,
        novelty: float | None = None,
        taxon_score: float | None = None,
        other_score: float | None = None,
    ) -> bool:
        """Whether a picture is not of the subject (``not_a_fish``): either test says so.

        1. ``subject_score < subject_threshold``, whatever the novelty (flowers, cats, text: nothing like the
           training data's ImageNet classes).
        2. With the hierarchy's thresholds, for a picture unlike the training images (``novelty`` above
           :attr:`judged_above`, where both are known): little of the subject's taxon (``taxon_score <
           taxon_threshold``) or clearly another living thing (``other_score - taxon_score >
           contrast_threshold``): a sea anemone, a coral, a turtle.

        A score that is None skips the test that needs it.
        """
        if self.subject_threshold is not None and subject_score is not None and subject_score < self.subject_threshold:
            return True
        if self.taxon_threshold is None or taxon_score is None:
            return False
        judged_above = self.judged_above
        if novelty is not None and judged_above is not None and novelty <= judged_above:
            return False
        if taxon_score < self.taxon_threshold:
            return True
        return (
            self.contrast_threshold is not None
            and other_score is not None
            and other_score - taxon_score > self.contrast_threshold
        )

    def verdict(
        self,
        confidence: float,
        subject_score: float | None = None,
        novelty: float | None = None,
        taxon_score: float | None = None,
        other_score: float | None = None,
        *,
        max_logit: float | None = None,
    ) -> str:
        """The verdict for one image: ``"not_a_fish"`` (:meth:`not_subject`), ``"unknown_species"``,
        ``"not_sure"`` (the calibrated ``confidence`` below its threshold, or the best class's uncalibrated
        ``max_logit`` below its) or ``"species"``, checked in that order. A score that is None skips its check."""
        if self.not_subject(subject_score, novelty, taxon_score, other_score):
            return "not_a_fish"
        if self.novelty_threshold is not None and novelty is not None and novelty > self.novelty_threshold:
            return "unknown_species"
        if confidence < self.confidence_threshold:
            return "not_sure"
        if self.logit_threshold is not None and max_logit is not None and max_logit < self.logit_threshold:
            return "not_sure"
        return "species"

    def thresholds(self) -> dict[str, float | None]:
        """``{"not_sure": ..., "not_sure_logit": ..., "unknown_species": ..., "not_a_fish": ...,
        "not_a_fish_taxon": ..., "not_a_fish_contrast": ..., "not_a_fish_novelty": ...}``, None where a check is
        off (``not_a_fish_novelty``: :attr:`judged_above`, where the hierarchy's test is on)."""
        return {
            "not_sure": self.confidence_threshold,
            "not_sure_logit": self.logit_threshold,
            "unknown_species": self.novelty_threshold,
            "not_a_fish": self.subject_threshold,
            "not_a_fish_taxon": self.taxon_threshold,
            "not_a_fish_contrast": self.contrast_threshold,
            "not_a_fish_novelty": self.judged_above if self.taxon_threshold is not None else None,
        }


def lowest_threshold(scores: np.ndarray, counted: np.ndarray, max_fraction: float) -> float:
    """The lowest threshold on a score at which at most ``max_fraction`` of a set's images are both ``counted`` and
    scored at or above it (named where they should not be).

    Args:
        scores: float ``(N,)``, higher meaning surer (a calibrated probability, a logit...).
        counted: bool ``(N,)``: the images that must not be named.
        max_fraction: in [0, 1].

    Returns:
        Just above the score of the ``floor(max_fraction * N) + 1``-th highest counted image; ``-inf`` when few
        enough are counted at any score.
    """
    allowed = int(np.floor(max_fraction * len(scores)))
    counted_scores = np.sort(scores[counted])[::-1]
    if len(counted_scores) <= allowed:
        return -math.inf
    # above the (allowed + 1)-th highest counted score, only `allowed` of them remain
    return float(np.nextafter(counted_scores[allowed], np.inf))


def lowest_confidence_threshold(confidence: np.ndarray, counted: np.ndarray, max_fraction: float) -> float:
    """:func:`lowest_threshold` of calibrated top-1 probabilities, as a confidence threshold in [0, 1].

    Args:
        confidence: float ``(N,)`` calibrated top-1 probabilities.
        counted: bool ``(N,)``: the images that must not be named: the known photos that pass the other checks and
            whose best class is wrong, or the unknown-species photos that pass them.
        max_fraction: in [0, 1].

    Returns:
        A threshold in [0, 1]: 0 when few enough are counted at any confidence.
    """
    return float(min(1.0, max(0.0, lowest_threshold(confidence, counted, max_fraction))))


def subject_classes(imagenet_probabilities: torch.Tensor, coverage: float = DEFAULT_SUBJECT_COVERAGE) -> list[int]:
    """The ImageNet classes that describe the training data's subject.

    The fewest classes whose mean probability over the training images adds up to ``coverage``: for reef-fish
    video crops these are fish, "coral reef", "dugong" and the like; for flower photos, flowers and "pot".

    Args:
        imagenet_probabilities: float ``(N, 1000)`` softmax outputs of the pretrained ImageNet classifier on
            (un-augmented) training images.
        coverage: in (0, 1].

    Returns:
        Sorted class indices.

    Raises:
        ValueError: ``coverage`` outside (0, 1] or no images.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    if imagenet_probabilities.ndim != 2 or len(imagenet_probabilities) == 0:
        raise ValueError("need a non-empty (N, classes) tensor of probabilities")
    mean = imagenet_probabilities.double().mean(0)
    order = torch.argsort(mean, descending=True)
    cumulative = torch.cumsum(mean[order], 0) / mean.sum()
    count = int(torch.searchsorted(cumulative, torch.tensor(coverage - 1e-6, dtype=torch.double)))
    return sorted(int(i) for i in order[: count + 1])


def subject_score(imagenet_logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """ImageNet probability mass of ``classes``: float ``(N,)`` in [0, 1] from float ``(N, 1000)`` logits."""
    return torch.softmax(imagenet_logits.float(), dim=1)[:, list(classes)].sum(1)


@dataclass
class ClassGaussians:
    """Class means and one shared covariance of penultimate features, for :meth:`novelty` (Lee et al. 2018).

    Attributes:
        means: float32 ``(C, D)``.
        precision: float32 ``(D, D)``, the inverse of the shared covariance (with shrinkage).
    """

    means: torch.Tensor
    precision: torch.Tensor

    def __post_init__(self) -> None:
        # m^T P m of every class: fixed, so computed once rather than on every call of novelty()
        self._means_term = ((self.means @ self.precision) * self.means).sum(1)

    @classmethod
    def fit(cls, features: torch.Tensor, targets: torch.Tensor, num_classes: int) -> ClassGaussians:
        """Fit on training features ``(N, D)`` float and integer targets ``(N,)``.

        Raises:
            ValueError: a class without features, or shapes that disagree.
        """
        if features.ndim != 2 or targets.shape != (len(features),):
            raise ValueError(f"need (N, D) features and (N,) targets, got {tuple(features.shape)}, {targets.shape}")
        features = features.double()
        counts = torch.bincount(targets, minlength=num_classes)
        if int(counts.min()) == 0:
            raise ValueError(f"every class needs features; counts {counts.tolist()}")
        means = torch.zeros(num_classes, features.shape[1], dtype=torch.double).index_add_(0, targets, features)
        means /= counts[:, None]
        centred = features - means[targets]
        covariance = centred.T @ centred / len(features)
        ridge = COVARIANCE_SHRINKAGE * covariance.diagonal().mean()
        covariance += ridge * torch.eye(len(covariance), dtype=torch.double)
        return cls(means.float(), torch.linalg.inv(covariance).float())

    def novelty(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance to the nearest class mean: float ``(N,)`` >= 0 from ``(N, D)`` features."""
        features = features.float()
        # (x - m)^T P (x - m) = x^T P x - 2 m^T P x + m^T P m, for all classes at once
        projected = features @ self.precision
        own = (projected * features).sum(1, keepdim=True)
        cross = projected @ self.means.T
        return (own - 2 * cross + self._means_term).min(1).values.clamp_min(0)

    def to_dict(self) -> dict[str, Any]:
        """Tensors for a checkpoint: ``{"means", "precision"}``."""
        return {"means": self.means.contiguous(), "precision": self.precision.contiguous()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassGaussians:
        """Inverse of :meth:`to_dict` (float16 tensors are widened to float32)."""
        return cls(d["means"].float(), d["precision"].float())


class OpenSetScores(NamedTuple):
    """The open-set scores of a batch, each float ``(N,)`` or None where the model has no such score.

    Attributes:
        subject: ImageNet probability mass of the subject's classes (from the training data), in [0, 1].
        novelty: squared Mahalanobis distance to the nearest class mean, >= 0.
        taxon: ImageNet probability mass of the classes under the subject's WordNet noun, in [0, 1].
        other: ImageNet probability mass of the other living things, in [0, 1].
    """

    subject: torch.Tensor | None
    novelty: torch.Tensor | None
    taxon: torch.Tensor | None = None
    other: torch.Tensor | None = None

    def row(self, index: int) -> tuple[float | None, float | None, float | None, float | None]:
        """``(subject, novelty, taxon, other)`` of one image as floats (None where absent), in the order
        :meth:`OpenSetRule.verdict` takes them after the confidence."""
        return tuple(float(s[index]) if s is not None else None for s in self)  # type: ignore[return-value]


@dataclass(frozen=True)
class HierarchyClasses:
    """The ImageNet classes of the hierarchy's test (:func:`model.imagenet_hierarchy.subject_classes_for`).

    Attributes:
        taxon: classes under the subject's WordNet noun (the 16 fish classes).
        other: classes of the other living things.
    """

    taxon: list[int]
    other: list[int]

    def to_dict(self) -> dict[str, list[int]]:
        """``{"taxon": [...], "other": [...]}`` for a checkpoint's ``open_set`` record."""
        return {"taxon": list(self.taxon), "other": list(self.other)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> HierarchyClasses | None:
        """Inverse of :meth:`to_dict`; None for None (releases before the hierarchy)."""
        return cls(list(d["taxon"]), list(d["other"])) if d else None


def open_set_scores(
    features: torch.Tensor,
    imagenet_logits: torch.Tensor,
    subject_classes: Sequence[int] | None,
    gaussians: ClassGaussians | None,
    hierarchy: HierarchyClasses | None = None,
) -> OpenSetScores:
    """The :class:`OpenSetScores` of a batch's outputs, float ``(N, D)`` features and ``(N, 1000)`` ImageNet
    logits; None where the model has no such score (no subject classes, no class Gaussians, no hierarchy). The
    one computation, for serving (``Predictor``) and for choosing the thresholds at release
    (``training.open_set``)."""
    novelty = gaussians.novelty(features) if gaussians is not None else None
    if not imagenet_logits.shape[1]:
        return OpenSetScores(None, novelty)
    probabilities = torch.softmax(imagenet_logits.float(), dim=1)  # once, for every mass below

    def mass(classes: Sequence[int] | None) -> torch.Tensor | None:
        return probabilities[:, list(classes)].sum(1) if classes else None

    return OpenSetScores(
        mass(subject_classes),
        novelty,
        mass(hierarchy.taxon if hierarchy else None),
        mass(hierarchy.other if hierarchy else None),
    )


def set_kind(name: str) -> str:
    """The kind of a set in a release's verdict report (``metrics["open_set"]``: ``"val"``, ``"known_photos"``,
    ``"unknown_photos"``, ``"not_subject"``), from its name, which a second folder of a kind follows with ``:`` and
    the folder: ``"not_subject:reef_photos/not_fish"`` -> ``"not_subject"``. Written by ``training.open_set``, read
    by the model page."""
    return name.partition(":")[0]


class OpenSetNetwork(torch.nn.Module):
    """A classifier seen with its penultimate features and, when it has one, its pretrained ImageNet head.

    The features are the input of the classifier module (:func:`model.network.classifier_name`: the pooled
    features for a linear head), captured with a forward pre-hook, so any torchvision or timm model works
    unchanged; the ImageNet logits are :func:`model.network.pretrained_head` applied to those features, or, for a
    network with a shared trunk (:mod:`model.shared_trunk`), its pretrained tail applied to the trunk's output
    (captured with a forward hook on the trunk's last module).

    ``forward(images)`` maps float32 ``(N, 3, S, S)`` to ``(logits (N, C), features (N, D), imagenet_logits
    (N, 1000) or (N, 0) when the model keeps no pretrained head)``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        from model.network import classifier_name, pretrained_head
        from model.shared_trunk import pretrained_tail

        self.model = model
        self.imagenet_head = pretrained_head(model)
        self.imagenet_tail = pretrained_tail(model)
        self._captured = threading.local()  # per calling thread: concurrent forwards never mix features
        classifier = model.get_submodule(classifier_name(model))
        self._hook = classifier.register_forward_pre_hook(self._capture)
        if self.imagenet_tail is not None:
            model.get_submodule(self.imagenet_tail.split).register_forward_hook(self._capture_trunk)

    def _capture(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._captured.features = inputs[0]

    def _capture_trunk(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._captured.trunk = output

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        features, self._captured.features = getattr(self._captured, "features", None), None
        trunk, self._captured.trunk = getattr(self._captured, "trunk", None), None
        if features is None:
            raise RuntimeError("the classifier's input was not captured")
        features = features.flatten(1)
        if self.imagenet_tail is not None:
            if trunk is None:
                raise RuntimeError("the shared trunk's output was not captured")
            return logits, features, self.imagenet_tail(trunk)
        if self.imagenet_head is None:
            return logits, features, features[:, :0]
        return logits, features, self.imagenet_head(features)


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """Knowledge-distillation loss ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean
    (Hinton et al. 2015; as "Learning without Forgetting" uses it to keep the old task's outputs, Li & Hoiem 2016,
    with T = 2). Logits are float ``(N, K)``; returns a scalar."""
    student = torch.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = torch.log_softmax(teacher_logits.float() / temperature, dim=1)
    return torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2
