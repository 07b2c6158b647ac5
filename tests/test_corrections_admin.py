"""``fish-admin`` (app/corrections/admin.py): reviewers from the shell, the export of accepted corrections for
``train.py --extra-data``, backup and restore; in-process on a SQLite store in tmp_path, plus one run of the installed
command."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.corrections.admin import CSV_COLUMNS, main
from app.corrections.photos import reencode_photo
from app.corrections.store import CorrectionStore
from tests.helpers import COLOURS, ROOT, modules_loaded_by
from training.data import scan_extra_data

NEW_SPECIES = "Amphiprion perideraion"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'corrections.sqlite3'}"


@pytest.fixture
def store(url: str) -> Iterator[CorrectionStore]:
    with CorrectionStore(url) as s:
        yield s


def admin(url: str, *args: str) -> int:
    return main(["--database", url, *args])


def photo(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> tuple[bytes, tuple[int, int]]:
    """A kept photo as the app stores it (a JPEG from :func:`reencode_photo`) and its size: ``colour`` inside the
    box of the crop ``0.25,0.5,0.5,0.5``, black around it."""
    image = Image.new("RGB", size, (0, 0, 0))
    width, height = size
    image.paste(colour, (width // 4, height // 2, 3 * width // 4, height))
    jpeg, _, width, height = reencode_photo(image)
    return jpeg, (width, height)


def submit(
    store: CorrectionStore,
    label: str,
    kind: str = "species",
    *,
    colour: tuple[int, int, int] | None = (200, 100, 50),
    crop: str | None = None,
    model_id: str = "m1",
) -> int:
    """A correction with small features and, unless ``colour`` is None, a photo; its id."""
    kept = photo(colour) if colour is not None else None
    view = store.submit(
        label=label,
        label_kind=kind,
        features=np.arange(4, dtype=np.float32),
        model_id=model_id,
        client_key="c" * 64,
        predicted_label="blue_tang",
        crop=crop,
        photo=kept[0] if kept else None,
        photo_size=kept[1] if kept else None,
    )
    return view.id


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- add-reviewer -----------------------------------------------------------------------------------------------


def test_fish_admin_imports_neither_torch_nor_the_web_app() -> None:
    """``fish-admin`` manages a database: its module (and so ``--help`` and every command) loads neither torch,
    timm nor the app's routes, which would cost seconds per call."""
    heavy = ("torch", "torchvision", "timm", "openvino", "app.api", "app.inference")
    assert modules_loaded_by("import app.corrections.admin", heavy) == []


def test_add_reviewer_prints_a_token_the_store_knows(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert admin(url, "add-reviewer", "alice") == 0
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1]
    assert "shown only this once" in out and out.count(token) == 1
    with CorrectionStore(url) as store:
        assert store.reviewer_by_token(token).name == "alice"
        assert store.reviewer_by_password("alice", "") is None  # token only


def test_add_reviewer_reads_the_password_from_stdin_when_not_a_terminal(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret pass\n"))
    assert admin(url, "add-reviewer", "bob", "--password") == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    with CorrectionStore(url) as store:
        assert store.reviewer_by_password("bob", "s3cret pass").name == "bob"
        assert store.reviewer_by_password("bob", "s3cret pass\n") is None
        assert store.reviewer_by_token(token).name == "bob"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("typed", "message"),
    [(["one", "two"], "the two passwords differ"), ([""], "must not be empty"), (["ok", "ok"], None)],
)
def test_add_reviewer_asks_the_password_twice_on_a_terminal(
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    typed: list[str],
    message: str | None,
) -> None:
    answers = iter(typed)
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    code = admin(url, "add-reviewer", "carol", "--password")
    captured = capsys.readouterr()
    with CorrectionStore(url) as store:
        if message is None:
            assert code == 0 and store.reviewer_by_password("carol", "ok").name == "carol"
        else:
            assert code == 1 and message in captured.err and captured.out == ""
            assert store.reviewer_by_password("carol", typed[0]) is None


def test_add_reviewer_refuses_a_taken_name_or_an_empty_stdin(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin(url, "add-reviewer", "alice") == 0
    capsys.readouterr()
    assert admin(url, "add-reviewer", "alice") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "fish-admin add-reviewer: error: a reviewer is already named 'alice'\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert admin(url, "add-reviewer", "dave", "--password") == 1
    assert "holds no line" in capsys.readouterr().err


def test_the_database_comes_from_the_apps_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FISH_DATABASE_URL", raising=False)
    monkeypatch.setenv("FISH_INSTANCE_PATH", str(tmp_path / "instance"))
    assert main(["add-reviewer", "erin"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    with CorrectionStore(f"sqlite:///{tmp_path / 'instance' / 'corrections.sqlite3'}") as store:
        assert store.reviewer_by_token(token).name == "erin"
    other = tmp_path / "other.sqlite3"
    monkeypatch.setenv("FISH_DATABASE_URL", f"sqlite:///{other}")  # wins over the instance folder
    assert main(["add-reviewer", "erin"]) == 0 and other.is_file()
    assert main(["--database", "mysql://db/fish", "add-reviewer", "x"]) == 1  # --database wins over both
    err = capsys.readouterr().err
    assert "must be SQLite or PostgreSQL" in err and "Traceback" not in err


# --- export -----------------------------------------------------------------------------------------------------


@pytest.fixture
def reviewed(store: CorrectionStore) -> dict[str, int]:
    """Accepted corrections of every kind, with and without photo and crop, plus a pending and a rejected one:
    their ids by name, and the reviewer's id."""
    reviewer = store.reviewer_by_token(store.add_reviewer("rita")).id
    ids = {
        "plain": submit(store, "clownfish", colour=(240, 120, 20)),
        "cropped": submit(store, "clownfish", colour=(250, 130, 30), crop="0.25,0.5,0.5,0.5"),
        "new": submit(store, NEW_SPECIES, "new_species", colour=(20, 20, 240)),
        "unknown": submit(store, "unknown_species", "unknown_species", colour=(20, 240, 20)),
        "not_fish": submit(store, "not_a_fish", "not_a_fish", colour=(240, 240, 240)),
        "no_photo": submit(store, "green_chromis", colour=None),
        "other_model": submit(store, "blue_tang", colour=(20, 40, 220), model_id="m2"),
    }
    for id_ in ids.values():
        store.review(id_, "accept", reviewer)
    ids["pending"] = submit(store, "blue_tang", colour=(1, 2, 3))
    ids["rejected"] = submit(store, "blue_tang", colour=(9, 8, 7))
    store.review(ids["rejected"], "reject", reviewer)
    return {**ids, "reviewer": reviewer}


def test_export_writes_an_imagefolder_open_set_folders_and_a_csv(
    url: str, reviewed: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    assert admin(url, "export", "--out", str(out)) == 0
    files = sorted(p.relative_to(out).parent.as_posix() for p in out.rglob("*.jpg"))
    assert files == [
        "images/amphiprion_perideraion",
        "images/blue_tang",
        "images/clownfish",
        "images/clownfish",
        "open_set/not_a_fish",
        "open_set/unknown_species",
    ]
    rows = read_csv(out / "corrections.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    by_id = {int(row["id"]): row for row in rows}
    assert set(by_id) == {reviewed[k] for k in ("plain", "cropped", "new", "unknown", "not_fish", "other_model")}
    for row in rows:
        assert (out / row["file"]).is_file() and row["file"] == f"{Path(row['file']).parent}/{row['sha256']}.jpg"
        assert row["reviewed_by"] == "rita" and row["reviewed_at"] and row["created_at"]
    new = by_id[reviewed["new"]]
    assert new["label"] == NEW_SPECIES and new["label_kind"] == "new_species" and new["predicted_label"] == "blue_tang"
    with Image.open(out / by_id[reviewed["cropped"]]["file"]) as cropped:
        assert cropped.size == (20, 15)  # the crop 0.25,0.5,0.5,0.5 of the 40 x 30 photo: its coloured box only
        corners = [cropped.getpixel(xy) for xy in ((1, 1), (18, 1), (1, 13), (18, 13))]
        assert all(r > 200 and b < 80 for r, _, b in corners)
    with Image.open(out / by_id[reviewed["plain"]]["file"]) as plain:
        assert plain.size == (40, 30) and plain.getpixel((1, 1)) < (30, 30, 30)  # whole: the black border too
    assert by_id[reviewed["cropped"]]["crop"] == "0.25,0.5,0.5,0.5" and by_id[reviewed["plain"]]["crop"] == ""
    report = capsys.readouterr().out
    assert "exported 6 accepted correction(s)" in report and "  images/clownfish: 2\n" in report
    assert "  open_set/not_a_fish: 1\n" in report and "1 accepted correction(s) had no photo" in report


def test_export_is_read_by_train_extra_data_with_the_new_species_as_a_class(
    url: str, reviewed: dict[str, int], tmp_path: Path
) -> None:
    out = tmp_path / "export"
    assert admin(url, "export", "--out", str(out), "--model-id", "m1") == 0
    names, samples = scan_extra_data([out / "images"], sorted(COLOURS))
    assert names == ["amphiprion_perideraion", *sorted(COLOURS)]
    assert sorted(names[s.target] for s in samples) == ["amphiprion_perideraion", "clownfish", "clownfish"]
    assert not (out / "images" / "blue_tang").exists()  # model m2's correction is left out
    assert len(read_csv(out / "corrections.csv")) == 5


def test_export_refuses_a_non_empty_folder_and_force_replaces_only_a_previous_export(
    url: str, store: CorrectionStore, reviewed: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert admin(url, "export", "--out", str(out)) == 1
    assert "is not empty" in capsys.readouterr().err
    assert admin(url, "export", "--out", str(out), "--force") == 1  # not an export: left alone
    assert "holds no corrections.csv" in capsys.readouterr().err and list(out.iterdir()) == [out / "notes.txt"]
    (out / "notes.txt").unlink()
    assert admin(url, "export", "--out", str(out)) == 0
    store.review(reviewed["new"], "reject", reviewed["reviewer"])
    assert admin(url, "export", "--out", str(out)) == 1
    (out / "notes.txt").write_text("kept")
    assert admin(url, "export", "--out", str(out), "--force") == 0
    assert not (out / "images" / "amphiprion_perideraion").exists()  # rejected since: its stale image is gone
    assert (out / "notes.txt").read_text() == "kept" and len(read_csv(out / "corrections.csv")) == 5


def test_export_of_nothing_writes_an_empty_csv(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    assert admin(url, "export", "--out", str(out)) == 0
    assert read_csv(out / "corrections.csv") == [] and (out / "images").is_dir()
    assert "exported 0 accepted correction(s)" in capsys.readouterr().out


# --- backup and restore -----------------------------------------------------------------------------------------


def test_backup_then_restore_round_trip(
    url: str, store: CorrectionStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = submit(store, "clownfish")
    backup = tmp_path / "backups" / "corrections.bak"
    assert admin(url, "backup", "--out", str(backup)) == 0 and backup.is_file()
    assert str(backup) in capsys.readouterr().out
    store.delete(kept)
    submit(store, "blue_tang")
    assert admin(url, "backup", "--out", f"{tmp_path / 'new'}/") == 0  # a new folder: a dated file in it
    (dated,) = (tmp_path / "new").iterdir()
    assert dated.name.startswith("corrections-") and str(dated) in capsys.readouterr().out
    assert admin(url, "restore", str(backup)) == 0
    assert [(v.id, v.label) for v in store.pending()] == [(kept, "clownfish")]
    assert admin(url, "restore", str(dated)) == 0
    assert [v.label for v in store.pending()] == ["blue_tang"]
    assert admin(url, "restore", str(tmp_path / "missing.bak")) == 1
    err = capsys.readouterr().err
    assert err.startswith("fish-admin restore: error: restore failed:") and err.count("\n") == 1


@pytest.mark.slow
def test_the_installed_command_adds_a_reviewer(url: str, tmp_path: Path) -> None:
    command = Path(sys.executable).with_name("fish-admin")
    if not command.is_file():
        pytest.skip("fish-admin is not installed (pip install -e .)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("FISH_")}
    run = [str(command), "--database", url, "add-reviewer", "frank", "--password"]
    done = subprocess.run(run, input="pw\n", capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip().splitlines()[-1]
    with CorrectionStore(url) as store:
        assert store.reviewer_by_token(token).name == "frank"
        assert store.reviewer_by_password("frank", "pw").name == "frank"
    again = subprocess.run(run, input="pw\n", capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert again.returncode == 1 and "already named 'frank'" in again.stderr and "Traceback" not in again.stderr
