"""What :class:`app.corrections.store.CorrectionStore` answers: frozen dataclasses, never ORM objects bound to a
session (they outlive the store's transactions and cross threads safely), and the conversions from the rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from app.corrections import checks
from app.corrections.models import Correction, Memory


@dataclass(frozen=True)
class CorrectionView:
    """One correction as stored (its features aside); times are timezone-aware UTC, ``reviewed_by`` is the name of
    the reviewer who last accepted or rejected it."""

    id: int
    created_at: datetime
    status: str
    label: str
    label_kind: str
    predicted_label: str | None
    crop: str | None
    photo_sha256: str | None
    model_id: str
    reviewed_by: str | None
    reviewed_at: datetime | None


@dataclass(frozen=True)
class ReviewerView:
    """A reviewer: id and name (never a hash)."""

    id: int
    name: str


@dataclass(frozen=True)
class LabelledFeatures:
    """An accepted correction's label, the model's features of its photo (float32, shape ``(D,)``) and its open-set
    scores ``(subject, novelty, taxon, other)`` (None: not recorded)."""

    id: int
    label: str
    label_kind: str
    features: np.ndarray
    scores: tuple[float | None, ...] | None = None


@dataclass(frozen=True)
class MemoryView:
    """A memory's record without its blob; ``report`` is a new dict, read from the stored JSON."""

    id: int
    created_at: datetime
    model_id: str
    status: str
    reason: str | None
    report: dict


def correction_view(row: Correction, reviewer_name: str | None) -> CorrectionView:
    return CorrectionView(
        id=row.id,
        created_at=row.created_at,
        status=row.status,
        label=row.label,
        label_kind=row.label_kind,
        predicted_label=row.predicted_label,
        crop=row.crop,
        photo_sha256=row.photo_sha256,
        model_id=row.model_id,
        reviewed_by=reviewer_name,
        reviewed_at=row.reviewed_at,
    )


def memory_view(row: Memory) -> MemoryView:
    return MemoryView(
        id=row.id,
        created_at=row.created_at,
        model_id=row.model_id,
        status=row.status,
        reason=row.reason,
        report=json.loads(row.report),
    )


def features_of(correction_id: int, blob: bytes, dim: int) -> np.ndarray:
    """The stored features as a new, writable float32 array.

    Raises:
        ValueError: the blob does not hold ``dim`` float32 values.
    """
    if len(blob) != 4 * dim:
        raise ValueError(f"correction {correction_id}: its features hold {len(blob)} bytes, not {dim} float32")
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def scores_of(correction_id: int, text: str | None) -> tuple[float | None, ...] | None:
    """The stored open-set scores as a tuple of 4 (None for a row without them).

    Raises:
        ValueError: the column does not hold what :func:`app.corrections.checks.scores_json` writes.
    """
    if text is None:
        return None
    try:
        return tuple(checks.check_scores(json.loads(text)))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"correction {correction_id}: its scores are damaged: {exc}") from None
