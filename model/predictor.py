"""Inference from a checkpoint: the object the web app, ``evaluate.py`` and the tests share.

A :class:`Predictor` is built once (per web-app instance, per evaluation run) from a checkpoint; it owns the
network in eval mode, the class names, the eval transform and the softmax temperature that the checkpoint records.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from model.checkpoint import load_checkpoint, model_from_checkpoint
from model.transforms import Preprocessing, eval_transform, to_rgb

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
#: Inference engines behind the same Predictor API: eager PyTorch, or OpenVINO (optional: ``pip install openvino``).
BACKENDS = ("torch", "openvino")


class BackendUnavailableError(RuntimeError):
    """The requested inference backend is not installed or cannot compile the model."""


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), read from ``/proc/cpuinfo``.

    On such CPUs bf16 autocast trains ResNet-50 2.3x faster than fp32 (measured on this project's 2-core AMD
    machine: 39 vs 17 img/s at 128 px); elsewhere bf16 is emulated and slower, so fp32 is kept.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_inference_precision(name: str, device: str | torch.device = "cpu") -> str:
    """``"auto"`` becomes ``"bf16"`` on GPUs with bf16 and on CPUs with native bf16, else ``"fp32"``.

    bf16 agrees with fp32 on 99.9 % of the default model's validation photos (``make bench``) and predicts a
    photo 1.45x faster on an AVX-512 BF16 CPU. Other names are returned unchanged.
    """
    if name != "auto":
        return name
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


class OpenVINONetwork:
    """The network compiled by OpenVINO for the CPU; called like the torch module on a float32 batch.

    Converted with ``openvino.convert_model`` from the loaded PyTorch module (no file is written), compiled with
    the ``LATENCY`` performance hint and ``INFERENCE_PRECISION_HINT`` bf16 or f32. Compiled models are
    thread-safe; each calling thread gets its own infer request. Measured on this project's 2-core AVX-512 BF16
    machine: 12 ms per 128 px photo in bf16 against about 20 ms for PyTorch's bf16 autocast (``make bench``).

    Args:
        model: the PyTorch network in eval mode, ``(N, 3, S, S)`` float32 to ``(N, C)`` logits.
        image_size: ``S``, for the example input of the conversion.
        precision: ``"fp32"`` or ``"bf16"``.
        num_threads: CPU threads for OpenVINO's inference (``INFERENCE_NUM_THREADS``); None for its default.

    Raises:
        BackendUnavailableError: OpenVINO is not installed, or conversion failed.
    """

    def __init__(self, model: torch.nn.Module, image_size: int, precision: str, num_threads: int | None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailableError(
                "the openvino backend needs the openvino package: pip install openvino (or use backend torch)"
            ) from exc
        try:
            converted = ov.convert_model(model.float().eval(), example_input=torch.zeros(1, 3, image_size, image_size))
            config: dict[str, Any] = {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            }
            if num_threads:
                config["INFERENCE_NUM_THREADS"] = num_threads
            self.compiled = ov.Core().compile_model(converted, "CPU", config)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise BackendUnavailableError(f"OpenVINO could not compile the model: {exc}") from exc
        self._local = threading.local()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits, float32 ``(N, C)``, of a float32 batch ``(N, 3, S, S)``."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer({0: batch.contiguous().numpy()})
        return torch.from_numpy(result[0].copy())


def pretty_label(label: str) -> str:
    """A class folder name for people: ``amphiprion_clarkii`` -> ``Amphiprion clarkii``."""
    name = label.replace("_", " ").strip()
    return name[:1].upper() + name[1:]


@dataclass(frozen=True)
class ClassScore:
    """One class and its probability, with the names people know it by (where the checkpoint has them).

    Attributes:
        label: the class name (its training folder name).
        confidence: softmax probability in [0, 1].
        common_name: e.g. ``"Clark's anemonefish"``, or None.
        scientific_name: e.g. ``"Amphiprion clarkii"``, or None.
    """

    label: str
    confidence: float
    common_name: str | None = None
    scientific_name: str | None = None

    @property
    def display_name(self) -> str:
        """``"Common name (Scientific name)"``, whichever of the two exists, or the prettified label."""
        if self.common_name and self.scientific_name:
            return f"{self.common_name} ({self.scientific_name})"
        return self.common_name or self.scientific_name or pretty_label(self.label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``label, confidence, display_name, common_name, scientific_name``."""
        return {
            "label": self.label,
            "confidence": self.confidence,
            "display_name": self.display_name,
            "common_name": self.common_name,
            "scientific_name": self.scientific_name,
        }


#: The four kinds of answer, most specific first (see :class:`Prediction`'s ``verdict``).
VERDICTS: tuple[str, ...] = ("species", "not_sure", "unknown_species", "not_a_fish")


@dataclass(frozen=True)
class Prediction:
    """The classification of one image: the ``top_k`` classes, most probable first, and what to tell the user.

    Attributes:
        top_k: at least one :class:`ClassScore`, sorted by descending confidence.
        threshold: confidence below which the prediction is reported as "not sure" (0 disables it); chosen on
            validation data when the model was trained (see ``training.metrics.selective_threshold``).
        verdict: one of :data:`VERDICTS`: ``"species"`` (confident: name the class), ``"not_sure"`` (a known
            class, but below ``threshold``: offer the candidates), ``"unknown_species"`` (the right kind of
            subject, probably none of the model's classes), ``"not_a_fish"`` (not the kind of picture the model
            was trained on). Decided by :class:`model.open_set.OpenSetRule` where the checkpoint records one;
            otherwise from ``threshold`` alone.
        subject_score: how much the picture looks like the training data's subject, in [0, 1] (probability mass
            of the subject's ImageNet classes), or None when the model has no such score.
        novelty: distance of the image's features to the nearest known class (squared Mahalanobis distance),
            or None when the model has no such score.
    """

    top_k: list[ClassScore]
    threshold: float = 0.0
    verdict: str = ""
    subject_score: float | None = None
    novelty: float | None = None

    def __post_init__(self) -> None:
        if not self.verdict:
            object.__setattr__(self, "verdict", "species" if self.top_k[0].confidence >= self.threshold else "not_sure")
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def best(self) -> ClassScore:
        """The most probable class."""
        return self.top_k[0]

    @property
    def label(self) -> str:
        """Class name with the highest probability."""
        return self.best.label

    @property
    def confidence(self) -> float:
        """Its probability, in [0, 1]."""
        return self.best.confidence

    @property
    def confident(self) -> bool:
        """True only for the ``"species"`` verdict: say the species; otherwise say what :attr:`verdict` says."""
        return self.verdict == "species"

    @property
    def display_name(self) -> str:
        """Readable name of :attr:`label` (see :attr:`ClassScore.display_name`)."""
        return self.best.display_name

    @property
    def common_name(self) -> str | None:
        """Common name of :attr:`label`, or None."""
        return self.best.common_name

    @property
    def scientific_name(self) -> str | None:
        """Scientific name of :attr:`label`, or None."""
        return self.best.scientific_name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``label, confidence, confident, verdict, threshold, subject_score, novelty, display_name,
        common_name, scientific_name, top_k: [ClassScore.to_dict(), ...]``."""
        return {
            "label": self.label,
            "confidence": self.confidence,
            "confident": self.confident,
            "verdict": self.verdict,
            "threshold": self.threshold,
            "subject_score": self.subject_score,
            "novelty": self.novelty,
            "display_name": self.display_name,
            "common_name": self.common_name,
            "scientific_name": self.scientific_name,
            "top_k": [score.to_dict() for score in self.top_k],
        }


class Predictor:
    """A trained classifier ready for inference.

    Args:
        model: network mapping ``(N, 3, S, S)`` float32 to ``(N, C)`` logits; put in eval mode here.
        class_names: ``C`` names, index i for logit i.
        preprocessing: the checkpoint's preprocessing; :attr:`transform` is built from it.
        device: where the network runs.
        precision: ``"fp32"``, ``"bf16"`` (bf16 autocast, or OpenVINO's bf16 inference), or ``"auto"`` (see
            :func:`resolve_inference_precision`).
        backend: ``"torch"`` (eager PyTorch, channels_last) or ``"openvino"`` (CPU only; optional package).
        confidence_threshold: predictions below it are flagged ``confident=False`` (0 disables the flag).
        temperature: T > 0; probabilities are ``softmax(logits / T)`` (temperature scaling, Guo et al. 2017, fitted
            on validation data by ``training.metrics.fit_temperature``); 1 leaves the network's softmax as is.
        class_info: optional ``{class name: {"common_name": str, "scientific_name": str}}``.
        metadata: descriptive fields (arch, epoch, metrics...) reported by :meth:`describe`.

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
        confidence_threshold: float = 0.0,
        temperature: float = 1.0,
        class_info: dict[str, dict[str, str | None]] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        self.temperature = temperature  # validated by the property's setter
        precision = resolve_inference_precision(precision, device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "openvino" and torch.device(device).type != "cpu":
            raise ValueError("the openvino backend runs on the CPU: use device cpu or backend torch")
        self.device = torch.device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.transform = eval_transform(preprocessing)
        self.precision = precision
        self.confidence_threshold = float(confidence_threshold)
        info = class_info or {}
        self.class_info = {
            name: (info.get(name, {}).get("common_name") or None, info.get(name, {}).get("scientific_name") or None)
            for name in self.class_names
        }
        self.metadata = dict(metadata or {})
        size = preprocessing.image_size
        with torch.inference_mode():
            num_outputs = self.model(torch.zeros(1, 3, size, size, device=self.device)).shape[1]
        if num_outputs != len(self.class_names):
            raise ValueError(f"model has {num_outputs} outputs but {len(self.class_names)} class names")
        self.backend = backend
        self._openvino = (
            OpenVINONetwork(self.model, size, precision, torch.get_num_threads()) if backend == "openvino" else None
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        backend: str = "torch",
        confidence_threshold: float | None = None,
    ) -> Predictor:
        """Load a checkpoint written by ``train.py`` (see :mod:`model.checkpoint`).

        Args:
            path: the checkpoint file.
            device: where to run the network.
            precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.
            backend: ``"torch"`` or ``"openvino"``.
            confidence_threshold: overrides the threshold the checkpoint records (``serving.confidence_threshold``,
                chosen on validation data; 0 when absent).

        The softmax temperature is the checkpoint's ``serving.temperature`` (fitted on validation data), 1 when
        absent (checkpoints written before temperature scaling).

        Raises:
            model.checkpoint.CheckpointError: the file is missing or not a valid checkpoint.
            ValueError: see :class:`Predictor`.
        """
        ckpt = load_checkpoint(path)
        serving = ckpt.get("serving", {})
        if confidence_threshold is None:
            confidence_threshold = float(serving.get("confidence_threshold", 0.0))
        metadata = {
            "arch": ckpt["arch"],
            "epoch": ckpt.get("epoch"),
            "metrics": ckpt.get("metrics", {}),
            "config": ckpt.get("config", {}),
            "serving": serving,
            "checkpoint": os.path.basename(os.fspath(path)),
            "created": ckpt.get("created"),
        }
        predictor = cls(
            model_from_checkpoint(ckpt),
            ckpt["class_names"],
            Preprocessing.from_dict(ckpt["preprocessing"]),
            device=device,
            precision=precision,
            backend=backend,
            confidence_threshold=confidence_threshold,
            temperature=float(serving.get("temperature", 1.0)),
            class_info=ckpt.get("class_info"),
            metadata=metadata,
        )
        logger.info(
            "loaded %s: %s, %d classes, input %d px, temperature %.3g, %s %s on %s",
            path,
            ckpt["arch"],
            len(predictor.class_names),
            predictor.preprocessing.image_size,
            predictor.temperature,
            predictor.backend,
            predictor.precision,
            device,
        )
        return predictor

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
        common, scientific = self.class_info.get(label, (None, None))
        return ClassScore(label, confidence, common, scientific)

    def summary(self) -> dict[str, Any]:
        """Short JSON-ready description for API responses: arch, checkpoint, input size, precision, threshold,
        softmax temperature and the headline validation metrics."""
        metrics = self.metadata.get("metrics", {})
        return {
            "arch": self.metadata.get("arch"),
            "checkpoint": self.metadata.get("checkpoint"),
            "created": self.metadata.get("created"),
            "num_classes": len(self.class_names),
            "image_size": self.preprocessing.image_size,
            "precision": self.precision,
            "backend": self.backend,
            "confidence_threshold": self.confidence_threshold,
            "temperature": self.temperature,
            "val_accuracy": metrics.get("val_accuracy"),
            "val_macro_f1": metrics.get("val_macro_f1"),
        }

    def describe(self) -> dict[str, Any]:
        """Full JSON-ready description for the model page: everything in :meth:`summary` plus the classes with
        their names (``class_info``), the training ``config``, the ``metrics`` (possibly with ``per_class`` and
        ``confusion_matrix``), ``epoch`` and the ``serving`` record."""
        return {
            **self.metadata,
            **{k: v for k, v in self.summary().items() if k not in ("val_accuracy", "val_macro_f1")},
            "classes": self.class_names,
            "class_info": {
                name: {k: v for k, v in self.score(name, 0.0).to_dict().items() if k.endswith("name")}
                for name in self.class_names
            },
        }

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a preprocessed batch.

        Args:
            batch: float32 ``(N, 3, S, S)``, the output of :attr:`transform` stacked.

        Returns:
            float32 ``(N, C)`` logits on the CPU, as the network gives them (not divided by the temperature).
        """
        if self._openvino is not None:
            return self._openvino(batch.float().cpu())
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.model(batch)
        return out.float().cpu()

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``softmax(logits / temperature)`` of float ``(N, C)`` logits, rows summing to 1;
        the one place where confidences are made from logits (serving and evaluation). The temperature never
        changes the most probable class."""
        return torch.softmax(logits / self.temperature, dim=1)

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
        return self.predict_batch(torch.stack([self.transform(to_rgb(im)) for im in images]), top_k)

    def predict_batch(self, batch: torch.Tensor, top_k: int = 5) -> list[Prediction]:
        """Classify a preprocessed batch (float32 ``(N, 3, S, S)``, the output of :attr:`transform` stacked).

        Returns:
            One :class:`Prediction` per row, ``top_k`` clipped to the number of classes.
        """
        probs = self.probabilities(batch)
        k = max(1, min(top_k, len(self.class_names)))
        values, indices = probs.topk(k, dim=1)
        predictions = []
        for vals, idxs in zip(values.tolist(), indices.tolist(), strict=True):
            scores = [self.score(self.class_names[i], float(v)) for v, i in zip(vals, idxs, strict=True)]
            predictions.append(Prediction(top_k=scores, threshold=self.confidence_threshold))
        return predictions
