"""The training loop: device and precision choice, one epoch of training, inference over a loader.

Layout after torchvision's ``references/classification/train.py`` (``train_one_epoch``, ``evaluate``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from model.predictor import cpu_supports_bf16

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` becomes ``cuda`` when available, else ``cpu``; anything else is passed to ``torch.device``.

    Raises:
        ValueError: CUDA was asked for but is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but torch sees no GPU; use --device cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """Turn ``"auto"`` into ``"bf16"``, ``"fp16"`` or ``"fp32"`` for ``device`` (see ``--precision``).

    Raises:
        ValueError: fp16 autocast requested on a CPU.
    """
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a GPU; use bf16 or fp32 on a CPU")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``precision`` ("bf16"/"fp16"), or a no-op for "fp32"."""
    dtype = _DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov-free momentum; no weight decay on biases and norm parameters (as timm and
    torchvision's references do with ``--norm-weight-decay 0``)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float,
    step_size: int = 10,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration LR schedule: linear warmup from 1% of the peak, then cosine to 0 or step decay.

    ``scheduler.step()`` is called after every optimiser step. Cosine annealing: Loshchilov & Hutter, SGDR
    (2017); warmup: Goyal et al., "Accurate, Large Minibatch SGD" (2017).

    Raises:
        ValueError: unknown ``name``.
    """
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(warmup_epochs * steps_per_epoch)))
    if name == "cosine":
        main: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, total - warmup)
        )
    elif name == "step":
        main = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, step_size * steps_per_epoch), gamma=gamma)
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose cosine or step")
    if warmup <= 0:
        return main
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    data_loader: Iterable[Any],
    device: torch.device,
    epoch: int,
    *,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """Train for one pass over ``data_loader`` (batches of ``(images (N,3,S,S) float32, targets (N,) int64)``).

    Returns:
        ``{"loss": mean loss, "accuracy": top-1 on the augmented batches, "images": count, "seconds": wall time,
        "images_per_s": throughput including data loading}``.

    Raises:
        FloatingPointError: the loss became NaN or infinite (lower ``--lr``).
    """
    model.train()
    total_loss, correct, seen, skipped = 0.0, 0, 0, 0
    start = time.perf_counter()
    bar = tqdm(data_loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=None, dynamic_ncols=True)
    for batch in bar:
        if batch is None:  # every image of the batch was unreadable
            skipped += 1
            continue
        images, targets = batch
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(images)
            loss = criterion(logits, targets)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}; try a lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr_scheduler.step()
        n = targets.shape[0]
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == targets).sum())
        seen += n
        elapsed = time.perf_counter() - start
        bar.set_postfix(
            loss=f"{total_loss / seen:.3f}", img_s=f"{seen / elapsed:.1f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}"
        )
    elapsed = time.perf_counter() - start
    if skipped:
        logger.warning("epoch %d: skipped %d batch(es) with no readable image", epoch, skipped)
    return {
        "loss": total_loss / max(1, seen),
        "accuracy": correct / max(1, seen),
        "images": float(seen),
        "seconds": elapsed,
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
    }


@torch.inference_mode()
def predict_loader(
    forward: Callable[[torch.Tensor], torch.Tensor], data_loader: Iterable[Any], desc: str = "eval"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``forward`` (a batch ``(N,3,S,S)`` to logits ``(N,C)``) over a loader of ``(images, targets)``.

    Returns:
        ``(logits, targets)``: float32 ``(M, C)`` and int64 ``(M,)`` on the CPU, M the readable images.
    """
    all_logits, all_targets = [], []
    for batch in tqdm(data_loader, desc=desc, unit="batch", leave=False, disable=None, dynamic_ncols=True):
        if batch is None:
            continue
        images, targets = batch
        all_logits.append(forward(images).float().cpu())
        all_targets.append(targets)
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_targets)
