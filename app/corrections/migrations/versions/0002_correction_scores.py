"""Corrections keep the photo's open-set scores, so the memory's gate judges them as the served model would.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Keep it equal to app/corrections/models.py: tests/test_corrections_store.py compares an upgraded database with it.
Rows written before it have no scores (NULL): the gate skips those tests for them, as it did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``corrections.scores``: JSON ``[subject, novelty, taxon, other]``, each a number or null; NULL: none."""
    op.add_column("corrections", sa.Column("scores", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop ``corrections.scores`` (a table copy on SQLite, which alters no column in place)."""
    with op.batch_alter_table("corrections") as batch:
        batch.drop_column("scores")
