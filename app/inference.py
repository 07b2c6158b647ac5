"""The model in an app (Flask's ``init_app`` pattern): loading the :class:`Predictor` once per app and reaching it.

Owns what each app keeps in ``app.extensions``: the predictor, the :class:`model.batching.MicroBatcher` that
routes call ``predict`` on, the :class:`model.decoder_pool.DecoderPool` whose processes decode uploads under a
deadline and a memory limit, and the semaphore that bounds the image decodes running at once in a worker (one slot
per decoder process; :mod:`app.uploads` takes them). Routes reach them through :func:`get_predictor`,
:func:`get_batcher`, :func:`get_decoder` and :func:`decode_slots`, inside a request or app context; nothing lives
in a module global. The decoder processes stop when the app is garbage-collected or the process exits.
"""

from __future__ import annotations

import logging
import threading
import weakref

import torch
from flask import Flask, current_app

from model.batching import MicroBatcher
from model.checkpoint import CheckpointError
from model.decoder_pool import DecoderPool
from model.predictor import Predictor
from model.runtime import set_torch_threads

logger = logging.getLogger(__name__)

#: Key of the predictor in ``app.extensions``.
EXTENSION_KEY = "predictor"
#: Key of the :class:`model.batching.MicroBatcher` in ``app.extensions``.
BATCHER_KEY = "batcher"
#: Where each app keeps the semaphore that bounds the image decodes running at once in a worker.
DECODE_SLOTS_KEY = "decode_slots"
#: Where each app keeps its :class:`model.decoder_pool.DecoderPool`.
DECODER_KEY = "decoder"


def init_app(app: Flask) -> None:
    """Load the checkpoint at ``MODEL_PATH`` into ``app``: the predictor (with the app's DEVICE, PRECISION,
    BACKEND, THREADS and thresholds), its batcher (BATCH_MAX_SIZE, BATCH_WAIT_MS), the decoder processes and as
    many decode slots (MAX_CONCURRENT_DECODES, DECODE_TIMEOUT_S, DECODE_MEMORY_MB); logs what it serves.

    Raises:
        model.checkpoint.CheckpointError: the checkpoint is missing or invalid; the message names MODEL_PATH.
        ValueError: PRECISION or BACKEND is not a known name.
        model.backends.BackendUnavailableError: BACKEND is openvino and it is not installed.
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
            logit_threshold=app.config["LOGIT_THRESHOLD"],
            novelty_threshold=app.config["NOVELTY_THRESHOLD"],
            subject_threshold=app.config["SUBJECT_THRESHOLD"],
        )
    except CheckpointError as exc:
        raise CheckpointError(f"cannot load the model from MODEL_PATH={path}: {exc}") from exc
    set_torch_threads(predictor.backend, threads)
    app.extensions[EXTENSION_KEY] = predictor
    processes = app.config["MAX_CONCURRENT_DECODES"]
    decoder = DecoderPool(processes, timeout_s=app.config["DECODE_TIMEOUT_S"], memory_mb=app.config["DECODE_MEMORY_MB"])
    weakref.finalize(app, decoder.close)
    app.extensions[DECODER_KEY] = decoder
    app.extensions[DECODE_SLOTS_KEY] = threading.BoundedSemaphore(processes)
    app.extensions[BATCHER_KEY] = MicroBatcher(
        predictor, max_batch=app.config["BATCH_MAX_SIZE"], max_wait_ms=float(app.config["BATCH_WAIT_MS"])
    )
    logger.info(
        "serving %s (%d classes) with %s %s, %s inference threads, torch threads %d, %d decoder processes",
        path,
        len(predictor.class_names),
        predictor.backend,
        predictor.precision,
        threads or "all",
        torch.get_num_threads(),
        processes,
    )


def get_predictor() -> Predictor:
    """The current app's predictor (call inside a request or app context)."""
    return current_app.extensions[EXTENSION_KEY]


def get_batcher() -> MicroBatcher:
    """The current app's batching front of its predictor: what routes call ``predict`` on."""
    return current_app.extensions[BATCHER_KEY]


def get_decoder() -> DecoderPool:
    """The current app's decoder processes: what :mod:`app.uploads` decodes every upload in."""
    return current_app.extensions[DECODER_KEY]


def decode_slots() -> threading.BoundedSemaphore:
    """The current app's decode slots: ``MAX_CONCURRENT_DECODES`` decodes may hold one at a time."""
    return current_app.extensions[DECODE_SLOTS_KEY]
