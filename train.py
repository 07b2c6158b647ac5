"""Fine-tune a torchvision classifier on an ImageFolder tree. See ``python train.py --help``."""

from __future__ import annotations

import logging
import sys

from model.checkpoint import CheckpointError
from model.network import WeightsUnavailableError
from training.config import TrainConfig, get_args_parser
from training.trainer import fit


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, and return the process exit code (0 on success, 2 on a user error)."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = fit(TrainConfig.from_namespace(args))
    except (ValueError, FileNotFoundError, WeightsUnavailableError, CheckpointError) as exc:
        logging.getLogger("train").error("%s", exc)
        return 2
    logging.getLogger("train").info(
        "done: val accuracy %.4f, macro-F1 %.4f (best epoch %d), %.0f s, %.1f img/s",
        result["accuracy"],
        result["macro_f1"],
        result["best_epoch"],
        result["train_seconds"],
        result["train_images_per_s"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
