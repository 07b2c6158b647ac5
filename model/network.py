"""Build a classification network from a name: the one place a model is made.

Uses ``torchvision.models.get_model`` (torchvision's model registry), then replaces the ImageNet classifier
with a fresh linear layer for the dataset's classes, as torchvision's fine-tuning tutorial does.
"""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

logger = logging.getLogger(__name__)

#: ``--weights`` values that are not a path.
WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded or read."""


def available_archs() -> list[str]:
    """Names of torchvision's classification models, e.g. ``["alexnet", ..., "resnet50", ...]``."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    """Swap the last linear layer of a torchvision classifier for one with ``num_classes`` outputs.

    Covers the families' conventions: ``fc`` (ResNet, RegNet, Inception, GoogLeNet, ShuffleNet), ``head``
    (Swin, ViT's ``heads.head``), ``classifier`` (a Linear, or a Sequential ending in one: EfficientNet,
    MobileNet, ConvNeXt, DenseNet, VGG).

    Raises:
        ValueError: no final ``nn.Linear`` was found.
    """
    for name in ("fc", "head", "heads", "classifier"):
        parent = getattr(model, name, None)
        if isinstance(parent, nn.Linear):
            setattr(model, name, nn.Linear(parent.in_features, num_classes))
            return
        if isinstance(parent, nn.Sequential):
            for idx in reversed(range(len(parent))):
                if isinstance(parent[idx], nn.Linear):
                    parent[idx] = nn.Linear(parent[idx].in_features, num_classes)
                    return
    raise ValueError(f"don't know how to replace the classifier of {type(model).__name__}")


def build_model(arch: str, num_classes: int, weights: str = WEIGHTS_NONE) -> nn.Module:
    """Make ``arch`` with a ``num_classes``-way classifier, optionally starting from pretrained weights.

    Args:
        arch: a torchvision classification model name, e.g. ``"resnet50"``.
        num_classes: number of output logits; the model maps ``(N, 3, H, W)`` float32 to ``(N, num_classes)``.
        weights: ``"imagenet"`` for torchvision's default ImageNet weights (downloaded once to the torch hub
            cache, ``$TORCH_HOME/hub/checkpoints``), ``"none"`` for random initialisation, or a path to a
            local state dict of the same architecture (its classifier is dropped when its shape differs).

    Raises:
        ValueError: unknown ``arch`` or ``num_classes < 1``.
        WeightsUnavailableError: ImageNet weights can't be downloaded, or the local file can't be read.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if arch not in available_archs():
        raise ValueError(f"unknown arch {arch!r}; choose one of torchvision's classification models, e.g. resnet50")

    if weights == WEIGHTS_IMAGENET:
        model_weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = torchvision.models.get_model(arch, weights=model_weights)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise WeightsUnavailableError(
                f"could not download the ImageNet weights for {arch} ({model_weights.url}): {exc}. "
                "Without a network, train from scratch with '--weights none', or download the file elsewhere "
                "and pass it with '--weights PATH' (or place it in $TORCH_HOME/hub/checkpoints)."
            ) from exc
        logger.info("loaded ImageNet weights %s for %s", model_weights, arch)
        _replace_classifier(model, num_classes)
        return model

    model = torchvision.models.get_model(arch, weights=None)
    if weights == WEIGHTS_NONE:
        _replace_classifier(model, num_classes)
        return model

    path = Path(weights)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise WeightsUnavailableError(f"could not read weights from {path}: {exc}") from exc
    if isinstance(state_dict, dict) and "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]  # one of our own checkpoints
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    _replace_classifier(model, num_classes)
    own = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    for key in mismatched:
        del state_dict[key]
    result = model.load_state_dict(state_dict, strict=False)
    if result.unexpected_keys or [k for k in result.missing_keys if k not in mismatched]:
        raise WeightsUnavailableError(
            f"{path} is not a {arch} state dict: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    logger.info("loaded %s; re-initialised %d classifier tensors: %s", path, len(mismatched), mismatched)
    return model
