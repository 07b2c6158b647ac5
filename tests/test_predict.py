"""predict.py: a folder of images -> one CSV row per image, the same predictions as ``Predictor.predict`` and as
the API, each file decoded in a decoder process under the web app's checks and limits (``model.decoder_pool``)."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import logging
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.web import results_csv
from model import batch_predict
from model.decoding import decode_image
from model.predictor import Predictor
from model.results import VERDICTS, Prediction
from tests.helpers import COLOURS, encode, make_app, make_imagefolder, modules_loaded_by, photo, synthetic_image
from tools.hostile_images import progressive_with_repeated_scan, slow_png, with_sof_size

TOP_K = 2
CORRUPT = "blue_tang/broken.jpg"


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Class folders of 3 JPEGs each, a nested sub-folder with a PNG, an image at the top, a README.txt (to be
    ignored) and a corrupt JPEG (to get an error row)."""
    root = make_imagefolder(tmp_path / "photos", per_class=3, groups_per_class=1)
    nested = root / "clownfish" / "dive 2" / "deeper"
    nested.mkdir(parents=True)
    synthetic_image(COLOURS["clownfish"], size=(50, 30), seed=7).save(nested / "a.png")
    synthetic_image(COLOURS["green_chromis"], seed=8).convert("L").save(root / "top.jpg")
    (root / "README.txt").write_text("not an image")
    (root / CORRUPT).write_bytes(b"\xff\xd8\xff garbage")
    return root


def read_rows(output: Path) -> dict[str, dict[str, str]]:
    """The rows of a predict.py CSV, by path."""
    with open(output, newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def run(folder: Path, checkpoint: Path, output: Path, *extra: str) -> int:
    args = [
        str(folder),
        "--checkpoint",
        str(checkpoint),
        "--output",
        str(output),
        "--batch-size",
        "4",
        "--precision",
        "fp32",
        "--backend",
        "torch",  # like the Predictor the rows are compared with (OpenVINO: tests/test_model.py)
    ]
    return batch_predict.main([*args, "--top-k", str(TOP_K), *extra])


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 0 counts as 1 decoder process
def test_predict_writes_one_row_per_image_like_predictor_predict(
    photo_folder: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    output = tmp_path / "out" / "results.csv"
    assert run(photo_folder, tiny_checkpoint, output, "--workers", str(workers)) == 0
    assert sorted(p.name for p in output.parent.iterdir()) == ["results.csv"]  # no .part left behind

    with open(output, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [
        *("path", "species", "label", "confidence", "verdict", "confident", "family", "family_probability", "crop"),
        "error",
        *("top_1", "top_1_confidence", "top_2", "top_2_confidence"),
    ]
    images = [p.relative_to(photo_folder).as_posix() for p in photo_folder.rglob("*") if p.suffix != ".txt"]
    images = [p for p in images if (photo_folder / p).is_file()]
    assert len(images) == 3 * 3 + 3
    paths = [row["path"] for row in rows]
    assert paths == sorted(images)
    assert "clownfish/dive 2/deeper/a.png" in paths and "top.jpg" in paths
    assert [row["path"] for row in rows if row["error"]] == [CORRUPT]
    broken = rows[paths.index(CORRUPT)]
    assert broken["error"].startswith("unreadable image") and broken["label"] == broken["top_1"] == ""

    for row in rows:  # the trained tiny model names the species of each class folder's photos
        assert row["label"] == row["path"].split("/")[0] or row["path"] in (CORRUPT, "top.jpg")
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    for row in rows:
        if row["path"] == CORRUPT:
            continue
        with Image.open(photo_folder / row["path"]) as image:
            expected = predictor.predict([image], top_k=TOP_K)[0]
        assert (row["label"], row["species"]) == (expected.label, expected.display_name)
        assert float(row["confidence"]) == pytest.approx(expected.confidence, abs=1e-4)
        assert (row["verdict"], row["confident"]) == (expected.verdict, str(expected.confident).lower())
        for i, score in enumerate(expected.top_k, start=1):
            assert row[f"top_{i}"] == score.label
            assert float(row[f"top_{i}_confidence"]) == pytest.approx(score.confidence, abs=1e-4)

    assert (
        "12 images, 11 classified (11 species, 0 not sure, 0 unknown species, 0 not a fish)" in capsys.readouterr().out
    )


def test_predict_counts_each_verdict(
    photo_folder: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verdicts given in turn (species, not sure, unknown species, not a fish, species...) to the 11 readable images:
    each gets its row's ``verdict``, the summary counts them, and only named species count as frequent."""
    turn = itertools.cycle(VERDICTS)
    predict_batch = Predictor.predict_batch

    def with_verdicts(self: Predictor, batch: torch.Tensor, top_k: int = 5) -> list[Prediction]:
        return [dataclasses.replace(p, verdict=next(turn)) for p in predict_batch(self, batch, top_k)]

    monkeypatch.setattr(Predictor, "predict_batch", with_verdicts)
    output = tmp_path / "results.csv"
    assert run(photo_folder, tiny_checkpoint, output, "--workers", "0") == 0
    with open(output, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if not row["error"]]
    assert [row["verdict"] for row in rows] == [VERDICTS[i % 4] for i in range(11)]
    assert [row["confident"] for row in rows] == [str(row["verdict"] == "species").lower() for row in rows]
    out = capsys.readouterr().out
    assert "12 images, 11 classified (3 species, 3 not sure, 3 unknown species, 2 not a fish), 1 unreadable" in out
    named = Counter(row["label"] for row in rows if row["verdict"] == "species")
    assert "most frequent species: " + ", ".join(f"{label} {n}" for label, n in named.most_common()) + "\n" in out


def test_the_page_and_predict_py_write_one_csv_layout(
    photo_folder: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from app.web import FileResult

    output = tmp_path / "results.csv"
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    with Image.open(photo_folder / "top.jpg") as image:
        prediction = predictor.predict([image], top_k=TOP_K)[0]
    web = results_csv([FileResult("top.jpg", prediction=prediction)]).splitlines()
    assert run(photo_folder, tiny_checkpoint, output, "--workers", "0") == 0
    with open(output, newline="", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert web[0].split(",", 1)[1] == lines[0].split(",", 1)[1]  # the same columns after the file's own
    row = next(line for line in lines if line.startswith("top.jpg,"))
    assert web[1] == row  # and the same cells for the same photo


def test_predict_user_errors_exit_2(
    photo_folder: Path, tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = tmp_path / "results.csv"
    with caplog.at_level(logging.ERROR):
        assert run(tmp_path / "missing", tiny_checkpoint, output) == 2
    assert "does not exist" in caplog.text

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run(empty, tiny_checkpoint, output) == 2
    assert "no image files" in caplog.text

    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_text("this is text, not a checkpoint")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run(photo_folder, not_a_checkpoint, output) == 2
    assert str(not_a_checkpoint) in caplog.text
    assert not output.exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--decode-timeout", "0", "--decode-timeout must be a number of seconds > 0"),
        ("--decode-timeout", "nan", "--decode-timeout must be a number of seconds > 0"),
        ("--max-pixels", "0", "--max-pixels must be at least 1"),
        ("--workers", "-1", "--workers at least 0"),
    ],
)
def test_predict_bad_decoding_options_exit_2(
    photo_folder: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    option: str,
    value: str,
    message: str,
) -> None:
    output = tmp_path / "results.csv"
    with caplog.at_level(logging.ERROR):
        assert run(photo_folder, tiny_checkpoint, output, option, value) == 2
    assert message in caplog.text
    assert not output.exists()


def test_predict_refuses_bombs_and_oversized_images_and_classifies_the_rest(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The app's checks, in predict.py: a JPEG whose header claims 20000 x 20000 pixels, a progressive JPEG with
    150 repeated scans and an ordinary PNG over ``--max-pixels`` each get an error row; the photos beside them
    are classified, each by its folder's species."""
    root = make_imagefolder(tmp_path / "photos", per_class=2, groups_per_class=1)
    (root / "bombs").mkdir()
    (root / "bombs" / "claims_400mp.jpg").write_bytes(with_sof_size(encode(synthetic_image((0, 0, 0))), 20000, 20000))
    (root / "bombs" / "scans.jpg").write_bytes(progressive_with_repeated_scan(150))
    Image.new("RGB", (1200, 1000), COLOURS["clownfish"]).save(root / "bombs" / "big.png")
    output = tmp_path / "results.csv"
    assert run(root, tiny_checkpoint, output, "--max-pixels", "1000000", "--workers", "2") == 0

    rows = read_rows(output)
    assert len(rows) == 3 * 2 + 3
    errors = {path: row["error"] for path, row in rows.items() if row["error"]}
    assert sorted(errors) == ["bombs/big.png", "bombs/claims_400mp.jpg", "bombs/scans.jpg"]
    assert all(error.startswith("unreadable image: ") for error in errors.values())
    assert "20000 x 20000 pixels" in errors["bombs/claims_400mp.jpg"]
    assert "too many progressive scans" in errors["bombs/scans.jpg"]
    assert "1200 x 1000 pixels, the limit is 1 megapixels" in errors["bombs/big.png"]
    assert all(rows[path]["label"] == rows[path]["top_1"] == "" for path in errors)
    assert {path: row["label"] for path, row in rows.items() if path not in errors} == {
        path: path.split("/")[0] for path in rows if path not in errors
    }
    assert "9 images, 6 classified (6 species, 0 not sure, 0 unknown species, 0 not a fish), 3 unreadable" in (
        capsys.readouterr().out
    )


def test_predict_stops_a_decode_at_the_decode_timeout(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--decode-timeout``: a big, legitimately slow image (an 8000 x 6000 RGBA PNG, 48 megapixels, under the
    pixel limit) gets the "takes too long to decode" error, its decoder process is stopped at the deadline (the
    run takes less time than decoding the slow files would), and the photo beside them is classified."""
    slow = slow_png((8000, 6000))
    start = time.perf_counter()
    decode_image(slow, resize_short_side=37, reduce_to=37)
    decode_seconds = time.perf_counter() - start
    deadline = 0.1
    assert decode_seconds > 3 * deadline  # legitimately slow: well past the deadline

    root = tmp_path / "photos"
    root.mkdir()
    copies = 3
    for i in range(copies):
        (root / f"slow_{i}.png").write_bytes(slow)
    synthetic_image(COLOURS["clownfish"]).save(root / "clownfish.jpg")
    output = tmp_path / "results.csv"
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="model.decoder_pool"):
        assert run(root, tiny_checkpoint, output, "--decode-timeout", str(deadline), "--workers", "1") == 0
    run_seconds = time.perf_counter() - start

    rows = read_rows(output)
    assert rows["clownfish.jpg"]["label"] == "clownfish" and rows["clownfish.jpg"]["error"] == ""
    for i in range(copies):
        error = rows[f"slow_{i}.png"]["error"]
        assert error.startswith(f"unreadable image: this image takes too long to decode (the limit is {deadline:g} s)")
    assert caplog.text.count(f"stopped a decode at its deadline of {deadline:g} s") == copies
    assert run_seconds < copies * decode_seconds, (run_seconds, decode_seconds)  # one decoder: killed, not waited


def test_predict_py_answers_what_the_api_answers(photo_folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The same file gets the same prediction from predict.py as from ``/api/predict``: both decode it the same way
    (shrunk on decoding to the model's resize size, transparency on white), with the same model."""
    (photo_folder / "big.jpg").write_bytes(photo((1600, 1200)))  # decoded at 1/8 scale, as the API does
    rgba = synthetic_image(COLOURS["blue_tang"], size=(300, 200), seed=3).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((300, 200)))
    rgba.save(photo_folder / "transparent.png")
    output = tmp_path / "results.csv"
    assert run(photo_folder, tiny_checkpoint, output, "--workers", "1") == 0
    rows = read_rows(output)

    client = make_app(MODEL_PATH=str(tiny_checkpoint), PRECISION="fp32").test_client()
    for path in ("big.jpg", "transparent.png", "top.jpg", "clownfish/dive 2/deeper/a.png"):
        data = (photo_folder / path).read_bytes()
        response = client.post(
            "/api/predict",
            data={"image": (io.BytesIO(data), Path(path).name), "top_k": str(TOP_K)},
            content_type="multipart/form-data",
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        body, row = response.get_json(), rows[path]
        assert (row["label"], row["species"], row["verdict"]) == (body["label"], body["display_name"], body["verdict"])
        assert float(row["confidence"]) == pytest.approx(body["confidence"], abs=1e-4)
        for i, score in enumerate(body["top_k"], start=1):
            assert row[f"top_{i}"] == score["label"]
            assert float(row[f"top_{i}_confidence"]) == pytest.approx(score["confidence"], abs=1e-4)


@pytest.mark.parametrize("module", ["predict", "model.commands"])
def test_the_predict_entry_points_import_neither_torch_nor_timm(module: str) -> None:
    """Every decoder process re-imports the script that was run (multiprocessing does so for ``__main__``):
    predict.py and fish-predict's entry point must import none of torch, torchvision, timm or pydantic, which
    would cost each decoder process seconds and a few GB of address space."""
    assert modules_loaded_by(f"import {module}", ("torch", "torchvision", "timm", "pydantic", "openvino")) == []


def test_predict_stops_with_exit_code_1_when_the_decoder_processes_fail(
    photo_folder: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken decoder pool is not a file's fault: no CSV of error rows, exit code 1."""
    from model.decoder_pool import DecoderPool
    from model.errors import ImageError

    def broken(self: DecoderPool, source: object, **options: object) -> None:
        raise ImageError("the server cannot decode images right now: try again in a moment", 503)

    monkeypatch.setattr(DecoderPool, "submit", broken)
    output = tmp_path / "results.csv"
    assert run(photo_folder, tiny_checkpoint, output) == 1
    assert list(tmp_path.glob("results.csv*")) == []
