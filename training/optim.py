"""What is trained and how fast: the optimizer and its parameter groups, the LR schedule, the loss's class
weights, MixUp/CutMix, the weight average (EMA), and which parameters train (a frozen backbone).

The training loop that uses them is :mod:`training.engine`; :mod:`training.trainer` builds them from the options.
Builders after torchvision's ``references/classification/train.py`` and timm's ``create_optimizer``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2 as T

from model.network import classifier_name
from model.shared_trunk import PRETRAINED_TAIL, pretrained_tail, trunk_names


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


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP's ``module`` and :class:`model.open_set.OpenSetNetwork`'s ``model``."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter outside the classifier head (:func:`model.network.classifier_name`) that may train: not
    the shared trunk nor the pretrained tail of ``--frozen-stages`` (:mod:`model.shared_trunk`), which stay fixed
    for the whole run; unwraps DDP and :class:`model.open_set.OpenSetNetwork`."""
    module = unwrap(model)
    fixed = (classifier_name(module) + ".",)
    tail = pretrained_tail(module)
    if tail is not None:
        fixed += (PRETRAINED_TAIL + ".", *(name + "." for name in trunk_names(module, tail.frozen_stages)))
    return [param for name, param in module.named_parameters() if not name.startswith(fixed)]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (``requires_grad=False``) or unfreeze every parameter outside the classifier head."""
    for param in _backbone_parameters(model):
        param.requires_grad_(trainable)


def backbone_is_frozen(model: nn.Module) -> bool:
    """True when no backbone parameter requires a gradient (see :func:`set_backbone_trainable`)."""
    return not any(param.requires_grad for param in _backbone_parameters(model))
