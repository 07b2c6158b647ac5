"""A versioned, self-describing checkpoint that loads with ``torch.load(path, weights_only=True)``.

Schema (format version 1), all values plain Python types or tensors:

====================  ==========================================================================
``format_version``    int, :data:`FORMAT_VERSION`
``arch``              str, torchvision or timm model name (rebuilt with :func:`model.network.build_model`);
                      ``model`` may hold a kept ImageNet classifier under ``pretrained_head.``
``class_names``       list[str], index i is logit i; from the training ImageFolder's sorted folders
``preprocessing``     dict, :class:`model.transforms.Preprocessing` ``to_dict()``
``model``             state dict of the network (float32 for training checkpoints, float16 in releases)
``epoch``             int, last completed epoch (0-based)
``metrics``           dict[str, float], validation metrics of that epoch
``config``            dict, the resolved training configuration
``versions``          dict[str, str], torch / torchvision / python versions that wrote it
``created``           str, ISO 8601 UTC time
``head``              optional dict, the classifier head (:func:`model.network.build_model`'s ``head``);
                      absent means one linear layer
``class_info``        optional dict, class name -> ``{"common_name", "scientific_name"}`` (``--class-info``)
``serving``           release only: ``{"confidence_threshold", "target_accuracy", "coverage",
                      "selective_accuracy", "temperature"}``: the "not sure" threshold chosen on validation
                      data, and the softmax temperature T > 0 fitted there (temperature scaling; served
                      probabilities are ``softmax(logits / T)``, T = 1 when absent)
``open_set``          optional dict (release only): ``{"subject_classes": list[int], "gaussians": {"means",
                      "precision"}}`` and, with the ImageNet hierarchy, ``"hierarchy": {"taxon": list[int],
                      "other": list[int]}``, see :mod:`model.open_set`; ``serving`` then also holds
                      ``subject_threshold``, ``novelty_threshold``, ``subject`` and (hierarchy)
                      ``taxon_threshold`` and ``contrast_threshold``
``optimizer``,        state dicts for ``--resume``; absent from release checkpoints
``lr_scheduler``,
``scaler``,
``training_model``    with ``--ema-decay``: the raw weights (``model`` holds the averaged ones)
====================  ==========================================================================

Modelled on timm's and torchvision references' checkpoints (``arch, epoch, state_dict, optimizer, args``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import pickle
import platform
import zipfile
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from model.network import PRETRAINED_HEAD, attach_pretrained_head, build_model
from model.transforms import Preprocessing

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "class_names", "preprocessing", "model")


class CheckpointError(ValueError):
    """A file is missing, is not one of our checkpoints, or has an unsupported format version."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries that define the checkpoint's numerics."""
    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "timm": str(timm.__version__),
        "python": platform.python_version(),
    }


def make_checkpoint(
    *,
    model: nn.Module,
    arch: str,
    class_names: list[str],
    preprocessing: Preprocessing,
    epoch: int,
    metrics: dict[str, float],
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    class_info: dict[str, dict[str, str]] | None = None,
    head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a checkpoint dict (see the module docstring for the schema)."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    ckpt: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "config": config,
        "versions": library_versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if head and head.get("type", "linear") != "linear":
        ckpt["head"] = dict(head)
    if class_info:
        ckpt["class_info"] = {name: dict(info) for name, info in class_info.items() if name in class_names}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if lr_scheduler is not None:
        ckpt["lr_scheduler"] = lr_scheduler.state_dict()
    if scaler is not None:
        ckpt["scaler"] = scaler.state_dict()
    return ckpt


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``ckpt`` atomically (temporary file then rename), so a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint with ``weights_only=True`` (no arbitrary pickle code runs).

    Raises:
        CheckpointError: the file is missing, a directory, empty or unreadable, is not a torch file, holds objects that
            ``weights_only`` refuses, lacks a required key, or has a newer format version.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is an empty file (0 bytes)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    # torch.load's unpickler raises many types on foreign bytes (a text file gives IndexError)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        IndexError,
        KeyError,
        TypeError,
        AttributeError,
    ) as exc:
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (not a PyTorch file?): {first_line}") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint of this project (missing {', '.join(missing)}); "
            "a bare state dict can be used as '--weights PATH' for training"
        )
    if not isinstance(ckpt["format_version"], int) or ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {ckpt['format_version']!r}; this code reads up to {FORMAT_VERSION}"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the network recorded in ``ckpt`` and load its weights, as float32, in eval mode.

    Raises:
        CheckpointError: the weights do not fit the recorded architecture and class count.
    """
    try:
        model = build_model(ckpt["arch"], num_classes=len(ckpt["class_names"]), head=ckpt.get("head"))
    except ValueError as exc:
        raise CheckpointError(f"cannot rebuild the network of this checkpoint: {exc}") from exc
    state_dict = {
        k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()
    }
    kept = state_dict.get(f"{PRETRAINED_HEAD}.weight")
    if kept is not None:
        attach_pretrained_head(model, kept.shape[1], kept.shape[0])
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit {ckpt['arch']}: {exc}") from exc
    return model.eval()


def release_checkpoint(ckpt: dict[str, Any], dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """A slim copy for serving: weights cast to ``dtype`` (fp16 halves the file), no optimizer state.

    BatchNorm's ``num_batches_tracked`` and other integer buffers keep their dtype.
    """
    slim = {k: v for k, v in ckpt.items() if k not in ("optimizer", "lr_scheduler", "scaler", "training_model")}
    slim["model"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    slim["config"] = {**ckpt.get("config", {}), "release_dtype": str(dtype).removeprefix("torch.")}
    return slim
