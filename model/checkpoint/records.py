"""The checkpoint as typed records: every reader of a checkpoint goes through :class:`Checkpoint`.

:meth:`Checkpoint.from_dict` is the one place that reads the file's keys (schema: :mod:`model.checkpoint`);
:meth:`Checkpoint.to_dict` the one place that writes them. What serving needs has its own record: the classes
with their names (:class:`ClassNames`), the preprocessing, the temperature and thresholds (:class:`ServingRecord`),
the open-set statistics (:class:`OpenSetRecord`), and the model card's facts (:class:`TrainingRecord`, how it was
trained; :class:`EvaluationRecord`, how it scored). Records are frozen dataclasses; a field a checkpoint lacks,
or holds malformed, is None (old checkpoints load, and any checkpoint renders on the model page).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from model.checkpoint.files import FORMAT_VERSION, CheckpointError, library_versions
from model.open_set import ClassGaussians, HierarchyClasses, OpenSetRule
from model.transforms import Preprocessing

#: Training state kept for ``--resume`` and left out of releases.
TRAINING_STATE_KEYS = ("optimizer", "lr_scheduler", "scaler", "training_model")


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a number (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(value: Any) -> str | None:
    """``value`` when it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def _numbers(cls: type, raw: Any) -> dict[str, float | None]:
    """The float fields of the dataclass ``cls`` read from the mapping ``raw`` (None where absent or not numbers)."""
    raw = raw if isinstance(raw, Mapping) else {}
    return {f.name: _number(raw.get(f.name)) for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class ClassNames:
    """The names people know a class by and its taxonomy (``--class-info``), each None where not given.

    Attributes:
        common_name: ``"Clark's anemonefish"``; scientific_name: ``"Amphiprion clarkii"``.
        genus: ``"Amphiprion"``; family: ``"Pomacentridae"``; family_common_name: ``"damselfish"`` (singular).
    """

    common_name: str | None = None
    scientific_name: str | None = None
    genus: str | None = None
    family: str | None = None
    family_common_name: str | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> ClassNames:
        """From a checkpoint's ``class_info`` entry (a dict of strings); malformed entries give no names."""
        raw = raw if isinstance(raw, Mapping) else {}
        return cls(**{f.name: _text(raw.get(f.name)) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, str]:
        """The ``class_info`` entry: the names that exist."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


#: The thresholds a serving record holds for :class:`model.open_set.OpenSetRule`, under the same names: all of the
#: rule's but the confidence threshold (the predictor's, which may be overridden and defaults to 0).
RULE_FIELDS = tuple(f.name for f in dataclasses.fields(OpenSetRule) if f.name != "confidence_threshold")


@dataclass(frozen=True)
class ServingRecord:
    """How a release answers: the temperature and the thresholds chosen on validation data and the dev sets.

    Every field is None where the release does not record it (serving then uses threshold 0 and temperature 1).

    Attributes:
        confidence_threshold: calibrated confidence below which the answer is "not sure" (0: never).
        temperature: T > 0 of temperature scaling (Guo et al., ICML 2017): probabilities are ``softmax(logits / T)``.
        target_accuracy: the accuracy the "not sure" threshold was chosen for.
        coverage: share of the validation images named with a species at the thresholds.
        selective_accuracy: accuracy of those.
        subject: the noun of the training photos' subject (``"fish"``).
        subject_threshold, novelty_threshold, taxon_threshold, contrast_threshold, hierarchy_novelty_threshold,
            logit_threshold, unknown_confidence_threshold: the open-set thresholds
            (:class:`model.open_set.OpenSetRule`); None where the release has no such check (the last three:
            releases before 2026-12-03).
        family_threshold: the summed probability of a family's species from which the answer names the family
            when the species is unsure (:mod:`model.taxonomy`); None for models without a taxonomy.
    """

    confidence_threshold: float | None = None
    temperature: float | None = None
    target_accuracy: float | None = None
    coverage: float | None = None
    selective_accuracy: float | None = None
    subject: str | None = None
    subject_threshold: float | None = None
    novelty_threshold: float | None = None
    taxon_threshold: float | None = None
    contrast_threshold: float | None = None
    family_threshold: float | None = None
    hierarchy_novelty_threshold: float | None = None
    logit_threshold: float | None = None
    unknown_confidence_threshold: float | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> ServingRecord:
        """From a checkpoint's ``serving`` dict.

        Raises:
            CheckpointError: a value that is present but not a number (the subject: not a string).
        """
        raw = raw if isinstance(raw, Mapping) else {}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = raw.get(f.name)
            if value is None:
                continue
            if f.name == "subject":
                if not isinstance(value, str):
                    raise CheckpointError(f"serving.subject must be a string, got {value!r}")
                values[f.name] = value
            elif _number(value) is None:
                raise CheckpointError(f"serving.{f.name} must be a number, got {value!r}")
            else:
                values[f.name] = float(value)
        return cls(**values)

    def rule(
        self,
        subject_threshold: float | None = None,
        novelty_threshold: float | None = None,
        logit_threshold: float | None = None,
    ) -> OpenSetRule:
        """The open-set thresholds of this record as served (its :data:`RULE_FIELDS`), the subject, novelty and logit
        ones overridden where given (not None); the confidence threshold is left at 0 (``model.predictor.Predictor``
        sets it)."""
        given = {
            "subject_threshold": subject_threshold,
            "novelty_threshold": novelty_threshold,
            "logit_threshold": logit_threshold,
        }
        return OpenSetRule(**{f: getattr(self, f) if given.get(f) is None else given[f] for f in RULE_FIELDS})

    def with_rule(self, rule: OpenSetRule) -> ServingRecord:
        """This record with ``rule``'s thresholds (its :data:`RULE_FIELDS` and its confidence threshold): what a
        release records of the rule it chose, :meth:`rule`'s inverse."""
        fields = {f: getattr(rule, f) for f in RULE_FIELDS}
        return dataclasses.replace(self, confidence_threshold=rule.confidence_threshold, **fields)

    def to_dict(self) -> dict[str, Any]:
        """The ``serving`` dict: every field that is not None, numbers as Python floats (a NumPy scalar would not
        load with ``weights_only``)."""
        return {k: v if isinstance(v, str) else float(v) for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class OpenSetRecord:
    """The statistics of the "unknown species" and "not a fish" checks (see :mod:`model.open_set`).

    Attributes:
        subject_classes: ImageNet classes of the training data's subject, or None (no kept ImageNet head).
        gaussians: class means ``(C, D)`` and shared precision ``(D, D)`` of the training features, or None.
        hierarchy: the subject's taxon and the other living things in ImageNet, or None (releases before it).
    """

    subject_classes: list[int] | None = None
    gaussians: ClassGaussians | None = None
    hierarchy: HierarchyClasses | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> OpenSetRecord | None:
        """From a checkpoint's ``open_set`` dict; None when absent."""
        if not isinstance(raw, Mapping) or not raw:
            return None
        subject = raw.get("subject_classes")
        gaussians = raw.get("gaussians")
        return cls(
            subject_classes=[int(c) for c in subject] if subject else None,
            gaussians=ClassGaussians.from_dict(gaussians) if gaussians else None,
            hierarchy=HierarchyClasses.from_dict(raw.get("hierarchy")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``open_set`` dict (``subject_classes``, ``hierarchy``, ``gaussians``: those that exist)."""
        raw: dict[str, Any] = {}
        if self.subject_classes is not None:
            raw["subject_classes"] = list(self.subject_classes)
        if self.hierarchy is not None:
            raw["hierarchy"] = self.hierarchy.to_dict()
        if self.gaussians is not None:
            raw["gaussians"] = self.gaussians.to_dict()
        return raw


@dataclass(frozen=True)
class ClassMetrics:
    """One class's validation scores (scikit-learn's ``precision_recall_fscore_support``); None where absent."""

    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    support: float | None = None


@dataclass(frozen=True)
class VerdictShares:
    """How a release answered one set (``training.open_set.verdict_counts``): the image count and the fraction of
    each verdict; ``top1`` and ``confidently_wrong`` only for sets of known classes, ``family_right`` and
    ``family_wrong`` only for sets of photos of known families (``training.family.family_counts``: of those
    photos, the fraction whose answer names the right or a wrong family); None otherwise."""

    images: float | None = None
    species: float | None = None
    not_sure: float | None = None
    unknown_species: float | None = None
    not_a_fish: float | None = None
    top1: float | None = None
    confidently_wrong: float | None = None
    family_right: float | None = None
    family_wrong: float | None = None


@dataclass(frozen=True)
class EvaluationRecord:
    """How the checkpoint scored on its validation images (the ``metrics`` dict), each None where absent.

    Attributes:
        val_accuracy, val_macro_f1, val_macro_precision, val_macro_recall: fractions in [0, 1].
        val_ece, val_ece_before: expected calibration error with and without the temperature.
        val_images: the number of validation images.
        best_epoch: the 0-based epoch whose weights these are.
        best_val_macro_f1, epochs_without_improvement: training's progress, for ``--resume``.
        per_class: class name -> its :class:`ClassMetrics`.
        confusion_matrix: ``C x C`` counts, rows the true classes, or None.
        open_set: set name (``"val"``, ``"known_photos"``, ``"unknown_photos:folder"``...) -> its verdicts.
    """

    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    val_macro_precision: float | None = None
    val_macro_recall: float | None = None
    val_ece: float | None = None
    val_ece_before: float | None = None
    val_images: float | None = None
    best_epoch: float | None = None
    best_val_macro_f1: float | None = None
    epochs_without_improvement: float | None = None
    per_class: dict[str, ClassMetrics] = field(default_factory=dict)
    confusion_matrix: list[list[Any]] | None = None
    open_set: dict[str, VerdictShares] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any) -> EvaluationRecord:
        """From a checkpoint's ``metrics`` dict; malformed parts are left out."""
        raw = raw if isinstance(raw, Mapping) else {}
        scalars = {k: v for k, v in _numbers(cls, raw).items() if k not in ("per_class", "open_set")}
        scalars.pop("confusion_matrix")
        per_class = raw.get("per_class") if isinstance(raw.get("per_class"), Mapping) else {}
        report = raw.get("open_set") if isinstance(raw.get("open_set"), Mapping) else {}
        matrix = raw.get("confusion_matrix")
        return cls(
            **scalars,
            per_class={str(k): ClassMetrics(**_numbers(ClassMetrics, v)) for k, v in per_class.items()},
            confusion_matrix=matrix if isinstance(matrix, list) else None,
            open_set={
                str(k): VerdictShares(**_numbers(VerdictShares, v)) for k, v in report.items() if isinstance(v, Mapping)
            },
        )


@dataclass(frozen=True)
class TrainingRecord:
    """How the network was trained, from the checkpoint's training ``config`` (the model card's facts); each None
    where the checkpoint does not record it. The names are ``train.py``'s options (see ``training.config``).

    ``optimizer`` is ``"SGD"`` and ``lr_gamma`` 0.1 for checkpoints written before those options existed.
    """

    arch: str | None = None
    weights: str | None = None
    epochs: int | None = None
    image_size: int | None = None
    crop_pct: float | None = None
    batch_size: int | None = None
    optimizer: str = "SGD"
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    scheduler: str | None = None
    lr_step_size: int | None = None
    lr_gamma: float = 0.1
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    val_data: bool = False
    val_fraction: float | None = None
    group_pattern: str | None = None
    seed: int | None = None
    release_dtype: str | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> TrainingRecord:
        """From a checkpoint's ``config`` dict; values of the wrong type are left out."""
        raw = raw if isinstance(raw, Mapping) else {}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = raw.get(f.name)
            if value is None or value == "":
                continue
            if f.name == "val_data":
                values[f.name] = bool(value)
            elif f.type in ("int | None",) and _number(value) is not None:
                values[f.name] = int(value)
            elif f.type in ("float | None", "float") and _number(value) is not None:
                values[f.name] = float(value)
            elif f.type in ("str | None", "str"):
                values[f.name] = str(value)
        return cls(**values)


@dataclass(frozen=True)
class TrainingState:
    """What ``--resume`` restores besides the weights: the optimizer's, LR scheduler's and grad scaler's state
    dicts and, with ``--ema-decay``, the raw (not averaged) weights; None where the checkpoint has none."""

    optimizer: dict[str, Any] | None = None
    lr_scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    training_model: dict[str, torch.Tensor] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The keys that exist, as the checkpoint stores them."""
        return {k: getattr(self, k) for k in TRAINING_STATE_KEYS if getattr(self, k) is not None}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint of this project, typed (schema and format version: :mod:`model.checkpoint`).

    Attributes:
        arch: torchvision or timm model name (rebuilt by :func:`model.network.build_model`).
        class_names: index i is logit i; the training ImageFolder's sorted folders.
        preprocessing: the eval transform's parameters (:func:`model.transforms.eval_transform`).
        state_dict: the network's weights (float32 in training checkpoints, float16 in releases).
        epoch: last completed epoch (0-based), None where not recorded.
        metrics: the validation metrics as training wrote them (typed: :attr:`evaluation`).
        config: the resolved training configuration (typed: :attr:`training`).
        class_info: class name -> :class:`ClassNames`, for the classes that have names.
        head: the classifier head's spec (:func:`model.network.build_model`), None for one linear layer.
        serving: the temperature and thresholds (releases), or None.
        open_set: the open-set statistics (releases with open-set checks), or None.
        training_state: what ``--resume`` restores (training checkpoints), or None.
        versions: library versions that wrote it.
        created: ISO 8601 UTC time it was written, None where not recorded.
        format_version: the schema's version (:data:`model.checkpoint.FORMAT_VERSION`).
    """

    arch: str
    class_names: list[str]
    preprocessing: Preprocessing
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    epoch: int | None = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    class_info: dict[str, ClassNames] = field(default_factory=dict)
    head: dict[str, Any] | None = None
    serving: ServingRecord | None = None
    open_set: OpenSetRecord | None = field(default=None, repr=False)
    training_state: TrainingState | None = field(default=None, repr=False)
    versions: dict[str, str] = field(default_factory=library_versions)
    created: str | None = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION

    @property
    def evaluation(self) -> EvaluationRecord:
        """The validation metrics, typed."""
        return EvaluationRecord.from_dict(self.metrics)

    @property
    def training(self) -> TrainingRecord:
        """How the network was trained, typed."""
        return TrainingRecord.from_dict(self.config)

    @property
    def names(self) -> dict[str, ClassNames]:
        """Every class name -> its :class:`ClassNames` (empty names where the checkpoint has none)."""
        return {name: self.class_info.get(name, ClassNames()) for name in self.class_names}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Checkpoint:
        """The typed view of a raw checkpoint dict (as :func:`model.checkpoint.files.read_file` returns it).

        Raises:
            CheckpointError: a required value of the wrong type (class names not strings, bad preprocessing, a
                non-numeric threshold).
        """
        names = raw["class_names"]
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"class_names must be a list of strings, got {names!r}")
        try:
            preprocessing = Preprocessing.from_dict(raw["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's preprocessing is invalid: {exc}") from exc
        info = raw.get("class_info") if isinstance(raw.get("class_info"), Mapping) else {}
        state = {k: raw[k] for k in TRAINING_STATE_KEYS if raw.get(k) is not None}
        return cls(
            arch=str(raw["arch"]),
            class_names=list(names),
            preprocessing=preprocessing,
            state_dict=raw["model"],
            epoch=int(raw["epoch"]) if _number(raw.get("epoch")) is not None else None,
            metrics=dict(raw.get("metrics") or {}),
            config=dict(raw.get("config") or {}),
            class_info={str(k): ClassNames.from_dict(v) for k, v in info.items()},
            head=dict(raw["head"]) if isinstance(raw.get("head"), Mapping) else None,
            serving=ServingRecord.from_dict(raw["serving"]) if "serving" in raw else None,
            open_set=OpenSetRecord.from_dict(raw.get("open_set")),
            training_state=TrainingState(**state) if state else None,
            versions=dict(raw.get("versions") or {}),
            created=_text(raw.get("created")),
            format_version=int(raw["format_version"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The raw dict that :func:`model.checkpoint.save_checkpoint` writes (schema: :mod:`model.checkpoint`);
        absent parts are left out, so ``from_dict(to_dict())`` gives this record back."""
        raw: dict[str, Any] = {
            "format_version": self.format_version,
            "arch": self.arch,
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "model": self.state_dict,
            "epoch": self.epoch,
            "metrics": self.metrics,
            "config": self.config,
            "versions": self.versions,
            "created": self.created,
        }
        if self.head and self.head.get("type", "linear") != "linear":
            raw["head"] = dict(self.head)
        if info := {name: names.to_dict() for name, names in self.class_info.items() if names.to_dict()}:
            raw["class_info"] = info
        if self.serving is not None:
            raw["serving"] = self.serving.to_dict()
        if self.open_set is not None:
            raw["open_set"] = self.open_set.to_dict()
        if self.training_state is not None:
            raw.update(self.training_state.to_dict())
        return raw

    def replace(self, **changes: Any) -> Checkpoint:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelCard:
    """What the app says about the model it serves (the model page, the API's ``model``), from its checkpoint.

    Attributes:
        arch: the network's name, or None (a predictor built without a checkpoint).
        checkpoint: the checkpoint's file name (no folder), or None.
        created: when the checkpoint was written (ISO 8601), or None.
        epoch: the checkpoint's last epoch (0-based), or None.
        training: how it was trained; evaluation: how it scored; serving: its temperature and thresholds as
            recorded (the predictor may serve others, see ``Predictor.summary``).
        class_info: class name -> its names and taxonomy (:class:`ClassNames`), for the classes that have them.
    """

    arch: str | None = None
    checkpoint: str | None = None
    created: str | None = None
    epoch: int | None = None
    training: TrainingRecord = field(default_factory=TrainingRecord)
    evaluation: EvaluationRecord = field(default_factory=EvaluationRecord)
    serving: ServingRecord = field(default_factory=ServingRecord)
    class_info: dict[str, ClassNames] = field(default_factory=dict)

    @classmethod
    def of(cls, ckpt: Checkpoint, file_name: str | None = None) -> ModelCard:
        """The card of ``ckpt``, read from the file named ``file_name``."""
        return cls(
            arch=ckpt.arch,
            checkpoint=file_name,
            created=ckpt.created,
            epoch=ckpt.epoch,
            training=ckpt.training,
            evaluation=ckpt.evaluation,
            serving=ckpt.serving or ServingRecord(),
            class_info=dict(ckpt.class_info),
        )
