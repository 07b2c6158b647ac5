"""The training-side commands: ``fish-train``, ``fish-evaluate`` and ``fish-quantize`` (``train.py``,
``evaluate.py`` and ``quantize.py`` at the repository root call these mains).

Each ``*_main(argv)`` parses its arguments, logs to stderr, prints its report to stdout and returns the exit code:
0 on success, 2 on a user's mistake (a bad file, option or class mismatch, logged as one line, no traceback). The
work itself lives in the modules they call (:func:`training.trainer.fit`, :mod:`training.evaluation`,
:mod:`training.open_set`, :mod:`training.reports`, :mod:`model.quantization`); the options they share with
``fish-predict`` come from :mod:`model.cli`.

This module imports only what the parsers need (:mod:`model.cli`, :mod:`training.config`: no torch); each main
imports the work after its arguments are parsed, so ``--help`` and a mistyped option answer in a fraction of a
second instead of the 5 to 8 s of loading torch, timm and scikit-learn.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli import PREDICTOR_ERRORS, add_inference_arguments, command_parser
from model.errors import CheckpointError
from model.logs import setup_logging
from training.config import csv_list, parse_args

if TYPE_CHECKING:  # imported for annotations only: the parsers stay free of torch
    import torch

    from model.predictor import Predictor
    from training.data import Sample


def train_main(argv: list[str] | None = None) -> int:
    """Fine-tune a classifier on an ImageFolder tree (``train.py --help``; ``--config`` for a YAML recipe).

    Runs unchanged under ``torchrun`` (one process per GPU; see README "More than one GPU or machine"): only rank 0
    logs progress.

    Returns:
        The exit code: 0 on success, 2 on a user error (bad data, options, weights or checkpoint).
    """
    cfg = parse_args(argv)
    setup_logging(rank=int(os.environ.get("RANK", "0")))  # torchrun: only rank 0 logs progress
    from model.network import WeightsUnavailableError
    from training.trainer import fit

    try:
        result = fit(cfg)
    except (ValueError, FileNotFoundError, WeightsUnavailableError, CheckpointError) as exc:
        logging.getLogger("train").error("%s", exc)
        return 2
    logging.getLogger("train").info(
        "done: val accuracy %.4f, macro-F1 %.4f, ECE %.4f (best epoch %d of %d run), %.0f s, %.1f img/s",
        result["accuracy"],
        result["macro_f1"],
        result.get("ece", float("nan")),
        result["best_epoch"] + 1,
        result["epochs_run"],
        result["train_seconds"],
        result["train_images_per_s"],
    )
    return 0


def evaluate_args_parser() -> argparse.ArgumentParser:
    """Arguments of ``evaluate.py`` / ``fish-evaluate``."""
    parser = command_parser(
        "Accuracy, precision, recall, F1 and the confusion matrix of a checkpoint on labelled images."
    )
    parser.add_argument("--data", required=True, help="ImageFolder root with the checkpoint's class folders")
    parser.add_argument("--split-file", help="evaluate only the 'val' rows of this split.csv (from a run folder)")
    parser.add_argument("--out", help="folder to write metrics.json, per_class.csv and the confusion matrix to")
    add_inference_arguments(parser, precision="fp32", backend="torch")
    parser.add_argument(
        "--open-set-photos",
        type=csv_list,
        metavar="DIR,DIR,...",
        help="also report the verdicts on these photos: sub-folders named like a class are known species, others "
        "unknown (e.g. ../shared/data/clownfish_photos,../shared/data/reef_photos/fish)",
    )
    parser.add_argument(
        "--not-subject",
        type=csv_list,
        metavar="DIR,DIR,...",
        help="also report the verdicts on these pictures of something else (e.g. flowers)",
    )
    return parser


def evaluate_main(argv: list[str] | None = None) -> int:
    """Evaluate a checkpoint and print the report (and the open-set verdicts when asked).

    Returns:
        The exit code: 0 on success, 2 on a user error (bad file, class mismatch).
    """
    args = evaluate_args_parser().parse_args(argv)
    setup_logging()
    from model.predictor import Predictor
    from model.runtime import resolve_device
    from training.evaluation import collect_outputs, evaluate_predictor, samples_for_checkpoint
    from training.family import family_counts, named_families, true_families
    from training.open_set import verdict_report
    from training.photo_sets import open_set_samples
    from training.reports import format_verdicts, report

    log = logging.getLogger("evaluate")
    try:
        predictor = Predictor.from_checkpoint(
            args.checkpoint, device=resolve_device(args.device), precision=args.precision, backend=args.backend
        )
        samples = samples_for_checkpoint(args.data, predictor.class_names, args.split_file)
        metrics = evaluate_predictor(predictor, args.data, samples, batch_size=args.batch_size, workers=args.workers)
    except (*PREDICTOR_ERRORS, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(f"{args.checkpoint} on {metrics['images']} images of {args.data}\n")
    sys.stdout.write(report(metrics, predictor.class_names, args.out) + "\n")
    try:
        sets = open_set_samples(args.open_set_photos, args.not_subject, predictor.class_names)
        for name, (root, rows) in sets.items():
            outputs = collect_outputs(predictor, root, rows, batch_size=args.batch_size, workers=args.workers)
            verdicts = verdict_report(predictor, outputs)
            if predictor.families is not None and len(outputs.targets) == len(rows):  # the family answer too
                truths = true_families(rows, predictor.class_names, predictor.families)
                if any(t is not None for t in truths):
                    named = named_families(predictor, outputs, predictor.family_threshold)
                    verdicts.update(family_counts(named, truths))
            sys.stdout.write(format_verdicts(name, root, verdicts) + "\n")
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return 0


def quantize_args_parser() -> argparse.ArgumentParser:
    """Arguments of ``quantize.py`` / ``fish-quantize``."""
    parser = command_parser("Quantize a checkpoint's network to int8 for OpenVINO, calibrated on training images.")
    parser.add_argument("--data", required=True, type=Path, help="ImageFolder root the checkpoint was trained on")
    parser.add_argument(
        "--split-file",
        type=Path,
        help="split.csv of the training run: calibrate on its 'train' rows, measure on its 'val' rows (without it: "
        "calibrate on every image and measure nothing)",
    )
    parser.add_argument("--calibration-images", type=int, default=300, help="training images NNCF reads")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _calibration_batches(args: argparse.Namespace, fp32: Predictor) -> tuple[list[torch.Tensor], list[Sample]]:
    """``--calibration-images`` training images drawn with ``--seed``, preprocessed by ``fp32`` as batches of one
    (unreadable ones skipped with a warning each, as in evaluation), and the validation samples (none without
    ``--split-file``).

    Raises:
        ValueError: no training image, or none of those drawn can be read.
    """
    from training.data import read_split, scan_image_folder
    from training.evaluation import readable_batches

    if args.split_file:
        train, val = (read_split(args.split_file, fp32.class_names, split) for split in ("train", "val"))
    else:
        train, val = scan_image_folder(args.data, fp32.class_names)[1], []
    if not train:
        raise ValueError(f"no training images found in {args.data}")
    chosen = random.Random(args.seed).sample(train, min(args.calibration_images, len(train)))
    calibration = [images for images, _ in readable_batches(fp32, args.data, chosen, batch_size=1, workers=0)]
    if not calibration:
        raise ValueError(f"none of the {len(chosen)} calibration images under {args.data} could be read")
    return calibration, val


def quantize_main(argv: list[str] | None = None) -> int:
    """Quantize a checkpoint's network to int8 for OpenVINO and measure it against fp32.

    Writes ``<checkpoint>.int8.xml``/``.bin`` beside the checkpoint and ``<checkpoint>.int8.json`` with the top-1
    agreement of int8 with fp32 on the validation images (:mod:`model.quantization`); serve it with
    ``FISH_PRECISION=int8``, evaluate it with ``evaluate.py --backend openvino --precision int8``.

    Returns:
        The exit code: 0 on success, 2 on a user error.
    """
    args = quantize_args_parser().parse_args(argv)
    setup_logging()
    from model import quantization
    from model.predictor import Predictor
    from training.evaluation import compare_predictors

    checkpoint = Path(args.checkpoint)
    try:
        if args.calibration_images < 1:
            raise ValueError("--calibration-images must be at least 1")
        fp32 = Predictor.from_checkpoint(checkpoint, precision="fp32")
        calibration, val = _calibration_batches(args, fp32)
        int8_model = quantization.quantize(fp32.network, fp32.preprocessing.image_size, calibration, len(calibration))
        path = quantization.save(int8_model, checkpoint)
        result: dict[str, Any] = {
            "checkpoint": checkpoint.name,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "calibration_images": len(calibration),
            "method": "NNCF post-training quantization, MIXED preset",
        }
        if val:
            int8 = Predictor.from_checkpoint(checkpoint, precision="int8", backend="openvino")
            row = compare_predictors(fp32, {"int8": int8}, args.data, val)["int8"]
            result["validation"] = {
                "images": row["images"],
                "top1_agreement": row["top1_agreement"],
                "accuracy_fp32": row["accuracy_reference"],
                "accuracy_int8": row["accuracy"],
            }
        quantization.write_report(checkpoint, result)
    except (*PREDICTOR_ERRORS, ValueError, FileNotFoundError) as exc:
        logging.getLogger("quantize").error("%s", exc)
        return 2
    sys.stdout.write(f"wrote {path} ({path.with_suffix('.bin').stat().st_size // 1024} KB)\n")
    if "validation" in result:
        v = result["validation"]
        sys.stdout.write(
            f"top-1 agreement with fp32 on {v['images']} validation images: {100 * v['top1_agreement']:.2f} % "
            f"(accuracy fp32 {100 * v['accuracy_fp32']:.2f} %, int8 {100 * v['accuracy_int8']:.2f} %)\n"
        )
    return 0
