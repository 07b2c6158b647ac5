"""predict.py: a folder of images -> one CSV row per image, the same predictions as ``Predictor.predict``."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import logging
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import predict
from app.web import results_csv
from model.predictor import VERDICTS, Prediction, Predictor
from tests.conftest import COLOURS, make_imagefolder, synthetic_image

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
    return predict.main([*args, "--top-k", str(TOP_K), *extra])


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2 DataLoader processes
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
        *("path", "species", "label", "confidence", "verdict", "confident", "error"),
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
