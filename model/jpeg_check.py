"""A JPEG's structure, walked before any decoder sees it, failing closed: :func:`check_jpeg_structure`.

Every file that starts like a JPEG (``FF D8``: Pillow's JPEG and MPO alike, whatever name Pillow would give it) goes
through this walk first. It accounts for every byte of the first image, from SOI to EOI: each segment by its length,
each scan's entropy-coded data up to the next marker, and the 0xFF fill bytes the standard allows before a marker
(ITU-T T.81, B.1.1.2). Anything else (a stray byte that libjpeg would skip with a warning, a marker code that
does not exist, a truncated segment, a second frame, no EOI) is refused rather than left to the decoder. The walk
is bounded by the file's size and stops early at :data:`MAX_JPEG_SEGMENTS` markers and :data:`MAX_JPEG_FILL_BYTES`
fill bytes, so a file of millions of empty segments is refused in milliseconds, before Pillow's own segment loop
(pure Python) walks them. The costs it bounds, and the limits chosen:

- progressive scans: at most :data:`MAX_JPEG_SCANS` (each scan is a pass over the whole image);
- Huffman-coded data thinner than the declared size needs (a 7000 x 7000 header over 64 x 64 pixels of data,
  which libjpeg decodes as grey padding without an error): refused;
- arithmetic-coded frames (SOF9-SOF15), whose data can legitimately be thinner than one bit per block: at most
  :data:`MAX_ARITHMETIC_JPEG_PIXELS` pixels.

The decoder process's deadline (:mod:`model.decoder_pool`) bounds whatever this walk does not foresee.
"""

from __future__ import annotations

import math
import re
import struct

from model.errors import ImageError

#: Most scans (SOS segments) a JPEG may have. A progressive JPEG is decoded once per scan over the whole image, so
#: repeating one scan thousands of times makes a small file cost minutes of CPU. Real progressive photos have about
#: 10 scans (libjpeg's ``jpeg_simple_progression`` writes 10, mozjpeg a few more); libjpeg-turbo's own guidance
#: for untrusted files is a limit of 100 to 1000. At 100, the worst 50-megapixel file costs about a second.
MAX_JPEG_SCANS = 100
#: Most markers (segments, scans and standalone markers other than the restart markers inside a scan) in the first
#: image of a JPEG. A camera's file has 10 to 40 (APPn metadata, split ICC profiles and extended XMP included);
#: Pillow walks those before the first scan in Python and keeps every APPn segment, so 15 MB of empty segments
#: (about 4 million) would cost seconds of CPU and hundreds of MB.
MAX_JPEG_SEGMENTS = 1000
#: Most 0xFF fill bytes before markers, outside the entropy-coded data and at the end of each scan, in one file.
#: Encoders write none or a few; Pillow's segment loop steps over them one byte at a time in Python.
MAX_JPEG_FILL_BYTES = 4096
#: Largest arithmetic-coded JPEG (SOF9-SOF15), in pixels (width x height): 4 megapixels. Arithmetic coding can
#: code an empty 8 x 8 block in a fraction of a bit, so no data-per-block check applies; no camera or browser
#: writes these files, and the cap keeps a thin or many-scan one cheap.
MAX_ARITHMETIC_JPEG_PIXELS = 4_000_000

#: Start-of-frame markers (SOF0-SOF15 less DHT, JPG and DAC).
_SOF = frozenset(m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC))
#: Start-of-frame markers of Huffman-coded images (baseline, extended, progressive, lossless), whose scans need at
#: least one bit per 8 x 8 block of each component (its DC coefficient's Huffman code).
_HUFFMAN_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3))
#: Start-of-frame markers of arithmetic-coded images.
_ARITHMETIC_SOF = frozenset((0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
#: Markers without a length field that may stand between segments: TEM and RST0-7.
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))
#: Marker codes with a length field: SOFn, DHT, DAC, DQT, DNL, DRI, DHP, EXP, APPn, JPGn, COM (0xC0-0xFE but
#: RST0-7, SOI and EOI). Every other code (0x00, the reserved 0x02-0xBF, a second SOI) is not a marker.
_SEGMENTS = frozenset(m for m in range(0xC0, 0xFF) if not 0xD0 <= m <= 0xD9)
#: The end of a scan's entropy-coded data: a marker, i.e. 0xFF (plus fill bytes) followed by a byte other than
#: 0x00 (a stuffed 0xFF data byte) or RST0-7 (restart markers, which stay inside the scan). This finds the last 0xFF
#: of the run; the walk steps back over the fill bytes before it. (``\xff+`` in the pattern would find the run's
#: first byte directly, but makes ``re`` try a match at every byte: 21 ms for a 12-megapixel 4.5 MB photo against
#: 1.2 ms.)
_END_OF_ENTROPY_DATA = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
#: A run of 0xFF bytes (a marker's first byte and its fill bytes), matched in C rather than byte by byte.
_FF_RUN = re.compile(rb"\xff+")

#: A frame header: its start-of-frame marker, width, height and each component's (horizontal, vertical) sampling
#: factors.
_Frame = tuple[int, int, int, list[tuple[int, int]]]


def _corrupt(reason: str) -> ImageError:
    return ImageError(f"truncated or corrupt JPEG image: {reason}", 400)


def _too_many_fill_bytes() -> ImageError:
    return _corrupt(f"more than {MAX_JPEG_FILL_BYTES} 0xFF fill bytes between its segments")


def check_jpeg_structure(data: bytes) -> None:
    """Walk a JPEG's first image, SOI to EOI, before decoding it; refuse what cannot be accounted for or costs far
    more than its size (see the module's docstring for the rules and limits).

    Args:
        data: the whole file; it starts with ``FF D8`` (SOI). Bytes after the first image's EOI (an MPO's other
            pictures, a phone's trailer) are not decoded and not walked.

    Raises:
        ImageError: 400 for a truncated or corrupt structure (a byte that is not a marker where one must be, an
            unknown marker code, a segment running past the end, no frame before a scan, a second frame, no EOI),
            too many fill bytes, or Huffman-coded data too thin for the declared size; 413 for more than
            :data:`MAX_JPEG_SCANS` scans or :data:`MAX_JPEG_SEGMENTS` markers, or an arithmetic-coded image over
            :data:`MAX_ARITHMETIC_JPEG_PIXELS`.
    """
    if not data.startswith(b"\xff\xd8"):
        raise _corrupt("it does not start with a JPEG start-of-image marker")
    pos, markers, scans, fill, entropy_bytes = 2, 0, 0, 0, 0
    frame: _Frame | None = None
    while True:
        pos, marker, fill = _next_marker(data, pos, fill)
        if marker == 0xD9:  # EOI: the end of the first image
            break
        markers += 1
        if markers > MAX_JPEG_SEGMENTS:
            raise ImageError(
                f"too many segments in this JPEG: more than {MAX_JPEG_SEGMENTS}; save it again without the extra"
                " metadata",
                413,
            )
        if marker in _STANDALONE:
            pos += 2
            continue
        segment, pos = _read_segment(data, pos, marker)
        if marker in _SOF:
            if frame is not None:
                raise _corrupt("it has more than one frame header")
            frame = _parse_frame(marker, segment)
        elif marker == 0xDA:  # SOS: the entropy-coded data follows, up to the next marker
            if frame is None:
                raise _corrupt("a scan comes before the frame header")
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(
                    f"too many progressive scans in this JPEG: more than {MAX_JPEG_SCANS}; save it again as a"
                    " baseline or ordinary progressive JPEG",
                    413,
                )
            next_marker, fill = _end_of_scan(data, pos, fill)
            entropy_bytes += next_marker - pos
            pos = next_marker
    if frame is None or scans == 0:
        raise _corrupt("it has no frame header or no scan")
    _check_frame_cost(frame, entropy_bytes)


def _next_marker(data: bytes, pos: int, fill: int) -> tuple[int, int, int]:
    """Step over the 0xFF fill bytes at ``pos``, where a marker must start, to the marker.

    Args:
        data: the whole file.
        pos: where the marker should start (its first 0xFF, or the first of its fill bytes).
        fill: the fill bytes counted so far in the file.

    Returns:
        ``(pos, marker, fill)``: the position of the marker's last 0xFF, its code (the byte after), and the
        fill bytes counted so far, those before this marker included.

    Raises:
        ImageError: 400 when the file ends first, a byte other than 0xFF stands at ``pos``, or the fill bytes
            exceed :data:`MAX_JPEG_FILL_BYTES`.
    """
    end = len(data)
    if pos >= end:
        raise _corrupt("it ends before its end-of-image marker")
    if data[pos] != 0xFF:
        raise _corrupt(f"unexpected data at byte {pos} where a marker should start")
    run_end = _FF_RUN.match(data, pos).end()  # type: ignore[union-attr]  # data[pos] is 0xFF
    fill += run_end - pos - 1
    if fill > MAX_JPEG_FILL_BYTES:
        raise _too_many_fill_bytes()
    pos = run_end - 1
    if pos + 1 >= end:
        raise _corrupt("it ends before its end-of-image marker")
    return pos, data[pos + 1], fill


def _read_segment(data: bytes, pos: int, marker: int) -> tuple[bytes, int]:
    """Read the segment of ``marker`` (a code with a length field) whose 0xFF is at ``pos``.

    Returns:
        ``(segment, pos)``: the segment's payload (after its length field) and the position just after it.

    Raises:
        ImageError: 400 when ``marker`` is not a JPEG marker code, or the segment's header or payload runs past
            the end of the file.
    """
    end = len(data)
    if marker not in _SEGMENTS:
        raise _corrupt(f"0x{marker:02X} at byte {pos + 1} is not a JPEG marker")
    if pos + 4 > end:
        raise _corrupt("it ends inside a segment header")
    (length,) = struct.unpack_from(">H", data, pos + 2)
    if length < 2 or pos + 2 + length > end:
        raise _corrupt(f"the segment at byte {pos} runs past the end of the file")
    return data[pos + 4 : pos + 2 + length], pos + 2 + length


def _parse_frame(marker: int, segment: bytes) -> _Frame:
    """The frame of a start-of-frame ``marker`` from its ``segment`` payload: ``(marker, width, height,
    sampling)``, with the (horizontal, vertical) sampling factors of each component.

    Raises:
        ImageError: 400 when the frame header is too short.
    """
    if len(segment) < 6:
        raise _corrupt("its frame header is too short")
    height, width, count = struct.unpack_from(">HHB", segment, 1)
    sampling = [(b >> 4, b & 0x0F) for b in segment[7 : 7 + 3 * count : 3]]
    return (marker, width, height, sampling)


def _end_of_scan(data: bytes, pos: int, fill: int) -> tuple[int, int]:
    """Find the end of the entropy-coded data of the scan that starts at ``pos``.

    Returns:
        ``(next_marker, fill)``: the position of the next marker (the first of its fill bytes), and the fill
        bytes counted so far in the file (``fill``), those before that marker included.

    Raises:
        ImageError: 400 when no marker follows, or the fill bytes exceed :data:`MAX_JPEG_FILL_BYTES`.
    """
    match = _END_OF_ENTROPY_DATA.search(data, pos)
    if match is None:
        raise _corrupt("it ends before its end-of-image marker")
    next_marker = match.start()
    while next_marker > pos and data[next_marker - 1] == 0xFF:  # the marker's fill bytes
        next_marker -= 1
        fill += 1
        if fill > MAX_JPEG_FILL_BYTES:
            raise _too_many_fill_bytes()
    return next_marker, fill


def _check_frame_cost(frame: _Frame, entropy_bytes: int) -> None:
    """Refuse a Huffman-coded frame whose scans hold less than one bit per 8 x 8 block of each component, and an
    arithmetic-coded frame over :data:`MAX_ARITHMETIC_JPEG_PIXELS`."""
    marker, width, height, sampling = frame
    if marker in _ARITHMETIC_SOF and width * height > MAX_ARITHMETIC_JPEG_PIXELS:
        raise ImageError(
            f"image is too large: {width} x {height} pixels of arithmetic-coded JPEG, the limit is"
            f" {MAX_ARITHMETIC_JPEG_PIXELS / 1e6:g} megapixels for this coding; save it as an ordinary JPEG",
            413,
        )
    if marker not in _HUFFMAN_SOF or not sampling:
        return
    h_max = max(h for h, _ in sampling) or 1
    v_max = max(v for _, v in sampling) or 1
    blocks = sum(
        math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8) for h, v in sampling
    )
    if entropy_bytes * 8 < blocks:
        raise _corrupt(f"it holds too little data for its declared {width} x {height} pixels")
