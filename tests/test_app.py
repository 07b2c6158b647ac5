"""The Flask app: upload page, JSON API, bad and odd uploads, start-up failures, gunicorn config and a real server."""

from __future__ import annotations

import io
import json
import os
import runpy
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.datastructures import FileStorage

from app import create_app
from app.images import ImageError, decode_image
from model.checkpoint import CheckpointError
from tests.conftest import COLOURS, ROOT, encode, synthetic_image

CLASS_NAMES = sorted(COLOURS)
SPECIES_NAMES = ("Blue tang", "Clownfish", "Green chromis")


def post_image(
    client: FlaskClient, data: bytes, url: str = "/api/predict", filename: str = "fish.jpg", **form: Any
) -> Any:
    """POST ``data`` as the multipart file field ``image`` plus extra form fields."""
    return client.post(url, data={"image": (io.BytesIO(data), filename), **form}, content_type="multipart/form-data")


def assert_json_error(response: Any, status: int) -> str:
    """The response is ``{"error": str}`` JSON with ``status``; returns the message."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"]
    return body["error"]


def png_declaring_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR is patched (with a correct CRC) to claim ``width`` x ``height`` pixels."""
    png = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def truncated_jpeg() -> bytes:
    """The first 60% of a noisy 256x256 JPEG: the header parses, the pixel data ends early."""
    data = encode(synthetic_image((90, 120, 200), size=(256, 256)), quality=95)
    return data[: int(len(data) * 0.6)]


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF orientation (6: rotate 90 degrees clockwise) makes it 20x40 upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(synthetic_image(COLOURS["blue_tang"], size=(40, 20)), exif=exif.tobytes())


def sixteen_bit_png() -> bytes:
    arr = np.linspace(0, 65535, 32 * 24, dtype=np.uint16).reshape(24, 32)
    image = Image.fromarray(arr)  # uint16 gives mode "I;16"
    assert image.mode == "I;16"
    return encode(image, "PNG")


def rgba_png() -> bytes:
    image = synthetic_image(COLOURS["green_chromis"]).convert("RGBA")
    image.putalpha(128)
    return encode(image, "PNG")


def animated_gif(colours: list[tuple[int, int, int]]) -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in colours]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def make_app(**config: Any) -> Flask:
    return create_app({"TESTING": True, **config})


@pytest.fixture(scope="module")
def app(tiny_checkpoint: Path) -> Flask:
    """conftest's ``app``, built once for this module: no test here changes it, and each build costs ~1 s."""
    return make_app(MODEL_PATH=str(tiny_checkpoint))


# --- the upload page ---------------------------------------------------------------------------------------------


def test_page_renders_form(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert '<html lang="en">' in html
    assert 'name="viewport"' in html
    assert 'enctype="multipart/form-data"' in html
    assert 'type="file"' in html and 'name="image"' in html and 'accept="image/*"' in html
    assert '<label for="image">' in html
    assert "Reef fish identifier" in html
    assert "resnet18" in html and "3 species" in html
    # Ready for a strict Content-Security-Policy: no scripts, no inline styles, nothing from a CDN.
    assert "<script" not in html and "style=" not in html and "https://" not in html


def test_stylesheet_is_served(client: FlaskClient) -> None:
    response = client.get("/static/style.css")
    assert response.status_code == 200
    assert "text/css" in response.content_type


def test_form_post_shows_species_confidence_and_top_k(client: FlaskClient, jpeg_bytes: Callable[..., bytes]) -> None:
    response = post_image(client, jpeg_bytes(), url="/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert any(name in html for name in SPECIES_NAMES)
    assert "Confidence:" in html and "%" in html
    assert html.count("<meter") == len(CLASS_NAMES)
    assert 'src="data:image/jpeg;base64,' in html
    assert "_" not in html.split('class="species">')[1].split("<")[0]
    assert "<script" not in html and "style=" not in html


@pytest.mark.parametrize(
    ("data", "status"),
    [(b"", 400), (b"hello, this is plain text", 415), (truncated_jpeg(), 400)],
    ids=["empty", "text", "truncated"],
)
def test_form_post_bad_upload_shows_error(client: FlaskClient, data: bytes, status: int) -> None:
    response = post_image(client, data, url="/")
    assert response.status_code == status
    html = response.get_data(as_text=True)
    assert 'role="alert"' in html
    assert 'name="image"' in html  # the form is still there to try again


def test_form_post_without_a_file(client: FlaskClient) -> None:
    response = client.post("/", data={}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert 'role="alert"' in response.get_data(as_text=True)


def test_form_post_too_large(tiny_checkpoint: Path, jpeg_bytes: Callable[..., bytes]) -> None:
    client = make_app(MODEL_PATH=str(tiny_checkpoint), MAX_CONTENT_LENGTH=1024).test_client()
    response = post_image(client, jpeg_bytes(size=(200, 200)), url="/")
    assert response.status_code == 413
    assert "too large" in response.get_data(as_text=True)


# --- the JSON API ------------------------------------------------------------------------------------------------


def test_api_predict_schema(client: FlaskClient, jpeg_bytes: Callable[..., bytes]) -> None:
    response = post_image(client, jpeg_bytes())
    assert response.status_code == 200
    body = response.get_json()
    assert body["label"] in CLASS_NAMES
    assert 0.0 <= body["confidence"] <= 1.0
    top = body["top_k"]
    assert len(top) == len(CLASS_NAMES)  # default TOP_K=5 clipped to 3 classes
    assert [t["label"] for t in top][0] == body["label"]
    assert top[0]["confidence"] == pytest.approx(body["confidence"])
    assert sorted({t["label"] for t in top}) == CLASS_NAMES
    confidences = [t["confidence"] for t in top]
    assert confidences == sorted(confidences, reverse=True)
    assert sum(confidences) == pytest.approx(1.0, abs=1e-4)
    assert body["model"]["arch"] == "resnet18"
    assert body["model"]["classes"] == CLASS_NAMES


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_api_top_k(client: FlaskClient, jpeg_bytes: Callable[..., bytes], top_k: int) -> None:
    as_form = post_image(client, jpeg_bytes(), top_k=str(top_k))
    as_query = post_image(client, jpeg_bytes(), url=f"/api/predict?top_k={top_k}")
    for response in (as_form, as_query):
        assert response.status_code == 200
        assert len(response.get_json()["top_k"]) == top_k


@pytest.mark.parametrize("top_k", ["0", "4", "-1", "two", "1.5", "1e9"])
def test_api_bad_top_k(client: FlaskClient, jpeg_bytes: Callable[..., bytes], top_k: str) -> None:
    message = assert_json_error(post_image(client, jpeg_bytes(), top_k=top_k), 400)
    assert "top_k" in message


def test_healthz(client: FlaskClient, tiny_checkpoint: Path) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body == {"status": "ok", "model": "resnet18", "checkpoint": tiny_checkpoint.name, "classes": CLASS_NAMES}


BAD_UPLOADS = {
    "empty": (b"", 400),
    "text": (b"just some text, not an image\n" * 10, 415),
    "html": (b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", 415),
    "pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n", 415),
    "jpeg-magic-only": (b"\xff\xd8\xff\xe0" + b"\x00" * 64, 415),
    "truncated-jpeg": (truncated_jpeg(), 400),
    "bomb-64mp": (png_declaring_size(8000, 8000), 413),  # above our 50 MP limit
    "bomb-100mp": (png_declaring_size(10_000, 10_000), 413),  # above Pillow's warning threshold
    "bomb-900mp": (png_declaring_size(30_000, 30_000), 413),  # above Pillow's error threshold
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("data", "status"), list(BAD_UPLOADS.values()), ids=list(BAD_UPLOADS))
def test_api_bad_uploads(client: FlaskClient, data: bytes, status: int) -> None:
    assert_json_error(post_image(client, data), status)


def test_api_unsupported_format_lists_formats(client: FlaskClient) -> None:
    message = assert_json_error(post_image(client, b"GIF? no, text"), 415)
    assert "JPEG" in message and "PNG" in message


def test_api_missing_field(client: FlaskClient, jpeg_bytes: Callable[..., bytes]) -> None:
    assert_json_error(client.post("/api/predict", data={}, content_type="multipart/form-data"), 400)
    wrong_field = client.post(
        "/api/predict", data={"photo": (io.BytesIO(jpeg_bytes()), "x.jpg")}, content_type="multipart/form-data"
    )
    assert "image" in assert_json_error(wrong_field, 400)
    assert_json_error(client.post("/api/predict", data=jpeg_bytes(), content_type="image/jpeg"), 400)


def test_api_body_too_large(tiny_checkpoint: Path, jpeg_bytes: Callable[..., bytes]) -> None:
    client = make_app(MODEL_PATH=str(tiny_checkpoint), MAX_CONTENT_LENGTH=1024).test_client()
    assert_json_error(post_image(client, jpeg_bytes(size=(200, 200))), 413)
    assert post_image(client, jpeg_bytes(size=(8, 8))).status_code == 200


def test_api_too_elongated(tiny_checkpoint: Path) -> None:
    client = make_app(MODEL_PATH=str(tiny_checkpoint), MAX_IMAGE_PIXELS=100_000).test_client()
    # 300 x 300 = 90 kpx decodes, but 3000 x 3 scaled to a 36 px short side would be 432 kpx.
    assert post_image(client, encode(Image.new("RGB", (300, 300)), "PNG")).status_code == 200
    assert_json_error(post_image(client, encode(Image.new("RGB", (3000, 3)), "PNG")), 413)


def test_api_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    assert_json_error(client.get("/api/nope"), 404)
    response = client.get("/api/predict")
    assert_json_error(response, 405)
    assert "POST" in response.headers["Allow"]
    assert not client.get("/nope").is_json  # HTML pages keep HTML errors


ODD_IMAGES: dict[str, Callable[[], bytes]] = {
    "grayscale": lambda: encode(synthetic_image(COLOURS["clownfish"]).convert("L")),
    "palette-png": lambda: encode(synthetic_image(COLOURS["clownfish"]).convert("P"), "PNG"),
    "rgba-png": rgba_png,
    "16-bit-png": sixteen_bit_png,
    "exif-rotated-jpeg": exif_rotated_jpeg,
    "1x1": lambda: encode(Image.new("RGB", (1, 1), (200, 100, 0)), "PNG"),
    "2000x3": lambda: encode(synthetic_image(COLOURS["blue_tang"], size=(2000, 3)), "PNG"),
    "3x2000": lambda: encode(synthetic_image(COLOURS["blue_tang"], size=(3, 2000))),
    "cmyk-jpeg": lambda: encode(synthetic_image(COLOURS["clownfish"]).convert("CMYK")),
    "animated-gif": lambda: animated_gif([(255, 0, 0), (0, 0, 255)]),
    "webp": lambda: encode(synthetic_image(COLOURS["green_chromis"]), "WEBP"),
    "bmp": lambda: encode(synthetic_image(COLOURS["green_chromis"]), "BMP"),
    "tiff": lambda: encode(synthetic_image(COLOURS["green_chromis"]), "TIFF"),
}


@pytest.mark.parametrize("make", list(ODD_IMAGES.values()), ids=list(ODD_IMAGES))
def test_api_accepts_odd_images(client: FlaskClient, make: Callable[[], bytes]) -> None:
    response = post_image(client, make(), filename="../../etc/passwd")  # the file name is never used
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["label"] in CLASS_NAMES


# --- decoding, directly ------------------------------------------------------------------------------------------


def upload(data: bytes) -> FileStorage:
    return FileStorage(io.BytesIO(data), filename="x", name="image")


def test_decode_applies_exif_orientation() -> None:
    image = decode_image(upload(exif_rotated_jpeg()))
    assert image.mode == "RGB"
    assert image.size == (20, 40)


def test_decode_takes_first_frame_of_animation() -> None:
    image = decode_image(upload(animated_gif([(255, 0, 0), (0, 0, 255)])))
    r, g, b = image.getpixel((8, 8))
    assert r > 200 and b < 50


def test_decode_converts_modes_to_rgb() -> None:
    for data in (sixteen_bit_png(), rgba_png(), encode(Image.new("1", (4, 4)), "PNG")):
        assert decode_image(upload(data)).mode == "RGB"


def test_decode_errors_carry_status() -> None:
    with pytest.raises(ImageError) as info:
        decode_image(None)
    assert info.value.status == 400
    with pytest.raises(ImageError) as info:
        decode_image(upload(encode(Image.new("RGB", (100, 100)), "PNG")), max_pixels=9_999)
    assert info.value.status == 413 and "100 x 100" in info.value.message


def test_decode_does_not_change_pillow_limits() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError):
        decode_image(upload(png_declaring_size(30_000, 30_000)))
    assert before == Image.MAX_IMAGE_PIXELS


# --- start-up and configuration ----------------------------------------------------------------------------------


def test_missing_checkpoint_fails_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="FISH_MODEL_PATH") as info:
        make_app(MODEL_PATH=str(path))
    assert str(path) in str(info.value)


def test_text_file_checkpoint_fails_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="FISH_MODEL_PATH") as info:
        make_app(MODEL_PATH=str(path))
    assert str(path) in str(info.value)


def test_environment_overrides_defaults_and_config_overrides_environment(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, jpeg_bytes: Callable[..., bytes]
) -> None:
    monkeypatch.setenv("FISH_MODEL_PATH", str(tiny_checkpoint))
    monkeypatch.setenv("FISH_TOP_K", "2")
    app = create_app()
    assert app.config["MODEL_PATH"] == str(tiny_checkpoint) and app.config["TOP_K"] == 2
    assert len(post_image(app.test_client(), jpeg_bytes()).get_json()["top_k"]) == 2
    assert create_app({"TOP_K": 1}).config["TOP_K"] == 1


@pytest.mark.parametrize("setting", [{"TOP_K": 0}, {"TOP_K": "five"}, {"MAX_IMAGE_PIXELS": -1}, {"TORCH_THREADS": 0}])
def test_bad_settings_fail_at_start_up(tiny_checkpoint: Path, setting: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(setting))):
        make_app(MODEL_PATH=str(tiny_checkpoint), **setting)


def test_torch_threads_setting(tiny_checkpoint: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        make_app(MODEL_PATH=str(tiny_checkpoint), TORCH_THREADS=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_predictor_is_per_app(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from model.checkpoint import make_checkpoint, save_checkpoint
    from model.network import build_model
    from model.transforms import Preprocessing

    other_classes = ["moorish_idol", "yellow_tang"]
    other = save_checkpoint(
        make_checkpoint(
            model=build_model("resnet18", num_classes=2),
            arch="resnet18",
            class_names=other_classes,
            preprocessing=Preprocessing.for_image_size(32),
            epoch=0,
            metrics={},
            config={},
        ),
        tmp_path / "other.pt",
    )
    first, second = make_app(MODEL_PATH=str(tiny_checkpoint)), make_app(MODEL_PATH=str(other))
    assert first.extensions["predictor"] is not second.extensions["predictor"]
    assert first.test_client().get("/healthz").get_json()["classes"] == CLASS_NAMES
    assert second.test_client().get("/healthz").get_json()["classes"] == other_classes
    assert first.extensions["predictor"].class_names == CLASS_NAMES  # loading the second left the first alone


# --- gunicorn ----------------------------------------------------------------------------------------------------


def test_gunicorn_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIND", "127.0.0.1:9999")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.delenv("FISH_TORCH_THREADS", raising=False)  # restored (removed) after the test
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["bind"] == "127.0.0.1:9999"
    assert settings["workers"] == 3
    assert settings["preload_app"] is False
    assert settings["threads"] >= 1 and settings["timeout"] > 0
    assert settings["control_socket_disable"] is True
    assert os.environ["FISH_TORCH_THREADS"] == str(max(1, (os.cpu_count() or 1) // 3))
    assert "torch" not in settings  # the master must not import torch


def test_gunicorn_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BIND", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FISH_TORCH_THREADS", "7")  # an explicit setting wins
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["bind"] == "127.0.0.1:8000"
    assert 2 <= settings["workers"] <= 4
    assert os.environ["FISH_TORCH_THREADS"] == "7"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """Encode one file field as ``multipart/form-data``; returns the body and its Content-Type header."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_gunicorn_serves_predictions(tiny_checkpoint: Path, tmp_path: Path, jpeg_bytes: Callable[..., bytes]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "FISH_MODEL_PATH": str(tiny_checkpoint),
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "FISH_TORCH_THREADS": "1",
    }
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"gunicorn exited early:\n{log_path.read_text()}"
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
                    health = json.load(response)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"gunicorn did not answer in 60 s:\n{log_path.read_text()}"
                time.sleep(0.5)
        assert health["status"] == "ok" and health["classes"] == CLASS_NAMES

        body, content_type = multipart("image", "fish.jpg", jpeg_bytes(), "image/jpeg")
        request = urllib.request.Request(
            f"{base}/api/predict", data=body, headers={"Content-Type": content_type}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            result = json.load(response)
        assert result["label"] in CLASS_NAMES and 0.0 <= result["confidence"] <= 1.0

        bad, content_type = multipart("image", "x.txt", b"not an image", "text/plain")
        request = urllib.request.Request(
            f"{base}/api/predict", data=bad, headers={"Content-Type": content_type}, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        assert info.value.code == 415 and "error" in json.load(info.value)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
