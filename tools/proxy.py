"""Debian's nginx with ``deploy/nginx.conf``, started in a temporary folder in front of a gunicorn: for the proxy
tests (``tests/test_proxy.py``, ``tests/test_decode_deadline.py``) and ``make bench``. Every address is loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tools.loadtest import free_port, get_status, stop_server

ROOT = Path(__file__).resolve().parents[1]
#: The nginx binary, or None when it is not installed (``make nginx`` installs Debian's).
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


@contextlib.contextmanager
def nginx_in_front(upstream: str, workdir: Path | None = None, upstream_up: bool = True) -> Iterator[str]:
    """nginx with deploy/nginx.conf, its listen and upstream ports moved to free ones; yields its base URL once
    /healthz answers through it (once nginx answers at all, with ``upstream_up=False``).

    Args:
        upstream: the gunicorn's ``host:port``.
        workdir: nginx's prefix folder (config, log, temporary files). By default a new folder under the system's
            temporary folder, removed on exit: nginx's workers run as another user and write request bodies over
            ``client_body_buffer_size`` there, so every folder above it must be reachable for them (pytest's
            ``tmp_path``, mode 0700, is not).

    Raises:
        RuntimeError: nginx is not installed, exited early, or did not answer within 20 s (the message holds its
            log).
    """
    if NGINX is None:
        raise RuntimeError("nginx is not installed (make nginx installs Debian's)")
    owned = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="fish-nginx-"))
        workdir.chmod(0o755)
    port = free_port()
    upstream_port = upstream.rsplit(":", 1)[1]
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "listen 127.0.0.1:8080;" in config and "server 127.0.0.1:8000;" in config
    config = config.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};")
    config = config.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").chmod(0o1777)
    (workdir / "nginx.conf").write_text(config)
    log_path = workdir / "nginx.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [NGINX, "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_until_answering(port, process, log_path, upstream_up, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process, grace=10)
        log.close()
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)


def _wait_until_answering(
    port: int, process: subprocess.Popen, log_path: Path, upstream_up: bool, timeout: float
) -> None:
    """Until /healthz answers 200 through nginx (``upstream_up``), or nginx accepts connections at all."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited early:\n{log_path.read_text()}")
        if upstream_up:
            ready = get_status(port, "/healthz") == 200
        else:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                ready = True
            except OSError:
                ready = False
        if ready:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not answer in {timeout:g} s:\n{log_path.read_text()}")
        time.sleep(0.1)
