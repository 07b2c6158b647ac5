"""Shared fixtures: tiny synthetic ImageFolder trees, a tiny trained checkpoint and a factory of checkpoints, the
Flask app and its client, and real gunicorn."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    import torch
    from flask import Flask

ROOT = Path(__file__).resolve().parents[1]

#: Real photos shared beside the repository (absent on a bare clone).
SHARED_DATA = Path(os.environ.get("FISH_SHARED_DATA", ROOT.parent / "shared" / "data"))

#: Three well-separated colours: a tiny network learns them in a few steps.
COLOURS = {"blue_tang": (20, 40, 220), "clownfish": (240, 120, 20), "green_chromis": (30, 200, 60)}


def synthetic_image(colour: tuple[int, int, int], size: tuple[int, int] = (40, 32), seed: int = 0) -> Image.Image:
    """An RGB image of ``colour`` plus mild noise (uint8), so images of one class differ a little."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour, dtype=np.int16) + rng.integers(-25, 26, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


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


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A 3-class ImageFolder of 8 small JPEGs per class."""
    return make_imagefolder(tmp_path / "data")


#: The tiny model every app test serves: a resnet18 at 32 px (fast to build, load and run on a CPU).
TINY_ARCH, TINY_IMAGE_SIZE = "resnet18", 32


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
        features = OpenSetNetwork(model)(images)[1]  # the classifier's input, (N, 512)
    optimizer = torch.optim.Adam(model.fc.parameters(), lr=0.01)
    for _ in range(500):
        logits = model.fc(features)
        if logits.softmax(1)[torch.arange(len(targets)), targets].min() >= min_probability:
            return model
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(logits, targets).backward()
        optimizer.step()
    raise AssertionError(f"the tiny network did not learn {class_names} in 500 steps")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release checkpoint of a resnet18 at 32 px TRAINED on :data:`COLOURS` (:func:`train_tiny_network`), written
    by the real ``make_checkpoint``, ``release_checkpoint`` (fp16) and ``save_checkpoint``: served, it names the
    species of a clownfish-, blue-tang- or green-chromis-coloured photo, with a clear margin.

    Checked here through a real :class:`model.predictor.Predictor` on held-out JPEGs (the photo
    :func:`jpeg_bytes` sends among them), so a test that relies on the right species fails here first.
    """
    from model.checkpoint import make_checkpoint, release_checkpoint, save_checkpoint
    from model.predictor import Predictor
    from model.transforms import Preprocessing

    class_names = sorted(COLOURS)
    ckpt = make_checkpoint(
        model=train_tiny_network(class_names),
        arch=TINY_ARCH,
        class_names=class_names,
        preprocessing=Preprocessing.for_image_size(TINY_IMAGE_SIZE),
        epoch=0,
        metrics={"val_accuracy": 1.0, "val_macro_f1": 1.0},  # every held-out photo below is right
        config={"arch": TINY_ARCH, "image_size": TINY_IMAGE_SIZE},
    )
    path = save_checkpoint(release_checkpoint(ckpt), tmp_path_factory.mktemp("ckpt") / "tiny.pt")

    predictor = Predictor.from_checkpoint(path, precision="auto")  # the app's precision (bf16 on such CPUs)
    held_out = [(name, seed, size) for name in class_names for seed, size in ((0, (40, 32)), (50, (200, 120)))]
    photos = [Image.open(io.BytesIO(encode(synthetic_image(COLOURS[n], size, seed)))) for n, seed, size in held_out]
    for (name, _, _), prediction in zip(held_out, predictor.predict(photos), strict=True):
        assert prediction.label == name and 0.8 < prediction.confidence < 0.9999, (name, prediction)
    return path


@pytest.fixture(scope="session")
def checkpoint_factory(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``checkpoint_factory(name="model.pt", **fields) -> Path`` writes a release checkpoint (in a new
    folder) like :func:`tiny_checkpoint` with the schema fields given (see :mod:`model.checkpoint`) in place of its
    own, through the real ``make_checkpoint``, ``release_checkpoint`` and ``save_checkpoint``, e.g.
    ``checkpoint_factory(class_info={...}, serving={"confidence_threshold": 0.5, "temperature": 2.5})``.

    Fields: ``make_checkpoint``'s (``arch``, ``class_names``, ``preprocessing`` (a Preprocessing), ``epoch``,
    ``config``, ``class_info``, ``head``), and those the release step writes afterwards (``metrics``, which may
    nest per-class dicts and a confusion matrix, ``serving``, ``open_set``). The network is the trained tiny one,
    unless ``arch``, ``head`` or the number of class names differ from it: then a seeded network with random
    weights of that shape (the trained one has one output per colour of :data:`COLOURS`).

    Raises:
        TypeError: a field that is not one of those.
    """
    import torch

    from model.checkpoint import (
        load_checkpoint,
        make_checkpoint,
        model_from_checkpoint,
        release_checkpoint,
        save_checkpoint,
    )
    from model.network import build_model

    tiny = load_checkpoint(tiny_checkpoint)
    release_fields = ("metrics", "serving", "open_set")

    def make(name: str = "model.pt", **fields: Any) -> Path:
        written = {key: fields.pop(key) for key in release_fields if key in fields}
        spec: dict[str, Any] = {
            "arch": tiny.arch,
            "class_names": tiny.class_names,
            "preprocessing": tiny.preprocessing,
            "epoch": tiny.epoch,
            "config": tiny.config,
            **fields,
        }
        if {"arch", "head"} & set(fields) or len(spec["class_names"]) != len(tiny.class_names):
            torch.manual_seed(0)
            network = build_model(spec["arch"], num_classes=len(spec["class_names"]), head=spec.get("head"))
        else:
            network = model_from_checkpoint(tiny)
        ckpt = release_checkpoint(make_checkpoint(model=network, metrics=tiny.metrics, **spec))
        # the release step's records as raw schema dicts, as the file holds them
        return save_checkpoint({**ckpt.to_dict(), **written}, tmp_path_factory.mktemp("checkpoint") / name)

    return make


def make_app(**settings: Any) -> Flask:
    """``create_app`` in testing mode with the torch backend, then ``settings`` (e.g. ``MODEL_PATH``, limits).

    The torch backend, not the default "auto" (OpenVINO on a CPU): what the app does with a request (routes,
    limits, errors, pages, JSON) does not depend on the backend, and OpenVINO converts the model and times fp32
    against bf16 at every start-up, seconds per app. The tests that exist for the OpenVINO or "auto" backend pass
    ``BACKEND`` themselves and are marked ``slow``.
    """
    from app import create_app

    return create_app({"TESTING": True, "BACKEND": "torch", **settings})


@pytest.fixture
def jpeg_bytes() -> Callable[..., bytes]:
    """Factory: ``jpeg_bytes(colour=(r, g, b), size=(w, h))`` gives a small JPEG file's bytes."""

    def make(colour: tuple[int, int, int] = COLOURS["clownfish"], size: tuple[int, int] = (40, 32)) -> bytes:
        return encode(synthetic_image(colour, size))

    return make


@pytest.fixture(scope="module")
def app(tiny_checkpoint: Path) -> Flask:
    """The Flask app serving :func:`tiny_checkpoint`, in testing mode, with the torch backend (:func:`make_app`).

    Built once per module (each build costs about a second): a test that changes it does so with ``monkeypatch``,
    which undoes the change after the test; a test that needs other settings builds its own with :func:`make_app`.
    """
    return make_app(MODEL_PATH=str(tiny_checkpoint))


@pytest.fixture
def client(app):
    """A test client of :func:`app`."""
    return app.test_client()


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
    process = start_server(model, port, 1, log_path, **{"FISH_THREADS": "1", **settings})
    try:
        wait_until_answering(f"{base}/healthz", process, log_path, "gunicorn", timeout=60)
        yield base
    finally:
        stop_server(process, grace=15)
