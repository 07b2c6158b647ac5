"""Uploaded image files to RGB ``PIL.Image`` objects, in memory, with user-facing errors.

Uploads are never written to disk and their file names are never used: :class:`InMemoryRequest` keeps
multipart file parts in memory (Flask's ``MAX_CONTENT_LENGTH`` bounds their size), and :func:`decode_image`
decodes the bytes. Every way an upload can be wrong becomes an :class:`ImageError` carrying the HTTP status
to answer with, so routes never turn bad user input into a 500.
"""

from __future__ import annotations

import io
import logging
import struct
from typing import IO

from flask import Request
from PIL import Image, ImageOps, UnidentifiedImageError
from werkzeug.datastructures import FileStorage

from model.transforms import to_rgb

logger = logging.getLogger(__name__)

#: Pillow formats we decode (JPEG includes phones' multi-picture MPO files); anything else (EPS, PSD, ICO...)
#: is refused before its decoder runs.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
#: How formats are named to users in error messages.
SUPPORTED_FORMATS_TEXT = "JPEG, PNG, GIF, BMP, WebP or TIFF"
#: Default cap on decoded pixels (width x height): 50 megapixels, about 150 MB as 8-bit RGB.
DEFAULT_MAX_PIXELS = 50_000_000
#: Default cap on the number of images (``image`` fields) in one API request.
DEFAULT_MAX_IMAGES_PER_REQUEST = 16

#: Leading bytes of the supported formats (BMP's two-letter ``BM`` is left out: too likely in plain text). A file
#: that starts with one of these but that Pillow cannot open is a corrupt image (400), not an unsupported one (415).
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}

# What Pillow's decoders raise on broken files (truncated data, bad chunks, impossible headers).
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, IndexError, struct.error)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageError(Exception):
    """An upload that cannot be classified.

    Args:
        message: explanation for the user (no internals, no file names).
        status: HTTP status code to answer with (400, 413 or 415).
        index: position (from 0) of the offending file among the request's ``image`` fields, when the request
            has several.
    """

    def __init__(self, message: str, status: int = 400, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.index = index


def sniff_format(data: bytes) -> str | None:
    """The supported format whose signature ``data`` starts with (``"JPEG"``, ``"PNG"``...), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for fmt, signatures in _SIGNATURES.items():
        if data.startswith(signatures):
            return fmt
    return None


class InMemoryRequest(Request):
    """Flask request whose multipart file parts stay in memory instead of spooling to a temporary file."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def decode_image(
    upload: FileStorage | None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize_short_side: int | None = None,
    reduce_to: int | None = None,
) -> Image.Image:
    """Decode an uploaded file into an upright 8-bit RGB image.

    Animated images give their first frame; the EXIF orientation is applied; transparency is composited on
    white (see :func:`model.transforms.to_rgb`).

    Args:
        upload: the multipart file part (``request.files.get("image")``), or None when it is missing.
        max_pixels: refuse images with more than this many pixels (width x height), before decoding them.
        resize_short_side: when given, also refuse images so elongated that scaling their short side to this
            many pixels (as the eval transform does) would exceed ``max_pixels``.
        reduce_to: when given, an image whose short side is at least twice this many pixels is returned
            shrunk by an integer factor, its short side kept at ``reduce_to`` pixels or more: JPEGs are
            decoded at 1/2, 1/4 or 1/8 scale by the JPEG decoder itself (``Image.draft``), which makes a
            12-megapixel photo cheap, and any image still that large is box-filtered (``Image.reduce``). Pass
            the model's resize size (``Preprocessing.resize_size``): the eval transform then resizes a smaller
            image to the same size, and the result differs from full-size decoding only by resampling noise.

    Returns:
        A fully loaded ``PIL.Image`` in mode ``"RGB"``.

    Raises:
        ImageError: 400 for a missing or empty upload or a truncated/corrupt image (including a file with the
            signature of a supported format whose header is broken), 413 for an image with too many pixels
            (decompression bomb) or too elongated, 415 for data that is not an image in a supported format.
    """
    if upload is None:
        raise ImageError("no image uploaded: send the file in the multipart form field 'image'", 400)
    data = upload.read()
    if not data:
        raise ImageError("the uploaded file is empty", 400)
    try:
        # Pillow's own bomb check (global Image.MAX_IMAGE_PIXELS, untouched) can raise or warn here.
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except _BOMB_ERRORS as exc:
        raise ImageError("image is too large: it has too many pixels to decode safely", 413) from exc
    except UnidentifiedImageError as exc:
        if (fmt := sniff_format(data)) is not None:
            raise ImageError(f"corrupt {fmt} file: its header cannot be read", 400) from exc
        raise ImageError(f"not a supported image: upload a {SUPPORTED_FORMATS_TEXT} file", 415) from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"corrupt image file: {exc}", 400) from exc

    width, height = image.size
    if width * height > max_pixels:
        limit = f"{max_pixels / 1e6:g} megapixels"
        raise ImageError(f"image is too large: {width} x {height} pixels, the limit is {limit}", 413)
    if resize_short_side is not None and min(width, height) > 0:
        scale = resize_short_side / min(width, height)
        if scale > 1 and width * height * scale * scale > max_pixels:
            raise ImageError(
                f"image shape {width} x {height} is too elongated to classify; crop it closer to the fish", 413
            )
    try:
        if reduce_to is not None:
            image.draft("RGB", (reduce_to, reduce_to))  # JPEG only (a no-op for other formats), before load
        image.load()  # decodes the first frame; raises on truncated or corrupt data
        image = to_rgb(ImageOps.exif_transpose(image))
        if reduce_to is not None and (factor := min(image.size) // reduce_to) >= 2:
            image = image.reduce(factor)
        return image
    except _BOMB_ERRORS as exc:
        raise ImageError("image is too large: it has too many pixels to decode safely", 413) from exc
    except _DECODE_ERRORS as exc:
        logger.info("refused an upload that %s could not decode: %s", image.format, exc)
        raise ImageError(f"truncated or corrupt {image.format} image: {exc}", 400) from exc
