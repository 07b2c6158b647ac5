"""Plain helpers shared by the test modules; the fixtures are in ``conftest.py``, which uses these.

Paths and the colours of the synthetic data, synthetic images and ImageFolder trees, the tiny trained network, the
app in testing mode, requests to ``/api/predict`` and checks of their answers, crafted image files, and real
gunicorn. Test modules import helpers from here, never from ``conftest.py`` or from each other.

Heavy imports (torch, the app, the model package, jsonschema) stay inside the functions that need them, so importing
this module, as every test module and ``conftest.py`` do, stays cheap and collection stays fast.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import io
import itertools
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageChops

from tools.hostile_images import png_chunk

if TYPE_CHECKING:
    import pytest
    import torch
    from flask import Flask
    from flask.testing import FlaskClient
    from jsonschema import Draft202012Validator

    from model.results import Prediction


ROOT = Path(__file__).resolve().parents[1]

#: Real photos shared beside the repository (absent on a bare clone).
SHARED_DATA = Path(os.environ.get("FISH_SHARED_DATA", ROOT.parent / "shared" / "data"))

#: Three well-separated colours: a tiny network learns them in a few steps.
COLOURS = {"blue_tang": (20, 40, 220), "clownfish": (240, 120, 20), "green_chromis": (30, 200, 60)}


def modules_loaded_by(statement: str, modules: tuple[str, ...]) -> list[str]:
    """The modules among ``modules`` (each a module name: it, or any module below it) that a fresh Python has loaded
    after running ``statement`` in the repository root: how the tests check that a light entry point stays light.

    Raises:
        subprocess.CalledProcessError: ``statement`` failed.
    """
    below = tuple(f"{module}." for module in modules)
    listing = f"print(*sorted(m for m in sys.modules if m in {modules!r} or m.startswith({below!r})))"
    code = f"import sys\n{statement}\n{listing}"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout.split()


# --- synthetic images and ImageFolder trees ----------------------------------------------------------------------


def synthetic_image(colour: tuple[int, int, int], size: tuple[int, int] = (40, 32), seed: int = 0) -> Image.Image:
    """An RGB image of ``colour`` plus mild noise (uniform in -25..25 a channel, clipped to 0..255), so images of one
    class differ a little.

    The noise is drawn as uint8 and added by Pillow (``ImageChops.add`` with an offset of -25): at 8 megapixels
    0.12 to 0.17 s and 48 MB of fresh memory, where int16 NumPy arithmetic took 0.2 to 1.9 s here (page faults)."""
    rng = np.random.default_rng(seed)
    noise = Image.fromarray(rng.integers(0, 51, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    return ImageChops.add(Image.new("RGB", size, colour), noise, offset=-25)


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode ``image`` in memory, e.g. ``encode(im, "PNG")``."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def make_imagefolder(root: Path, per_class: int = 8, groups_per_class: int = 4) -> Path:
    """Write ``root/<class>/fish_<track>_<frame>.jpg`` for each class of :data:`COLOURS`.

    File names carry a track id (``fish_(\\d+)_``) like Fish4Knowledge's, ``groups_per_class`` tracks per
    class, so grouped splits can be tested.
    """
    for c, (name, colour) in enumerate(COLOURS.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            track = c * 100 + i % groups_per_class
            synthetic_image(colour, seed=c * 1000 + i).save(folder / f"fish_{track:06d}_{i:05d}.jpg", quality=90)
    return root


# --- the tiny trained network and the app ------------------------------------------------------------------------


#: The tiny model every app test serves: timm's ``test_resnet`` (a ResNet made for tests: one block a stage, 16 to 96
#: channels, 0.37 M parameters) at 32 px. It replaced torchvision's resnet18 (11.7 M): building one took 84 ms here
#: (its random initialisation) against 5 ms, and every checkpoint the tests write, load and widen from fp16 was 30
#: times larger. The torchvision families keep their own tests (``tests/test_model.py``, ``tests/test_recipes.py``).
TINY_ARCH, TINY_IMAGE_SIZE = "test_resnet", 32


def train_tiny_network(class_names: list[str], per_class: int = 8, min_probability: float = 0.9) -> torch.nn.Module:
    """A :data:`TINY_ARCH` network that tells the colours of :data:`COLOURS` apart, in eval mode, float32.

    The backbone keeps its seeded random weights and is only run in eval mode, so BatchNorm normalises with the
    same (initial) running statistics in training as in serving (no train/eval mismatch); the classifier is fitted
    (Adam, cross-entropy) on the pooled features of ``per_class`` synthetic images per class (seeds 1 to
    ``per_class``: seed 0, what :func:`jpeg_bytes` sends, is held out) until every training image gets its class
    with probability >= ``min_probability``, and no further, so confidences stay clear of exactly 1 (a "not
    sure" threshold of 1.0 still applies). Takes about a second on one CPU core.

    Raises:
        AssertionError: the classifier did not reach ``min_probability`` in 500 steps.
    """
    import torch

    from model.network import build_model
    from model.open_set import OpenSetNetwork
    from model.transforms import Preprocessing, eval_transform

    torch.manual_seed(0)
    model = build_model(TINY_ARCH, num_classes=len(class_names)).eval()
    transform = eval_transform(Preprocessing.for_image_size(TINY_IMAGE_SIZE))
    images = torch.stack(
        [transform(synthetic_image(COLOURS[name], seed=s)) for name in class_names for s in range(1, per_class + 1)]
    )
    targets = torch.arange(len(class_names)).repeat_interleave(per_class)
    with torch.no_grad():
        features = OpenSetNetwork(model)(images)[1]  # the classifier's input, (N, D)
    optimizer = torch.optim.Adam(model.fc.parameters(), lr=0.01)
    for _ in range(500):
        logits = model.fc(features)
        if logits.softmax(1)[torch.arange(len(targets)), targets].min() >= min_probability:
            return model
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(logits, targets).backward()
        optimizer.step()
    raise AssertionError(f"the tiny network did not learn {class_names} in 500 steps")


@functools.cache
def _instances() -> tempfile.TemporaryDirectory[str]:
    """The folder of this test process's app instance folders (:func:`make_app`), removed when the process exits."""
    return tempfile.TemporaryDirectory(prefix="fish-test-instances-")


@functools.cache
def _migrated_database() -> Path:
    """An empty corrections database at the newest schema, made once per test process by the app's own migrations.

    :func:`make_app` starts each app on a copy: the app's store then finds it migrated (3 ms) instead of running the
    migrations (15 to 18 ms here; about 25 apps a fast-loop process). ``tests/test_corrections_store.py`` runs the
    migrations themselves on new and old databases."""
    from app.corrections.store import CorrectionStore

    path = Path(_instances().name) / "migrated.sqlite3"
    CorrectionStore(f"sqlite:///{path}").close()
    return path


def make_app(**settings: Any) -> Flask:
    """``create_app`` in testing mode with the torch backend in fp32, then ``settings`` (e.g. ``MODEL_PATH``, limits).

    The torch backend, not the default "auto" (OpenVINO on a CPU): what the app does with a request (routes,
    limits, errors, pages, JSON) does not depend on the backend, and OpenVINO converts the model and times fp32
    against bf16 at every start-up, seconds per app. The tests that exist for the OpenVINO or "auto" backend pass
    ``BACKEND`` themselves and are marked ``slow``. fp32, not "auto" (bf16 on CPUs with AMX or AVX-512 BF16): the tiny
    network runs a photo in about 4 ms in fp32 and 13 ms in bf16 here; the precisions' agreement has its own tests
    (``tests/test_model.py``).
    """
    from app import create_app
    from app.corrections.engine import SQLITE_FILE

    # an instance folder of its own (the corrections database, the secret key), never the checkout's instance/
    instance = settings.pop("INSTANCE_PATH", None)
    if instance is None:
        instance = tempfile.mkdtemp(prefix="instance-", dir=_instances().name)
        shutil.copyfile(_migrated_database(), Path(instance) / SQLITE_FILE)
    app = create_app({"TESTING": True, "BACKEND": "torch", "PRECISION": "fp32", "INSTANCE_PATH": instance, **settings})
    _open_apps.append(app)
    return app


#: The apps :func:`make_app` made in this process whose decoder processes :func:`close_apps` has not yet stopped.
_open_apps: list[Flask] = []
#: The threads in which :func:`close_apps` stops decoder pools; :func:`wait_for_closed_apps` joins them.
_closing: list[threading.Thread] = []


def close_apps() -> None:
    """Stop the decoder processes of every app :func:`make_app` has made since the last call (``conftest.py`` calls
    it as each test module ends), each in a thread of its own, so that the tests go on meanwhile.

    Without it an app's :class:`model.decoder_pool.DecoderPool` lived until the app was garbage-collected: a Flask app
    sits in reference cycles, so most lived to the end of the process, their pool threads polling all the while,
    then closed one after the other: 12 such closes took a worker 2 s after its last test. A close waits for
    pebble's threads to see the pool stopped (their 0.1 s poll): 40 to 45 closes a worker, 1.4 to 1.9 s of waiting
    when the tests waited for them (measured on the fast loop). Closing twice is harmless (the app's own finalizer
    still runs)."""
    from app.inference import DECODER_KEY

    while _open_apps:
        decoder = _open_apps.pop().extensions.get(DECODER_KEY)
        if decoder is not None:
            thread = threading.Thread(target=decoder.close, name="close-decoder-pool", daemon=True)
            thread.start()
            _closing.append(thread)


def wait_for_closed_apps() -> None:
    """Wait until the decoder pools that :func:`close_apps` is stopping have stopped (``conftest.py``, at the end
    of the test session: no decoder process outlives it)."""
    while _closing:
        _closing.pop().join()


def csrf_token(html: str) -> str:
    """The CSRF token of a page's form (Flask-WTF's hidden ``csrf_token`` field)."""
    match = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def log_in_reviewer(client: FlaskClient, name: str, password: str) -> Any:
    """Log a reviewer in through ``/review/login``'s form, with its CSRF token; the response of the POST."""
    token = csrf_token(client.get("/review/login").get_data(as_text=True))
    return client.post("/review/login", data={"name": name, "password": password, "csrf_token": token})


# --- requests to /api/predict and checks of their answers --------------------------------------------------------


def post_images(client: FlaskClient, *files: bytes, url: str = "/api/predict", **form: str) -> Any:
    """POST ``files`` as repeated multipart fields ``image`` (with hostile file names, which are never used), as
    ``test_api_inputs`` and the decode tests send them; :func:`assert_json_error` checks that no error repeats
    the file name."""
    data: dict[str, Any] = {"image": [(io.BytesIO(f), "../../etc/passwd") for f in files], **form}
    return client.post(url, data=data, content_type="multipart/form-data")


def assert_json_error(response: Any, status: int) -> dict[str, Any]:
    """The response is ``{"error": str, ...}`` JSON with ``status``; returns the body."""
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.is_json
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"] and "passwd" not in body["error"]
    return body


def confidences(response: Any) -> dict[str, float]:
    """``{label: confidence}`` over the ``top_k`` of a one-image answer."""
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return {score["label"]: score["confidence"] for score in response.get_json()["top_k"]}


DOC_URI = "urn:fish-api:openapi"


def strict(document: dict[str, Any]) -> dict[str, Any]:
    """A copy whose component objects forbid undocumented keys, so a field added to an answer but not to the
    document fails the test (the served document stays open to additions, as clients expect)."""
    doc = copy.deepcopy(document)
    for schema in doc["components"]["schemas"].values():
        if "properties" in schema:
            schema.setdefault("additionalProperties", False)
    return doc


def validator(document: dict[str, Any], *keys: str) -> Draft202012Validator:
    """A JSON Schema validator for the schema at ``document[keys[0]][keys[1]]...``; its ``#/components/...``
    references resolve in ``document``."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    pointer = "/".join(key.replace("~", "~0").replace("/", "~1") for key in keys)
    registry = Registry().with_resource(DOC_URI, Resource.from_contents(document, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{DOC_URI}#/{pointer}"}, registry=registry)


def assert_matches(document: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """``body`` is valid against the strict form of the documented response schema of ``method path -> status``."""
    keys = ("paths", path, method, "responses", str(status), "content", "application/json", "schema")
    errors = sorted(validator(strict(document), *keys).iter_errors(body), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def post_numbered_images(client: FlaskClient, files: list[bytes], **form: str) -> Any:
    """POST the list ``files`` to ``/api/predict`` as repeated multipart fields ``image`` named ``f0.jpg``,
    ``f1.jpg``..., as the OpenAPI tests send them."""
    data: dict[str, Any] = {"image": [(io.BytesIO(b), f"f{i}.jpg") for i, b in enumerate(files)], **form}
    return client.post("/api/predict", data=data, content_type="multipart/form-data")


def answer_with_verdicts(monkeypatch: pytest.MonkeyPatch, app: Flask, verdicts: list[str], **summary: Any) -> None:
    """Make ``app``'s predictor give ``verdicts`` in turn, one per image, in the order it classifies them (its real
    top-k classes otherwise, with a ``subject_score`` and a ``novelty``), and add ``summary`` (``subject``,
    ``verdict_thresholds``...) to its ``summary()`` and so to ``describe()``. Undone with ``monkeypatch``."""
    predictor = app.extensions["predictor"]
    predict_batch, describe_summary = predictor.predict_batch, predictor.summary
    turn = itertools.cycle(verdicts)

    def predict_with_verdicts(batch: torch.Tensor, top_k: int = 5) -> list[Prediction]:
        return [
            dataclasses.replace(p, verdict=next(turn), subject_score=0.25, novelty=42.5)
            for p in predict_batch(batch, top_k=top_k)
        ]

    monkeypatch.setattr(predictor, "predict_batch", predict_with_verdicts)  # what predict and the batcher call
    monkeypatch.setattr(predictor, "summary", lambda: {**describe_summary(), **summary})


# --- crafted image files -----------------------------------------------------------------------------------------


@functools.cache
def photo_pixels(size: tuple[int, int]) -> Image.Image:
    """Smooth colour gradients (0 to 230 across and down) plus mild noise (0 to 23), like a camera picture.

    Drawn with Pillow's gradients and uint8 noise: at 12 megapixels about 0.2 s, where the same picture built in
    float32 NumPy arrays (432 MB of fresh memory) took 1 to 4 s on this machine (page faults)."""
    gradient = Image.linear_gradient("L").point(lambda v: v * 230 // 255)  # 256 x 256, dark at the top
    red = gradient.transpose(Image.Transpose.ROTATE_90).resize(size)  # dark on the left
    green = gradient.resize(size)
    blue = ImageChops.add(red, green, scale=2.0)
    width, height = size
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 24, (height, width), dtype=np.uint8))
    return Image.merge("RGB", [ImageChops.add(channel, noise) for channel in (red, green, blue)])


@functools.cache
def photo(size: tuple[int, int] = (4000, 3000), exif: bytes = b"", progressive: bool = False) -> bytes:
    """A JPEG "photo" (12 MP by default), optionally with EXIF data, optionally progressive."""
    return encode(photo_pixels(size), "JPEG", quality=90, exif=exif, progressive=progressive)


def animation(fmt: str, frames: list[Image.Image], **params: Any) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)
    return buf.getvalue()


def rle8_bmp(width: int, height: int, rle_data: bytes) -> bytes:
    """A BMP (BITMAPINFOHEADER, 8 bits, BI_RLE8) with a grey palette and ``rle_data`` as its pixels."""
    palette = bytes(b for i in range(256) for b in (i, i, i, 0))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rle_data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rle_data), 0, 0, offset) + info + palette + rle_data


def sixteen_bit_gradient_png(width: int, height: int) -> bytes:
    """A 16-bit grayscale PNG of a horizontal gradient over the full 0-65535 range: big, yet only a few KB."""
    row = b"\x00" + np.linspace(0, 65535, width).astype(">u2").tobytes()
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row * min(100, height - y)) for y in range(0, height, 100))
    idat += compressor.flush()
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# --- real gunicorn -----------------------------------------------------------------------------------------------


def wait_until_answering(url: str, process: subprocess.Popen, log_path: Path, name: str, timeout: float) -> None:
    """Poll ``url`` until it answers with a success status.

    Raises:
        AssertionError: ``process`` exited, or ``timeout`` seconds passed (the message holds ``log_path``).
    """
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"{name} exited early:\n{log_path.read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # a busy machine answers late
            assert time.monotonic() < deadline, f"{name} did not answer in {timeout:g} s:\n{log_path.read_text()}"
            time.sleep(0.25)


@contextlib.contextmanager
def gunicorn_server(model: Path, log_dir: Path, **settings: str) -> Iterator[str]:
    """Real gunicorn (``gunicorn.conf.py``, one worker, one torch thread) serving ``model`` on a free loopback
    port; yields its base URL once ``/healthz`` answers, and stops it on exit. ``settings`` are more environment
    variables (e.g. ``FISH_DECODE_TIMEOUT_S="0.5"``).

    Raises:
        AssertionError: gunicorn exited early or did not answer within 60 s (the message holds its log).
    """
    from tools.loadtest import free_port, start_server, stop_server

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = log_dir / "gunicorn.log"
    # the corrections database and the secret key in log_dir, never in the checkout's instance/
    settings = {"FISH_THREADS": "1", "FISH_INSTANCE_PATH": str(log_dir / "instance"), **settings}
    process = start_server(model, port, 1, log_path, **settings)
    try:
        wait_until_answering(f"{base}/healthz", process, log_path, "gunicorn", timeout=60)
        yield base
    finally:
        stop_server(process, grace=15)
