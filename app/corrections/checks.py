"""Checks of the values given to :class:`app.corrections.store.CorrectionStore`: each raises ValueError with a
message that names the argument and says what is wrong."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from app.corrections.models import CROP_LENGTH, LABEL_KINDS, LABEL_LENGTH, MEMORY_STATUSES, MODEL_ID_LENGTH
from model.crop import Crop

#: The first bytes of every JPEG file (SOI and the next marker's 0xFF).
JPEG_MAGIC = b"\xff\xd8\xff"
#: The largest id of a row (an ``Integer`` primary key: 32 bits on PostgreSQL).
MAX_ID = 2**31 - 1


def is_row_id(value: Any) -> bool:
    """Whether ``value`` may be a row's id: an int within :data:`MAX_ID` (a larger one names no row, and would make
    PostgreSQL fail with "integer out of range" and SQLite with OverflowError rather than find nothing)."""
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_ID - 1 <= value <= MAX_ID


def check_text(name: str, value: Any, max_length: int, *, optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is a str of 1 to ``max_length`` characters, not all blank, without a NUL
    character (or None, when ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-blank string, got {value!r:.80}")
    if len(value) > max_length:
        raise ValueError(f"{name} must be at most {max_length} characters, got {len(value)}")
    if "\x00" in value:  # PostgreSQL's text cannot hold one: refused on every database alike
        raise ValueError(f"{name} must not contain a NUL character")


def check_choice(name: str, value: Any, choices: tuple[str, ...] | Mapping[str, str]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r:.80}")


def check_features(features: Any) -> None:
    """Raise ValueError unless ``features`` is a 1-D, non-empty, finite float32 numpy array."""
    if not isinstance(features, np.ndarray):
        raise ValueError(f"features must be a numpy array, got {type(features).__name__}")
    if features.dtype != np.float32:
        raise ValueError(f"features must be float32, got {features.dtype}")
    if features.ndim != 1 or features.size == 0:
        raise ValueError(f"features must be a non-empty 1-D array, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features must be finite (no NaN or infinity)")


#: A correction's open-set scores: how many, and their order (:meth:`model.open_set.OpenSetScores.row`).
SCORES = 4
SCORES_TEXT = "subject, novelty, taxon, other"


def check_scores(scores: Any) -> list[float | None]:
    """A correction's open-set scores ``[subject, novelty, taxon, other]``, each a float or None.

    Raises:
        ValueError: not a list or tuple of 4 values, each None or a finite number.
    """
    values = list(scores) if isinstance(scores, list | tuple) else None
    if values is None or len(values) != SCORES:
        raise ValueError(f"scores must be None or ({SCORES_TEXT}), got {scores!r:.80}")
    for value in values:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise ValueError(f"scores must be finite numbers or None, got {value!r:.40}")
    return [float(v) if v is not None else None for v in values]


def scores_json(scores: Any) -> str | None:
    """A correction's open-set scores as stored: None stays None, else JSON ``[subject, novelty, taxon, other]``.

    Raises:
        ValueError: see :func:`check_scores`.
    """
    return None if scores is None else json.dumps(check_scores(scores))


def check_photo(photo: Any, photo_size: Any) -> None:
    """Raise ValueError unless ``photo`` is None (and ``photo_size`` too) or JPEG bytes with a positive
    ``(width, height)``."""
    if photo is None:
        if photo_size is not None:
            raise ValueError("photo_size is given without a photo")
        return
    if not isinstance(photo, bytes) or not photo.startswith(JPEG_MAGIC):
        raise ValueError("photo must be the JPEG bytes of app.corrections.photos.reencode_photo")
    if (
        not isinstance(photo_size, tuple)
        or len(photo_size) != 2
        or not all(isinstance(side, int) and side > 0 for side in photo_size)
    ):
        raise ValueError(f"photo_size must be (width, height) in pixels, got {photo_size!r:.80}")


def check_aware(name: str, value: Any) -> None:
    """Raise ValueError unless ``value`` is a timezone-aware datetime."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r:.80}")


def check_labels(label: Any, label_kind: Any, predicted_label: Any, crop: Any) -> None:
    """Raise ValueError unless a correction's ``label`` (1 to 200 characters), ``label_kind`` (one of
    :data:`~app.corrections.models.LABEL_KINDS`), ``predicted_label`` (None or as ``label``) and ``crop`` (None or
    ``x,y,w,h`` as :meth:`model.crop.Crop.parse` reads it) are valid."""
    check_text("label", label, LABEL_LENGTH)
    check_choice("label_kind", label_kind, LABEL_KINDS)
    check_text("predicted_label", predicted_label, LABEL_LENGTH, optional=True)
    check_text("crop", crop, CROP_LENGTH, optional=True)
    if crop is not None:
        try:
            Crop.parse(crop)
        except ValueError as exc:
            raise ValueError(f"crop: {exc}") from None


def memory_report_json(model_id: Any, status: Any, reason: Any, report: Any, blob: Any) -> str:
    """Check a memory's fields and return its report as JSON text.

    Raises:
        ValueError: a blank or too long ``model_id``, an unknown ``status``, a served memory without a ``blob``
            (bytes), a ``reason`` that is not a string or None, or a ``report`` that is not a dict JSON can encode.
    """
    check_text("model_id", model_id, MODEL_ID_LENGTH)
    check_choice("status", status, MEMORY_STATUSES)
    if blob is not None and not isinstance(blob, bytes):
        raise ValueError(f"blob must be bytes or None, got {type(blob).__name__}")
    if status == "served" and blob is None:
        raise ValueError("a served memory needs its blob")
    if reason is not None and (not isinstance(reason, str) or "\x00" in reason):
        raise ValueError(f"reason must be a string without a NUL character, or None, got {reason!r:.80}")
    if not isinstance(report, dict):
        raise ValueError(f"report must be a dict, got {type(report).__name__}")
    try:
        return json.dumps(report)
    except (TypeError, ValueError) as exc:  # an object JSON cannot encode, a circular reference
        raise ValueError(f"report must be JSON-able: {exc}") from exc
