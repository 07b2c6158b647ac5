"""The loops over a loader: one epoch of training (:func:`train_one_epoch`), predicting (:func:`predict_loader`)
and validating (:func:`evaluate`) a network in training, on one process or several (the device and precision come
from :mod:`model.runtime`; what is optimised and how, from :mod:`training.optim`).

Layout after torchvision's ``references/classification/train.py`` (``train_one_epoch``, ``evaluate``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from model.network import classifier_name
from model.runtime import autocast
from training.distributed import gather_predictions, sum_over_processes
from training.metrics import classification_metrics
from training.optim import LRSchedule, backbone_is_frozen, unwrap

logger = logging.getLogger(__name__)


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except that a frozen backbone stays in eval mode (BatchNorm statistics fixed,
    dropout off), as a linear probe needs, and so does every BatchNorm layer whose parameters are fixed (the shared
    trunk of ``--frozen-stages``, :mod:`model.shared_trunk`)."""
    model.train()
    module = unwrap(model)
    if backbone_is_frozen(model):
        module.eval()
        module.get_submodule(classifier_name(module)).train()
    for layer in module.modules():
        weight = getattr(layer, "weight", None)
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and weight is not None and not weight.requires_grad:
            layer.eval()


def optimizer_step(
    loss: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip_grad_norm: float,
) -> None:
    """Backpropagate a scalar ``loss`` and take one step of ``optimizer``: through ``scaler`` where it is enabled
    (fp16), after clipping the total L2 norm of ``model``'s gradients to ``clip_grad_norm`` when that is > 0."""
    optimizer.zero_grad(set_to_none=True)
    use_scaler = scaler is not None and scaler.is_enabled()
    if use_scaler:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    if clip_grad_norm > 0:
        if use_scaler:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip_grad_norm)
    if use_scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: LRSchedule,
    data_loader: Iterable[Any],
    device: torch.device,
    epoch: int,
    *,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    batch_mix: Callable[..., Any] | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    clip_grad_norm: float = 0.0,
    show_progress: bool = True,
    distill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train for one pass over ``data_loader`` (batches of ``(images (N,3,S,S) float32, targets (N,) int64)``).

    ``batch_mix`` (see :func:`training.optim.build_batch_mix`) mixes each batch; ``ema`` is updated after each step;
    ``clip_grad_norm > 0`` clips the gradients' total L2 norm. With ``distill``, ``model`` is a
    :class:`model.open_set.OpenSetNetwork` (returning logits, features and ImageNet logits) and
    ``distill(images, imagenet_logits)`` is added to the loss (Learning without Forgetting). Under
    torch.distributed the returned loss, accuracy and image count are summed over every process.

    Returns:
        ``{"loss": mean loss, "accuracy": top-1 on the augmented batches (against the dominant class of mixed
        targets), "images": count, "seconds": wall time, "images_per_s": throughput including data loading}``.

    Raises:
        FloatingPointError: the loss became NaN or infinite (lower ``--lr``).
    """
    train_mode(model)
    total_loss, correct, seen, skipped = 0.0, 0, 0, 0
    start = time.perf_counter()
    bar = _progress_bar(data_loader, epoch, show_progress)
    for batch in bar:
        if batch is None:  # every image of the batch was unreadable
            skipped += 1
            continue
        images, targets = _prepare_batch(batch, batch_mix, device)
        logits, loss = _forward_loss(model, criterion, images, targets, device, precision, distill)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}; try a lower --lr")
        optimizer_step(loss, model, optimizer, scaler, clip_grad_norm)
        lr_scheduler.step()
        if ema is not None:
            ema.update_parameters(getattr(model, "module", model))
        n = targets.shape[0]
        hard_targets = targets.argmax(1) if targets.ndim == 2 else targets
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == hard_targets).sum())
        seen += n
        elapsed = time.perf_counter() - start
        bar.set_postfix(
            loss=f"{total_loss / seen:.3f}", img_s=f"{seen / elapsed:.1f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}"
        )
    return _epoch_summary(total_loss, correct, seen, skipped, epoch=epoch, start=start, device=device)


def _progress_bar(data_loader: Iterable[Any], epoch: int, show_progress: bool) -> tqdm:
    """A tqdm bar over ``data_loader`` for ``epoch`` (off when not ``show_progress``; else tqdm's default: off
    without a terminal)."""
    return tqdm(
        data_loader,
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        disable=None if show_progress else True,
        dynamic_ncols=True,
    )


def _prepare_batch(
    batch: tuple[torch.Tensor, torch.Tensor], batch_mix: Callable[..., Any] | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N,3,S,S), targets)`` of ``batch``, mixed by ``batch_mix`` where given (targets then ``(N, C)``
    soft labels, else int64 ``(N,)``), on ``device``, the images channels-last."""
    images, targets = batch
    if batch_mix is not None:
        images, targets = batch_mix(images, targets)
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    targets = targets.to(device, non_blocking=True)
    return images, targets


def _forward_loss(
    model: nn.Module,
    criterion: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    precision: str,
    distill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, C), loss)`` of ``model`` on ``images`` under autocast at ``precision``: ``criterion``
    against ``targets``, plus ``distill(images, imagenet_logits)`` where given (``model`` then returns logits,
    features and ImageNet logits)."""
    with autocast(device, precision):
        if distill is None:
            logits = model(images)
            loss = criterion(logits, targets)
        else:
            logits, _, imagenet_logits = model(images)
            loss = criterion(logits, targets) + distill(images, imagenet_logits)
    return logits, loss


def _epoch_summary(
    total_loss: float, correct: int, seen: int, skipped: int, *, epoch: int, start: float, device: torch.device
) -> dict[str, float]:
    """The dict :func:`train_one_epoch` returns, from this process's summed loss, correct and seen counts (summed
    over every process under torch.distributed) and its ``start`` time; warns of ``skipped`` batches."""
    total_loss, total_correct, total_seen = sum_over_processes([total_loss, correct, seen], device)
    correct, seen = int(total_correct), int(total_seen)
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


def evaluate(
    model: nn.Module,
    data_loader: Iterable[Any],
    device: torch.device,
    class_names: Sequence[str],
    *,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Validate ``model`` (put in eval mode) on a loader of ``(images, targets)``, under autocast at
    ``precision``; under torch.distributed each process passes its shard and gets the whole set's numbers.

    Returns:
        :func:`training.metrics.classification_metrics` of the argmax predictions plus ``"loss"``: the mean
        cross-entropy of the logits (NaN without a readable image).
    """
    model.eval()

    def forward(images: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))

    logits, targets = gather_predictions(*predict_loader(forward, data_loader, desc="val"))
    loss = float(nn.functional.cross_entropy(logits, targets)) if targets.numel() else float("nan")
    metrics = classification_metrics(targets.tolist(), logits.argmax(1).tolist(), class_names)
    metrics["loss"] = loss
    return metrics
