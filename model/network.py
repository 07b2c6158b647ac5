"""Build a classification network from a name: the one place a model is made.

Uses ``torchvision.models.get_model`` (torchvision's model registry), then replaces the ImageNet classifier
with a fresh linear layer for the dataset's classes, as torchvision's fine-tuning tutorial does.
"""

from __future__ import annotations

import logging
import urllib.error
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


#: ``--head`` choices: the classifier put on the backbone's pooled features.
HEADS: tuple[str, ...] = ("linear", "mlp")


class MLPHead(nn.Sequential):
    """``Linear -> ReLU -> Dropout`` for each hidden width, then a ``Linear`` to the logits.

    Maps features ``(N, in_features)`` to logits ``(N, num_classes)``. The default widths (256, 128, 64) and
    dropout 0.2 are those of the flower classifier this product grew from (an MLP on a frozen ResNet-50).
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 128, 64), dropout: float = 0.2
    ):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def _make_head(in_features: int, num_classes: int, head: dict[str, Any] | None) -> nn.Module:
    """The module for a head spec ``{"type": "linear"}`` or ``{"type": "mlp", "hidden": [...], "dropout": p}``.

    Raises:
        ValueError: unknown head type.
    """
    kind = (head or {}).get("type", "linear")
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "mlp":
        return MLPHead(in_features, num_classes, head.get("hidden", (256, 128, 64)), float(head.get("dropout", 0.2)))
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")


def _classifier_slot(model: nn.Module) -> tuple[str, nn.Module, str | int]:
    """Locate the classifier: ``(qualified name, parent module, key in parent)``.

    Covers the families' conventions: ``fc`` (ResNet, RegNet, Inception, GoogLeNet, ShuffleNet), ``head``
    (Swin, ViT's ``heads.head``), ``classifier`` (a Linear, or a Sequential ending in one: EfficientNet,
    MobileNet, ConvNeXt, DenseNet, VGG).

    Raises:
        ValueError: no final ``nn.Linear`` (or :class:`MLPHead`) was found.
    """
    for name in ("fc", "head", "heads", "classifier"):
        child = getattr(model, name, None)
        if isinstance(child, (nn.Linear, MLPHead)):
            return name, model, name
        if isinstance(child, nn.Sequential):
            for idx in reversed(range(len(child))):
                if isinstance(child[idx], (nn.Linear, MLPHead)):
                    key = list(child._modules)[idx]
                    return f"{name}.{key}", child, idx
    raise ValueError(f"don't know how to replace the classifier of {type(model).__name__}")


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the classifier module, e.g. ``"fc"`` for a ResNet; the rest is the backbone."""
    return _classifier_slot(getattr(model, "module", model))[0]


def _replace_classifier(model: nn.Module, num_classes: int, head: dict[str, Any] | None = None) -> None:
    """Swap the classifier of a torchvision model for ``head`` with ``num_classes`` outputs (default: linear)."""
    _, parent, key = _classifier_slot(model)
    old = parent[key] if isinstance(key, int) else getattr(parent, key)
    in_features = old.in_features if isinstance(old, nn.Linear) else old[0].in_features
    new = _make_head(in_features, num_classes, head)
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)


def build_model(
    arch: str, num_classes: int, weights: str = WEIGHTS_NONE, head: dict[str, Any] | None = None
) -> nn.Module:
    """Make ``arch`` with a ``num_classes``-way classifier, optionally starting from pretrained weights.

    Args:
        arch: a torchvision classification model name, e.g. ``"resnet50"``.
        num_classes: number of output logits; the model maps ``(N, 3, H, W)`` float32 to ``(N, num_classes)``.
        weights: ``"imagenet"`` for torchvision's default ImageNet weights (downloaded once to the torch hub
            cache, ``$TORCH_HOME/hub/checkpoints``), ``"none"`` for random initialisation, or a path to a
            local state dict of the same architecture (its classifier is dropped when its shape differs).
        head: ``{"type": "linear"}`` (default) or ``{"type": "mlp", "hidden": [256, 128, 64], "dropout": 0.2}``
            (:class:`MLPHead`); checkpoints record it as ``"head"``.

    Raises:
        ValueError: unknown ``arch`` or head, or ``num_classes < 1``.
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
        _replace_classifier(model, num_classes, head)
        return model

    model = torchvision.models.get_model(arch, weights=None)
    if weights == WEIGHTS_NONE:
        _replace_classifier(model, num_classes, head)
        return model

    path = Path(weights)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise WeightsUnavailableError(f"could not read weights from {path}: {exc}") from exc
    if isinstance(state_dict, dict) and "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]  # one of our own checkpoints
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    _replace_classifier(model, num_classes, head)
    own = model.state_dict()
    prefix = classifier_name(model) + "."
    mismatched = [
        k
        for k, v in state_dict.items()
        if (k in own and own[k].shape != v.shape) or (k.startswith(prefix) and k not in own)
    ]
    for key in mismatched:
        del state_dict[key]
    result = model.load_state_dict(state_dict, strict=False)
    if result.unexpected_keys or [k for k in result.missing_keys if k not in mismatched and not k.startswith(prefix)]:
        raise WeightsUnavailableError(
            f"{path} is not a {arch} state dict: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    logger.info("loaded %s; re-initialised %d classifier tensors: %s", path, len(mismatched), mismatched)
    return model
