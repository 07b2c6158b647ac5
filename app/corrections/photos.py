"""What a kept photo is: an upright RGB JPEG, at most 1600 pixels on its longest side, without any metadata.

A user's photo may carry where it was taken (EXIF GPS), the camera's serial number, an XMP history or a colour
profile; none of it is kept. The photo is drawn again from its pixels alone (EXIF orientation applied first) and
encoded anew, so nothing of the original file but the picture reaches the database. It is named by the SHA-256 of
those bytes, never by the name a client gave it.
"""

from __future__ import annotations

import hashlib
import io
import logging

from PIL import Image, ImageOps

from model.decoding import to_rgb

logger = logging.getLogger(__name__)

#: Longest side of a kept photo, in pixels: enough to review it and to train on it again.
MAX_SIDE = 1600
#: JPEG quality of a kept photo (Pillow's scale, 1-95).
JPEG_QUALITY = 90


def reencode_photo(image: Image.Image, max_side: int = MAX_SIDE) -> tuple[bytes, str, int, int]:
    """Re-encode ``image`` as the photo the corrections keep: EXIF orientation applied (upright), 8-bit RGB
    (transparency composited onto white, as the model sees it), shrunk to at most ``max_side`` pixels on its longest
    side (never enlarged), JPEG quality 90 with no EXIF, XMP, ICC profile or comment.

    Args:
        image: a decoded Pillow image, e.g. what the app's decoder gave for the upload; left unchanged.
        max_side: the longest side of the result, in pixels.

    Returns:
        ``(jpeg, sha256, width, height)``: the JPEG bytes, their SHA-256 as 64 lowercase hex digits, and the size of
        the JPEG in pixels.

    Raises:
        ValueError: ``max_side`` is below 1.
        OSError: Pillow cannot read ``image``'s pixels (e.g. a truncated file opened lazily).
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1 pixel, got {max_side}")
    upright = to_rgb(ImageOps.exif_transpose(image))
    if max(upright.size) > max_side:
        scale = max_side / max(upright.size)
        size = (max(1, round(upright.width * scale)), max(1, round(upright.height * scale)))
        upright = upright.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    # Only the pixels: a new image owns neither the source's info dict (EXIF, XMP, ICC, comments) nor its format.
    clean = Image.frombytes("RGB", upright.size, upright.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    jpeg = buffer.getvalue()
    return jpeg, hashlib.sha256(jpeg).hexdigest(), clean.width, clean.height
