"""The corrections database's tables, as SQLAlchemy 2 typed declarative models.

``migrations/versions/`` must create exactly these (``tests/test_corrections_store.py`` compares an upgraded empty
database with :data:`Base.metadata`): change both together. Constraint and index names come from
:data:`NAMING_CONVENTION`, so they are the same on SQLite and PostgreSQL and a migration can name them.

Only :mod:`app.corrections.store` reads and writes these rows; everyone else gets its frozen views.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Names of constraints and indexes (SQLAlchemy's recommended convention).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: What a correction says the photo shows: a known species, a species the model does not know (its name given), a
#: fish of a species nobody named, or no fish at all.
LABEL_KINDS = ("species", "new_species", "unknown_species", "not_a_fish")
#: A correction's review state.
STATUSES = ("pending", "accepted", "rejected")
#: A memory's state: served to the workers, or refused by the learning step (the reason says why).
MEMORY_STATUSES = ("served", "refused")

#: Lengths of the bounded text columns, in characters.
NAME_LENGTH = 64
LABEL_LENGTH = 200
MODEL_ID_LENGTH = 128
CROP_LENGTH = 100
SHA256_HEX_LENGTH = 64
PASSWORD_HASH_LENGTH = 256


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime``, on every database: ``timestamp with time zone`` on PostgreSQL, the naive
    UTC text that SQLite keeps (which sorts and compares in time order) there; always read back aware, in UTC.

    Raises:
        ValueError: on write, a naive datetime (whose zone nobody knows).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"a naive datetime cannot be stored (give it a timezone): {value!r}")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK constraint's SQL: ``column`` is one of ``values``."""
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class Base(DeclarativeBase):
    """The corrections database's declarative base; its metadata names constraints by :data:`NAMING_CONVENTION`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Reviewer(Base):
    """Someone who may accept or reject corrections: by password (the pages) or API token (the API).

    Only hashes are kept: the password's werkzeug hash (None: token-only) and the token's SHA-256, hex.
    """

    __tablename__ = "reviewers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(PASSWORD_HASH_LENGTH))
    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Photo(Base):
    """A photo a user consented to share: an upright JPEG without metadata, keyed by its SHA-256 (hex), so the
    same photo sent twice is one row and no client's file name is ever used."""

    __tablename__ = "photos"

    sha256: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), primary_key=True)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Correction(Base):
    """One user's correction of one answer, with the features the model computed for the photo (``features``:
    ``feature_dim`` little-endian float32 values, of model ``model_id``), its open-set scores (``scores``: JSON
    ``[subject, novelty, taxon, other]``, numbers or null; NULL before migration 0002) and, with consent, the photo
    itself."""

    __tablename__ = "corrections"
    __table_args__ = (
        Index(None, "status"),
        Index(None, "client_key", "created_at"),
        Index(None, "model_id"),
        Index(None, "photo_sha256"),  # delete: is the photo still used?
        CheckConstraint(_one_of("status", STATUSES), name="status"),
        CheckConstraint(_one_of("label_kind", LABEL_KINDS), name="label_kind"),
        CheckConstraint("feature_dim > 0", name="feature_dim"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    label_kind: Mapped[str] = mapped_column(String(16))
    predicted_label: Mapped[str | None] = mapped_column(String(LABEL_LENGTH))
    crop: Mapped[str | None] = mapped_column(String(CROP_LENGTH))
    photo_sha256: Mapped[str | None] = mapped_column(ForeignKey("photos.sha256"))
    features: Mapped[bytes] = mapped_column(LargeBinary)
    feature_dim: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(MODEL_ID_LENGTH))
    client_key: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH))
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    scores: Mapped[str | None] = mapped_column(Text)


class Memory(Base):
    """What the learning step made of the accepted corrections for one model: a served memory (its ``blob``) or a
    refused one (its ``reason``), with a JSON ``report`` either way."""

    __tablename__ = "memories"
    __table_args__ = (
        Index(None, "model_id"),
        CheckConstraint(_one_of("status", MEMORY_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    model_id: Mapped[str] = mapped_column(String(MODEL_ID_LENGTH))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    report: Mapped[str] = mapped_column(Text)
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)
