"""The corrections database behind one object: :class:`CorrectionStore`.

Every read and write of the corrections, photos, reviewers and memories goes through it, each call in one
transaction, committed before a write returns (an acknowledged correction survives the process being killed the
next instant). It answers with frozen dataclasses (:class:`CorrectionView`, :class:`ReviewerView`,
:class:`LabelledFeatures`, :class:`MemoryView`), never with ORM objects bound to a session.

Two databases: SQLite (the default, :func:`database_url`: a file in the instance folder, in WAL mode with
``synchronous=FULL``; writes begin ``IMMEDIATE`` so concurrent workers queue for the lock, for up to 10 s, instead of
failing on a stale read) and PostgreSQL (``postgresql+psycopg://...``, for several servers). Opening a store migrates
its database to the newest schema (:func:`app.corrections.migrations.upgrade`, serialized between processes).

One store per process (after a fork: gunicorn workers each open their own), shared by its threads.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, sessionmaker

from app.corrections import checks, credentials, migrations
from app.corrections.engine import WRITE_OPTION, create_engine, database_url
from app.corrections.models import (
    LABEL_KINDS,
    MEMORY_STATUSES,
    MODEL_ID_LENGTH,
    NAME_LENGTH,
    SHA256_HEX_LENGTH,
    STATUSES,
    Correction,
    Memory,
    Photo,
    Reviewer,
    utcnow,
)
from app.corrections.views import (
    CorrectionView,
    LabelledFeatures,
    MemoryView,
    ReviewerView,
    correction_view,
    features_of,
    memory_view,
    scores_of,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_KINDS",
    "REVIEW_ACTIONS",
    "STATUSES",
    "CorrectionNotFound",
    "CorrectionStore",
    "CorrectionView",
    "InvalidReview",
    "LabelledFeatures",
    "MemoryView",
    "PhotoNotFound",
    "ReviewerExists",
    "ReviewerView",
    "StoreError",
    "database_url",
]

#: A review action and the status it gives.
REVIEW_ACTIONS = {"accept": "accepted", "reject": "rejected"}


class StoreError(Exception):
    """Base of the errors of :class:`CorrectionStore`."""


class CorrectionNotFound(StoreError):
    """No correction has that id."""


class PhotoNotFound(StoreError):
    """No photo has that SHA-256."""


class InvalidReview(StoreError):
    """A review that cannot be done: an unknown action or reviewer."""


class ReviewerExists(StoreError):
    """A reviewer already has that name."""


def _with_reviewer_name() -> Any:
    """``SELECT correction, reviewer name``: the reviewer's name is None while nobody reviewed it."""
    return select(Correction, Reviewer.name).outerjoin(Reviewer, Correction.reviewed_by == Reviewer.id)


def _insert_photo(session: Session, sha256: str, jpeg: bytes, size: tuple[int, int], now: datetime) -> None:
    """Insert a photo unless one with its hash is there (``ON CONFLICT DO NOTHING``: safe against a concurrent
    insert of the same photo)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    values = {"sha256": sha256, "jpeg": jpeg, "width": size[0], "height": size[1], "size_bytes": len(jpeg)}
    session.execute(insert(Photo).values(created_at=now, **values).on_conflict_do_nothing(index_elements=["sha256"]))


class CorrectionStore:
    """The corrections database: see the module docstring. Thread-safe; one per process.

    Args:
        url: a SQLAlchemy URL, SQLite or PostgreSQL (:func:`database_url` resolves the app's settings to one).
        upgrade: migrate the database to the newest schema first (serialized between processes).

    Raises:
        ValueError: ``url`` is neither SQLite nor PostgreSQL.
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or migrated.
    """

    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        self._engine = create_engine(url)
        try:
            if upgrade:
                migrations.upgrade(self._engine)
        except BaseException:
            self._engine.dispose()
            raise
        self._read = sessionmaker(self._engine, expire_on_commit=False)
        self._write = sessionmaker(self._engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)
        logger.debug("corrections store on %s", self._engine.url.render_as_string(hide_password=True))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CorrectionStore:
        """The store of the app's settings (``DATABASE_URL``, ``INSTANCE_PATH``: see :func:`database_url`),
        migrated to the newest schema."""
        return cls(database_url(config))

    def close(self) -> None:
        """Close the store's connections (its engine's pool)."""
        self._engine.dispose()

    def __enter__(self) -> CorrectionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- corrections ------------------------------------------------------------------------------------------

    def submit(
        self,
        *,
        label: str,
        label_kind: str,
        features: np.ndarray,
        model_id: str,
        client_key: str,
        predicted_label: str | None = None,
        crop: str | None = None,
        photo: bytes | None = None,
        photo_size: tuple[int, int] | None = None,
        scores: Sequence[float | None] | None = None,
    ) -> CorrectionView:
        """Store a new pending correction, and its photo if given, in one transaction committed before returning
        it (status ``pending``).

        Args:
            label, label_kind: what the photo shows, at most 200 characters (a species name, or a word for the
                other kinds), and its kind, one of :data:`LABEL_KINDS`.
            features: the model's features of the (cropped) photo: 1-D, finite, float32; kept bit-exact.
            model_id, client_key: the model that computed ``features`` (at most 128 characters); who sent it (the
                SHA-256 hex of the client address, at most 64), for the rate limit.
            predicted_label, crop: the model's answer being corrected; the ``x,y,w,h`` crop the features are of.
            photo, photo_size: the photo as :func:`app.corrections.photos.reencode_photo` encoded it (None: no
                consent), stored once per content (SHA-256), and its ``(width, height)`` in pixels.
            scores: the photo's open-set scores ``(subject, novelty, taxon, other)``, each a number or None.

        Raises:
            ValueError: an argument is invalid; the message says which and why.
        """
        checks.check_labels(label, label_kind, predicted_label, crop)
        checks.check_features(features)
        checks.check_text("model_id", model_id, MODEL_ID_LENGTH)
        checks.check_text("client_key", client_key, SHA256_HEX_LENGTH)
        checks.check_photo(photo, photo_size)
        now = utcnow()
        sha256 = hashlib.sha256(photo).hexdigest() if photo is not None else None
        row = Correction(
            created_at=now,
            status="pending",
            label=label,
            label_kind=label_kind,
            predicted_label=predicted_label,
            crop=crop,
            photo_sha256=sha256,
            features=features.astype("<f4", copy=False).tobytes(),
            feature_dim=int(features.size),
            model_id=model_id,
            client_key=client_key,
            scores=checks.scores_json(scores),
        )
        with self._write.begin() as session:
            if photo is not None and sha256 is not None and photo_size is not None:
                _insert_photo(session, sha256, photo, photo_size, now)
            session.add(row)
            session.flush()
            view = correction_view(row, None)
        logger.info("correction %d stored (%s, photo %s)", view.id, label_kind, "yes" if sha256 else "no")
        return view

    def get(self, correction_id: int) -> CorrectionView:
        """The correction ``correction_id``.

        Raises:
            CorrectionNotFound: there is none.
        """
        if not checks.is_row_id(correction_id):
            raise CorrectionNotFound(f"no correction {correction_id!r:.40}")
        with self._read() as session:
            found = session.execute(_with_reviewer_name().where(Correction.id == correction_id)).first()
        if found is None:
            raise CorrectionNotFound(f"no correction {correction_id}")
        return correction_view(*found)

    def by_status(self, status: str, limit: int | None = 100, offset: int = 0) -> list[CorrectionView]:
        """The corrections of one status, oldest first, ``limit`` at most (None: all) after skipping ``offset``.

        Raises:
            ValueError: an unknown status, or a negative limit or offset.
        """
        checks.check_choice("status", status, STATUSES)
        if (limit is not None and limit < 0) or offset < 0:
            raise ValueError(f"limit and offset must not be negative, got {limit} and {offset}")
        query = _with_reviewer_name().where(Correction.status == status).order_by(Correction.id)
        with self._read() as session:
            return [correction_view(*found) for found in session.execute(query.limit(limit).offset(offset))]

    def pending(self, limit: int = 100, offset: int = 0) -> list[CorrectionView]:
        """The pending corrections, oldest first (:meth:`by_status`).

        Raises:
            ValueError: a negative limit or offset.
        """
        return self.by_status("pending", limit, offset)

    def count(self, status: str | None = None) -> int:
        """How many corrections there are of ``status`` (None: all).

        Raises:
            ValueError: an unknown status.
        """
        query = select(func.count()).select_from(Correction)
        if status is not None:
            checks.check_choice("status", status, STATUSES)
            query = query.where(Correction.status == status)
        with self._read() as session:
            return session.scalar(query) or 0

    def submissions_since(self, client_key: str, since: datetime) -> int:
        """How many corrections ``client_key`` submitted at ``since`` (timezone-aware) or later: the rate limit's
        count, whatever became of them since (a deleted one no longer counts).

        Raises:
            ValueError: ``since`` is naive.
        """
        checks.check_aware("since", since)
        query = select(func.count()).where(Correction.client_key == client_key, Correction.created_at >= since)
        with self._read() as session:
            return session.scalar(query) or 0

    def review(self, correction_id: int, action: str, reviewer_id: int) -> CorrectionView:
        """Accept or reject a correction (again, if reviewed before: the last review counts), recording who and when.

        Args:
            correction_id: the correction.
            action: ``"accept"`` or ``"reject"``.
            reviewer_id: the reviewer's id (:meth:`reviewer_by_token`, :meth:`reviewer_by_password`).

        Returns:
            The correction as it now is.

        Raises:
            InvalidReview: an unknown action or reviewer.
            CorrectionNotFound: no correction has that id.
        """
        if action not in REVIEW_ACTIONS:
            raise InvalidReview(f"a review is {' or '.join(REVIEW_ACTIONS)}, got {action!r:.40}")
        with self._write.begin() as session:
            row = session.get(Correction, correction_id) if checks.is_row_id(correction_id) else None
            if row is None:
                raise CorrectionNotFound(f"no correction {correction_id}")
            reviewer = session.get(Reviewer, reviewer_id) if checks.is_row_id(reviewer_id) else None
            if reviewer is None:
                raise InvalidReview(f"no reviewer {reviewer_id}")
            row.status, row.reviewed_by, row.reviewed_at = REVIEW_ACTIONS[action], reviewer.id, utcnow()
            session.flush()
            view = correction_view(row, reviewer.name)
        logger.info("correction %d %s by reviewer %d", correction_id, view.status, reviewer_id)
        return view

    def delete(self, correction_id: int) -> None:
        """Delete a correction, and its photo when no other correction has it.

        Raises:
            CorrectionNotFound: no correction has that id.
        """
        if not checks.is_row_id(correction_id):
            raise CorrectionNotFound(f"no correction {correction_id!r:.40}")
        with self._write.begin() as session:
            sha256 = session.scalar(select(Correction.photo_sha256).where(Correction.id == correction_id))
            if session.execute(delete(Correction).where(Correction.id == correction_id)).rowcount != 1:
                raise CorrectionNotFound(f"no correction {correction_id}")
            if sha256 is not None:
                unused = ~exists().where(Correction.photo_sha256 == sha256)
                session.execute(delete(Photo).where(Photo.sha256 == sha256, unused))
        logger.info("correction %d deleted", correction_id)

    def accepted(self, model_id: str | None = None) -> list[LabelledFeatures]:
        """The accepted corrections (those of ``model_id``'s features only, when given), by id: what to learn from,
        with their open-set scores where recorded.

        Raises:
            StoreError: a correction's stored features or scores are damaged.
        """
        query = select(
            Correction.id,
            Correction.label,
            Correction.label_kind,
            Correction.features,
            Correction.feature_dim,
            Correction.scores,
        )
        query = query.where(Correction.status == "accepted").order_by(Correction.id)
        if model_id is not None:
            query = query.where(Correction.model_id == model_id)
        with self._read() as session:
            rows = session.execute(query).all()
        try:
            return [
                LabelledFeatures(id, label, kind, features_of(id, blob, dim), scores_of(id, scores))
                for id, label, kind, blob, dim, scores in rows
            ]
        except ValueError as exc:
            raise StoreError(str(exc)) from None

    # --- photos -----------------------------------------------------------------------------------------------

    def photo(self, sha256: str) -> bytes:
        """The JPEG bytes of the photo whose SHA-256 (hex) is ``sha256``.

        Raises:
            PhotoNotFound: there is none.
        """
        valid = isinstance(sha256, str) and "\x00" not in sha256  # no photo has a NUL (PostgreSQL fails on it)
        with self._read() as session:
            jpeg = session.scalar(select(Photo.jpeg).where(Photo.sha256 == sha256)) if valid else None
        if jpeg is None:
            raise PhotoNotFound(f"no photo {sha256!r:.80}")
        return jpeg

    def photo_bytes_total(self) -> int:
        """The size of all kept photos together, in bytes (for the ``CORRECTIONS_MAX_PHOTO_MB`` cap)."""
        with self._read() as session:
            return session.scalar(select(func.coalesce(func.sum(Photo.size_bytes), 0))) or 0

    # --- reviewers --------------------------------------------------------------------------------------------

    def add_reviewer(self, name: str, password: str | None = None) -> str:
        """Add a reviewer, who signs in on the pages with ``password`` (None: API token only).

        Only hashes are stored: the password's (werkzeug) and the token's SHA-256.

        Returns:
            The reviewer's new API token (``secrets.token_urlsafe(32)``): shown to them once, never stored.

        Raises:
            ValueError: a blank name, one over 64 characters, or an empty password.
            ReviewerExists: a reviewer has that name.
        """
        checks.check_text("name", name, NAME_LENGTH)
        if name != name.strip():
            raise ValueError(f"a reviewer's name must not start or end with a space, got {name!r}")
        if password is not None and (not isinstance(password, str) or not password):
            raise ValueError("the password must be a non-empty string (None: token-only reviewer)")
        token, token_hash = credentials.new_token()
        password_hash = credentials.hash_password(password) if password is not None else None
        row = Reviewer(name=name, password_hash=password_hash, token_hash=token_hash, created_at=utcnow())
        try:
            with self._write.begin() as session:
                if session.scalar(select(Reviewer.id).where(Reviewer.name == name)) is not None:
                    raise ReviewerExists(f"a reviewer is already named {name!r}")
                session.add(row)
        except IntegrityError as exc:  # added by someone else since the check
            raise ReviewerExists(f"a reviewer is already named {name!r}") from exc
        logger.info("reviewer %r added (%s)", name, "password and token" if password else "token only")
        return token

    def reviewer_by_token(self, token: str) -> ReviewerView | None:
        """The reviewer whose API token is ``token``; None for any other string."""
        if not isinstance(token, str) or not token:
            return None
        with self._read() as session:
            found = session.execute(
                select(Reviewer.id, Reviewer.name, Reviewer.token_hash).where(
                    Reviewer.token_hash == credentials.token_hash(token)
                )
            ).first()
        if found is None or not credentials.token_matches(found.token_hash, token):
            return None
        return ReviewerView(found.id, found.name)

    def reviewer_by_password(self, name: str, password: str) -> ReviewerView | None:
        """The reviewer named ``name`` if ``password`` is theirs; None otherwise (unknown name, token-only
        reviewer, wrong password), after the same hashing work in every case."""
        name = name if isinstance(name, str) and "\x00" not in name else ""  # no name has a NUL (nor is blank)
        with self._read() as session:
            found = session.execute(
                select(Reviewer.id, Reviewer.name, Reviewer.password_hash).where(Reviewer.name == name)
            ).first()
        stored = found.password_hash if found is not None else None
        return ReviewerView(found.id, found.name) if credentials.password_matches(stored, password) else None

    def reviewer(self, reviewer_id: int) -> ReviewerView | None:
        """The reviewer ``reviewer_id``, or None."""
        if not checks.is_row_id(reviewer_id):
            return None
        with self._read() as session:
            found = session.execute(select(Reviewer.id, Reviewer.name).where(Reviewer.id == reviewer_id)).first()
        return ReviewerView(found.id, found.name) if found is not None else None

    # --- memories ---------------------------------------------------------------------------------------------

    def save_memory(
        self, *, model_id: str, status: str, reason: str | None, report: dict, blob: bytes | None
    ) -> MemoryView:
        """Store what the learning step made for ``model_id``: a ``served`` memory (``blob`` required) or a
        ``refused`` one (``reason`` says why; ``blob`` may be None), with its ``report`` (a JSON-able dict).

        Raises:
            ValueError: an unknown status, a served memory without a blob, or a report JSON cannot encode.
        """
        report_json = checks.memory_report_json(model_id, status, reason, report, blob)
        row = Memory(
            created_at=utcnow(), model_id=model_id, status=status, reason=reason, report=report_json, blob=blob
        )
        with self._write.begin() as session:
            session.add(row)
            session.flush()
            view = memory_view(row)
        logger.info("memory %d of %s stored (%s)", view.id, model_id, status)
        return view

    def latest_memory(self, model_id: str, status: str | None = "served") -> tuple[MemoryView, bytes | None] | None:
        """The newest memory (by id) of ``model_id`` with ``status`` (None: any), and its blob; None if none.

        Raises:
            ValueError: an unknown status.
        """
        query = select(Memory).where(Memory.model_id == model_id)
        if status is not None:
            checks.check_choice("status", status, MEMORY_STATUSES)
            query = query.where(Memory.status == status)
        with self._read() as session:
            row = session.scalar(query.order_by(Memory.id.desc()).limit(1))
            return (memory_view(row), row.blob) if row is not None else None

    def memories(self, model_id: str, limit: int = 10) -> list[MemoryView]:
        """The newest ``limit`` memories of ``model_id``, newest first, without their blobs.

        Raises:
            ValueError: a negative limit.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        query = select(Memory).options(defer(Memory.blob)).where(Memory.model_id == model_id)
        with self._read() as session:
            return [memory_view(row) for row in session.scalars(query.order_by(Memory.id.desc()).limit(limit))]
