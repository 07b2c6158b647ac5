"""Inference from a checkpoint: the object the web app, ``evaluate.py`` and the tests share.

A :class:`Predictor` is built once (per web-app instance, per evaluation run) from a checkpoint; it owns the
network in eval mode, the class names, the eval transform and the softmax temperature that the checkpoint records.
Its answers are :class:`Prediction` objects, whose JSON form is declared in :mod:`model.results`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from model import quantization
from model.backends import (
    INT8,
    BackendUnavailableError,
    OpenVINONetwork,
    check_backend,
    resolve_backend,
)
from model.checkpoint import (
    Checkpoint,
    ClassNames,
    ModelCard,
    OpenSetRecord,
    ServingRecord,
    load_checkpoint,
    model_from_checkpoint,
)
from model.decoding import to_rgb
from model.memory import CorrectionMemory, verdict_for
from model.open_set import (
    ClassGaussians,
    HierarchyClasses,
    OpenSetNetwork,
    OpenSetRule,
    OpenSetScores,
    open_set_scores,
)
from model.results import ClassScore, Prediction
from model.runtime import autocast, cpu_threads, resolve_inference_precision
from model.taxonomy import Families
from model.transforms import Preprocessing, eval_transform

logger = logging.getLogger(__name__)


def _first(*values: float | None) -> float | None:
    """The first of ``values`` that is not None (an override, then the checkpoint's record, then a default)."""
    return next((v for v in values if v is not None), None)


def calibrated_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / temperature)`` of float ``(N, C)`` logits, rows summing to 1: the one formula for
    confidences, used by :meth:`Predictor.calibrated` (serving) and by training's release and evaluation steps.
    Temperature scaling (Guo et al., ICML 2017) never changes the most probable class."""
    return torch.softmax(logits / temperature, dim=1)


class Predictor:
    """A trained classifier ready for inference.

    Args:
        model: network mapping ``(N, 3, S, S)`` float32 to ``(N, C)`` logits; put in eval mode here.
        class_names: ``C`` names, index i for logit i.
        preprocessing: the checkpoint's preprocessing; :attr:`transform` is built from it.
        device: where the network runs.
        precision: ``"fp32"``, ``"bf16"`` (bf16 autocast, or OpenVINO's bf16 inference), or ``"auto"`` (torch:
            :func:`model.runtime.resolve_inference_precision`; OpenVINO: the faster of the two measured, see
            :class:`OpenVINONetwork`).
        backend: ``"openvino"`` (CPU only), ``"torch"`` (eager PyTorch, channels_last), or ``"auto"``
            (:func:`model.backends.resolve_backend`; falls back to torch, with a warning, where OpenVINO cannot
            compile the model).
        num_threads: CPU threads of OpenVINO's inference; None: all this process may use
            (:func:`model.runtime.cpu_threads`). The torch backend uses torch's own setting
            (``torch.set_num_threads``, see :func:`model.runtime.set_torch_threads`).
        int8_model: the quantized ``openvino.Model`` for ``precision="int8"`` (see :mod:`model.quantization`).
        confidence_threshold: predictions below it are flagged ``confident=False`` (0 disables the flag).
        temperature: T > 0; probabilities are ``softmax(logits / T)`` (temperature scaling, Guo et al. 2017, fitted
            on validation data by ``training.metrics.fit_temperature``); 1 leaves the network's softmax as is.
        class_info: optional ``{class name: ClassNames}``, the names people know each class by.
        card: what the checkpoint says of the model (:class:`model.checkpoint.ModelCard`), reported by
            :meth:`summary` and :meth:`describe`; None: nothing is known of it.
        open_set: the thresholds of the four verdicts (:class:`model.open_set.OpenSetRule`); its
            ``confidence_threshold`` is replaced by ``confidence_threshold``. None: "not sure" only.
        subject_classes: ImageNet classes of the training data's subject, for ``subject_score`` (needs a model
            that keeps its pretrained ImageNet head, :func:`model.network.pretrained_head`).
        hierarchy: the ImageNet classes of the subject's taxon and of the other living things, for
            ``taxon_score`` and ``other_score`` (:meth:`model.open_set.OpenSetRule.not_subject`); None for releases
            before the hierarchy.
        gaussians: class means and shared covariance of the training features, for ``novelty``.
        family_threshold: the family probability from which a prediction's ``family`` is ``likely`` (see
            :mod:`model.taxonomy`); used when ``class_info`` gives the classes families.

    Raises:
        ValueError: the number of class names does not match the network's outputs, unknown precision, a
            threshold outside [0, 1], a temperature that is not a positive finite number, or an unknown backend.
        BackendUnavailableError: the openvino backend was asked for but cannot be used.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        class_names: Sequence[str],
        preprocessing: Preprocessing,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        backend: str = "torch",
        num_threads: int | None = None,
        int8_model: Any = None,
        confidence_threshold: float = 0.0,
        temperature: float = 1.0,
        class_info: Mapping[str, ClassNames] | None = None,
        card: ModelCard | None = None,
        open_set: OpenSetRule | None = None,
        subject_classes: Sequence[int] | None = None,
        gaussians: ClassGaussians | None = None,
        hierarchy: HierarchyClasses | None = None,
        family_threshold: float = 1.0,
    ) -> None:
        if not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        self.open_set = dataclasses.replace(open_set or OpenSetRule(), confidence_threshold=confidence_threshold)
        self.subject_classes = list(subject_classes) if subject_classes else None
        self.hierarchy = hierarchy
        self.gaussians = gaussians
        self.temperature = temperature  # validated by the property's setter
        requested_backend, backend = backend, check_backend(backend, precision, device, int8_model)
        self.device = torch.device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.network = OpenSetNetwork(self.model)
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.transform = eval_transform(preprocessing)
        self.class_info = {name: (class_info or {}).get(name) or ClassNames() for name in self.class_names}
        self.families = Families.of(self.class_names, self.class_info)
        self.family_threshold = family_threshold
        self.card = card or ModelCard()
        # the corrections memory and the rule it is served with, one tuple: swapped whole (set_memory)
        self._memory: tuple[CorrectionMemory, OpenSetRule] | None = None
        self._check_outputs()
        self._openvino: OpenVINONetwork | None = None
        if backend == "openvino":
            try:
                self._openvino = OpenVINONetwork(
                    self.network, preprocessing.image_size, precision, num_threads or cpu_threads(), int8_model
                )
                precision = self._openvino.precision
            except BackendUnavailableError as exc:
                if requested_backend != "auto" or precision == INT8:
                    raise
                logger.warning("OpenVINO cannot run this model (%s); using torch", exc)
                backend = "torch"
        self.backend = backend
        self.precision = resolve_inference_precision(precision, device) if backend == "torch" else precision

    def _check_outputs(self) -> None:
        """Run the network once on a zero image and check that its outputs fit the class names, the subject
        classes and the class means.

        Raises:
            ValueError: they do not.
        """
        size = self.preprocessing.image_size
        with torch.inference_mode():
            logits, features, imagenet_logits = self.network(torch.zeros(1, 3, size, size, device=self.device))
        if logits.shape[1] != len(self.class_names):
            raise ValueError(f"model has {logits.shape[1]} outputs but {len(self.class_names)} class names")
        if self.subject_classes and imagenet_logits.shape[1] <= max(self.subject_classes):
            raise ValueError("subject classes need the model's pretrained ImageNet head, which it does not keep")
        if self.gaussians is not None and self.gaussians.means.shape != (len(self.class_names), features.shape[1]):
            raise ValueError(f"class means {tuple(self.gaussians.means.shape)} do not fit {tuple(features.shape)}")

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        backend: str = "torch",
        num_threads: int | None = None,
        confidence_threshold: float | None = None,
        novelty_threshold: float | None = None,
        subject_threshold: float | None = None,
        logit_threshold: float | None = None,
    ) -> Predictor:
        """Load a checkpoint written by ``train.py`` (:func:`model.checkpoint.load_checkpoint`).

        ``device``, ``backend`` and ``num_threads`` are :class:`Predictor`'s; ``precision`` also takes ``"int8"``
        (OpenVINO, with the network ``quantize.py`` wrote beside the checkpoint: :func:`model.quantization.int8_path`).
        The thresholds given override those of the checkpoint's :class:`model.checkpoint.ServingRecord` (where it
        holds none: confidence 0, temperature 1, family 1; the temperature was fitted on validation data).

        Raises:
            model.checkpoint.CheckpointError: the file is missing or not a valid checkpoint.
            model.quantization.QuantizationUnavailableError: int8 was asked for and its network was not made.
            ValueError: see :class:`Predictor`.
        """
        ckpt = load_checkpoint(path)
        # only where it can run: Predictor refuses int8 on any other backend
        on_openvino = precision == INT8 and resolve_backend(backend, device) == "openvino"
        predictor = cls.from_record(
            ckpt,
            name=os.path.basename(os.fspath(path)),
            device=device,
            precision=precision,
            backend=backend,
            num_threads=num_threads,
            int8_model=quantization.load(path) if on_openvino else None,
            confidence_threshold=confidence_threshold,
            novelty_threshold=novelty_threshold,
            subject_threshold=subject_threshold,
            logit_threshold=logit_threshold,
        )
        logger.info(
            "loaded %s: %s, %d classes, input %d px, temperature %.3g, %s %s on %s",
            path,
            ckpt.arch,
            len(predictor.class_names),
            predictor.preprocessing.image_size,
            predictor.temperature,
            predictor.backend,
            predictor.precision,
            device,
        )
        return predictor

    @classmethod
    def from_record(
        cls,
        ckpt: Checkpoint,
        *,
        name: str | None,
        confidence_threshold: float | None = None,
        novelty_threshold: float | None = None,
        subject_threshold: float | None = None,
        logit_threshold: float | None = None,
        **options: Any,
    ) -> Predictor:
        """A predictor over a loaded checkpoint (:meth:`from_checkpoint` without the file), ``name`` its file name
        for the model card; ``options`` are :class:`Predictor`'s (device, precision, backend, num_threads,
        int8_model).

        Raises:
            model.checkpoint.CheckpointError: the weights do not fit the recorded network; ValueError: see
                :class:`Predictor`.
        """
        serving = ckpt.serving or ServingRecord()
        open_set = ckpt.open_set or OpenSetRecord()
        return cls(
            model_from_checkpoint(ckpt),
            ckpt.class_names,
            ckpt.preprocessing,
            confidence_threshold=_first(confidence_threshold, serving.confidence_threshold, 0.0),
            temperature=_first(serving.temperature, 1.0),
            class_info=ckpt.class_info,
            card=ModelCard.of(ckpt, name),
            open_set=serving.rule(subject_threshold, novelty_threshold, logit_threshold),
            subject_classes=open_set.subject_classes,
            hierarchy=open_set.hierarchy,
            gaussians=open_set.gaussians,
            family_threshold=_first(serving.family_threshold, 1.0),
            **options,
        )

    @property
    def confidence_threshold(self) -> float:
        """Calibrated confidence below which a known class is answered "not sure" (``open_set``'s)."""
        return self.open_set.confidence_threshold

    @confidence_threshold.setter
    def confidence_threshold(self, value: float) -> None:
        self.open_set = dataclasses.replace(self.open_set, confidence_threshold=float(value))

    @property
    def temperature(self) -> float:
        """The softmax temperature T: :meth:`probabilities` is ``softmax(logits / T)``.

        Raises:
            ValueError: on assignment of anything but a positive finite number.
        """
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        value = float(value)
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"temperature must be a positive finite number, got {value}")
        self._temperature = value

    def score(self, label: str, confidence: float) -> ClassScore:
        """A :class:`ClassScore` for ``label`` with the names the checkpoint records for it."""
        names = self.class_info.get(label) or ClassNames(scientific_name=label if " " in label else None)
        return ClassScore(label, confidence, names.common_name, names.scientific_name)

    def summary(self) -> dict[str, Any]:
        """Short JSON-ready description for API responses: arch, checkpoint, input size, precision, threshold,
        softmax temperature and the headline validation metrics."""
        return {
            "arch": self.card.arch,
            "checkpoint": self.card.checkpoint,
            "created": self.card.created,
            "num_classes": len(self.class_names),
            "image_size": self.preprocessing.image_size,
            "precision": self.precision,
            "backend": self.backend,
            "confidence_threshold": self.confidence_threshold,
            "subject": self.open_set.subject,
            "verdict_thresholds": {
                **self.open_set.thresholds(),
                **({"family": self.family_threshold} if self.families else {}),
            },
            "temperature": self.temperature,
            "val_accuracy": self.card.evaluation.val_accuracy,
            "val_macro_f1": self.card.evaluation.val_macro_f1,
        }

    def describe(self) -> dict[str, Any]:
        """What the pages show of the model: everything in :meth:`summary` plus the ``classes``, their names
        (``class_info``: class name -> ``ClassScore``'s name fields) and the ``card``
        (:class:`model.checkpoint.ModelCard`: how it was trained, its validation metrics, its serving record)."""
        return {
            **self.summary(),
            "classes": self.class_names,
            "class_info": {
                name: {k: v for k, v in self.score(name, 0.0).to_dict().items() if k.endswith("name")}
                for name in self.class_names
            },
            "card": self.card,
        }

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a preprocessed batch.

        Args:
            batch: float32 ``(N, 3, S, S)``, the output of :attr:`transform` stacked.

        Returns:
            float32 ``(N, C)`` logits on the CPU, as the network gives them (not divided by the temperature).
        """
        return self.outputs(batch)[0]

    @torch.inference_mode()
    def outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything the network says of a preprocessed batch (see :meth:`logits` for ``batch``).

        Returns:
            float32 tensors on the CPU: logits ``(N, C)``, penultimate features ``(N, D)`` and the pretrained
            head's ImageNet logits ``(N, 1000)`` (``(N, 0)`` when the model keeps none); see
            :class:`model.open_set.OpenSetNetwork`.
        """
        if self._openvino is not None:
            logits, features, imagenet_logits = self._openvino(batch.float().cpu())
            return logits, features, imagenet_logits
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            out = self.network(batch)
        return tuple(t.float().cpu() for t in out)  # type: ignore[return-value]

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of float ``(N, C)`` logits at this predictor's temperature, rows summing to 1
        (:func:`calibrated_probabilities`, the one formula for confidences). The temperature never changes the
        most probable class."""
        return calibrated_probabilities(logits, self.temperature)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities (:meth:`calibrated`) of a batch, float32 ``(N, C)``; every backend goes
        through here (see :meth:`logits` for ``batch``)."""
        return self.calibrated(self.logits(batch))

    def predict(self, images: Sequence[Image.Image], top_k: int = 5) -> list[Prediction]:
        """Classify decoded images of any Pillow mode and size (converted to RGB first).

        Args:
            images: one or more ``PIL.Image`` objects.
            top_k: how many classes to list per image (clipped to the number of classes).

        Returns:
            One :class:`Prediction` per image, in order.
        """
        if not images:
            return []
        return self.predict_batch(self.preprocess(images), top_k)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The penultimate features of decoded images, what the corrections memory learns from
        (:mod:`model.memory`).

        Returns:
            float32 ``(N, D)`` numpy array, one row per image, as the network gives them (not normalised);
            ``(0, D)`` is never returned: ``images`` must not be empty.
        """
        return self.outputs(self.preprocess(images))[1].numpy().astype(np.float32, copy=False)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The network's input for decoded images of any Pillow mode and size: :attr:`transform` of each (after
        conversion to RGB), stacked into float32 ``(N, 3, S, S)``; ``images`` must not be empty."""
        return torch.stack([self.transform(to_rgb(im)) for im in images])

    def predict_batch(self, batch: torch.Tensor, top_k: int = 5) -> list[Prediction]:
        """Classify a preprocessed batch (float32 ``(N, 3, S, S)``, the output of :attr:`transform` stacked).

        Returns:
            One :class:`Prediction` per row, ``top_k`` clipped to the number of classes.
        """
        return self.predictions(*self.outputs(batch), top_k=top_k)

    @property
    def memory(self) -> CorrectionMemory | None:
        """The corrections memory served beside the network (:mod:`model.memory`), or None."""
        return self._memory[0] if self._memory else None

    def set_memory(self, memory: CorrectionMemory | None) -> None:
        """Serve ``memory`` from the next batch on (None: the network's own head again). Thread-safe: a batch
        reads the memory once.

        Raises:
            ValueError: the memory was built for other classes or features.
        """
        if memory is None:
            self._memory = None
            return
        if list(memory.labels[: memory.num_classes]) != self.class_names:
            raise ValueError("the corrections memory was built for other classes than this model's")
        if self.gaussians is not None and memory.weight.shape[1] != self.gaussians.means.shape[1]:
            raise ValueError(f"the corrections memory reads {memory.weight.shape[1]} features, not this model's")
        rule = dataclasses.replace(self.open_set, confidence_threshold=memory.confidence_threshold)
        self._memory = (memory, rule)

    def open_set_scores(self, features: torch.Tensor, imagenet_logits: torch.Tensor) -> OpenSetScores:
        """The subject score, novelty, taxon and other-organism scores (each ``(N,)``) of a batch's outputs (see
        :meth:`outputs`); None where this model has no such score (see :mod:`model.open_set`)."""
        return open_set_scores(features, imagenet_logits, self.subject_classes, self.gaussians, self.hierarchy)

    def predictions(
        self, logits: torch.Tensor, features: torch.Tensor, imagenet_logits: torch.Tensor, top_k: int = 5
    ) -> list[Prediction]:
        """One :class:`Prediction` per row of a batch's outputs (:meth:`outputs`), with its verdict;
        ``top_k`` clipped to the number of species. With a corrections memory (:meth:`set_memory`), its head
        replaces the network's (:func:`model.memory.verdict_for`: its new species can be named, its open-set labels
        give their verdicts, and its "not sure" threshold applies)."""
        served = self._memory  # once: a memory swapped meanwhile serves the next batch
        memory, rule = served if served else (None, self.open_set)
        labels = list(memory.labels) if memory else self.class_names
        probs = self.calibrated(memory.logits(features) if memory else logits)
        open_set = self.open_set_scores(features, imagenet_logits)
        known = probs[:, : len(self.class_names)]
        families = self.families.best(known, self.family_threshold) if self.families else [None] * len(probs)
        species = memory.species_columns if memory else list(range(len(labels)))
        k = max(1, min(top_k, len(species)))
        values, indices = probs[:, species].topk(k, dim=1)
        max_logits = logits.max(dim=1).values
        predictions = []
        for row, (vals, idxs) in enumerate(zip(values.tolist(), indices.tolist(), strict=True)):
            scores = [self.score(labels[species[i]], float(v)) for v, i in zip(vals, idxs, strict=True)]
            scores_row = open_set.row(row)
            if memory:
                verdict = verdict_for(probs[row].numpy(), labels, rule, scores_row)[0]
            else:
                verdict = rule.verdict(scores[0].confidence, *scores_row, max_logit=float(max_logits[row]))
            subject, novelty, taxon, other = scores_row
            predictions.append(
                Prediction(
                    top_k=scores,
                    threshold=rule.confidence_threshold,
                    verdict=verdict,
                    subject_score=subject,
                    novelty=novelty,
                    taxon_score=taxon,
                    other_score=other,
                    family=families[row],
                )
            )
        return predictions
