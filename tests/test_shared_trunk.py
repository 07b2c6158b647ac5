"""The shared trunk of ``--frozen-stages`` (model/shared_trunk.py): the pretrained network's ImageNet logits,
exactly, from its kept tail on the fine-tuned network's trunk; the trunk and tail stay fixed while training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from model.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from model.network import _replace_classifier, build_model, library_model, pretrained_head
from model.open_set import OpenSetNetwork
from model.shared_trunk import PRETRAINED_TAIL, keep_pretrained_tail, pretrained_tail, trunk_names
from model.transforms import Preprocessing
from tests.helpers import make_imagefolder
from training.config import TrainConfig
from training.engine import train_mode
from training.optim import set_backbone_trainable

ARCH = "tf_efficientnet_lite0"


def _network_with_tail(frozen_stages: int = 4) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A random-weight Lite0 with a 3-way head and its tail kept, and a copy of the original 1000-way network."""
    torch.manual_seed(0)
    original = library_model(ARCH).eval()
    model = library_model(ARCH)
    model.load_state_dict(original.state_dict())
    keep_pretrained_tail(model, frozen_stages)
    _replace_classifier(model, 3)
    return model.eval(), original


def test_the_tail_on_the_trunk_gives_the_original_networks_imagenet_logits() -> None:
    model, original = _network_with_tail()
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        logits, features, imagenet_logits = OpenSetNetwork(model)(images)
        torch.testing.assert_close(imagenet_logits, original(images))
    assert logits.shape == (2, 3) and features.shape == (2, 1280)
    assert pretrained_head(model) is None and pretrained_tail(model).split == "blocks.3"


def test_the_trunk_and_tail_stay_fixed_while_the_rest_trains() -> None:
    model, _ = _network_with_tail()
    set_backbone_trainable(model, False)  # a head epoch, then the rest: the trunk must not come back
    set_backbone_trainable(model, True)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    train_mode(model)
    assert not model.bn1.training and not model.blocks[3][0].bn1.training and model.blocks[4][0].bn1.training
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    fixed = (PRETRAINED_TAIL + ".", *(name + "." for name in trunk_names(model, 4)))
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed, "nothing trained"
    assert not [name for name in changed if name.startswith(fixed)]  # weights and BatchNorm statistics alike
    assert any(name.startswith("blocks.4.") for name in changed) and "classifier.weight" in changed


def test_a_checkpoint_with_a_tail_round_trips(tmp_path: Path) -> None:
    model, original = _network_with_tail(frozen_stages=6)
    ckpt = make_checkpoint(
        model=model,
        arch=ARCH,
        class_names=["a", "b", "c"],
        preprocessing=Preprocessing(image_size=64, resize_size=73, mean=(0.5,) * 3, std=(0.5,) * 3),
        epoch=0,
        metrics={},
        config={"frozen_stages": 6},
    )
    loaded = model_from_checkpoint(load_checkpoint(save_checkpoint(ckpt, tmp_path / "tail.pt")))
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ours, theirs = OpenSetNetwork(loaded)(images), OpenSetNetwork(model)(images)
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(ours[2], original(images))


def test_frozen_stages_are_refused_where_they_cannot_work() -> None:
    with pytest.raises(ValueError, match="EfficientNet"):
        build_model("resnet10t", 3, "imagenet", keep_pretrained_head=True, frozen_stages=2)
    with pytest.raises(ValueError, match="between 1 and 7"):
        trunk_names(library_model(ARCH), 8)
    with pytest.raises(ValueError, match="--frozen-stages needs --weights imagenet"):
        TrainConfig(data="d", out="o", arch=ARCH, weights="none", frozen_stages=3)


@pytest.mark.slow
def test_train_with_frozen_stages_releases_a_model_with_the_pretrained_tail(tmp_path: Path) -> None:
    """train.py with ``--frozen-stages``: the release keeps the tail, and its trunk is ImageNet's own."""
    data = make_imagefolder(tmp_path / "data", per_class=6, groups_per_class=6)
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--arch", ARCH, "--weights", "imagenet", "--frozen-stages", "5"]
    args += ["--epochs", "1", "--batch-size", "8", "--image-size", "32", "--workers", "0"]
    assert train.main(args) == 0
    released = model_from_checkpoint(load_checkpoint(out / "release.pt")).float()
    original = library_model(ARCH, "imagenet").eval()
    assert pretrained_tail(released).frozen_stages == 5
    for name in trunk_names(released, 5):
        for key, tensor in released.get_submodule(name).state_dict().items():
            reference = original.get_submodule(name).state_dict()[key]
            expected = reference.half().to(tensor.dtype) if tensor.is_floating_point() else reference
            torch.testing.assert_close(tensor, expected)
    with torch.inference_mode():
        images = torch.randn(2, 3, 32, 32)
        imagenet_logits = OpenSetNetwork(released)(images)[2]
        torch.testing.assert_close(imagenet_logits, original.half().float()(images), atol=0.05, rtol=0)
