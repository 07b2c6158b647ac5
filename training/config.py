"""Command-line options of ``train.py``, grouped, and the resolved configuration saved with every run."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from model.network import HEADS, available_archs
from model.transforms import AUGMENT_PRESETS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "step", "plateau", "onecycle")


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
    classes: list[str] | None = None
    arch: str = "resnet50"
    weights: str = "imagenet"
    head: str = "linear"
    head_hidden: list[int] = field(default_factory=lambda: [256, 128, 64])
    head_dropout: float = 0.2
    freeze_backbone: bool = False
    head_epochs: int = 0
    backbone_lr_scale: float = 0.1
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    lr_step_size: int = 10
    lr_gamma: float = 0.1
    plateau_patience: int = 2
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    ema_decay: float = 0.0
    clip_grad_norm: float = 0.0
    class_weights: str = "none"
    sampler: str = "random"
    patience: int = 0
    augment: str = "basic"
    image_size: int | None = None  # None: the model's pretrained config (model.network.default_preprocessing)
    crop_pct: float | None = None
    device: str = "auto"
    precision: str = "auto"
    workers: int = 2
    cache_images: bool = False
    resume: str | None = None
    seed: int = 0
    class_info: str | None = None
    target_accuracy: float = 0.95
    distill_weight: float = 1.0
    subject: str | None = None
    open_set_photos: str | None = None
    not_subject: str | None = None
    subject_rejection: float = 0.02
    novelty_rejection: float = 0.05
    max_confidently_wrong: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the resolved options (JSON-, YAML- and ``weights_only``-safe)."""
        return asdict(self)

    def head_spec(self) -> dict[str, Any]:
        """The classifier head as :func:`model.network.build_model` takes it and checkpoints record it."""
        if self.head == "linear":
            return {"type": "linear"}
        return {"type": self.head, "hidden": list(self.head_hidden), "dropout": self.head_dropout}

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainConfig:
        """Build from parsed arguments, ignoring options that are not fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(ns).items() if k in names})


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv_list(value)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from exc


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The ``train.py`` argument parser (torchvision references' ``get_args_parser`` layout, in groups).

    ``--data`` and ``--out`` are required, on the command line or in ``--config``; :func:`parse_args` checks.
    """
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        description="Fine-tune a torchvision or timm classifier on an ImageFolder tree (one sub-folder per class).",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML mapping of these options (e.g. 'arch: resnet18', 'head-hidden: [256, 128, 64]') used as "
        "defaults; the command line overrides it. The resolved options are saved as RUN/config.yaml.",
    )
    g = parser.add_argument_group("data")
    g.add_argument("--data", default=d.data or None, help="ImageFolder root: DATA/<class>/<image> (required)")
    g.add_argument("--out", default=d.out or None, help="run folder for checkpoints, metrics and the split (required)")
    g.add_argument("--val-data", default=d.val_data, help="separate validation ImageFolder (else split --data)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, help="validation share of --data")
    g.add_argument(
        "--group-pattern",
        default=d.group_pattern,
        help=r"regex whose first group (in the file name) keeps related files on one side of the split, "
        r"e.g. 'fish_(\d+)_' for Fish4Knowledge track ids",
    )
    g.add_argument(
        "--classes",
        type=_csv_list,
        default=d.classes,
        metavar="A,B,...",
        help="train on these class folders only, e.g. 'daisy,rose' (default: every sub-folder)",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="input crop size in pixels; None: the pretrained weights' own (e.g. 224, 260 for "
        "tf_efficientnet_lite2), 224 with --weights none or PATH",
    )
    g.add_argument(
        "--crop-pct",
        type=float,
        default=d.crop_pct,
        help="eval: resize short side to size/crop_pct; None: the pretrained weights' own, 0.875 with --weights "
        "none or PATH",
    )
    g.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    g.add_argument("--cache-images", action="store_true", help="keep decoded images in memory (small datasets)")
    g.add_argument(
        "--class-info",
        default=d.class_info,
        help="CSV with columns class, common_name, scientific_name: readable names stored in the checkpoint",
    )

    g = parser.add_argument_group("model")
    g.add_argument(
        "--arch",
        default=d.arch,
        help="a torchvision classification model (e.g. resnet18, resnet101) or a timm model (e.g. "
        "tf_efficientnet_lite0, convnext_tiny); a name in both is torchvision's",
    )
    g.add_argument(
        "--weights",
        default=d.weights,
        help="'imagenet' (the library's default ImageNet weights: a download, except tf_efficientnet_lite0/1/2, "
        "read from their pip packages offline), 'none', or a state-dict PATH",
    )
    g.add_argument(
        "--head",
        choices=HEADS,
        default=d.head,
        help="classifier on the backbone's features: one linear layer, or an MLP (--head-hidden, ReLU, dropout)",
    )
    g.add_argument("--head-hidden", type=_int_list, default=d.head_hidden, metavar="N,N,...", help="MLP widths")
    g.add_argument("--head-dropout", type=float, default=d.head_dropout, help="MLP dropout after each hidden layer")

    g = parser.add_argument_group("fine-tuning")
    g.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="train the head only (linear probe): backbone weights fixed, its BatchNorm kept in eval mode",
    )
    g.add_argument(
        "--head-epochs",
        type=int,
        default=d.head_epochs,
        help="train the head alone for N epochs first, then the whole network with --backbone-lr-scale",
    )
    g.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=d.backbone_lr_scale,
        help="with --head-epochs or pretrained --weights: backbone LR = lr x this (head gets lr)",
    )

    g = parser.add_argument_group(
        "open set: when to answer 'not sure', 'unknown species' or 'not a fish' (see model/open_set.py)"
    )
    g.add_argument(
        "--distill-weight",
        type=float,
        default=d.distill_weight,
        help="with --weights imagenet: the ImageNet classifier is kept beside the new head and kept working by "
        "distillation from the pretrained network (Learning without Forgetting) with this weight; 0 = no "
        "distillation",
    )
    g.add_argument("--subject", default=d.subject, help="what the classes are, for messages: e.g. 'fish', 'flower'")
    g.add_argument(
        "--open-set-photos",
        default=d.open_set_photos,
        help="folder of photos never trained on, one sub-folder per species: folders named like a class are known "
        "photos, others unknown species; used only to choose the thresholds and report them",
    )
    g.add_argument(
        "--not-subject",
        default=d.not_subject,
        help="folder of pictures that are not of the subject (e.g. flowers for a fish model), to report how many "
        "would be named as a class",
    )
    g.add_argument(
        "--subject-rejection",
        type=float,
        default=d.subject_rejection,
        help="fraction of the subject's photos (validation and --open-set-photos) allowed to be called 'not a fish'",
    )
    g.add_argument(
        "--novelty-rejection",
        type=float,
        default=d.novelty_rejection,
        help="fraction of known photos (--open-set-photos' known classes, else validation) allowed to be called "
        "'unknown species'",
    )
    g.add_argument(
        "--max-confidently-wrong",
        type=float,
        default=d.max_confidently_wrong,
        help="with --open-set-photos: the 'not sure' threshold rises until at most this fraction of the known "
        "photos are named as the wrong species",
    )

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (per GPU under torchrun)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="SGD with momentum, or AdamW")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (of the head)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="not applied to biases and norms")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--scheduler", choices=SCHEDULERS, default=d.scheduler, help="LR schedule after warmup")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear LR warmup (onecycle: its rise)")
    g.add_argument("--lr-step-size", type=int, default=d.lr_step_size, help="step scheduler: epochs per decay")
    g.add_argument("--lr-gamma", type=float, default=d.lr_gamma, help="step and plateau schedulers: decay factor")
    g.add_argument(
        "--plateau-patience",
        type=int,
        default=d.plateau_patience,
        help="plateau scheduler: epochs without a better val macro-F1 before the LR decays",
    )
    g.add_argument("--mixup-alpha", type=float, default=d.mixup_alpha, help="mixup Beta(a, a); 0 = off")
    g.add_argument("--cutmix-alpha", type=float, default=d.cutmix_alpha, help="cutmix Beta(a, a); 0 = off")
    g.add_argument(
        "--ema-decay",
        type=float,
        default=d.ema_decay,
        help="keep an exponential moving average of the weights (e.g. 0.998 per step), validated and saved "
        "instead of the raw weights; 0 = off",
    )
    g.add_argument("--clip-grad-norm", type=float, default=d.clip_grad_norm, help="max gradient L2 norm; 0 = off")
    g.add_argument(
        "--class-weights",
        choices=("none", "auto"),
        default=d.class_weights,
        help="auto: weight the loss by inverse class frequency",
    )
    g.add_argument(
        "--sampler",
        choices=("random", "balanced"),
        default=d.sampler,
        help="balanced: draw each class equally often (with replacement)",
    )
    g.add_argument(
        "--augment",
        choices=AUGMENT_PRESETS,
        default=d.augment,
        help="none: eval transform; basic: random resized crop, flip, colour jitter; strong: + TrivialAugmentWide "
        "and random erasing; morphology: basic + random erosion, dilation, opening or closing",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="stop when val macro-F1 has not improved for N epochs; 0 = train all epochs",
    )

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


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping (``yaml.safe_load``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid YAML, or not a mapping at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of options (key: value), not a {type(values).__name__}")
    return values


#: Numeric options whose default is None (so their type can't be read off the default).
_OPTIONAL_NUMBERS: dict[str, type] = {"image_size": int, "crop_pct": float}


def _normalise_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``head-hidden`` -> ``head_hidden``; ValueError naming keys that are not options."""
    names = {f.name for f in fields(TrainConfig)}
    out = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(k for k in out if k not in names)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}; see train.py --help")
    if isinstance(out.get("classes"), str):
        out["classes"] = _csv_list(out["classes"])
    if isinstance(out.get("head_hidden"), str):
        out["head_hidden"] = _int_list(out["head_hidden"])
    defaults = TrainConfig()
    for key, value in out.items():
        kind = _OPTIONAL_NUMBERS.get(key) or type(getattr(defaults, key))
        # YAML 1.1 reads 1e-4 (no dot) as a string; ints may be given where floats are expected
        if kind in (int, float) and isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                out[key] = kind(float(value)) if kind is int and float(value).is_integer() else kind(value)
            except ValueError as exc:
                raise ValueError(f"{source}: {key} must be a number, got {value!r}") from exc
    return out


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A validated :class:`TrainConfig` from a mapping of options (keys with ``-`` or ``_``), e.g. a sweep run.

    Raises:
        ValueError: an unknown option, or an out-of-range value (see :func:`validate`).
    """
    try:
        cfg = TrainConfig(**_normalise_keys(values, "config"))
    except TypeError as exc:
        raise ValueError(f"bad config: {exc}") from exc
    validate(cfg)
    return cfg


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Two-stage parsing as timm's ``train.py`` does: ``--config FILE.yaml`` sets the parser's defaults, then the
    command line overrides them.

    Raises:
        SystemExit: bad arguments or config file (argparse prints the message, exit code 2).
    """
    parser = get_args_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            defaults = _normalise_keys(load_yaml(pre.config), pre.config)
        except (FileNotFoundError, ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(str(exc))
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for name in ("data", "out"):
        if not getattr(args, name):
            parser.error(f"--{name} is required (on the command line or in --config)")
    cfg = TrainConfig.from_namespace(args)
    try:
        validate(cfg)
    except ValueError as exc:
        parser.error(str(exc))
    return cfg


def save_config(cfg: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved options as YAML, loadable again with ``--config``."""
    path = Path(path)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


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
        (cfg.image_size is None or cfg.image_size >= 8, "--image-size must be >= 8"),
        (cfg.crop_pct is None or 0 < cfg.crop_pct <= 1, "--crop-pct must be in (0, 1]"),
        (0 <= cfg.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        (cfg.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
        (cfg.workers >= 0, "--workers must be >= 0"),
        (0 < cfg.target_accuracy <= 1, "--target-accuracy must be in (0, 1]"),
        (cfg.distill_weight >= 0, "--distill-weight must be >= 0"),
        (0 <= cfg.subject_rejection < 1, "--subject-rejection must be in [0, 1)"),
        (0 <= cfg.novelty_rejection < 1, "--novelty-rejection must be in [0, 1)"),
        (0 <= cfg.max_confidently_wrong < 1, "--max-confidently-wrong must be in [0, 1)"),
        (
            cfg.arch in available_archs(),
            f"unknown arch {cfg.arch!r}; choose a torchvision classifier (e.g. resnet50) or a timm model "
            "(e.g. tf_efficientnet_lite0; see timm.list_models())",
        ),
        (cfg.head in HEADS, f"--head must be one of {', '.join(HEADS)}"),
        (bool(cfg.head_hidden) and min(cfg.head_hidden) >= 1, "--head-hidden needs one or more widths >= 1"),
        (0 <= cfg.head_dropout < 1, "--head-dropout must be in [0, 1)"),
        (cfg.head_epochs >= 0, "--head-epochs must be >= 0"),
        (not (cfg.freeze_backbone and cfg.head_epochs), "use --freeze-backbone or --head-epochs, not both"),
        (0 < cfg.backbone_lr_scale <= 1, "--backbone-lr-scale must be in (0, 1]"),
        (cfg.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (cfg.scheduler in SCHEDULERS, f"--scheduler must be one of {', '.join(SCHEDULERS)}"),
        (cfg.plateau_patience >= 0, "--plateau-patience must be >= 0"),
        (cfg.mixup_alpha >= 0 and cfg.cutmix_alpha >= 0, "--mixup-alpha and --cutmix-alpha must be >= 0"),
        (cfg.ema_decay == 0 or 0.5 <= cfg.ema_decay < 1, "--ema-decay must be 0 (off) or in [0.5, 1)"),
        (cfg.clip_grad_norm >= 0, "--clip-grad-norm must be >= 0"),
        (cfg.class_weights in ("none", "auto"), "--class-weights must be none or auto"),
        (cfg.sampler in ("random", "balanced"), "--sampler must be random or balanced"),
        (cfg.augment in AUGMENT_PRESETS, f"--augment must be one of {', '.join(AUGMENT_PRESETS)}"),
        (cfg.patience >= 0, "--patience must be >= 0"),
        (cfg.classes is None or len(cfg.classes) >= 2, "--classes needs at least two class names"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
