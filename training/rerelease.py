"""Release a model again with today's release step, on the same weights: new thresholds, no training.

When the release step learns a new rule (a new "not sure" or "not a fish" check), a shipped checkpoint need not be
trained again to get it: this command runs :func:`training.release.write_release` on its weights, with its recorded
options (or those given), and writes a new release beside the run's files:

    python -m training.rerelease weights/fish4knowledge_lite2.pt --out runs/f4k_lite2_rerelease \\
        --split-file weights/fish4knowledge_split.csv --data ../shared/data/fish4knowledge \\
        --open-set-photos DIR,DIR --not-subject DIR,DIR

``OUT/best.pt`` is the checkpoint as it is (a release's fp16 weights, which the release step casts to fp16 again:
unchanged), ``OUT/split.csv`` the split it was trained on, then ``OUT/release.pt``, the evaluation files and
``OUT/metrics.json`` as ``train.py`` writes them. The temperature, every threshold and every measurement are chosen
and made again on the network as served.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from model.checkpoint import load_checkpoint, save_checkpoint
from model.logs import setup_logging
from training.config import TrainConfig, config_from_dict
from training.data import read_split
from training.release import (
    add_release_arguments,
    open_set_overrides,
    release_run,
    run_release_command,
)

logger = logging.getLogger(__name__)


def rerelease(
    checkpoint: Path,
    out: Path,
    split_file: Path,
    *,
    data: str | None = None,
    overrides: dict[str, Any] | None = None,
    workers: int = 2,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Release ``checkpoint``'s weights again into ``out`` (see the module docstring).

    Args:
        checkpoint: a release or a run's ``best.pt``.
        out: the new run folder (created).
        split_file: the ``split.csv`` the checkpoint was trained with (its validation rows are evaluated, its
            training rows fit the open-set scores).
        data: the ImageFolder root, when it moved since training (default: the recorded ``data``).
        overrides: open-set options (:data:`training.release.OPEN_SET_OPTIONS`) to choose the thresholds with.

    Returns:
        The release's evaluation (:func:`training.release.write_release`).

    Raises:
        FileNotFoundError: a file is missing; model.checkpoint.CheckpointError: the checkpoint is unreadable;
        ValueError: bad options.
    """
    ckpt = load_checkpoint(checkpoint)
    values = {k: v for k, v in ckpt.config.items() if k in TrainConfig.model_fields}
    values.update(overrides or {}, out=str(out), resume=None)
    if data:
        values["data"] = data
    cfg = config_from_dict(values)
    class_names = list(ckpt.class_names)
    train = read_split(split_file, class_names, "train")
    val = read_split(split_file, class_names, "val")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(split_file, out / "split.csv")
    save_checkpoint(ckpt, out / "best.pt")
    logger.info("releasing %s again into %s", checkpoint, out)
    return release_run(out, cfg, train, val, batch_size=batch_size, workers=workers)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.rerelease CHECKPOINT --out OUT --split-file CSV``; returns the exit code (2 on a user
    error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a release (weights/*.pt) or a run's best.pt")
    parser.add_argument("--out", type=Path, required=True, help="new run folder for the release")
    parser.add_argument("--split-file", type=Path, required=True, help="the split.csv it was trained with")
    add_release_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()

    def release() -> dict[str, Any]:
        overrides = open_set_overrides(args)
        return rerelease(
            args.checkpoint, args.out, args.split_file, data=args.data, overrides=overrides, workers=args.workers
        )

    return run_release_command(release, args.out)


if __name__ == "__main__":
    sys.exit(main())
