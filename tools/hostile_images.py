"""Hostile image files, generated in memory: the attacks of the security reviews, for the tests and ``make bench``.

Each function makes a small file (a few KB to a few MB; the segment and fill-byte files are 15 MB, as reviewed) that
would cost a decoder far more than its size without the checks of :mod:`model.jpeg_check` and the deadline of
:mod:`model.decoder_pool`. :data:`REVIEW_TABLE` lists the rows of the decode-deadline review with the status and
message the app answers each with.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from model.jpeg_check import MAX_JPEG_FILL_BYTES, MAX_JPEG_SEGMENTS


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """``image`` saved in memory as ``fmt`` (Pillow's ``save`` parameters in ``params``)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Seeded RGB noise of ``size`` (width, height): the most data a JPEG block can hold."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def with_sof_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its start-of-frame header (baseline or progressive) claiming ``width`` x ``height``."""
    data = bytearray(jpeg)
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def progressive_with_repeated_scan(repeats: int) -> bytes:
    """A small progressive JPEG whose last scan (SOS header and entropy-coded data) is repeated ``repeats`` times."""
    data = encode(noise(), "JPEG", quality=90, progressive=True)
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * repeats + data[end:]


def mpf_segment() -> bytes:
    """The APP2 "MPF" segment of a two-picture MPO that Pillow writes: added to a JPEG, Pillow names it "MPO"."""
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((200, 0, 0), (0, 0, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    data, pos = buffer.getvalue(), 2
    while True:
        marker = data[pos + 1]
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker == 0xE2 and data[pos + 4 : pos + 8] == b"MPF\x00":
            return data[pos : pos + 2 + length]
        pos += 2 + length


def after_soi(jpeg: bytes, extra: bytes) -> bytes:
    """``extra`` inserted right after the start-of-image marker."""
    return jpeg[:2] + extra + jpeg[2:]


def before_dqt(jpeg: bytes, extra: bytes) -> bytes:
    """``extra`` inserted before the first quantization-table segment (DQT)."""
    at = jpeg.index(b"\xff\xdb")
    return jpeg[:at] + extra + jpeg[at:]


def frame_header(jpeg: bytes) -> bytes:
    """The SOF0 segment of a baseline JPEG, marker included."""
    at = jpeg.index(b"\xff\xc0")
    (length,) = struct.unpack_from(">H", jpeg, at + 2)
    return jpeg[at : at + 2 + length]


def before_sos(jpeg: bytes, extra: bytes) -> bytes:
    """``extra`` inserted before the first scan (SOS)."""
    at = jpeg.index(b"\xff\xda")
    return jpeg[:at] + extra + jpeg[at:]


def scan_bomb() -> bytes:
    """A 7000 x 7000 progressive JPEG whose last scan is repeated 500 times (the review's had 5,000 and 14,000)."""
    return with_sof_size(progressive_with_repeated_scan(500), 7000, 7000)


def thin_header() -> bytes:
    """A 7071 x 7071 JPEG header over the data of 64 x 64 pixels."""
    return with_sof_size(encode(noise(), "JPEG", quality=90), 7071, 7071)


def empty_segments(marker: int, size: int = 15_000_000) -> bytes:
    """``size`` bytes of empty ``marker`` segments (COM 0xFE, APP1 0xE1) after SOI, then an ordinary JPEG."""
    jpeg = encode(noise(), "JPEG", quality=90)
    return jpeg[:2] + bytes((0xFF, marker, 0x00, 0x02)) * (size // 4) + jpeg[2:]


def fill_bytes(size: int = 15_000_000) -> bytes:
    """``size`` 0xFF fill bytes after SOI, then an ordinary JPEG."""
    jpeg = encode(noise(), "JPEG", quality=90)
    return jpeg[:2] + b"\xff" * size + jpeg[2:]


def slow_png(size: tuple[int, int] = (4000, 3000)) -> bytes:
    """A legitimate, small (under 1 MB) RGBA PNG that takes a decoder long (on a 2-core Xeon with AMX, 0.17 s at
    the default size, 0.62 to 0.9 s at 8000 x 6000): the stand-in for a bomb that no check foresees."""
    return constant_png(size, bytes((10, 20, 30, 128)))


def constant_png(size: tuple[int, int], pixel: bytes) -> bytes:
    """A valid 8-bit PNG of ``size`` (width, height) whose every pixel is ``pixel`` (1 byte: grayscale, 3: RGB, 4:
    RGBA), written without holding the image: a block of 64 rows is deflated once (raw deflate, level 9, a full
    flush after it so the next block starts afresh, RFC 1951) and its bytes repeated; the zlib header and the
    Adler-32 of all rows wrap them (RFC 1950). Milliseconds where Pillow's encoder takes about a second at 48
    megapixels.

    Raises:
        ValueError: ``pixel`` is not 1, 3 or 4 bytes, or a side is not positive.
    """
    colour_type = {1: 0, 3: 2, 4: 6}.get(len(pixel))
    width, height = size
    if colour_type is None or width < 1 or height < 1:
        raise ValueError(f"need a 1-, 3- or 4-byte pixel and positive sides, got {pixel!r} and {size}")
    row = b"\x00" + pixel * width  # filter type 0 (None), then the pixels
    block_rows = min(64, height)
    full_blocks, last_rows = divmod(height, block_rows)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(row * block_rows) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(row * last_rows) + deflate.flush()
    checksum = 1
    for _ in range(height):
        checksum = zlib.adler32(row, checksum)
    stream = b"\x78\x01" + block * full_blocks + tail + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def png_chunk(tag: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, ``tag``, ``data``, CRC-32 of tag and data."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


#: (id, the file, the status, a fragment of the message): each row of the decode-deadline review that is a file.
REVIEW_TABLE: list[tuple[str, Callable[[], bytes], int, str]] = [
    ("scan-bomb-as-MPO", lambda: after_soi(scan_bomb(), mpf_segment()), 413, "too many progressive scans"),
    ("scan-bomb-junk-byte", lambda: before_dqt(scan_bomb(), b"\x00"), 400, "unexpected data at byte"),
    ("thin-header-as-MPO", lambda: after_soi(thin_header(), mpf_segment()), 400, "too little data for its declared"),
    ("thin-header-junk-byte", lambda: before_dqt(thin_header(), b"\x00"), 400, "unexpected data at byte"),
    ("thin-header-FF00FFFF", lambda: before_dqt(thin_header(), b"\xff\x00\xff\xff"), 400, "is not a JPEG marker"),
    ("15MB-empty-COM", lambda: empty_segments(0xFE), 413, f"more than {MAX_JPEG_SEGMENTS}"),
    ("15MB-empty-APP1", lambda: empty_segments(0xE1), 413, f"more than {MAX_JPEG_SEGMENTS}"),
    ("15MB-fill-bytes", lambda: fill_bytes(), 400, f"more than {MAX_JPEG_FILL_BYTES} 0xFF fill bytes"),
]
