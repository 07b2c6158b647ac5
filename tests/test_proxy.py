"""deploy/nginx.conf in front of real gunicorn: slow clients do not take the service down, nginx's own answers are
JSON with the security headers. Every client here targets 127.0.0.1 and is bounded in count and time."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import gunicorn_server, rle8_bmp
from tools.hostile_images import progressive_with_repeated_scan, with_sof_size
from tools.loadtest import free_port, multipart
from tools.proxy import NGINX, nginx_in_front

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make nginx installs Debian's)"),
]
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options")


@pytest.fixture(scope="module")
def proxied(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("proxy")
    with gunicorn_server(tiny_checkpoint, workdir) as upstream, nginx_in_front(upstream) as base:
        yield base


def _get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_proxy_serves_the_app_with_each_security_header_once(proxied: str, jpeg_bytes) -> None:
    status, headers, body = _get(f"{proxied}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    body, content_type = multipart("image", "fish.jpg", jpeg_bytes(), "image/jpeg")
    request = urllib.request.Request(f"{proxied}/api/predict", data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and "verdict" in json.loads(response.read())
        for name in SECURITY_HEADERS:
            assert len(response.headers.get_all(name) or []) == 1, name


def _post_over_the_limit(base: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """POST to ``path`` declaring a 17 MiB body: refused from the header, before any body is sent."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(17 * 1024 * 1024))
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/api/predict", "/healthz"])
def test_nginx_refuses_a_body_over_the_apps_limit_with_json_and_headers(proxied: str, path: str) -> None:
    status, headers, body = _post_over_the_limit(proxied, path)
    assert status == 413
    assert json.loads(body) == {"error": "request too large: the limit is 16 MiB for all its files together"}
    assert headers["Content-Type"] == "application/json"
    for name in SECURITY_HEADERS:
        assert headers.get(name), name


def test_nginx_refuses_an_upload_form_over_the_limit_with_an_html_page(proxied: str) -> None:
    """The upload form posts to / without JavaScript: the browser shows nginx's answer, so it is a page, not JSON."""
    status, headers, body = _post_over_the_limit(proxied, "/")
    assert status == 413
    assert headers["Content-Type"].startswith("text/html"), headers["Content-Type"]
    assert body.lstrip().lower().startswith(b"<!doctype html>"), body[:80]
    assert b"16 MiB" in body
    for name in SECURITY_HEADERS:
        assert headers.get(name), name


def test_nginx_answers_json_on_the_api_and_html_on_pages_when_gunicorn_is_down(tmp_path: Path) -> None:
    unavailable = '{"error": "the classifier is not available right now: try again in a moment"}\n'
    with nginx_in_front(f"127.0.0.1:{free_port()}", upstream_up=False) as base:  # nothing listens there
        for path in ("/api/predict", "/healthz", "/"):
            status, headers, body = _get(f"{base}{path}")
            assert status == 503, (path, status)
            assert headers.get("X-Frame-Options") == "DENY", path
            if path == "/":
                assert headers["Content-Type"].startswith("text/html") and b"not available" in body, body[:200]
            else:
                assert headers["Content-Type"] == "application/json" and body.decode() == unavailable, path


def test_slow_clients_do_not_hold_the_service(proxied: str) -> None:
    """64 clients that send their headers one byte at a time, and 8 that promise a body they never send, while a
    normal client keeps getting answers within a second; bounded: at most 4 s of slow clients."""
    host, port = proxied.removeprefix("http://").split(":")
    slow: list[socket.socket] = []
    try:
        for i in range(72):
            sock = socket.create_connection((host, int(port)), timeout=5)
            if i < 64:
                sock.sendall(b"G")  # the first byte of a request line that never ends
            else:
                sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            slow.append(sock)
        answers = []
        end = time.monotonic() + 4
        while time.monotonic() < end:
            for sock in slow[:64]:
                with contextlib.suppress(OSError):
                    sock.send(b"E")
            start = time.monotonic()
            status, _, _ = _get(f"{proxied}/healthz", timeout=5)
            answers.append((status, time.monotonic() - start))
            time.sleep(0.5)
        assert answers and all(status == 200 for status, _ in answers)
        assert max(seconds for _, seconds in answers) < 1.0, answers
    finally:
        for sock in slow:
            sock.close()


def _post_image(base: str, data: bytes, timeout: float = 10.0) -> tuple[int, dict, dict[str, str]]:
    body, content_type = multipart("image", "bomb.bin", data, "application/octet-stream")
    request = urllib.request.Request(f"{base}/api/predict", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_decode_bombs_through_the_proxy_are_refused_quickly_with_json(proxied: str) -> None:
    bombs = {
        "many-scan JPEG": progressive_with_repeated_scan(500),
        "JPEG header bigger than its data": with_sof_size(progressive_with_repeated_scan(1), 7000, 7000),
        "7000 x 7000 RLE8 BMP": rle8_bmp(7000, 7000, b"\x00\x01" * 10),
    }
    for name, data in bombs.items():
        start = time.monotonic()
        status, body, headers = _post_image(proxied, data)
        assert status in (400, 413) and body["error"], (name, status, body)
        assert time.monotonic() - start < 2.0, name
        assert headers.get("X-Frame-Options") == "DENY", name


@pytest.mark.parametrize(
    "raw",
    [b"THIS IS NOT HTTP\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"],
    ids=["garbage-request-line", "oversized-header"],
)
def test_malformed_requests_are_answered_by_nginx_with_the_security_headers(proxied: str, raw: bytes) -> None:
    host, port = proxied.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(raw)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.1 4"), head[:80]
    for name in SECURITY_HEADERS:
        assert f"\r\n{name}: " in head, (name, head)
