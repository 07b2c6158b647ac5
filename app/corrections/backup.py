"""Back up the corrections database to one file, and restore it from one: :func:`backup` and :func:`restore` (what
``fish-admin backup`` and ``fish-admin restore`` run).

SQLite: the ``sqlite3`` module's online backup API (:meth:`sqlite3.Connection.backup`) copies the database in one
step, a consistent snapshot taken while the app goes on writing (WAL readers never block the writer); the copy is a
plain single-file SQLite database. A restore copies it back into the live file with the same API, under the write
lock: the workers keep their connections and see the restored data on their next transaction.

PostgreSQL: ``pg_dump --format=custom`` and ``pg_restore --clean --if-exists --no-owner --single-transaction`` (the
restore happens whole or not at all). The connection goes to them through the environment (``PGHOST``, ``PGPORT``,
``PGUSER``, ``PGPASSWORD``, ``PGDATABASE``, read from the SQLAlchemy URL), never a password on a command line,
which any user of the machine could read. The tools are looked up on ``PATH``, then in
``/usr/lib/postgresql/<version>/bin`` (the newest first); ``pg_dump`` must be at least as new as the server.

After a restore the database is migrated to the newest schema, as opening a store would (a backup of an older
version of the app restores too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from app.corrections import migrations
from app.corrections.engine import SQLITE_BUSY_TIMEOUT_MS, create_engine

logger = logging.getLogger(__name__)

__all__ = ["BackupError", "backup", "restore"]

#: Environment variables of libpq, and the parts of a SQLAlchemy URL they take.
PG_ENVIRONMENT = {"PGHOST": "host", "PGPORT": "port", "PGUSER": "username", "PGPASSWORD": "password"}
#: The table every corrections database has (Alembic's): a file without it is no corrections backup.
VERSION_TABLE = "alembic_version"


class BackupError(Exception):
    """A backup or restore failed: a missing file or database, a file that is no backup, or a failing tool (the
    message holds its error output)."""


def backup(url: str, out: Path) -> Path:
    """Back up the corrections database at ``url`` (SQLite or PostgreSQL) to one file.

    The file is written beside its final name and renamed into place once complete, so ``out`` is never a partial
    backup. SQLite gives a SQLite database file, PostgreSQL a ``pg_dump`` custom-format archive.

    Args:
        url: the database's SQLAlchemy URL (:func:`app.corrections.engine.database_url`).
        out: the backup file to write (replaced if there), or an existing folder: then the file is
            ``corrections-<UTC time>.sqlite3`` (or ``.dump``) in it. Missing parent folders are created.

    Returns:
        The backup file written.

    Raises:
        BackupError: the database is missing or not SQLite or PostgreSQL, or the copy failed (with why).
    """
    parsed = _parse(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    out = Path(out).expanduser()
    if out.is_dir():
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = out / f"corrections-{stamp}.{'sqlite3' if sqlite else 'dump'}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create the folder of {out}: {exc}") from exc
    partial = out.with_name(f".{out.name}.partial")
    try:
        _sqlite_backup(_sqlite_file(parsed), partial) if sqlite else _pg_dump(parsed, partial)
        _fsync(partial)
        os.replace(partial, out)
        _fsync(out.parent)
    except OSError as exc:
        raise BackupError(f"cannot write the backup {out}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    logger.info("corrections database backed up to %s (%d bytes)", out, out.stat().st_size)
    return out


def restore(url: str, source: Path) -> None:
    """Replace the corrections database at ``url`` by the backup ``source`` (:func:`backup`'s file), then migrate
    it to the newest schema. Everything written since the backup is gone.

    Raises:
        BackupError: ``source`` is missing or no backup of a corrections database, the database is missing or not
            SQLite or PostgreSQL, or the copy failed (with why; a PostgreSQL restore failing is rolled back).
    """
    parsed = _parse(url)
    source = Path(source).expanduser()
    if not source.is_file():
        raise BackupError(f"no backup file at {source}")
    if parsed.get_backend_name() == "sqlite":
        _sqlite_restore(source, _sqlite_file(parsed, must_exist=False))
    else:
        _pg_restore(parsed, source)
    engine = create_engine(url)
    try:
        migrations.upgrade(engine)
    finally:
        engine.dispose()
    logger.info("corrections database restored from %s", source)


def _parse(url: str) -> URL:
    """``url`` parsed, if SQLite or PostgreSQL.

    Raises:
        BackupError: it is not a database URL, or another kind of database.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError, or a value that is no string
        raise BackupError(f"not a database URL: {exc}") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise BackupError(f"only SQLite and PostgreSQL databases are backed up, got a {parsed.get_backend_name()} URL")
    return parsed


def _sqlite_file(url: URL, must_exist: bool = True) -> Path:
    """The database file of a SQLite URL (a restore may create it: the file may be what was lost).

    Raises:
        BackupError: an in-memory database, or no file there (``must_exist``) or no folder for it.
    """
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError(f"only a SQLite database file is backed up, got {url.render_as_string()!r}")
    path = Path(database)
    if not (path.is_file() if must_exist else path.parent.is_dir()):
        raise BackupError(f"no SQLite database at {path}" if must_exist else f"no folder {path.parent}")
    return path


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    """A plain connection to the SQLite file ``path``, waiting for locks as the app's do."""
    connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    return connection


def _sqlite_backup(database: Path, out: Path) -> None:
    """Copy the live SQLite ``database`` into the new file ``out`` in one step (a consistent snapshot), as a
    single-file database (rollback journal, not WAL)."""
    out.unlink(missing_ok=True)
    try:
        with contextlib.closing(_sqlite_connect(database)) as src, contextlib.closing(_sqlite_connect(out)) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {database} failed: {exc}") from exc


def _sqlite_restore(source: Path, database: Path) -> None:
    """Copy the backup ``source`` over the live SQLite ``database``, in one step under the write lock (the
    database stays in WAL mode; open connections see the restored data on their next transaction).

    Raises:
        BackupError: ``source`` is no SQLite corrections database, or the copy failed.
    """
    try:
        with contextlib.closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)) as src:
            found = src.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,))
            if found.fetchone() is None:
                raise BackupError(f"{source} is no backup of a corrections database (no {VERSION_TABLE} table)")
            with contextlib.closing(_sqlite_connect(database)) as dst:
                src.backup(dst)
    except sqlite3.Error as exc:
        raise BackupError(f"restore of {database} from {source} failed: {exc}") from exc


def pg_tool(name: str) -> str:
    """The path of the PostgreSQL client ``name`` (``pg_dump``, ``pg_restore``): on ``PATH``, else the newest in
    ``/usr/lib/postgresql/<version>/bin``.

    Raises:
        BackupError: it is not installed.
    """
    found = shutil.which(name)
    if found is not None:
        return found
    installed = [path for path in Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if os.access(path, os.X_OK)]
    if not installed:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    version = max(installed, key=lambda path: int(path.parents[1].name) if path.parents[1].name.isdigit() else 0)
    return str(version)


def pg_environment(url: URL) -> dict[str, str]:
    """This process's environment plus the libpq variables that connect to the database of ``url``
    (``PGDATABASE`` and those of :data:`PG_ENVIRONMENT` it gives; a ``host`` query parameter, e.g. a socket
    folder, counts as the host)."""
    environment = dict(os.environ)
    for variable, part in PG_ENVIRONMENT.items():
        value = getattr(url, part)
        if value is not None:
            environment[variable] = str(value)
    host = url.query.get("host")
    if host is not None:
        environment["PGHOST"] = host if isinstance(host, str) else ",".join(host)
    if url.database:
        environment["PGDATABASE"] = url.database
    return environment


def _run_pg_tool(command: list[str], url: URL, what: str) -> None:
    """Run a PostgreSQL client connected by the environment, never prompting for a password.

    Raises:
        BackupError: it could not start, or it failed (with its error output).
    """
    try:
        result = subprocess.run(
            [*command, "--no-password"], env=pg_environment(url), capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise BackupError(f"{what} could not run: {exc}") from exc
    if result.returncode != 0:
        raise BackupError(f"{what} failed (exit status {result.returncode}): {result.stderr.strip()}")


def _pg_dump(url: URL, out: Path) -> None:
    """``pg_dump`` the database of ``url`` into ``out``, custom format."""
    if not url.database:
        raise BackupError("the PostgreSQL URL names no database")
    _run_pg_tool([pg_tool("pg_dump"), "--format=custom", f"--file={out}"], url, f"pg_dump of {url.database}")


def _pg_restore(url: URL, source: Path) -> None:
    """``pg_restore`` ``source`` into the database of ``url``, in one transaction, its old tables dropped first."""
    if not url.database:
        raise BackupError("the PostgreSQL URL names no database")
    options = ["--clean", "--if-exists", "--no-owner", "--single-transaction", f"--dbname={url.database}"]
    _run_pg_tool([pg_tool("pg_restore"), *options, str(source)], url, f"pg_restore of {source}")


def _fsync(path: Path) -> None:
    """Flush the file or folder ``path`` to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
