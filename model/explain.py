"""Where the model looked: a Grad-CAM heat map of one image's prediction, and that map blended over the image.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
ICCV 2017) explains class ``c`` of a convolutional network from one of its layers: with that layer's activations
``A`` (``K`` channels of ``h x w``) and the gradient of the class's logit ``y_c`` with respect to them, each channel
is weighted by its mean gradient, ``alpha_k = mean_ij dy_c / dA_k[i, j]``, and the map is the positive part of
``sum_k alpha_k A_k``, upsampled to the input size and scaled to [0, 1]. The computation is the ``GradCAM`` class of
the pytorch-grad-cam library (Jacob Gildenblat and contributors, PyPI ``grad-cam``, MIT licence); this module
chooses the layer (:func:`target_layer`), runs it safely beside serving (:func:`explain`) and draws the result
(:class:`Explanation`).

It always runs on the torch network (``predictor.model``), in float32 without autocast, whatever backend serves
the predictions (an OpenVINO predictor keeps its torch network too). The default class is the top class of those
float32 logits; where a bf16 or int8 prediction was shown, pass its class to explain exactly that one (on a near
tie the two can differ).

Beside serving: pytorch-grad-cam registers forward hooks on the layer it explains, and those would fire on every
other forward pass through the same module while they are there (the micro-batcher's thread predicting for other
requests, another explanation), mixing other images' activations into this one. So each explanation runs on a
private copy of the network's module tree (:func:`_grad_twin`) that shares every weight's storage (nothing is
copied but the Python objects, about 8 ms for EfficientNet-Lite0), carries none of the network's hooks, and whose
parameters do not require gradients; gradients start at the explained layer's input (a forward pre-hook of the
copy), so autograd records and back-propagates only the few layers from there to the logits. The predictor's
network, its parameters' ``requires_grad`` and ``grad``, and its hooks are never touched, and a prediction after an
explanation gives exactly the same logits.

Cost: one forward pass at the network's input size, a backward pass through the last layers, the PNG encoding.
For the shipped EfficientNet-Lite0 (192 px) and a 640 x 480 photo on the project's 2-core machine (2 torch threads,
nothing else running): 37 ms per explanation with its PNG, torch or OpenVINO predictor alike (the copy 8 ms, Grad-CAM
28 ms of which the float32 forward pass 14-16 ms, the PNG 3 ms), where a torch fp32 prediction takes 19-24 ms.
pytorch-grad-cam imports OpenCV, matplotlib, scikit-learn and SciPy (about 1.3 s on the project's 2-core machine), so
it is imported at the first explanation, not with this module.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import io
import logging
import numbers
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from model.predictor import Predictor
from model.transforms import Preprocessing

logger = logging.getLogger(__name__)

#: zlib level of the overlay's PNG: for the default model's 192 x 192 overlay of a clownfish photo, level 1 takes
#: 3 ms and 64 kB, Pillow's default (6) 13 ms and 58 kB, with ``optimize`` 15 ms and 56 kB.
PNG_COMPRESS_LEVEL = 1
#: Weight of the image in the overlay (pytorch-grad-cam's ``show_cam_on_image``): 0.5 shows the heat map's colours
#: and the fish equally.
IMAGE_WEIGHT = 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class Explanation:
    """Where the network looked for one class in one image (Grad-CAM, see the module's docstring).

    Attributes:
        class_index: the class explained, an index into ``predictor.class_names``.
        label: its class name.
        layer: the name of the explained layer in ``predictor.model`` (e.g. ``"bn2"``), see :func:`target_layer`.
        heatmap: float32 ``(S, S)`` in [0, 1] at the network's input size ``S``: where in the image as the network
            saw it (after the resize and centre crop) the evidence for the class lies, 1 at the strongest; a coarse
            map (one cell per 32 px for the default model) upsampled bilinearly; all zeros where no region raised
            the class's logit. Read-only.
        overlay: uint8 ``(S, S, 3)`` RGB: ``heatmap`` in the jet colour map blended over that image. Read-only.
    """

    class_index: int
    label: str
    layer: str
    heatmap: np.ndarray
    overlay: np.ndarray

    @functools.cached_property
    def png_data_url(self) -> str:
        """``overlay`` as a PNG data URL (``"data:image/png;base64,..."``), ``S x S`` pixels, for an ``<img src>``;
        encoded on first use (Pillow, fast compression: :data:`PNG_COMPRESS_LEVEL`, no optimisation pass), then
        kept."""
        buffer = io.BytesIO()
        Image.fromarray(self.overlay, "RGB").save(
            buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL
        )
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def target_layer(model: nn.Module) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: the last one that still has the image's layout (``(N, K, h,
    w)``), chosen from the architecture.

    - torchvision's and timm's ResNets (ResNeXt, Wide ResNet...), which have ``layer4``: its last block,
      ``layer4[-1]`` (the usual choice, as in the Grad-CAM paper's ResNet examples).
    - timm's EfficientNet family (EfficientNet, EfficientNet-Lite, MixNet, MNASNet...), whose head is ``conv_head``
      (a 1 x 1 convolution) then ``bn2`` (batch norm and activation) then the global pooling: ``bn2``, the rectified
      feature maps that the pooling averages (Grad-CAM's ``A``; with a linear classifier the map is then the class
      activation map of Zhou et al., CVPR 2016), stride 32: 6 x 6 for the default 192 px model. On 12 clownfish
      photos and the shipped EfficientNet-Lite0 it stayed on the fish where the maps of ``blocks[-1]`` and
      ``conv_head`` (which are nearly the same) lit the water above it on two photos.
    - timm's networks with ``blocks`` and a ``conv_head`` without ``bn2`` (MobileNetV3, whose ``conv_head`` comes
      after the global pooling): the last stage, ``blocks[-1]``.
    - torchvision's ``features`` networks (EfficientNet, MobileNet, ConvNeXt, VGG...): ``features[-1]``.
    - Anything else: the last ``nn.Conv2d`` in module registration order, which is usually, but not always, the last
      one the forward pass runs.

    Args:
        model: a classification network, e.g. ``predictor.model`` (a kept ImageNet head, ``pretrained_head``, is a
            linear layer and changes nothing).

    Raises:
        ValueError: the network has no ``nn.Conv2d`` (e.g. only linear layers), so no layer has an image layout.
    """
    layer4, blocks, features = (getattr(model, name, None) for name in ("layer4", "blocks", "features"))
    if isinstance(layer4, nn.Sequential) and len(layer4):
        return layer4[-1]
    if isinstance(blocks, nn.Sequential) and len(blocks) and isinstance(getattr(model, "conv_head", None), nn.Module):
        head_norm = getattr(model, "bn2", None)
        return head_norm if isinstance(head_norm, nn.Module) else blocks[-1]
    if isinstance(features, nn.Sequential) and len(features):
        return features[-1]
    convolutions = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer: Grad-CAM needs a convolutional network")
    return convolutions[-1]


def explain(predictor: Predictor, image: Image.Image, class_index: int | None = None) -> Explanation:
    """Grad-CAM of ``image`` for one class, on the predictor's torch network (see the module's docstring).

    Safe to call from several threads at once and while the predictor serves predictions: nothing of the predictor
    changes.

    Args:
        predictor: the predictor whose network is explained (any backend; ``predictor.model`` runs, in float32).
        image: a decoded image of any Pillow mode and size (converted to RGB and preprocessed by
            ``predictor.preprocess``, as for a prediction).
        class_index: the class to explain, an index into ``predictor.class_names``; None: the top class of the
            network's float32 logits.

    Returns:
        The :class:`Explanation`, at the network's input size.

    Raises:
        TypeError: ``image`` is not a Pillow image, or ``class_index`` is not an integer.
        ValueError: ``class_index`` is outside ``[0, C)``, or the network has no convolution (:func:`target_layer`).
        ModuleNotFoundError: the grad-cam package is not installed.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    if class_index is not None:
        class_index = _checked_class_index(class_index, len(predictor.class_names))
    model = predictor.model
    layer_name = _module_name(model, target_layer(model))
    start = time.perf_counter()
    # inference_mode(False): a caller's inference mode would make the input an inference tensor, which autograd
    # refuses; the gradients are needed from the explained layer on, so they are enabled here and only here
    with torch.inference_mode(False), torch.enable_grad():
        batch = predictor.preprocess([image]).to(predictor.device, torch.float32)
        heatmap, class_index = _grad_cam(model, layer_name, batch, class_index)
    _, show_cam_on_image = _library()
    overlay = show_cam_on_image(
        seen_image(batch[0], predictor.preprocessing), heatmap, use_rgb=True, image_weight=IMAGE_WEIGHT
    )
    logger.debug(
        "Grad-CAM of %s at %s, %d px: %.1f ms",
        predictor.class_names[class_index],
        layer_name,
        heatmap.shape[0],
        (time.perf_counter() - start) * 1e3,
    )
    return Explanation(
        class_index=class_index,
        label=predictor.class_names[class_index],
        layer=layer_name,
        heatmap=_read_only(heatmap),
        overlay=_read_only(np.ascontiguousarray(overlay, dtype=np.uint8)),
    )


def seen_image(tensor: torch.Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """The image as the network saw it: one preprocessed input with its normalisation undone.

    Args:
        tensor: float32 ``(3, S, S)``, one image of ``predictor.preprocess``'s batch (normalised with
            ``preprocessing.mean`` and ``std``).
        preprocessing: the predictor's preprocessing.

    Returns:
        float32 ``(S, S, 3)`` RGB in [0, 1] (NumPy, on the CPU).
    """
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(3, 1, 1)
    rgb = (tensor.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
    return np.ascontiguousarray(rgb.permute(1, 2, 0).numpy(), dtype=np.float32)


def _checked_class_index(class_index: Any, num_classes: int) -> int:
    """``class_index`` as an int after checking that it names one of ``num_classes`` classes.

    Raises:
        TypeError: not an integer (a bool is not one either).
        ValueError: outside ``[0, num_classes)`` (negative indices are refused, not counted from the end).
    """
    if isinstance(class_index, bool) or not isinstance(class_index, numbers.Integral):
        raise TypeError(f"class_index must be an int, got {type(class_index).__name__}")
    if not 0 <= class_index < num_classes:
        raise ValueError(f"class_index must be in [0, {num_classes}) for this model's classes, got {class_index}")
    return int(class_index)


def _module_name(model: nn.Module, layer: nn.Module) -> str:
    """The qualified name of ``layer`` in ``model`` (``model.get_submodule`` finds it again)."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"{type(layer).__name__} is not a module of {type(model).__name__}")


class _ClassLogit:
    """A pytorch-grad-cam target: the logit of ``index`` in one image's float ``(C,)`` logits; with ``index`` None,
    that of the top class, which it records in ``index``."""

    def __init__(self, index: int | None) -> None:
        self.index = index

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            self.index = int(logits.argmax())
        return logits[self.index]


def _grad_cam(
    model: nn.Module, layer_name: str, batch: torch.Tensor, class_index: int | None
) -> tuple[np.ndarray, int]:
    """Run pytorch-grad-cam's ``GradCAM`` on a private copy of ``model`` (:func:`_grad_twin`) at ``layer_name``.

    Call with gradients enabled. ``batch`` is float32 ``(1, 3, S, S)`` on the network's device.

    Returns:
        The heat map, float32 ``(S, S)`` in [0, 1], and the class explained (``class_index``, or the top class).

    Raises:
        RuntimeError: pytorch-grad-cam gave no map (its context manager swallows an ``IndexError`` after printing
            it).
    """
    grad_cam, _ = _library()
    twin = _grad_twin(model)
    layer = twin.get_submodule(layer_name)
    layer.register_forward_pre_hook(_gradients_from_here)
    target = _ClassLogit(class_index)
    maps = None
    with grad_cam(model=twin, target_layers=[layer]) as cam:
        maps = cam(input_tensor=batch, targets=[target])
    if maps is None or target.index is None:
        raise RuntimeError(f"pytorch-grad-cam gave no heat map for layer {layer_name!r} (see its message above)")
    heatmap = np.clip(np.asarray(maps[0], dtype=np.float32), 0.0, 1.0)
    return heatmap, target.index


def _gradients_from_here(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook of the explained layer in the copy: its floating-point inputs become leaves that require
    gradients, so autograd records the forward pass from this layer on, and the backward pass stops here."""
    return tuple(
        a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    )


#: Names of the hook dictionaries every ``nn.Module`` holds (``_forward_hooks``, ``_forward_pre_hooks``,
#: ``_backward_hooks``, ``_state_dict_hooks``...), read from a fresh module so that they follow torch's version.
_HOOK_DICTS = frozenset(name for name, value in vars(nn.Module()).items() if "hook" in name and isinstance(value, dict))


def _grad_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree for one explanation: the same layers, sharing every parameter's and
    buffer's storage (no weight is copied), with none of ``model``'s hooks (e.g. the feature capture of
    :class:`model.open_set.OpenSetNetwork`), and with parameters that do not require gradients. Hooks registered on
    the copy never see another thread's forward pass, and gradients never reach ``model``'s parameters."""
    memo: dict[int, Any] = {id(buffer): buffer for buffer in model.buffers()}
    for parameter in model.parameters():
        memo[id(parameter)] = nn.Parameter(parameter.detach(), requires_grad=False)
    for module in model.modules():
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, None)
            if isinstance(hooks, dict):
                memo[id(hooks)] = type(hooks)()
    return copy.deepcopy(model, memo)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@functools.cache
def _library() -> tuple[Callable[..., Any], Callable[..., np.ndarray]]:
    """pytorch-grad-cam's ``GradCAM`` class and ``show_cam_on_image``, imported on first use (see the module's
    docstring).

    Raises:
        ModuleNotFoundError: the grad-cam package is not installed.
    """
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import show_cam_on_image
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"explanations need the grad-cam package (requirements.txt: pip install grad-cam): {exc}"
        ) from exc
    return GradCAM, show_cam_on_image
