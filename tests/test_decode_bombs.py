"""Small uploads that would cost a worker far more than their size (CPU or memory) are refused with a 4xx JSON
error before the expensive decoding, or decoded cheaply: the attacks of the security review, each as a file of a
few kilobytes generated here."""

from __future__ import annotations

import io
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image, ImageFile

from model import decoding, jpeg_check
from model.decoding import MAX_RLE_BMP_PIXELS, decode_image
from model.errors import ImageError
from model.jpeg_check import MAX_JPEG_SCANS
from tests.helpers import (
    COLOURS,
    animation,
    assert_json_error,
    confidences,
    encode,
    post_images,
    rle8_bmp,
    sixteen_bit_gradient_png,
    synthetic_image,
)
from tools.hostile_images import noise, progressive_with_repeated_scan, with_sof_size

# --- JPEG --------------------------------------------------------------------------------------------------------


def test_progressive_jpeg_with_too_many_scans_is_refused(client: FlaskClient) -> None:
    data = progressive_with_repeated_scan(MAX_JPEG_SCANS + 50)
    assert len(data) < 200_000
    body = assert_json_error(post_images(client, with_sof_size(data, 7000, 7000)), 413)
    assert body["error"].startswith("too many progressive scans"), body["error"]
    assert_json_error(post_images(client, data), 413)  # whatever its size


def test_ordinary_progressive_jpegs_are_classified(client: FlaskClient) -> None:
    assert post_images(client, progressive_with_repeated_scan(0)).status_code == 200
    plain = Image.new("RGB", (2001, 1999), COLOURS["clownfish"])  # the least data a JPEG can hold per block
    for params in ({"progressive": True, "optimize": True}, {"optimize": True}, {"progressive": True}):
        assert post_images(client, encode(plain, "JPEG", **params)).status_code == 200, params


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_jpeg_is_a_400(client: FlaskClient, keep: float) -> None:
    data = encode(noise((256, 256)), "JPEG", quality=95)
    body = assert_json_error(post_images(client, data[: int(len(data) * keep)]), 400)
    assert body["error"].startswith("truncated or corrupt JPEG image"), body["error"]
    assert "Pillow" not in body["error"] and "bytes not processed" not in body["error"]


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_jpeg_header_bigger_than_its_data_is_a_400(client: FlaskClient, progressive: bool) -> None:
    """Over 64 x 64 pixels of data, libjpeg would decode a 3000 x 3000 header as grey padding without an error."""
    data = with_sof_size(encode(noise(), "JPEG", quality=90, progressive=progressive), 3000, 3000)
    body = assert_json_error(post_images(client, data), 400)
    expected = "truncated or corrupt JPEG image: it holds too little data for its declared 3000 x 3000 pixels"
    assert body["error"] == expected


@pytest.mark.parametrize("restarts", [False, True], ids=["plain", "restart-markers"])
def test_jpeg_data_check_counts_scan_bytes_exactly_without_fill_bytes(restarts: bool) -> None:
    """The scan's data ends at the first of the 0xFF fill bytes before the next marker; restart markers are part of
    it. A header needing exactly 8 bits per byte of that data passes, one block more is refused (fill bytes counted
    as data, or restart markers taken for the end of the scan, would move the boundary)."""
    params = {"restart_marker_blocks": 1} if restarts else {}
    data = encode(noise((64, 8)).convert("L"), "JPEG", quality=95, **params)
    assert data.endswith(b"\xff\xd9") and data.count(b"\xff\xda") == 1
    sos = data.index(b"\xff\xda")
    (sos_length,) = struct.unpack_from(">H", data, sos + 2)
    scan_bytes = len(data) - 2 - (sos + 2 + sos_length)  # from the end of the SOS header to EOI
    assert restarts == any(bytes((0xFF, m)) in data[sos:] for m in range(0xD0, 0xD8))
    filled = data[:-2] + b"\xff" * 5 + data[-2:]  # fill bytes before EOI
    for blocks_wide, refused in ((8 * scan_bytes, False), (8 * scan_bytes + 1, True)):
        resized = with_sof_size(filled, 8 * blocks_wide, 8)  # one row of 8 x 8 blocks, one component
        if refused:
            with pytest.raises(ImageError, match="too little data for its declared") as error:
                jpeg_check.check_jpeg_structure(resized)
            assert error.value.status == 400
        else:
            jpeg_check.check_jpeg_structure(resized)


def test_truncated_images_are_not_loaded_by_pillow() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- BMP ---------------------------------------------------------------------------------------------------------


def test_rle_bmp_over_the_limit_is_refused(client: FlaskClient) -> None:
    width, height = 2100, MAX_RLE_BMP_PIXELS // 2100 + 1
    rows = b"\x01\x05\x00\x00" * height + b"\x00\x01"  # one pixel, end of line (padded by Pillow in Python)
    data = rle8_bmp(width, height, rows)
    assert len(data) < 20_000
    body = assert_json_error(post_images(client, data), 413)
    assert "RLE-compressed BMP" in body["error"] and "too large" in body["error"], body["error"]


def test_rle_bmp_with_too_much_data_is_refused() -> None:
    data = rle8_bmp(64, 64, b"\x00\x00" * (2**20 + 1) + b"\x00\x01")  # a million end-of-line commands
    with pytest.raises(ImageError) as error:
        decode_image(data)
    assert error.value.status == 413


def test_small_rle_bmp_is_classified(client: FlaskClient) -> None:
    width, height = 40, 32
    rows = (b"\x28\x80\x00\x00") * height + b"\x00\x01"  # 40 pixels of grey 128, end of line
    with Image.open(io.BytesIO(rle8_bmp(width, height, rows))) as image:
        assert image.info["compression"] == 1 and image.getpixel((5, 5)) == 128
    assert post_images(client, rle8_bmp(width, height, rows)).status_code == 200


# --- 16-bit and animated images ----------------------------------------------------------------------------------


def test_16_bit_png_is_reduced_before_its_float_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run here rather than in a decoder process, so that its conversions and memory can be recorded."""
    side = 3000
    data = sixteen_bit_gradient_png(side, side)
    assert len(data) < 200_000
    converted: list[tuple[str, tuple[int, int]]] = []
    to_rgb = decoding.to_rgb

    def recording_to_rgb(image: Image.Image) -> Image.Image:
        converted.append((image.mode, image.size))
        return to_rgb(image)

    monkeypatch.setattr(decoding, "to_rgb", recording_to_rgb)
    tracemalloc.start()
    try:
        image = decode_image(data, resize_short_side=146, reduce_to=146)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.mode == "RGB" and min(image.size) >= 146
    assert converted and converted[0][0] == "I;16" and max(converted[0][1]) < side // 4, converted
    assert peak < side * side, peak  # no full-size numpy array (float32 would be 4 bytes a pixel, 36 MB)


def test_16_bit_png_keeps_its_tones_when_reduced() -> None:
    image = decode_image(sixteen_bit_gradient_png(1200, 600), reduce_to=100)
    assert image.mode == "RGB" and image.size == (200, 100)
    row = np.asarray(image)[50, :, 0]
    assert row[0] < 5 and row[-1] > 250 and np.all(np.diff(row.astype(int)) >= 0)  # 16 bits scaled, not clipped


def test_animated_gif_with_several_frames_is_classified_by_its_first(client: FlaskClient) -> None:
    frames = [synthetic_image(colour, (64, 48)).convert("P") for colour in [*COLOURS.values()] * 3]
    data = animation("GIF", frames)
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == len(frames)
    as_animation = confidences(post_images(client, data, top_k="3"))
    assert as_animation == pytest.approx(
        confidences(post_images(client, encode(frames[0], "GIF"), top_k="3")), abs=1e-6
    )


def test_webp_gets_a_quarter_of_the_pixel_limit() -> None:
    """libwebp holds about four times as many bytes per pixel as other decoders (two RGBA canvases)."""
    image = synthetic_image(COLOURS["blue_tang"], (64, 64))
    max_pixels = 64 * 64 * 2
    for data in (encode(image, "WEBP"), animation("WEBP", [image, image.rotate(90)])):
        with pytest.raises(ImageError, match="the limit for WebP is") as error:
            decode_image(data, max_pixels=max_pixels)
        assert error.value.status == 413
    assert decode_image(encode(image, "PNG"), max_pixels=max_pixels).size == (64, 64)
    assert decode_image(encode(image, "WEBP"), max_pixels=64 * 64 * 4).size == (64, 64)


def test_messages_do_not_leak_decoder_internals(client: FlaskClient) -> None:
    bodies: list[dict[str, Any]] = [
        assert_json_error(post_images(client, encode(noise(), "PNG")[:200]), 400),
        assert_json_error(post_images(client, b"\x89PNG\r\n\x1a\n" + bytes(40)), 400),
    ]
    for body in bodies:
        assert "errno" not in body["error"] and "decoder" not in body["error"], body["error"]
