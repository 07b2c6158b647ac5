"""``model/decoding.py``: the one decoder of files for training, evaluation, predict.py and the bench."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from model.decoding import DECODE_ERRORS, is_readable, open_image


def save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def test_open_image_is_upright_rgb_and_loaded(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    wide = save(Image.new("RGB", (40, 20), (200, 10, 10)), tmp_path / "wide.jpg", exif=exif)
    image = open_image(wide)
    assert image.mode == "RGB" and image.size == (20, 40)  # turned upright, as a phone shows it
    grey = open_image(save(Image.new("I;16", (8, 8), 65535), tmp_path / "grey.png"))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (255, 255, 255)  # 16 bits scaled, not clipped
    transparent = open_image(save(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), tmp_path / "clear.png"))
    assert transparent.getpixel((0, 0)) == (255, 255, 255)  # composited on white


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, b""])
def test_broken_files_raise_decode_errors_and_are_not_readable(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    assert not is_readable(path)
    with pytest.raises(DECODE_ERRORS):
        open_image(path)


def test_truncated_jpeg_is_caught_by_decode_errors(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert is_readable(path)  # the header is fine: only decoding the pixels finds the cut
    with pytest.raises(DECODE_ERRORS):
        open_image(path)
    assert is_readable(save(Image.new("RGB", (4, 4)), tmp_path / "fine.webp"))
