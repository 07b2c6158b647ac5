"""Classification metrics with scikit-learn, and the files a run writes about them."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

logger = logging.getLogger(__name__)


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


def format_report(metrics: dict[str, Any]) -> str:
    """A plain-text table of per-class metrics with the headline numbers, for logs and terminals."""
    width = max(12, *(len(n) for n in metrics["per_class"]))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    total = sum(m["support"] for m in metrics["per_class"].values())
    lines.append(
        f"{'macro avg':<{width}}  {metrics['macro_precision']:9.3f}  {metrics['macro_recall']:6.3f}  "
        f"{metrics['macro_f1']:5.3f}  {total:7d}"
    )
    lines.append(f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}")
    return "\n".join(lines)


def write_evaluation(
    metrics: dict[str, Any], class_names: Sequence[str], out_dir: str | os.PathLike[str], prefix: str = ""
) -> list[Path]:
    """Write ``{prefix}metrics.json``, ``{prefix}per_class.csv``, ``{prefix}confusion_matrix.csv`` and ``.png``.

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{prefix}metrics.json", out / f"{prefix}per_class.csv", out / f"{prefix}confusion_matrix.csv"]
    paths[0].write_text(json.dumps(metrics, indent=2) + "\n")
    with open(paths[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name, m in metrics["per_class"].items():
            writer.writerow([name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]])
    with open(paths[2], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, metrics["confusion_matrix"], strict=True):
            writer.writerow([name, *row])
    paths.append(
        plot_confusion_matrix(np.array(metrics["confusion_matrix"]), class_names, out / f"{prefix}confusion_matrix.png")
    )
    return paths


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Save a row-normalised confusion matrix (recall per true class) with counts, via scikit-learn's display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(5.0, 0.55 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    display = ConfusionMatrixDisplay(normalised, display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", xticks_rotation=60, values_format=".2f", colorbar=False)
    ax.set_title("Confusion matrix (rows: true class, normalised)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
