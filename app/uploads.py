"""Uploads under the current app's limits, the one check for both blueprints (the page and the API): which files
a request sends and how many (:func:`check_uploads`), its ``top_k`` (:func:`default_top_k` clips TOP_K once),
decoding each file within the app's decode slots, the request's deadline and the model's size
(:func:`decode_upload`, :func:`decode_uploads`), and the message for a form that Werkzeug refused.

:mod:`model.decoding` decodes bytes with no app around and :mod:`model.decoder_pool` runs it in processes with a
deadline; this module adds what needs the app (its config, its predictor, its decoder processes and their slots), so
the page and the API treat an upload the same way and give the same answer.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request
from PIL import Image
from werkzeug.datastructures import FileStorage, MultiDict

from app.inference import decode_slots, get_decoder, get_predictor
from model.crop import Crop
from model.errors import ImageError
from model.explain import explain
from model.results import Prediction

#: The multipart field of the images, on the page's form and in the API.
IMAGE_FIELD = "image"
#: The optional field of their crops (``x,y,w,h``), in the order of the images, or once for one image.
CROP_FIELD = "crop"
#: The optional field (or query parameter) that asks where the model looked: ``true`` for one image's heat map.
EXPLAIN_FIELD = "explain"
#: Default cap on the number of images (``image`` fields) in one request, to the page or the API.
DEFAULT_MAX_IMAGES_PER_REQUEST = 16


@dataclass(frozen=True)
class Uploads:
    """A request's checked uploads.

    Attributes:
        files: the ``image`` fields, in order: at least one, at most ``MAX_IMAGES_PER_REQUEST``.
        top_k: how many classes to list per image, in ``[1, number of classes]``.
        crops: one per file: the part of the upright photo to classify, or None for the whole photo.
        explain: whether the answer includes where the model looked (one image only).
    """

    files: list[FileStorage]
    top_k: int
    crops: list[Crop | None]
    explain: bool = False


def default_top_k(config: Mapping[str, Any], num_classes: int) -> int:
    """The configured ``TOP_K`` clipped to ``[1, num_classes]``: what the page lists, the API's default and the
    OpenAPI document's ``top_k`` default."""
    return max(1, min(config["TOP_K"], num_classes))


def parse_top_k(value: str | None, default: int, num_classes: int) -> int:
    """The ``top_k`` request parameter as an int in ``[1, num_classes]``.

    Args:
        value: the raw parameter, or None when absent (then ``default`` is used).
        default: :func:`default_top_k`.
        num_classes: how many classes the model has.

    Raises:
        ImageError: 400 when ``value`` is not an integer in range.
    """
    if value is None or value.strip() == "":
        return default
    try:
        top_k = int(value)
    except ValueError:
        top_k = 0
    if not 1 <= top_k <= num_classes:
        raise ImageError(f"top_k must be an integer from 1 to {num_classes}, got {value[:20]!r}", 400)
    return top_k


def parse_crops(values: list[str], images: int) -> list[Crop | None]:
    """The ``crop`` fields of a request, one per image: none (whole photos), one per image in the order of the
    ``image`` fields (an empty one for a whole photo), or one for a request of one image.

    Raises:
        ImageError: 400 naming the field when their number does not fit or one is malformed, empty or reaches
            outside the image (see :meth:`model.crop.Crop.parse`).
    """
    if not values:
        return [None] * images
    if len(values) != images:
        raise ImageError(
            f"{CROP_FIELD}: give one per image, in the order of the '{IMAGE_FIELD}' fields (an empty one for a whole "
            f"photo); got {len(values)} for {images} image(s)",
            400,
        )
    crops: list[Crop | None] = []
    for index, value in enumerate(values):
        try:
            crops.append(Crop.parse(value) if value.strip() else None)
        except ValueError as exc:
            where = f" {index + 1} of {images}" if images > 1 else ""
            raise ImageError(f"{CROP_FIELD}{where}: {exc} (x,y,w,h as fractions of the upright photo)", 400) from exc
    return crops


def parse_explain(value: str | None, images: int) -> bool:
    """The ``explain`` parameter: ``true``/``1``/``on``/``yes`` or ``false``/``0``/``off``/``no`` (absent or empty:
    false). An explanation costs a forward and a backward pass of the network, so a request gets at most one.

    Raises:
        ImageError: 400 for another value, or for ``true`` with more than one image.
    """
    text = (value or "").strip().lower()
    if text in ("", "false", "0", "off", "no"):
        return False
    if text not in ("true", "1", "on", "yes"):
        raise ImageError(f"{EXPLAIN_FIELD} must be true or false, got {value[:20]!r}", 400)
    if images > 1:
        raise ImageError(
            f"{EXPLAIN_FIELD}: at most one explanation per request: send one image with {EXPLAIN_FIELD}=true "
            f"(this request has {images})",
            400,
        )
    return True


def _left_empty(upload: FileStorage) -> bool:
    """Whether ``upload`` is what a browser sends for a file input with no file chosen: no file name, no bytes."""
    if upload.filename:
        return False
    start = upload.stream.tell()
    empty = not upload.stream.read(1)
    upload.stream.seek(start)
    return empty


def check_uploads(
    files: MultiDict[str, FileStorage],
    top_k: str | None = None,
    crops: list[str] | None = None,
    explain: str | None = None,
) -> Uploads:
    """The one check of what a request uploads, for the page and the API alike (before any decoding).

    Args:
        files: the request's files (``request.files``); the images are its :data:`IMAGE_FIELD` fields.
        top_k: the raw ``top_k`` parameter, or None for :func:`default_top_k`.
        crops: the raw :data:`CROP_FIELD` fields (see :func:`parse_crops`), or None.
        explain: the raw :data:`EXPLAIN_FIELD` parameter (see :func:`parse_explain`), or None.

    Returns:
        The files, in order, ``top_k``, the crops and whether to explain.

    Raises:
        ImageError: 400 for a bad ``top_k`` (see :func:`parse_top_k`), crop (:func:`parse_crops`) or ``explain``
            (:func:`parse_explain`), for no
            ``image`` field, or for only the empty part a browser sends when no file was chosen; 413 for more than
            ``MAX_IMAGES_PER_REQUEST`` files.
    """
    num_classes = len(get_predictor().class_names)
    checked_top_k = parse_top_k(top_k, default_top_k(current_app.config, num_classes), num_classes)
    uploads = files.getlist(IMAGE_FIELD)
    if not uploads:
        raise ImageError(f"no image uploaded: send the file(s) in the multipart form field '{IMAGE_FIELD}'", 400)
    if all(_left_empty(upload) for upload in uploads):
        raise ImageError("choose an image file to upload first", 400)
    limit = current_app.config["MAX_IMAGES_PER_REQUEST"]
    if len(uploads) > limit:
        raise ImageError(f"too many images: {len(uploads)} in one request, the limit is {limit}", 413)
    return Uploads(uploads, checked_top_k, parse_crops(crops or [], len(uploads)), parse_explain(explain, len(uploads)))


def explained(prediction: Prediction, image: Image.Image) -> Prediction:
    """``prediction`` with its ``explanation``: the Grad-CAM heat map (:func:`model.explain.explain`, on the torch
    network whatever the serving backend) of its most probable class over ``image``, the (cropped) photo it
    classified, as a PNG data URL."""
    predictor = get_predictor()
    heat_map = explain(predictor, image, class_index=predictor.class_names.index(prediction.label))
    return dataclasses.replace(prediction, explanation=heat_map.png_data_url)


def start_deadline() -> None:
    """Start the current request's deadline for its work (``REQUEST_DEADLINE_S`` from now), which
    :func:`decode_upload` checks; registered to run before every request."""
    g.deadline = time.monotonic() + float(current_app.config["REQUEST_DEADLINE_S"])


def decode_upload(upload: FileStorage | None, crop: Crop | None = None) -> Image.Image:
    """Decode one uploaded file for the current app's model, in one of the app's decoder processes (its deadline
    and memory limit, :mod:`model.decoder_pool`): ``MAX_IMAGE_PIXELS`` enforced, big photos shrunk on decoding to
    the model's resize size (what the API and the page both do, so they give the same answer); with ``crop``,
    only that part of the upright photo, at the resolution the model needs.

    Raises:
        model.errors.ImageError: the file is not a usable image (see :func:`model.decoding.decode_image`), 413
            when its decode passes ``DECODE_TIMEOUT_S`` or ``DECODE_MEMORY_MB``, or 503 when
            ``MAX_CONCURRENT_DECODES`` decodes are already running in this worker and none ends within
            ``DECODE_WAIT_S`` seconds, or when the request is past its ``REQUEST_DEADLINE_S`` (no decode starts
            after the deadline, and none waits beyond it).
    """
    if upload is None:
        raise ImageError(f"no image uploaded: send the file in the multipart form field '{IMAGE_FIELD}'", 400)
    data = upload.read()
    size = get_predictor().preprocessing.resize_size
    slots = decode_slots()
    left = g.get("deadline", math.inf) - time.monotonic()
    if left <= 0:
        raise ImageError("the request took too long: send fewer or smaller photos at a time", 503)
    if not slots.acquire(timeout=min(float(current_app.config["DECODE_WAIT_S"]), left)):
        raise ImageError("the server is busy decoding other photos: try again in a moment", 503)
    try:
        return get_decoder().decode(
            data, max_pixels=current_app.config["MAX_IMAGE_PIXELS"], resize_short_side=size, reduce_to=size, crop=crop
        )
    finally:
        slots.release()


def decode_uploads(uploads: list[FileStorage], crops: list[Crop | None] | None = None) -> list[Image.Image]:
    """Decode the files of one request, in order, stopping at the first that cannot be classified.

    Each image is shrunk right after decoding to what the model needs (see :func:`decode_upload`), so a request
    holds at most one full-size image in memory at a time.

    Args:
        uploads: the request's checked files (:attr:`Uploads.files`).
        crops: their crops (:attr:`Uploads.crops`), or None for whole photos.

    Returns:
        One RGB image per upload.

    Raises:
        ImageError: the error of the first bad file (see :func:`model.decoding.decode_image`), its message prefixed
            with ``image N of M:`` (N counted from 1) and its ``index`` (from 0) set when the request has several
            files.
    """
    images = []
    for index, (upload, crop) in enumerate(zip(uploads, crops or [None] * len(uploads), strict=True)):
        try:
            images.append(decode_upload(upload, crop))
        except ImageError as exc:
            if len(uploads) == 1:
                raise
            raise ImageError(f"image {index + 1} of {len(uploads)}: {exc.message}", exc.status, index=index) from exc
    return images


def form_limit_message() -> str | None:
    """Why Werkzeug refused a request body that is within ``MAX_CONTENT_LENGTH`` (so not for its size): too many
    form parts (``MAX_FORM_PARTS``, 1000 by default) or a text field over ``MAX_FORM_MEMORY_SIZE`` (500 kB); None
    when the body itself is over the size limit or its length is unknown. Werkzeug raises the same 413 for all
    three, so this tells them apart by the declared length."""
    limit, length = current_app.config["MAX_CONTENT_LENGTH"], request.content_length
    if length is None or (limit is not None and length > limit):
        return None
    parts = current_app.config.get("MAX_FORM_PARTS") or 1000
    field = current_app.config.get("MAX_FORM_MEMORY_SIZE") or 500_000
    return (
        f"the form has too many fields or too long a text field: at most {parts} fields, and {field} bytes in "
        "a field that is not a file; send the photos in 'image' fields"
    )
