"""Processes that write to a corrections store, for ``tests/test_corrections_store.py``, which runs them as
``python -m tests.store_writer COMMAND URL [REVIEWER_ID]`` from the repository root:

* ``open``: prints ``ready``, waits for a line on stdin, then opens the store (migrating a fresh database), submits
  one correction and prints ``done``: two of them told at once race to migrate the same database.
* ``burst``: submits and reviews (as reviewer ``REVIEWER_ID``) endlessly, printing ``submit <id> <i>`` or
  ``review <id> <status>`` right after the store acknowledged each write: what a SIGKILL must not lose.

The ``app`` package is registered without running ``app/__init__.py``, which imports Flask and torch (seconds per
process) that the store does not need.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _store_only() -> None:
    """Make ``app.corrections`` importable without ``app/__init__.py``."""
    app = types.ModuleType("app")
    app.__path__ = [str(ROOT / "app")]
    sys.modules.setdefault("app", app)


def open_when_told(url: str) -> None:
    import numpy as np

    from app.corrections.store import CorrectionStore

    print("ready", flush=True)
    sys.stdin.readline()
    with CorrectionStore(url) as store:
        store.submit(label="x", label_kind="species", features=np.ones(8, np.float32), model_id="m", client_key="k")
    print("done", flush=True)


def burst(url: str, reviewer: int) -> None:
    import numpy as np

    from app.corrections.store import CorrectionStore
    from tests.helpers import encode, synthetic_image

    store = CorrectionStore(url)
    for i in range(1_000_000):
        jpeg = encode(synthetic_image((200, 40, 40), (8, 8), seed=i)) if i % 4 == 0 else None
        features = np.full(8, i, np.float32)
        correction = store.submit(
            label=f"fish {i}", label_kind="species", features=features, model_id="m", client_key="k",
            photo=jpeg, photo_size=(8, 8) if jpeg else None,
        )  # fmt: skip
        print("submit", correction.id, i, flush=True)
        if i % 3:
            reviewed = store.review(correction.id, "accept" if i % 3 == 1 else "reject", reviewer)
            print("review", reviewed.id, reviewed.status, flush=True)


if __name__ == "__main__":
    _store_only()
    if sys.argv[1] == "open":
        open_when_told(sys.argv[2])
    else:
        burst(sys.argv[2], int(sys.argv[3]))
