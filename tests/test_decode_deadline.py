"""Decoding that no file can stall: every row of the security review's table, as a file or request made here, is
refused by a check that fails closed (before Pillow parses the file), and whatever the checks miss is stopped by the
decoder process's deadline or memory limit, after which no process goes on burning CPU for it.

The in-process tests use the Flask test client (the decoder processes are real); the slow ones use real gunicorn,
directly and behind nginx, as deployed.
"""

from __future__ import annotations

import io
import json
import pickle
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image

from model import decoding
from model.decoder_pool import DecoderPool
from model.errors import ImageError
from model.jpeg_check import check_jpeg_structure
from tests.helpers import assert_json_error, encode, gunicorn_server, make_app, post_images
from tools.bench_decode import cpu_used_in, post_image
from tools.hostile_images import (
    REVIEW_TABLE,
    after_soi,
    before_dqt,
    before_sos,
    empty_segments,
    fill_bytes,
    frame_header,
    mpf_segment,
    noise,
    scan_bomb,
    slow_png,
    thin_header,
    with_sof_size,
)
from tools.proxy import NGINX, nginx_in_front

#: The rows of the review's table as pytest parameters: (make, status, fragment), and their ids.
ROWS = [row[1:] for row in REVIEW_TABLE]
ROW_IDS = [row[0] for row in REVIEW_TABLE]


# --- the checks fail closed, before Pillow ------------------------------------------------------------------------


def test_the_review_files_are_what_the_review_describes() -> None:
    with Image.open(io.BytesIO(after_soi(scan_bomb(), mpf_segment()))) as image:
        assert image.format == "MPO" and image.size == (7000, 7000)
    for data in (before_dqt(thin_header(), b"\x00"), before_dqt(thin_header(), b"\xff\x00\xff\xff")):
        with Image.open(io.BytesIO(data)) as image:  # Pillow reads past the junk, as libjpeg would
            assert image.size == (7071, 7071)
    assert len(empty_segments(0xFE)) > 15_000_000 and len(fill_bytes()) > 15_000_000


@pytest.mark.parametrize(
    ("make", "status", "fragment"), [row[1:] for row in REVIEW_TABLE], ids=[row[0] for row in REVIEW_TABLE]
)
def test_each_row_is_refused_by_its_check_before_pillow_parses_it(
    make: Callable[[], bytes], status: int, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make()

    def pillow_must_not_open(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Pillow parsed a file the JPEG walk should have refused")

    monkeypatch.setattr(decoding.Image, "open", pillow_must_not_open)
    with pytest.raises(ImageError) as error:
        decoding.decode_image(data)
    assert error.value.status == status and fragment in error.value.message, error.value.message


@pytest.mark.parametrize(
    ("make", "status", "fragment"), [row[1:] for row in REVIEW_TABLE], ids=[row[0] for row in REVIEW_TABLE]
)
def test_each_row_gets_a_json_error_from_the_app(
    client: FlaskClient, make: Callable[[], bytes], status: int, fragment: str
) -> None:
    body = assert_json_error(post_images(client, make()), status)
    assert fragment in body["error"], body["error"]


def test_arithmetic_coded_jpeg_over_its_pixel_cap_is_refused() -> None:
    """SOF9 (arithmetic coding) may be thinner than one bit per block, so it gets a pixel cap instead."""
    data = bytearray(with_sof_size(encode(noise(), "JPEG", quality=90), 3000, 3000))
    data[data.index(b"\xff\xc0") + 1] = 0xC9
    with pytest.raises(ImageError, match="arithmetic-coded JPEG") as error:
        check_jpeg_structure(bytes(data))
    assert error.value.status == 413
    small = bytearray(encode(noise(), "JPEG", quality=90))
    small[small.index(b"\xff\xc0") + 1] = 0xC9
    check_jpeg_structure(bytes(small))  # within the cap: left to the decoder and its deadline


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d[:-2], "ends before its end-of-image marker"),
        (lambda d: before_sos(d, frame_header(d)), "more than one frame header"),
        (lambda d: d[:2] + b"\xff\xd8" + d[2:], "is not a JPEG marker"),
        (lambda d: d[:2] + b"\xff\xe1\x40\x00" + d[6:], "runs past the end of the file"),
    ],
    ids=["no-EOI", "two-frames", "second-SOI", "segment-past-the-end"],
)
def test_structures_the_walk_cannot_account_for_are_refused(edit: Callable[[bytes], bytes], fragment: str) -> None:
    data = encode(noise(), "JPEG", quality=90)
    check_jpeg_structure(data)
    with pytest.raises(ImageError, match="truncated or corrupt JPEG image") as error:
        check_jpeg_structure(edit(data))
    assert error.value.status == 400 and fragment in error.value.message, error.value.message


def test_ordinary_jpegs_pass_the_walk_with_metadata_restarts_and_a_trailer() -> None:
    image = noise((200, 150))
    exif = Image.Exif()
    exif[0x0112] = 6
    for data in (
        encode(image, "JPEG", exif=exif.tobytes(), icc_profile=b"\x00" * 150_000),  # ICC split over 3 segments
        encode(image, "JPEG", restart_marker_blocks=1, progressive=True),
        encode(image, "JPEG") + b"trailer data after EOI, as some phones write",
        after_soi(encode(image, "JPEG"), b"\xff\xfe\x00\x02" * 50),
    ):
        check_jpeg_structure(data)
        assert decoding.decode_image(data).size in ((200, 150), (150, 200))


def test_image_error_keeps_its_status_and_index_across_processes() -> None:
    error = pickle.loads(pickle.dumps(ImageError("too large", 413, index=2)))
    assert (error.message, error.status, error.index) == ("too large", 413, 2)


# --- the deadline and the memory limit -----------------------------------------------------------------------------


def assert_nothing_burns_cpu(pid: int, window: float = 1.0) -> None:
    """No process below ``pid`` uses more than a tenth of a core over ``window`` seconds."""
    used = cpu_used_in(pid, window)
    assert used < 0.1 * window, f"processes below {pid} used {used:.2f} s of CPU in {window} s"


def test_a_decode_past_its_deadline_is_stopped_and_its_process_replaced(tiny_checkpoint, jpeg_bytes) -> None:
    import os

    flask_app = make_app(MODEL_PATH=str(tiny_checkpoint), DECODE_TIMEOUT_S=0.05, MAX_CONCURRENT_DECODES=1)
    client = flask_app.test_client()
    assert post_images(client, jpeg_bytes()).status_code == 200
    body = assert_json_error(post_images(client, slow_png()), 413)
    assert "takes too long to decode" in body["error"] and "0.05 s" in body["error"], body["error"]
    assert_nothing_burns_cpu(os.getpid(), window=0.5)  # the forkserver and the decoders: this process's descendants
    assert post_images(client, jpeg_bytes()).status_code == 200  # a new decoder took the killed one's place


def test_a_decode_over_its_memory_limit_is_refused(tiny_checkpoint, jpeg_bytes) -> None:
    """A 6000 x 4000 RGBA PNG needs about 170 MB to decode (RGBA, then RGB); the decoder may use 128 MiB."""
    flask_app = make_app(MODEL_PATH=str(tiny_checkpoint), DECODE_MEMORY_MB=128, DECODE_TIMEOUT_S=30)
    client = flask_app.test_client()
    body = assert_json_error(post_images(client, slow_png((6000, 4000))), 413)
    assert "memory" in body["error"], body["error"]
    assert post_images(client, jpeg_bytes()).status_code == 200


def test_decoder_pool_refuses_bad_arguments_and_answers_503_once_closed() -> None:
    for kwargs in ({"processes": 0}, {"processes": 1, "timeout_s": 0}, {"processes": 1, "memory_mb": 10}):
        with pytest.raises(ValueError):
            DecoderPool(**kwargs)
    pool = DecoderPool(1, timeout_s=5)
    data = encode(noise(), "PNG")
    assert pool.decode(data).size == (64, 64)
    path_image = pool.decode(data, max_pixels=64 * 64)
    assert path_image.mode == "RGB"
    pool.close()
    with pytest.raises(ImageError) as error:
        pool.decode(data)
    assert error.value.status == 503


def test_decoder_pool_closes_from_several_threads_at_once() -> None:
    """An app's pool can be closed by its finalizer while something else closes it (pebble's own join is not safe
    so: two joins race to stop the same worker process)."""
    pool = DecoderPool(2, timeout_s=5)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def close() -> None:
        start.wait()
        try:
            pool.close()
            with pytest.raises(ImageError) as error:  # every caller returns with the processes stopped
                pool.decode(encode(noise(), "PNG"))
            assert error.value.status == 503
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=close) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_decoder_pool_reads_paths_inside_the_decoder(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(encode(noise(), "PNG"))
    with DecoderPool(1) as pool:
        assert pool.decode(tmp_path / "a.png").size == (64, 64)
        with pytest.raises(ImageError, match="unreadable file") as error:
            pool.decode(tmp_path / "missing.png")
        assert error.value.status == 400


# --- real gunicorn, directly and behind nginx ----------------------------------------------------------------------


def gunicorn_master(log_dir: Path) -> int:
    """The pid of the gunicorn master that logged into ``log_dir``/gunicorn.log."""
    import re

    match = re.search(r"\[(\d+)\] \[INFO\] Starting gunicorn", (log_dir / "gunicorn.log").read_text())
    assert match, (log_dir / "gunicorn.log").read_text()
    return int(match.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("size", [b"zz", b"-5"], ids=["zz", "minus-5"])
def test_invalid_chunked_body_is_a_400_json_error(tiny_checkpoint: Path, tmp_path: Path, size: bytes) -> None:
    with gunicorn_server(tiny_checkpoint, tmp_path) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n" + size + b"\r\nabc\r\n0\r\n\r\n"
            )
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), answer[:300]
        assert b"application/json" in head
        assert "chunked transfer encoding" in json.loads(body)["error"]
    assert "Traceback" not in (tmp_path / "gunicorn.log").read_text()


@pytest.mark.slow
def test_gunicorn_refuses_every_row_and_serves_a_photo_while_four_bombs_are_in_flight(
    tiny_checkpoint: Path, tmp_path: Path, jpeg_bytes
) -> None:
    with gunicorn_server(tiny_checkpoint, tmp_path) as base:
        for name, make, status, fragment in REVIEW_TABLE:
            got, body, _ = post_image(base, make())
            assert got == status and fragment in body["error"], (name, got, body)
        bombs = [after_soi(scan_bomb(), mpf_segment()), before_dqt(scan_bomb(), b"\x00")] * 2
        results: list[tuple[int | None, dict[str, Any] | None, float]] = [(None, None, 0.0)] * (len(bombs) + 1)
        start = threading.Barrier(len(bombs) + 1)

        def send(i: int, data: bytes, delay: float = 0.0) -> None:
            start.wait(10)
            time.sleep(delay)
            results[i] = post_image(base, data)

        threads = [threading.Thread(target=send, args=(i, bomb)) for i, bomb in enumerate(bombs)]
        threads.append(threading.Thread(target=send, args=(len(bombs), jpeg_bytes(), 0.05)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [status for status, _, _ in results] == [413, 400, 413, 400, 200], results
        assert results[-1][1] is not None and "verdict" in results[-1][1]
        assert_nothing_burns_cpu(gunicorn_master(tmp_path))


@pytest.mark.slow
def test_gunicorn_stops_a_decode_at_its_deadline_and_frees_the_cpu(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with gunicorn_server(tiny_checkpoint, tmp_path, FISH_DECODE_TIMEOUT_S="0.1") as base:
        status, body, _ = post_image(base, slow_png((8000, 6000)))
        assert status == 413 and "takes too long to decode" in body["error"], body
        assert_nothing_burns_cpu(gunicorn_master(tmp_path))
        status, body, _ = post_image(base, encode(noise(), "JPEG"))
        assert status == 200, body


@pytest.mark.slow
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make nginx installs Debian's)")
def test_nginx_passes_on_each_refusal_and_the_deadline(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with (
        gunicorn_server(tiny_checkpoint, tmp_path, FISH_DECODE_TIMEOUT_S="0.1") as upstream,
        nginx_in_front(upstream) as base,
    ):
        for name, make, status, fragment in REVIEW_TABLE:
            got, body, _ = post_image(base, make())
            assert got == status and fragment in body["error"], (name, got, body)
        status, body, _ = post_image(base, slow_png((8000, 6000)))
        assert status == 413 and "takes too long to decode" in body["error"], body
        assert_nothing_burns_cpu(gunicorn_master(tmp_path))
