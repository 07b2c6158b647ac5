"""Average the weights of several fine-tunings of one pretrained network: a uniform model soup.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy without increasing
inference time" (ICML 2022): networks fine-tuned from the same pretrained weights with different seeds or
hyperparameters lie in one basin of the loss, and the mean of their weights is often more accurate than each, and
more robust under distribution shift, at the cost of one network. Here the ingredients are ``train.py`` runs (or
their releases) trained on the same split:

    python -m training.soup weights/fish4knowledge_lite2.pt runs/f4k_lite2_s1 runs/f4k_lite2_s2 \\
        --out runs/f4k_lite2_soup --split-file weights/fish4knowledge_split.csv
    python -m training.refit runs/f4k_lite2_soup --out runs/f4k_lite2_soup_refit --C 4

Every floating-point tensor of the network is averaged, BatchNorm's running statistics included (the paper's
uniform soup); integer buffers (``num_batches_tracked``) are the first ingredient's. The classifier head is not:
heads trained from different random starts do not line up, so the soup keeps the first ingredient's and is meant
to have its head refitted on its own features (``python -m training.refit``, as the shipped model's was). The
ImageNet head kept for the "not a fish" check is averaged with the rest (every ingredient distilled it from the
same pretrained network).

It writes ``OUT/best.pt`` (float32, no release records: its thresholds must be chosen again), ``OUT/config.yaml``
(the first ingredient's options) and ``OUT/split.csv``, the run folder that ``training.refit`` and
``training.rerelease`` read.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from model.logs import setup_logging
from model.network import classifier_name
from training.config import TrainConfig, config_from_dict, save_config
from training.data import read_split

logger = logging.getLogger(__name__)


class SoupError(ValueError):
    """The ingredients cannot be averaged: other architectures, classes, preprocessing, weights or splits."""


def ingredient_paths(ingredient: Path) -> tuple[Path, Path | None]:
    """``(checkpoint, split.csv or None)`` of an ingredient: a run folder (its ``best.pt`` and ``split.csv``) or a
    checkpoint file (no split of its own).

    Raises:
        FileNotFoundError: neither a run folder with ``best.pt`` nor a file.
    """
    if ingredient.is_dir():
        best = ingredient / "best.pt"
        if not best.is_file():
            raise FileNotFoundError(f"{best} is missing: is {ingredient} a train.py run folder?")
        split = ingredient / "split.csv"
        return best, split if split.is_file() else None
    if not ingredient.is_file():
        raise FileNotFoundError(f"no such run folder or checkpoint: {ingredient}")
    return ingredient, None


def _check_same_network(first: Checkpoint, other: Checkpoint, name: str) -> None:
    """Raise :class:`SoupError` unless ``other`` is the same network as ``first`` (arch, classes, preprocessing,
    tensor names and shapes)."""
    for what, a, b in (
        ("architecture", first.arch, other.arch),
        ("class names", first.class_names, other.class_names),
        ("preprocessing", first.preprocessing, other.preprocessing),
        ("tensor names", sorted(first.state_dict), sorted(other.state_dict)),
    ):
        if a != b:
            raise SoupError(f"{name} differs from the first ingredient in its {what}: no soup")
    shapes = [k for k, v in first.state_dict.items() if v.shape != other.state_dict[k].shape]
    if shapes:
        raise SoupError(f"{name} differs from the first ingredient in the shape of {shapes[0]}: no soup")


def average_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]], skip: str) -> dict[str, torch.Tensor]:
    """The element-wise mean of the floating-point tensors of ``state_dicts`` (computed in float64, returned float32),
    except those under the prefix ``skip`` (the classifier) and integer buffers, which are the first's.

    Args:
        state_dicts: two or more state dicts with the same keys and shapes (any float dtype: fp16 releases and fp32
            runs mix).
        skip: a module name, e.g. ``"classifier"``: its tensors are copied from the first state dict.

    Raises:
        SoupError: fewer than two state dicts.
    """
    if len(state_dicts) < 2:
        raise SoupError(f"a soup needs two or more ingredients, got {len(state_dicts)}")
    first = state_dicts[0]
    averaged: dict[str, torch.Tensor] = {}
    for key, value in first.items():
        if not value.is_floating_point() or key.startswith(f"{skip}."):
            averaged[key] = value.float().clone() if value.is_floating_point() else value.clone()
            continue
        total = torch.zeros(value.shape, dtype=torch.float64)
        for sd in state_dicts:
            total += sd[key].double()
        averaged[key] = (total / len(state_dicts)).float()
    return averaged


def _common_split(
    ingredients: Sequence[Path], splits: Sequence[Path | None], split_file: Path | None, class_names: list[str]
) -> Path:
    """The split every ingredient was trained on: ``split_file`` or the first run folder's; each run folder's
    ``split.csv`` must hold the same validation images.

    Raises:
        SoupError: no split given nor found, or an ingredient validated on other images; ValueError: not a split
            file of ``class_names`` (:func:`training.data.read_split`).
    """
    chosen = split_file or next((s for s in splits if s is not None), None)
    if chosen is None:
        raise SoupError("no ingredient is a run folder with a split.csv: give --split-file (the split they share)")
    expected = set(read_split(chosen, class_names, "val"))
    for ingredient, split in zip(ingredients, splits, strict=True):
        if split is not None and set(read_split(split, class_names, "val")) != expected:
            raise SoupError(
                f"{ingredient} was validated on other images than {chosen}: train the ingredients with "
                "--split-file (the soup's validation numbers would be in-sample)"
            )
    return chosen


def make_soup(ingredients: Sequence[Path], out: Path, split_file: Path | None = None) -> Checkpoint:
    """Average ``ingredients`` (run folders or checkpoints) into the run folder ``out`` (see the module docstring).

    Returns:
        The soup's checkpoint, as written to ``out/best.pt``.

    Raises:
        FileNotFoundError: an ingredient is missing; CheckpointError: one is unreadable; SoupError: they differ
            (see :func:`_check_same_network`, :func:`_common_split`), or fewer than two.
    """
    paths = [ingredient_paths(Path(i)) for i in ingredients]
    checkpoints = [load_checkpoint(ckpt) for ckpt, _ in paths]
    first = checkpoints[0]
    for ingredient, ckpt in zip(ingredients[1:], checkpoints[1:], strict=True):
        _check_same_network(first, ckpt, str(ingredient))
    split = _common_split(ingredients, [s for _, s in paths], split_file, list(first.class_names))

    skip = classifier_name(model_from_checkpoint(first))
    state_dict = average_state_dicts([c.state_dict for c in checkpoints], skip)
    values = {k: v for k, v in first.config.items() if k in TrainConfig.model_fields}
    cfg = config_from_dict({**values, "out": str(out), "resume": None})
    soup = first.replace(
        state_dict=state_dict,
        epoch=None,
        metrics={},
        config={**cfg.to_dict(), "soup": {"ingredients": [str(i) for i in ingredients], "split": str(split)}},
        serving=None,
        open_set=None,
        training_state=None,
    )
    model_from_checkpoint(soup)  # the averaged weights load into the network (CheckpointError otherwise)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(soup, out / "best.pt")
    save_config(cfg, out / "config.yaml")
    shutil.copyfile(split, out / "split.csv")
    logger.info("averaged %d ingredients into %s (classifier %r: the first's; refit it)", len(paths), out, skip)
    return soup


def main(argv: list[str] | None = None) -> int:
    """``python -m training.soup INGREDIENT INGREDIENT... --out OUT``; returns the exit code (2 on a user error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ingredients", type=Path, nargs="+", help="train.py run folders or checkpoints (two or more)")
    parser.add_argument("--out", type=Path, required=True, help="new run folder for the soup")
    parser.add_argument("--split-file", type=Path, help="the split.csv they share (default: the first run's)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        make_soup(args.ingredients, args.out, args.split_file)
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
