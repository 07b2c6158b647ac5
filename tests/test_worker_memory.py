"""A real gunicorn worker keeps its memory bounded with eight decompression bombs in flight at once: small files
(at most a few hundred KB) that declare 7000 x 7000 pixels, each answered with a 4xx JSON error or a 200 within
10 s, and the worker's peak resident memory (``VmHWM``) stays under 1.5 GB."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import encode, gunicorn_server, rle8_bmp, sixteen_bit_gradient_png
from tools.hostile_images import progressive_with_repeated_scan, with_sof_size
from tools.loadtest import multipart, serving_pids

SIDE = 7000
IN_FLIGHT = 8
MAX_SECONDS = 10.0
MAX_PEAK_KB = 1_500_000  # 1.5 GB
HOST = "127.0.0.1"


def large_webp(side: int) -> bytes:
    """A real, decodable lossless WebP of ``side`` x ``side`` black pixels (Pillow writes it in a few bytes)."""
    return encode(Image.new("RGB", (side, side)), "WEBP", lossless=True, quality=0, method=0)


def grey_rle8_bmp(width: int, height: int) -> bytes:
    """A BI_RLE8 BMP of ``width`` x ``height`` grey pixels: each row is runs of 255 pixels, then end of line."""
    runs, last = divmod(width, 255)
    row = b"\xff\x80" * runs + (bytes((last, 0x80)) if last else b"") + b"\x00\x00"
    return rle8_bmp(width, height, row * height + b"\x00\x01")


def bombs() -> list[tuple[str, bytes, str]]:
    """(name, file bytes, content type) of the bombs, two of each kind."""
    kinds = [
        ("png16", sixteen_bit_gradient_png(SIDE, SIDE), "image/png"),
        ("webp", large_webp(SIDE), "image/webp"),
        ("rle-bmp", grey_rle8_bmp(SIDE, SIDE), "image/bmp"),
        ("jpeg-scans", with_sof_size(progressive_with_repeated_scan(500), SIDE, SIDE), "image/jpeg"),
    ]
    for name, data, _ in kinds:
        assert len(data) < 1_000_000, (name, len(data))
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (SIDE, SIDE), (name, image.size)
    return [kinds[i % len(kinds)] for i in range(IN_FLIGHT)]


def vm_kb(pid: int, field: str) -> int:
    """``field`` (e.g. ``VmHWM``, in kB) from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def wait_for_worker(log_path: Path, timeout: float = 30.0) -> int:
    """The pid of the single worker that logged ``serving <model>``."""
    deadline = time.monotonic() + timeout
    while not (pids := serving_pids(log_path)):
        assert time.monotonic() < deadline, f"no worker served the model:\n{log_path.read_text()}"
        time.sleep(0.2)
    assert len(pids) == 1, pids
    return pids.pop()


def post(port: int, name: str, data: bytes, content_type: str, start: threading.Barrier) -> dict[str, object]:
    """POST one file to ``/api/predict`` once every thread is ready; the status, JSON body and seconds taken."""
    body, multipart_type = multipart("image", f"{name}.bin", data, content_type)
    conn = http.client.HTTPConnection(HOST, port, timeout=2 * MAX_SECONDS)
    start.wait(timeout=30)
    began = time.monotonic()
    try:
        conn.request("POST", "/api/predict", body=body, headers={"Content-Type": multipart_type})
        response = conn.getresponse()
        raw = response.read()
        status: int | None = response.status
    except (OSError, http.client.HTTPException) as exc:
        return {"name": name, "status": None, "error": f"{type(exc).__name__}: {exc}", "seconds": 0.0}
    finally:
        conn.close()
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = raw[:200]
    return {"name": name, "status": status, "answer": answer, "seconds": time.monotonic() - began}


@pytest.mark.slow
def test_worker_memory_stays_bounded_with_eight_bombs_in_flight(tiny_checkpoint: Path, tmp_path: Path) -> None:
    payloads = bombs()
    with gunicorn_server(tiny_checkpoint, tmp_path) as base:
        port = int(base.rsplit(":", 1)[1])
        worker = wait_for_worker(tmp_path / "gunicorn.log")
        before, resident = vm_kb(worker, "VmHWM"), vm_kb(worker, "VmRSS")
        start = threading.Barrier(IN_FLIGHT)
        results: list[dict[str, object]] = [{} for _ in payloads]

        def run(i: int) -> None:
            results[i] = post(port, *payloads[i], start)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=4 * MAX_SECONDS)
        assert not any(thread.is_alive() for thread in threads), results
        assert serving_pids(tmp_path / "gunicorn.log") == {worker}, "the worker was replaced (killed or crashed)"
        peak = vm_kb(worker, "VmHWM")

    answers = ", ".join(f"{r['name']}: {r['status']} in {r['seconds']:.2f} s" for r in results)
    summary = f"worker VmHWM {before} kB (VmRSS {resident} kB) before, {peak} kB peak (+{peak - before} kB); {answers}"
    print(summary)
    for r in results:
        status = r["status"]
        assert isinstance(status, int), f"{r}; {summary}"
        assert status == 200 or 400 <= status < 500, f"{r}; {summary}"
        answer = r["answer"]
        assert isinstance(answer, dict), f"{r}; {summary}"
        assert status == 200 or (isinstance(answer.get("error"), str) and answer["error"]), f"{r}; {summary}"
        assert r["seconds"] < MAX_SECONDS, f"{r}; {summary}"
    assert peak < MAX_PEAK_KB, f"worker peak RSS (VmHWM) {peak} kB over {MAX_PEAK_KB} kB; {summary}"
