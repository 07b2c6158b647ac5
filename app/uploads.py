"""Uploads under the current app's limits, for both blueprints: decoding one file within the app's decode slots,
the request's deadline and the model's size, and the message for a form that Werkzeug refused.

:mod:`app.images` decodes bytes with no app around; this module adds what needs the app (its config, its
predictor, its decode slots), so the page and the API treat an upload the same way and give the same answer.
"""

from __future__ import annotations

import math
import time

from flask import current_app, g, request
from PIL import Image
from werkzeug.datastructures import FileStorage

from app.images import ImageError, decode_image
from app.inference import decode_slots, get_predictor


def start_deadline() -> None:
    """Start the current request's deadline for its work (``REQUEST_DEADLINE_S`` from now), which
    :func:`decode_upload` checks; registered to run before every request."""
    g.deadline = time.monotonic() + float(current_app.config["REQUEST_DEADLINE_S"])


def decode_upload(upload: FileStorage | None) -> Image.Image:
    """Decode one uploaded file for the current app's model: ``MAX_IMAGE_PIXELS`` enforced, big photos shrunk on
    decoding to the model's resize size (what the API and the page both do, so they give the same answer).

    Raises:
        app.images.ImageError: the file is not a usable image (see :func:`app.images.decode_image`), or 503 when
            ``MAX_CONCURRENT_DECODES`` decodes are already running in this worker and none ends within
            ``DECODE_WAIT_S`` seconds (each decode costs at most about a second of CPU and bounded memory, so this
            bounds a worker's memory whatever its request threads receive), or when the request is past its
            ``REQUEST_DEADLINE_S`` (no decode starts after the deadline, and none waits beyond it).
    """
    size = get_predictor().preprocessing.resize_size
    slots = decode_slots()
    left = g.get("deadline", math.inf) - time.monotonic()
    if left <= 0:
        raise ImageError("the request took too long: send fewer or smaller photos at a time", 503)
    if not slots.acquire(timeout=min(float(current_app.config["DECODE_WAIT_S"]), left)):
        raise ImageError("the server is busy decoding other photos: try again in a moment", 503)
    try:
        return decode_image(
            upload, max_pixels=current_app.config["MAX_IMAGE_PIXELS"], resize_short_side=size, reduce_to=size
        )
    finally:
        slots.release()


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
