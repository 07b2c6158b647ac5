"""``train.py --extra-data DIR[,DIR...]``: reviewers' exported corrections (an ImageFolder plus corrections.csv) join
the training split only; the classes become the sorted union; a class found only there is a new class."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import yaml

import train
from model.checkpoint import load_checkpoint
from tests.helpers import COLOURS, make_imagefolder, synthetic_image
from training.config import TrainConfig, parse_args
from training.data import scan_extra_data
from training.metrics import classification_metrics
from training.run_data import load_data

#: A species the main data lacks, as ``fish-admin export`` names its folder; sorts between blue_tang and clownfish.
NEW_CLASS = "butterflyfish"
#: Sorts before every lower-case name, as ImageFolder sorts (plain ``sorted``).
NEW_SPECIES = "Amphiprion perideraion"


def make_export(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("clownfish", NEW_CLASS)) -> Path:
    """A ``fish-admin export`` folder: ``root/<label>/<sha256>.jpg`` plus ``corrections.csv`` and a stray non-image
    in one class folder (both to be ignored)."""
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        colour = COLOURS.get(name, (230, 230, 230))
        for i in range(per_class):
            synthetic_image(colour, seed=500 + 10 * c + i).save(folder / f"{c:032x}{i:032x}.jpg", quality=90)
    (root / "corrections.csv").write_text("sha256,label\n")
    (root / classes[0] / "notes.txt").write_text("not an image")
    return root


def split_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def config(data: Path, out: Path, *extra: Path, **options: object) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), extra_data=[str(e) for e in extra], **options)


def test_extra_images_land_only_in_train_with_the_union_of_classes(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data")
    export = make_export(tmp_path / "export")
    out = tmp_path / "run"
    out.mkdir()
    class_names, train_root, train_rows, val_root, val_rows = load_data(config(data, out, export), out)

    assert class_names == sorted([*COLOURS, NEW_CLASS]) and class_names.index(NEW_CLASS) == 1
    assert train_root == val_root == data
    extra = {path.as_posix() for path in export.glob("*/*.jpg")}  # tmp_path is absolute
    assert len(extra) == 6 and extra <= {s.path for s in train_rows}
    assert not any(Path(s.path).is_absolute() for s in val_rows)  # validation: the main data only
    assert {s.target for s in val_rows} == {class_names.index(name) for name in COLOURS}
    for s in train_rows + val_rows:  # every index follows the union's sorted order
        assert Path(s.path).parent.name == class_names[s.target]
    rows = split_rows(out / "split.csv")
    extra_rows = [r for r in rows if r["path"] in extra]
    assert len(extra_rows) == 6 and {r["split"] for r in extra_rows} == {"train"}
    assert {r["class"] for r in extra_rows} == {"clownfish", NEW_CLASS}


def test_split_of_the_main_data_is_unchanged_by_extra_data(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data")
    export = make_export(tmp_path / "export", classes=("clownfish",))  # no new class: same indices
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = load_data(config(data, tmp_path / "a"), tmp_path / "a")
    more = load_data(config(data, tmp_path / "b", export), tmp_path / "b")
    assert more[0] == plain[0]
    assert more[4] == plain[4]  # the same validation images
    assert more[2][: len(plain[2])] == plain[2] and len(more[2]) == len(plain[2]) + 3


def test_val_data_stays_the_validation_set_with_extra_data(tmp_path: Path) -> None:
    data, val_data = make_imagefolder(tmp_path / "data"), make_imagefolder(tmp_path / "val", per_class=2)
    export = make_export(tmp_path / "export")
    out = tmp_path / "run"
    out.mkdir()
    class_names, _, train_rows, val_root, val_rows = load_data(config(data, out, export, val_data=str(val_data)), out)
    assert val_root == val_data and len(val_rows) == 6 and len(train_rows) == 3 * 8 + 6
    for s in val_rows:  # reindexed into the union: butterflyfish shifted clownfish and green_chromis
        assert Path(s.path).parent.name == class_names[s.target]
    assert {r["split"] for r in split_rows(out / "split.csv")} == {"train"}


def test_new_class_is_logged_and_classes_filters_the_extra_folders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = make_export(tmp_path / "one", classes=(NEW_SPECIES,))
    two = make_export(tmp_path / "two", classes=("clownfish", NEW_CLASS))
    with caplog.at_level(logging.WARNING):
        names, rows = scan_extra_data([one, two], sorted(COLOURS))
    assert names == [NEW_SPECIES, "blue_tang", NEW_CLASS, "clownfish", "green_chromis"]
    assert sorted({names[s.target] for s in rows}) == [NEW_SPECIES, NEW_CLASS, "clownfish"]
    assert "no validation images" in caplog.text and NEW_SPECIES in caplog.text
    names, rows = scan_extra_data([one, two], sorted(COLOURS), classes=sorted(COLOURS))
    assert names == sorted(COLOURS) and len(rows) == 3 and {names[s.target] for s in rows} == {"clownfish"}


def test_metrics_accept_a_class_with_no_validation_images() -> None:
    m = classification_metrics([1, 1, 2], [1, 2, 2], ["new", "a", "b"])
    assert m["per_class"]["new"]["support"] == 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # over the classes that have validation images


def test_extra_data_is_a_comma_separated_option_recorded_in_the_config(tmp_path: Path) -> None:
    cfg = parse_args(["--data", "d", "--out", "o", "--extra-data", "exports/a, exports/b"])
    assert cfg.extra_data == ["exports/a", "exports/b"]
    assert parse_args(["--data", "d", "--out", "o"]).extra_data == []
    assert TrainConfig(data="d", out="o", extra_data="x,y").extra_data == ["x", "y"]  # a sweep's or YAML's string
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert parse_args(["--config", str(tmp_path / "c.yaml")]).extra_data == ["exports/a", "exports/b"]


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """One epoch of a resnet18 at 32 px from scratch, on one CPU core's worth of work."""
    options = {"--arch": "resnet18", "--weights": "none", "--epochs": "1", "--batch-size": "8"}
    options |= {"--image-size": "32", "--workers": "0", "--val-fraction": "0.25"}
    return ["--data", str(data), "--out", str(out), *(x for kv in options.items() for x in kv), *extra]


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("missing", "--extra-data folder {tmp}/missing does not exist"),
        ("data", "is also validation data"),
        ("empty", "has no class sub-folders"),
    ],
)
def test_a_bad_extra_folder_is_a_user_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, folder: str, message: str
) -> None:
    data = make_imagefolder(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    assert train.main(train_args(data, tmp_path / "run", "--extra-data", str(tmp_path / folder))) == 2
    assert message.format(tmp=tmp_path) in caplog.text
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_same_extra_folder_twice_is_refused(tmp_path: Path) -> None:
    export = make_export(tmp_path / "export")
    with pytest.raises(ValueError, match="listed twice"):
        scan_extra_data([export, tmp_path / "export" / ".." / "export"], sorted(COLOURS))


@pytest.mark.slow  # trains
def test_train_learns_a_new_class_from_extra_data(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data")
    export = make_export(tmp_path / "export", classes=(NEW_SPECIES, "clownfish"))
    run = tmp_path / "run"
    assert train.main(train_args(data, run, "--extra-data", str(export))) == 0

    expected = sorted([*COLOURS, NEW_SPECIES])
    for name in ("best.pt", "last.pt", "release.pt"):
        assert load_checkpoint(run / name).class_names == expected, name
    assert load_checkpoint(run / "last.pt").config["extra_data"] == [str(export)]
    assert yaml.safe_load((run / "config.yaml").read_text())["extra_data"] == [str(export)]
    rows = split_rows(run / "split.csv")
    extra_rows = [r for r in rows if r["path"].startswith(export.absolute().as_posix())]
    assert len(extra_rows) == 6 and {r["split"] for r in extra_rows} == {"train"}
    per_class = {r["class"]: r for r in split_rows(run / "per_class.csv")}
    assert per_class[NEW_SPECIES]["support"] == "0"  # trained on, not validated

    resumed = train_args(data, run, "--extra-data", str(export), "--resume", str(run / "last.pt"))
    resumed[resumed.index("--epochs") + 1] = "2"
    before = (run / "split.csv").read_text()
    assert train.main(resumed) == 0
    assert load_checkpoint(run / "last.pt").epoch == 1
    assert (run / "split.csv").read_text() == before
