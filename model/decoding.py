"""Decoding image files into upright RGB Pillow images, for training, evaluation, ``predict.py`` and serving.

The one place that knows which exceptions a broken or hostile file raises while Pillow decodes it
(:data:`DECODE_ERRORS`) and how a file becomes the RGB image the transforms expect (:func:`open_image`: EXIF
orientation applied, any mode converted by :func:`model.transforms.to_rgb`). ``training.data``'s datasets (and so
``evaluate.py`` and ``predict.py``) decode files with it; the web app (``app.images``) adds the checks that untrusted
uploads need on top and catches the same errors.
"""

from __future__ import annotations

import os
import struct

from PIL import Image, ImageOps

from model.transforms import to_rgb

#: What Pillow raises for a file it cannot decode: not an image (``UnidentifiedImageError`` is an ``OSError``),
#: truncated or corrupt data (``OSError``, ``ValueError``, ``EOFError``, ``SyntaxError``, ``IndexError`` and
#: ``struct.error`` from the format plugins' parsers), or more pixels than ``Image.MAX_IMAGE_PIXELS`` allows.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    EOFError,
    SyntaxError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode the image file at ``path``: upright (EXIF orientation applied, as phones record it), 8-bit RGB,
    fully loaded (the file is closed on return).

    Raises:
        One of :data:`DECODE_ERRORS`: the file is missing, not an image, or cannot be decoded.
    """
    with Image.open(path) as image:
        upright = to_rgb(ImageOps.exif_transpose(image))
        upright.load()
    return upright


def is_readable(path: str | os.PathLike[str]) -> bool:
    """True when Pillow recognises ``path`` as an image and its structure checks out (``Image.verify``; the
    pixels are not decoded, so this is cheap enough for scanning a folder)."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except DECODE_ERRORS:
        return False
