"""Metrics of a classifier's predictions, as pure functions of labels, predictions, logits or probabilities:
accuracy, precision/recall/F1 and the confusion matrix (scikit-learn), the selective "not sure" threshold, and
calibration (ECE, NLL, temperature scaling). Text and files made of them: :mod:`training.reports`."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

logger = logging.getLogger(__name__)

#: Range the fitted temperature is clamped to: beyond it the validation set is too small or too easy to tell.
TEMPERATURE_RANGE = (0.05, 20.0)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1, and the confusion matrix.

    Args:
        y_true: true class indices, length N.
        y_pred: predicted class indices, length N.
        class_names: the C class names; index i names class i.

    Returns:
        ``{"accuracy", "macro_precision", "macro_recall", "macro_f1": float, "per_class": {name: {"precision",
        "recall", "f1", "support"}}, "confusion_matrix": C x C list (rows true, columns predicted)}``. Classes
        absent from both ``y_true`` and ``y_pred`` count with F1 0 (scikit-learn's ``zero_division=0``).
    """
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    present = support > 0
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # macro averages over the classes that have validation images
        "macro_precision": float(np.mean(precision[present])) if present.any() else 0.0,
        "macro_recall": float(np.mean(recall[present])) if present.any() else 0.0,
        "macro_f1": float(np.mean(f1[present])) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def selective_threshold(
    confidences: Sequence[float], correct: Sequence[bool], target_accuracy: float
) -> dict[str, float]:
    """The lowest confidence threshold whose accepted predictions reach ``target_accuracy`` on validation data.

    Selective classification (Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks", NeurIPS
    2017) with the empirical risk: predictions are sorted by confidence (top-1 softmax probability), and the
    threshold is the confidence of the last prediction of the longest prefix whose accuracy is at least
    ``target_accuracy``. Predictions below it are shown as "not sure".

    Args:
        confidences: top-1 probability of each validation image, in [0, 1].
        correct: whether each top-1 prediction was right.
        target_accuracy: wanted accuracy of the predictions above the threshold, in (0, 1].

    Returns:
        ``{"confidence_threshold", "coverage" (share of images above it), "selective_accuracy" (their accuracy),
        "target_accuracy"}``. The threshold is 0 when every prediction together already meets the target, and 1
        when no prefix does.

    Raises:
        ValueError: empty input, mismatched lengths, or ``target_accuracy`` out of range.
    """
    if not 0.0 < target_accuracy <= 1.0:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
    conf = np.asarray(confidences, dtype=np.float64)
    hits = np.asarray(correct, dtype=bool)
    if conf.size == 0 or conf.shape != hits.shape:
        raise ValueError("need one confidence per prediction, and at least one")
    order = np.argsort(-conf, kind="stable")
    cumulative = np.cumsum(hits[order]) / np.arange(1, conf.size + 1)
    meeting = np.flatnonzero(cumulative >= target_accuracy)
    if meeting.size == 0:
        return {
            "confidence_threshold": 1.0,
            "coverage": 0.0,
            "selective_accuracy": 0.0,
            "target_accuracy": target_accuracy,
        }
    n = int(meeting[-1]) + 1
    threshold = 0.0 if n == conf.size else float(conf[order[n - 1]])
    accepted = conf >= threshold
    return {
        "confidence_threshold": threshold,
        "coverage": float(accepted.mean()),
        "selective_accuracy": float(hits[accepted].mean()),
        "target_accuracy": target_accuracy,
    }


def expected_calibration_error(
    probabilities: np.ndarray | torch.Tensor, targets: Sequence[int] | np.ndarray | torch.Tensor, n_bins: int = 15
) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    ECE = sum over bins b of ``|B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``, where an image falls in bin
    ``(b / n_bins, (b + 1) / n_bins]`` by its confidence, the top-1 probability (Naeini et al., "Obtaining Well
    Calibrated Probabilities Using Bayesian Binning", AAAI 2015; Guo et al., "On Calibration of Modern Neural
    Networks", ICML 2017, which uses 15 bins).

    Args:
        probabilities: float ``(N, C)``, each row a probability distribution over the C classes.
        targets: int ``(N,)``, the true class indices.
        n_bins: number of equal-width bins over [0, 1].

    Returns:
        The ECE in [0, 1]: 0 for perfectly calibrated confidences.

    Raises:
        ValueError: no rows, mismatched shapes, or ``n_bins < 1``.
    """
    probs = np.asarray(probabilities.detach().cpu() if isinstance(probabilities, torch.Tensor) else probabilities)
    labels = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if probs.ndim != 2 or labels.shape != (probs.shape[0],) or probs.shape[0] == 0:
        raise ValueError(f"need probabilities (N, C) and targets (N,) with N > 0, got {probs.shape} and {labels.shape}")
    probs = probs.astype(np.float64)
    confidences = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidences, side="left")  # bin b holds (edges[b], edges[b + 1]]
    # |B_b| / N * |acc_b - conf_b| = |sum over B_b of (correct_i - confidence_i)| / N
    hits = np.bincount(bins, weights=correct, minlength=n_bins)
    confidence_sums = np.bincount(bins, weights=confidences, minlength=n_bins)
    return float(np.abs(hits - confidence_sums).sum() / confidences.size)


def negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of ``softmax(logits / temperature)`` for ``targets``.

    Args:
        logits: float ``(N, C)``.
        targets: int64 ``(N,)`` class indices.
        temperature: T > 0 dividing the logits.
    """
    z = logits.detach().to(torch.float64).cpu()
    return float(torch.nn.functional.cross_entropy(z / temperature, targets.detach().long().cpu()))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, *, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the mean NLL of ``softmax(logits / T)`` on held-out data.

    Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one scalar fitted on
    the validation set after training; it changes the confidences but never the predicted class. Like the
    authors' reference code this uses L-BFGS, here on ``log T`` (so T stays positive) in float64 with a strong
    Wolfe line search, from T = 1. Deterministic.

    Args:
        logits: float ``(N, C)`` validation logits of the network (at T = 1).
        targets: int64 ``(N,)`` true class indices.
        max_iter: L-BFGS iterations at most.

    Returns:
        T, clamped to :data:`TEMPERATURE_RANGE` (an all-correct, well-separated validation set pushes T to 0).

    Raises:
        ValueError: no rows, or shapes that do not match.
    """
    if logits.ndim != 2 or targets.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(
            f"need logits (N, C) and targets (N,) with N > 0, got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    # copies, so that tensors made under torch.inference_mode() (as Predictor.logits returns) can enter autograd
    z = logits.detach().cpu().to(torch.float64).clone()
    y = targets.detach().cpu().long().clone()
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # a margin beyond the final clamp keeps line-search trials finite without biasing the optimum inside it
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(low - 2.0, high + 2.0).exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    value = float(log_t.detach())
    if not math.isfinite(value):
        logger.warning("temperature scaling did not converge; keeping temperature 1")
        return 1.0
    return float(min(max(math.exp(value), TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1]))
