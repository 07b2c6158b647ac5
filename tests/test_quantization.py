"""int8 post-training quantization for OpenVINO: ``quantize.py`` and ``model/quantization.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import evaluate
import quantize
from model.predictor import Predictor
from model.quantization import QuantizationUnavailableError, int8_path, report_path
from tests.helpers import (
    COLOURS,
    assert_matches,
    encode,
    make_app,
    make_imagefolder,
    post_numbered_images,
    synthetic_image,
)
from training.data import scan_image_folder, write_split

pytestmark = pytest.mark.slow  # OpenVINO conversion and NNCF quantization


@pytest.fixture(scope="module", autouse=True)
def int8_packages() -> None:
    """Skip the module's tests where NNCF or OpenVINO is missing: checked when they run, not when the module is
    collected (``make test-fast`` collects it, in each process, and runs none of it)."""
    pytest.importorskip("nncf", reason="int8 quantization needs nncf")
    pytest.importorskip("openvino", reason="int8 inference needs openvino")


@pytest.fixture(scope="module")
def quantized(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(checkpoint, data, split)``: a copy of the tiny checkpoint quantized by ``quantize.py`` on synthetic images."""
    root = tmp_path_factory.mktemp("int8")
    checkpoint = Path(shutil.copy(tiny_checkpoint, root / "model.pt"))
    data = make_imagefolder(root / "data", per_class=6)
    class_names, samples = scan_image_folder(data)
    split = root / "split.csv"
    write_split(split, samples[::2], samples[1::2], class_names)
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--split-file", str(split)]
    assert quantize.main([*args, "--calibration-images", "8"]) == 0
    return checkpoint, data, split


def test_quantize_writes_the_int8_network_and_what_it_measured(quantized: tuple[Path, Path, Path]) -> None:
    checkpoint, _, _ = quantized
    assert int8_path(checkpoint) == checkpoint.with_name("model.int8.xml")
    assert int8_path(checkpoint).is_file() and int8_path(checkpoint).with_suffix(".bin").stat().st_size > 0
    report = json.loads(report_path(checkpoint).read_text())
    assert report["checkpoint"] == "model.pt" and report["calibration_images"] == 8
    validation = report["validation"]
    assert validation["images"] == 3 * 6 // 2  # the split's "val" half of 3 classes x 6 images
    assert 0.0 <= validation["top1_agreement"] <= 1.0
    assert 0.0 <= validation["accuracy_int8"] <= 1.0 and 0.0 <= validation["accuracy_fp32"] <= 1.0


def test_int8_predictor_follows_fp32(quantized: tuple[Path, Path, Path]) -> None:
    checkpoint, _, _ = quantized
    fp32 = Predictor.from_checkpoint(checkpoint, precision="fp32")
    int8 = Predictor.from_checkpoint(checkpoint, precision="int8", backend="auto")
    assert int8.backend == "openvino" and int8.precision == "int8" and int8.summary()["precision"] == "int8"
    # pictures like those it was calibrated on (NNCF sets the activation ranges from them), not seen in calibration
    batch = torch.stack([fp32.transform(synthetic_image(c, seed=100 + i)) for c in COLOURS.values() for i in range(6)])
    reference, quantized_logits = fp32.logits(batch).flatten(), int8.logits(batch).flatten()
    correlation = torch.corrcoef(torch.stack([reference, quantized_logits]))[0, 1]
    assert correlation > 0.9, correlation  # quantization noise, not another network
    assert int8.predict([Image.new("RGB", (20, 20), "red")])[0].label in fp32.class_names
    assert [p.label for p in int8.predict([synthetic_image(colour) for colour in COLOURS.values()])] == list(COLOURS)


def test_int8_needs_its_network_and_openvino(tiny_checkpoint: Path, tmp_path: Path) -> None:
    lonely = Path(shutil.copy(tiny_checkpoint, tmp_path / "lonely.pt"))
    with pytest.raises(QuantizationUnavailableError, match="quantize.py --checkpoint"):
        Predictor.from_checkpoint(lonely, precision="int8", backend="openvino")
    with pytest.raises(ValueError, match="int8 needs the openvino backend"):
        Predictor.from_checkpoint(lonely, precision="int8", backend="torch")


def test_evaluate_reads_the_int8_network(quantized: tuple[Path, Path, Path], capsys: pytest.CaptureFixture) -> None:
    checkpoint, data, split = quantized
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--split-file", str(split), "--workers", "0"]
    assert evaluate.main([*args, "--backend", "openvino", "--precision", "int8"]) == 0
    assert "on 9 images" in capsys.readouterr().out
    assert evaluate.main([*args[:4], "--data", str(data / "missing"), "--precision", "int8"]) == 2


def test_quantize_refuses_bad_input(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert quantize.main(["--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert (
        quantize.main(["--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--calibration-images", "0"]) == 2
    )


def test_an_app_serving_int8_answers_what_its_document_says(quantized: tuple[Path, Path, Path]) -> None:
    checkpoint, _, _ = quantized
    app = make_app(MODEL_PATH=str(checkpoint), BACKEND="openvino", PRECISION="int8")
    client = app.test_client()
    document = client.get("/api/openapi.json").get_json()
    response = post_numbered_images(client, [encode(synthetic_image(COLOURS["clownfish"]))])
    assert response.status_code == 200 and response.get_json()["model"]["precision"] == "int8"
    assert_matches(document, "/api/predict", "post", 200, response.get_json())


def test_quantize_skips_unreadable_calibration_images(quantized: tuple[Path, Path, Path], tmp_path: Path) -> None:
    checkpoint, data, split = quantized
    copy = Path(shutil.copy(checkpoint, tmp_path / "model.pt"))
    data = Path(shutil.copytree(data, tmp_path / "data"))
    (data / "clownfish" / "broken.jpg").write_bytes(b"not a jpeg")
    rows = split.read_text().splitlines()
    bad_split = tmp_path / "split.csv"
    bad_rows = ["clownfish/broken.jpg,clownfish,train", "clownfish/gone.jpg,clownfish,train"]
    bad_split.write_text("\n".join([*rows, *bad_rows]))
    args = ["--checkpoint", str(copy), "--data", str(data), "--split-file", str(bad_split)]
    assert quantize.main([*args, "--calibration-images", "100"]) == 0  # it was a TypeError traceback
    readable = sum(row.endswith(",train") for row in rows)
    assert json.loads(report_path(copy).read_text())["calibration_images"] == readable


def test_quantize_refuses_calibration_images_none_of_which_can_be_read(tiny_checkpoint: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copy(tiny_checkpoint, tmp_path / "model.pt"))
    (tmp_path / "data" / "clownfish").mkdir(parents=True)
    (tmp_path / "data" / "clownfish" / "broken.jpg").write_bytes(b"not a jpeg")
    args = ["--checkpoint", str(copy), "--data", str(tmp_path / "data")]
    assert quantize.main(args) == 2
    assert not report_path(copy).exists()
