"""Refit a trained run's head on its frozen features ("LP after FT"), then release it as ``train.py`` does.

Fine-tuning shapes the features and the head together; on photographs (a domain the video crops of
Fish4Knowledge do not cover) the fine-tuned linear head leans on feature norms and on the largest classes. This
step keeps the network and replaces its head with a class-balanced logistic regression (scikit-learn's
``LogisticRegression``, L2 penalty ``C``, ``class_weight="balanced"``) on the L2-normalised penultimate features of
the un-augmented training images, served as :class:`model.heads.NormalizedLinear`. Measured on the default model
(EXPERIMENTS.md, section 5): real-photo top-1 64.0 -> 72.8 % at validation macro-F1 0.953, C = 1.

    python -m training.refit runs/f4k_lite0 --out runs/f4k_lite0_refit [--C 4] [--data DIR]
        [--open-set-photos DIR,DIR] [--not-subject DIR,DIR] [--subject-rejection F] ...

It writes ``OUT/best.pt`` (the run's ``best.pt`` with the new head), ``OUT/split.csv`` and ``OUT/config.yaml``
(``head: normalized``; the checkpoints' config also records the refit under ``refit``), then ``OUT/release.pt``, the
evaluation files and ``OUT/metrics.json`` (with the open-set verdicts) with :func:`training.release.write_release`,
choosing the open-set thresholds with the run's options (or those given).
The ImageNet head kept for the "not a fish" check and the novelty features are untouched: both read the features,
not the head.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from model.heads import NormalizedLinear, fit_logistic_regression
from model.logs import setup_logging
from model.network import classifier_name
from model.predictor import Predictor
from training.config import TrainConfig, config_from_dict, load_yaml, save_config
from training.data import read_split
from training.evaluation import collect_outputs
from training.release import (
    add_release_arguments,
    open_set_overrides,
    release_run,
    run_release_command,
)

logger = logging.getLogger(__name__)

#: The refit's L2 penalty, chosen on the Fish4Knowledge validation split and the Clark's anemonefish photos among
#: C in {0.5, 1, 2, 4, 8} for the LP-FT Lite0 (EXPERIMENTS.md, section 6: validation macro-F1 0.949 / 0.956 / 0.960
#: / 0.966 / 0.968, photo top-1 74.5 / 74.1 / 73.6 / 73.2 / 72.8 %; "species and right" highest at 4 and 8).
DEFAULT_C = 4.0


def fit_normalized_head(features: torch.Tensor, targets: torch.Tensor, num_classes: int, c: float) -> NormalizedLinear:
    """A :class:`model.heads.NormalizedLinear` head fitted as a class-balanced logistic regression.

    Args:
        features: float ``(N, D)`` penultimate features; targets: int64 ``(N,)`` in ``[0, num_classes)``, every
            class present.
        c: inverse L2 penalty (scikit-learn's ``C``), > 0.

    Returns:
        The head, float32, mapping ``(N, D)`` features to ``(N, num_classes)`` logits.

    Raises:
        ValueError: a class without features, or ``c`` <= 0.
    """
    if c <= 0:
        raise ValueError(f"C must be > 0, got {c}")
    present = torch.bincount(targets, minlength=num_classes)
    if int(present.min()) == 0:
        raise ValueError(f"every class needs training features; counts {present.tolist()}")
    x = torch.nn.functional.normalize(features.double(), dim=1).numpy()
    _, coef, intercept = fit_logistic_regression(x, targets.numpy(), c, class_weight="balanced")
    head = NormalizedLinear(features.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(coef))
        head.bias.copy_(torch.from_numpy(intercept))
    return head


def _refit_config(run: Path, out: Path, data: str | None, overrides: dict[str, Any] | None) -> TrainConfig:
    """The refit's config: ``run``'s ``config.yaml`` with ``overrides``, ``out``, the normalized head, no resume,
    and ``data`` where given.

    Raises:
        FileNotFoundError: ``best.pt``, ``config.yaml`` or ``split.csv`` is missing from ``run``; ValueError: bad
        options.
    """
    for name in ("best.pt", "config.yaml", "split.csv"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run / name} is missing: is {run} a train.py run folder?")
    values = load_yaml(run / "config.yaml")
    values.update(overrides or {}, out=str(out), head="normalized", resume=None)
    if data:
        values["data"] = data
    return config_from_dict(values)


def _write_refitted_run(
    run: Path, out: Path, cfg: TrainConfig, ckpt: Checkpoint, model: torch.nn.Module, c: float
) -> None:
    """Write ``out/split.csv`` (``run``'s), ``out/config.yaml`` (``cfg``) and ``out/best.pt``: ``ckpt`` with
    ``model``'s weights (the refitted head), ``cfg``'s head and config (recording the refit from ``run`` with
    ``C`` = ``c``), without the training state (optimizer, scheduler, scaler, training model). Creates ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "split.csv", out / "split.csv")
    config = cfg.to_dict()
    save_config(cfg, out / "config.yaml")
    refitted = ckpt.replace(
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        head=cfg.head_spec(),
        config={**config, "refit": {"from": str(run), "C": c}},
        training_state=None,
    )
    save_checkpoint(refitted, out / "best.pt")


def refit(
    run: Path,
    out: Path,
    *,
    c: float = DEFAULT_C,
    data: str | None = None,
    overrides: dict[str, Any] | None = None,
    workers: int = 2,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Refit ``run``'s head and release it into ``out`` (see the module docstring).

    Args:
        run: a ``train.py`` run folder with ``best.pt``, ``config.yaml`` and ``split.csv``.
        out: the new run folder (created).
        c: the logistic regression's ``C``.
        data: the ImageFolder root, when it moved since the run (default: the run's ``data``).
        overrides: open-set options (:data:`training.release.OPEN_SET_OPTIONS`) to choose the thresholds with.

    Returns:
        The release's evaluation (:func:`training.release.write_release`).

    Raises:
        FileNotFoundError: a file of the run is missing; model.checkpoint.CheckpointError: ``best.pt`` unreadable;
        ValueError: bad options.
    """
    cfg = _refit_config(run, out, data, overrides)
    ckpt = load_checkpoint(run / "best.pt")
    class_names = list(ckpt.class_names)
    train = read_split(run / "split.csv", class_names, "train")
    val = read_split(run / "split.csv", class_names, "val")
    model = model_from_checkpoint(ckpt)
    predictor = Predictor(model, class_names, ckpt.preprocessing)
    outputs = collect_outputs(predictor, cfg.data, train, batch_size=batch_size, workers=workers)
    head = fit_normalized_head(outputs.features, outputs.targets, len(class_names), c)
    model.set_submodule(classifier_name(model), head)
    logger.info("refitted %s's head on %d training images (C=%g, class-balanced)", run, len(train), c)

    _write_refitted_run(run, out, cfg, ckpt, model, c)
    return release_run(out, cfg, train, val, batch_size=batch_size, workers=workers)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.refit RUN --out OUT``; returns the exit code (2 on a user error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="train.py run folder (best.pt, config.yaml, split.csv)")
    parser.add_argument("--out", type=Path, required=True, help="new run folder for the refitted release")
    parser.add_argument("--C", dest="c", type=float, default=DEFAULT_C, help="inverse L2 penalty of the regression")
    add_release_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()

    def release() -> dict[str, Any]:
        overrides = open_set_overrides(args)
        return refit(args.run, args.out, c=args.c, data=args.data, overrides=overrides, workers=args.workers)

    return run_release_command(release, args.out)


if __name__ == "__main__":
    sys.exit(main())
