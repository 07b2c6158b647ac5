"""Classify every image under a folder with a checkpoint and write one CSV row per image: ``fish-predict``.

The command behind ``predict.py`` (and ``fish-predict``; see ``--help``). It is the serving
:class:`model.predictor.Predictor` run offline over a folder, so it lives in ``model`` beside the predictor, the decoder
(:mod:`model.decoding`) and the results table (:mod:`model.results`), and imports nothing from ``training``: the
training side depends on ``model``, never the other way round. Files are decoded as ``evaluate.py`` decodes them
(:func:`model.decoding.open_image`: upright RGB), go through the checkpoint's eval preset (``predictor.transform``)
and ``predictor.predict_batch`` in batches, and get the fields of :class:`model.predictor.Prediction` in the CSV
layout of :mod:`model.results`. An image that cannot be decoded gets a row with its ``error`` instead of stopping the
run.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from tqdm import tqdm

from model.cli import PREDICTOR_ERRORS, add_inference_arguments, command_parser, setup_logging
from model.decoding import DECODE_ERRORS, open_image
from model.predictor import Prediction, Predictor
from model.results import VERDICTS, csv_header, csv_row
from model.runtime import resolve_device, set_torch_threads

logger = logging.getLogger("predict")

#: An image's result: its index in the dataset, its prediction (None when unreadable) and the error ("" if none).
Result = tuple[int, Prediction | None, str]


def list_images(root: Path) -> list[str]:
    """Every image file under ``root``, recursively, by extension (those torchvision's ImageFolder accepts).

    Returns:
        Paths relative to ``root`` with ``/`` separators, sorted.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
        ValueError: no image file under it.
    """
    if not root.exists():
        raise FileNotFoundError(f"folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    paths = [
        (Path(dirpath) / name).relative_to(root).as_posix()
        for dirpath, _, filenames in os.walk(root, followlinks=True)
        for name in filenames
        if has_file_allowed_extension(name, IMG_EXTENSIONS)
    ]
    if not paths:
        raise ValueError(f"no image files under {root} (extensions {' '.join(IMG_EXTENSIONS)})")
    return sorted(paths)


class UnlabelledImages(Dataset[tuple[int, torch.Tensor | None, str]]):
    """Images at ``paths`` (relative to ``root``), decoded by :func:`model.decoding.open_image`, unreadable ones
    kept.

    Item ``i`` is ``(i, image, "")`` with ``image`` the float32 ``(3, S, S)`` output of ``transform``, or
    ``(i, None, message)`` when the file cannot be decoded, so every path gets a result. Batch with
    :func:`collate_with_errors`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        paths: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:  # type: ignore[override]
        try:
            return index, self.transform(open_image(self.root / self.paths[index])), ""
        except UnidentifiedImageError:  # its message repeats the absolute path
            return index, None, "unreadable image: not an image format Pillow can identify"
        except DECODE_ERRORS as exc:
            return index, None, f"unreadable image: {exc}"


def collate_with_errors(
    items: list[tuple[int, torch.Tensor | None, str]],
) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    """Batch :class:`UnlabelledImages` items.

    Returns:
        ``(indices, images, errors)``: the N indices of the readable images, those images stacked as float32
        ``(N, 3, S, S)`` (None when N is 0), and ``{index: message}`` for the unreadable ones.
    """
    readable = [(index, image) for index, image, _ in items if image is not None]
    errors = {index: error for index, image, error in items if image is None}
    images = torch.stack([image for _, image in readable]) if readable else None
    return [index for index, _ in readable], images, errors


def predict_images(
    predictor: Predictor, dataset: UnlabelledImages, *, top_k: int, batch_size: int, workers: int
) -> Iterator[Result]:
    """Classify ``dataset`` in batches of ``batch_size`` decoded by ``workers`` DataLoader processes (0: inline).

    Yields:
        ``(index, prediction, error)`` for every item, in index order: a :class:`Prediction` of the ``top_k``
        most probable classes (clipped to the number of classes) and ``""``, or ``None`` and the decode error.
    """
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_with_errors
    )
    with tqdm(total=len(dataset), desc="predict", unit="img", leave=False, disable=None, dynamic_ncols=True) as bar:
        for indices, images, errors in loader:
            predictions: dict[int, Prediction] = {}
            if images is not None:
                predictions = dict(zip(indices, predictor.predict_batch(images, top_k=top_k), strict=True))
            for index in sorted([*predictions, *errors]):
                yield index, predictions.get(index), errors.get(index, "")
            bar.update(len(predictions) + len(errors))


@dataclass
class Summary:
    """What a run classified: the image count, the labels of the named species, the count of each verdict,
    unreadable paths."""

    images: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    verdicts: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)

    def verdict_counts(self) -> str:
        """Each verdict's count, in :data:`VERDICTS` order: ``12 species, 3 not sure, 2 unknown species, 1 not a
        fish``."""
        return ", ".join(f"{self.verdicts[verdict]} {verdict.replace('_', ' ')}" for verdict in VERDICTS)


def write_predictions(output: Path, paths: Sequence[str], results: Iterable[Result], k: int) -> Summary:
    """Write one CSV row per result to ``output`` (the layout of :mod:`model.results`, file column ``path``),
    atomically: to ``output.part`` first, renamed over ``output`` once complete, removed if the run fails.

    Args:
        output: the CSV file to write; its folder must exist.
        paths: the dataset's relative paths, indexed by the results' indices.
        results: from :func:`predict_images`.
        k: number of top classes per row.

    Returns:
        The counts for the summary.
    """
    summary = Summary()
    part = output.with_name(output.name + ".part")
    try:
        with open(part, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(csv_header("path", k))
            for index, prediction, error in results:
                summary.images += 1
                if prediction is None:
                    summary.failed.append(paths[index])
                else:
                    summary.verdicts[prediction.verdict] += 1
                    if prediction.verdict == "species":
                        summary.labels[prediction.label] += 1
                writer.writerow(csv_row(paths[index], prediction, error, k))
        os.replace(part, output)
    finally:
        part.unlink(missing_ok=True)
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    """Arguments of ``predict.py`` / ``fish-predict``."""
    parser = command_parser("Classify every image under a folder (recursively) and write one CSV row per image.")
    parser.add_argument("folder", type=Path, help="folder of images; sub-folders are searched, other files ignored")
    parser.add_argument("--output", type=Path, required=True, help="CSV file to write (replaced if it exists)")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per image (at most the class count)")
    add_inference_arguments(parser, precision="auto", backend="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Classify, write the CSV, print a summary; exit code 0 on success, 2 on a user error (missing folder, no
    images, bad checkpoint or option)."""
    args = get_args_parser().parse_args(argv)
    setup_logging()
    try:
        if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
            raise ValueError("--top-k and --batch-size must be at least 1, --workers at least 0")
        if args.output.is_dir():
            raise ValueError(f"--output {args.output} is a folder; give a file name")
        paths = list_images(args.folder)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        device = resolve_device(args.device)
        predictor = Predictor.from_checkpoint(
            args.checkpoint, device=device, precision=args.precision, backend=args.backend
        )
    except (*PREDICTOR_ERRORS, ValueError, OSError) as exc:
        logger.error("%s", exc)
        return 2
    set_torch_threads(predictor.backend, None)

    k = min(args.top_k, len(predictor.class_names))
    dataset = UnlabelledImages(args.folder, paths, predictor.transform)
    start = time.perf_counter()
    results = predict_images(predictor, dataset, top_k=k, batch_size=args.batch_size, workers=args.workers)
    summary = write_predictions(args.output, paths, results, k)
    seconds = time.perf_counter() - start
    logger.info(
        "classified %d images (%d unreadable) in %.1f s: %.1f images/s",
        summary.images,
        len(summary.failed),
        seconds,
        summary.images / seconds,
    )
    if summary.failed:
        logger.warning("%d unreadable image(s), e.g. %s", len(summary.failed), summary.failed[:3])

    classified = summary.images - len(summary.failed)
    sys.stdout.write(
        f"{args.output}: {summary.images} images, {classified} classified ({summary.verdict_counts()}), "
        f"{len(summary.failed)} unreadable\n"
    )
    if summary.labels:
        common = ", ".join(f"{label} {n}" for label, n in summary.labels.most_common(5))
        sys.stdout.write(f"most frequent species: {common}\n")
    return 0
