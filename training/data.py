"""ImageFolder loading that tolerates stray files and unreadable images, and reproducible (grouped) splits.

The split follows ``sklearn.model_selection``: stratified by class, and with ``group_pattern`` also grouped
(``StratifiedGroupKFold``), so near-duplicate frames of one Fish4Knowledge track never straddle train and val.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from model.decoding import DECODE_ERRORS, is_readable, open_image

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.csv"


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``path`` relative to the dataset root (absolute for an ``--extra-data`` image, which
    ``root / path`` leaves as it is), ``target`` its class index."""

    path: str
    target: int


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for the extensions torchvision's ImageFolder accepts (``.jpg``, ``.png``, ``.webp``...)."""
    return str(path).lower().endswith(IMG_EXTENSIONS)


def scan_image_folder(
    root: str | os.PathLike[str], classes: Sequence[str] | None = None
) -> tuple[list[str], list[Sample]]:
    """List the classes and images of an ImageFolder tree (``root/<class>/<image>``).

    Class names are the sub-folder names in sorted order, exactly as ``torchvision.datasets.ImageFolder``
    assigns indices; with ``classes``, only those folders (still indexed in sorted order). Files that are not
    images by extension (README, CSV...) are ignored silently; image files that Pillow cannot open are skipped
    and counted in one warning.

    Returns:
        ``(class_names, samples)`` with samples sorted by path.

    Raises:
        FileNotFoundError: ``root`` does not exist or has no class folders.
        ValueError: no readable image was found, or a name in ``classes`` is not a folder of ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    try:
        class_names, class_to_idx = find_classes(str(root))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)") from exc
    if classes is not None:
        missing = sorted(set(classes) - set(class_names))
        if missing:
            raise ValueError(f"--classes {', '.join(missing)} not found in {root} (it has {', '.join(class_names)})")
        class_names = sorted(set(classes))
        class_to_idx = {name: i for i, name in enumerate(class_names)}
    samples: list[Sample] = []
    unreadable: list[str] = []
    for name in class_names:
        for dirpath, _, filenames in sorted(os.walk(root / name, followlinks=True)):
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if not is_image_file(path):
                    continue
                if is_readable(path):
                    samples.append(Sample(path.relative_to(root).as_posix(), class_to_idx[name]))
                else:
                    unreadable.append(str(path))
    if unreadable:
        logger.warning("skipped %d unreadable image(s) under %s, e.g. %s", len(unreadable), root, unreadable[:3])
    if not samples:
        raise ValueError(f"no readable images under {root}")
    empty = [n for i, n in enumerate(class_names) if not any(s.target == i for s in samples)]
    if empty:
        logger.warning("classes with no readable image: %s", empty)
    return class_names, samples


def reindex(samples: Sequence[Sample], old_names: Sequence[str], new_names: Sequence[str]) -> list[Sample]:
    """``samples`` indexed by ``new_names`` instead of ``old_names`` (same class names, other indices).

    Raises:
        ValueError: a class of ``old_names`` that a sample uses is not in ``new_names``.
    """
    index = {name: i for i, name in enumerate(new_names)}
    try:
        return [Sample(s.path, index[old_names[s.target]]) for s in samples]
    except KeyError as exc:
        raise ValueError(f"class {exc.args[0]!r} is not among {list(new_names)}") from None


def scan_extra_data(
    roots: Sequence[str | os.PathLike[str]],
    class_names: Sequence[str],
    classes: Sequence[str] | None = None,
    exclude: Sequence[str | os.PathLike[str] | None] = (),
) -> tuple[list[str], list[Sample]]:
    """The images of ``--extra-data`` ImageFolders (e.g. ``fish-admin export`` folders of accepted corrections),
    which a run adds to its training split only.

    Each root is scanned as :func:`scan_image_folder` does (non-images ignored, unreadable images skipped and
    counted). Classes are the union of ``class_names`` and the roots' class folders, sorted as ImageFolder sorts
    them, so indices stay deterministic; a class found only in a root is new, and logged as having no validation
    images.

    Args:
        roots: the extra ImageFolder roots, ``ROOT/<class>/<image>``.
        class_names: the classes of the main data (``--data``).
        classes: ``--classes``: only these class folders of each root are read (others are logged and skipped).
        exclude: folders whose images are validated (``--data``, ``--val-data``; None entries are ignored): none of
            them may be a root too.

    Returns:
        ``(names, samples)``: the sorted union of the classes, and every extra image with an absolute path and its
        class index in ``names``.

    Raises:
        FileNotFoundError: a root does not exist or has no class sub-folders.
        ValueError: a root listed twice, a root that is one of ``exclude``, or a root with no readable image.
    """
    folders = [Path(root).absolute() for root in roots]
    validated = {Path(p).resolve() for p in exclude if p is not None}
    for i, folder in enumerate(folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"--extra-data folder {folder} does not exist")
        if folder.resolve() in validated:
            raise ValueError(f"--extra-data {folder} is also validation data: its images would be trained on")
        if folder.resolve() in {f.resolve() for f in folders[:i]}:
            raise ValueError(f"--extra-data {folder} is listed twice")
    found: list[tuple[Path, list[str], list[Sample]]] = []
    for folder in folders:
        kept = _extra_classes(folder, classes)
        if kept:
            found.append((folder, *scan_image_folder(folder, kept)))
    names = sorted(set(class_names).union(*(set(folder_names) for _, folder_names, _ in found)))
    samples: list[Sample] = []
    for folder, folder_names, rows in found:
        absolute = [Sample((folder / s.path).as_posix(), s.target) for s in rows]
        samples += reindex(absolute, folder_names, names)
        logger.info("--extra-data %s: %d training image(s) %s", folder, len(rows), class_counts(rows, folder_names))
    new = sorted(set(names) - set(class_names))
    if new:
        logger.warning("new class(es) from --extra-data, with no validation images (not scored): %s", new)
    return names, samples


def _extra_classes(folder: Path, classes: Sequence[str] | None) -> list[str]:
    """The class folders of ``folder`` to read: all, or those in ``classes`` (the others logged as skipped).

    Raises:
        FileNotFoundError: ``folder`` has no class sub-folders.
    """
    try:
        folder_names = find_classes(str(folder))[0]
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--extra-data {folder} has no class sub-folders (expected <class>/<image>)") from exc
    if classes is None:
        return folder_names
    skipped = sorted(set(folder_names) - set(classes))
    if skipped:
        logger.info("--extra-data %s: skipping class folder(s) not in --classes: %s", folder, skipped)
    return [name for name in folder_names if name in classes]


def split_samples(
    samples: Sequence[Sample],
    val_fraction: float,
    seed: int,
    group_pattern: str | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Stratified train/val split, reproducible by ``seed``, optionally keeping groups on one side.

    Args:
        samples: the dataset.
        val_fraction: share of images in validation, in (0, 1).
        seed: random seed; the same seed and samples give the same split.
        group_pattern: regular expression whose first capture group, searched in the file name, names the group
            (``fish_(\\d+)_`` for Fish4Knowledge track ids). Files that don't match form a group of their own.
            Grouped splits use ``StratifiedGroupKFold`` with ``round(1 / val_fraction)`` folds and take the first
            fold, so the validation share is approximately ``val_fraction``.

    Returns:
        ``(train, val)`` lists.

    Raises:
        ValueError: ``val_fraction`` out of range, an invalid pattern, or too few images/groups to split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    targets = np.array([s.target for s in samples])
    indices = np.arange(len(samples))
    if group_pattern:
        try:
            regex = re.compile(group_pattern)
        except re.error as exc:
            raise ValueError(f"invalid --group-pattern {group_pattern!r}: {exc}") from exc
        groups = []
        for s in samples:
            name = Path(s.path).name
            m = regex.search(name)
            groups.append(f"{s.target}:{m.group(1) if m and m.groups() else name}")
        n_splits = max(2, round(1.0 / val_fraction))
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        train_idx, val_idx = next(splitter.split(indices, targets, groups=groups))
    else:
        train_idx, val_idx = train_test_split(indices, test_size=val_fraction, random_state=seed, stratify=targets)
    return [samples[i] for i in sorted(train_idx)], [samples[i] for i in sorted(val_idx)]


def write_split(
    path: str | os.PathLike[str], train: Sequence[Sample], val: Sequence[Sample], class_names: Sequence[str]
) -> None:
    """Write ``split.csv`` with columns ``path, class, split`` (paths relative to the data root)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "class", "split"])
        for split, rows in (("train", train), ("val", val)):
            for s in rows:
                writer.writerow([s.path, class_names[s.target], split])


def read_split(path: str | os.PathLike[str], class_names: Sequence[str], split: str = "val") -> list[Sample]:
    """Read the ``split`` rows of a ``split.csv`` written by :func:`write_split`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file lacks the columns, or names a class outside ``class_names``.
    """
    index = {name: i for i, name in enumerate(class_names)}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "class", "split"} <= set(reader.fieldnames):
            raise ValueError(f"{path} is not a split file (expected columns path, class, split)")
        rows = [r for r in reader if r["split"] == split]
    unknown = sorted({r["class"] for r in rows} - set(index))
    if unknown:
        raise ValueError(f"{path} names classes the model does not know: {unknown}")
    return [Sample(r["path"], index[r["class"]]) for r in rows]


class ImageListDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images from a list of :class:`Sample`, decoded with Pillow, converted to RGB, then ``transform``.

    An image that fails to decode mid-epoch (a file changed or truncated after the scan) yields ``None``; use
    :func:`collate_skip_none` as the DataLoader's ``collate_fn`` to drop it and keep training.

    Args:
        root: dataset root the sample paths are relative to.
        samples: the images and targets.
        transform: maps an RGB ``PIL.Image`` to a float32 tensor ``(3, S, S)``.
        cache: keep the decoded (not transformed) images in memory after first use; for small datasets where
            JPEG decoding would otherwise be repeated every epoch.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], torch.Tensor],
        cache: bool = False,
    ) -> None:
        self.root = Path(root)
        self.samples = list(samples)
        self.transform = transform
        self.cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """Class index of every sample, in order."""
        return [s.target for s in self.samples]

    def load(self, index: int) -> Image.Image:
        """Decode sample ``index`` upright (EXIF orientation applied, as the web app does) in RGB.

        Raises:
            One of :data:`model.decoding.DECODE_ERRORS`: the file can't be decoded.
        """
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        image = open_image(self.root / self.samples[index].path)
        if self.cache is not None:
            self.cache[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:  # type: ignore[override]
        try:
            image = self.load(index)
        except DECODE_ERRORS as exc:
            logger.warning("skipping unreadable image %s: %s", self.samples[index].path, exc)
            return None
        return self.transform(image), self.samples[index].target


def collate_skip_none(batch: list[Any]) -> Any:
    """``default_collate`` after dropping the ``None`` items of unreadable images; ``None`` if none is left."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return None
    return torch.utils.data.default_collate(batch)


def class_counts(samples: Sequence[Sample], class_names: Sequence[str]) -> dict[str, int]:
    """Number of images per class name (classes with none included, as 0)."""
    counts = Counter(s.target for s in samples)
    return {name: counts.get(i, 0) for i, name in enumerate(class_names)}


#: The columns of a ``--class-info`` CSV besides ``class`` (see :class:`model.checkpoint.ClassNames`).
CLASS_INFO_COLUMNS = ("common_name", "scientific_name", "genus", "family", "family_common_name")


def read_class_info(path: str | os.PathLike[str], class_names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Readable names and taxonomy per class from a CSV with a ``class`` column and any of
    :data:`CLASS_INFO_COLUMNS` (``common_name, scientific_name, genus, family, family_common_name``).

    Classes of the data missing from the file simply have no names; empty cells are dropped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no ``class`` column, or the file names classes that are not in ``class_names``.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "class" not in reader.fieldnames:
            raise ValueError(f"{path} needs a 'class' column (and common_name, scientific_name)")
        rows = list(reader)
    unknown = sorted({r["class"] for r in rows} - set(class_names))
    if unknown:
        raise ValueError(f"{path} names classes that are not in the data: {unknown}")
    return {r["class"]: {k: r[k].strip() for k in CLASS_INFO_COLUMNS if (r.get(k) or "").strip()} for r in rows}
