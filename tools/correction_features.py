"""The network's outputs for every image of the sets the corrections simulation plays with, computed once and cached.

``tools/simulate_corrections.py`` replays a reviewer who accepts corrections of real photos; what the served model
says of a photo (logits, penultimate features, ImageNet logits) does not depend on the memory, so each set is run
through the predictor once and kept in ``OUT/<set>.npz``:

- ``f4k_train`` and ``f4k_val``: the Fish4Knowledge crops of the checkpoint's split (``weights/..._split.csv``);
- ``clarkii``: ``clownfish_photos/amphiprion_clarkii`` (one of the model's species);
- ``perideraion``: ``clownfish_photos/amphiprion_perideraion`` (pink skunk clownfish, a species the model lacks);
- ``reef_fish``: ``reef_photos/fish`` (reef fish of 22 families, none of the model's species);
- ``reef_not_fish``: ``reef_photos/not_fish`` (sea life that is not a fish);
- ``flowers``: ``flowers`` (2,000 flower photos; the release's other "not a fish" set, for
  ``tools/open_set_study.py``'s held-out release).

The photo sets are for evaluation and for choosing thresholds only (their SOURCE.md); nothing here trains the
shipped model.

    python -m tools.correction_features --checkpoint weights/fish4knowledge_lite2.pt --out runs/corrections_sim
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from model.logs import setup_logging
from model.predictor import Predictor
from training.data import Sample, read_split
from training.evaluation import collect_outputs
from training.photo_sets import all_images

logger = logging.getLogger("correction_features")

DATA = Path("../shared/data")


def image_sets(data: Path, split_file: Path, class_names: list[str]) -> dict[str, tuple[Path, list[Sample]]]:
    """Every set of the simulation: name -> (root folder, samples with targets; -1 for none of the classes)."""
    clownfish = data / "clownfish_photos"
    clarkii = class_names.index("amphiprion_clarkii")
    return {
        "f4k_train": (data / "fish4knowledge", read_split(split_file, class_names, split="train")),
        "f4k_val": (data / "fish4knowledge", read_split(split_file, class_names, split="val")),
        "clarkii": (
            clownfish / "amphiprion_clarkii",
            [Sample(s.path, clarkii) for s in all_images(clownfish / "amphiprion_clarkii")],
        ),
        "perideraion": (clownfish / "amphiprion_perideraion", all_images(clownfish / "amphiprion_perideraion")),
        "reef_fish": (data / "reef_photos" / "fish", all_images(data / "reef_photos" / "fish")),
        "reef_not_fish": (data / "reef_photos" / "not_fish", all_images(data / "reef_photos" / "not_fish")),
        "flowers": (data / "flowers", all_images(data / "flowers")),
    }


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--split-file``, ``--data`` and ``--out`` (the cache folder), with the shipped model's
    defaults: the options of this command and of the tools that read its cache."""
    parser.add_argument("--checkpoint", default="weights/fish4knowledge_lite2.pt")
    parser.add_argument("--split-file", default="weights/fish4knowledge_split.csv")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("runs/corrections_sim"))


def main(argv: list[str] | None = None) -> int:
    """Write ``OUT/<set>.npz`` (logits, features, imagenet_logits, targets, paths) for each set not yet there."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(parser)
    parser.add_argument("--backend", default="auto", help="the app's default backend (see FISH_BACKEND)")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args(argv)
    setup_logging()
    predictor = Predictor.from_checkpoint(args.checkpoint, backend=args.backend, precision=args.precision)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (root, samples) in image_sets(args.data, Path(args.split_file), predictor.class_names).items():
        path = args.out / f"{name}.npz"
        if path.exists():
            continue
        outputs = collect_outputs(predictor, root, samples, workers=2)
        np.savez(
            path,
            logits=outputs.logits.numpy(),
            features=outputs.features.numpy(),
            imagenet_logits=outputs.imagenet_logits.numpy(),
            targets=outputs.targets.numpy(),
            paths=np.array([s.path for s in samples]),
        )
        logger.info("%s: %d images -> %s", name, len(outputs.targets), path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
