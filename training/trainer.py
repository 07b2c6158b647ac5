"""``fit(config)``: a training run as a list of named steps, from an ImageFolder to checkpoints and an evaluation.

After torchvision's ``references/classification/train.py``: :func:`start_run`,
:func:`training.run_data.build_data`,
:func:`build_network`, :func:`build_optimization` and :func:`resume` set the run up; each epoch is
:func:`train_epoch` (the loop in :mod:`training.engine`), :func:`training.engine.evaluate`, :func:`save_epoch`
and :func:`should_stop`; the release step (:mod:`training.release`) ends it.

Run folder contents: ``config.yaml`` (the resolved options; ``--config`` reads it back), ``split.csv``,
``metrics.csv`` (one row per epoch), ``best.pt`` (by validation macro-F1; with ``--ema-decay`` the averaged
weights), ``last.pt``, ``release.pt`` (best weights in fp16, no optimizer state, for serving), and the final
evaluation of ``release.pt`` on the validation set: ``metrics.json``, ``per_class.csv``,
``confusion_matrix.csv`` and ``confusion_matrix.png``.
"""

from __future__ import annotations

import copy
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from model.checkpoint import TrainingState, load_checkpoint, make_checkpoint, save_checkpoint
from model.network import WEIGHTS_IMAGENET, build_model, pretrained_head
from model.open_set import OpenSetNetwork, distillation_loss
from model.runtime import autocast, resolve_device, resolve_precision
from training.config import TrainConfig, save_config, validate
from training.distributed import DistributedContext, init_distributed
from training.engine import evaluate, train_one_epoch
from training.evaluation import ClassMismatchError
from training.optim import (
    LRSchedule,
    build_batch_mix,
    build_ema,
    build_optimizer,
    build_scheduler,
    class_weights,
    set_backbone_trainable,
)
from training.release import OpenSetOptions, write_release
from training.reports import append_metrics_row, write_json
from training.run_data import RunData, build_data

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _wrap(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DistributedDataParallel under torchrun (over the parameters that require a gradient now), else ``model``."""
    if not ctx.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def build_network(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    """``cfg.arch`` with ``num_classes`` outputs and ``cfg``'s head, from ``cfg.weights`` (keeping the pretrained
    ImageNet classifier beside the new head when those are ImageNet's), channels-last on ``device``."""
    model = build_model(
        cfg.arch,
        num_classes,
        cfg.weights,
        head=cfg.head_spec(),
        keep_pretrained_head=cfg.weights == WEIGHTS_IMAGENET,
        frozen_stages=cfg.frozen_stages,
    )
    return model.to(device, memory_format=torch.channels_last)


@dataclass
class Optimization:
    """What :func:`build_optimization` makes: everything that turns a batch into a weight update.

    Attributes:
        criterion: cross-entropy (with ``--class-weights`` and ``--label-smoothing``).
        optimizer, lr_scheduler: see :func:`training.optim.build_optimizer` and ``build_scheduler``.
        scaler: the fp16 gradient scaler (disabled at other precisions).
        ema: the averaged weights (``--ema-decay``), or None.
        batch_mix: MixUp / CutMix (``--mixup-alpha``, ``--cutmix-alpha``), or None.
        distill: the Learning-without-Forgetting loss for a kept ImageNet head, or None.
    """

    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: LRSchedule
    scaler: torch.amp.GradScaler
    ema: torch.optim.swa_utils.AveragedModel | None
    batch_mix: Callable[..., Any] | None
    distill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


def build_optimization(
    cfg: TrainConfig, model: nn.Module, data: RunData, device: torch.device, precision: str
) -> Optimization:
    """The criterion, optimizer, LR schedule, gradient scaler, EMA, batch mixing and distillation of ``cfg``."""
    num_classes = len(data.class_names)
    distill = _build_distillation(model, cfg.distill_weight, device, precision)
    targets = (s.target for s in data.train_samples)
    weight = class_weights(targets, num_classes) if cfg.class_weights == "auto" else None
    if weight is not None:
        logger.info("class weights (inverse frequency): %s", [round(float(w), 3) for w in weight])
    criterion = nn.CrossEntropyLoss(
        weight=weight.to(device) if weight is not None else None, label_smoothing=cfg.label_smoothing
    )
    optimizer = build_optimizer(
        model,
        cfg.lr,
        cfg.momentum,
        cfg.weight_decay,
        name=cfg.optimizer,
        backbone_lr_scale=cfg.backbone_lr_scale if cfg.head_epochs else 1.0,
    )
    lr_scheduler = build_scheduler(
        optimizer,
        name=cfg.scheduler,
        epochs=cfg.epochs,
        steps_per_epoch=len(data.train_loader),
        warmup_epochs=cfg.warmup_epochs,
        step_size=cfg.lr_step_size,
        gamma=cfg.lr_gamma,
        plateau_patience=cfg.plateau_patience,
    )
    return Optimization(
        criterion=criterion,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        ema=build_ema(model, cfg.ema_decay) if cfg.ema_decay else None,
        batch_mix=build_batch_mix(cfg.mixup_alpha, cfg.cutmix_alpha, num_classes),
        distill=distill,
    )


@dataclass
class Progress:
    """Where the run stands: the first epoch to train, the best validation macro-F1 so far and its epoch, and how
    many epochs have passed without improving it (for ``--patience``); saved in every checkpoint's metrics."""

    start_epoch: int = 0
    best_f1: float = -1.0
    best_epoch: int = -1
    stale: int = 0

    def update(self, epoch: int, macro_f1: float) -> None:
        """Record 0-based ``epoch``'s validation ``macro_f1``."""
        if macro_f1 > self.best_f1:
            self.best_f1, self.best_epoch, self.stale = macro_f1, epoch, 0
        else:
            self.stale += 1


def resume(
    cfg: TrainConfig, ctx: DistributedContext, out: Path, model: nn.Module, optim: Optimization, class_names: list[str]
) -> Progress:
    """Load ``cfg.resume`` into ``model`` and ``optim``; with a new run folder, copy the old ``best.pt`` there.

    Raises:
        model.checkpoint.CheckpointError: unreadable file; ClassMismatchError: other classes or architecture.
    """
    ckpt = load_checkpoint(cfg.resume, map_location=ctx.device)
    if ckpt.class_names != class_names or ckpt.arch != cfg.arch:
        raise ClassMismatchError(f"--resume {cfg.resume} was trained as {ckpt.arch} on {ckpt.class_names}")
    state = ckpt.training_state or TrainingState()
    model.load_state_dict(state.training_model or ckpt.state_dict)
    if optim.ema is not None:
        optim.ema.module.load_state_dict(ckpt.state_dict)
        optim.ema.n_averaged.fill_(1)
    saved = ((state.optimizer, optim.optimizer), (state.lr_scheduler, optim.lr_scheduler), (state.scaler, optim.scaler))
    for state_dict, obj in saved:
        if state_dict is not None:
            obj.load_state_dict(state_dict)
    scores = ckpt.evaluation
    progress = Progress(
        start_epoch=(ckpt.epoch or 0) + 1,
        best_f1=scores.best_val_macro_f1 if scores.best_val_macro_f1 is not None else -1.0,
        best_epoch=int(scores.best_epoch) if scores.best_epoch is not None else -1,
        stale=int(scores.epochs_without_improvement or 0),
    )
    logger.info("resumed from %s at epoch %d (best macro-F1 %.4f)", cfg.resume, progress.start_epoch, progress.best_f1)
    previous_best = Path(cfg.resume).parent / "best.pt"
    if ctx.is_main and not (out / "best.pt").exists() and previous_best.exists():
        shutil.copyfile(previous_best, out / "best.pt")  # resuming into a new run folder
    return progress


def trained_view(model: nn.Module, distill: object, ctx: DistributedContext) -> nn.Module:
    """The module the training loop calls: ``model`` (as :class:`model.open_set.OpenSetNetwork` with
    distillation, to reach the ImageNet logits), under DistributedDataParallel with torchrun."""
    return _wrap(OpenSetNetwork(model) if distill else model, ctx)


def freeze_backbone(cfg: TrainConfig, model: nn.Module, start_epoch: int) -> None:
    """Freeze the backbone for the run (``--freeze-backbone``) or while ``--head-epochs`` last."""
    if cfg.freeze_backbone or start_epoch < cfg.head_epochs:
        set_backbone_trainable(model, False)
        logger.info(
            "backbone frozen (BatchNorm in eval mode)%s",
            f" for the first {cfg.head_epochs} epoch(s)" if cfg.head_epochs else "",
        )


def unfreeze_backbone(
    cfg: TrainConfig, ctx: DistributedContext, model: nn.Module, optim: Optimization, epoch: int, current: nn.Module
) -> nn.Module:
    """Where ``--head-epochs`` end (at 0-based ``epoch == head_epochs``), unfreeze the backbone and return a new
    :func:`trained_view` (DDP must see the parameters that now need a gradient); else ``current``."""
    if not cfg.head_epochs or epoch != cfg.head_epochs:
        return current
    set_backbone_trainable(model, True)
    logger.info("epoch %d: training the whole network, backbone LR x %g", epoch + 1, cfg.backbone_lr_scale)
    return trained_view(model, optim.distill, ctx)


def train_epoch(
    cfg: TrainConfig,
    ctx: DistributedContext,
    train_model: nn.Module,
    optim: Optimization,
    data: RunData,
    epoch: int,
    precision: str,
) -> dict[str, float]:
    """One pass over the training loader (:func:`training.engine.train_one_epoch`, with every option of ``cfg``);
    returns its statistics."""
    if isinstance(data.sampler, DistributedSampler):
        data.sampler.set_epoch(epoch)
    return train_one_epoch(
        train_model,
        optim.criterion,
        optim.optimizer,
        optim.lr_scheduler,
        data.train_loader,
        ctx.device,
        epoch,
        precision=precision,
        scaler=optim.scaler,
        batch_mix=optim.batch_mix,
        ema=optim.ema,
        clip_grad_norm=cfg.clip_grad_norm,
        show_progress=ctx.is_main,
        distill=optim.distill,
    )


def epoch_row(epoch: int, lr: float, train: dict[str, float], val: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The ``metrics.csv`` row of an epoch (:data:`METRICS_COLUMNS`), logged as one line too."""
    row = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_macro_f1": val["macro_f1"],
        "train_images_per_s": train["images_per_s"],
        "epoch_seconds": seconds,
    }
    return row


def log_epoch(row: dict[str, Any], epochs: int) -> None:
    """Log an :func:`epoch_row` in one line."""
    logger.info(
        "epoch %d/%d  train loss %.4f acc %.3f  val loss %.4f acc %.3f macro-F1 %.3f  %.1f img/s  %.0f s",
        row["epoch"] + 1,
        epochs,
        row["train_loss"],
        row["train_accuracy"],
        row["val_loss"],
        row["val_accuracy"],
        row["val_macro_f1"],
        row["train_images_per_s"],
        row["epoch_seconds"],
    )


def save_epoch(
    cfg: TrainConfig,
    out: Path,
    data: RunData,
    model: nn.Module,
    eval_model: nn.Module,
    optim: Optimization,
    progress: Progress,
    row: dict[str, Any],
) -> None:
    """Rank 0: append ``row`` to ``metrics.csv`` and save ``last.pt`` (``eval_model``'s weights, the optimizer
    state, and with EMA the raw weights too), and ``best.pt`` when this epoch is the best so far."""
    epoch = row["epoch"]
    append_metrics_row(out / "metrics.csv", row)
    metrics = {
        "val_accuracy": row["val_accuracy"],
        "val_macro_f1": row["val_macro_f1"],
        "val_loss": row["val_loss"],
        "train_loss": row["train_loss"],
        "best_val_macro_f1": progress.best_f1,
        "best_epoch": float(progress.best_epoch),
        "epochs_without_improvement": float(progress.stale),
    }
    ckpt = make_checkpoint(
        model=eval_model,
        arch=cfg.arch,
        class_names=data.class_names,
        preprocessing=data.preprocessing,
        epoch=epoch,
        metrics=metrics,
        config=cfg.to_dict(),
        optimizer=optim.optimizer,
        lr_scheduler=optim.lr_scheduler,
        scaler=optim.scaler,
        class_info=data.class_info,
        head=cfg.head_spec(),
        training_model=model if optim.ema is not None else None,
    )
    save_checkpoint(ckpt, out / "last.pt")
    if progress.best_epoch == epoch:
        save_checkpoint(ckpt, out / "best.pt")
        logger.info("new best macro-F1 %.4f: saved %s", progress.best_f1, out / "best.pt")


def should_stop(cfg: TrainConfig, progress: Progress, epoch: int) -> bool:
    """``--patience``: True (and logged) when that many epochs passed without a better validation macro-F1."""
    if not cfg.patience or progress.stale < cfg.patience:
        return False
    logger.info(
        "early stop after epoch %d: no better val macro-F1 for %d epoch(s) (best %.4f at epoch %d)",
        epoch + 1,
        progress.stale,
        progress.best_f1,
        progress.best_epoch + 1,
    )
    return True


def start_run(cfg: TrainConfig, ctx: DistributedContext) -> tuple[Path, str]:
    """Make the run folder (rank 0), seed every generator and resolve ``--precision`` on this process's
    device; returns ``(run folder, precision)``."""
    out = Path(cfg.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    precision = resolve_precision(cfg.precision, ctx.device)
    logger.info(
        "device %s, precision %s, torch threads %d, %d process(es)",
        ctx.device,
        precision,
        torch.get_num_threads(),
        ctx.world_size,
    )
    return out, precision


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.arch`` on ``cfg.data``; write the run folder ``cfg.out``. Runs as one process, or as one of
    several under ``torchrun`` (see :mod:`training.distributed`), where rank 0 writes every file.

    Returns:
        The final evaluation of the best checkpoint (see :func:`training.evaluation.evaluate_logits`) plus
        ``"best_epoch"``, ``"epochs_run"``, ``"stopped_early"``, ``"world_size"``, ``"train_seconds"`` and
        ``"train_images_per_s"`` (mean over epochs, all processes together); the same on every rank.

    Raises:
        ValueError: bad options; model.network.WeightsUnavailableError: pretrained weights unavailable;
        model.checkpoint.CheckpointError: ``--resume`` file unreadable; FileNotFoundError: no data.
    """
    validate(cfg)
    ctx = init_distributed(resolve_device(cfg.device))
    try:
        return _fit(cfg, ctx)
    finally:
        ctx.close()


def _fit(cfg: TrainConfig, ctx: DistributedContext) -> dict[str, Any]:
    """The steps of :func:`fit` in this process: build, train and validate each epoch, save, release."""
    out, precision = start_run(cfg, ctx)
    data = build_data(cfg, ctx, out)
    model = build_network(cfg, len(data.class_names), ctx.device)
    optim = build_optimization(cfg, model, data, ctx.device, precision)
    progress = resume(cfg, ctx, out, model, optim, data.class_names) if cfg.resume else Progress()
    freeze_backbone(cfg, model, progress.start_epoch)
    train_model = trained_view(model, optim.distill, ctx)
    if ctx.is_main:
        save_config(cfg, out / "config.yaml")
        if not cfg.resume:
            (out / "metrics.csv").unlink(missing_ok=True)  # a new run in an old folder starts a new history
    speeds: list[float] = []
    run_start, stopped_early = time.perf_counter(), False

    for epoch in range(progress.start_epoch, cfg.epochs):
        train_model = unfreeze_backbone(cfg, ctx, model, optim, epoch, train_model)
        epoch_start = time.perf_counter()
        lr = max(group["lr"] for group in optim.optimizer.param_groups)
        train_stats = train_epoch(cfg, ctx, train_model, optim, data, epoch, precision)
        speeds.append(train_stats["images_per_s"])
        eval_model = optim.ema.module if optim.ema is not None else model  # the weights validated and saved
        val = evaluate(eval_model, data.val_loader, ctx.device, data.class_names, precision=precision)
        optim.lr_scheduler.epoch_end(epoch, val["macro_f1"])
        row = epoch_row(epoch, lr, train_stats, val, time.perf_counter() - epoch_start)
        progress.update(epoch, val["macro_f1"])
        log_epoch(row, cfg.epochs)
        if ctx.is_main:
            save_epoch(cfg, out, data, model, eval_model, optim, progress, row)
        if should_stop(cfg, progress, epoch):
            stopped_early = True
            break

    train_seconds = time.perf_counter() - run_start
    ctx.barrier()
    final: dict[str, Any] | None = None
    if ctx.is_main:
        final = write_release(
            out,
            data.val_root,
            data.val_samples,
            device=ctx.device,
            batch_size=cfg.batch_size * 2,
            workers=cfg.workers,
            target_accuracy=cfg.target_accuracy,
            open_set=OpenSetOptions(data.train_root, list(data.train_samples), cfg),
        )
        final.update(
            epochs_run=len(speeds),
            stopped_early=stopped_early,
            world_size=ctx.world_size,
            train_seconds=train_seconds,
            train_images_per_s=float(np.mean(speeds)) if speeds else 0.0,
        )
        write_json(out / "metrics.json", final)
    return ctx.broadcast(final)


def _build_distillation(
    model: nn.Module, weight: float, device: torch.device, precision: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """Learning without Forgetting (Li & Hoiem 2016) for the kept ImageNet head: a frozen copy of the pretrained
    network gives the ImageNet logits the fine-tuned one should keep on each training batch; returns
    ``distill(images, imagenet_logits) -> weight * distillation_loss``, or None without a kept head or weight."""
    if weight <= 0 or pretrained_head(model) is None:
        return None
    teacher = OpenSetNetwork(copy.deepcopy(model)).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    logger.info("keeping the ImageNet head: distillation from the pretrained network, weight %g", weight)

    def distill(images: torch.Tensor, imagenet_logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device, precision):
            target = teacher(images)[2]
        return weight * distillation_loss(imagenet_logits, target)

    return distill
