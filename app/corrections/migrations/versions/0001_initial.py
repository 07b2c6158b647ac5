"""The corrections database: reviewers, photos, corrections, memories (issue 19).

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Keep it equal to app/corrections/models.py: tests/test_corrections_store.py compares an upgraded database with it.
Written out in full (no import of the models), so that it stays what it was when the models change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    """A timezone-aware timestamp column (``models.UTCDateTime``)."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _create_corrections() -> None:
    """The corrections table and its indexes."""
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("label_kind", sa.String(16), nullable=False),
        sa.Column("predicted_label", sa.String(200), nullable=True),
        sa.Column("crop", sa.String(100), nullable=True),
        sa.Column("photo_sha256", sa.String(64), nullable=True),
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.Column("feature_dim", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("client_key", sa.String(64), nullable=False),
        sa.Column("reviewed_by", sa.Integer(), nullable=True),
        _timestamp("reviewed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_corrections"),
        sa.ForeignKeyConstraint(["photo_sha256"], ["photos.sha256"], name="fk_corrections_photo_sha256_photos"),
        sa.ForeignKeyConstraint(["reviewed_by"], ["reviewers.id"], name="fk_corrections_reviewed_by_reviewers"),
        sa.CheckConstraint("status IN ('pending', 'accepted', 'rejected')", name="ck_corrections_status"),
        sa.CheckConstraint(
            "label_kind IN ('species', 'new_species', 'unknown_species', 'not_a_fish')",
            name="ck_corrections_label_kind",
        ),
        sa.CheckConstraint("feature_dim > 0", name="ck_corrections_feature_dim"),
    )
    op.create_index("ix_corrections_status", "corrections", ["status"])
    op.create_index("ix_corrections_client_key_created_at", "corrections", ["client_key", "created_at"])
    op.create_index("ix_corrections_model_id", "corrections", ["model_id"])
    op.create_index("ix_corrections_photo_sha256", "corrections", ["photo_sha256"])


def upgrade() -> None:
    """Create the four tables and their indexes."""
    op.create_table(
        "reviewers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_reviewers"),
        sa.UniqueConstraint("name", name="uq_reviewers_name"),
        sa.UniqueConstraint("token_hash", name="uq_reviewers_token_hash"),
    )
    op.create_table(
        "photos",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("jpeg", sa.LargeBinary(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("sha256", name="pk_photos"),
    )
    _create_corrections()
    op.create_table(
        "memories",
        sa.Column("id", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_memories"),
        sa.CheckConstraint("status IN ('served', 'refused')", name="ck_memories_status"),
    )
    op.create_index("ix_memories_model_id", "memories", ["model_id"])


def downgrade() -> None:
    """Drop the four tables (their indexes go with them)."""
    op.drop_table("memories")
    op.drop_table("corrections")
    op.drop_table("photos")
    op.drop_table("reviewers")
