"""Command-line options of ``train.py``, grouped, and the resolved configuration saved with every run."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from typing import Any

from model.transforms import DEFAULT_CROP_PCT


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` and in each checkpoint.

    Defaults follow torchvision's classification references for fine-tuning (SGD, momentum 0.9, cosine
    schedule with linear warmup), scaled for small datasets; see ``get_args_parser`` for each option's help.
    """

    data: str = ""
    out: str = ""
    val_data: str | None = None
    val_fraction: float = 0.2
    group_pattern: str | None = None
    arch: str = "resnet50"
    weights: str = "imagenet"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    lr_step_size: int = 10
    lr_gamma: float = 0.1
    image_size: int = 224
    crop_pct: float = DEFAULT_CROP_PCT
    device: str = "auto"
    precision: str = "auto"
    workers: int = 2
    cache_images: bool = False
    resume: str | None = None
    seed: int = 0
    class_info: str | None = None
    target_accuracy: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the resolved options (JSON- and ``weights_only``-safe)."""
        return asdict(self)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainConfig:
        """Build from parsed arguments, ignoring options that are not fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(ns).items() if k in names})


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The ``train.py`` argument parser (torchvision references' ``get_args_parser`` layout, in groups)."""
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        description="Fine-tune a torchvision classifier on an ImageFolder tree (one sub-folder per class).",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, help="ImageFolder root: DATA/<class>/<image>")
    g.add_argument("--out", required=True, help="run folder for checkpoints, metrics and the split")
    g.add_argument("--val-data", default=d.val_data, help="separate validation ImageFolder (else split --data)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, help="validation share of --data")
    g.add_argument(
        "--group-pattern",
        default=d.group_pattern,
        help=r"regex whose first group (in the file name) keeps related files on one side of the split, "
        r"e.g. 'fish_(\d+)_' for Fish4Knowledge track ids",
    )
    g.add_argument("--image-size", type=int, default=d.image_size, help="input crop size in pixels")
    g.add_argument("--crop-pct", type=float, default=d.crop_pct, help="eval: resize short side to size/crop_pct")
    g.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    g.add_argument("--cache-images", action="store_true", help="keep decoded images in memory (small datasets)")
    g.add_argument(
        "--class-info",
        default=d.class_info,
        help="CSV with columns class, common_name, scientific_name: readable names stored in the checkpoint",
    )

    g = parser.add_argument_group("model")
    g.add_argument("--arch", default=d.arch, help="torchvision classification model name")
    g.add_argument(
        "--weights", default=d.weights, help="'imagenet' (torchvision default weights), 'none', or a state-dict PATH"
    )

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of SGD")
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--scheduler", choices=("cosine", "step"), default=d.scheduler, help="LR schedule after warmup")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear LR warmup length")
    g.add_argument("--lr-step-size", type=int, default=d.lr_step_size, help="step scheduler: epochs per decay")
    g.add_argument("--lr-gamma", type=float, default=d.lr_gamma, help="step scheduler: decay factor")

    g = parser.add_argument_group("run")
    g.add_argument("--device", default=d.device, help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    g.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default=d.precision,
        help="autocast dtype; auto: bf16 on GPUs and CPUs that support it, else fp16 on GPUs, fp32 on CPUs",
    )
    g.add_argument(
        "--target-accuracy",
        type=float,
        default=d.target_accuracy,
        help="the served 'not sure' threshold is the lowest confidence whose predictions reach this validation "
        "accuracy",
    )
    g.add_argument("--resume", default=d.resume, help="checkpoint to continue from (e.g. RUN/last.pt)")
    g.add_argument("--seed", type=int, default=d.seed)
    return parser


def validate(cfg: TrainConfig) -> None:
    """Check option ranges early, with messages that name the option.

    Raises:
        ValueError: an option is out of range.
    """
    checks = [
        (cfg.epochs >= 1, "--epochs must be >= 1"),
        (cfg.batch_size >= 1, "--batch-size must be >= 1"),
        (cfg.lr > 0, "--lr must be > 0"),
        (0 < cfg.val_fraction < 1, "--val-fraction must be in (0, 1)"),
        (cfg.image_size >= 8, "--image-size must be >= 8"),
        (0 < cfg.crop_pct <= 1, "--crop-pct must be in (0, 1]"),
        (0 <= cfg.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        (cfg.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
        (cfg.workers >= 0, "--workers must be >= 0"),
        (0 < cfg.target_accuracy <= 1, "--target-accuracy must be in (0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
