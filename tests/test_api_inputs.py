"""``POST /api/predict`` against every kind of input: bad files get a JSON error with 400, 413 or 415 (never a
500), odd but valid images are classified, several images are answered in one batch, and big photos are cheap."""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from app.uploads import DEFAULT_MAX_IMAGES_PER_REQUEST
from model.decoding import decode_image
from tests.helpers import (
    COLOURS,
    animation,
    assert_json_error,
    confidences,
    encode,
    make_app,
    photo,
    post_images,
    synthetic_image,
)
from tools.hostile_images import constant_png

CLASS_NAMES = sorted(COLOURS)
MiB = 2**20


# --- input files -------------------------------------------------------------------------------------------------


@functools.cache
def zeros_png(width: int, height: int) -> bytes:
    """A real, fully decodable 8-bit grayscale PNG of zeros: ``width x height`` pixels in very few bytes."""
    return constant_png((width, height), b"\x00")


def png_declaring_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR is patched (with a correct CRC) to claim ``width`` x ``height`` pixels."""
    png = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def gif_declaring_size(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen and image descriptor claim ``width`` x ``height`` pixels."""
    gif = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)
    descriptor = gif.index(b"\x2c")  # image separator
    gif[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(gif)


@functools.cache
def noisy_jpeg() -> bytes:
    return encode(synthetic_image((90, 120, 200), size=(256, 256)), quality=95)


@functools.cache
def noisy_png() -> bytes:
    return encode(synthetic_image((90, 120, 200), size=(256, 256)), "PNG")


def patched(data: bytes, marker: bytes, offset: int, replacement: bytes) -> bytes:
    """``data`` with ``replacement`` written ``offset`` bytes after the first ``marker``."""
    start = data.index(marker) + offset
    return data[:start] + replacement + data[start + len(replacement) :]


def zip_file() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("fish.jpg", noisy_jpeg())
    return buf.getvalue()


def psd_like() -> bytes:
    """A Photoshop header (``8BPS``, version 1, 3 channels, 32x32, 8 bits, RGB) with no data."""
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 32, 32, 8, 3) + bytes(64)


def quadrants(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """An asymmetric RGB image: four quadrants of different colours, so any rotation changes it."""
    width, height = size
    arr = np.zeros((height, width, 3), np.uint8)
    colours = [(240, 120, 20), (20, 40, 220), (30, 200, 60), (250, 250, 250)]
    for i, colour in enumerate(colours):
        top, left = (i // 2) * height // 2, (i % 2) * width // 2
        arr[top : top + height // 2, left : left + width // 2] = colour
    return Image.fromarray(arr)


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    """``image`` as a JPEG whose EXIF orientation tag (0x0112) is ``orientation``, as phones write them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def two_frames() -> list[Image.Image]:
    """Two different few-colour frames (exact in a GIF palette)."""
    first = quadrants()
    return [first, first.transpose(Image.Transpose.ROTATE_180).point(lambda v: 255 - v)]


def sixteen_bit_png() -> bytes:
    image = Image.fromarray(np.linspace(0, 65535, 32 * 24, dtype=np.uint16).reshape(24, 32))
    assert image.mode == "I;16"
    return encode(image, "PNG")


def rgba_png() -> bytes:
    image = synthetic_image(COLOURS["green_chromis"]).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return encode(image, "PNG")


def transparent_palette_png() -> bytes:
    image = synthetic_image(COLOURS["clownfish"]).convert("P")
    return encode(image, "PNG", transparency=0)


# --- bad input ---------------------------------------------------------------------------------------------------

#: name -> (bytes factory, status). Each is sent alone; each gets a JSON error, never a 500.
BAD_INPUTS: dict[str, tuple[Callable[[], bytes], int]] = {
    "empty-file": (lambda: b"", 400),
    "text": (lambda: b"just some text, not an image\n" * 10, 415),
    "text-starting-with-gif": (lambda: b"GIF? no, text", 415),
    "html": (lambda: b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", 415),
    "svg": (
        lambda: (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
            b'<circle cx="32" cy="32" r="20" fill="orange"/></svg>'
        ),
        415,
    ),
    "pdf": (lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n", 415),
    "zip-of-a-jpeg": (zip_file, 415),
    "eps": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n", 415),
    # Formats Pillow reads but the app does not accept: their decoders never run.
    "ico": (lambda: encode(synthetic_image((1, 2, 3), (32, 32)), "ICO"), 415),
    "tga": (lambda: encode(synthetic_image((1, 2, 3), (32, 32)), "TGA"), 415),
    "pcx": (lambda: encode(synthetic_image((1, 2, 3), (32, 32)), "PCX"), 415),
    "ppm": (lambda: encode(synthetic_image((1, 2, 3), (32, 32)), "PPM"), 415),
    "psd-like": (psd_like, 415),
    # A supported format's signature with broken data is a corrupt image, not an unsupported one.
    "jpeg-signature-only": (lambda: b"\xff\xd8\xff\xe0" + bytes(64), 400),
    "truncated-jpeg": (lambda: noisy_jpeg()[: len(noisy_jpeg()) * 6 // 10], 400),
    "truncated-jpeg-header": (lambda: noisy_jpeg()[:100], 400),
    "corrupt-jpeg-header": (lambda: patched(noisy_jpeg(), b"\xff\xc0", 5, bytes(4)), 400),  # SOF: 0 x 0 pixels
    # 0xFF fill bytes then 0x76: an 0xFF followed by a byte that no JPEG marker (nor a stuffed 0x00) is, whatever
    # the entropy-coded bytes around it
    "corrupt-jpeg-data": (lambda: patched(noisy_jpeg(), b"\xff\xda", 2000, b"\xff" * 200 + b"\x76"), 400),
    "truncated-png": (lambda: noisy_png()[: len(noisy_png()) // 2], 400),
    "truncated-png-header": (lambda: noisy_png()[:30], 400),
    "corrupt-png-data": (lambda: patched(noisy_png(), b"IDAT", 100, bytes(40)), 400),
    "truncated-gif": (lambda: animation("GIF", two_frames())[:60], 400),
    # Decompression bombs: small files that decode to huge images are refused before decoding.
    "png-declaring-64mp": (lambda: png_declaring_size(8000, 8000), 413),  # over our 50 MP limit
    "png-declaring-100mp": (lambda: png_declaring_size(10_000, 10_000), 413),  # over Pillow's warning threshold
    "png-declaring-900mp": (lambda: png_declaring_size(30_000, 30_000), 413),  # over Pillow's own limit too
    "gif-declaring-4gp": (lambda: gif_declaring_size(65535, 65535), 413),
    "png-bomb-8000x8000-zeros": (lambda: zeros_png(8000, 8000), 413),
    "png-bomb-20000x20000-zeros": (lambda: zeros_png(20_000, 20_000), 413),
    "too-elongated-60000x1": (lambda: encode(Image.new("RGB", (60_000, 1)), "PNG"), 413),
}

EXPECTED_WORDS = {400: ("corrupt", "truncated", "empty"), 413: ("too large", "elongated"), 415: ("JPEG", "PNG")}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("make", "status"), list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_gets_a_json_error(client: FlaskClient, make: Callable[[], bytes], status: int) -> None:
    body = assert_json_error(post_images(client, make()), status)
    assert any(word in body["error"] for word in EXPECTED_WORDS[status]), body["error"]
    assert "index" not in body  # only among several files


def test_the_real_bomb_is_small() -> None:
    """The 400-megapixel PNG above is a few hundred kilobytes: the body limit alone would not stop it."""
    assert len(zeros_png(20_000, 20_000)) < 1 * MiB


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"data": {}},
        {"data": {"photo": (io.BytesIO(b"\xff\xd8\xff"), "x.jpg")}},
        {"data": {"top_k": "2"}},
        {"data": b"\xff\xd8\xff" + bytes(100), "content_type": "image/jpeg"},
        {"data": b"", "content_type": "application/json"},
    ],
    ids=["no-fields", "wrong-field-name", "only-top-k", "raw-jpeg-body", "no-body"],
)
def test_missing_image_field(client: FlaskClient, request_kwargs: dict[str, Any]) -> None:
    kwargs = {"content_type": "multipart/form-data", **request_kwargs}
    body = assert_json_error(client.post("/api/predict", **kwargs), 400)
    assert "'image'" in body["error"]


def test_body_over_the_default_limit(client: FlaskClient) -> None:
    body = assert_json_error(post_images(client, bytes(16 * MiB + 1)), 413)
    assert "too large" in body["error"].lower()


def test_body_over_a_configured_limit(tiny_checkpoint: Path) -> None:
    client = make_app(MODEL_PATH=str(tiny_checkpoint), MAX_CONTENT_LENGTH=4096).test_client()
    assert_json_error(post_images(client, photo((200, 150))), 413)
    assert post_images(client, encode(synthetic_image(COLOURS["clownfish"], (8, 8)))).status_code == 200


# --- odd but valid images ----------------------------------------------------------------------------------------

ACCEPTED: dict[str, Callable[[], bytes]] = {
    "grayscale-jpeg": lambda: encode(synthetic_image(COLOURS["clownfish"]).convert("L")),
    "grayscale-png": lambda: encode(synthetic_image(COLOURS["clownfish"]).convert("L"), "PNG"),
    "1-bit-png": lambda: encode(synthetic_image(COLOURS["clownfish"]).convert("1"), "PNG"),
    "palette-png": lambda: encode(synthetic_image(COLOURS["clownfish"]).convert("P"), "PNG"),
    "palette-png-with-transparency": transparent_palette_png,
    "16-bit-png": sixteen_bit_png,
    "rgba-png": rgba_png,
    "la-png": lambda: encode(synthetic_image(COLOURS["blue_tang"]).convert("LA"), "PNG"),
    "cmyk-jpeg": lambda: encode(synthetic_image(COLOURS["clownfish"]).convert("CMYK")),
    "progressive-jpeg": lambda: photo((1600, 1200), progressive=True),
    "animated-gif": lambda: animation("GIF", two_frames()),
    "animated-webp": lambda: animation("WEBP", two_frames(), lossless=True),
    "webp": lambda: encode(synthetic_image(COLOURS["green_chromis"]), "WEBP"),
    "bmp": lambda: encode(synthetic_image(COLOURS["green_chromis"]), "BMP"),
    "tiff": lambda: encode(synthetic_image(COLOURS["green_chromis"]), "TIFF"),
    "phone-photo-exif-rotated": lambda: photo((4000, 3000), exif=exif_bytes(6)),
    "12-megapixel-jpeg": photo,
    "49-megapixel-png-under-the-limit": lambda: zeros_png(7000, 7000),
    "1x1-png": lambda: encode(Image.new("RGB", (1, 1), (200, 100, 0)), "PNG"),
    "1x1-jpeg": lambda: encode(Image.new("RGB", (1, 1), (200, 100, 0))),
    "2000x3": lambda: encode(synthetic_image(COLOURS["blue_tang"], size=(2000, 3)), "PNG"),
    "3000x20": lambda: encode(synthetic_image(COLOURS["blue_tang"], size=(3000, 20))),
    "20x3000": lambda: encode(synthetic_image(COLOURS["blue_tang"], size=(20, 3000)), "PNG"),
}


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


#: The odd images above that keep a colour of COLOURS, and the species the trained tiny model must still name.
KEEP_THEIR_SPECIES = {
    "palette-png": "clownfish",
    "palette-png-with-transparency": "clownfish",
    "cmyk-jpeg": "clownfish",
    "webp": "green_chromis",
    "bmp": "green_chromis",
    "tiff": "green_chromis",
    "2000x3": "blue_tang",
    "3000x20": "blue_tang",
    "20x3000": "blue_tang",
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_odd_images_are_classified(client: FlaskClient, name: str) -> None:
    """Classified, and those of :data:`KEEP_THEIR_SPECIES` as their species."""
    assert set(KEEP_THEIR_SPECIES) <= set(ACCEPTED)
    response = post_images(client, ACCEPTED[name]())
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["label"] in CLASS_NAMES and 0.0 <= body["confidence"] <= 1.0
    if species := KEEP_THEIR_SPECIES.get(name):
        assert body["label"] == species


@pytest.mark.parametrize(("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True})], ids=["gif", "webp"])
def test_animations_are_classified_by_their_first_frame(client: FlaskClient, fmt: str, params: dict) -> None:
    frames = two_frames()
    data = animation(fmt, frames, **params)
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == 2
    as_animation = confidences(post_images(client, data, top_k="3"))
    first, second = (confidences(post_images(client, encode(f, "PNG"), top_k="3")) for f in frames)
    assert as_animation == pytest.approx(first, abs=1e-6)
    assert max(abs(first[k] - second[k]) for k in first) > 1e-4  # the frames do give different answers


# What each EXIF orientation asks a viewer to do to the stored pixels (Pillow's transposes turn anticlockwise).
ORIENTATIONS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_exif_orientation_is_applied(client: FlaskClient, orientation: int) -> None:
    """A phone photo stored sideways with an orientation tag is classified as the upright photo."""
    data = with_orientation(quadrants(), orientation)
    with Image.open(io.BytesIO(data)) as stored:
        stored_pixels = stored.convert("RGB")  # what the JPEG holds, orientation not applied
    upright = stored_pixels.transpose(ORIENTATIONS[orientation])
    as_tagged = confidences(post_images(client, data, top_k="3"))
    assert as_tagged == pytest.approx(confidences(post_images(client, encode(upright, "PNG"), top_k="3")), abs=1e-6)
    unrotated = confidences(post_images(client, encode(stored_pixels, "PNG"), top_k="3"))
    assert max(abs(as_tagged[k] - unrotated[k]) for k in as_tagged) > 1e-4


def test_big_photos_are_decoded_at_reduced_size() -> None:
    full = decode_image(photo())
    assert full.size == (4000, 3000)
    reduced = decode_image(photo(), reduce_to=146)  # the default model's resize size
    assert 146 <= min(reduced.size) < 2 * 146 and reduced.size[0] > reduced.size[1] and reduced.mode == "RGB"
    portrait = decode_image(photo((4000, 3000), exif=exif_bytes(6)), reduce_to=146)
    assert portrait.size == reduced.size[::-1]  # the EXIF rotation is applied after the reduced decoding
    png = decode_image(zeros_png(7000, 7000), reduce_to=146)
    assert 146 <= min(png.size) < 2 * 146  # other formats are box-filtered down after decoding
    small = encode(synthetic_image(COLOURS["clownfish"], (200, 150)))
    assert decode_image(small, reduce_to=146).size == (200, 150)  # not twice the size: untouched


def test_the_api_decodes_big_photos_at_reduced_size(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = app.extensions["predictor"]
    sizes: list[tuple[int, int]] = []
    preprocess = predictor.preprocess

    def recording_preprocess(images: list[Image.Image]) -> Any:
        sizes.extend(image.size for image in images)
        return preprocess(images)

    monkeypatch.setattr(predictor, "preprocess", recording_preprocess)
    assert post_images(client, photo(), photo((4000, 3000), exif=exif_bytes(6))).status_code == 200
    resize = predictor.preprocessing.resize_size
    assert sizes[0][0] > sizes[0][1] and sizes[1] == sizes[0][::-1]
    assert all(resize <= min(size) < 2 * resize for size in sizes), sizes


def test_reduced_decoding_gives_the_same_model_input(app: Flask) -> None:
    """Reduced decoding changes the network's input by resampling noise only."""
    predictor = app.extensions["predictor"]
    size = predictor.preprocessing.resize_size
    full = predictor.transform(decode_image(photo()))
    reduced = predictor.transform(decode_image(photo(), reduce_to=size))
    assert full.shape == reduced.shape
    assert (full - reduced).abs().mean() < 0.05  # normalised units: ~1% of the 0-255 range


# --- several images ----------------------------------------------------------------------------------------------


def test_several_images_are_classified_in_one_batch(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [encode(synthetic_image(colour)) for colour in COLOURS.values()] + [zeros_png(300, 200)]
    singles = [post_images(client, f, top_k="2").get_json() for f in files]
    assert [single["label"] for single in singles[:3]] == list(COLOURS)  # the trained tiny model knows each colour
    predictor = app.extensions["predictor"]
    batches: list[int] = []
    predict_batch = predictor.predict_batch

    def counting_predict_batch(batch: Any, top_k: int = 5) -> Any:
        batches.append(len(batch))
        return predict_batch(batch, top_k=top_k)

    monkeypatch.setattr(predictor, "predict_batch", counting_predict_batch)
    response = post_images(client, *files, top_k="2")
    assert response.status_code == 200
    assert batches == [len(files)]
    body = response.get_json()
    assert set(body) == {"predictions", "model"}
    assert body["model"] == singles[0]["model"]
    assert [p["index"] for p in body["predictions"]] == list(range(len(files)))
    for single, batched in zip(singles, body["predictions"], strict=True):
        assert len(batched["top_k"]) == 2
        assert batched["label"] == single["label"]
        assert batched["confidence"] == pytest.approx(single["confidence"], abs=1e-5)
        assert {k: v for k, v in batched.items() if k not in ("index", "confidence", "top_k")} == {
            k: v for k, v in single.items() if k not in ("model", "confidence", "top_k")
        }


def test_one_image_keeps_the_one_object_shape(client: FlaskClient) -> None:
    body = post_images(client, encode(synthetic_image(COLOURS["clownfish"]))).get_json()
    assert {"label", "confidence", "top_k", "model"} <= set(body)
    assert "predictions" not in body and "index" not in body


def test_image_count_is_capped(client: FlaskClient) -> None:
    tiny = encode(synthetic_image(COLOURS["clownfish"], (8, 8)))
    response = post_images(client, *[tiny] * DEFAULT_MAX_IMAGES_PER_REQUEST)
    assert response.status_code == 200 and len(response.get_json()["predictions"]) == DEFAULT_MAX_IMAGES_PER_REQUEST
    body = assert_json_error(post_images(client, *[tiny] * (DEFAULT_MAX_IMAGES_PER_REQUEST + 1)), 413)
    assert body["error"] == f"too many images: {DEFAULT_MAX_IMAGES_PER_REQUEST + 1} in one request, the limit is 16"


def test_image_cap_is_configurable(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FISH_MAX_IMAGES_PER_REQUEST", "2")
    client = make_app(MODEL_PATH=str(tiny_checkpoint)).test_client()
    tiny = encode(synthetic_image(COLOURS["clownfish"], (8, 8)))
    assert post_images(client, tiny, tiny).status_code == 200
    assert "the limit is 2" in assert_json_error(post_images(client, tiny, tiny, tiny), 413)["error"]
    with pytest.raises(ValueError, match="MAX_IMAGES_PER_REQUEST"):
        make_app(MODEL_PATH=str(tiny_checkpoint), MAX_IMAGES_PER_REQUEST=0)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("bad", "status", "index", "message"),
    [
        (["ok", "text", "ok"], 415, 1, "image 2 of 3: not a supported image"),
        (["ok", "ok", "truncated"], 400, 2, "image 3 of 3: truncated or corrupt JPEG image"),
        (["empty", "ok"], 400, 0, "image 1 of 2: the file is empty"),
        (["ok", "bomb", "text"], 413, 1, "image 2 of 3: image is too large"),
        (["ok", "truncated", "text"], 400, 1, "image 2 of 3: "),  # the first bad file decides
    ],
    ids=["text-second", "truncated-last", "empty-first", "bomb", "first-bad-wins"],
)
def test_a_bad_image_among_several_is_named(
    client: FlaskClient, bad: list[str], status: int, index: int, message: str
) -> None:
    files = {
        "ok": encode(synthetic_image(COLOURS["clownfish"])),
        "text": b"not an image",
        "truncated": noisy_jpeg()[:2000],
        "empty": b"",
        "bomb": png_declaring_size(30_000, 30_000),
    }
    body = assert_json_error(post_images(client, *[files[name] for name in bad]), status)
    assert body["index"] == index
    assert body["error"].startswith(message), body["error"]


@pytest.mark.parametrize("top_k", ["0", "4", "two"])
def test_bad_top_k_with_several_images(client: FlaskClient, top_k: str) -> None:
    tiny = encode(synthetic_image(COLOURS["clownfish"], (8, 8)))
    assert "top_k" in assert_json_error(post_images(client, tiny, tiny, top_k=top_k), 400)["error"]


@pytest.mark.parametrize(
    ("method", "path", "status", "expected"),
    [
        ("OPTIONS", "/api/predict", 200, {"methods": ["OPTIONS", "POST"]}),
        ("POST", "/api/predict/", 404,
         {"error": "no such endpoint: POST /api/predict/ (without the trailing slash: /api/predict)"}),
        ("GET", "/healthz/", 404, {"error": "no such endpoint: GET /healthz/ (without the trailing slash: /healthz)"}),
        ("OPTIONS", "/api/nope", 404, {"error": "no such endpoint: OPTIONS /api/nope"}),
    ],
)  # fmt: skip
def test_options_and_unknown_api_paths_answer_json_with_the_security_headers(
    client, method: str, path: str, status: int, expected: dict
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status and response.is_json
    assert response.get_json() == expected
    assert response.headers["X-Frame-Options"] == "DENY" and "Content-Security-Policy" in response.headers


def test_decodes_running_at_once_are_bounded_and_a_request_that_cannot_get_a_slot_gets_503(
    tiny_checkpoint, jpeg_bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With MAX_CONCURRENT_DECODES=1, a second upload that waits longer than DECODE_WAIT_S for the one decode slot
    is refused with 503 (and a JSON message), and the slot is free again afterwards."""
    import threading

    flask_app = make_app(MODEL_PATH=str(tiny_checkpoint), MAX_CONCURRENT_DECODES=1, DECODE_WAIT_S=0.2)
    started, release = threading.Event(), threading.Event()
    decoder = flask_app.extensions["decoder"]
    real_decode = decoder.decode

    def slow_decode(*args, **kwargs):
        started.set()
        assert release.wait(10)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(decoder, "decode", slow_decode)
    first: dict = {}
    worker = threading.Thread(
        target=lambda: first.update(
            response=flask_app.test_client().post("/api/predict", data={"image": (io.BytesIO(jpeg_bytes()), "a.jpg")})
        )
    )
    worker.start()
    assert started.wait(10)
    busy = flask_app.test_client().post("/api/predict", data={"image": (io.BytesIO(jpeg_bytes()), "b.jpg")})
    release.set()
    worker.join(10)
    assert busy.status_code == 503 and "busy" in busy.get_json()["error"]
    assert first["response"].status_code == 200
    monkeypatch.setattr(decoder, "decode", real_decode)
    again = flask_app.test_client().post("/api/predict", data={"image": (io.BytesIO(jpeg_bytes()), "c.jpg")})
    assert again.status_code == 200


def test_a_request_past_its_deadline_decodes_no_more_photos(tiny_checkpoint, jpeg_bytes, monkeypatch) -> None:
    """REQUEST_DEADLINE_S bounds one request's work: once it has passed, the next photo is not decoded and the
    request gets 503 (here the first decode of two is made slow, past a 0.3 s deadline)."""
    import time as time_module

    flask_app = make_app(MODEL_PATH=str(tiny_checkpoint), REQUEST_DEADLINE_S=0.3)
    decoder = flask_app.extensions["decoder"]
    real_decode, calls = decoder.decode, []

    def slow_decode(*args, **kwargs):
        calls.append(1)
        time_module.sleep(0.5)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(decoder, "decode", slow_decode)
    files = [(io.BytesIO(jpeg_bytes()), "a.jpg"), (io.BytesIO(jpeg_bytes()), "b.jpg")]
    response = flask_app.test_client().post("/api/predict", data={"image": files})
    assert response.status_code == 503 and "took too long" in response.get_json()["error"]
    assert len(calls) == 1  # the second photo was never decoded
    monkeypatch.setattr(decoder, "decode", real_decode)
    again = flask_app.test_client().post("/api/predict", data={"image": (io.BytesIO(jpeg_bytes()), "c.jpg")})
    assert again.status_code == 200
