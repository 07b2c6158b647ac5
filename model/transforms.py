"""Train and eval presets, driven by the preprocessing a checkpoint records.

The eval preset is the single source of truth for how an image becomes a tensor at validation, evaluation
and serving time: ``eval_transform(preprocessing)`` is what ``evaluate.py`` and the web app's predictor call,
with the ``Preprocessing`` stored in the checkpoint. Modelled on torchvision's
``references/classification/presets.py`` (resize to ``image_size / crop_pct``, centre crop) and timm's data
config (``input_size, interpolation, mean, std, crop_pct``). Training takes its ``Preprocessing`` from
:func:`model.network.default_preprocessing`: the pretrained weights' own (torchvision's ``weights.transforms()``,
timm's data config), or :meth:`Preprocessing.for_image_size` from scratch.

Training augmentation is chosen by name from :data:`AUGMENT_PRESETS` (``train_transform(p, augment=...)``):
``"none"`` (the eval pipeline, no randomness), ``"basic"`` (random resized crop, flip, colour jitter; the
default), ``"strong"`` (basic plus TrivialAugment and random erasing, as torchvision's reference recipe) and
``"morphology"`` (basic plus a random grey-level erosion, dilation, opening or closing, see
:class:`RandomMorphology`). Every preset maps an RGB ``PIL.Image`` to a float32 tensor of shape
``(3, image_size, image_size)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from model.choices import AUGMENT_PRESETS  # declared without torch for the parsers

#: ImageNet channel statistics (torchvision's ``weights.transforms()`` for every ImageNet classifier).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Ratio of crop to resized short side used by torchvision's ImageNet evaluation (224 / 256).
DEFAULT_CROP_PCT = 0.875
#: Operations :class:`RandomMorphology` draws from, as the Pillow rank filters applied in order.
MORPHOLOGY_OPS: dict[str, tuple[type[ImageFilter.RankFilter], ...]] = {
    "erosion": (ImageFilter.MinFilter,),
    "dilation": (ImageFilter.MaxFilter,),
    "opening": (ImageFilter.MinFilter, ImageFilter.MaxFilter),
    "closing": (ImageFilter.MaxFilter, ImageFilter.MinFilter),
}

#: Filters Pillow's affine warp (used by TrivialAugmentWide's rotate, shear, translate) accepts.
_AFFINE_INTERPOLATIONS = (InterpolationMode.NEAREST, InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)


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


class RandomZoomOut:
    """With probability ``p``, shrink a PIL image by a random factor and fill the rest of the same canvas by
    mirroring it (``numpy.pad`` with ``mode="reflect"``), the shrunk copy at a random place.

    A tight crop of one fish becomes a smaller fish in a wider scene, as in photographs taken from further away.
    The canvas keeps its size; ``scale`` is the range of the shrunk side over the original side.

    Raises:
        ValueError: ``p`` outside [0, 1] or ``scale`` not within (0, 1].
    """

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.35, 1.0)) -> None:
        if not 0.0 <= p <= 1.0 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"need 0 <= p <= 1 and 0 < scale[0] <= scale[1] <= 1, got p={p}, scale={scale}")
        self.p, self.scale = p, scale

    def __call__(self, image: Image.Image) -> Image.Image:
        if float(torch.rand(())) >= self.p:
            return image
        factor = float(torch.empty(()).uniform_(*self.scale))
        width, height = image.size
        small_w, small_h = max(1, round(width * factor)), max(1, round(height * factor))
        left = int(torch.randint(width - small_w + 1, ()))
        top = int(torch.randint(height - small_h + 1, ()))
        small = np.asarray(image.resize((small_w, small_h), Image.BILINEAR))
        pad = ((top, height - small_h - top), (left, width - small_w - left), (0, 0))
        while any(
            before > small.shape[i] - 1 or after > small.shape[i] - 1 for i, (before, after) in enumerate(pad[:2])
        ):
            # reflect padding needs pad < size: mirror in steps
            step = tuple(
                (min(b, small.shape[i] - 1), min(a, small.shape[i] - 1)) if i < 2 else (0, 0)
                for i, (b, a) in enumerate(pad)
            )
            small = np.pad(small, step, mode="reflect")
            pad = tuple((b - s[0], a - s[1]) for (b, a), s in zip(pad, step, strict=True))
        return Image.fromarray(np.pad(small, pad, mode="reflect"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, scale={self.scale})"


class RandomMorphology:
    """With probability ``p``, apply a random grey-level morphological operation to a PIL image.

    The operations are those of mathematical morphology (Serra, *Image Analysis and Mathematical Morphology*,
    1982; Gonzalez & Woods, *Digital Image Processing*, ch. 9) with a flat square structuring element of side
    ``size``, each band filtered separately:

    - ``"erosion"``: minimum over the window (``ImageFilter.MinFilter``); bright regions shrink, dark grow.
    - ``"dilation"``: maximum over the window (``ImageFilter.MaxFilter``); bright regions grow, dark shrink.
    - ``"opening"``: erosion then dilation; removes bright details smaller than the window (specks, thin fins).
    - ``"closing"``: dilation then erosion; fills dark details smaller than the window (holes, thin gaps).

    The operation and the window side are drawn uniformly from ``ops`` and ``sizes``. The draws use torch's
    RNG (``torch.rand``, ``torch.randint``), so ``torch.manual_seed`` makes them reproducible and each DataLoader
    worker gets its own stream. Instances hold only plain values, so they pickle (DataLoader workers, spawn).

    Args:
        p: probability of applying an operation at all, in [0, 1].
        sizes: window sides to choose from, each odd and >= 3 (Pillow's rank filters need an odd side); the
            default ``(3,)`` is a 3 x 3 window, ``(3, 5)`` picks 3 x 3 or 5 x 5 with equal probability.
        ops: operation names to choose from, a non-empty subset of :data:`MORPHOLOGY_OPS`.

    Raises:
        ValueError: ``p`` out of range, an even or too small size, an unknown or empty list of operations.
    """

    def __init__(
        self,
        p: float = 0.5,
        sizes: Sequence[int] = (3,),
        ops: Sequence[str] = ("erosion", "dilation", "opening", "closing"),
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not sizes or any(int(k) != k or k < 3 or k % 2 == 0 for k in sizes):
            raise ValueError(f"sizes must be odd integers >= 3, got {tuple(sizes)}")
        unknown = [op for op in ops if op not in MORPHOLOGY_OPS]
        if not ops or unknown:
            raise ValueError(f"ops must be a non-empty subset of {tuple(MORPHOLOGY_OPS)}, got {tuple(ops)}")
        self.p = float(p)
        self.sizes: tuple[int, ...] = tuple(int(k) for k in sizes)
        self.ops: tuple[str, ...] = tuple(ops)

    def __call__(self, image: Image.Image) -> Image.Image:
        """Return ``image`` filtered by a randomly chosen operation (probability ``p``), else ``image`` itself.

        Raises:
            TypeError: ``image`` is not a ``PIL.Image.Image`` (put this transform before ``ToImage``).
        """
        if not isinstance(image, Image.Image):
            raise TypeError(f"RandomMorphology expects a PIL image, got {type(image).__name__}")
        if torch.rand(1).item() >= self.p:
            return image
        op = self.ops[int(torch.randint(len(self.ops), (1,)).item())]
        size = self.sizes[int(torch.randint(len(self.sizes), (1,)).item())]
        for rank_filter in MORPHOLOGY_OPS[op]:
            image = image.filter(rank_filter(size))
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, sizes={self.sizes}, ops={self.ops})"


def train_transform(p: Preprocessing, augment: str = "basic") -> T.Compose:
    """Training transform for the augmentation preset ``augment`` (one of :data:`AUGMENT_PRESETS`).

    - ``"none"``: no randomness, exactly :func:`eval_transform` (resize the short side, centre crop, normalise).
    - ``"basic"``: random resized crop (scale 0.35 to 1), horizontal flip, colour jitter (brightness, contrast
      and saturation 0.2), normalisation.
    - ``"strong"``: basic plus ``TrivialAugmentWide`` on the PIL image (Müller & Hutter, "TrivialAugment:
      Tuning-free Yet State-of-the-Art Data Augmentation", ICCV 2021) and ``RandomErasing(p=0.25)`` on the
      normalised tensor (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020, arXiv 2017), in the
      order of torchvision's ``references/classification/presets.py`` (``ClassificationPresetTrain``).
      TrivialAugment's geometric ops use ``p.interpolation`` when it is nearest, bilinear or bicubic, else
      bilinear (Pillow's affine warp supports no other filter).
    - ``"morphology"``: basic plus :class:`RandomMorphology` (``p=0.5``, 3 x 3 window, erosion, dilation,
      opening or closing) applied after the crop, so the window is measured in network-input pixels.
    - ``"photo"``: bridges video crops and photographs: random resized crop (scale 0.25 to 1), horizontal flip,
      stronger colour jitter (brightness, contrast, saturation 0.4, hue 0.05; p = 0.8), Gaussian blur
      (p = 0.3, sigma 0.1 to 2) or sharpening (p = 0.3), and JPEG re-compression at quality 30 to 95 (p = 0.5).
      Chosen on Fish4Knowledge with the real-photo check of ``clownfish_photos`` (EXPERIMENTS.md).
    - ``"scene"``: photo plus :class:`RandomZoomOut` (``p=0.5``, the crop shrunk to 35 to 100 % of its side inside
      a mirrored copy of itself), for subjects that photographs show small in a wide scene.

    Args:
        p: the preprocessing the checkpoint will record; its ``image_size`` is the crop size.
        augment: preset name; ``"basic"`` is the historical behaviour.

    Returns:
        A callable mapping an RGB ``PIL.Image`` to a float32 tensor of shape ``(3, image_size, image_size)``.

    Raises:
        ValueError: ``augment`` is not one of :data:`AUGMENT_PRESETS`.
    """
    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augment preset {augment!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
    if augment == "none":
        return eval_transform(p)
    interpolation = InterpolationMode(p.interpolation)
    if augment in ("photo", "scene"):
        return _photo_transform(p, interpolation, zoom_out=augment == "scene")
    pil_ops: list[Callable[[Any], Any]] = [
        T.RandomResizedCrop(p.image_size, scale=(0.35, 1.0), interpolation=interpolation, antialias=True),
        T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ]
    tensor_ops: list[Callable[[Any], Any]] = []
    if augment == "strong":
        warp = interpolation if interpolation in _AFFINE_INTERPOLATIONS else InterpolationMode.BILINEAR
        pil_ops.append(T.TrivialAugmentWide(interpolation=warp))
        tensor_ops.append(T.RandomErasing(p=0.25))
    elif augment == "morphology":
        pil_ops.append(RandomMorphology(p=0.5, sizes=(3,)))
    return T.Compose([*pil_ops, *_to_float_tensor(p), *tensor_ops])


def _photo_transform(p: Preprocessing, interpolation: InterpolationMode, *, zoom_out: bool) -> T.Compose:
    """The ``"photo"`` preset of :func:`train_transform`, or with ``zoom_out`` the ``"scene"`` one: random resized
    crop (scale 0.25 to 1) to ``p.image_size`` with ``interpolation``, :class:`RandomZoomOut` (``p=0.5``, scale
    0.35 to 1) when ``zoom_out``, flip, colour jitter, blur or sharpening, JPEG re-compression, normalisation.
    Maps an RGB ``PIL.Image`` to a float32 tensor ``(3, image_size, image_size)``."""
    return T.Compose(
        [
            T.RandomResizedCrop(p.image_size, scale=(0.25, 1.0), interpolation=interpolation, antialias=True),
            *([RandomZoomOut(p=0.5, scale=(0.35, 1.0))] if zoom_out else []),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05)], p=0.8),
            T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.3),
            T.RandomAdjustSharpness(3, p=0.3),
            T.RandomApply([T.JPEG((30, 95))], p=0.5),
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
