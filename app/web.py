"""The HTML pages' blueprint: the upload page (``GET /``, ``POST /``) and the model page (``GET /model``, whose
view-model is :mod:`app.model_page`), with what the upload page shows of a prediction (verdict headline, thumbnails,
the results table's CSV download).

The upload page works as a plain HTML form: one or several files in the field ``image``, posted to ``/``, give
a result card (one file) or a results table with a CSV download (several). ``static/app.js`` enhances the same
page (drag and drop, paste, previews, no reload through ``/api/predict``) where JavaScript runs. Uploaded
images are echoed back as in-memory JPEG thumbnails in ``data:`` URLs, so nothing is stored.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import logging
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, render_template, request
from PIL import Image
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge

from app.corrections.learning import memory_context
from app.inference import get_batcher, get_predictor
from app.model_page import model_page_context, model_subject
from app.uploads import (
    CROP_FIELD,
    EXPLAIN_FIELD,
    check_uploads,
    decode_upload,
    default_top_k,
    explained,
    form_limit_message,
)
from model.crop import Crop
from model.decoding import SUPPORTED_FORMATS_TEXT
from model.errors import ImageError
from model.results import CSV_LAYOUT, Prediction, csv_header, csv_row
from model.taxonomy import FamilyScore

logger = logging.getLogger(__name__)

bp = Blueprint("web", __name__)

#: Longest side of the thumbnail echoed back with a single result, in pixels.
THUMBNAIL_SIZE = 320
#: Longest side of the thumbnails in the results table of several files, in pixels.
TABLE_THUMBNAIL_SIZE = 96
#: Name of the CSV file that the results table downloads as.
CSV_FILENAME = "fish-species.csv"
#: The CSV's file column (``predict.py`` calls its own ``path``).
CSV_FILE_COLUMN = "file_name"


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
    :data:`CSV_FILE_COLUMN`), with Windows line ends for spreadsheets."""
    k = max((len(r.prediction.top_k) for r in results if r.prediction), default=0)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(csv_header(CSV_FILE_COLUMN, k))
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


def family_phrase(family: FamilyScore) -> str:
    """How the page names a family: ``"a damselfish (Pomacentridae)"``, or ``"one of the Pomacentridae"`` without
    a common name (``familyPhrase()`` in ``static/app.js`` says the same)."""
    if family.common_name:
        return f"{with_article(family.common_name)} ({family.name})"
    return f"one of the {family.name}"


def verdict_headline(prediction: Prediction, subject: str | None = None) -> str:
    """What the page says about one photo, by its ``verdict`` (``headline()`` in ``static/app.js`` says the same).

    ``species``: the species' common name (else its display name); ``not_sure``: "Not sure: maybe X or Y" (the
    two most probable classes), or, when its family is likely (:attr:`model.taxonomy.FamilyScore.likely`), "Not
    sure of the species: a damselfish (Pomacentridae), maybe X or Y"; ``unknown_species``: "Probably a fish this
    model does not know", or with a likely family "A damselfish (Pomacentridae), but probably none of the 6
    damselfish species this model knows"; ``not_a_fish``: "This does not look like a fish". Without a
    ``subject`` noun the generic verdicts are worded generically.
    """
    family = prediction.family if prediction.family is not None and prediction.family.likely else None
    if prediction.verdict == "species":
        return prediction.common_name or prediction.display_name
    if prediction.verdict == "not_sure":
        names = " or ".join(score.common_name or score.display_name for score in prediction.top_k[:2])
        return (
            f"Not sure of the species: {family_phrase(family)}, maybe {names}" if family else f"Not sure: maybe {names}"
        )
    if prediction.verdict == "unknown_species":
        if family:
            kind = f"{family.common_name} species" if family.common_name else "species of that family"
            known = f"none of the {family.species} {kind}" if family.species > 1 else f"not the one {kind}"
            phrase = family_phrase(family)
            return f"{phrase[:1].upper()}{phrase[1:]}, but probably {known} this model knows"
        if subject:
            return f"Probably {with_article(subject)} this model does not know"
        return "Probably none of the species this model knows"
    if subject:
        return f"This does not look like {with_article(subject)}"
    return "This does not look like anything this model was trained on"


def render_page(status: int = 200, **context: Any) -> tuple[str, int]:
    """Render ``index.html`` with the model summary, the limits, the CSV layout (for ``static/app.js``: the file
    column, :data:`model.results.CSV_LAYOUT` and the download's name) plus ``context`` (result, results, error,
    thumbnail...)."""
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
        top_k=default_top_k(current_app.config, len(info["classes"])),
        csv_layout={"file": CSV_FILE_COLUMN, **CSV_LAYOUT},
        csv_filename=CSV_FILENAME,
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


def display_filename(upload: FileStorage) -> str:
    """The uploaded file's base name as the browser sent it, shortened, for display only."""
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (name[:97] + "...") if len(name) > 100 else (name or "photo")


def classify_upload(
    upload: FileStorage, top_k: int, thumbnail_size: int, crop: Crop | None = None, explain: bool = False
) -> FileResult:
    """Decode and classify one upload (only ``crop`` of it, when given), shrunk on decoding as the API does (so
    both give the same answer); with ``explain``, with where the model looked (:func:`app.uploads.explained`).

    Raises:
        ImageError: the file is not a usable image (see :func:`model.decoding.decode_image`).
    """
    image = decode_upload(upload, crop)
    prediction = dataclasses.replace(get_batcher().predict([image], top_k=top_k)[0], crop=crop)
    if explain:
        prediction = explained(prediction, image)
    return FileResult(display_filename(upload), prediction, thumbnail_data_url(image, thumbnail_size))


@bp.post("/")
def classify() -> tuple[str, int]:
    """Classify the uploaded ``image`` file(s).

    One file: the species, its confidence and the top classes (or the error, with its status). Several: a
    results table with a CSV download; files that cannot be classified get their error in their row. Files are
    decoded and classified one after the other, so only one decoded image is in memory at a time.
    """
    # an ImageError re-renders the page with its status
    form = request.form
    uploads = check_uploads(request.files, crops=form.getlist(CROP_FIELD), explain=form.get(EXPLAIN_FIELD))
    if len(uploads.files) == 1:
        result = classify_upload(uploads.files[0], uploads.top_k, THUMBNAIL_SIZE, uploads.crops[0], uploads.explain)
        return render_page(result=result.prediction, thumbnail=result.thumbnail)
    results = []
    for upload, crop in zip(uploads.files, uploads.crops, strict=True):
        try:
            results.append(classify_upload(upload, uploads.top_k, TABLE_THUMBNAIL_SIZE, crop))
        except ImageError as exc:
            results.append(FileResult(display_filename(upload), error=exc.message))
    failed = sum(r.prediction is None for r in results)
    logger.info("classified %d of %d uploaded files", len(results) - failed, len(results))
    return render_page(results=results, csv_url=csv_data_url(results_csv(results)))


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


@bp.get("/model")
def model_page() -> tuple[str, int]:
    """What the model knows and how well: its classes, how it was trained, validation metrics (with the
    calibration error and softmax temperature where the checkpoint records them), the thresholds of its
    verdicts, confusion matrix (see :func:`app.model_page.model_page_context`), and what it learnt from its users'
    reviewed corrections (:func:`app.corrections.learning.memory_context`)."""
    context = model_page_context(get_predictor().describe())
    memory = memory_context(current_app._get_current_object())  # type: ignore[attr-defined]
    return render_template("model.html", **context, memory=memory), 200
