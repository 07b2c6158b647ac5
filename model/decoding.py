"""Image files to upright 8-bit RGB Pillow images: trusted files for training and evaluation, untrusted bytes for
serving and ``predict.py``.

The one place that knows which exceptions a broken or hostile file raises while Pillow decodes it
(:data:`DECODE_ERRORS`) and how any image becomes the RGB image the transforms expect (:func:`to_rgb`, EXIF
orientation applied). Two entry points:

- :func:`open_image`: a file of a dataset the user trains or evaluates on (``training.data``, ``evaluate.py``).
- :func:`decode_image`: bytes from anyone (an upload, a folder given to ``predict.py``), under limits: supported
  formats only, a pixel cap checked from the header before decoding, the JPEG structure walk of
  :mod:`model.jpeg_check` for anything that starts like a JPEG, caps for the costly variants (WebP, RLE BMP), and
  big photos shrunk while decoding to what the model needs. Every refusal is an :class:`model.errors.ImageError`
  with its HTTP status. Run it in a decoder process of :mod:`model.decoder_pool`, which bounds its time and
  memory whatever the file does.

Imports Pillow only (numpy when a 16-bit image is converted), so that decoder processes stay small.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct

from PIL import Image, ImageOps, UnidentifiedImageError

from model.crop import Crop
from model.errors import ImageError
from model.jpeg_check import check_jpeg_structure

logger = logging.getLogger(__name__)

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
#: Pillow formats we decode (JPEG includes phones' multi-picture MPO files); anything else (EPS, PSD, ICO...)
#: is refused before its decoder runs.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
#: How formats are named to users in error messages.
SUPPORTED_FORMATS_TEXT = "JPEG, PNG, GIF, BMP, WebP or TIFF"
#: Default cap on decoded pixels (width x height): 50 megapixels, about 150 MB as 8-bit RGB.
DEFAULT_MAX_PIXELS = 50_000_000
#: Largest BMP with RLE4 or RLE8 compression, in pixels (width x height): Pillow decodes these in pure Python (about
#: 0.1 s per megapixel, more for adversarial files), uncompressed BMPs are not affected. 4 megapixels.
MAX_RLE_BMP_PIXELS = 4_000_000
#: Most bytes of RLE data a BMP may have: each 2-byte RLE command is a step of Pillow's pure-Python decoder, even
#: commands that draw nothing (a file of end-of-line commands), so the data size bounds the CPU time too.
MAX_RLE_BMP_BYTES = 2 * 2**20
#: WebP decoding (libwebp's animation decoder, which Pillow uses for every WebP file) holds about 16 bytes per
#: pixel of canvas (two RGBA canvases in libwebp, the frame as bytes, Pillow's image) where other formats hold
#: about 4, so WebP images get this fraction of the pixel limit (12.5 of the default 50 megapixels, ~200 MB).
WEBP_PIXEL_FRACTION = 4


#: Leading bytes of the supported formats (BMP's two-letter ``BM`` is left out: too likely in plain text). A file
#: that starts with one of these but that Pillow cannot open is a corrupt image (400), not an unsupported one (415).
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}

#: Pillow modes of 16- and 32-bit integer grayscale images, reduced before their conversion to 8 bits.
_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: Modes :meth:`PIL.Image.Image.resize` box-filters without converting (``Image.reduce`` supports none of I;16*).
_RESIZABLE_INTEGER_MODES = ("I;16", "I;16L", "I")


#: What Pillow raises when an image has more pixels than ``Image.MAX_IMAGE_PIXELS`` allows.
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto ``background``.

    Grayscale, palette, 16-bit, CMYK and RGBA images all become 8-bit RGB, so training and serving see the
    same kind of input.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np  # only here: decoder processes import Pillow alone

        # 16/32-bit integer grayscale: scale to 8 bits rather than clip.
        arr = np.asarray(image, dtype=np.float32)
        scale = 255.0 / (65535.0 if arr.max(initial=0) > 255 else 255.0)
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode the image file at ``path``: upright (EXIF orientation applied, as phones record it), 8-bit RGB,
    fully loaded (the file is closed on return). For the user's own datasets; bytes from others go through
    :func:`decode_image`.

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


def sniff_format(data: bytes) -> str | None:
    """The supported format whose signature ``data`` starts with (``"JPEG"``, ``"PNG"``...), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for fmt, signatures in _SIGNATURES.items():
        if data.startswith(signatures):
            return fmt
    return None


def _open_header(data: bytes) -> Image.Image:
    """Open ``data`` with Pillow, restricted to :data:`SUPPORTED_FORMATS`: the header is parsed, no pixels are
    decoded. Returns the lazily loaded image.

    Raises:
        ImageError: 413 when Pillow's own bomb check fires, 400 for the signature of a supported format whose
            header is broken or a header that raises while parsed, 415 for anything else Pillow cannot identify.
    """
    try:
        # Pillow's own bomb check (global Image.MAX_IMAGE_PIXELS, untouched) can raise or warn here.
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except _BOMB_ERRORS as exc:
        raise ImageError("image is too large: it has too many pixels to decode safely", 413) from exc
    except UnidentifiedImageError as exc:
        if (fmt := sniff_format(data)) is not None:
            raise ImageError(f"corrupt {fmt} file: its header cannot be read", 400) from exc
        raise ImageError(f"not a supported image: upload a {SUPPORTED_FORMATS_TEXT} file", 415) from exc
    except DECODE_ERRORS as exc:
        logger.info("refused an image whose header could not be read: %s", exc)
        raise ImageError("corrupt image file: its header cannot be read", 400) from exc


def _check_header_limits(image: Image.Image, data: bytes, *, max_pixels: int, resize_short_side: int | None) -> None:
    """Refuse, from the size in ``image``'s header (opened from ``data``, not decoded), what would cost too much
    to decode or classify, in this order: more than ``max_pixels`` pixels, a WebP over its fraction of them
    (:data:`WEBP_PIXEL_FRACTION`), an RLE-compressed BMP over :data:`MAX_RLE_BMP_PIXELS` or
    :data:`MAX_RLE_BMP_BYTES`, and an image too elongated for its short side to be scaled to
    ``resize_short_side`` within ``max_pixels``.

    Raises:
        ImageError: 413 for the first limit exceeded.
    """
    width, height = image.size
    if width * height > max_pixels:
        limit = f"{max_pixels / 1e6:g} megapixels"
        raise ImageError(f"image is too large: {width} x {height} pixels, the limit is {limit}", 413)
    if image.format == "WEBP" and width * height > max_pixels // WEBP_PIXEL_FRACTION:
        limit = f"{max_pixels // WEBP_PIXEL_FRACTION / 1e6:g} megapixels"
        raise ImageError(f"image is too large: {width} x {height} pixels, the limit for WebP is {limit}", 413)
    if image.format == "BMP" and image.info.get("compression") in (1, 2):  # BI_RLE8, BI_RLE4
        rle_bytes = len(data) - (image.tile[0].offset if image.tile else 0)
        if width * height > MAX_RLE_BMP_PIXELS or rle_bytes > MAX_RLE_BMP_BYTES:
            raise ImageError(
                f"image is too large: {width} x {height} pixels of RLE-compressed BMP, the limit is"
                f" {MAX_RLE_BMP_PIXELS / 1e6:g} megapixels and {MAX_RLE_BMP_BYTES // 2**20} MiB for this"
                " compression; send it as PNG or JPEG",
                413,
            )
    if resize_short_side is not None and min(width, height) > 0:
        scale = resize_short_side / min(width, height)
        if scale > 1 and width * height * scale * scale > max_pixels:
            raise ImageError(
                f"image shape {width} x {height} is too elongated to classify; crop it closer to the fish", 413
            )


def _decode_upright_rgb(image: Image.Image, reduce_to: int | None, crop: Crop | None = None) -> Image.Image:
    """Decode the first frame of the opened ``image``, apply its EXIF orientation and convert it to RGB, shrunk
    by an integer factor when ``reduce_to`` is given (see :func:`decode_image`): JPEGs through ``Image.draft``,
    16/32-bit grayscale box-filtered in its integer mode before :func:`to_rgb`, others ``Image.reduce``-d after.
    With ``crop``, the upright image is cropped before it is shrunk, and ``reduce_to`` applies to the crop.

    Returns:
        A fully loaded ``PIL.Image`` in mode ``"RGB"``.

    Raises:
        ImageError: 413 when Pillow's bomb check fires while decoding, 400 for truncated or corrupt data.
    """
    try:
        if reduce_to is not None:  # the crop's short side must keep reduce_to pixels: decode that much more
            draft = math.ceil(reduce_to / min(crop.w, crop.h)) if crop else reduce_to
            image.draft("RGB", (draft, draft))  # JPEG only (a no-op for other formats), before load
        image.load()  # decodes the first frame only; raises on truncated or corrupt data
        ImageOps.exif_transpose(image, in_place=True)  # in place: not a full-size copy when nothing to turn
        if crop is not None:
            image = image.crop(crop.box(image.size))
        factor = min(image.size) // reduce_to if reduce_to else 1
        if factor >= 2 and image.mode in _INTEGER_MODES:
            # 16/32-bit grayscale: shrink in its integer mode, so to_rgb's float conversion sees a small image.
            if image.mode not in _RESIZABLE_INTEGER_MODES:
                image = image.convert("I")
            reduced = (math.ceil(image.width / factor), math.ceil(image.height / factor))
            image, factor = image.resize(reduced, Image.Resampling.BOX), 1
        image = to_rgb(image)
        if factor >= 2:
            image = image.reduce(factor)
        return image
    except _BOMB_ERRORS as exc:
        raise ImageError("image is too large: it has too many pixels to decode safely", 413) from exc
    except DECODE_ERRORS as exc:
        logger.info("refused an image that %s could not decode: %s", image.format, exc)
        raise ImageError(f"truncated or corrupt {image.format} image: its data cannot be decoded", 400) from exc


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize_short_side: int | None = None,
    reduce_to: int | None = None,
    crop: Crop | None = None,
) -> Image.Image:
    """Decode untrusted image bytes into an upright 8-bit RGB image, under the limits of this module.

    Animated images give their first frame; the EXIF orientation is applied; transparency is composited on
    white (see :func:`to_rgb`). Anything that starts like a JPEG (``FF D8``, so JPEG and MPO alike) is walked by
    :func:`model.jpeg_check.check_jpeg_structure` before Pillow parses it. This bounds what a file can cost by
    its header; :class:`model.decoder_pool.DecoderPool` runs it in a process with a deadline and a memory limit,
    which bound everything else.

    Args:
        data: the file's bytes.
        max_pixels: refuse images with more than this many pixels (width x height), before decoding them.
        resize_short_side: when given, also refuse images so elongated that scaling their short side to this
            many pixels (as the eval transform does) would exceed ``max_pixels``.
        reduce_to: when given, an image whose short side is at least twice this many pixels is returned
            shrunk by an integer factor, its short side kept at ``reduce_to`` pixels or more: JPEGs are
            decoded at 1/2, 1/4 or 1/8 scale by the JPEG decoder itself (``Image.draft``), which makes a
            12-megapixel photo cheap, and any image still that large is box-filtered (``Image.reduce``). Pass
            the model's resize size (``Preprocessing.resize_size``): the eval transform then resizes a smaller
            image to the same size, and the result differs from full-size decoding only by resampling noise.
        crop: when given, only that part of the upright image (:class:`model.crop.Crop`) is returned, decoded at
            the resolution ``reduce_to`` needs for the crop (a narrow crop is refused like an elongated image).

    Returns:
        A fully loaded ``PIL.Image`` in mode ``"RGB"``.

    Raises:
        ImageError: 400 for empty data or a truncated/corrupt image (including a file with the signature of a
            supported format whose header is broken, and a JPEG refused by its structure walk), 413 for an image
            with too many pixels (decompression bomb; WebP gets a quarter of ``max_pixels``, RLE-compressed BMP
            :data:`MAX_RLE_BMP_PIXELS`), too elongated, or a JPEG over the walk's limits (scans, segments,
            arithmetic-coded pixels), 415 for data that is not an image in a supported format; 400 for a crop
            too narrow to resize within ``max_pixels``.
    """
    if not data:
        raise ImageError("the file is empty", 400)
    if data.startswith(b"\xff\xd8"):  # JPEG or MPO, whatever Pillow will call it: walked before Pillow parses it
        check_jpeg_structure(data)
    image = _open_header(data)
    _check_header_limits(image, data, max_pixels=max_pixels, resize_short_side=resize_short_side)
    decoded = _decode_upright_rgb(image, reduce_to, crop)
    if crop is not None and resize_short_side:  # the elongation limit, for the crop the network will see
        long, short = max(decoded.size), min(decoded.size)
        if long * resize_short_side * resize_short_side > max_pixels * short:
            raise ImageError(f"the crop is too narrow ({long} x {short} pixels): draw a box closer to square", 400)
    return decoded
