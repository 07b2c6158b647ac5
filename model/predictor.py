"""Inference from a checkpoint: the object the web app, ``evaluate.py`` and the tests share.

A :class:`Predictor` is built once (per web-app instance, per evaluation run) from a checkpoint; it owns the
network in eval mode, the class names and the eval transform that the checkpoint records.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from model.checkpoint import load_checkpoint, model_from_checkpoint
from model.transforms import Preprocessing, eval_transform, to_rgb

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Prediction:
    """The classification of one image.

    Attributes:
        label: class name with the highest probability.
        confidence: its softmax probability, in [0, 1].
        top_k: ``(class name, probability)`` pairs, most probable first.
    """

    label: str
    confidence: float
    top_k: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"label", "confidence", "top_k": [{"label", "confidence"}, ...]}``."""
        return {
            "label": self.label,
            "confidence": self.confidence,
            "top_k": [{"label": name, "confidence": p} for name, p in self.top_k],
        }


class Predictor:
    """A trained classifier ready for inference.

    Args:
        model: network mapping ``(N, 3, S, S)`` float32 to ``(N, C)`` logits; put in eval mode here.
        class_names: ``C`` names, index i for logit i.
        preprocessing: the checkpoint's preprocessing; :attr:`transform` is built from it.
        device: where the network runs.
        precision: ``"fp32"``, or ``"bf16"`` for bf16 autocast (on CPUs with AVX-512 BF16/AMX, or GPUs).
        metadata: descriptive fields (arch, epoch, metrics...) reported by :meth:`describe`.

    Raises:
        ValueError: the number of class names does not match the network's outputs, or unknown precision.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        class_names: Sequence[str],
        preprocessing: Preprocessing,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.transform = eval_transform(preprocessing)
        self.precision = precision
        self.metadata = dict(metadata or {})
        size = preprocessing.image_size
        with torch.inference_mode():
            num_outputs = self.model(torch.zeros(1, 3, size, size, device=self.device)).shape[1]
        if num_outputs != len(self.class_names):
            raise ValueError(f"model has {num_outputs} outputs but {len(self.class_names)} class names")

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> Predictor:
        """Load a checkpoint written by ``train.py`` (see :mod:`model.checkpoint`).

        Raises:
            model.checkpoint.CheckpointError: the file is missing or not a valid checkpoint.
        """
        ckpt = load_checkpoint(path)
        metadata = {
            "arch": ckpt["arch"],
            "epoch": ckpt.get("epoch"),
            "metrics": ckpt.get("metrics", {}),
            "checkpoint": os.path.basename(os.fspath(path)),
            "created": ckpt.get("created"),
        }
        predictor = cls(
            model_from_checkpoint(ckpt),
            ckpt["class_names"],
            Preprocessing.from_dict(ckpt["preprocessing"]),
            device=device,
            precision=precision,
            metadata=metadata,
        )
        logger.info(
            "loaded %s: %s, %d classes, input %d px, %s on %s",
            path,
            ckpt["arch"],
            len(predictor.class_names),
            predictor.preprocessing.image_size,
            precision,
            device,
        )
        return predictor

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: name, arch, classes, input size, precision and recorded metrics."""
        return {
            **self.metadata,
            "classes": self.class_names,
            "image_size": self.preprocessing.image_size,
            "precision": self.precision,
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
            float32 ``(N, C)`` logits on the CPU.
        """
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.model(batch)
        return out.float().cpu()

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities, float32 ``(N, C)``, rows summing to 1; see :meth:`logits` for ``batch``."""
        return torch.softmax(self.logits(batch), dim=1)

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
        batch = torch.stack([self.transform(to_rgb(im)) for im in images])
        probs = self.probabilities(batch)
        k = max(1, min(top_k, len(self.class_names)))
        values, indices = probs.topk(k, dim=1)
        predictions = []
        for vals, idxs in zip(values.tolist(), indices.tolist(), strict=True):
            pairs = [(self.class_names[i], float(v)) for v, i in zip(vals, idxs, strict=True)]
            predictions.append(Prediction(label=pairs[0][0], confidence=pairs[0][1], top_k=pairs))
        return predictions
