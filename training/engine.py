"""The training loop: optimizer, schedule, one epoch of training, inference over a loader (the device and
precision come from :mod:`model.runtime`).

Layout after torchvision's ``references/classification/train.py`` (``train_one_epoch``, ``evaluate``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchvision.transforms import v2 as T
from tqdm import tqdm

from model.network import classifier_name
from model.runtime import autocast
from training.metrics import classification_metrics

logger = logging.getLogger(__name__)


def build_optimizer(
    model: nn.Module,
    lr: float,
    momentum: float,
    weight_decay: float,
    *,
    name: str = "sgd",
    backbone_lr_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """SGD with momentum (default) or AdamW over every parameter of ``model``, in up to four groups.

    No weight decay on biases and norm parameters (as timm and torchvision's references do with
    ``--norm-weight-decay 0``). The classifier head (:func:`model.network.classifier_name`) gets ``lr``, the
    backbone ``lr * backbone_lr_scale`` (discriminative fine-tuning, Howard & Ruder, ULMFiT 2018). Frozen
    parameters are included: they get no gradient, and torch's optimizers skip parameters whose ``grad`` is None,
    so unfreezing them later needs no new optimizer. AdamW: Loshchilov & Hutter, "Decoupled Weight Decay
    Regularization" (2019).

    Raises:
        ValueError: unknown ``name``.
    """
    try:
        head_prefix = classifier_name(model) + "."
    except ValueError:  # not a torchvision classifier: every parameter counts as head
        head_prefix = ""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for param_name, param in getattr(model, "module", model).named_parameters():
        key = (param_name.startswith(head_prefix), param.ndim > 1)
        groups.setdefault(key, []).append(param)
    param_groups = [
        {
            "params": params,
            "lr": lr if is_head else lr * backbone_lr_scale,
            "weight_decay": weight_decay if decays else 0.0,
            "name": ("head" if is_head else "backbone") + ("" if decays else "_no_decay"),
        }
        for (is_head, decays), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adamw")


class LRSchedule:
    """A per-iteration LR schedule (``step()`` after every optimiser step) plus, for ``plateau``, a per-epoch
    ``ReduceLROnPlateau`` fed the validation metric through ``epoch_end(metric)``.

    Attributes:
        per_step: the iteration-level scheduler (warmup, then cosine / step / one-cycle), or None.
        plateau: ``ReduceLROnPlateau`` in ``max`` mode (higher metric is better), or None.
        warmup_epochs: epochs of warmup; the plateau scheduler starts watching after them.
    """

    def __init__(
        self,
        per_step: torch.optim.lr_scheduler.LRScheduler | None,
        plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None,
        warmup_epochs: float = 0.0,
    ) -> None:
        self.per_step = per_step
        self.plateau = plateau
        self.warmup_epochs = warmup_epochs

    def step(self) -> None:
        """Advance one optimiser step."""
        if self.per_step is not None:
            self.per_step.step()

    def epoch_end(self, epoch: int, metric: float) -> None:
        """After validating 0-based ``epoch`` with ``metric`` (higher is better): the plateau rule."""
        if self.plateau is not None and epoch + 1 > self.warmup_epochs:
            self.plateau.step(metric)

    def state_dict(self) -> dict[str, Any]:
        """Both schedulers' state, for ``--resume``."""
        return {
            "per_step": self.per_step.state_dict() if self.per_step is not None else None,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; also takes a bare scheduler state (checkpoints written before plateau)."""
        if "per_step" not in state and "plateau" not in state:
            state = {"per_step": state}
        if self.per_step is not None and state.get("per_step") is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float,
    step_size: int = 10,
    gamma: float = 0.1,
    plateau_patience: int = 2,
) -> LRSchedule:
    """LR schedule: linear warmup from 1% of the peak, then ``cosine`` to 0, ``step`` decay by ``gamma`` every
    ``step_size`` epochs, ``plateau`` (decay by ``gamma`` when the validation metric has not improved for
    ``plateau_patience`` epochs), or ``onecycle`` (Smith & Topin 2019: cosine rise over the warmup, 30% of the
    run when ``warmup_epochs`` is 0, then cosine annealing to ``peak / 1e4 / 25``).

    Cosine annealing: Loshchilov & Hutter, SGDR (2017); warmup: Goyal et al., "Accurate, Large Minibatch SGD"
    (2017). Every group's peak is its own ``lr`` (see :func:`build_optimizer`).

    Raises:
        ValueError: unknown ``name``.
    """
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(warmup_epochs * steps_per_epoch)))
    if name == "onecycle":
        pct_start = warmup / total if warmup > 0 else 0.3
        onecycle = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total,
            pct_start=min(max(pct_start, 1e-3), 0.99),
        )
        return LRSchedule(onecycle)
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup) if warmup > 0 else None
    if name == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=gamma, patience=plateau_patience
        )
        return LRSchedule(warm, plateau, warmup_epochs)
    if name == "cosine":
        main: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, total - warmup)
        )
    elif name == "step":
        main = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, step_size * steps_per_epoch), gamma=gamma)
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose cosine, step, plateau or onecycle")
    if warm is None:
        return LRSchedule(main)
    return LRSchedule(torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup]))


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP's ``module`` and :class:`model.open_set.OpenSetNetwork`'s ``model``."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter outside the classifier head (:func:`model.network.classifier_name`); unwraps DDP and
    :class:`model.open_set.OpenSetNetwork`."""
    module = unwrap(model)
    head_prefix = classifier_name(module) + "."
    return [param for name, param in module.named_parameters() if not name.startswith(head_prefix)]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (``requires_grad=False``) or unfreeze every parameter outside the classifier head."""
    for param in _backbone_parameters(model):
        param.requires_grad_(trainable)


def backbone_is_frozen(model: nn.Module) -> bool:
    """True when no backbone parameter requires a gradient (see :func:`set_backbone_trainable`)."""
    return not any(param.requires_grad for param in _backbone_parameters(model))


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except that a frozen backbone stays in eval mode (BatchNorm statistics fixed,
    dropout off), as a linear probe needs."""
    model.train()
    if backbone_is_frozen(model):
        module = unwrap(model)
        module.eval()
        module.get_submodule(classifier_name(module)).train()


def class_weights(targets: Iterable[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights ``N / (C * n_c)`` (scikit-learn's ``class_weight="balanced"``), float32
    ``(C,)``; a class without images gets weight 0."""
    counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes).float()
    weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights


def build_batch_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> Callable[..., Any] | None:
    """torchvision's ``v2.MixUp`` (Zhang et al. 2018) and/or ``v2.CutMix`` (Yun et al. 2019), one chosen at
    random per batch when both are on, as torchvision's classification references do. Maps ``(images (N,3,S,S),
    targets (N,) int64)`` to ``(mixed images, soft targets (N, C) float32)``; None when both alphas are 0."""
    mixes: list[nn.Module] = []
    if mixup_alpha > 0:
        mixes.append(T.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(T.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else T.RandomChoice(mixes)


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers, updated with
    ``ema.update_parameters(model)`` after each optimiser step: ``ema = decay * ema + (1 - decay) * weights``
    (Polyak averaging; torch's ``AveragedModel`` with ``get_ema_multi_avg_fn`` as torchvision's references use)."""
    module = getattr(model, "module", model)
    return torch.optim.swa_utils.AveragedModel(
        module, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


def is_distributed() -> bool:
    """True inside a ``torch.distributed`` process group of more than one process (e.g. under torchrun)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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

    ``batch_mix`` (see :func:`build_batch_mix`) mixes each batch; ``ema`` is updated after each step;
    ``clip_grad_norm > 0`` clips the gradients' total L2 norm. With ``distill``, ``model`` is a
    :class:`model.open_set.OpenSetNetwork` (returning logits, features and ImageNet logits) and
    ``distill(images, imagenet_logits)`` is added to the loss (Learning without Forgetting).
    Under torch.distributed the returned loss, accuracy
    and image count are summed over every process.

    Returns:
        ``{"loss": mean loss, "accuracy": top-1 on the augmented batches (against the dominant class of mixed
        targets), "images": count, "seconds": wall time, "images_per_s": throughput including data loading}``.

    Raises:
        FloatingPointError: the loss became NaN or infinite (lower ``--lr``).
    """
    train_mode(model)
    total_loss, correct, seen, skipped = 0.0, 0, 0, 0
    start = time.perf_counter()
    bar = tqdm(
        data_loader,
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        disable=None if show_progress else True,
        dynamic_ncols=True,
    )
    for batch in bar:
        if batch is None:  # every image of the batch was unreadable
            skipped += 1
            continue
        images, targets = batch
        if batch_mix is not None:
            images, targets = batch_mix(images, targets)
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, precision):
            if distill is None:
                logits = model(images)
                loss = criterion(logits, targets)
            else:
                logits, _, imagenet_logits = model(images)
                loss = criterion(logits, targets) + distill(images, imagenet_logits)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}; try a lower --lr")
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
    if is_distributed():
        totals = torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        total_loss, correct, seen = float(totals[0]), int(totals[1]), int(totals[2])
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


def gather_predictions(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every process's ``(logits (M_r, C), targets (M_r,))`` under torch.distributed (identity
    otherwise), so each rank computes the metrics of the whole validation set."""
    if not is_distributed():
        return logits, targets
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (logits.cpu(), targets.cpu()))
    parts = [(lg, tg) for lg, tg in gathered if tg.numel()]
    if not parts:
        return logits, targets
    return torch.cat([lg for lg, _ in parts]), torch.cat([tg for _, tg in parts])


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
