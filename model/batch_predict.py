"""Classify every image under a folder with a checkpoint and write one CSV row per image: ``fish-predict``.

The command behind ``predict.py`` (and ``fish-predict``; see ``--help``). It is the serving
:class:`model.predictor.Predictor` run offline over a folder, so it lives in ``model`` beside the predictor, the decoder
(:mod:`model.decoding`, :mod:`model.decoder_pool`) and the results table (:mod:`model.results`), and imports nothing
from ``training``: the training side depends on ``model``, never the other way round.

Files are decoded as the web app decodes uploads, so ``predict.py`` answers what the API answers for the same file:
each file is read and decoded in a process of a :class:`model.decoder_pool.DecoderPool` (``--workers`` of them) by
:func:`model.decoding.decode_image`, with the app's checks (supported formats, the JPEG structure walk, the pixel
limit ``--max-pixels``) and limits (the deadline ``--decode-timeout``, a memory limit), and shrunk on decoding to
the model's resize size. The images then go through the checkpoint's eval preset (``predictor.transform``) and
``predictor.predict_batch`` in batches, in this process, and get the fields of :class:`model.results.Prediction`
in the CSV layout of :mod:`model.results`. A file the decoder refuses gets a row with its ``error`` instead of
stopping the run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from tqdm import tqdm

from model.cli import PREDICTOR_ERRORS
from model.crop import Crop
from model.decoder_pool import DecoderPool
from model.decoding import DEFAULT_MAX_PIXELS
from model.errors import ImageError
from model.logs import setup_logging
from model.predict_cli import check_options, get_args_parser
from model.predictor import Predictor
from model.results import VERDICTS, Prediction, csv_header, csv_row
from model.runtime import resolve_device, set_torch_threads

logger = logging.getLogger("predict")

#: An image's result: its index in the list of paths, its prediction (None when unreadable) and the error ("" if
#: none).
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


def decoded_images(
    decoder: DecoderPool,
    root: Path,
    paths: Sequence[str],
    *,
    window: int,
    crops: Sequence[Crop | None] | None = None,
    **options: int,
) -> Iterator[tuple[int, Image.Image | None, str]]:
    """Decode the files at ``paths`` (relative to ``root``) in ``decoder``'s processes, at most ``window`` at a
    time (submitted or decoded but not yet consumed), so that a huge folder costs no more memory than a small one.

    Each file is submitted by its path (the decoder process reads it; this process never holds the file) with
    :func:`model.decoding.decode_image`'s keyword ``options`` and its crop of ``crops`` (one per path), if any.

    Yields:
        ``(index, image, "")`` for every path, in index order: ``image`` the decoded RGB image (shrunk as
        ``options`` say), or ``(index, None, error)`` when the decoder refused the file, ``error`` being
        ``"unreadable image: "`` and the :class:`model.errors.ImageError`'s message (a bad image, one over
        the limits, one that passed the deadline, a file that cannot be read).

    Raises:
        ValueError: ``window`` is less than 1.
        ImageError: 503 from :meth:`DecoderPool.submit` when the pool is closed or broken (no file's fault).
    """
    if window < 1:
        raise ValueError(f"the window of decodes must be at least 1, got {window}")
    pending: deque[tuple[int, Future[Image.Image]]] = deque()
    submitted = 0
    try:
        while submitted < len(paths) or pending:
            while submitted < len(paths) and len(pending) < window:
                crop = crops[submitted] if crops else None
                pending.append((submitted, decoder.submit(str(root / paths[submitted]), crop=crop, **options)))
                submitted += 1
            index, future = pending.popleft()
            try:
                image, error = decoder.result(future), ""
            except ImageError as exc:
                image, error = None, f"unreadable image: {exc.message}"
            yield index, image, error
    finally:  # stopped early (the consumer failed): the decodes not started yet are dropped
        for _, future in pending:
            future.cancel()


def _classify(predictor: Predictor, chunk: list[tuple[int, torch.Tensor | None, str]], top_k: int) -> list[Result]:
    """Classify the readable images of ``chunk`` (``(index, transformed image or None, error)`` items) in one
    batch; the results of every item, in ``chunk``'s order."""
    readable = [(index, image) for index, image, _ in chunk if image is not None]
    predictions: dict[int, Prediction] = {}
    if readable:
        batch = torch.stack([image for _, image in readable])
        predictions = dict(
            zip([index for index, _ in readable], predictor.predict_batch(batch, top_k=top_k), strict=True)
        )
    return [(index, predictions.get(index), error) for index, _, error in chunk]


def _with_crops(results: list[Result], crops: Sequence[Crop | None] | None) -> list[Result]:
    """``results`` with each prediction's crop (of ``crops``, by index) recorded in it."""
    if not crops:
        return results
    return [(i, dataclasses.replace(p, crop=crops[i]) if p else p, error) for i, p, error in results]


def read_crops(path: Path, paths: Sequence[str]) -> list[Crop | None]:
    """The crops of a CSV with columns ``path`` (a file's path under the folder, as the output's ``path``
    column) and ``crop`` (``x,y,w,h``, fractions of the upright photo; empty for the whole photo), one per
    ``paths`` (None for files the CSV does not list).

    Raises:
        ValueError: no such columns, a path that is not one of the folder's images, or a malformed crop (the row
            is named).
        OSError: the file cannot be read.
    """
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "crop"} <= set(reader.fieldnames):
            raise ValueError(f"{path} needs the columns path and crop")
        rows = list(reader)
    index = {p: i for i, p in enumerate(paths)}
    crops: list[Crop | None] = [None] * len(paths)
    for line, row in enumerate(rows, start=2):
        if row["path"] not in index:
            raise ValueError(f"{path}, line {line}: {row['path']!r} is not an image under the folder")
        try:
            crops[index[row["path"]]] = Crop.parse(row["crop"]) if (row["crop"] or "").strip() else None
        except ValueError as exc:
            raise ValueError(f"{path}, line {line}: crop {exc}") from exc
    return crops


def predict_images(
    predictor: Predictor,
    decoder: DecoderPool,
    root: Path,
    paths: Sequence[str],
    *,
    top_k: int,
    batch_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    crops: Sequence[Crop | None] | None = None,
) -> Iterator[Result]:
    """Classify the files at ``paths`` (relative to ``root``) in batches of ``batch_size`` images; with ``crops``
    (one per path, None for a whole photo), only that part of each upright photo, echoed in its prediction.

    Each file is decoded in ``decoder`` exactly as the web app decodes an upload (``app.uploads.decode_upload``:
    :func:`model.decoding.decode_image` with ``max_pixels`` and the model's resize size as ``resize_short_side``
    and ``reduce_to``), with at most ``2 * decoder.processes + batch_size`` decodes in flight
    (:func:`decoded_images`); then, in this process, ``predictor.transform`` makes each image a float32
    ``(3, S, S)`` tensor, and ``predictor.predict_batch`` classifies them stacked, ``(N, 3, S, S)`` with
    ``N <= batch_size``.

    Yields:
        ``(index, prediction, error)`` for every path, in index order: a :class:`Prediction` of the ``top_k``
        most probable classes (clipped to the number of classes) and ``""``, or ``None`` and why the file was
        refused (``"unreadable image: ..."``).
    """
    size = predictor.preprocessing.resize_size
    images = decoded_images(
        decoder,
        root,
        paths,
        window=2 * decoder.processes + batch_size,
        max_pixels=max_pixels,
        resize_short_side=size,
        reduce_to=size,
        crops=crops,
    )
    chunk: list[tuple[int, torch.Tensor | None, str]] = []  # errors wait here for the batch after them
    readable = 0
    with tqdm(total=len(paths), desc="predict", unit="img", leave=False, disable=None, dynamic_ncols=True) as bar:
        for index, image, error in images:
            chunk.append((index, None if image is None else predictor.transform(image), error))
            readable += image is not None
            if readable == batch_size:
                yield from _with_crops(_classify(predictor, chunk, top_k), crops)
                bar.update(len(chunk))
                chunk, readable = [], 0
        if chunk:
            yield from _with_crops(_classify(predictor, chunk, top_k), crops)
            bar.update(len(chunk))


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
        paths: the files' relative paths, indexed by the results' indices.
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


def main(argv: list[str] | None = None) -> int:
    """``predict.py``: parse the arguments (:func:`model.predict_cli.get_args_parser`), then :func:`run`."""
    return run(get_args_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Classify, write the CSV, print a summary; exit code 0 on success (files that could not be decoded
    included: they get error rows), 2 on a user error (missing folder, no images, bad checkpoint or option), 1 when
    the decoder processes stop working (no CSV is written)."""
    setup_logging()
    try:
        check_options(args)
        paths = list_images(args.folder)
        crops = read_crops(args.crops, paths) if args.crops else None
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
    try:
        with DecoderPool(max(args.workers, 1), timeout_s=args.decode_timeout) as decoder:
            start = time.perf_counter()
            results = predict_images(
                predictor,
                decoder,
                args.folder,
                paths,
                top_k=k,
                batch_size=args.batch_size,
                max_pixels=args.max_pixels,
                crops=crops,
            )
            summary = write_predictions(args.output, paths, results, k)
            seconds = time.perf_counter() - start
    except ImageError as exc:  # from DecoderPool.submit: the pool is broken, not a file
        logger.error("the decoder processes stopped working: %s", exc.message)
        return 1
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
