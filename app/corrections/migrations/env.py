"""Alembic's environment for the corrections database: runs the migrations on the connection that
:func:`app.corrections.migrations.upgrade` (or :func:`~app.corrections.migrations.alembic_config`) gives it."""

from __future__ import annotations

from alembic import context

from app.corrections.models import Base

if context.is_offline_mode():
    raise RuntimeError("the corrections migrations run online only: use app.corrections.migrations.upgrade")
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("no connection: build the configuration with app.corrections.migrations.alembic_config")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
)
with context.begin_transaction():
    context.run_migrations()
