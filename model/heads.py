"""The classifier heads put on a backbone's pooled features, by name (``train.py --head``): one linear layer (the
library's), an MLP, a cosine classifier, or a linear layer on L2-normalised features. :func:`make_head` builds one
from the spec that checkpoints record as ``"head"``; :mod:`model.network` puts it in the model's classifier slot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from model.choices import HEADS  # the ``--head`` choices, declared without torch for the parsers


class MLPHead(nn.Sequential):
    """``Linear -> ReLU -> Dropout`` for each hidden width, then a ``Linear`` to the logits.

    Maps features ``(N, in_features)`` to logits ``(N, num_classes)``. The default widths (256, 128, 64) and
    dropout 0.2 are those of the flower classifier this product grew from (an MLP on a frozen ResNet-50).
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 128, 64), dropout: float = 0.2
    ):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class CosineHead(nn.Module):
    """Cosine classifier with a learnt scale: ``logits = s * normalize(x) @ normalize(W).T``.

    Maps features float ``(N, in_features)`` to logits ``(N, num_classes)`` in ``[-s, s]``: each logit is the
    cosine between the features and a class's weight vector, so no class wins by the norm of its weights (which
    grows with its share of the training images) and no image by the norm of its features. The scale ``s`` is
    learnt (as its logarithm, so that it stays positive), from 10 at the start (Gidaris & Komodakis, "Dynamic
    Few-Shot Visual Learning without Forgetting", CVPR 2018; Qi et al., "Low-Shot Learning with Imprinted
    Weights", CVPR 2018). Measured as a logistic regression on L2-normalised features of the default model, such a
    head gains 9 points of real-photo top-1 (EXPERIMENTS.md, section 5).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosines = nn.functional.linear(
            nn.functional.normalize(features, dim=1), nn.functional.normalize(self.weight, dim=1)
        )
        return self.log_scale.exp() * cosines


class NormalizedLinear(nn.Linear):
    """A linear classifier on L2-normalised features: ``logits = normalize(x) @ W.T + b``.

    Maps features float ``(N, in_features)`` to logits ``(N, num_classes)``; no image wins by the norm of its
    features. The head that ``python -m training.refit`` fits, as a class-balanced logistic regression, on a
    fine-tuned network's frozen features ("LP after FT"; EXPERIMENTS.md, section 5: 9 points of real-photo top-1 on
    the default model). Its state dict is a Linear's (``weight``, ``bias``).
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.normalize(features, dim=1))


def fit_logistic_regression(
    x: np.ndarray,
    y: np.ndarray,
    c: float,
    *,
    class_weight: str | None = None,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A multinomial logistic regression (scikit-learn's ``LogisticRegression``, L2 penalty ``c``, lbfgs, at most
    5,000 iterations) as a linear head's parameters: the heads :class:`NormalizedLinear` (``training.refit``) and the
    corrections memory (:mod:`model.memory`) are fitted with it.

    Args:
        x: float ``(N, D)`` inputs (L2-normalised features for those heads); y: int ``(N,)`` labels.
        class_weight, sample_weight: scikit-learn's (``"balanced"``; float ``(N,)``).

    Returns:
        ``(classes, coef, intercept)``: the labels present in ``y`` (sorted, ``(K,)``), float64 ``(K, D)`` and
        ``(K,)``; with two classes, scikit-learn's one row (``logit(1) - logit(0)``) is split into two.
    """
    from sklearn.linear_model import LogisticRegression  # here: the app imports the heads; sklearn takes ~1 s

    regression = LogisticRegression(C=c, class_weight=class_weight, max_iter=5000)
    regression.fit(x, y, sample_weight=sample_weight)
    coef, intercept = regression.coef_, regression.intercept_
    if len(regression.classes_) == 2:
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return regression.classes_, coef, intercept


#: What a classifier slot may hold: a library's Linear, or one of our heads.
CLASSIFIER_TYPES = (nn.Linear, MLPHead, CosineHead)


def make_head(in_features: int, num_classes: int, head: dict[str, Any] | None) -> nn.Module:
    """The module for a head spec ``{"type": "linear"}``, ``{"type": "cosine"}`` (:class:`CosineHead`),
    ``{"type": "normalized"}`` (:class:`NormalizedLinear`) or
    ``{"type": "mlp", "hidden": [...], "dropout": p}``.

    Raises:
        ValueError: unknown head type.
    """
    kind = (head or {}).get("type", "linear")
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "cosine":
        return CosineHead(in_features, num_classes)
    if kind == "normalized":
        return NormalizedLinear(in_features, num_classes)
    if kind == "mlp":
        return MLPHead(in_features, num_classes, head.get("hidden", (256, 128, 64)), float(head.get("dropout", 0.2)))
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
