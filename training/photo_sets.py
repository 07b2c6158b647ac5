"""The pictures that choose and measure a release's open-set thresholds: photo folders read into samples, one set
per folder and kind (``--open-set-photos``: photos of known and unknown species; ``--not-subject``: pictures of
something else). See :mod:`training.open_set` for what is chosen on them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from training.data import Sample, is_image_file


def photo_samples(folder: str | os.PathLike[str], class_names: Sequence[str]) -> tuple[list[Sample], list[Sample]]:
    """Photos in ``folder/<species>/``: ``(known, unknown)``, known where ``<species>`` is one of ``class_names``
    (target = its index), unknown otherwise (target -1). Files directly in ``folder`` count as unknown.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of photos")
    known, unknown = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p)):
        species = path.relative_to(root).parts[0] if len(path.relative_to(root).parts) > 1 else ""
        relative = str(path.relative_to(root))
        if species in class_names:
            known.append(Sample(relative, class_names.index(species)))
        else:
            unknown.append(Sample(relative, -1))
    return known, unknown


def all_images(folder: str | os.PathLike[str]) -> list[Sample]:
    """Every image below ``folder``, target -1.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of pictures")
    return [Sample(str(p.relative_to(root)), -1) for p in sorted(root.rglob("*")) if p.is_file() and is_image_file(p)]


def _folders(folders: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None) -> list[str]:
    """One folder or several as a list (None: none)."""
    if not folders:
        return []
    if isinstance(folders, (str, os.PathLike)):
        return [os.fspath(folders)]
    return [os.fspath(f) for f in folders]


def open_set_samples(
    photos: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    not_subject: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    class_names: Sequence[str],
) -> dict[str, tuple[str, list[Sample]]]:
    """The sets :func:`training.open_set.verdict_report` describes, one per folder and kind, for whichever folders
    are given and hold such images: ``{name: (root, samples)}``.

    A set's name is its kind (``"known_photos"`` and ``"unknown_photos"`` from each of ``photos``,
    ``"not_subject"`` from each of ``not_subject``), followed for the second folder of a kind and after by ``:``
    and the folder's last two path parts (``"unknown_photos:reef_photos/fish"``; see
    :func:`model.open_set.set_kind`).

    Raises:
        FileNotFoundError: a folder that is given does not exist.
    """
    sets: dict[str, tuple[str, list[Sample]]] = {}

    def add(kind: str, folder: str, rows: list[Sample]) -> None:
        if rows:
            name = kind if kind not in sets else f"{kind}:{'/'.join(Path(folder).resolve().parts[-2:])}"
            sets[name] = (folder, rows)

    for folder in _folders(photos):
        known, unknown = photo_samples(folder, class_names)
        add("known_photos", folder, known)
        add("unknown_photos", folder, unknown)
    for folder in _folders(not_subject):
        add("not_subject", folder, all_images(folder))
    return sets
