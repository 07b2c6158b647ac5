"""The release step of a training run: ``release.pt``, the checkpoint the app serves, written once.

:func:`write_release` takes the run's ``best.pt``, makes its slim fp16 copy
(:func:`model.checkpoint.release_checkpoint`) and runs that copy as served (a :class:`model.predictor.Predictor`
over its weights and eval transform) once over each set it needs: the validation images and, for the open-set
checks, the un-augmented training images and the ``--open-set-photos`` / ``--not-subject`` folders. Every number
the release records is then a pure function of those outputs:

- the softmax temperature, fitted on the validation logits (temperature scaling, Guo et al. 2017;
  :func:`training.metrics.fit_temperature`), and the evaluation at it
  (:func:`training.evaluation.evaluate_logits`);
- the "not sure" threshold for ``--target-accuracy`` (:func:`training.metrics.selective_threshold`);
- the open-set statistics and thresholds (:func:`training.open_set.choose_open_set`), and the verdicts they give
  on each set (:func:`training.open_set.verdict_counts`).

It writes the evaluation files and saves ``release.pt`` once, with all of it (schema: :mod:`model.checkpoint`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import (
    Checkpoint,
    CheckpointError,
    ServingRecord,
    load_checkpoint,
    model_from_checkpoint,
    release_checkpoint,
    save_checkpoint,
)
from model.imagenet_hierarchy import subject_classes_for
from model.open_set import set_kind
from model.predictor import Predictor, calibrated_probabilities
from training.config import TrainConfig, csv_list
from training.data import Sample
from training.evaluation import DEFAULT_TARGET_ACCURACY, Outputs, collect_outputs, evaluate_logits
from training.family import choose_for_release
from training.open_set import OpenSetFit, choose_open_set, verdict_counts
from training.photo_sets import open_set_samples
from training.reports import report, write_json

logger = logging.getLogger(__name__)

#: ``train.py``'s open-set options (:class:`training.config.TrainConfig` fields); a release records the values it
#: chose its thresholds with.
OPEN_SET_OPTIONS = (
    "subject",
    "open_set_photos",
    "not_subject",
    "subject_rejection",
    "novelty_rejection",
    "max_confidently_wrong",
    "max_unknown_named",
)


def add_release_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the commands that release a trained network again (``python -m training.refit``,
    ``python -m training.rerelease``): ``--data``, ``--workers`` and ``train.py``'s open-set options, which
    override those the run recorded (:func:`open_set_overrides`)."""
    parser.add_argument("--data", help="ImageFolder root, when it moved since training")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument("--open-set-photos", type=csv_list, metavar="DIR,DIR,...", help="as train.py's")
    parser.add_argument("--not-subject", type=csv_list, metavar="DIR,DIR,...", help="as train.py's")
    parser.add_argument("--subject", help="as train.py's")
    for name in ("subject_rejection", "novelty_rejection", "max_confidently_wrong", "max_unknown_named"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, help="as train.py's")


def open_set_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The open-set options (:data:`OPEN_SET_OPTIONS`) given on the command line (:func:`add_release_arguments`)."""
    return {k: getattr(args, k) for k in OPEN_SET_OPTIONS if getattr(args, k) is not None}


def run_release_command(release: Callable[[], dict[str, Any]], out: Path) -> int:
    """Run a release command's work (``release()``, returning :func:`write_release`'s evaluation) and log its result;
    the exit code: 0, or 2 on a user error (a missing file, an unreadable checkpoint, a bad option), logged."""
    try:
        final = release()
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    logger.info(
        "released %s: val accuracy %.4f, macro-F1 %.4f", out / "release.pt", final["accuracy"], final["macro_f1"]
    )
    return 0


@dataclass
class OpenSetOptions:
    """What the release step needs to choose the open-set thresholds (see :mod:`training.open_set`): the training
    images (to fit the scores on) and the run's configuration (its :data:`OPEN_SET_OPTIONS`)."""

    train_root: Path
    train_samples: list[Sample]
    config: TrainConfig


def write_release(
    out: Path,
    val_root: Path,
    val_samples: list[Sample],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 2,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    open_set: OpenSetOptions | None = None,
) -> dict[str, Any]:
    """Make ``out/release.pt`` from ``out/best.pt`` and evaluate it on the validation images.

    The release holds fp16 weights and no optimizer state; its ``metrics`` are this evaluation (of the network as
    served), so the numbers the web app shows are the ones ``evaluate.py`` reproduces; its ``serving`` record holds
    the softmax temperature and the "not sure" threshold for ``target_accuracy``, chosen on the validation images.
    With ``open_set``, the "unknown species" and "not a fish" checks are fitted and their thresholds chosen, and the
    verdicts on each set are reported under ``"open_set"``. Writes the evaluation files into ``out``.

    Returns:
        The evaluation (see :func:`training.evaluation.evaluate_logits`) plus ``"best_epoch"``.
    """
    best = load_checkpoint(out / "best.pt")
    release = release_checkpoint(best)
    predictor = served_network(release, device)
    val = collect_outputs(predictor, val_root, val_samples, batch_size=batch_size, workers=workers)
    final = evaluate_logits(
        val.logits, val.targets, predictor.class_names, target_accuracy=target_accuracy, fit_temperature=True
    )
    logger.info(
        "final evaluation of %s (epoch %s) on %d val images:\n%s",
        out / "release.pt",
        best.epoch,
        final["images"],
        report(final, predictor.class_names, out),
    )
    metrics = release_metrics(final, best.epoch)
    serving = ServingRecord(**final["selective"], temperature=float(final["temperature"]))
    config = release.config
    if open_set is not None:
        sets = {"val": val, **_open_set_outputs(predictor, open_set, batch_size, workers)}
        fit, reports = _choose_open_set(sets, open_set.config, final)
        release = release.replace(open_set=fit.record())
        # the "not sure" threshold may have risen: describe it by what it does on the validation images
        serving = fit.serving(serving, coverage=reports["val"]["species"], accuracy=reports["val"]["species_accuracy"])
        # the options that chose the thresholds, which a release re-made with --resume may have changed
        config = {**config, **{name: getattr(open_set.config, name) for name in OPEN_SET_OPTIONS}}
        metrics["open_set"] = final["open_set"] = reports
        serving = _choose_family(release.replace(serving=serving), sets, open_set.config, reports, device)
    _log_serving(final, serving, target_accuracy)
    save_checkpoint(release.replace(metrics=metrics, serving=serving, config=config), out / "release.pt")
    final["best_epoch"] = best.epoch
    return final


def release_run(
    out: Path, cfg: TrainConfig, train: list[Sample], val: list[Sample], *, batch_size: int = 64, workers: int = 2
) -> dict[str, Any]:
    """Release the run folder ``out`` (its ``best.pt`` written) as ``train.py`` does, outside ``train.py``: the
    release step (:func:`write_release`) on ``cfg``'s data, target accuracy and open-set options, with ``train``
    fitting the open-set scores and ``val`` evaluated, then ``out/metrics.json`` with the open-set verdicts.

    Returns:
        The release's evaluation (:func:`write_release`).
    """
    root = Path(cfg.data)
    final = write_release(
        out,
        root,
        val,
        batch_size=batch_size,
        workers=workers,
        target_accuracy=cfg.target_accuracy,
        open_set=OpenSetOptions(root, train, cfg),
    )
    write_json(out / "metrics.json", final)
    return final


def served_network(release: Checkpoint, device: torch.device | str) -> Predictor:
    """A :class:`model.predictor.Predictor` over ``release``'s weights (torch, fp32), as ``Predictor.from_checkpoint``
    would load the file, before any temperature or threshold is chosen (temperature 1, no open-set checks)."""
    return Predictor(
        model_from_checkpoint(release),
        release.class_names,
        release.preprocessing,
        device=device,
        class_info=release.class_info,
    )


def release_metrics(final: dict[str, Any], best_epoch: int | None) -> dict[str, Any]:
    """The release's ``metrics`` record from the final evaluation (:func:`training.evaluation.evaluate_logits`
    with a fitted temperature) of ``best.pt``'s epoch (None for weights of no single epoch, e.g. a model soup)."""
    return {
        "val_accuracy": final["accuracy"],
        "val_macro_f1": final["macro_f1"],
        "val_macro_precision": final["macro_precision"],
        "val_macro_recall": final["macro_recall"],
        "val_images": float(final["images"]),
        "best_epoch": float(best_epoch) if best_epoch is not None else None,
        "val_ece": float(final["ece"]),
        "val_ece_before": float(final["ece_before"]),
        "val_nll": float(final["nll"]),
        "temperature": float(final["temperature"]),
        "per_class": final["per_class"],
        "confusion_matrix": final["confusion_matrix"],
    }


def _open_set_outputs(
    predictor: Predictor, options: OpenSetOptions, batch_size: int, workers: int
) -> dict[str, Outputs]:
    """The network's outputs on the training images (``"train"``) and on each folder of
    :func:`training.photo_sets.open_set_samples` (``"known_photos"``, ``"unknown_photos"``, ``"not_subject"``)."""
    cfg = options.config
    kwargs = {"batch_size": batch_size, "workers": workers}
    outputs = {"train": collect_outputs(predictor, options.train_root, options.train_samples, **kwargs)}
    others = open_set_samples(cfg.open_set_photos, cfg.not_subject, predictor.class_names)
    for name, (root, rows) in others.items():
        outputs[name] = collect_outputs(predictor, root, rows, **kwargs)
    return outputs


def _choose_open_set(
    sets: dict[str, Outputs], cfg: TrainConfig, final: dict[str, Any]
) -> tuple[OpenSetFit, dict[str, dict[str, float]]]:
    """Choose the open-set thresholds (:func:`training.open_set.choose_open_set`) on every set but ``"train"``
    (fitted on) and the ``not_subject`` ones (which choose only the hierarchy rule's thresholds, where ``--subject``
    names a WordNet noun: :func:`model.imagenet_hierarchy.subject_classes_for`), at the fitted temperature and from
    the "not sure" threshold of ``final``; then the verdicts on every set but ``"train"``.

    Returns:
        ``(the choice, {set name: verdict report})``, sets in the order ``val``, then the folders' sets
        (:func:`training.photo_sets.open_set_samples`).
    """
    temperature = float(final["temperature"])
    not_subject = [outputs for name, outputs in sets.items() if set_kind(name) == "not_subject"]
    fit = choose_open_set(
        sets["train"],
        {name: outputs for name, outputs in sets.items() if set_kind(name) not in ("train", "not_subject")},
        temperature=temperature,
        confidence_threshold=final["selective"]["confidence_threshold"],
        subject=cfg.subject,
        subject_rejection=cfg.subject_rejection,
        novelty_rejection=cfg.novelty_rejection,
        max_confidently_wrong=cfg.max_confidently_wrong,
        max_unknown_named=cfg.max_unknown_named,
        hierarchy=subject_classes_for(cfg.subject),
        not_subject=not_subject,
    )
    reports = {
        name: verdict_counts(
            calibrated_probabilities(outputs.logits, temperature),
            outputs.targets,
            fit.scores(outputs),
            fit.rule,
            max_logits=outputs.logits.max(1).values,
        )
        for name, outputs in sets.items()
        if name != "train"
    }
    for name, rep in reports.items():
        logger.info("open set, %s: %s", name, ", ".join(f"{k} {v:.3f}" for k, v in rep.items()))
    return fit, reports


def _choose_family(
    release: Checkpoint, sets: dict[str, Outputs], cfg: TrainConfig, reports: dict[str, Any], device: Any
) -> ServingRecord:
    """``release``'s serving record with its family threshold (:mod:`training.family`), chosen on the photo sets'
    outputs, whose family numbers join ``reports``; as it is for a release without a taxonomy."""
    assert release.serving is not None
    chosen = choose_for_release(release, cfg.open_set_photos or [], sets, device)
    if chosen is None:
        return release.serving
    threshold, family_reports = chosen
    for name, numbers in family_reports.items():
        reports[name].update(numbers)
    return dataclasses.replace(release.serving, family_threshold=threshold)


def _log_serving(final: dict[str, Any], serving: ServingRecord, target_accuracy: float) -> None:
    """Log the temperature and the "not sure" threshold the release serves with."""
    logger.info(
        "temperature %.3f: ECE %.4f -> %.4f on the val images", final["temperature"], final["ece_before"], final["ece"]
    )
    # the selective threshold, or the open-set one where that rose above it
    logger.info(
        "'not sure' threshold %.3f: %.1f%% of val images named, %.1f%% of those right (target %.0f%%)",
        serving.confidence_threshold,
        100 * (serving.coverage or 0.0),
        100 * (serving.selective_accuracy or 0.0),
        100 * target_accuracy,
    )
