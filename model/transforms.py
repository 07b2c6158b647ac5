"""Train and eval presets, driven by the preprocessing a checkpoint records.

The eval preset is the single source of truth for how an image becomes a tensor at validation, evaluation
and serving time: ``eval_transform(preprocessing)`` is what ``evaluate.py`` and the web app's predictor call,
with the ``Preprocessing`` stored in the checkpoint. Modelled on torchvision's
``references/classification/presets.py`` (resize to ``image_size / crop_pct``, centre crop) and timm's data
config (``input_size, interpolation, mean, std, crop_pct``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

#: ImageNet channel statistics (torchvision's ``weights.transforms()`` for every ImageNet classifier).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Ratio of crop to resized short side used by torchvision's ImageNet evaluation (224 / 256).
DEFAULT_CROP_PCT = 0.875


@dataclass(frozen=True)
class Preprocessing:
    """How an image is turned into the network's input; recorded in every checkpoint.

    Attributes:
        image_size: side of the square input crop, in pixels (the network sees ``3 x image_size x image_size``).
        resize_size: the shorter image side is resized to this many pixels before the centre crop (eval only).
        mean: per-channel mean subtracted after scaling pixels to [0, 1], RGB order.
        std: per-channel standard deviation divided by after subtracting ``mean``, RGB order.
        interpolation: resampling filter name, one of ``torchvision.transforms.InterpolationMode`` values
            (``"bilinear"``, ``"bicubic"``, ...).
    """

    image_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size ({self.resize_size}) must be >= image_size ({self.image_size})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 channels with std > 0, got mean={self.mean} std={self.std}")
        InterpolationMode(self.interpolation)  # raises ValueError on an unknown name

    @classmethod
    def for_image_size(cls, image_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> Preprocessing:
        """Preprocessing for a crop of ``image_size`` px with ImageNet statistics and ``crop_pct`` resize ratio."""
        return cls(image_size=image_size, resize_size=int(round(image_size / crop_pct)))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, ints, floats, str) safe for ``torch.load(weights_only=True)`` and JSON."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown keys are ignored so newer checkpoints still load.

        Raises:
            KeyError: ``image_size`` or ``resize_size`` is missing.
            ValueError: a value is out of range (see the class invariants).
        """
        return cls(
            image_size=int(d["image_size"]),
            resize_size=int(d["resize_size"]),
            mean=tuple(float(x) for x in d.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            interpolation=str(d.get("interpolation", "bilinear")),
        )


def _to_float_tensor(p: Preprocessing) -> list[Callable[[Any], Any]]:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean=list(p.mean), std=list(p.std))]


def train_transform(p: Preprocessing) -> T.Compose:
    """Training augmentation: random resized crop, horizontal flip, mild colour jitter, normalisation.

    Args:
        p: the preprocessing the checkpoint will record; its ``image_size`` is the crop size.

    Returns:
        A callable mapping an RGB ``PIL.Image`` to a float32 tensor of shape ``(3, image_size, image_size)``.
    """
    interpolation = InterpolationMode(p.interpolation)
    return T.Compose(
        [
            T.RandomResizedCrop(p.image_size, scale=(0.35, 1.0), interpolation=interpolation, antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            *_to_float_tensor(p),
        ]
    )


def eval_transform(p: Preprocessing) -> T.Compose:
    """Deterministic evaluation and serving transform: resize the short side, centre crop, normalise.

    Args:
        p: the preprocessing recorded in the checkpoint.

    Returns:
        A callable mapping an RGB ``PIL.Image`` to a float32 tensor of shape ``(3, image_size, image_size)``.
    """
    interpolation = InterpolationMode(p.interpolation)
    return T.Compose(
        [
            T.Resize(p.resize_size, interpolation=interpolation, antialias=True),
            T.CenterCrop(p.image_size),
            *_to_float_tensor(p),
        ]
    )


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto ``background``.

    Grayscale, palette, 16-bit, CMYK and RGBA images all become 8-bit RGB, so training and serving see the
    same kind of input.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit integer grayscale: scale to 8 bits rather than clip.
        arr = np.asarray(image, dtype=np.float32)
        scale = 255.0 / (65535.0 if arr.max(initial=0) > 255 else 255.0)
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
