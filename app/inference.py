"""The model in an app (Flask's ``init_app`` pattern): loading the :class:`Predictor` once per app and reaching it.

Owns what each app keeps in ``app.extensions``: the predictor, the :class:`model.batching.MicroBatcher` that
routes call ``predict`` on, and the semaphore that bounds the image decodes running at once in a worker
(:mod:`app.uploads` takes its slots). Routes reach them through :func:`get_predictor`, :func:`get_batcher` and
:func:`decode_slots`, inside a request or app context; nothing lives in a module global.
"""

from __future__ import annotations

import logging
import threading

import torch
from flask import Flask, current_app

from model.batching import MicroBatcher
from model.checkpoint import CheckpointError
from model.predictor import Predictor
from model.runtime import set_torch_threads

logger = logging.getLogger(__name__)

#: Key of the predictor in ``app.extensions``.
EXTENSION_KEY = "predictor"
#: Key of the :class:`model.batching.MicroBatcher` in ``app.extensions``.
BATCHER_KEY = "batcher"
#: Where each app keeps the semaphore that bounds the image decodes running at once in a worker.
DECODE_SLOTS_KEY = "decode_slots"


def init_app(app: Flask) -> None:
    """Load the checkpoint at ``MODEL_PATH`` into ``app``: the predictor (with the app's DEVICE, PRECISION,
    BACKEND, THREADS and thresholds), its batcher (BATCH_MAX_SIZE, BATCH_WAIT_MS) and the decode slots
    (MAX_CONCURRENT_DECODES); logs what it serves.

    Raises:
        model.checkpoint.CheckpointError: the checkpoint is missing or invalid; the message names MODEL_PATH.
        ValueError: PRECISION or BACKEND is not a known name.
        model.predictor.BackendUnavailableError: BACKEND is openvino and it is not installed.
    """
    threads = app.config["THREADS"]
    path = app.config["MODEL_PATH"]
    try:
        predictor = Predictor.from_checkpoint(
            path,
            device=app.config["DEVICE"],
            precision=app.config["PRECISION"],
            backend=app.config["BACKEND"],
            num_threads=threads,
            confidence_threshold=app.config["CONFIDENCE_THRESHOLD"],
            novelty_threshold=app.config["NOVELTY_THRESHOLD"],
            subject_threshold=app.config["SUBJECT_THRESHOLD"],
        )
    except CheckpointError as exc:
        raise CheckpointError(f"cannot load the model from MODEL_PATH={path}: {exc}") from exc
    set_torch_threads(predictor.backend, threads)
    app.extensions[EXTENSION_KEY] = predictor
    app.extensions[DECODE_SLOTS_KEY] = threading.BoundedSemaphore(app.config["MAX_CONCURRENT_DECODES"])
    app.extensions[BATCHER_KEY] = MicroBatcher(
        predictor, max_batch=app.config["BATCH_MAX_SIZE"], max_wait_ms=float(app.config["BATCH_WAIT_MS"])
    )
    logger.info(
        "serving %s (%d classes) with %s %s, %s inference threads, torch threads %d",
        path,
        len(predictor.class_names),
        predictor.backend,
        predictor.precision,
        threads or "all",
        torch.get_num_threads(),
    )


def get_predictor() -> Predictor:
    """The current app's predictor (call inside a request or app context)."""
    return current_app.extensions[EXTENSION_KEY]


def get_batcher() -> MicroBatcher:
    """The current app's batching front of its predictor: what routes call ``predict`` on."""
    return current_app.extensions[BATCHER_KEY]


def decode_slots() -> threading.BoundedSemaphore:
    """The current app's decode slots: ``MAX_CONCURRENT_DECODES`` decodes may hold one at a time."""
    return current_app.extensions[DECODE_SLOTS_KEY]
