"""The corrections database's engine: where it is (:func:`database_url`) and how each connection is set up
(:func:`create_engine`).

SQLite connections: a 10 s busy timeout, the WAL journal (readers never wait for the writer), ``synchronous=FULL``
(a committed transaction is on disk before the commit returns) and foreign keys on. SQLAlchemy emits ``BEGIN``
itself, so a transaction starts when the store starts it; the store's writes (an engine with :data:`WRITE_OPTION`)
``BEGIN IMMEDIATE``: they take the write lock first, waiting for it under the busy timeout, instead of failing
later when a read in the same transaction turns out stale (``SQLITE_BUSY_SNAPSHOT``, which no timeout retries).
PostgreSQL connections are checked before use (``pool_pre_ping``: the server may have restarted).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

#: The repository root: the default instance folder is ``instance/`` in it.
ROOT = Path(__file__).resolve().parents[2]
#: The SQLite database's file name in the instance folder.
SQLITE_FILE = "corrections.sqlite3"
#: How long a SQLite connection waits for another's write lock before failing, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: Execution option of the SQLite writes: they ``BEGIN IMMEDIATE`` (take the write lock first).
WRITE_OPTION = "corrections_write"


def database_url(config: Mapping[str, Any]) -> str:
    """The corrections database's SQLAlchemy URL from the app's settings.

    ``DATABASE_URL`` when set (``postgresql://`` and ``postgres://`` read as ``postgresql+psycopg://``, the driver
    installed); else the SQLite file ``corrections.sqlite3`` in ``INSTANCE_PATH`` (None: ``instance/`` at the
    repository root), creating that folder.

    Raises:
        OSError: the instance folder cannot be created.
    """
    url = config.get("DATABASE_URL")
    if url:
        scheme, sep, rest = str(url).partition("://")
        return f"postgresql+psycopg://{rest}" if sep and scheme in ("postgresql", "postgres") else str(url)
    instance = Path(config.get("INSTANCE_PATH") or ROOT / "instance").expanduser().resolve()
    instance.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{instance / SQLITE_FILE}"


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Set up each new SQLite connection: SQLAlchemy begins transactions itself (:func:`_sqlite_on_begin`; the
    driver's own would begin them late), a busy timeout, the WAL journal, full sync and foreign keys."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    """Begin a SQLite transaction: ``IMMEDIATE`` for the store's writes, so that a write waits for the lock (busy
    timeout) up front rather than failing on upgrading a stale read."""
    write = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_engine(url: str) -> Engine:
    """An engine for ``url`` (SQLite or PostgreSQL), set up as the module docstring says.

    Raises:
        ValueError: another kind of database.
        sqlalchemy.exc.ArgumentError: ``url`` is not a database URL.
    """
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"the corrections database must be SQLite or PostgreSQL, got a {backend} URL")
    if backend == "postgresql":
        return sqlalchemy.create_engine(url, pool_pre_ping=True)
    engine = sqlalchemy.create_engine(url)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine
