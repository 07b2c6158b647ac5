"""A throw-away PostgreSQL server for the corrections storage tests: Debian's binaries (``make postgres`` installs
them), a new cluster in a temporary folder, trust authentication, every address loopback.

Two fixtures, which a test module imports explicitly
(``from tests.postgres import postgres_server, postgres_url  # noqa: F401``): :func:`postgres_server` (one cluster
per pytest process: each pytest-xdist worker starts its own, on its own port and folder) and :func:`postgres_url`
(a new, empty database per test). Tests that use them skip, saying why, where PostgreSQL is not installed.

The server keeps ``fsync`` on, as in production: what the tests check about durability holds for real.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.loadtest import free_port

#: The system user that runs the server when the tests run as root (initdb and postgres refuse root).
SERVER_USER = "postgres"
#: Seconds to wait for the server to start or stop.
PG_CTL_TIMEOUT_S = 60


def postgres_bindir() -> Path | None:
    """The folder of the newest installed PostgreSQL server binaries (``/usr/lib/postgresql/<version>/bin`` on
    Debian, else ``pg_config --bindir``), or None when there is no ``initdb`` anywhere."""
    found = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb") if os.access(path, os.X_OK)]
    if found:
        return max(found, key=lambda bindir: int(bindir.parent.name) if bindir.parent.name.isdigit() else 0)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(result.stdout.strip())
        if result.returncode == 0 and (bindir / "initdb").exists():
            return bindir
    return None


def _as_server_user() -> list[str]:
    """The command prefix that runs the server's tools as :data:`SERVER_USER` when we are root (nothing else).

    Raises:
        pytest.skip.Exception: we are root and there is no such user.
    """
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.skip(f"PostgreSQL refuses to run as root and there is no {SERVER_USER!r} user")
    return ["runuser", "-u", SERVER_USER, "--"]


def _run(command: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    """Run a server tool in the cluster's folder (the server user may not enter ours), its output captured."""
    return subprocess.run(
        command, cwd=folder, capture_output=True, text=True, check=False, timeout=PG_CTL_TIMEOUT_S + 30
    )


def _start(bindir: Path, prefix: list[str], folder: Path) -> int:
    """Start the server of the cluster ``folder/data``, its socket in ``folder``; returns its TCP port once it
    accepts connections (``pg_ctl start -w``). A port another process took meanwhile: tried again on another.

    Raises:
        RuntimeError: the server did not start, thrice (the message holds its log).
    """
    log = folder / "server.log"
    for _ in range(3):
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=on"
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(log), "-o", options]
        result = _run([*prefix, *pg_ctl, "-w", "-t", str(PG_CTL_TIMEOUT_S), "start"], folder)
        if result.returncode == 0:
            return port
    raise RuntimeError(f"PostgreSQL did not start:\n{result.stderr}\n{log.read_text() if log.exists() else ''}")


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A new PostgreSQL cluster in a temporary folder, served on a free loopback port; yields its base URL
    (``postgresql+psycopg://postgres@127.0.0.1:<port>``, append ``/<database>``), then stops the server (``pg_ctl
    stop -m fast``) and removes the folder.

    Raises:
        RuntimeError: PostgreSQL is not installed, or initdb or the server failed (the message says how).
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (make postgres installs Debian's)")
    prefix = _as_server_user()
    folder = Path(tempfile.mkdtemp(prefix="fish-postgres-"))
    try:
        if prefix:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(folder, user.pw_uid, user.pw_gid)
        initdb = [str(bindir / "initdb"), "-D", str(folder / "data"), "--auth=trust", "--username=postgres"]
        # --no-sync: initdb's own files only (a lost throw-away cluster is nothing); the server fsyncs as usual
        result = _run([*prefix, *initdb, "--encoding=UTF8", "--locale=C", "--no-sync"], folder)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        port = _start(bindir, prefix, folder)
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
        finally:
            stop = [str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w", "stop"]
            _run([*prefix, *stop], folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL server for this pytest process (:func:`postgres_cluster`): its base URL,
    ``postgresql+psycopg://postgres@127.0.0.1:<port>``. Skips where PostgreSQL is not installed."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (make postgres installs Debian's)")
    with postgres_cluster() as base:
        yield base


def create_database(server: str) -> str:
    """Create a new, empty database with a unique name on the server at base URL ``server``; returns its URL."""
    import psycopg

    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(server.replace("+psycopg", "", 1) + "/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """The URL of a new, empty database on :func:`postgres_server`, of this test's own (:func:`create_database`)."""
    return create_database(postgres_server)
