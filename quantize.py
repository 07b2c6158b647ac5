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

import torch
from torch.utils.data import DataLoader

from model import quantization
from model.checkpoint import CheckpointError
from model.predictor import BackendUnavailableError, Predictor
from training.data import ImageListDataset, collate_skip_none, read_split, scan_image_folder

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


def agreement(reference: Predictor, candidate: Predictor, loader: DataLoader) -> dict[str, float]:
    """Top-1 agreement of ``candidate`` with ``reference`` and both accuracies, over ``loader``'s batches."""
    total = agree = right_ref = right_cand = 0
    for batch in loader:
        if batch is None:
            continue
        images, targets = batch
        ref, cand = reference.logits(images).argmax(1), candidate.logits(images).argmax(1)
        total += len(targets)
        agree += int((ref == cand).sum())
        right_ref += int((ref == targets).sum())
        right_cand += int((cand == targets).sum())
    return {
        "images": total,
        "top1_agreement": agree / total,
        "accuracy_fp32": right_ref / total,
        "accuracy_int8": right_cand / total,
    }


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
        report: dict[str, object] = {
            "checkpoint": args.checkpoint.name,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "calibration_images": len(chosen),
            "method": "NNCF post-training quantization, MIXED preset",
        }
        path = quantization.save(int8_model, args.checkpoint, report)
        if val:
            int8 = Predictor.from_checkpoint(args.checkpoint, precision="int8", backend="openvino")
            loader = DataLoader(
                ImageListDataset(args.data, val, fp32.transform), batch_size=64, collate_fn=collate_skip_none
            )
            with torch.inference_mode():
                report["validation"] = agreement(fp32, int8, loader)
            quantization.save(int8_model, args.checkpoint, report)
    except (CheckpointError, ValueError, FileNotFoundError, BackendUnavailableError) as exc:
        logger.error("%s", exc)
        return 2
    except quantization.QuantizationUnavailableError as exc:
        logger.error("%s", exc)
        return 2
    sys.stdout.write(f"wrote {path} ({path.with_suffix('.bin').stat().st_size // 1024} KB)\n")
    if "validation" in report:
        v = report["validation"]
        assert isinstance(v, dict)
        sys.stdout.write(
            f"top-1 agreement with fp32 on {v['images']} validation images: {100 * v['top1_agreement']:.2f} % "
            f"(accuracy fp32 {100 * v['accuracy_fp32']:.2f} %, int8 {100 * v['accuracy_int8']:.2f} %)\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
