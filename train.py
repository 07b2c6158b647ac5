"""Fine-tune a torchvision classifier on an ImageFolder tree. See ``python train.py --help``.

Runs unchanged under ``torchrun`` (one process per GPU; see README "More than one GPU or machine").
"""

from __future__ import annotations

import logging
import os
import sys

from model.checkpoint import CheckpointError
from model.network import WeightsUnavailableError
from training.config import parse_args
from training.trainer import fit


def main(argv: list[str] | None = None) -> int:
    """Parse arguments (and ``--config``), train, and return the exit code (0 on success, 2 on a user error)."""
    cfg = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # torchrun: only rank 0 logs progress
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s {f'[rank {rank}] ' if rank else ''}%(name)s: %(message)s",
    )
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


if __name__ == "__main__":
    sys.exit(main())
