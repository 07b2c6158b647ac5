"""The HTML upload page: ``GET /`` shows the form, ``POST /`` classifies the upload and shows the result.

Plain HTML forms, no JavaScript; the uploaded image is echoed back as an in-memory JPEG thumbnail in a
``data:`` URL, so nothing is stored.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

from flask import Blueprint, current_app, render_template, request
from PIL import Image
from werkzeug.exceptions import RequestEntityTooLarge

from app import get_predictor
from app.images import SUPPORTED_FORMATS_TEXT, ImageError, decode_image

logger = logging.getLogger(__name__)

bp = Blueprint("web", __name__)

#: Longest side of the thumbnail echoed back on the result page, in pixels.
THUMBNAIL_SIZE = 320


def species_name(label: str) -> str:
    """A class name for people: underscores to spaces, first letter capitalised (``blue_tang`` -> ``Blue tang``)."""
    name = label.replace("_", " ").strip()
    return name[:1].upper() + name[1:]


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


def render_page(status: int = 200, **context: Any) -> tuple[str, int]:
    """Render ``index.html`` with the model description plus ``context`` (result, error, thumbnail)."""
    info = get_predictor().describe()
    max_upload = format_bytes(current_app.config["MAX_CONTENT_LENGTH"])
    html = render_template("index.html", model=info, formats=SUPPORTED_FORMATS_TEXT, max_upload=max_upload, **context)
    return html, status


@bp.app_template_filter("species")
def species_filter(label: str) -> str:
    """Jinja filter form of :func:`species_name`."""
    return species_name(label)


@bp.get("/")
def index() -> tuple[str, int]:
    """The upload form."""
    return render_page()


@bp.post("/")
def classify() -> tuple[str, int]:
    """Classify the uploaded ``image`` and show the species, its confidence and the top classes."""
    predictor = get_predictor()
    upload = request.files.get("image")
    if upload is not None and not upload.filename and not upload.content_length:
        raise ImageError("choose an image file to upload first", 400)  # the form was sent without a file
    image = decode_image(
        upload,
        max_pixels=current_app.config["MAX_IMAGE_PIXELS"],
        resize_short_side=predictor.preprocessing.resize_size,
    )
    prediction = predictor.predict([image], top_k=current_app.config["TOP_K"])[0]
    return render_page(result=prediction, thumbnail=thumbnail_data_url(image))


@bp.errorhandler(ImageError)
def image_error(error: ImageError) -> tuple[str, int]:
    """Re-render the page with the error message and its status."""
    return render_page(error.status, error=error.message)


@bp.errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge) -> tuple[str, int]:
    """Re-render the page saying how big an upload may be."""
    limit = format_bytes(current_app.config["MAX_CONTENT_LENGTH"])
    return render_page(413, error=f"the file is too large: uploads may be up to {limit}")
