"""What :class:`app.corrections.store.CorrectionStore` answers: frozen dataclasses, never ORM objects bound to a
session (they outlive the store's transactions and cross threads safely), and the conversions from the rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import numpy as np

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
    """An accepted correction's label and the model's features of its photo (float32, shape ``(D,)``)."""

    id: int
    label: str
    label_kind: str
    features: np.ndarray


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
