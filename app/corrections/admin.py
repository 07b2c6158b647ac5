"""The ``fish-admin`` command: the corrections database from the shell (issue 19).

* ``fish-admin add-reviewer NAME [--password]``: a reviewer who may accept or reject corrections; prints their API
  token, once (only its hash is stored). With ``--password`` the password for the review pages is asked twice
  (:func:`getpass.getpass`), or read as one line from stdin when stdin is not a terminal (scripts).
* ``fish-admin export --out DIR [--model-id ID] [--force]``: the accepted corrections that kept a photo, for
  ``train.py``. Species and new species go to the ImageFolder ``DIR/images/<class>/<sha256>.jpg`` (the model's class
  name, or the new species' name in the same snake_case form: ``Amphiprion perideraion`` ->
  ``amphiprion_perideraion``), so ``train.py --extra-data DIR/images`` adds them to the training data; unknown
  species and "not a fish" go to ``DIR/open_set/unknown_species/`` and ``DIR/open_set/not_a_fish/`` (for
  ``--open-set-photos DIR/open_set`` and ``--not-subject DIR/open_set/not_a_fish``, never classes). A cropped
  correction is exported as its crop, the region its features were computed on; a file is named by the SHA-256 of
  its bytes. ``DIR/corrections.csv`` (written last: its presence marks a complete export) lists every exported
  correction. ``DIR`` must be missing or empty; ``--force`` replaces a previous export there (a folder holding a
  ``corrections.csv``: its ``images/``, ``open_set/`` and ``corrections.csv`` are removed, nothing else), so a
  correction rejected since is not trained on from a stale file.
* ``fish-admin backup --out FILE`` and ``fish-admin restore FILE``: :mod:`app.corrections.backup` (SQLite online
  backup, ``pg_dump``/``pg_restore`` for PostgreSQL).

The database is ``--database URL`` when given, else the app's own (``FISH_DATABASE_URL``, else SQLite in
``FISH_INSTANCE_PATH``: :func:`app.settings.from_environ` and :func:`app.corrections.engine.database_url`).

What the user asked for (the token, the export summary) goes to stdout; progress is logged to stderr; a mistake (a
taken name, a non-empty folder, an unreachable database) is one line on stderr and exit status 1 (2: bad arguments,
from argparse), never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import hashlib
import io
import logging
import os
import shutil
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from PIL import Image
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app import settings
from app.corrections.engine import database_url
from app.corrections.photos import reencode_photo
from app.corrections.store import CorrectionStore, CorrectionView, PhotoNotFound, StoreError
from model.crop import Crop
from model.logs import setup_logging

logger = logging.getLogger("fish-admin")

#: The export's ImageFolder of species (known and new), its open-set folders, and its list of corrections.
IMAGES, OPEN_SET, CSV_NAME = "images", "open_set", "corrections.csv"
#: The label kinds exported as classes of ``DIR/images``; the others go to ``DIR/open_set/<kind>``.
CLASS_KINDS = ("species", "new_species")
OPEN_SET_KINDS = ("unknown_species", "not_a_fish")
#: The columns of ``corrections.csv``; ``file`` is relative to the export folder, ``sha256`` is the file's.
CSV_COLUMNS = (
    "id",
    "label",
    "label_kind",
    "predicted_label",
    "crop",
    "file",
    "sha256",
    "model_id",
    "created_at",
    "reviewed_by",
    "reviewed_at",
)


class AdminError(Exception):
    """A user's mistake or a state that stops a command: reported as one line, exit status 1."""


# --- the database -----------------------------------------------------------------------------------------------


def resolve_database(option: str | None, environ: Mapping[str, str]) -> str:
    """The database's SQLAlchemy URL: ``option`` (``--database``) when given, else the app's settings read from
    ``environ`` (``FISH_DATABASE_URL``, ``FISH_INSTANCE_PATH``), both through :func:`database_url`.

    Raises:
        AdminError: a setting's value is invalid, or the instance folder cannot be created.
    """
    config = {**settings.defaults(), **settings.from_environ(environ)}
    if option is not None:
        config["DATABASE_URL"] = option
    try:
        for key in ("DATABASE_URL", "INSTANCE_PATH"):
            settings.SETTINGS[key].check(config[key])
        return database_url(config)
    except (ValueError, OSError) as exc:
        raise AdminError(str(exc)) from exc


def shown(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as the user gave it, never failing the message
        return url


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a driver's may hold SQL and a link), or its type's name."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def open_store(url: str) -> CorrectionStore:
    """The store at ``url``, migrated to the newest schema.

    Raises:
        AdminError: the URL is not a SQLite or PostgreSQL one, or the database cannot be reached or migrated.
    """
    try:
        return CorrectionStore(url)
    except (ValueError, SQLAlchemyError) as exc:
        raise AdminError(f"cannot open the corrections database {shown(url)}: {first_line(exc)}") from exc


# --- add-reviewer -----------------------------------------------------------------------------------------------


def read_password(stdin: TextIO) -> str:
    """A new reviewer's password: asked twice on the terminal, or one line of ``stdin`` when it is not one.

    Raises:
        AdminError: an empty password, the two differ, or stdin holds no line.
    """
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if password and getpass.getpass("Password again: ") != password:
            raise AdminError("the two passwords differ")
    else:
        line = stdin.readline()
        if not line:
            raise AdminError("--password: stdin is not a terminal and holds no line to read the password from")
        password = line.rstrip("\r\n")
    if not password:
        raise AdminError("the password must not be empty")
    return password


def add_reviewer(url: str, name: str, password: str | None, out: TextIO) -> None:
    """Add the reviewer ``name`` and write their API token to ``out``, once.

    Raises:
        AdminError: a taken or invalid name, or the database cannot be opened.
    """
    with open_store(url) as store:
        try:
            token = store.add_reviewer(name, password)
        except (StoreError, ValueError) as exc:
            raise AdminError(str(exc)) from exc
    kind = "review pages and API" if password is not None else "API only"
    out.write(f"reviewer {name!r} added ({kind})\n")
    out.write("API token, shown only this once (send it as 'Authorization: Bearer <token>'):\n")
    out.write(f"{token}\n")


# --- export -----------------------------------------------------------------------------------------------------


@dataclass
class ExportSummary:
    """What an export wrote: image files per folder (relative to the export), corrections listed in the CSV,
    accepted corrections with no photo, and those skipped (a damaged photo or an unusable label)."""

    files: Counter[str] = field(default_factory=Counter)
    exported: int = 0
    without_photo: int = 0
    skipped: int = 0


def class_folder(view: CorrectionView) -> str:
    """The folder, relative to the export, of a correction's image: ``images/<class>`` for a species (its class
    name) or a new species (its name in snake_case), ``open_set/<kind>`` for the other kinds.

    Raises:
        ValueError: an unknown kind, or a label that cannot be one folder name.
    """
    if view.label_kind in OPEN_SET_KINDS:
        return f"{OPEN_SET}/{view.label_kind}"
    if view.label_kind not in CLASS_KINDS:
        raise ValueError(f"correction {view.id}: unknown label kind {view.label_kind!r}")
    name = view.label if view.label_kind == "species" else "_".join(view.label.lower().split())
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or name != name.strip():
        raise ValueError(f"correction {view.id}: its label {view.label!r:.80} cannot name a folder")
    return f"{IMAGES}/{name}"


def exported_image(jpeg: bytes, crop: str | None) -> tuple[bytes, str]:
    """The image file of a correction and its SHA-256: the kept photo as stored, or its crop (``x,y,w,h``, of the
    upright photo, as the features were computed) re-encoded by :func:`reencode_photo`.

    Raises:
        ValueError: an invalid crop.
        OSError: Pillow cannot decode the photo.
    """
    if crop is None:
        return jpeg, hashlib.sha256(jpeg).hexdigest()
    box = Crop.parse(crop)
    with Image.open(io.BytesIO(jpeg)) as image:
        image.load()
        cropped, sha256, _, _ = reencode_photo(image.crop(box.box(image.size)))
    return cropped, sha256


def prepare_folder(out: Path, force: bool) -> None:
    """Make ``out`` ready for an export: created when missing; refused when not empty, unless ``force`` and it
    holds a previous export (a ``corrections.csv``), whose ``images/``, ``open_set/`` and CSV are then removed.

    Raises:
        AdminError: ``out`` is a file, or a non-empty folder that may not be replaced.
        OSError: it cannot be created or cleared.
    """
    if out.exists() and not out.is_dir():
        raise AdminError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise AdminError(f"--out {out} is not empty: give an empty or new folder, or --force to replace an export")
        if not (out / CSV_NAME).is_file():
            raise AdminError(f"--out {out} holds no {CSV_NAME}: it is not a previous export, --force will not clear it")
        (out / CSV_NAME).unlink()  # first: an interrupted export never looks complete
        for name in (IMAGES, OPEN_SET):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        logger.info("removed the previous export in %s", out)
    (out / IMAGES).mkdir(parents=True, exist_ok=True)


def csv_row(view: CorrectionView, file: str, sha256: str) -> dict[str, str]:
    """A row of ``corrections.csv`` (empty cells for None; times in ISO 8601, UTC)."""
    values = {
        "id": view.id,
        "label": view.label,
        "label_kind": view.label_kind,
        "predicted_label": view.predicted_label,
        "crop": view.crop,
        "file": file,
        "sha256": sha256,
        "model_id": view.model_id,
        "created_at": view.created_at.isoformat(),
        "reviewed_by": view.reviewed_by,
        "reviewed_at": view.reviewed_at.isoformat() if view.reviewed_at else None,
    }
    return {key: "" if value is None else str(value) for key, value in values.items()}


def export_one(store: CorrectionStore, view: CorrectionView, out: Path) -> dict[str, str] | None:
    """Write one accepted correction's image under ``out`` (once per content) and return its CSV row; None when
    it cannot be exported (no photo any more, a damaged photo or crop, a bad label: logged as a warning)."""
    try:
        folder = class_folder(view)
        jpeg = store.photo(view.photo_sha256 or "")
        data, sha256 = exported_image(jpeg, view.crop)
    except (PhotoNotFound, ValueError, OSError, Image.DecompressionBombError) as exc:
        logger.warning("correction %d not exported: %s", view.id, exc)
        return None
    file = f"{folder}/{sha256}.jpg"
    path = out / file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(path)
    return csv_row(view, file, sha256)


def export(store: CorrectionStore, out: Path, model_id: str | None = None, force: bool = False) -> ExportSummary:
    """Export the accepted corrections (of ``model_id`` only, when given) that kept a photo to ``out``, as the
    module docstring says.

    Raises:
        AdminError: ``out`` cannot take the export (see :func:`prepare_folder`).
        OSError: a file cannot be written.
    """
    prepare_folder(out, force)
    summary, rows, written = ExportSummary(), [], set()
    for view in store.by_status("accepted", limit=None):
        if model_id is not None and view.model_id != model_id:
            continue
        if view.photo_sha256 is None:
            summary.without_photo += 1
            continue
        row = export_one(store, view, out)
        if row is None:
            summary.skipped += 1
            continue
        rows.append(row)
        if row["file"] not in written:
            written.add(row["file"])
            summary.files[row["file"].rpartition("/")[0]] += 1
    summary.exported = len(rows)
    partial = out / f"{CSV_NAME}.part"
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(out / CSV_NAME)
    return summary


def write_summary(summary: ExportSummary, out: Path, stream: TextIO) -> None:
    """The export's report for the user: files per folder, what was not exportable, how to train on it."""
    files = sum(summary.files.values())
    stream.write(f"exported {summary.exported} accepted correction(s) to {out} ({files} image file(s)):\n")
    for folder in sorted(summary.files):
        stream.write(f"  {folder}: {summary.files[folder]}\n")
    stream.write(f"{summary.without_photo} accepted correction(s) had no photo (not exportable)\n")
    if summary.skipped:
        stream.write(f"{summary.skipped} accepted correction(s) skipped: damaged photo or label (see the log)\n")
    if any(folder.startswith(IMAGES) for folder in summary.files):
        stream.write(f"train on them: train.py --data DATA --extra-data {out / IMAGES}\n")
    if summary.files[f"{OPEN_SET}/unknown_species"] or summary.files[f"{OPEN_SET}/not_a_fish"]:
        stream.write(
            f"open set: train.py ... --open-set-photos {out / OPEN_SET} --not-subject {out / OPEN_SET / 'not_a_fish'}\n"
        )


# --- backup and restore -----------------------------------------------------------------------------------------


def run_backup(url: str, out: str, stream: TextIO) -> None:
    """Back up the database at ``url`` to ``out``: a file, or a folder to write a dated file in (an existing one, or
    one created when ``out`` ends with a slash) (:func:`app.corrections.backup.backup`).

    Raises:
        AdminError: the backup failed (its message says why).
        OSError: the folder cannot be created.
    """
    from app.corrections import backup as backups  # written beside this module; imported only when asked

    try:
        if out.endswith(("/", os.sep)):  # a folder, maybe new: the backup is a dated file in it
            Path(out).mkdir(parents=True, exist_ok=True)
        written = backups.backup(url, Path(out))
    except backups.BackupError as exc:
        raise AdminError(f"backup failed: {exc}") from exc
    stream.write(f"backed up {shown(url)} to {written}\n")


def run_restore(url: str, source: Path, stream: TextIO) -> None:
    """Restore the database at ``url`` from the backup ``source`` (:func:`app.corrections.backup.restore`).

    Raises:
        AdminError: the restore failed (its message says why).
    """
    from app.corrections import backup as backups

    try:
        backups.restore(url, source)
    except backups.BackupError as exc:
        raise AdminError(f"restore failed: {exc}") from exc
    stream.write(f"restored {shown(url)} from {source}\n")


# --- the command ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``fish-admin`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="fish-admin",
        description="Manage the corrections database: reviewers, export for training, backup and restore.",
    )
    parser.add_argument(
        "--database",
        metavar="URL",
        help="SQLAlchemy URL of the corrections database (default: the app's, from FISH_DATABASE_URL, else SQLite "
        "in FISH_INSTANCE_PATH)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser("add-reviewer", help="add a reviewer and print their API token (shown once)")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--password",
        action="store_true",
        help="also set a password for the review pages: asked twice, or one line of stdin when it is not a terminal",
    )
    exp = commands.add_parser("export", help="write the accepted corrections with photos as an ImageFolder + CSV")
    exp.add_argument("--out", required=True, type=Path, metavar="DIR", help="a new or empty folder")
    exp.add_argument("--model-id", metavar="ID", help="only the corrections of this model's features")
    exp.add_argument("--force", action="store_true", help="replace a previous export in DIR")
    back = commands.add_parser("backup", help="back up the database to FILE (replaced if there)")
    back.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="the backup file, or a folder to write a dated one in (created when the name ends with /)",
    )
    rest = commands.add_parser("restore", help="replace the database's contents with a backup FILE's")
    rest.add_argument("source", type=Path, metavar="FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fish-admin`` (see the module docstring).

    Returns:
        The exit status: 0 done, 1 a mistake or failure (one line on stderr); argparse exits 2 on bad arguments.
    """
    args = build_parser().parse_args(argv)
    setup_logging()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # not its every step of a migration
    try:
        url = resolve_database(args.database, os.environ)
        if args.command == "add-reviewer":
            password = read_password(sys.stdin) if args.password else None
            add_reviewer(url, args.name, password, sys.stdout)
        elif args.command == "export":
            with open_store(url) as store:
                summary = export(store, args.out, args.model_id, args.force)
            write_summary(summary, args.out, sys.stdout)
        elif args.command == "backup":
            run_backup(url, args.out, sys.stdout)
        else:
            run_restore(url, args.source, sys.stdout)
    except (AdminError, OSError, StoreError) as exc:
        sys.stderr.write(f"fish-admin {args.command}: error: {exc}\n")
        return 1
    except SQLAlchemyError as exc:  # the database failed after it was opened: its first line, not a traceback
        sys.stderr.write(f"fish-admin {args.command}: database error: {first_line(exc)}\n")
        return 1
    except (KeyboardInterrupt, EOFError):
        sys.stderr.write(f"fish-admin {args.command}: interrupted\n")
        return 1
    return 0
