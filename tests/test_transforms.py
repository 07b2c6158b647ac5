"""Training augmentation presets (``train_transform(p, augment=...)``) and :class:`RandomMorphology`."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from model.transforms import (
    AUGMENT_PRESETS,
    MORPHOLOGY_OPS,
    Preprocessing,
    RandomMorphology,
    RandomZoomOut,
    eval_transform,
    train_transform,
)
from tests.helpers import COLOURS, synthetic_image

SIZE = 32
RANDOM_PRESETS = [name for name in AUGMENT_PRESETS if name != "none"]


@pytest.fixture
def prep() -> Preprocessing:
    return Preprocessing.for_image_size(SIZE)


@pytest.fixture
def fish() -> Image.Image:
    """A small noisy non-square RGB image with a bright square, so crops and filters visibly change it."""
    image = synthetic_image(COLOURS["clownfish"], size=(48, 40), seed=3)
    image.paste((250, 250, 250), (10, 8, 26, 24))
    return image


def white_pixels(image: Image.Image) -> int:
    return int((np.asarray(image.convert("L")) > 127).sum())


def square(side: int, canvas: int = 21) -> Image.Image:
    """A white ``side`` x ``side`` square centred on a black ``canvas`` x ``canvas`` RGB image."""
    image = Image.new("RGB", (canvas, canvas))
    lo = (canvas - side) // 2
    image.paste((255, 255, 255), (lo, lo, lo + side, lo + side))
    return image


def morph(op: str, size: int = 3) -> RandomMorphology:
    """A deterministic RandomMorphology: always ``op`` with a ``size`` x ``size`` window."""
    return RandomMorphology(p=1.0, sizes=(size,), ops=(op,))


def test_presets_are_the_documented_names() -> None:
    assert AUGMENT_PRESETS == ("none", "basic", "strong", "morphology", "photo", "scene")
    assert set(MORPHOLOGY_OPS) == {"erosion", "dilation", "opening", "closing"}


@pytest.mark.parametrize("augment", AUGMENT_PRESETS)
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos"])
def test_every_preset_gives_a_finite_float_tensor_of_the_crop_size(
    augment: str, interpolation: str, fish: Image.Image
) -> None:
    p = Preprocessing(image_size=SIZE, resize_size=37, interpolation=interpolation)
    transform = train_transform(p, augment)
    for seed in range(8):  # several draws, so TrivialAugment tries several of its ops
        torch.manual_seed(seed)
        x = transform(fish)
        assert isinstance(x, torch.Tensor)
        assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
        assert torch.isfinite(x).all()


def test_none_is_deterministic_and_is_the_eval_transform(prep: Preprocessing, fish: Image.Image) -> None:
    transform = train_transform(prep, "none")
    expected = eval_transform(prep)(fish)
    for seed in range(3):
        torch.manual_seed(seed)
        assert torch.equal(transform(fish), expected)
    assert repr(transform) == repr(eval_transform(prep))


def test_default_is_basic(prep: Preprocessing, fish: Image.Image) -> None:
    torch.manual_seed(0)
    default = train_transform(prep)(fish)
    torch.manual_seed(0)
    assert torch.equal(default, train_transform(prep, "basic")(fish))


@pytest.mark.parametrize("augment", RANDOM_PRESETS)
def test_random_presets_vary_between_calls_and_follow_the_seed(
    augment: str, prep: Preprocessing, fish: Image.Image
) -> None:
    transform = train_transform(prep, augment)
    torch.manual_seed(0)
    first, second = transform(fish), transform(fish)
    assert not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(transform(fish), first)


def test_strong_and_morphology_add_their_transforms_to_basic(prep: Preprocessing) -> None:
    def kinds(augment: str) -> list[type]:
        return [type(t) for t in train_transform(prep, augment).transforms]

    basic = kinds("basic")
    assert T.TrivialAugmentWide not in basic and T.RandomErasing not in basic and RandomMorphology not in basic
    strong = kinds("strong")
    assert strong.index(T.TrivialAugmentWide) < strong.index(T.ToImage) < strong.index(T.RandomErasing)
    assert strong.index(T.RandomErasing) == len(strong) - 1  # erases the normalised tensor, as torchvision does
    assert train_transform(prep, "strong").transforms[-1].p == 0.25
    morphology = kinds("morphology")
    assert morphology.index(T.RandomResizedCrop) < morphology.index(RandomMorphology) < morphology.index(T.ToImage)
    assert RandomMorphology not in strong and T.TrivialAugmentWide not in morphology
    # both keep every basic step
    for preset in (strong, morphology):
        assert [k for k in preset if k in basic] == basic


def test_unknown_preset_raises_with_the_choices(prep: Preprocessing) -> None:
    with pytest.raises(ValueError, match="none, basic, strong, morphology"):
        train_transform(prep, "heavy")
    with pytest.raises(ValueError):
        train_transform(prep, "Basic")


def test_erosion_shrinks_and_dilation_grows_a_bright_square() -> None:
    image = square(7)
    assert white_pixels(image) == 49
    assert white_pixels(morph("erosion")(image)) == 25  # 7 - 2
    assert white_pixels(morph("dilation")(image)) == 81  # 7 + 2
    assert white_pixels(morph("erosion", size=5)(image)) == 9  # 7 - 4
    assert white_pixels(morph("dilation", size=5)(image)) == 121  # 7 + 4


def test_opening_removes_an_isolated_bright_pixel_and_keeps_the_square() -> None:
    image = square(7)
    image.putpixel((1, 1), (255, 255, 255))
    opened = morph("opening")(image)
    assert opened.getpixel((1, 1)) == (0, 0, 0)
    assert white_pixels(opened) == 49
    # closing, by contrast, keeps the speck
    assert morph("closing")(image).getpixel((1, 1)) == (255, 255, 255)


def test_closing_fills_a_single_dark_hole_and_keeps_the_square() -> None:
    image = square(7)
    image.putpixel((10, 10), (0, 0, 0))
    assert white_pixels(image) == 48
    closed = morph("closing")(image)
    assert closed.getpixel((10, 10)) == (255, 255, 255)
    assert white_pixels(closed) == 49
    # opening, by contrast, keeps the hole
    assert morph("opening")(image).getpixel((10, 10)) == (0, 0, 0)


def test_morphology_filters_each_band_and_keeps_mode_and_size() -> None:
    image = Image.new("RGB", (9, 9))
    image.putpixel((4, 4), (200, 0, 0))
    dilated = morph("dilation")(image)
    assert dilated.mode == "RGB" and dilated.size == (9, 9)
    arr = np.asarray(dilated)
    assert (arr[3:6, 3:6, 0] == 200).all() and arr[..., 1:].max() == 0


def test_random_morphology_probability_and_choice() -> None:
    image = square(7)
    assert RandomMorphology(p=0.0)(image) is image
    torch.manual_seed(0)
    counts = {white_pixels(RandomMorphology(p=0.5, sizes=(3, 5))(image)) for _ in range(200)}
    # unchanged (49) plus erosion 3/5 (25, 9) and dilation 3/5 (81, 121); opening/closing keep a square (49)
    assert counts == {9, 25, 49, 81, 121}
    torch.manual_seed(1)
    applied = sum(RandomMorphology(p=0.5, ops=("dilation",))(image) is not image for _ in range(400))
    assert 140 < applied < 260


def test_random_morphology_is_reproducible_with_torch_seed() -> None:
    images = [synthetic_image((120, 120, 120), size=(12, 12), seed=s) for s in range(20)]
    transform = RandomMorphology(p=0.5, sizes=(3, 5))

    def run(seed: int) -> list[bytes]:
        torch.manual_seed(seed)
        return [transform(im).tobytes() for im in images]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_random_morphology_pickles_and_has_a_readable_repr(prep: Preprocessing, fish: Image.Image) -> None:
    transform = RandomMorphology(p=0.3, sizes=(3, 5), ops=("opening", "closing"))
    clone = pickle.loads(pickle.dumps(transform))
    assert isinstance(clone, RandomMorphology)
    assert (clone.p, clone.sizes, clone.ops) == (0.3, (3, 5), ("opening", "closing"))
    assert repr(clone) == "RandomMorphology(p=0.3, sizes=(3, 5), ops=('opening', 'closing'))"
    # the whole preset pickles too (DataLoader workers started with spawn)
    pipeline = pickle.loads(pickle.dumps(train_transform(prep, "morphology")))
    torch.manual_seed(0)
    assert pipeline(fish).shape == (3, SIZE, SIZE)
    assert "RandomMorphology(p=0.5, sizes=(3,)" in repr(train_transform(prep, "morphology"))


@pytest.mark.parametrize(
    "kwargs",
    [{"p": -0.1}, {"p": 1.5}, {"sizes": (4,)}, {"sizes": (1,)}, {"sizes": ()}, {"ops": ("blur",)}, {"ops": ()}],
)
def test_random_morphology_rejects_bad_options(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RandomMorphology(**kwargs)


def test_random_morphology_rejects_tensors() -> None:
    with pytest.raises(TypeError, match="PIL"):
        morph("erosion")(torch.zeros(3, 8, 8))


def test_zoom_out_shrinks_the_picture_into_a_mirrored_canvas_of_the_same_size() -> None:
    image = Image.new("RGB", (60, 40), (0, 0, 0))
    image.paste((255, 255, 255), (20, 10, 40, 30))  # a bright 20 x 20 square in the middle
    torch.manual_seed(0)
    zoomed = RandomZoomOut(p=1.0, scale=(0.5, 0.5))(image)
    assert zoomed.size == image.size and zoomed.mode == "RGB"
    bright = np.asarray(zoomed)[..., 0] > 127
    # the square is now about 10 x 10 and mirrored copies of it appear around the shrunk picture
    widths = [int(row.sum()) for row in bright if row.any()]
    assert bright.sum() >= 100 and max(widths) >= 9
    longest_run = max(len(run) for row in bright for run in "".join("1" if v else "0" for v in row).split("0"))
    assert 9 <= longest_run <= 12  # no longer 20 wide
    assert RandomZoomOut(p=0.0)(image) is image
    tiny = RandomZoomOut(p=1.0, scale=(0.05, 0.1))(Image.new("RGB", (50, 40)))  # reflection wider than the copy
    assert tiny.size == (50, 40)
    with pytest.raises(ValueError):
        RandomZoomOut(scale=(0.0, 1.0))
