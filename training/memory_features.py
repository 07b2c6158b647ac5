"""Write a checkpoint's base features: what the app's corrections memory is fitted with and judged on.

The app learns from its users' accepted corrections by refitting a linear head on the checkpoint's training features
plus the corrections' features, and judges each new memory on the validation features (:mod:`model.memory`). Those
features are computed once per release, here, and shipped beside the checkpoint as ``<name>.features.npz``
(:func:`model.memory.features_path`; int8 rows, 3.4 MB for Fish4Knowledge's 4,070 images at 1,280 features).
Without that file the app serves and stores corrections but does not learn from them (the model page says so).

The features are the served network's (the app's default backend and precision, so they match what the app embeds
for a correction), of the un-augmented evaluation transform, for the checkpoint's own train/validation split::

    python -m training.memory_features --checkpoint weights/fish4knowledge_lite2.pt \\
        --data ../shared/data/fish4knowledge --split-file weights/fish4knowledge_split.csv
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from model.logs import setup_logging
from model.memory import BaseFeatures, features_path, normalize
from model.predictor import Predictor
from training.data import read_split
from training.evaluation import collect_outputs

logger = logging.getLogger(__name__)


def base_features(predictor: Predictor, data: Path, split_file: Path, workers: int = 2) -> BaseFeatures:
    """The penultimate features of the split's training and validation images, as ``predictor`` serves them.

    Returns:
        :class:`BaseFeatures`: float32 ``(N, D)`` L2-normalised rows and int64 ``(N,)`` class indices per split.

    Raises:
        ValueError: a split without readable images, or a split file naming classes the checkpoint lacks.
    """
    parts = {}
    for split in ("train", "val"):
        samples = read_split(split_file, predictor.class_names, split=split)
        outputs = collect_outputs(predictor, data, samples, workers=workers)
        parts[split] = (normalize(outputs.features), outputs.targets.numpy())
        logger.info("%s: %d images, %d features each", split, len(samples), outputs.features.shape[1])
    return BaseFeatures(parts["train"][0], parts["train"][1], parts["val"][0], parts["val"][1])


def main(argv: list[str] | None = None) -> int:
    """Write ``--out`` (default: beside the checkpoint) and return 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the image folder the split's paths are under")
    parser.add_argument("--split-file", type=Path, required=True, help="the checkpoint's split.csv")
    parser.add_argument("--out", type=Path, help="default: <checkpoint>.features.npz beside the checkpoint")
    parser.add_argument("--backend", default="auto", help="as the app's FISH_BACKEND (the served features)")
    parser.add_argument("--precision", default="auto", help="as the app's FISH_PRECISION")
    parser.add_argument("--workers", type=int, default=2, help="image-loading processes")
    args = parser.parse_args(argv)
    setup_logging()
    predictor = Predictor.from_checkpoint(args.checkpoint, backend=args.backend, precision=args.precision)
    out = args.out or features_path(args.checkpoint)
    base_features(predictor, args.data, args.split_file, args.workers).save(out)
    logger.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
