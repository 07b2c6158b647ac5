"""The corrections database's Alembic migrations, run in code: no ``alembic.ini``, no ``alembic`` command needed.

:func:`upgrade` brings a database to the newest revision (``versions/``, written to match
:mod:`app.corrections.models`); :class:`app.corrections.store.CorrectionStore` calls it on opening. Several
gunicorn workers start at once and each opens the store, so upgrades are serialized: on PostgreSQL by a transaction
advisory lock (``pg_advisory_xact_lock``, released when the upgrade commits), on SQLite by an ``fcntl`` lock on a
file beside the database (``<database>.migrate-lock``). Each upgrade runs in one transaction (both databases have
transactional DDL): it happens whole or not at all, and the second worker in finds the work done.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text

from app.corrections.engine import WRITE_OPTION

logger = logging.getLogger(__name__)

#: This folder: Alembic's script location (``env.py``, ``script.py.mako``, ``versions/``).
SCRIPT_LOCATION = Path(__file__).resolve().parent
#: Key of the PostgreSQL advisory lock that serializes upgrades (any constant the app uses for nothing else).
ADVISORY_LOCK_KEY = 0x46495348_19  # "FISH", issue 19
#: Suffix of the SQLite database's lock file: ``corrections.sqlite3`` -> ``corrections.sqlite3.migrate-lock``.
LOCK_SUFFIX = ".migrate-lock"


def alembic_config(connection: Connection) -> Config:
    """An Alembic configuration for these migrations that runs them on ``connection`` (``env.py`` uses it, in
    its transaction when one is open)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database of ``engine`` to ``revision`` (default: the newest), in one transaction, holding the
    migration lock; a database already there is left as it is.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or a migration fails (rolled back).
        OSError: the SQLite lock file cannot be opened.
    """
    with _file_lock(engine), engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        command.upgrade(alembic_config(connection), revision)


def current_revision(connection: Connection) -> str | None:
    """The revision the database of ``connection`` is at (None: never migrated)."""
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on the lock file beside a SQLite database file, blocking until it is free;
    nothing for an in-memory SQLite database or another database (they lock inside the transaction)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + LOCK_SUFFIX)
    with open(lock_path, "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
