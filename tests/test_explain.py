"""Grad-CAM explanations (model/explain.py): the heat map and its PNG, the class explained, errors, and a predictor
left exactly as it was (same logits, no hooks, no gradients), alone and beside concurrent predictions.

The tiny trained network (timm's test_resnet) sees 32 px, where its last block is one cell: its heat maps are all
zeros. Where a map must follow the image, the tests use the same network at 64 px (a 2 x 2 map: different images
give different maps, but the tiny network's random backbone puts its heat where it likes), and a hand-made network
of colour detectors whose Grad-CAM is known: the pixels of the explained class's colour.
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from model.checkpoint import load_checkpoint, model_from_checkpoint
from model.explain import Explanation, explain, seen_image, target_layer
from model.network import build_model
from model.predictor import Predictor
from model.transforms import Preprocessing
from tests.helpers import COLOURS, TINY_IMAGE_SIZE, synthetic_image

CLASS_NAMES = sorted(COLOURS)
GREY = (128, 128, 128)


def halves(left: tuple[int, int, int], right: tuple[int, int, int], side: int = 64, seed: int = 0) -> Image.Image:
    """A ``side`` x ``side`` RGB image: ``left`` on the left half, ``right`` on the right half (with mild noise)."""
    pixels = np.array(synthetic_image(left, (side, side), seed))
    pixels[:, side // 2 :] = np.array(synthetic_image(right, (side, side), seed + 1))[:, side // 2 :]
    return Image.fromarray(pixels)


def left_right_heat(explanation: Explanation) -> tuple[float, float]:
    """Mean heat of the left and right halves of the map."""
    heat = explanation.heatmap
    return float(heat[:, : heat.shape[1] // 2].mean()), float(heat[:, heat.shape[1] // 2 :].mean())


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def predictor_64(tiny_checkpoint: Path) -> Predictor:
    """The tiny network at 64 px: its last block gives a 2 x 2 map."""
    ckpt = load_checkpoint(tiny_checkpoint)
    return Predictor(model_from_checkpoint(ckpt), ckpt.class_names, Preprocessing.for_image_size(64))


class ColourNet(nn.Module):
    """Three colour detectors (a 1 x 1 convolution of the normalised RGB, ReLU), pooled, and a linear classifier
    that gives class ``i`` the mean of detector ``i``: Grad-CAM of class ``i`` is detector ``i``'s map."""

    def __init__(self, colours: list[tuple[int, int, int]]) -> None:
        super().__init__()
        preprocessing = Preprocessing.for_image_size(32)
        mean, std = torch.tensor(preprocessing.mean), torch.tensor(preprocessing.std)
        conv = nn.Conv2d(3, len(colours), 1)
        with torch.no_grad():
            for i, colour in enumerate(colours):  # responds to pixels near the colour: w . (x - colour)
                direction = (torch.tensor(colour) / 255.0 - mean) / std
                conv.weight[i] = (direction / direction.norm()).view(3, 1, 1)
                conv.bias[i] = -float(direction.norm()) * 0.5
        self.features = nn.Sequential(conv, nn.ReLU())
        self.fc = nn.Linear(len(colours), len(colours))
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(len(colours)))
            self.fc.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def colour_predictor() -> Predictor:
    return Predictor(ColourNet([COLOURS[n] for n in CLASS_NAMES]), CLASS_NAMES, Preprocessing.for_image_size(64))


def test_heat_map_at_the_input_size(predictor: Predictor) -> None:
    explanation = explain(predictor, synthetic_image(COLOURS["clownfish"], (40, 32)))

    size = TINY_IMAGE_SIZE
    assert explanation.layer == "layer4.0"  # the last block of the tiny ResNet's layer4 (one block a stage)
    assert explanation.heatmap.shape == (size, size) and explanation.heatmap.dtype == np.float32
    assert 0.0 <= explanation.heatmap.min() <= explanation.heatmap.max() <= 1.0
    assert explanation.overlay.shape == (size, size, 3) and explanation.overlay.dtype == np.uint8
    assert not explanation.heatmap.flags.writeable and not explanation.overlay.flags.writeable


def test_png_data_url_decodes_to_the_overlay(predictor_64: Predictor) -> None:
    explanation = explain(predictor_64, synthetic_image(COLOURS["blue_tang"], (80, 60)))

    prefix = "data:image/png;base64,"
    assert explanation.png_data_url.startswith(prefix)
    png = Image.open(io.BytesIO(base64.b64decode(explanation.png_data_url.removeprefix(prefix), validate=True)))
    assert png.format == "PNG" and png.size == (64, 64) and png.mode == "RGB"
    assert np.array_equal(np.asarray(png), explanation.overlay)


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_explains_the_top_class_by_default(predictor: Predictor, name: str) -> None:
    image = synthetic_image(COLOURS[name], seed=3)
    explanation = explain(predictor, image)

    assert explanation.label == name == predictor.predict([image])[0].label
    assert explanation.class_index == CLASS_NAMES.index(name)


def test_explains_the_class_given(predictor_64: Predictor) -> None:
    image = synthetic_image(COLOURS["clownfish"], (64, 64))
    top = explain(predictor_64, image).class_index

    for other in sorted(set(range(len(CLASS_NAMES))) - {top}):
        explanation = explain(predictor_64, image, np.int64(other))
        assert explanation.class_index == other and explanation.label == CLASS_NAMES[other]


@pytest.mark.parametrize("class_index", [-1, 3, 1000])
def test_class_index_out_of_range(predictor: Predictor, class_index: int) -> None:
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 3\)"):
        explain(predictor, synthetic_image(COLOURS["clownfish"]), class_index)


@pytest.mark.parametrize("class_index", ["1", 1.0, True])
def test_class_index_not_an_int(predictor: Predictor, class_index: object) -> None:
    with pytest.raises(TypeError, match="class_index must be an int"):
        explain(predictor, synthetic_image(COLOURS["clownfish"]), class_index)  # type: ignore[arg-type]


def test_image_not_a_pillow_image(predictor: Predictor) -> None:
    with pytest.raises(TypeError, match="PIL.Image.Image"):
        explain(predictor, np.zeros((32, 32, 3), np.uint8))  # type: ignore[arg-type]


def _hooks(model: nn.Module) -> list[int]:
    """How many hooks of each kind each module holds."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return [len(getattr(module, kind)) for module in model.modules() for kind in kinds]


def test_predictor_unchanged(predictor_64: Predictor) -> None:
    model, image = predictor_64.model, halves(GREY, COLOURS["clownfish"])
    batch = predictor_64.preprocess([image])
    logits, hooks = predictor_64.logits(batch), _hooks(model)
    requires_grad = [p.requires_grad for p in model.parameters()]

    explain(predictor_64, image)
    explain(predictor_64, image, 0)

    assert torch.equal(predictor_64.logits(batch), logits)
    layer = target_layer(model)
    assert not layer._forward_hooks and not layer._forward_pre_hooks
    assert not layer._backward_hooks and not layer._backward_pre_hooks
    assert _hooks(model) == hooks  # the predictor's own feature capture stays, nothing is added
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_works_where_gradients_are_off(predictor_64: Predictor, mode) -> None:
    image = halves(GREY, COLOURS["clownfish"])
    expected = explain(predictor_64, image).heatmap

    with mode():
        explanation = explain(predictor_64, image)
        assert not torch.is_grad_enabled()  # and the caller's mode is back
    np.testing.assert_allclose(explanation.heatmap, expected, atol=1e-6)


def test_heat_map_depends_on_the_image(predictor_64: Predictor) -> None:
    """The tiny network's maps: different for an image and its mirror image (the tiny network's random backbone
    puts the heat where it likes, so no more is asserted of where)."""
    clownfish = CLASS_NAMES.index("clownfish")
    image = halves(GREY, COLOURS["clownfish"])
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    heat, heat_mirrored = (explain(predictor_64, im, clownfish).heatmap for im in (image, mirrored))

    assert heat.max() > 0.5
    assert np.abs(heat - heat_mirrored).max() > 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_heat_on_the_explained_class_colour(colour_predictor: Predictor, seed: int) -> None:
    """The colour detectors' Grad-CAM: the half of the explained class's colour is hot (about 0.7 on average, the
    noise of the pixels making the rest), the other half cold (0 to 0.001)."""
    clownfish, blue_tang = CLASS_NAMES.index("clownfish"), CLASS_NAMES.index("blue_tang")
    orange_grey = halves(COLOURS["clownfish"], GREY, seed=seed)
    orange_blue = halves(COLOURS["clownfish"], COLOURS["blue_tang"], seed=seed)
    cases = [
        (orange_grey, None, "left"),  # the top class: clownfish
        (orange_grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), None, "right"),
        (orange_blue, clownfish, "left"),
        (orange_blue, blue_tang, "right"),
    ]
    for image, class_index, hot in cases:
        explanation = explain(colour_predictor, image, class_index)
        left, right = left_right_heat(explanation)
        assert explanation.class_index == (clownfish if class_index is None else class_index)
        hot_heat, cold_heat = (left, right) if hot == "left" else (right, left)
        assert hot_heat > 0.5 and cold_heat < 0.05, (hot, left, right)


def test_seen_image_undoes_the_normalisation(predictor: Predictor) -> None:
    colour = COLOURS["green_chromis"]
    rgb = seen_image(predictor.preprocess([Image.new("RGB", (48, 40), colour)])[0], predictor.preprocessing)

    assert rgb.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb, np.broadcast_to(np.array(colour) / 255.0, rgb.shape), atol=1e-5)


def test_concurrent_explanations_and_predictions(predictor_64: Predictor) -> None:
    """Explanations in two threads while a third predicts: each map is the one a lone explanation gives."""
    images = [halves(GREY, COLOURS["clownfish"]), halves(COLOURS["blue_tang"], COLOURS["clownfish"], seed=5)]
    expected = [explain(predictor_64, im).heatmap for im in images]
    batch = predictor_64.preprocess([synthetic_image(COLOURS["green_chromis"], (64, 64))] * 4)
    done, failures = threading.Event(), []

    def explain_repeatedly(i: int) -> None:
        for _ in range(8):
            if not np.allclose(explain(predictor_64, images[i]).heatmap, expected[i], atol=1e-5):
                failures.append(i)

    def predict_until_done() -> None:
        while not done.is_set():
            predictor_64.logits(batch)

    predicting = threading.Thread(target=predict_until_done)
    predicting.start()
    explaining = [threading.Thread(target=explain_repeatedly, args=(i,)) for i in range(len(images))]
    for thread in explaining:
        thread.start()
    for thread in explaining:
        thread.join()
    done.set()
    predicting.join()
    assert not failures


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("resnet18", "layer4.1"),
        ("tf_efficientnet_lite0", "bn2"),
        ("mobilenetv3_small_050", "blocks.5"),  # timm: conv_head after the pooling
        ("mobilenet_v3_small", "features.12"),  # torchvision
    ],
)
def test_target_layer_of_each_family(arch: str, layer: str) -> None:
    with torch.device("meta"):
        model = build_model(arch, num_classes=3)
    assert target_layer(model) is model.get_submodule(layer)


def test_target_layer_falls_back_to_the_last_convolution() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert target_layer(model) is model[2]
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        target_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))


@pytest.mark.slow  # converts the network for OpenVINO
def test_openvino_predictor_explains_on_its_torch_network(tiny_checkpoint: Path) -> None:
    pytest.importorskip("openvino")
    served = Predictor.from_checkpoint(tiny_checkpoint, backend="openvino")
    assert served.backend == "openvino"
    image = synthetic_image(COLOURS["green_chromis"], seed=4)

    explanation = explain(served, image)

    assert explanation.label == served.predict([image])[0].label == "green_chromis"
    expected = explain(Predictor.from_checkpoint(tiny_checkpoint, backend="torch"), image)
    np.testing.assert_array_equal(explanation.overlay, expected.overlay)
