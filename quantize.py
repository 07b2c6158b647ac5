"""Quantize a checkpoint's network to int8 for OpenVINO, calibrated on training images. See ``--help``.

Writes ``<checkpoint>.int8.xml``/``.bin`` beside the checkpoint and ``<checkpoint>.int8.json`` with the top-1
agreement of int8 with fp32 on the validation images; serve it with ``FISH_PRECISION=int8``, evaluate it with
``evaluate.py --backend openvino --precision int8``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import random
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from model import quantization
from model.checkpoint import CheckpointError
from model.predictor import BackendUnavailableError, Predictor
from training.data import ImageListDataset, read_split, scan_image_folder
from training.evaluation import compare_predictors

logger = logging.getLogger("quantize")


def get_args_parser() -> argparse.ArgumentParser:
    """Arguments of ``quantize.py``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by train.py")
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


def main(argv: list[str] | None = None) -> int:
    """Quantize, write, measure; exit code 0 on success, 2 on a user error."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.calibration_images < 1:
            raise ValueError("--calibration-images must be at least 1")
        fp32 = Predictor.from_checkpoint(args.checkpoint, precision="fp32")
        if args.split_file:
            train, val = (read_split(args.split_file, fp32.class_names, split) for split in ("train", "val"))
        else:
            train, val = scan_image_folder(args.data, fp32.class_names)[1], []
        if not train:
            raise ValueError(f"no training images found in {args.data}")
        chosen = random.Random(args.seed).sample(train, min(args.calibration_images, len(train)))
        calibration = DataLoader(ImageListDataset(args.data, chosen, fp32.transform), batch_size=1)
        int8_model = quantization.quantize(
            fp32.network, fp32.preprocessing.image_size, (images for images, _ in calibration), len(chosen)
        )
        path = quantization.save(int8_model, args.checkpoint)
        report: dict[str, Any] = {
            "checkpoint": args.checkpoint.name,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "calibration_images": len(chosen),
            "method": "NNCF post-training quantization, MIXED preset",
        }
        if val:
            int8 = Predictor.from_checkpoint(args.checkpoint, precision="int8", backend="openvino")
            with torch.inference_mode():
                row = compare_predictors(fp32, {"int8": int8}, args.data, val)["int8"]
            report["validation"] = {
                "images": row["images"],
                "top1_agreement": row["top1_agreement"],
                "accuracy_fp32": row["accuracy_reference"],
                "accuracy_int8": row["accuracy"],
            }
        quantization.write_report(args.checkpoint, report)
    except (
        CheckpointError,
        ValueError,
        FileNotFoundError,
        BackendUnavailableError,
        quantization.QuantizationUnavailableError,
    ) as exc:
        logger.error("%s", exc)
        return 2
    sys.stdout.write(f"wrote {path} ({path.with_suffix('.bin').stat().st_size // 1024} KB)\n")
    if "validation" in report:
        v = report["validation"]
        sys.stdout.write(
            f"top-1 agreement with fp32 on {v['images']} validation images: {100 * v['top1_agreement']:.2f} % "
            f"(accuracy fp32 {100 * v['accuracy_fp32']:.2f} %, int8 {100 * v['accuracy_int8']:.2f} %)\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
