"""Evaluate a checkpoint on a labelled ImageFolder tree. See ``python evaluate.py --help``."""

from __future__ import annotations

import argparse
import logging
import sys

from model.checkpoint import CheckpointError
from model.predictor import BACKENDS, INT8, PRECISIONS, BackendUnavailableError, Predictor
from model.quantization import QuantizationUnavailableError
from training.evaluation import collect_outputs, evaluate_predictor, samples_for_checkpoint
from training.open_set import open_set_samples, verdict_report
from training.reports import format_verdicts, report


def get_args_parser() -> argparse.ArgumentParser:
    """Arguments of ``evaluate.py``."""
    parser = argparse.ArgumentParser(
        description="Accuracy, precision, recall, F1 and the confusion matrix of a checkpoint on labelled images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by train.py (best.pt, release.pt...)")
    parser.add_argument("--data", required=True, help="ImageFolder root with the checkpoint's class folders")
    parser.add_argument("--split-file", help="evaluate only the 'val' rows of this split.csv (from a run folder)")
    parser.add_argument("--out", help="folder to write metrics.json, per_class.csv and the confusion matrix to")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=(*PRECISIONS, "auto", INT8), default="fp32")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="torch", help="torch (default, the reference), openvino or auto"
    )
    parser.add_argument(
        "--open-set-photos",
        help="also report the verdicts on these photos: sub-folders named like a class are known species, others "
        "unknown (e.g. ../shared/data/clownfish_photos)",
    )
    parser.add_argument(
        "--not-subject", help="also report the verdicts on these pictures of something else (e.g. flowers)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Evaluate and print the report; exit code 0 on success, 2 on a user error (bad file, class mismatch)."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("evaluate")
    try:
        predictor = Predictor.from_checkpoint(
            args.checkpoint, device=args.device, precision=args.precision, backend=args.backend
        )
        samples = samples_for_checkpoint(args.data, predictor.class_names, args.split_file)
        metrics = evaluate_predictor(predictor, args.data, samples, batch_size=args.batch_size, workers=args.workers)
    except (
        CheckpointError,
        ValueError,
        FileNotFoundError,
        BackendUnavailableError,
        QuantizationUnavailableError,
    ) as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(f"{args.checkpoint} on {metrics['images']} images of {args.data}\n")
    sys.stdout.write(report(metrics, predictor.class_names, args.out) + "\n")
    try:
        sets = open_set_samples(args.open_set_photos, args.not_subject, predictor.class_names)
        for name, (root, rows) in sets.items():
            outputs = collect_outputs(predictor, root, rows, batch_size=args.batch_size, workers=args.workers)
            sys.stdout.write(format_verdicts(name, root, verdict_report(predictor, outputs)) + "\n")
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
