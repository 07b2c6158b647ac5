"""Learning from the users' reviewed corrections without retraining: a corrections *memory* served beside the network.

A memory is a linear head over the network's L2-normalised penultimate features, refitted on the checkpoint's
training features plus the accepted corrections: a class-balanced logistic regression (scikit-learn), the same
model and penalty (``C`` = 4) as the shipped head's refit (``training.refit``, "LP after FT"). Its labels are the
checkpoint's classes, then the new species that corrections name, then the open-set labels they teach
(:data:`UNKNOWN_LABEL`, "a fish, but not one of these species"; :data:`NOT_FISH_LABEL`). The network, its open-set
statistics and the ImageNet head are untouched; the predictor applies the memory to the features it already
computes (:meth:`CorrectionMemory.logits`), on any backend.

Weights (measured by ``tools/simulate_corrections.py``, README "Corrections"): within each label, the users' photos
weigh as much as the training crops ("domain-balanced"): with plain class balance, 30 accepted photos of Clark's
anemonefish among its 280 training crops moved the other Clark's photos' top-1 from 81.7 to 79.2 %; domain-balanced,
to 90.0 %. Then each label weighs the same (scikit-learn's ``class_weight="balanced"`` rule).

Before a memory is served it is judged (:meth:`MemoryBuilder.build`, the gate) on the checkpoint's validation features
(its macro-F1 may drop by at most :data:`MAX_F1_DROP`) and on the corrections held out in turn (``FOLDS``-fold:
each fold's answers come from a memory fitted without it; the memory must answer at least as many of them right as
the network alone). The same cross-validated answers choose its "not sure" threshold: the lowest at which at most
:data:`MAX_CONFIDENTLY_WRONG` of the held-out corrections are named a species that is not theirs, never below
:data:`MIN_CONFIDENCE_THRESHOLD` (0.5) nor above the checkpoint's own for a head without the network's logits
(:attr:`model.open_set.OpenSetRule.confidence_threshold_without_logit`: the memory's head has none, so the
release's logit check cannot apply to it).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.heads import fit_logistic_regression
from model.open_set import OpenSetRule, lowest_confidence_threshold

logger = logging.getLogger(__name__)

#: Label of a correction that says "a fish, but not one of these species" (verdict ``unknown_species``).
UNKNOWN_LABEL = "unknown_species"
#: Label of a correction that says "not a fish" (verdict ``not_a_fish``).
NOT_FISH_LABEL = "not_a_fish"
#: The open-set labels, in the order a memory lists them after the species.
OPEN_SET_LABELS = (UNKNOWN_LABEL, NOT_FISH_LABEL)
#: The logistic regression's inverse L2 penalty: the shipped head's refit (``training.refit.DEFAULT_C``).
DEFAULT_C = 4.0
#: Largest drop of the validation macro-F1 a memory may cost (issue 19's bound) before the gate refuses it.
MAX_F1_DROP = 0.005
#: Largest fraction of held-out corrections a memory may name as a species that is not theirs (its "not sure"
#: threshold is raised until so; the bound the release step uses for known-species photos).
MAX_CONFIDENTLY_WRONG = 0.05
#: Lowest "not sure" threshold a memory gets, however few of its held-out corrections are wrong: a species is named
#: only when it is more probable than all the other labels together. Measured (``tools/simulate_corrections.py``, 3
#: random halves): without it a memory of 10 photos per label got a threshold of 0 in one half of three, and named
#: 18 % of other reef fish as ours (14.6 % with it); the means at k = 10 went from 10.2 to 8.8 % of reef fish named
#: ours, 62.8 to 61.9 % of pink skunk clownfish named right.
MIN_CONFIDENCE_THRESHOLD = 0.5
#: Folds of the gate's cross-validation over the corrections.
FOLDS = 5
#: Accepted photos a label not among the classes needs before it becomes a new species of the memory.
MIN_NEW_SPECIES = 3


class CorrectionMemoryError(ValueError):
    """A memory cannot be built or read: no base features, bad corrections, a corrupt blob."""


def normalize(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """Rows scaled to unit L2 norm: float32 ``(N, D)`` numpy from float ``(N, D)`` features (zero rows stay 0)."""
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    x = x.astype(np.float32, copy=False)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Correction:
    """One accepted correction as the memory learns from it.

    Attributes:
        label: a class name, a new species' scientific name, :data:`UNKNOWN_LABEL` or :data:`NOT_FISH_LABEL`.
        features: float32 ``(D,)`` penultimate features of the (cropped) photo, as the network gave them.
        scores: the photo's open-set scores ``(subject, novelty, taxon, other)`` (:class:`OpenSetScores` rows),
            for the gate's verdicts; None where they were not recorded (the gate then skips those tests).
    """

    label: str
    features: np.ndarray
    scores: tuple[float | None, float | None, float | None, float | None] | None = None


@dataclass(frozen=True)
class BaseFeatures:
    """A checkpoint's training and validation features: what a memory is fitted with and judged on.

    Attributes:
        train: float32 ``(N, D)`` L2-normalised features of the un-augmented training images.
        train_targets: int64 ``(N,)`` class indices.
        val: float32 ``(M, D)`` L2-normalised validation features; val_targets: int64 ``(M,)``.
    """

    train: np.ndarray
    train_targets: np.ndarray
    val: np.ndarray
    val_targets: np.ndarray

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` file: each row as int8 times a float32 scale (a quarter of float32's size; the
        rows are unit vectors, so the error is below 0.4 % of the largest component)."""
        arrays: dict[str, np.ndarray] = {"train_targets": self.train_targets, "val_targets": self.val_targets}
        for name in ("train", "val"):
            rows = normalize(getattr(self, name))
            scale = np.maximum(np.abs(rows).max(1, keepdims=True), 1e-12) / 127.0
            arrays[f"{name}_q"] = np.round(rows / scale).astype(np.int8)
            arrays[f"{name}_scale"] = scale.astype(np.float32)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> BaseFeatures:
        """Read :meth:`save`'s file.

        Raises:
            CorrectionMemoryError: the file is missing or not such a file.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                rows = {n: data[f"{n}_q"].astype(np.float32) * data[f"{n}_scale"] for n in ("train", "val")}
                return cls(
                    normalize(rows["train"]),
                    data["train_targets"].astype(np.int64),
                    normalize(rows["val"]),
                    data["val_targets"].astype(np.int64),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise CorrectionMemoryError(f"cannot read the base features {path}: {exc}") from exc


def features_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's :class:`BaseFeatures` live: beside it, ``<name>.features.npz``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".features.npz")


@dataclass(frozen=True)
class CorrectionMemory:
    """A head refitted with the accepted corrections (see the module docstring), as the predictor serves it.

    Attributes:
        labels: the checkpoint's class names (in its order), then new species, then open-set labels.
        weight: float32 ``(K, D)``; bias: float32 ``(K,)``; logits are ``normalize(features) @ weight.T + bias``.
        confidence_threshold: the "not sure" threshold while this memory is served, in [0, 1].
        num_classes: how many of ``labels`` are the checkpoint's classes.
        counts: accepted corrections per label.
        report: the gate's numbers (:meth:`MemoryBuilder.build`).
    """

    labels: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray
    confidence_threshold: float
    num_classes: int
    counts: dict[str, int] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def new_species(self) -> list[str]:
        """The species it learnt that the checkpoint lacks."""
        return [label for label in self.labels[self.num_classes :] if label not in OPEN_SET_LABELS]

    @property
    def species_columns(self) -> list[int]:
        """Indices of :attr:`labels` that are species (known or new), not open-set labels."""
        return [i for i, label in enumerate(self.labels) if label not in OPEN_SET_LABELS]

    def logits(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Logits over :attr:`labels`: float32 ``(N, K)`` from float ``(N, D)`` penultimate features."""
        return torch.from_numpy(normalize(features) @ self.weight.T + self.bias)

    def to_bytes(self) -> bytes:
        """The memory as an ``.npz`` blob (no pickle), for the database."""
        buffer = io.BytesIO()
        meta = {
            "labels": list(self.labels),
            "confidence_threshold": self.confidence_threshold,
            "num_classes": self.num_classes,
            "counts": self.counts,
            "report": self.report,
        }
        np.savez_compressed(buffer, weight=self.weight, bias=self.bias, meta=np.array(json.dumps(meta)))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> CorrectionMemory:
        """Inverse of :meth:`to_bytes`.

        Raises:
            CorrectionMemoryError: not a memory blob.
        """
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                return cls(
                    tuple(meta["labels"]),
                    data["weight"].astype(np.float32),
                    data["bias"].astype(np.float32),
                    float(meta["confidence_threshold"]),
                    int(meta["num_classes"]),
                    dict(meta["counts"]),
                    dict(meta["report"]),
                )
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise CorrectionMemoryError(f"not a corrections memory: {exc}") from exc


def memory_labels(class_names: Sequence[str], corrections: Sequence[Correction]) -> tuple[list[str], list[str]]:
    """The labels a memory of ``corrections`` has, and those it leaves out.

    Returns:
        ``(labels, waiting)``: the class names, then each new species with at least :data:`MIN_NEW_SPECIES`
        corrections (sorted), then the open-set labels that corrections name; ``waiting`` the new species with
        fewer (their corrections are left out until they have enough).
    """
    counts = Counter(c.label for c in corrections)
    known = set(class_names) | set(OPEN_SET_LABELS)
    new = sorted(label for label in counts if label not in known)
    ready = [label for label in new if counts[label] >= MIN_NEW_SPECIES]
    open_set = [label for label in OPEN_SET_LABELS if counts[label]]
    return [*class_names, *ready, *open_set], [label for label in new if label not in ready]


def sample_weights(targets: np.ndarray, from_users: np.ndarray) -> np.ndarray:
    """Domain-balanced, then class-balanced sample weights: float64 ``(N,)`` for int ``(N,)`` targets and bool
    ``(N,)`` ``from_users`` (a correction rather than a training image). Within a label the corrections weigh as
    much as the training images, then every label weighs ``N / labels`` (scikit-learn's "balanced")."""
    weights = np.ones(len(targets))
    labels = np.unique(targets)
    for label in labels:
        rows = targets == label
        users, crops = rows & from_users, rows & ~from_users
        if users.any() and crops.any():
            weights[users] = crops.sum() / users.sum()
        weights[rows] *= len(targets) / (len(labels) * weights[rows].sum())
    return weights


def fit_head(
    base: BaseFeatures, labels: Sequence[str], corrections: Sequence[Correction], c: float = DEFAULT_C
) -> tuple[np.ndarray, np.ndarray]:
    """The memory's head: ``(weight (K, D), bias (K,))`` float32 over ``labels`` (:func:`memory_labels`), a
    logistic regression on the training features plus the corrections whose label is among ``labels``.

    Raises:
        CorrectionMemoryError: a correction's features do not have the training features' dimension.
    """
    index = {label: i for i, label in enumerate(labels)}
    used = [c_ for c_ in corrections if c_.label in index]
    dim = base.train.shape[1]
    if any(c_.features.shape != (dim,) for c_ in used):
        raise CorrectionMemoryError(f"corrections' features must have {dim} values, as the checkpoint's")
    added = np.stack([c_.features for c_ in used]) if used else np.zeros((0, dim), np.float32)
    x = np.concatenate([base.train, normalize(added)])
    y = np.concatenate([base.train_targets, np.array([index[c_.label] for c_ in used], dtype=np.int64)])
    from_users = np.arange(len(y)) >= len(base.train)
    classes, coef, intercept = fit_logistic_regression(
        x.astype(np.float64), y, c, sample_weight=sample_weights(y, from_users)
    )
    weight = np.zeros((len(labels), dim), np.float32)
    # a label no row has (one held out with all its corrections by the gate's folds) is never the answer
    bias = np.full(len(labels), -1e4, np.float32)
    weight[classes] = coef
    bias[classes] = intercept
    return weight, bias


def verdict_for(
    probabilities: np.ndarray,
    labels: Sequence[str],
    rule: OpenSetRule,
    scores: tuple[float | None, float | None, float | None, float | None] | None,
) -> tuple[str, int]:
    """One picture's verdict over a memory's labels, and its most probable species (an index of ``labels``).

    The most probable label decides first: an open-set label gives its verdict (``unknown_species``,
    ``not_a_fish``); a species goes through ``rule`` (:meth:`OpenSetRule.verdict`: the "not a fish" tests, novelty,
    then the confidence threshold) with its probability. ``probabilities``: float ``(K,)`` calibrated, over
    ``labels``; ``scores``: the picture's ``(subject, novelty, taxon, other)``, or None to skip those tests.
    """
    species = [i for i, label in enumerate(labels) if label not in OPEN_SET_LABELS]
    best_species = max(species, key=lambda i: probabilities[i])
    best = int(np.argmax(probabilities))
    if labels[best] in OPEN_SET_LABELS:
        return labels[best], best_species
    return rule.verdict(float(probabilities[best_species]), *(scores or (None,) * 4)), best_species


def is_right(verdict: str, answer: str, label: str) -> bool:
    """Whether a verdict and named species (``answer``) are what a correction's ``label`` says."""
    if label in OPEN_SET_LABELS:
        return verdict == label
    return verdict == "species" and answer == label


def _folds(corrections: Sequence[Correction]) -> np.ndarray:
    """Fold of each correction, ``(N,)`` int: round robin within each label, so every fold holds every label."""
    folds = np.zeros(len(corrections), dtype=np.int64)
    seen: Counter[str] = Counter()
    for i, correction in enumerate(corrections):
        folds[i] = seen[correction.label] % FOLDS
        seen[correction.label] += 1
    return folds


@dataclass
class MemoryBuilder:
    """Builds and judges memories for one checkpoint (see the module docstring).

    Attributes:
        base: the checkpoint's :class:`BaseFeatures`.
        class_names: the checkpoint's classes, in order.
        temperature: the checkpoint's softmax temperature (the memory's head is the same kind of head as the
            shipped refit, so its logits are calibrated at the same temperature).
        rule: the checkpoint's open-set rule (its thresholds).
        c: the logistic regression's inverse penalty.
    """

    base: BaseFeatures
    class_names: list[str]
    temperature: float
    rule: OpenSetRule
    c: float = DEFAULT_C
    _base_head: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def base_head(self) -> tuple[np.ndarray, np.ndarray]:
        """The head refitted on the training features alone (the network's own answers, as the gate compares
        them; fitted once)."""
        if self._base_head is None:
            self._base_head = fit_head(self.base, self.class_names, [], self.c)
        return self._base_head

    def probabilities(self, head: tuple[np.ndarray, np.ndarray], features: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``head`` for float ``(N, D)`` features: ``(N, K)``, by the predictor's one
        formula (:func:`model.predictor.calibrated_probabilities`), as the memory will be served."""
        from model.predictor import calibrated_probabilities  # model.predictor imports this module

        weight, bias = head
        logits = torch.from_numpy(normalize(features) @ weight.T + bias)
        return calibrated_probabilities(logits, self.temperature).numpy()

    def val_macro_f1(self, head: tuple[np.ndarray, np.ndarray]) -> float:
        """Macro-F1 over the checkpoint's classes on the validation features (a new or open-set label is wrong)."""
        from sklearn.metrics import f1_score  # imported here, as in fit_head

        predicted = self.probabilities(head, self.base.val).argmax(1)
        classes = list(range(len(self.class_names)))
        return float(f1_score(self.base.val_targets, predicted, labels=classes, average="macro", zero_division=0))

    def held_out(self, labels: list[str], used: Sequence[Correction]) -> np.ndarray:
        """Cross-validated probabilities ``(N, K)`` of ``used``: each fold's from a memory fitted without it."""
        folds = _folds(used)
        features = np.stack([c.features for c in used])
        probabilities = np.zeros((len(used), len(labels)))
        for fold in np.unique(folds):
            kept = [c for c, f in zip(used, folds, strict=True) if f != fold]
            head = fit_head(self.base, labels, kept, self.c)
            probabilities[folds == fold] = self.probabilities(head, features[folds == fold])
        return probabilities

    def choose_threshold(self, labels: list[str], used: Sequence[Correction], probabilities: np.ndarray) -> float:
        """The memory's "not sure" threshold: the lowest at which at most :data:`MAX_CONFIDENTLY_WRONG` of the
        held-out corrections are named a species not theirs (with the other tests as served), never below
        :data:`MIN_CONFIDENCE_THRESHOLD` nor above the checkpoint's own for a head without the network's logits."""
        rule = dataclasses.replace(self.rule, confidence_threshold=0.0)
        confidence, counted = np.zeros(len(used)), np.zeros(len(used), dtype=bool)
        for i, correction in enumerate(used):
            verdict, best = verdict_for(probabilities[i], labels, rule, correction.scores)
            confidence[i] = probabilities[i][best]
            counted[i] = verdict == "species" and labels[best] != correction.label
        lowest = lowest_confidence_threshold(confidence, counted, MAX_CONFIDENTLY_WRONG)
        return min(max(lowest, MIN_CONFIDENCE_THRESHOLD), self.rule.confidence_threshold_without_logit)

    def right(self, labels: list[str], used: Sequence[Correction], probabilities: np.ndarray, threshold: float) -> int:
        """How many of ``used`` the answers (``probabilities`` over ``labels``, at ``threshold``) get right."""
        rule = dataclasses.replace(self.rule, confidence_threshold=threshold)
        count = 0
        for i, correction in enumerate(used):
            verdict, best = verdict_for(probabilities[i], labels, rule, correction.scores)
            count += is_right(verdict, labels[best], correction.label)
        return count

    def build(self, corrections: Sequence[Correction]) -> tuple[CorrectionMemory | None, dict[str, Any]]:
        """A memory of the accepted ``corrections`` and the gate's report.

        Returns:
            ``(memory, report)``: ``memory`` None when there is nothing to learn or the gate refuses it;
            ``report`` (JSON-ready) gives ``served``, ``reason`` (why it was refused, or None), ``corrections``
            (used), ``counts`` per label, ``new_species``, ``waiting`` (new species with too few photos), the
            validation macro-F1 without and with it, the held-out corrections right without and with it, and the
            ``confidence_threshold``.
        """
        labels, waiting = memory_labels(self.class_names, corrections)
        used = [c for c in corrections if c.label in labels]
        counts = dict(Counter(c.label for c in used))
        report: dict[str, Any] = {"served": False, "reason": None, "corrections": len(used), "counts": counts}
        report.update(new_species=labels[len(self.class_names) :], waiting=waiting)
        if not used:
            report["reason"] = "no accepted corrections to learn from yet"
            return None, report
        held = self.held_out(labels, used)
        threshold = self.choose_threshold(labels, used, held)
        base_probabilities = self.probabilities(self.base_head(), np.stack([c.features for c in used]))
        right_base = self.right(
            self.class_names, used, base_probabilities, self.rule.confidence_threshold_without_logit
        )
        head = fit_head(self.base, labels, used, self.c)
        report.update(
            confidence_threshold=threshold,
            val_macro_f1_base=self.val_macro_f1(self.base_head()),
            val_macro_f1=self.val_macro_f1(head),
            held_out=len(used),
            held_out_right_base=right_base,
            held_out_right=self.right(labels, used, held, threshold),
        )
        if report["val_macro_f1"] < report["val_macro_f1_base"] - MAX_F1_DROP:
            report["reason"] = (
                f"validation macro-F1 would fall from {report['val_macro_f1_base']:.4f} to "
                f"{report['val_macro_f1']:.4f} (at most {MAX_F1_DROP} is allowed)"
            )
        elif report["held_out_right"] < right_base:
            report["reason"] = (
                f"held out in turn, the corrections would be answered right {report['held_out_right']} times of "
                f"{len(used)}, fewer than the {right_base} of the model without them"
            )
        if report["reason"]:
            logger.warning("corrections memory refused: %s", report["reason"])
            return None, report
        report["served"] = True
        memory = CorrectionMemory(tuple(labels), *head, threshold, len(self.class_names), counts, report)
        return memory, report
