"""``tools/loadtest.py``: a short run against real gunicorn with the tiny checkpoint, one worker killed on the way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import make_imagefolder
from tools import loadtest


def test_percentile_and_child_pids() -> None:
    assert loadtest.percentile([], 0.5) is None
    assert loadtest.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert loadtest.percentile(list(map(float, range(1, 101))), 0.99) == 99.0
    assert loadtest.child_pids(2**22 + 1) == []  # no such process, no children


def test_no_photos_is_an_error_not_a_run(tmp_path: Path) -> None:
    assert loadtest.main(["--data", str(tmp_path), "--duration", "1"]) == 2


@pytest.mark.slow
def test_short_load_test_survives_a_worker_kill(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = make_imagefolder(tmp_path / "photos", per_class=4)
    output, raw = tmp_path / "report.md", tmp_path / "report.json"
    args = ["--model", str(tiny_checkpoint), "--data", str(photos), "--clients", "4", "--duration", "5"]
    args += ["--kill-at", "2", "--workers", "2", "--output", str(output), "--json", str(raw)]
    assert loadtest.main(args) == 0  # 0: no unexpected errors

    report = json.loads(raw.read_text())
    assert report["unexpected_errors"] == 0 and report["unexpected_examples"] == []
    assert report["config"]["workers"] == 2 and report["config"]["photos"] == 12
    assert report["requests"] > 20 and report["requests_per_s"] > 0
    good = report["good"]
    assert good["ok"] > 0 and 0 < good["p50_ms"] <= good["p99_ms"] <= good["max_ms"]
    bad = report["bad"]
    assert bad["sent"] > 0 and bad["ok"] > 0
    assert set(report["statuses"]) <= {"200", "400", "415", "connection error"}

    kill = report["kill"]
    assert kill["pid"] in report["config"]["workers_before"]
    assert kill["pid"] not in report["config"]["workers_after"]
    assert kill["replacement_pid"] in report["config"]["workers_after"]
    assert kill["replacement_ready_at_s"] > kill["replacement_forked_at_s"] >= kill["at_s"] >= 2
    # Only requests in flight when the worker died, or sent in the 0.1 s it took to die, may fail (those it had
    # accepted; clients do not retry): at most one per client.
    assert 0 <= kill["failed_requests"] <= 4 and kill["in_flight"] <= 4
    assert report["statuses"].get("connection error", 0) == kill["failed_requests"]
    # Every request that did not get its expected answer, good or bad input alike, was one lost to the kill.
    assert (good["sent"] - good["ok"]) + (bad["sent"] - bad["ok"]) == kill["failed_requests"]

    markdown = output.read_text()
    assert markdown.startswith("## Load test: 4 clients for 5 s, gunicorn with 2 workers")
    for row in ("| requests |", "| latency of good requests | p50 ", "| unexpected errors | 0 |", "| worker killed"):
        assert row in markdown
