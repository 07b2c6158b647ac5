"""The HTML pages: the upload page (``GET /``, ``POST /``) and the model page (``GET /model``).

The upload page works as a plain HTML form: one or several files in the field ``image``, posted to ``/``, give
a result card (one file) or a results table with a CSV download (several). ``static/app.js`` enhances the same
page (drag and drop, paste, previews, no reload through ``/api/predict``) where JavaScript runs. Uploaded
images are echoed back as in-memory JPEG thumbnails in ``data:`` URLs, so nothing is stored.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import math
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, render_template, request
from PIL import Image
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge

from app.images import SUPPORTED_FORMATS_TEXT, ImageError
from app.inference import get_batcher, get_predictor
from app.uploads import decode_upload, form_limit_message
from model.network import arch_library
from model.predictor import Prediction, pretty_label
from model.results import csv_header, csv_row

logger = logging.getLogger(__name__)

bp = Blueprint("web", __name__)

#: Longest side of the thumbnail echoed back with a single result, in pixels.
THUMBNAIL_SIZE = 320
#: Longest side of the thumbnails in the results table of several files, in pixels.
TABLE_THUMBNAIL_SIZE = 96
#: Name of the CSV file that the results table downloads as.
CSV_FILENAME = "fish-species.csv"
#: Confusion-matrix cells are shaded in this many steps of their share of the row (the true class).
SHADE_LEVELS = 5


@dataclass(frozen=True)
class FileResult:
    """The outcome for one uploaded file: a prediction and its thumbnail, or an error message.

    Attributes:
        filename: the name the browser sent, only shown back to the user (never used to store anything).
        prediction: the classification, or None when the file could not be classified.
        thumbnail: ``data:`` URL of a small JPEG of the image, or None.
        error: why the file could not be classified, or None.
    """

    filename: str
    prediction: Prediction | None = None
    thumbnail: str | None = None
    error: str | None = None


def thumbnail_data_url(image: Image.Image, max_side: int = THUMBNAIL_SIZE) -> str:
    """A ``data:image/jpeg;base64,...`` URL of ``image`` (RGB) shrunk to at most ``max_side`` pixels a side."""
    thumb = image.copy()
    thumb.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def format_bytes(size: int) -> str:
    """A size in bytes for people: ``16 MiB``, ``500 KiB``, ``100 bytes``."""
    for unit, factor in (("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} bytes"


def results_csv(results: Sequence[FileResult]) -> str:
    """The results table as CSV, one row per file, in the layout of :mod:`model.results` (file column
    ``file_name``), with Windows line ends for spreadsheets."""
    k = max((len(r.prediction.top_k) for r in results if r.prediction), default=0)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(csv_header("file_name", k))
    for r in results:
        writer.writerow(csv_row(r.filename, r.prediction, r.error or "", k))
    return buf.getvalue()


def csv_data_url(text: str) -> str:
    """A ``data:text/csv`` URL of ``text``, for a download link that needs no JavaScript and no second request."""
    return "data:text/csv;charset=utf-8," + urllib.parse.quote(text)


@bp.app_template_filter("article")
def with_article(noun: str) -> str:
    """``"fish"`` -> ``"a fish"``, ``"eel"`` -> ``"an eel"`` (by the first letter only)."""
    return ("an " if noun[:1].lower() in ("a", "e", "i", "o", "u") else "a ") + noun


def model_subject(info: dict[str, Any]) -> str | None:
    """The noun for what the model's photos show (``"fish"``), from ``Predictor.summary()["subject"]``, or None
    when the checkpoint does not record one (the page then words its answers generically)."""
    subject = info.get("subject")
    return (subject.strip() or None) if isinstance(subject, str) else None


def verdict_headline(prediction: Prediction, subject: str | None = None) -> str:
    """What the page says about one photo, by its ``verdict`` (``headline()`` in ``static/app.js`` says the same).

    ``species``: the species' common name (else its display name); ``not_sure``: "Not sure: maybe X or Y" (the
    two most probable classes); ``unknown_species``: "Probably a fish this model does not know"; ``not_a_fish``:
    "This does not look like a fish". Without a ``subject`` noun the last two are worded generically.
    """
    if prediction.verdict == "species":
        return prediction.common_name or prediction.display_name
    if prediction.verdict == "not_sure":
        names = [score.common_name or score.display_name for score in prediction.top_k[:2]]
        return "Not sure: maybe " + " or ".join(names)
    if prediction.verdict == "unknown_species":
        if subject:
            return f"Probably {with_article(subject)} this model does not know"
        return "Probably none of the species this model knows"
    if subject:
        return f"This does not look like {with_article(subject)}"
    return "This does not look like anything this model was trained on"


def render_page(status: int = 200, **context: Any) -> tuple[str, int]:
    """Render ``index.html`` with the model summary plus ``context`` (result, results, error, thumbnail...)."""
    info = get_predictor().describe()
    max_upload = format_bytes(current_app.config["MAX_CONTENT_LENGTH"])
    html = render_template(
        "index.html",
        model=info,
        subject=model_subject(info),
        headline=verdict_headline,
        formats=SUPPORTED_FORMATS_TEXT,
        max_upload=max_upload,
        max_files=current_app.config["MAX_IMAGES_PER_REQUEST"],
        top_k=min(current_app.config["TOP_K"], len(info["classes"])),
        **context,
    )
    return html, status


@bp.app_template_filter("percent")
def percent_filter(value: float | None, decimals: int = 1) -> str:
    """``0.9134`` -> ``91.3%``; None -> an en dash."""
    return "–" if value is None else f"{value * 100:.{decimals}f}%"


@bp.get("/")
def index() -> tuple[str, int]:
    """The upload form."""
    return render_page()


def chosen_files() -> list[FileStorage]:
    """The files of the form's ``image`` field, without the empty part a browser sends when none was chosen.

    Raises:
        ImageError: 400 when no file was chosen, 413 with more than ``MAX_IMAGES_PER_REQUEST`` files (the API's
            limit too).
    """
    uploads = [f for f in request.files.getlist("image") if f.filename or f.content_length]
    if not uploads:
        if "image" in request.files:
            raise ImageError("choose an image file to upload first", 400)
        raise ImageError("no image uploaded: send the file in the multipart form field 'image'", 400)
    limit = current_app.config["MAX_IMAGES_PER_REQUEST"]
    if len(uploads) > limit:
        raise ImageError(f"too many photos: {len(uploads)} at once, choose at most {limit}", 413)
    return uploads


def display_filename(upload: FileStorage) -> str:
    """The uploaded file's base name as the browser sent it, shortened, for display only."""
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (name[:97] + "...") if len(name) > 100 else (name or "photo")


def classify_upload(upload: FileStorage, thumbnail_size: int) -> FileResult:
    """Decode and classify one upload, shrunk on decoding as the API does (so both give the same answer).

    Raises:
        ImageError: the file is not a usable image (see :func:`app.images.decode_image`).
    """
    image = decode_upload(upload)
    prediction = get_batcher().predict([image], top_k=current_app.config["TOP_K"])[0]
    return FileResult(display_filename(upload), prediction, thumbnail_data_url(image, thumbnail_size))


@bp.post("/")
def classify() -> tuple[str, int]:
    """Classify the uploaded ``image`` file(s).

    One file: the species, its confidence and the top classes (or the error, with its status). Several: a
    results table with a CSV download; files that cannot be classified get their error in their row. Files are
    decoded and classified one after the other, so only one decoded image is in memory at a time.
    """
    uploads = chosen_files()
    if len(uploads) == 1:
        result = classify_upload(uploads[0], THUMBNAIL_SIZE)  # an ImageError re-renders the page with its status
        return render_page(result=result.prediction, thumbnail=result.thumbnail)
    results = []
    for upload in uploads:
        try:
            results.append(classify_upload(upload, TABLE_THUMBNAIL_SIZE))
        except ImageError as exc:
            results.append(FileResult(display_filename(upload), error=exc.message))
    failed = sum(r.prediction is None for r in results)
    logger.info("classified %d of %d uploaded files", len(results) - failed, len(results))
    return render_page(results=results, csv_url=csv_data_url(results_csv(results)), csv_filename=CSV_FILENAME)


@bp.errorhandler(ImageError)
def image_error(error: ImageError) -> tuple[str, int]:
    """Re-render the page with the error message and its status."""
    return render_page(error.status, error=error.message)


@bp.errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge) -> tuple[str, int]:
    """Re-render the page saying how big an upload may be."""
    limit = format_bytes(current_app.config["MAX_CONTENT_LENGTH"])
    message = form_limit_message() or f"the files are too large: an upload may be up to {limit} in all"
    return render_page(413, error=message)


# --- the model page ----------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def training_facts(config: dict[str, Any], metrics: dict[str, Any], epoch: Any) -> list[tuple[str, str]]:
    """How the model was trained, as ``(term, description)`` pairs, from the checkpoint's training ``config``.

    Only settings that describe the model are listed: file-system paths (data, output, resume, local weights)
    and machine settings (workers, device) are left out. Missing settings are skipped.
    """
    facts: list[tuple[str, str]] = []
    if config.get("arch"):
        facts.append(("Architecture", str(config["arch"])))
    weights = config.get("weights")
    if weights is not None:
        try:
            library = arch_library(str(config.get("arch")))
        except ValueError:
            library = "an unknown library"
        described = {"none": "none: trained from scratch", "imagenet": f"ImageNet-pretrained ({library})"}
        facts.append(("Initial weights", described.get(str(weights), "a local pretrained state dict")))
    if (epochs := config.get("epochs")) is not None:
        text = f"{epochs}"
        best = _number(metrics.get("best_epoch"))
        best = best if best is not None else _number(epoch)
        if best is not None:
            text += f" (the weights served are from epoch {int(best) + 1}, the best by validation macro-F1)"
        facts.append(("Epochs", text))
    if (size := config.get("image_size")) is not None:
        text = f"{size} × {size} pixels"
        if (crop := _number(config.get("crop_pct"))) is not None:
            text += f" (evaluation: short side resized to {round(size / crop)} px, centre crop)"
        facts.append(("Input size", text))
    if (batch := config.get("batch_size")) is not None:
        facts.append(("Batch size", str(batch)))
    if (lr := config.get("lr")) is not None:
        parts = [str(config.get("optimizer", "SGD")), f"learning rate {lr:g}"]
        if (momentum := _number(config.get("momentum"))) is not None:
            parts.append(f"momentum {momentum:g}")
        if (decay := _number(config.get("weight_decay"))) is not None:
            parts.append(f"weight decay {decay:g}")
        facts.append(("Optimizer", ", ".join(parts)))
    if scheduler := config.get("scheduler"):
        text = str(scheduler)
        if scheduler == "step" and config.get("lr_step_size"):
            text += f": learning rate × {config.get('lr_gamma', 0.1):g} every {config['lr_step_size']} epochs"
        if warmup := _number(config.get("warmup_epochs")):
            text += f", after {warmup:g} epochs of linear warm-up"
        facts.append(("Learning-rate schedule", text))
    if (smoothing := _number(config.get("label_smoothing"))) is not None:
        facts.append(("Label smoothing", f"{smoothing:g}"))
    if config.get("val_data"):
        facts.append(("Data split", "a separate validation folder"))
    elif (fraction := _number(config.get("val_fraction"))) is not None:
        text = f"{fraction:.0%} of the images held out for validation, stratified by species"
        if config.get("group_pattern"):
            text += (
                f"; files whose names share the group of the pattern {config['group_pattern']} (e.g. frames of "
                "one video track) stay on one side, so validation images are not near-copies of training images"
            )
        facts.append(("Data split", text))
    if (seed := config.get("seed")) is not None:
        facts.append(("Random seed", str(seed)))
    if config.get("release_dtype"):
        facts.append(("Weights stored as", str(config["release_dtype"])))
    return facts


def class_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per class: ``label, display_name, common_name, scientific_name`` and, where the checkpoint has
    them, its validation ``precision, recall, f1, support``."""
    names = info.get("class_info") or {}
    per_class = (info.get("metrics") or {}).get("per_class") or {}
    rows = []
    for label in info["classes"]:
        known = names.get(label) or {}
        scores = per_class.get(label) if isinstance(per_class.get(label), dict) else {}
        rows.append(
            {
                "label": label,
                "display_name": known.get("display_name") or pretty_label(label),
                "common_name": known.get("common_name"),
                "scientific_name": known.get("scientific_name"),
                "precision": _number(scores.get("precision")),
                "recall": _number(scores.get("recall")),
                "f1": _number(scores.get("f1")),
                "support": _number(scores.get("support")),
            }
        )
    return rows


def shade_level(count: int, total: int, levels: int = SHADE_LEVELS) -> int:
    """Shade step of a confusion-matrix cell: 0 for no images, else 1 to ``levels`` by its share of ``total``
    (with 5 levels: up to 20% is 1, up to 40% is 2, ..., above 80% is 5)."""
    if count <= 0 or total <= 0:
        return 0
    return max(1, min(levels, math.ceil(levels * count / total - 1e-9)))


def confusion_rows(matrix: Any, classes: Sequence[str]) -> list[dict[str, Any]] | None:
    """The confusion matrix as table rows with shading classes, or None when absent or not C x C of counts.

    Each row: ``{"label", "total", "cells": [{"count", "share", "css"}]}`` for one true class; cells are the
    predicted classes in the order of ``classes``. ``css`` is ``cm-hit`` (diagonal) or ``cm-miss`` plus
    ``cm-N``, N the :func:`shade_level` of the cell's share of its row.
    """
    n = len(classes)
    if not isinstance(matrix, list) or len(matrix) != n:
        return None
    if not all(isinstance(row, list) and len(row) == n for row in matrix):
        logger.warning("ignoring a confusion matrix that is not %d x %d", n, n)
        return None
    rows = []
    for i, row in enumerate(matrix):
        counts = [int(c) if _number(c) is not None else 0 for c in row]
        total = sum(counts)
        cells = [
            {
                "count": count,
                "share": count / total if total else 0.0,
                "css": f"{'cm-hit' if i == j else 'cm-miss'} cm-{shade_level(count, total)}",
            }
            for j, count in enumerate(counts)
        ]
        rows.append({"label": classes[i], "total": total, "cells": cells})
    return rows


def verdict_thresholds(info: dict[str, Any]) -> dict[str, float]:
    """The thresholds behind this model's verdicts, ``{"not_sure": confidence, "unknown_species": novelty,
    "not_a_fish": subject score}``, from ``Predictor.summary()["verdict_thresholds"]`` (the confidence threshold
    alone where the summary has none). Checks the model does not have (None) are left out, as is a ``not_sure``
    threshold of 0 (never "not sure")."""
    recorded = info.get("verdict_thresholds")
    if not isinstance(recorded, dict):
        recorded = {"not_sure": info.get("confidence_threshold")}
    thresholds = {name: _number(recorded.get(name)) for name in ("not_sure", "unknown_species", "not_a_fish")}
    return {
        name: value
        for name, value in thresholds.items()
        if value is not None and not (name == "not_sure" and value <= 0)
    }


#: Rows of the model page's real-photo table: ``metrics["open_set"]`` key and what it holds.
OPEN_SET_SETS = (
    ("val", "Validation photos (video crops of its species)"),
    ("known_photos", "Photographs of species it knows"),
    ("unknown_photos", "Photographs of species it does not know"),
    ("not_subject", "Pictures of something else"),
)


def open_set_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdicts measured when the model was trained (``metrics["open_set"]``, see ``training.open_set``), one
    row per set it was measured on: ``{"name", "images", "species", "not_sure", "unknown_species", "not_a_fish",
    "top1", "confidently_wrong"}`` (fractions, None where the set has no such number)."""
    report = metrics.get("open_set")
    if not isinstance(report, dict):
        return []
    rows = []
    for key, name in OPEN_SET_SETS:
        values = report.get(key)
        if isinstance(values, dict):
            fields = ("images", "species", "not_sure", "unknown_species", "not_a_fish", "top1", "confidently_wrong")
            rows.append({"name": name, **{f: _number(values.get(f)) for f in fields}})
    return rows


@bp.get("/model")
def model_page() -> tuple[str, int]:
    """What the model knows and how well: its classes, how it was trained, validation metrics (with the
    calibration error and softmax temperature where the checkpoint records them), the thresholds of its
    verdicts, confusion matrix."""
    info = get_predictor().describe()
    metrics = info.get("metrics") or {}
    classes = class_rows(info)
    html = render_template(
        "model.html",
        model=info,
        metrics=metrics,
        serving=info.get("serving") or {},
        subject=model_subject(info),
        thresholds=verdict_thresholds(info),
        open_set=open_set_rows(metrics),
        classes=classes,
        has_per_class=any(row["f1"] is not None for row in classes),
        training=training_facts(info.get("config") or {}, metrics, info.get("epoch")),
        confusion=confusion_rows(metrics.get("confusion_matrix"), info["classes"]),
        short_names={row["label"]: row["common_name"] or row["display_name"] for row in classes},
    )
    return html, 200
