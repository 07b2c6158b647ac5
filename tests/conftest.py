"""Shared fixtures: tiny synthetic ImageFolder trees, a tiny trained checkpoint and a factory of checkpoints, a
JPEG factory, the Flask app and its client. The plain helpers they use (and test modules import) are in
``helpers.py``."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from tests.chromium import Console
from tests.helpers import (
    COLOURS,
    TINY_ARCH,
    TINY_IMAGE_SIZE,
    close_apps,
    encode,
    make_app,
    make_imagefolder,
    synthetic_image,
    train_tiny_network,
    wait_for_closed_apps,
)

if TYPE_CHECKING:
    from flask import Flask


@pytest.fixture(scope="module", autouse=True)
def apps_closed_after_each_module() -> Iterator[None]:
    """The decoder processes of the apps a test module made stop when the module is done (:func:`close_apps`)."""
    yield
    close_apps()


@pytest.fixture(scope="session", autouse=True)
def decoder_pools_stopped_at_the_end() -> Iterator[None]:
    """Every decoder pool that :func:`close_apps` stops in the background has stopped when the session ends."""
    yield
    wait_for_closed_apps()


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashes() -> Iterator[None]:
    """Reviewers' passwords hashed in this process with scrypt at N = 2**10 instead of werkzeug's default 2**15
    (:data:`app.corrections.credentials.PASSWORD_HASH_METHOD`, about 80 ms of CPU a hash or check here): the same
    code, a 32 times cheaper hash. The processes the tests start (``fish-admin``, gunicorn) keep the default."""
    from app.corrections import credentials

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(credentials, "PASSWORD_HASH_METHOD", "scrypt:1024:8:1")
        yield


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A 3-class ImageFolder of 8 small JPEGs per class."""
    return make_imagefolder(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release checkpoint of the :data:`TINY_ARCH` network at 32 px TRAINED on :data:`COLOURS`
    (:func:`train_tiny_network`), written by the real ``make_checkpoint``, ``release_checkpoint`` (fp16) and
    ``save_checkpoint``: served, it names the species of a clownfish-, blue-tang- or green-chromis-coloured photo,
    with a clear margin.

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

    predictor = Predictor.from_checkpoint(path, precision="fp32")  # as the tests' apps serve it (make_app)
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's binary, not a Playwright download) for a browser test module; the module calls
    :func:`tests.chromium.skip_without_browser` first."""
    from playwright.sync_api import sync_playwright

    from tests.chromium import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def console() -> Iterator[Console]:
    """The console of the pages a test opens (:class:`tests.chromium.Console`); the test fails if they logged an
    unexpected error (a CSP violation, a script error, a failed load)."""
    watcher = Console()
    yield watcher
    assert watcher.unexpected() == [], "console errors (a CSP violation, a script error, a failed load)"
