"""Text and files made of metrics: the per-class table for logs and terminals, a run's evaluation files
(``metrics.json``, ``per_class.csv``, ``confusion_matrix.csv`` and ``.png``), its ``metrics.csv`` (one row per
epoch), and the one-line verdict report ``evaluate.py`` prints. The numbers come from :mod:`training.metrics`,
:mod:`training.evaluation` and :mod:`training.open_set`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The columns of a run's ``metrics.csv``, one row per epoch.
METRICS_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "train_images_per_s",
    "epoch_seconds",
]


def report(
    metrics: dict[str, Any], class_names: Sequence[str], out_dir: str | os.PathLike[str] | None, prefix: str = ""
) -> str:
    """Format ``metrics`` as text and, when ``out_dir`` is given, write the evaluation files there."""
    text = format_report(metrics)
    if out_dir is not None:
        paths = write_evaluation(metrics, class_names, Path(out_dir), prefix=prefix)
        logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return text


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON (``metrics.json``), ending with a newline; returns ``path``."""
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


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
    if "ece" in metrics:
        temperature = metrics.get("temperature", 1.0)
        line = f"ECE {metrics['ece']:.4f}   NLL {metrics['nll']:.4f}   temperature {temperature:.3f}"
        if "ece_before" in metrics:
            line += (
                f"   (temperature scaling: ECE {metrics['ece_before']:.4f} -> {metrics['ece']:.4f}, "
                f"NLL {metrics['nll_before']:.4f} -> {metrics['nll']:.4f})"
            )
        lines.append(line)
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
    write_json(paths[0], metrics)
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


def append_metrics_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the ``metrics.csv`` at ``path`` (:data:`METRICS_COLUMNS`, floats to 6 significant
    digits), writing the header first when the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def format_verdicts(name: str, root: str | os.PathLike[str], report: dict[str, float]) -> str:
    """One line for a :func:`verdict_report`, e.g. ``known_photos (239 images of DIR): species 80.3 % ...``."""
    parts = [
        f"{key.replace('_', ' ')} {100 * value:.1f} %"
        for key, value in report.items()
        if key not in ("images", "family_images")
    ]
    return f"{name} ({int(report['images'])} images of {root}): " + ", ".join(parts)
