"""Uploaded image files to RGB ``PIL.Image`` objects, in memory, with user-facing errors.

Uploads are never written to disk and their file names are never used: :class:`InMemoryRequest` keeps
multipart file parts in memory (Flask's ``MAX_CONTENT_LENGTH`` bounds their size), and :func:`decode_image`
decodes the bytes. Every way an upload can be wrong becomes an :class:`ImageError` carrying the HTTP status
to answer with, so routes never turn bad user input into a 500.
"""

from __future__ import annotations

import io
import logging
import math
import re
import struct
from typing import IO

from flask import Request
from PIL import Image, ImageOps, UnidentifiedImageError
from werkzeug.datastructures import FileStorage

from model.decoding import DECODE_ERRORS
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
#: Most scans (SOS segments) a JPEG may have. A progressive JPEG is decoded once per scan over the whole image, so
#: repeating one scan thousands of times makes a small file cost minutes of CPU. Real progressive photos have about
#: 10 scans (libjpeg's ``jpeg_simple_progression`` writes 10, mozjpeg a few more); libjpeg-turbo's own guidance
#: for untrusted files is a limit of 100 to 1000. At 100, the worst 50-megapixel file costs about a second.
MAX_JPEG_SCANS = 100
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

#: JPEG start-of-frame markers of Huffman-coded images (baseline, extended, progressive), whose scans need at
#: least one bit per 8 x 8 block of each component (its DC coefficient's Huffman code).
_HUFFMAN_SOF = (0xC0, 0xC1, 0xC2)
#: Markers without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE_MARKERS = frozenset((0x01, *range(0xD0, 0xDA)))
#: The end of a scan's entropy-coded data: a marker, i.e. 0xFF (plus fill bytes) followed by a byte other than
#: 0x00 (a stuffed 0xFF data byte) or RST0-7 (restart markers, which stay inside the scan). This finds the last 0xFF
#: of the run; :func:`check_jpeg_structure` steps back over the fill bytes before it. (``\xff+`` in the pattern
#: would find the run's first byte directly, but makes ``re`` try a match at every byte: 21 ms for a 12-megapixel
#: 4.5 MB photo against 1.2 ms.)
_END_OF_ENTROPY_DATA = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")

# What Pillow's decoders raise on broken files (truncated data, bad chunks, impossible headers).
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageError(Exception):
    """An upload that cannot be classified.

    Args:
        message: explanation for the user (no internals, no file names).
        status: HTTP status code to answer with (400, 413 or 415; 503 when the worker is too busy to decode).
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


def check_jpeg_structure(data: bytes) -> None:
    """Walk a JPEG's segments, before decoding it, and refuse the ones that cost far more than their size.

    Counts the scans (SOS segments; the entropy-coded data after each is skipped up to the next marker) and
    refuses more than :data:`MAX_JPEG_SCANS` (413). For a Huffman-coded image, also refuses one whose scans hold
    less data than its declared size needs, at least one bit per 8 x 8 block (400): libjpeg would decode the
    missing rows as grey without an error (a header claiming 7000 x 7000 pixels over the data of 64 x 64 ones).
    Only the first image of the file is walked (up to its EOI marker); a structure it cannot follow is left to
    the decoder to report.

    Raises:
        ImageError: 413 for too many scans, 400 for too little data.
    """
    pos, scans, entropy_bytes = 2, 0, 0
    frame: tuple[int, int, int, list[tuple[int, int]]] | None = None  # marker, width, height, sampling factors
    end = len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:
            return  # not at a marker: corrupt, the decoder says so
        while pos + 1 < end and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        if pos + 1 >= end:
            break
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            break
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if pos + 4 > end:
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segment = data[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and frame is None and len(segment) >= 6:
            height, width, count = struct.unpack_from(">HHB", segment, 1)
            sampling = [(b >> 4, b & 0x0F) for b in segment[7 : 7 + 3 * count : 3]]
            frame = (marker, width, height, sampling)
        elif marker == 0xDA:  # SOS: the entropy-coded data follows, up to the next marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(
                    f"too many progressive scans in this JPEG: more than {MAX_JPEG_SCANS}; save it again as a"
                    " baseline or ordinary progressive JPEG",
                    413,
                )
            start = min(pos, end)
            match = _END_OF_ENTROPY_DATA.search(data, start)
            next_marker = end
            if match:
                next_marker = match.start()
                while next_marker > start and data[next_marker - 1] == 0xFF:  # the marker's fill bytes
                    next_marker -= 1
            entropy_bytes += max(0, next_marker - pos)
            pos = next_marker
    if frame is None or frame[0] not in _HUFFMAN_SOF or not frame[3] or scans == 0:
        return
    _, width, height, sampling = frame
    h_max = max(h for h, _ in sampling) or 1
    v_max = max(v for _, v in sampling) or 1
    blocks = sum(
        math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8) for h, v in sampling
    )
    if entropy_bytes * 8 < blocks:
        raise ImageError(
            f"truncated or corrupt JPEG image: it holds too little data for its declared {width} x {height} pixels",
            400,
        )


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
            signature of a supported format whose header is broken, and a JPEG with too little data for its
            declared size), 413 for an image with too many pixels (decompression bomb; WebP gets a quarter of
            ``max_pixels``, RLE-compressed BMP :data:`MAX_RLE_BMP_PIXELS`), too elongated, or a JPEG with more
            than :data:`MAX_JPEG_SCANS` scans, 415 for data that is not an image in a supported format.
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
    except DECODE_ERRORS as exc:
        logger.info("refused an upload whose header could not be read: %s", exc)
        raise ImageError("corrupt image file: its header cannot be read", 400) from exc

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
    if image.format == "JPEG":
        check_jpeg_structure(data)
    if resize_short_side is not None and min(width, height) > 0:
        scale = resize_short_side / min(width, height)
        if scale > 1 and width * height * scale * scale > max_pixels:
            raise ImageError(
                f"image shape {width} x {height} is too elongated to classify; crop it closer to the fish", 413
            )
    try:
        if reduce_to is not None:
            image.draft("RGB", (reduce_to, reduce_to))  # JPEG only (a no-op for other formats), before load
        image.load()  # decodes the first frame only; raises on truncated or corrupt data
        ImageOps.exif_transpose(image, in_place=True)  # in place: not a full-size copy when nothing to turn
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
        logger.info("refused an upload that %s could not decode: %s", image.format, exc)
        raise ImageError(f"truncated or corrupt {image.format} image: its data cannot be decoded", 400) from exc
