"""What isolating decodes costs and what it bounds: the ``decode`` section of ``make bench`` (tools/bench.py).

Three measurements, each on this machine at the time of the run:

- in one process, a decode inline against the same decode in a :class:`model.decoder_pool.DecoderPool` process
  (what a photo pays for the isolation: its bytes sent over a pipe, the reduced image sent back);
- real gunicorn with ``gunicorn.conf.py`` as shipped (and nginx in front, where it is installed): the answer to
  each file of the decode-deadline review (:data:`tools.hostile_images.REVIEW_TABLE`), a normal photo sent while
  four bombs are in flight, a file that only the deadline stops, and the CPU the server's processes use in the
  second after it;
- optionally (``--decode-baseline REV``), ApacheBench against the default deployment of this tree and of commit
  ``REV`` (a temporary git worktree), interleaved: 1 client (latency) and 16 clients (throughput).

Every client is on 127.0.0.1; the HTTP client of the review rows is Python's ``http.client``, one request at a time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model.decoder_pool import DecoderPool
from model.decoding import decode_image
from model.predictor import Predictor
from tools import loadtest
from tools.hostile_images import REVIEW_TABLE, after_soi, before_dqt, mpf_segment, scan_bomb, slow_png
from tools.proxy import NGINX, nginx_in_front

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), from /proc."""
    found, todo = [], [pid]
    while todo:
        children = loadtest.child_pids(todo.pop())
        found += children
        todo += children
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of the processes still alive among ``pids``, in seconds (from /proc)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_used_in(pid: int, seconds: float) -> float:
    """CPU seconds that the processes below ``pid`` use over the next ``seconds`` seconds."""
    pids = descendants(pid)
    before = cpu_seconds(pids)
    time.sleep(seconds)
    return cpu_seconds(pids) - before


def post_image(base: str, data: bytes, timeout: float = 120.0) -> tuple[int | None, dict[str, Any] | None, float]:
    """POST ``data`` as one image to ``base``/api/predict on a new connection: the status (None when the
    connection failed), the JSON answer (None when there is none) and the seconds until it was read."""
    host, port = base.removeprefix("http://").split(":")
    body, content_type = loadtest.multipart("image", "x.jpg", data, "image/jpeg")
    began = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException):
        return None, None, time.monotonic() - began
    finally:
        conn.close()
    seconds = time.monotonic() - began
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    return response.status, answer if isinstance(answer, dict) else None, seconds


def bench_isolation_cost(photos: list[bytes], big: bytes, size: int, repeats: int) -> dict[str, float]:
    """p50 milliseconds of decoding ``photos`` (cycled) and the 12 MP ``big`` inline and in a decoder process,
    reduced for a model of resize size ``size`` as the app does."""

    def p50_ms(decode: Any, items: list[bytes], count: int) -> float:
        times = []
        for i in range(count + 3):
            began = time.perf_counter()
            decode(items[i % len(items)], resize_short_side=size, reduce_to=size)
            times.append(time.perf_counter() - began)
        return 1000 * statistics.median(times[3:])

    with DecoderPool(1) as pool:
        result = {
            "small_inline_ms": p50_ms(decode_image, photos, repeats),
            "small_pool_ms": p50_ms(pool.decode, photos, repeats),
            "big_inline_ms": p50_ms(decode_image, [big], max(10, repeats // 6)),
            "big_pool_ms": p50_ms(pool.decode, [big], max(10, repeats // 6)),
        }
    logger.info("decode isolation %s", result)
    return result


@contextlib.contextmanager
def default_server(
    model: Path, log_dir: Path, cwd: Path = ROOT, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` of the tree at ``cwd`` serving ``model`` on a free port, with
    ``settings`` added to its environment; yields its base URL and process once every worker serves."""
    port = loadtest.free_port()
    log_path = log_dir / f"gunicorn-{port}.log"
    server = loadtest.start_server(model, port, None, log_path, cwd, **settings)
    try:
        loadtest.wait_until_ready(server, port, log_path, timeout=180)
        yield f"http://127.0.0.1:{port}", server
    finally:
        loadtest.stop_server(server)


def review_rows(base: str) -> list[dict[str, Any]]:
    """Each file of the review to ``base``: its status against the expected one, and the seconds to the answer."""
    rows = []
    for name, make, expected, _ in REVIEW_TABLE:
        data = make()
        status, _, seconds = post_image(base, data)
        rows.append({"file": name, "bytes": len(data), "status": status, "expected": expected, "seconds": seconds})
    return rows


def photo_during_bombs(base: str, photo: bytes, bombs: int = 4) -> dict[str, Any]:
    """``bombs`` scan bombs (as MPO, and with a junk byte) sent at once, the normal ``photo`` 50 ms later: the
    photo's status and seconds, and the slowest bomb's seconds."""
    files = [after_soi(scan_bomb(), mpf_segment()), before_dqt(scan_bomb(), b"\x00")] * (bombs // 2)
    results: list[tuple[int | None, dict[str, Any] | None, float]] = [(None, None, 0.0)] * (len(files) + 1)
    start = threading.Barrier(len(files) + 1)

    def send(i: int, data: bytes, delay: float) -> None:
        start.wait(30)
        time.sleep(delay)
        results[i] = post_image(base, data)

    threads = [threading.Thread(target=send, args=(i, f, 0.0)) for i, f in enumerate(files)]
    threads.append(threading.Thread(target=send, args=(len(files), photo, 0.05)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return {
        "photo_status": results[-1][0],
        "photo_seconds": results[-1][2],
        "bomb_statuses": [status for status, _, _ in results[:-1]],
        "slowest_bomb_seconds": max(seconds for _, _, seconds in results[:-1]),
    }


def deadline_row(base: str, server_pid: int) -> dict[str, Any]:
    """A file that only the deadline stops (an 8000 x 6000 RGBA PNG, legitimate and slow): its status and
    seconds, and the CPU seconds the server's processes use in the second after the answer."""
    status, _, seconds = post_image(base, slow_png((8000, 6000)))
    return {"status": status, "seconds": seconds, "cpu_after_s": cpu_used_in(server_pid, 1.0)}


#: The decode deadline of the server that shows it at work (seconds): the default, 3 s, stops no legitimate file
#: here, and the bench's 8000 x 6000 RGBA PNG (legitimate, slow) decodes in about 0.6 to 0.8 s on these machines.
SHORT_DEADLINE_S = "0.5"


def bench_review(model: Path, photo: bytes) -> dict[str, Any]:
    """The review's files against the default deployment, directly and through nginx (where installed); then the
    deadline at work, on a server with ``FISH_DECODE_TIMEOUT_S`` = :data:`SHORT_DEADLINE_S`."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        with default_server(model, Path(tmp)) as (base, _):
            result["direct"] = review_rows(base)
            result["during_bombs"] = photo_during_bombs(base, photo)
            if NGINX is not None:
                with nginx_in_front(base.removeprefix("http://")) as proxied:
                    result["nginx"] = review_rows(proxied)
        with default_server(model, Path(tmp), FISH_DECODE_TIMEOUT_S=SHORT_DEADLINE_S) as (base, server):
            result["deadline"] = deadline_row(base, server.pid)
            if NGINX is not None:
                with nginx_in_front(base.removeprefix("http://")) as proxied:
                    result["nginx_deadline"] = deadline_row(proxied, server.pid)
    logger.info("decode review %s", result)
    return result


def bench_baseline_http(
    model: Path, photo: Path, baseline: str, requests: int, run_ab: Any, rounds: int = 8
) -> dict[str, Any]:
    """ApacheBench against the default deployment of this tree and of commit ``baseline`` (a temporary git worktree),
    both servers up at once and measured in turn ``rounds`` times, so that the machine's drift (its speed moves by
    half within minutes here) falls on both alike: 1 client (``requests // 10`` requests, at least 300) and 16
    clients (``requests // 2``) per turn. Both serve the precision that ``auto`` picks in this process on an idle
    machine (``FISH_PRECISION``): a worker's own start-up timing, made while the other server's workers time theirs,
    can pick fp32 where bf16 is faster, which would swamp the comparison.

    Returns:
        ``{"rounds", "one": {tree: [mean ms per round]}, "p50": {tree: [p50 ms]}, "many": {tree: [req/s]}}`` with
        trees ``"baseline"`` and ``"this tree"``.
    """
    result: dict[str, Any] = {"rounds": rounds, "one": {}, "p50": {}, "many": {}}
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp, contextlib.ExitStack() as stack:
        worktree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), baseline], cwd=ROOT, check=True)
        stack.callback(subprocess.run, ["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
        body, content_type = loadtest.multipart("image", photo.name, photo.read_bytes(), "image/jpeg")
        body_path = Path(tmp) / "body"
        body_path.write_bytes(body)
        urls = {}
        precision = Predictor.from_checkpoint(model).precision
        result["precision"] = precision
        for tree, cwd in (("baseline", worktree), ("this tree", ROOT)):
            base, _ = stack.enter_context(default_server(model, Path(tmp), cwd, FISH_PRECISION=precision))
            urls[tree] = f"{base}/api/predict"
            run_ab(urls[tree], body_path, content_type, 4, 200)  # warm-up
        for round_ in range(rounds):
            order = list(urls) if round_ % 2 == 0 else list(urls)[::-1]
            for tree in order:
                one = run_ab(urls[tree], body_path, content_type, 1, max(300, requests // 10))
                many = run_ab(urls[tree], body_path, content_type, 16, requests // 2)
                result["one"].setdefault(tree, []).append(one["mean_ms"])
                result["p50"].setdefault(tree, []).append(one["p50_ms"])
                result["many"].setdefault(tree, []).append(many["requests_per_s"])
            logger.info("baseline http round %d: %s", round_ + 1, {k: v[-1] for k, v in result["one"].items()})
    return result


def render_decode(result: dict[str, Any], table: Any, section: Any) -> list[str]:
    """BENCHMARKS.md's decode section from :func:`bench_isolation_cost`, :func:`bench_review` and
    :func:`bench_baseline_http` results (``table`` and ``section`` are tools/bench.py's Markdown helpers)."""
    out = section(
        "6. Decoding in processes with a deadline",
        "Every upload is decoded in a decoder process (`model/decoder_pool.py`) with a deadline "
        "(`FISH_DECODE_TIMEOUT_S`, 3 s) and a memory limit (`FISH_DECODE_MEMORY_MB`, 1024). What a photo pays for "
        "it, in one process (p50 of decoding, reduced to the model's size as the app does):",
    )
    cost = result["isolation"]
    out += table(
        ["photo", "inline ms", "in a decoder process ms", "difference ms"],
        [
            [label, f"{cost[f'{key}_inline_ms']:.2f}", f"{cost[f'{key}_pool_ms']:.2f}",
             f"{cost[f'{key}_pool_ms'] - cost[f'{key}_inline_ms']:+.2f}"]
            for label, key in (("20 small Fish4Knowledge JPEGs", "small"), ("the 12 MP phone JPEG", "big"))
        ],
    )  # fmt: skip
    review = result["review"]
    out += [
        "",
        "The decode-deadline review's files against the default deployment (`gunicorn.conf.py`), one request at a "
        "time from Python's `http.client`; through nginx (`deploy/nginx.conf`) where it is installed:",
        "",
    ]
    nginx = {row["file"]: row for row in review.get("nginx", [])}
    out += table(
        ["file", "size", "expected", "gunicorn: status, s", "through nginx: status, s"],
        [
            [row["file"], f"{row['bytes'] / 1e6:.2f} MB", str(row["expected"]),
             f"{row['status']}, {row['seconds']:.3f}",
             f"{nginx[row['file']]['status']}, {nginx[row['file']]['seconds']:.3f}" if row["file"] in nginx else "-"]
            for row in review["direct"]
        ],
        align="lr---",
    )  # fmt: skip
    bombs, deadline = review["during_bombs"], review["deadline"]
    nginx_deadline = review.get("nginx_deadline")
    out += [
        "",
        f"- A normal photo sent 50 ms after four scan bombs (statuses {bombs['bomb_statuses']}, the slowest answered"
        f" in {bombs['slowest_bomb_seconds']:.3f} s): {bombs['photo_status']} in {bombs['photo_seconds']:.3f} s.",
        f"- A file only the deadline stops (an 8000 x 6000 RGBA PNG, legitimate but slow), the deadline set to"
        f" {SHORT_DEADLINE_S} s: {deadline['status']} in"
        f" {deadline['seconds']:.2f} s; the server's processes then used {deadline['cpu_after_s']:.2f} s of CPU in"
        " the next second."
        + (
            f" Through nginx: {nginx_deadline['status']} in {nginx_deadline['seconds']:.2f} s, then"
            f" {nginx_deadline['cpu_after_s']:.2f} s of CPU."
            if nginx_deadline
            else ""
        ),
        "",
    ]
    if result.get("baseline"):
        base = result["baseline"]
        out += [
            f"The default deployment against commit {result.get('baseline_rev', 'before')} (decoding in the worker), "
            f"both served at once ({base['precision']}) and measured in turn {base['rounds']} times with ApacheBench"
            " (`ab`), the same 271 x 202 JPEG in every request; medians over the rounds:",
            "",
        ]
        rows = []
        for tree in ("baseline", "this tree"):
            rows.append(
                [tree, f"{statistics.median(base['p50'][tree]):.1f}", f"{statistics.median(base['one'][tree]):.2f}",
                 f"{statistics.median(base['many'][tree]):.1f}"]
            )  # fmt: skip
        pairs_one = zip(base["one"]["baseline"], base["one"]["this tree"], strict=True)
        pairs_many = zip(base["many"]["baseline"], base["many"]["this tree"], strict=True)
        one_diff = statistics.median(new - old for old, new in pairs_one)
        many_change = 100 * (statistics.median(new / old for old, new in pairs_many) - 1)
        out += table(["tree", "1 client: p50 ms", "1 client: mean ms", "16 clients: req/s"], rows, align="l---")
        out += [
            "",
            f"Paired by round (medians): 1 client {one_diff:+.2f} ms per request, 16 clients {many_change:+.1f} %"
            " requests/s.",
            "",
        ]
    return out
