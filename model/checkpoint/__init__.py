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
                      ``taxon_threshold``, ``contrast_threshold`` and (from 2026-12-03)
                      ``hierarchy_novelty_threshold``; optionally ``logit_threshold`` (a second "not sure" check) and
                      ``unknown_confidence_threshold``
``optimizer``,        state dicts for ``--resume``; absent from release checkpoints
``lr_scheduler``,
``scaler``,
``training_model``    with ``--ema-decay``: the raw weights (``model`` holds the averaged ones)
====================  ==========================================================================

Modelled on timm's and torchvision references' checkpoints (``arch, epoch, state_dict, optimizer, args``).

Readers never index this dict: :func:`load_checkpoint` reads the file (:mod:`model.checkpoint.files`, which checks
the format version) into the typed :class:`Checkpoint` (:mod:`model.checkpoint.records`), and writers make a
:class:`Checkpoint` that :func:`save_checkpoint` writes. This package is the only code that knows the keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.checkpoint.files import (
    FORMAT_VERSION,
    REQUIRED_KEYS,
    CheckpointError,
    library_versions,
    read_file,
    write_file,
)
from model.checkpoint.records import (
    Checkpoint,
    ClassMetrics,
    ClassNames,
    EvaluationRecord,
    ModelCard,
    OpenSetRecord,
    ServingRecord,
    TrainingRecord,
    TrainingState,
    VerdictShares,
)
from model.network import PRETRAINED_HEAD, attach_pretrained_head, build_model
from model.shared_trunk import PRETRAINED_TAIL, attach_pretrained_tail
from model.transforms import Preprocessing

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "Checkpoint",
    "CheckpointError",
    "ClassMetrics",
    "ClassNames",
    "EvaluationRecord",
    "ModelCard",
    "OpenSetRecord",
    "ServingRecord",
    "TrainingRecord",
    "TrainingState",
    "VerdictShares",
    "library_versions",
    "load_checkpoint",
    "make_checkpoint",
    "model_from_checkpoint",
    "release_checkpoint",
    "save_checkpoint",
]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict (unwrapped from DistributedDataParallel), detached and copied to the CPU."""
    return {k: v.detach().cpu() for k, v in getattr(model, "module", model).state_dict().items()}


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
    class_info: Mapping[str, ClassNames | Mapping[str, str]] | None = None,
    head: dict[str, Any] | None = None,
    training_model: nn.Module | None = None,
) -> Checkpoint:
    """A training checkpoint of ``model`` (unwrapped from DistributedDataParallel), its weights copied to the CPU;
    with ``optimizer``, ``lr_scheduler``, ``scaler`` or ``training_model`` (the raw network beside ``model``'s
    averaged weights, ``--ema-decay``), their state for ``--resume``. ``class_info`` entries may be
    :class:`ClassNames` or ``{"common_name", "scientific_name"}`` dicts (``training.data.read_class_info``); names
    of classes not in ``class_names`` are dropped."""
    state = TrainingState(
        optimizer=optimizer.state_dict() if optimizer is not None else None,
        lr_scheduler=lr_scheduler.state_dict() if lr_scheduler is not None else None,
        scaler=scaler.state_dict() if scaler is not None else None,
        training_model=_weights(training_model) if training_model is not None else None,
    )
    info = {
        name: names if isinstance(names, ClassNames) else ClassNames.from_dict(names)
        for name, names in (class_info or {}).items()
        if name in class_names
    }
    return Checkpoint(
        arch=arch,
        class_names=list(class_names),
        preprocessing=preprocessing,
        state_dict=_weights(model),
        epoch=int(epoch),
        metrics={k: float(v) for k, v in metrics.items()},
        config=config,
        class_info=info,
        head=dict(head) if head and head.get("type", "linear") != "linear" else None,
        training_state=state if state.to_dict() else None,
    )


def save_checkpoint(ckpt: Checkpoint | Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``ckpt`` atomically (temporary file then rename), so a crash never leaves half a checkpoint; a raw
    mapping is written as it is (tests that craft files). Returns ``path``."""
    return write_file(ckpt.to_dict() if isinstance(ckpt, Checkpoint) else ckpt, path)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint with ``weights_only=True`` (no arbitrary pickle code runs): the one loader.

    Raises:
        CheckpointError: the file is missing, a directory, empty or unreadable, is not a torch file, holds objects that
            ``weights_only`` refuses, lacks a required key, has a newer format version, or holds a malformed
            required value.
    """
    raw = read_file(path, map_location)
    try:
        return Checkpoint.from_dict(raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Rebuild the network recorded in ``ckpt`` and load its weights, as float32, in eval mode.

    The network is built on the meta device (no memory, no random initialisation: a tenth of a second for a
    ResNet-18, most of the start-up of a small model) and the checkpoint's tensors are assigned to it
    (``load_state_dict(assign=True)``); a network with state that the checkpoint does not hold (non-persistent
    buffers) is built on the CPU instead.

    Raises:
        CheckpointError: the weights do not fit the recorded architecture and class count.
    """
    # contiguous copies, as load_state_dict makes into a built network: the network never shares storage with
    # the record, and a tensor saved channels-last computes exactly as it does in a network built on the CPU
    state_dict = {
        k.removeprefix("module."): v.to(
            torch.float32 if v.is_floating_point() else v.dtype, copy=True, memory_format=torch.contiguous_format
        )
        for k, v in ckpt.state_dict.items()
    }
    model = _network(ckpt, state_dict, torch.device("meta"))
    meta = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if meta:  # state the file does not hold: build it for real, and let load_state_dict copy into it
        logger.debug("%s has state outside its checkpoint (%s...): built on the CPU", ckpt.arch, meta[0])
        model = _network(ckpt, state_dict, None)
    return model.eval()


def _network(ckpt: Checkpoint, state_dict: dict[str, torch.Tensor], device: torch.device | None) -> nn.Module:
    """``ckpt``'s network built on ``device`` (None: the default, the CPU) with ``state_dict`` loaded (assigned on
    the meta device, copied otherwise).

    Raises:
        CheckpointError: the architecture cannot be built, or the weights do not fit it.
    """
    with torch.device(device) if device is not None else contextlib.nullcontext():
        try:
            model = build_model(ckpt.arch, num_classes=len(ckpt.class_names), head=ckpt.head)
        except ValueError as exc:
            raise CheckpointError(f"cannot rebuild the network of this checkpoint: {exc}") from exc
        kept = state_dict.get(f"{PRETRAINED_HEAD}.weight")
        if kept is not None:
            attach_pretrained_head(model, kept.shape[1], kept.shape[0])
        tail = state_dict.get(f"{PRETRAINED_TAIL}.classifier.weight")
        if tail is not None:
            try:
                attach_pretrained_tail(model, int(ckpt.config["frozen_stages"]), tail.shape[1], tail.shape[0])
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"cannot rebuild the pretrained tail of this checkpoint: {exc}") from exc
    try:
        model.load_state_dict(state_dict, assign=device is not None and device.type == "meta")
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit {ckpt.arch}: {exc}") from exc
    return model


def release_checkpoint(ckpt: Checkpoint, dtype: torch.dtype = torch.float16) -> Checkpoint:
    """A slim copy for serving: weights cast to ``dtype`` (fp16 halves the file), no training state, and
    ``config["release_dtype"]`` recording the cast. BatchNorm's ``num_batches_tracked`` and other integer buffers
    keep their dtype."""
    return ckpt.replace(
        state_dict={k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt.state_dict.items()},
        config={**ckpt.config, "release_dtype": str(dtype).removeprefix("torch.")},
        training_state=None,
    )
