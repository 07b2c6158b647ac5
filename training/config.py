"""The training configuration, declared once.

This module owns the options of ``train.py`` and of every sweep run. Each field of :class:`TrainConfig` declares
(with :func:`training.options.option`) its default, its ``--help`` group and text, and its type, choices and
bounds; from that one declaration come the argument parser (:func:`get_args_parser`), the reading of ``--config``
YAML files and of mappings such as a sweep run (:func:`normalise_keys`, :func:`config_from_dict`: key spelling,
unknown keys, types) and the checks (:func:`validate`: pydantic checks types, choices and bounds;
``TrainConfig._cross_checks`` is the short list of checks that a single option's bounds cannot say). The resolved
configuration is saved as ``RUN/config.yaml`` (:func:`save_config`), read back with ``--config``, and stored as a
plain dict in every checkpoint.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from model.choices import AUGMENT_PRESETS, HEADS
from training.options import GROUPS, csv_list, int_list, option  # csv_list: also imported from here


class TrainConfig(BaseModel):
    """Everything that defines a training run; saved as ``RUN/config.yaml`` and in each checkpoint.

    Defaults follow torchvision's classification references for fine-tuning (SGD, momentum 0.9, cosine
    schedule with linear warmup), scaled for small datasets. Constructing one checks each value's type, choices
    and bounds (``pydantic.ValidationError``, a ValueError); :func:`config_from_dict` and :func:`validate` word
    the errors as ``train.py`` does. Field order is the order of ``config.yaml`` and, within a group, of
    ``--help``.
    """

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    data: str = option("", "data", "ImageFolder root: DATA/<class>/<image> (required)", required=True)
    out: str = option("", "data", "run folder for checkpoints, metrics and the split (required)", required=True)
    val_data: str | None = option(None, "data", "separate validation ImageFolder (else split --data)")
    val_fraction: float = option(0.2, "data", "validation share of --data", gt=0, lt=1)
    group_pattern: str | None = option(
        None,
        "data",
        r"regex whose first group (in the file name) keeps related files on one side of the split, "
        r"e.g. 'fish_(\d+)_' for Fish4Knowledge track ids",
    )
    split_file: str | None = option(
        None,
        "data",
        "reuse this train/val split (a run's split.csv: path, class, split) instead of splitting --data, e.g. to "
        "train runs with other seeds on the same validation images (the ingredients of python -m training.soup)",
    )
    classes: list[str] | None = option(
        None,
        "data",
        "train on these class folders only, e.g. 'daisy,rose' (default: every sub-folder)",
        rule="needs at least two class names",
        min_length=2,
    )
    extra_data: list[str] = option(
        [],
        "data",
        "more ImageFolders (comma-separated), e.g. the folders of 'fish-admin export': their images are added to the "
        "training split only, never to validation (which stays --data's or --val-data's, so scores stay comparable "
        "between runs); a class found only there is a new class, trained on but not validated",
    )
    arch: str = option(
        "resnet50",
        "model",
        "a torchvision classification model (e.g. resnet18, resnet101) or a timm model (e.g. "
        "tf_efficientnet_lite0, convnext_tiny); a name in both is torchvision's",
    )
    weights: str = option(
        "imagenet",
        "model",
        "'imagenet' (the library's default ImageNet weights: a download, except tf_efficientnet_lite0/1/2, "
        "read from their pip packages offline), 'none', or a state-dict PATH",
    )
    head: Literal[HEADS] = option(
        "linear",
        "model",
        "classifier on the backbone's features: one linear layer, an MLP (--head-hidden, ReLU, dropout), a "
        "cosine classifier with a learnt scale (model.heads.CosineHead), or a linear layer on L2-normalised "
        "features (model.heads.NormalizedLinear, the head that python -m training.refit fits)",
    )
    head_hidden: list[PositiveInt] = option(
        [256, 128, 64], "model", "MLP widths", rule="needs one or more widths >= 1", min_length=1
    )
    head_dropout: float = option(0.2, "model", "MLP dropout after each hidden layer", ge=0, lt=1)
    freeze_backbone: bool = option(
        False,
        "fine-tuning",
        "train the head only (linear probe): backbone weights fixed, its BatchNorm kept in eval mode",
    )
    head_epochs: int = option(
        0,
        "fine-tuning",
        "train the head alone for N epochs first, then the whole network with --backbone-lr-scale",
        ge=0,
    )
    frozen_stages: int = option(
        0,
        "fine-tuning",
        "with --weights imagenet: keep the stem and the first N stages fixed (BatchNorm in eval mode) and the "
        "ImageNet network's later stages beside the fine-tuned ones, so the 'not a fish' check reads the pretrained "
        "network's own ImageNet answer for the cost of those later stages (model.shared_trunk; timm EfficientNets)",
        ge=0,
    )
    backbone_lr_scale: float = option(
        0.1,
        "fine-tuning",
        "with --head-epochs or pretrained --weights: backbone LR = lr x this (head gets lr)",
        gt=0,
        le=1,
    )
    epochs: int = option(10, "optimisation", ge=1)
    batch_size: int = option(32, "optimisation", "per process (per GPU under torchrun)", ge=1)
    optimizer: Literal["sgd", "adamw"] = option("sgd", "optimisation", "SGD with momentum, or AdamW")
    lr: float = option(0.01, "optimisation", "peak learning rate (of the head)", gt=0)
    momentum: float = option(0.9, "optimisation", "SGD momentum", ge=0)
    weight_decay: float = option(1e-4, "optimisation", "not applied to biases and norms", ge=0)
    label_smoothing: float = option(0.0, "optimisation", ge=0, lt=1)
    scheduler: Literal["cosine", "step", "plateau", "onecycle"] = option(
        "cosine", "optimisation", "LR schedule after warmup"
    )
    warmup_epochs: float = option(1.0, "optimisation", "linear LR warmup (onecycle: its rise)", ge=0)
    lr_step_size: int = option(10, "optimisation", "step scheduler: epochs per decay", ge=1)
    lr_gamma: float = option(0.1, "optimisation", "step and plateau schedulers: decay factor", gt=0)
    plateau_patience: int = option(
        2, "optimisation", "plateau scheduler: epochs without a better val macro-F1 before the LR decays", ge=0
    )
    mixup_alpha: float = option(0.0, "optimisation", "mixup Beta(a, a); 0 = off", ge=0)
    cutmix_alpha: float = option(0.0, "optimisation", "cutmix Beta(a, a); 0 = off", ge=0)
    ema_decay: float = option(
        0.0,
        "optimisation",
        "keep an exponential moving average of the weights (e.g. 0.998 per step), validated and saved "
        "instead of the raw weights; 0 = off",
    )
    clip_grad_norm: float = option(0.0, "optimisation", "max gradient L2 norm; 0 = off", ge=0)
    class_weights: Literal["none", "auto"] = option(
        "none", "optimisation", "auto: weight the loss by inverse class frequency"
    )
    sampler: Literal["random", "balanced"] = option(
        "random", "optimisation", "balanced: draw each class equally often (with replacement)"
    )
    patience: int = option(
        0, "optimisation", "stop when val macro-F1 has not improved for N epochs; 0 = train all epochs", ge=0
    )
    augment: Literal[AUGMENT_PRESETS] = option(
        "basic",
        "optimisation",
        "none: eval transform; basic: random resized crop, flip, colour jitter; strong: + TrivialAugmentWide "
        "and random erasing; morphology: basic + random erosion, dilation, opening or closing",
    )
    # None: the model's pretrained config (model.network.default_preprocessing)
    image_size: int | None = option(
        None,
        "data",
        "input crop size in pixels; None: the pretrained weights' own (e.g. 224, 260 for "
        "tf_efficientnet_lite2), 224 with --weights none or PATH",
        ge=8,
    )
    crop_pct: float | None = option(
        None,
        "data",
        "eval: resize short side to size/crop_pct; None: the pretrained weights' own, 0.875 with --weights "
        "none or PATH",
        gt=0,
        le=1,
    )
    device: str = option("auto", "run", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto",
        "run",
        "autocast dtype; auto: bf16 on GPUs and CPUs that support it, else fp16 on GPUs, fp32 on CPUs",
    )
    workers: int = option(2, "data", "DataLoader worker processes", ge=0)
    cache_images: bool = option(False, "data", "keep decoded images in memory (small datasets)")
    resume: str | None = option(None, "run", "checkpoint to continue from (e.g. RUN/last.pt)")
    seed: int = option(0, "run", ge=0)
    class_info: str | None = option(
        None,
        "data",
        "CSV with columns class, common_name, scientific_name and optionally genus, family, family_common_name: "
        "readable names and the taxonomy (the family answer), stored in the checkpoint",
    )
    target_accuracy: float = option(
        0.95,
        "run",
        "the served 'not sure' threshold is the lowest confidence whose predictions reach this validation accuracy",
        gt=0,
        le=1,
    )
    distill_weight: float = option(
        1.0,
        "open set",
        "with --weights imagenet: the ImageNet classifier is kept beside the new head and kept working by "
        "distillation from the pretrained network (Learning without Forgetting) with this weight; 0 = no "
        "distillation",
        ge=0,
    )
    subject: str | None = option(None, "open set", "what the classes are, for messages: e.g. 'fish', 'flower'")
    open_set_photos: list[str] | None = option(
        None,
        "open set",
        "folders (comma-separated) of photos never trained on, one sub-folder per species: folders named like a "
        "class are known photos, others unknown species; used only to choose the thresholds and report them",
    )
    not_subject: list[str] | None = option(
        None,
        "open set",
        "folders (comma-separated) of pictures that are not of the subject (e.g. flowers, or sea life without fish, "
        "for a fish model): where --subject names a WordNet noun they choose the 'not a fish' thresholds (see "
        "model/open_set.py); always reported",
    )
    subject_rejection: float = option(
        0.02,
        "open set",
        "fraction of the subject's photos (validation and --open-set-photos) allowed to be called 'not a fish'",
        ge=0,
        lt=1,
    )
    novelty_rejection: float = option(
        0.05,
        "open set",
        "fraction of known photos (--open-set-photos' known classes, else validation) allowed to be called "
        "'unknown species'",
        ge=0,
        lt=1,
    )
    max_confidently_wrong: float = option(
        0.05,
        "open set",
        "with --open-set-photos: the 'not sure' threshold rises until at most this fraction of the known "
        "photos are named as the wrong species",
        ge=0,
        lt=1,
    )
    max_unknown_named: float | None = option(
        None,
        "open set",
        "with --open-set-photos: the 'not sure' threshold also rises until at most this fraction of each folder's "
        "unknown-species photos are named as a species (default: no such bound)",
        ge=0,
        lt=1,
    )

    @field_validator("classes", "extra_data", "head_hidden", "open_set_photos", "not_subject", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """``"daisy,rose"`` -> ``["daisy", "rose"]``, as on the command line (pydantic then converts the items)."""
        return csv_list(value) if isinstance(value, str) else value

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        from model.network import arch_library  # here: torch and timm load when a config is checked, not for --help

        arch_library(value)  # ValueError naming the registries for an unknown name
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        """The checks that a single option's bounds cannot say."""
        checks = [
            (not (self.freeze_backbone and self.head_epochs), "use --freeze-backbone or --head-epochs, not both"),
            (self.ema_decay == 0 or 0.5 <= self.ema_decay < 1, "--ema-decay must be 0 (off) or in [0.5, 1)"),
            (not self.frozen_stages or self.weights == "imagenet", "--frozen-stages needs --weights imagenet"),
            (not (self.split_file and self.val_data), "use --split-file or --val-data, not both"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the resolved options in field order (JSON-, YAML- and ``weights_only``-safe)."""
        return self.model_dump()

    def head_spec(self) -> dict[str, Any]:
        """The classifier head as :func:`model.network.build_model` takes it and checkpoints record it."""
        if self.head != "mlp":
            return {"type": self.head}
        return {"type": self.head, "hidden": list(self.head_hidden), "dropout": self.head_dropout}

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainConfig:
        """Build from parsed arguments, ignoring options that are not fields (e.g. ``--config``).

        Raises:
            ValueError: a value of the wrong type or out of range (see :func:`config_from_dict`).
        """
        return config_from_dict({k: v for k, v in vars(ns).items() if k in cls.model_fields})


def flag(name: str) -> str:
    """The command-line flag of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _extra(info: FieldInfo) -> dict[str, Any]:
    """What :func:`option` recorded: ``group``, ``required``, ``rule``."""
    assert isinstance(info.json_schema_extra, dict), "every TrainConfig field is declared with option()"
    return info.json_schema_extra


def _argparse_type(annotation: Any) -> dict[str, Any]:
    """``add_argument`` keywords for a field's type: ``type`` (and ``metavar`` for lists) or ``choices``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None: the command line gives X
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {"choices": typing.get_args(annotation)}
    if origin is list:
        item = typing.get_args(annotation)[0]  # PositiveInt is Annotated[int, ...]
        if int in (item, *typing.get_args(item)):
            return {"type": int_list, "metavar": "N,N,..."}
        return {"type": csv_list, "metavar": "A,B,..."}
    return {"type": annotation} if annotation in (int, float) else {}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The ``train.py`` argument parser (torchvision references' ``get_args_parser`` layout, in groups), made from
    :class:`TrainConfig`'s fields: a flag per field, in field order within its group.

    Required options (``--data``, ``--out``) may come from ``--config`` too; :func:`parse_args` checks them.
    """
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
    for key, title in GROUPS.items():
        group = parser.add_argument_group(title)
        for name, info in TrainConfig.model_fields.items():
            extra = _extra(info)
            if extra["group"] != key:
                continue
            if info.annotation is bool:
                group.add_argument(flag(name), action="store_true", help=info.description)
                continue
            default = None if extra["required"] else info.get_default(call_default_factory=True)
            group.add_argument(flag(name), default=default, help=info.description, **_argparse_type(info.annotation))
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


def normalise_keys(values: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Option names as :class:`TrainConfig` fields (``head-hidden`` -> ``head_hidden``); values untouched.

    Raises:
        ValueError: naming the keys that are not options, and ``source``.
    """
    out = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(k for k in out if k not in TrainConfig.model_fields)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}; see train.py --help")
    return out


def _rule(info: FieldInfo) -> str:
    """What an option accepts, from its declaration: e.g. ``must be in (0, 1]``, ``must be one of sgd, adamw``."""
    rule = _extra(info)["rule"]
    if rule:
        return rule
    choices = _argparse_type(info.annotation).get("choices")
    if choices:
        return f"must be one of {', '.join(choices)}"
    bounds = {k: getattr(m, k) for m in info.metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
    low = f"({bounds['gt']}" if "gt" in bounds else f"[{bounds['ge']}" if "ge" in bounds else None
    high = f"{bounds['lt']})" if "lt" in bounds else f"{bounds['le']}]" if "le" in bounds else None
    if low and high:
        return f"must be in {low}, {high}"
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"must be {symbols[k]} {v}" for k, v in bounds.items())


#: pydantic error types that break a declared bound or choice (worded by :func:`_rule`).
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error", "too_short"}


def _messages(exc: ValidationError) -> str:
    """pydantic's errors worded as ``train.py`` words them: ``--lr must be > 0``; ``--epochs: Input should be a
    valid integer, ... (got 'ten')``; a validator's own message as it is."""
    messages = []
    for error in exc.errors():
        name = error["loc"][0] if error["loc"] else None
        info = TrainConfig.model_fields.get(str(name))
        if error["type"] == "value_error" or info is None:
            messages.append(str(error.get("ctx", {}).get("error", error["msg"])))
        elif error["type"] in _BOUND_ERRORS:
            messages.append(f"{flag(str(name))} {_rule(info)}")
        else:
            messages.append(f"{flag(str(name))}: {error['msg']} (got {error['input']!r})")
    return "; ".join(dict.fromkeys(messages))


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """A validated :class:`TrainConfig` from a mapping of options (keys with ``-`` or ``_``), e.g. a sweep run or
    a saved ``config.yaml``. Values are converted as pydantic's lax mode does (``"3e-3"`` -> 0.003, ``"96"`` -> 96,
    ``"daisy,rose"`` -> a list).

    Raises:
        ValueError: an unknown option, a value of the wrong type or out of range, or a failed cross-check; the
            message names the option(s).
    """
    try:
        return TrainConfig.model_validate(normalise_keys(values))
    except ValidationError as exc:
        raise ValueError(_messages(exc)) from None


def validate(cfg: TrainConfig) -> None:
    """Check a config again (it may have been changed since it was made), with messages that name the option.

    Raises:
        ValueError: see :func:`config_from_dict`.
    """
    config_from_dict(cfg.to_dict())


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Two-stage parsing as timm's ``train.py`` does: ``--config FILE.yaml`` sets the parser's defaults, then the
    command line overrides them; the result is validated.

    Raises:
        SystemExit: bad arguments or config file (argparse prints the message, exit code 2).
    """
    parser = get_args_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            parser.set_defaults(**normalise_keys(load_yaml(pre.config), pre.config))
        except (FileNotFoundError, ValueError) as exc:
            parser.error(str(exc))
    args = parser.parse_args(argv)  # string defaults from the YAML go through each option's type too
    for name, info in TrainConfig.model_fields.items():
        if _extra(info)["required"] and not getattr(args, name):
            parser.error(f"{flag(name)} is required (on the command line or in --config)")
    try:
        return TrainConfig.from_namespace(args)
    except ValueError as exc:
        parser.error(str(exc))


def save_config(cfg: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved options as YAML, loadable again with ``--config``."""
    path = Path(path)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path
