"""Load test of the real server: gunicorn with the default configuration, concurrent clients, a killed worker.

Starts ``gunicorn -c gunicorn.conf.py wsgi:app`` on a free loopback port, then ``--clients`` threads post real
photos (a fixed sample of ``--photos`` files from ``--data``) to ``/api/predict`` for ``--duration`` seconds,
about ``--bad-fraction`` of them bad input (a text file, which must get 415, and a truncated JPEG, which must
get 400). At ``--kill-at`` seconds one gunicorn worker gets SIGKILL; gunicorn forks a replacement. The report
(Markdown on stdout, optionally ``--output`` and ``--json`` files) gives requests per second, the p50 and p99
latency of good requests in milliseconds, the statuses, the unexpected errors (a wrong status or a connection
error), and how many requests failed because of the kill: those that were in flight when the worker died and
failed (a request accepted by the killed worker is lost with it; clients do not retry).

Everything stays on 127.0.0.1 and is bounded: the run stops after ``--duration`` seconds or ``--max-requests``
requests, each request times out after ``--request-timeout`` seconds, and gunicorn is always terminated.
Only the standard library is used on the client side. Exit status: 0 without unexpected errors, 1 with some,
2 when the test could not run (no photos, the server did not start).

    python tools/loadtest.py --clients 16 --duration 60 --output loadtest.md
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("loadtest")

#: Requests sent up to this long after the SIGKILL still count as in flight on the killed worker: the signal is
#: delivered asynchronously, and until the process is gone it can accept a connection from the shared socket.
KILL_GRACE_S = 0.1

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "weights" / "fish4knowledge_lite2.pt"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fish4knowledge"
HOST = "127.0.0.1"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


class LoadTestError(Exception):
    """The load test could not run (no photos, the server did not start...)."""


@dataclass(frozen=True)
class Payload:
    """One request body to send.

    Attributes:
        kind: ``"photo"`` (good input), ``"text"`` or ``"truncated-jpeg"`` (bad input).
        body: the multipart body.
        content_type: its ``Content-Type`` header, with the boundary.
        expected: the status it must get.
    """

    kind: str
    body: bytes
    content_type: str
    expected: int


@dataclass(frozen=True)
class Result:
    """The outcome of one request; times in seconds since the start of the run."""

    kind: str
    expected: int
    start: float
    end: float
    status: int | None  # None: connection error or timeout
    error: str | None  # what went wrong, None when the status was the expected one

    @property
    def ok(self) -> bool:
        return self.error is None


# --- inputs ------------------------------------------------------------------------------------------------------


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """One file field as ``multipart/form-data``; returns the body and its ``Content-Type`` header."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def sample_photos(data: Path, count: int, seed: int) -> list[Path]:
    """A fixed sample of ``count`` photos under ``data`` (same files for the same folder, count and seed).

    Raises:
        LoadTestError: the folder holds no JPEG or PNG files.
    """
    photos = sorted(p for p in data.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if not photos:
        raise LoadTestError(f"no photos (*.jpg, *.png) under {data}: pass --data DIR")
    return sorted(random.Random(seed).sample(photos, min(count, len(photos))))


def make_payloads(photos: list[Path]) -> tuple[list[Payload], list[Payload]]:
    """The good payloads (one per photo, 200 expected) and the bad ones (a text file, a truncated JPEG)."""
    good = []
    for path in photos:
        content_type = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        good.append(Payload("photo", *multipart("image", path.name, path.read_bytes(), content_type), 200))
    jpeg = next((p.read_bytes() for p in photos if p.suffix.lower() != ".png"), photos[0].read_bytes())
    bad = [
        Payload("text", *multipart("image", "notes.txt", b"this is not a photo of a fish\n" * 20, "text/plain"), 415),
        Payload("truncated-jpeg", *multipart("image", "cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"), 400),
    ]
    return good, bad


# --- the server --------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """Process ids of the children of ``pid`` (gunicorn's workers, for its master), from ``/proc``."""
    listed = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if listed:  # kernels with CONFIG_PROC_CHILDREN
        return sorted({int(child) for path in listed for child in path.read_text().split()})
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process exited meanwhile
        if int(fields[1]) == pid:  # fields after "pid (comm)": state, ppid, ...
            children.append(int(stat.parent.name))
    return sorted(children)


def start_server(
    model: Path, port: int, workers: int | None, log_path: Path, cwd: Path = ROOT, **settings: str
) -> subprocess.Popen[bytes]:
    """Start gunicorn with ``gunicorn.conf.py`` of the tree at ``cwd`` on ``127.0.0.1:port`` serving ``model``,
    with ``settings`` added to its environment (e.g. ``FISH_THREADS="1"``); output to ``log_path``."""
    env = {**os.environ, "BIND": f"{HOST}:{port}", "FISH_MODEL_PATH": str(model), **settings}
    if workers is not None:
        env["WEB_CONCURRENCY"] = str(workers)
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    logger.info("starting %s on %s:%d", " ".join(command[2:]), HOST, port)
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def serving_pids(log_path: Path) -> set[int]:
    """Workers whose app logged ``serving <model>`` (its model is loaded), from gunicorn's log."""
    text = log_path.read_text(errors="replace")
    return {int(pid) for pid in re.findall(r"\[(\d+)\] \[INFO\] app[\w.]*: serving ", text)}


def stop_server(server: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL after ``grace`` seconds."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            logger.warning("gunicorn did not stop in %.0f s: killing it", grace)
            server.kill()
            server.wait()


def wait_until_ready(server: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float) -> list[int]:
    """Wait until ``/healthz`` answers and every worker has loaded the model; returns the worker pids.

    Raises:
        LoadTestError: gunicorn exited, or was not ready within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise LoadTestError(f"gunicorn exited with status {server.returncode}")
        workers = child_pids(server.pid)
        if workers and set(workers) <= serving_pids(log_path) and get_status(port, "/healthz") == 200:
            return workers
        if time.monotonic() > deadline:
            raise LoadTestError(f"gunicorn was not ready after {timeout:.0f} s")
        time.sleep(0.2)


def get_status(port: int, path: str) -> int | None:
    """Status of ``GET path``, or None when the server does not answer."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# --- the clients -------------------------------------------------------------------------------------------------


def send(port: int, payload: Payload, timeout: float) -> tuple[int | None, str | None]:
    """POST ``payload`` to ``/api/predict`` on a new connection; returns the status and what was wrong, if any."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": payload.content_type, "Connection": "close"}
        conn.request("POST", "/api/predict", body=payload.body, headers=headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:200]
    finally:
        conn.close()
    if response.status != payload.expected:
        return response.status, f"status {response.status}, expected {payload.expected}: {body[:200]!r}"
    try:
        answer = json.loads(body)
    except ValueError:
        return response.status, f"status {response.status} without a JSON body: {body[:200]!r}"
    key = "label" if payload.expected == 200 else "error"
    if not isinstance(answer, dict) or key not in answer:
        return response.status, f"status {response.status} without {key!r}: {body[:200]!r}"
    return response.status, None


class Clients:
    """``count`` client threads sending payloads until a deadline or a request budget is spent.

    Each client draws a bad payload with probability ``bad_fraction``, else a good one, from its own seeded
    random generator, and waits for each answer before sending the next request.
    """

    def __init__(
        self,
        *,
        port: int,
        count: int,
        good: list[Payload],
        bad: list[Payload],
        bad_fraction: float,
        request_timeout: float,
        max_requests: int,
        seed: int,
    ) -> None:
        self.port = port
        self.good, self.bad, self.bad_fraction = good, bad, bad_fraction
        self.request_timeout = request_timeout
        self.results: list[Result] = []
        self._budget = max_requests
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.t0 = 0.0
        self.deadline = 0.0
        self._threads = [
            threading.Thread(target=self._run, args=(random.Random(seed * 1000 + i),), name=f"client-{i}", daemon=True)
            for i in range(count)
        ]

    def now(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self.t0

    def start(self, duration: float) -> None:
        self.t0 = time.monotonic()
        self.deadline = duration
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        """Wait for the clients (each finishes its current request, bounded by its timeout)."""
        for thread in self._threads:
            thread.join(timeout=max(0.0, self.deadline - self.now()) + self.request_timeout + 10)
        self._stop.set()

    def _take(self) -> bool:
        with self._lock:
            if self._budget <= 0 or self._stop.is_set() or self.now() >= self.deadline:
                return False
            self._budget -= 1
            return True

    def _run(self, rng: random.Random) -> None:
        while self._take():
            payload = rng.choice(self.bad if rng.random() < self.bad_fraction else self.good)
            start = self.now()
            status, error = send(self.port, payload, self.request_timeout)
            result = Result(payload.kind, payload.expected, start, self.now(), status, error)
            with self._lock:
                self.results.append(result)


# --- the run and its report --------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (``q`` in (0, 1]) of ``values``, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def kill_a_worker(server: subprocess.Popen[bytes], rng: random.Random) -> int:
    """SIGKILL one of gunicorn's workers (chosen by ``rng``); returns its pid.

    Raises:
        LoadTestError: gunicorn has no worker.
    """
    workers = child_pids(server.pid)
    if not workers:
        raise LoadTestError("gunicorn has no worker to kill")
    victim = rng.choice(workers)
    os.kill(victim, signal.SIGKILL)
    return victim


def watch_replacement(
    server: subprocess.Popen[bytes], before: list[int], log_path: Path, clients: Clients, timeout: float
) -> dict[str, Any]:
    """After a kill: when (seconds since the start) gunicorn forked a new worker and when it loaded the model."""
    found: dict[str, Any] = {"replacement_pid": None, "replacement_forked_at_s": None, "replacement_ready_at_s": None}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        if found["replacement_pid"] is None:
            new = sorted(set(child_pids(server.pid)) - set(before))
            if new:
                found["replacement_pid"], found["replacement_forked_at_s"] = new[0], round(clients.now(), 2)
        elif found["replacement_pid"] in serving_pids(log_path):
            found["replacement_ready_at_s"] = round(clients.now(), 2)
            break
        time.sleep(0.05)
    return found


def summarise(
    results: list[Result], elapsed: float, kill: dict[str, Any] | None, config: dict[str, Any]
) -> dict[str, Any]:
    """The report as a JSON-ready dict (latencies in milliseconds, times in seconds since the start)."""
    kill_time = kill["at_s"] if kill else None

    def lost_to_kill(r: Result) -> bool:
        # SIGKILL is asynchronous: a connection sent just after os.kill can still be accepted by the dying worker
        near_kill = kill_time is not None and r.start < kill_time + KILL_GRACE_S and kill_time <= r.end
        return not r.ok and r.status is None and near_kill

    good_ok = [r for r in results if r.kind == "photo" and r.ok]
    latencies = [(r.end - r.start) * 1000 for r in good_ok]
    unexpected = [r for r in results if not r.ok and not lost_to_kill(r)]
    statuses = Counter("connection error" if r.status is None else str(r.status) for r in results)
    report: dict[str, Any] = {
        "config": config,
        "elapsed_s": round(elapsed, 2),
        "requests": len(results),
        "requests_per_s": round(len(results) / elapsed, 2) if elapsed else 0.0,
        "good": {
            "sent": sum(r.kind == "photo" for r in results),
            "ok": len(good_ok),
            "per_s": round(len(good_ok) / elapsed, 2) if elapsed else 0.0,
            "p50_ms": None if not latencies else round(percentile(latencies, 0.50) or 0.0, 1),
            "p99_ms": None if not latencies else round(percentile(latencies, 0.99) or 0.0, 1),
            "max_ms": None if not latencies else round(max(latencies), 1),
        },
        "bad": {
            "sent": sum(r.kind != "photo" for r in results),
            "ok": sum(r.kind != "photo" and r.ok for r in results),
        },
        "statuses": dict(sorted(statuses.items())),
        "unexpected_errors": len(unexpected),
        "unexpected_examples": sorted({f"{r.kind}: {r.error}" for r in unexpected})[:5],
        "kill": None,
    }
    if kill:
        report["kill"] = {
            **kill,
            "in_flight": sum(r.start < kill_time <= r.end for r in results),
            "failed_requests": sum(lost_to_kill(r) for r in results),
        }
    return report


def run_loadtest(args: argparse.Namespace) -> dict[str, Any]:
    """Start gunicorn, run the clients (and the kill), stop gunicorn; returns the report (see :func:`summarise`).

    Raises:
        LoadTestError: no photos, or gunicorn did not start.
    """
    photos = sample_photos(args.data, args.photos, args.seed)
    good, bad = make_payloads(photos)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp:
        log_path = Path(args.server_log) if args.server_log else Path(tmp) / "gunicorn.log"
        server = start_server(args.model, port, args.workers, log_path)
        try:
            try:
                workers = wait_until_ready(server, port, log_path, args.startup_timeout)
            except LoadTestError as exc:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
                raise LoadTestError(f"{exc}\n--- the end of gunicorn's log ---\n{tail}") from exc
            logger.info(
                "%d workers ready (%s); %d clients for %.0f s", len(workers), workers, args.clients, args.duration
            )
            clients = Clients(
                port=port,
                count=args.clients,
                good=good,
                bad=bad,
                bad_fraction=args.bad_fraction,
                request_timeout=args.request_timeout,
                max_requests=args.max_requests,
                seed=args.seed,
            )
            clients.start(args.duration)
            kill = None
            if args.kill_at is not None and args.kill_at < args.duration:
                time.sleep(max(0.0, args.kill_at - clients.now()))
                before = child_pids(server.pid)
                victim = kill_a_worker(server, random.Random(args.seed))
                kill = {"pid": victim, "at_s": round(clients.now(), 3)}
                logger.info("killed worker %d at %.1f s", victim, kill["at_s"])
                kill.update(watch_replacement(server, before, log_path, clients, args.startup_timeout))
                logger.info("replacement: %s", kill)
            clients.join()
            elapsed = max((r.end for r in clients.results), default=clients.now())  # start to the last answer
            workers_after = child_pids(server.pid)
        finally:
            stop_server(server)
        if server.returncode not in (0, -signal.SIGTERM):
            logger.warning("gunicorn exited with status %s", server.returncode)
    config = {
        "clients": args.clients,
        "duration_s": args.duration,
        "photos": len(photos),
        "bad_fraction": args.bad_fraction,
        "model": Path(args.model).name,
        "workers": len(workers),
        "workers_before": workers,
        "workers_after": workers_after,
        "cpus": os.cpu_count(),
    }
    return summarise(clients.results, elapsed, kill, config)


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown: a heading and a two-column table."""
    c, good, bad, kill = report["config"], report["good"], report["bad"], report["kill"]
    rows = [
        ("requests", f"{report['requests']} in {report['elapsed_s']} s: {report['requests_per_s']} per second"),
        (
            "good requests (photos, 200 expected)",
            f"{good['ok']} of {good['sent']} answered 200 ({good['per_s']} per second)",
        ),
        ("latency of good requests", f"p50 {good['p50_ms']} ms, p99 {good['p99_ms']} ms, max {good['max_ms']} ms"),
        ("bad requests (400 or 415 expected)", f"{bad['ok']} of {bad['sent']} got their 4xx"),
        ("statuses", ", ".join(f"{status}: {n}" for status, n in report["statuses"].items()) or "none"),
        ("unexpected errors", str(report["unexpected_errors"])),
    ]
    if kill is None:
        rows.append(("worker killed", "no"))
    else:
        ready = kill["replacement_ready_at_s"]
        rows += [
            ("worker killed (SIGKILL)", f"pid {kill['pid']} at {kill['at_s']} s"),
            (
                "requests failed because of the kill",
                f"{kill['failed_requests']} ({kill['in_flight']} requests were in flight on all workers)",
            ),
            (
                "replacement worker",
                f"pid {kill['replacement_pid']}, forked at {kill['replacement_forked_at_s']} s, "
                + (f"model loaded at {ready} s" if ready is not None else "not ready before the end of the test"),
            ),
        ]
    title = (
        f"## Load test: {c['clients']} clients for {c['duration_s']:g} s, gunicorn with {c['workers']} workers "
        f"on {c['cpus']} CPUs, {c['model']}, {c['photos']} photos, {c['bad_fraction']:.0%} bad input"
    )
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    lines = [title, "", "| | |", "|---|---|", table]
    if report["unexpected_examples"]:
        lines += ["", "Unexpected errors (examples):", "", *(f"- {e}" for e in report["unexpected_examples"])]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads (default 16)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument(
        "--kill-at", type=float, default=None, help="second at which to SIGKILL a worker (default: half-way)"
    )
    parser.add_argument("--no-kill", action="store_true", help="kill no worker")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint to serve (FISH_MODEL_PATH)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of photos (searched recursively)")
    parser.add_argument("--photos", type=int, default=50, help="size of the fixed sample of photos (default 50)")
    parser.add_argument("--bad-fraction", type=float, default=0.1, help="share of bad requests (default 0.1)")
    parser.add_argument("--workers", type=int, default=None, help="WEB_CONCURRENCY (default: gunicorn.conf.py's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photo sample, the clients and the kill")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds for gunicorn to get ready")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--server-log", type=Path, default=None, help="keep gunicorn's log here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.photos < 1 or not 0 <= args.bad_fraction <= 1:
        parser.error("--clients and --photos must be >= 1, --duration > 0, --bad-fraction in [0, 1]")
    if args.no_kill:
        args.kill_at = None
    elif args.kill_at is None:
        args.kill_at = args.duration / 2
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print its report; returns the exit status (0 ok, 1 unexpected errors, 2 no run)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        report = run_loadtest(args)
    except LoadTestError as exc:
        logger.error("%s", exc)
        return 2
    markdown = format_report(report)
    print(markdown, end="")
    if args.output:
        args.output.write_text(markdown)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["unexpected_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
