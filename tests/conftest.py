"""Shared fixtures: tiny synthetic ImageFolder trees, a tiny checkpoint, the Flask app and its client."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release checkpoint of a resnet18 at 32 px with random weights for :data:`COLOURS` (fast to load)."""
    import torch

    from model.checkpoint import make_checkpoint, release_checkpoint, save_checkpoint
    from model.network import build_model
    from model.transforms import Preprocessing

    torch.manual_seed(0)
    ckpt = make_checkpoint(
        model=build_model("resnet18", num_classes=len(COLOURS)),
        arch="resnet18",
        class_names=sorted(COLOURS),
        preprocessing=Preprocessing.for_image_size(32),
        epoch=0,
        metrics={"val_accuracy": 0.0, "val_macro_f1": 0.0},
        config={"arch": "resnet18", "image_size": 32},
    )
    return save_checkpoint(release_checkpoint(ckpt), tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def jpeg_bytes() -> Callable[..., bytes]:
    """Factory: ``jpeg_bytes(colour=(r, g, b), size=(w, h))`` gives a small JPEG file's bytes."""

    def make(colour: tuple[int, int, int] = COLOURS["clownfish"], size: tuple[int, int] = (40, 32)) -> bytes:
        return encode(synthetic_image(colour, size))

    return make


@pytest.fixture
def app(tiny_checkpoint: Path):
    """The Flask app serving :func:`tiny_checkpoint`, in testing mode."""
    from app import create_app

    return create_app({"TESTING": True, "MODEL_PATH": str(tiny_checkpoint)})


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
def gunicorn_server(model: Path, log_dir: Path) -> Iterator[str]:
    """Real gunicorn (``gunicorn.conf.py``, one worker, one torch thread) serving ``model`` on a free loopback
    port; yields its base URL once ``/healthz`` answers, and stops it on exit.

    Raises:
        AssertionError: gunicorn exited early or did not answer within 60 s (the message holds its log).
    """
    from tools.loadtest import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "FISH_MODEL_PATH": str(model),
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "FISH_THREADS": "1",
    }
    log_path = log_dir / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_answering(f"{base}/healthz", process, log_path, "gunicorn", timeout=60)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
