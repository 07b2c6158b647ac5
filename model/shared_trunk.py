"""A shared trunk: the pretrained network's first stages frozen and shared by two tails.

Fine-tuning changes every stage of a network, and with them what its ImageNet classifier reads: a distilled ImageNet
head on the fine-tuned features (``model.network.PRETRAINED_HEAD``) keeps only part of ImageNet's knowledge of
sea life (EXPERIMENTS.md, sections 10 and 12). With ``--frozen-stages N`` (mmdetection's ``frozen_stages``: the stem
and the first N stages fixed, their BatchNorm in eval mode) the first stages stay the pretrained network's own,
so a copy of the pretrained *later* stages and classifier (:class:`PretrainedTail`), run on the shared trunk's
output, gives the pretrained network's ImageNet logits exactly, for the cost of those later stages only.

Supported for timm's ``EfficientNet`` class (EfficientNet, EfficientNet-Lite, MixNet, MnasNet, MobileNetV2 in timm):
``conv_stem``, ``bn1``, ``blocks`` (a Sequential of stages), ``conv_head``, ``bn2``, ``global_pool``, ``classifier``
(timm's ``forward_features`` and ``forward_head``, without the dropout that is off at inference).
"""

from __future__ import annotations

import copy

import torch
from timm.models.efficientnet import EfficientNet
from torch import nn

#: Attribute under which :func:`keep_pretrained_tail` keeps the pretrained later stages and classifier.
PRETRAINED_TAIL = "pretrained_tail"


def _check(model: nn.Module, frozen_stages: int) -> None:
    if not isinstance(model, EfficientNet):
        raise ValueError(
            f"--frozen-stages needs a timm EfficientNet-style network (e.g. tf_efficientnet_lite2), not "
            f"{type(model).__name__}"
        )
    if not 1 <= frozen_stages <= len(model.blocks):
        stages = len(model.blocks)
        raise ValueError(f"frozen_stages must be between 1 and {stages} for this network, got {frozen_stages}")


def trunk_names(model: nn.Module, frozen_stages: int) -> tuple[str, ...]:
    """Qualified names of the shared trunk's modules, in forward order: ``("conv_stem", "bn1", "blocks.0", ...,
    f"blocks.{frozen_stages - 1}")``; the last one's output is what :class:`PretrainedTail` reads.

    Raises:
        ValueError: the network is not timm's ``EfficientNet``, or ``frozen_stages`` is outside ``1..len(blocks)``.
    """
    _check(model, frozen_stages)
    return ("conv_stem", "bn1", *(f"blocks.{i}" for i in range(frozen_stages)))


class PretrainedTail(nn.Module):
    """The pretrained network after its shared trunk: ``stages`` (blocks ``frozen_stages..``, ``conv_head``, ``bn2``
    and global pooling) and the ImageNet ``classifier``, copied from ``model``.

    ``forward(feature_map)`` maps the trunk's output, float ``(N, C, h, w)`` (the output of ``self.split``), to
    ImageNet logits ``(N, K)`` (K = 1000 for ImageNet).

    Args:
        model: a timm ``EfficientNet`` still holding the classifier to keep (the pretrained network, before its
            classifier is replaced), or any network of the architecture when ``classifier`` is given.
        frozen_stages: how many of ``model.blocks`` the trunk holds.
        classifier: the classifier to use instead of a copy of ``model.classifier`` (an empty one of the right shape
            when a checkpoint is about to be loaded into the tail).

    Raises:
        ValueError: as :func:`trunk_names`.
    """

    def __init__(self, model: nn.Module, frozen_stages: int, classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.split = trunk_names(model, frozen_stages)[-1]
        self.frozen_stages = frozen_stages
        self.stages = nn.Sequential(
            *copy.deepcopy(list(model.blocks[frozen_stages:])),
            copy.deepcopy(model.conv_head),
            copy.deepcopy(model.bn2),
            copy.deepcopy(model.global_pool),
        )
        self.classifier = classifier if classifier is not None else copy.deepcopy(model.classifier)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stages(feature_map))


def pretrained_tail(model: nn.Module) -> PretrainedTail | None:
    """The kept :class:`PretrainedTail` of ``model`` (unwrapping DDP's ``module``), or None."""
    tail = getattr(getattr(model, "module", model), PRETRAINED_TAIL, None)
    return tail if isinstance(tail, PretrainedTail) else None


def freeze_trunk(model: nn.Module, frozen_stages: int) -> None:
    """Fix the trunk's parameters (``requires_grad=False``); their BatchNorm layers are then kept in eval mode by
    the training loop (``training.engine.train_mode``), so the trunk stays the pretrained network's own.

    Raises:
        ValueError: as :func:`trunk_names`.
    """
    for name in trunk_names(model, frozen_stages):
        model.get_submodule(name).requires_grad_(False)


def keep_pretrained_tail(model: nn.Module, frozen_stages: int) -> PretrainedTail:
    """Copy ``model``'s stages after the trunk and its classifier into :data:`PRETRAINED_TAIL` (frozen), and freeze
    the trunk; call it on the pretrained network before its classifier is replaced.

    Raises:
        ValueError: as :func:`trunk_names`.
    """
    tail = PretrainedTail(model, frozen_stages).requires_grad_(False)
    model.add_module(PRETRAINED_TAIL, tail)
    freeze_trunk(model, frozen_stages)
    return tail


def attach_pretrained_tail(model: nn.Module, frozen_stages: int, in_features: int, out_features: int) -> None:
    """Give ``model`` an empty :class:`PretrainedTail` slot (its classifier ``in_features -> out_features``) to load
    a checkpoint into.

    Raises:
        ValueError: as :func:`trunk_names`.
    """
    model.add_module(PRETRAINED_TAIL, PretrainedTail(model, frozen_stages, nn.Linear(in_features, out_features)))
