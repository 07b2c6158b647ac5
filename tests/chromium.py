"""What the browser tests share (``tests/test_browser.py``, ``tests/test_corrections_browser.py``): Debian's
Chromium driven by Playwright for Python (never ``playwright install``; ``FISH_CHROMIUM`` points at another binary),
the screen sizes, and a watcher of each page's console that fails a test on an unexpected error (CSP violations
are console errors too).

The fixtures ``browser`` (one Chromium per test module) and ``console`` are in ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("FISH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
#: The console error Chromium logs for a 4xx answer (a refused file or correction, the API's 401).
HTTP_4XX = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")


def skip_without_browser() -> None:
    """Skip the calling test module, with the reason, where Playwright or the Chromium binary is missing.

    Playwright is looked up, not imported (``importlib.util.find_spec``): every pytest process collects these
    modules, the fast loop too, which deselects them, and importing Playwright took 0.1 s each time."""
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("needs playwright: pip install -r requirements-dev.txt", allow_module_level=True)
    if not Path(CHROMIUM).is_file():
        reason = f"no Chromium at {CHROMIUM}: apt-get install chromium (or set FISH_CHROMIUM)"
        pytest.skip(reason, allow_module_level=True)


class Console:
    """Collects a page's console errors and uncaught exceptions; CSP violations are console errors too."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def watch(self, page: Any) -> Any:
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        return page

    def allow(self, pattern: re.Pattern[str]) -> None:
        """Expect errors matching ``pattern`` (e.g. the 415 of a refused file)."""
        self.allowed.append(pattern)

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]
