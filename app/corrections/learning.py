"""The corrections memory in the app: rebuilt after each review, judged by the gate, picked up by every worker.

One :class:`Learning` per app (``app.extensions["corrections_learning"]``, never a module global):

* **Model id.** Corrections and memories are recorded against :func:`model_id`: the checkpoint's file name and the
  first 16 hex digits of its SHA-256, so a memory is never served with another model's features.
* **Rebuild.** After a reviewer accepts, rejects or deletes a correction (:func:`review_changed`), a background thread
  of that worker refits the memory on every accepted correction of this model (:class:`model.memory.MemoryBuilder`:
  the training features shipped beside the checkpoint, :func:`model.memory.features_path`) and stores what the gate
  decided (:meth:`~app.corrections.store.CorrectionStore.save_memory`): ``served`` with the memory, or ``refused``
  with the reason; the memory served before stays served. Reviews during a rebuild are coalesced into one more
  rebuild. A served memory with an empty blob means "none": every correction it had was rejected or deleted.
* **Pick-up.** Before a request, at most every ``MEMORY_POLL_S`` seconds, each worker asks the database for the id
  of the newest memory of its model and, when it changed, loads the newest served one into its predictor
  (:meth:`model.predictor.Predictor.set_memory`). Every worker of every server sharing the database (PostgreSQL)
  serves it within ``MEMORY_POLL_S`` seconds of the rebuild; a restarted worker loads it before its first answer.
* **Off.** Without the base features file (a checkpoint trained elsewhere, without ``python -m
  training.memory_features``) corrections are still taken and reviewed; nothing is learnt, and the model page
  says why. A database error while polling is logged and the memory served so far stays.

A corrections memory learns on the features the served network computes for a photo, so it needs no retraining;
``fish-admin export`` and ``train.py --extra-data`` carry the corrections into the next release for good.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, current_app
from PIL import Image

from app import inference
from app.corrections import extension
from app.corrections.extension import get_store
from app.corrections.labels import NOT_A_FISH, UNKNOWN_SPECIES
from app.corrections.views import LabelledFeatures, MemoryView
from app.inference import get_predictor
from model.memory import (
    NOT_FISH_LABEL,
    UNKNOWN_LABEL,
    BaseFeatures,
    Correction,
    CorrectionMemory,
    MemoryBuilder,
    features_path,
)
from model.predictor import Predictor

logger = logging.getLogger(__name__)

#: Key of the app's :class:`Learning` in ``app.extensions``.
EXTENSION_KEY = "corrections_learning"
#: Hex digits of the checkpoint's SHA-256 in its model id.
MODEL_HASH_DIGITS = 16
#: Characters of the checkpoint's file name kept in its model id (the database keeps ids of up to 128).
MAX_NAME_IN_ID = 100
#: Fits of one rebuild at most, while the accepted corrections keep changing under it.
MAX_REFITS = 3
#: The memory labels of the open-set correction kinds (the other kinds' labels are species names).
OPEN_SET_KINDS = {UNKNOWN_SPECIES: UNKNOWN_LABEL, NOT_A_FISH: NOT_FISH_LABEL}


def model_id(checkpoint: str | Path) -> str:
    """``<file name>:<first 16 hex digits of its SHA-256>`` (the name cut to :data:`MAX_NAME_IN_ID`): what
    corrections and memories are recorded against.

    Raises:
        OSError: the checkpoint cannot be read.
    """
    path = Path(checkpoint)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name[:MAX_NAME_IN_ID]}:{digest.hexdigest()[:MODEL_HASH_DIGITS]}"


def memory_correction(row: LabelledFeatures) -> Correction:
    """A stored accepted correction as the memory learns from it: its label (the open-set kinds by their memory
    label), its features, and its open-set scores (the gate's verdicts skip those tests where none were stored)."""
    return Correction(OPEN_SET_KINDS.get(row.label_kind, row.label), row.features, row.scores)


def features_and_scores(
    predictor: Predictor, image: Image.Image
) -> tuple[np.ndarray, tuple[float | None, float | None, float | None, float | None]]:
    """What a correction records of its (decoded, cropped) photo: the network's penultimate features, float32
    ``(D,)``, and the open-set scores ``(subject, novelty, taxon, other)`` (None where this model has none), from
    one pass of the served network (:meth:`model.predictor.Predictor.outputs`)."""
    _, features, imagenet_logits = predictor.outputs(predictor.preprocess([image]))
    scores = predictor.open_set_scores(features, imagenet_logits).row(0)
    return features[0].numpy().astype(np.float32), scores


@dataclass
class Learning:
    """What one app knows about its corrections memory (see the module docstring).

    Attributes:
        model_id: the served checkpoint's :func:`model_id`.
        base_path: where its :class:`model.memory.BaseFeatures` are expected.
        off_reason: why nothing is learnt (no base features), or None.
        poll_s: ``MEMORY_POLL_S``, seconds between two looks at the database.
        newest_seen: id of the newest memory record this worker has looked at (None: none yet).
        served: the memory record whose memory the predictor serves (None: the network's own head).
    """

    model_id: str
    base_path: Path
    off_reason: str | None
    poll_s: float
    newest_seen: int | None = None
    served: MemoryView | None = None
    _builder: MemoryBuilder | None = field(default=None, repr=False)
    _last_poll: float = field(default=float("-inf"), repr=False)
    _poll_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rebuild_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rebuilding: bool = field(default=False, repr=False)
    _again: bool = field(default=False, repr=False)
    _idle: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()

    def builder(self, predictor: Predictor) -> MemoryBuilder:
        """The memory builder of this checkpoint, its base features read on first use (only a worker that rebuilds
        pays for them).

        Raises:
            CorrectionMemoryError: the base features cannot be read.
        """
        if self._builder is None:
            base = BaseFeatures.load(self.base_path)
            self._builder = MemoryBuilder(base, predictor.class_names, predictor.temperature, predictor.open_set)
        return self._builder

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no rebuild runs or is due in this worker; True unless ``timeout`` (seconds) passed first."""
        return self._idle.wait(timeout)


def init_app(app: Flask) -> None:
    """Give ``app`` its :class:`Learning` (after the predictor and the store are made) and the before-request pick-up
    of the newest memory.

    Raises:
        OSError: the checkpoint cannot be read to compute its model id.
    """
    path = Path(app.config["MODEL_PATH"])
    base = features_path(path)
    off = (
        None
        if base.is_file()
        else (
            f"no base features beside the checkpoint ({base.name}): corrections are kept and reviewed, but not learnt "
            "from. Write them with: python -m training.memory_features --checkpoint ... --data ... --split-file ..."
        )
    )
    if off:
        logger.warning("corrections memory off: %s", off)
    state = Learning(model_id(path), base, off, float(app.config["MEMORY_POLL_S"]))
    app.extensions[EXTENSION_KEY] = state
    app.before_request(poll)


def get_learning(app: Flask | None = None) -> Learning:
    """The app's :class:`Learning` (the current app's by default)."""
    return (app or current_app).extensions[EXTENSION_KEY]


def poll() -> None:
    """Before a request: every ``MEMORY_POLL_S`` seconds at most, load the newest served memory of this model when
    the database holds a newer record than this worker has seen. One request polls at a time; the others go on
    with the memory served so far, as they do when the database cannot be read (logged)."""
    state = get_learning()
    now = time.monotonic()
    if now - state._last_poll < state.poll_s or not state._poll_lock.acquire(blocking=False):
        return
    try:
        state._last_poll = now
        refresh(current_app._get_current_object(), state)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - a database or memory failure must not fail the user's request
        # one line per poll (every MEMORY_POLL_S while the database is down), without a traceback
        logger.warning("could not look for a new corrections memory (%s): serving the one loaded before", exc)
    finally:
        state._poll_lock.release()


def refresh(app: Flask, state: Learning) -> None:
    """Load the newest served memory of this model into the app's predictor if a newer record exists.

    Raises:
        app.corrections.store.StoreError, sqlalchemy.exc.SQLAlchemyError: the database cannot be read.
        CorrectionMemoryError: the stored memory is damaged.
    """
    store = app.extensions[extension.EXTENSION_KEY]
    newest = store.memories(state.model_id, limit=1)
    if not newest or newest[0].id == state.newest_seen:
        return
    state.newest_seen = newest[0].id
    found = store.latest_memory(state.model_id)
    if found is None or (state.served is not None and found[0].id == state.served.id):
        return
    view, blob = found
    memory = CorrectionMemory.from_bytes(blob) if blob else None
    app.extensions[inference.EXTENSION_KEY].set_memory(memory)
    state.served = view
    logger.info(
        "serving corrections memory %d (%d corrections, new species: %s)",
        view.id,
        (memory.report.get("corrections", 0) if memory else 0),
        ", ".join(memory.new_species) if memory and memory.new_species else "none",
    )


def review_changed(app: Flask) -> None:
    """A reviewer accepted, rejected or deleted a correction: rebuild the memory in a background thread of this
    worker (one at a time; reviews meanwhile make one more rebuild). Does nothing while learning is off."""
    state = get_learning(app)
    if state.off_reason:
        return
    with state._rebuild_lock:
        if state._rebuilding:
            state._again = True
            return
        state._rebuilding, state._again = True, False
        state._idle.clear()
    threading.Thread(target=_rebuild_loop, args=(app, state), name="corrections-memory", daemon=True).start()


def _rebuild_loop(app: Flask, state: Learning) -> None:
    """Rebuild until no review came in meanwhile (a failure is logged; the next review tries again)."""
    while True:
        try:
            rebuild(app, state)
        except Exception:  # noqa: BLE001 - a background thread: log, keep serving the memory of before
            logger.exception("could not rebuild the corrections memory")
        with state._rebuild_lock:
            if not state._again:
                state._rebuilding = False
                state._idle.set()
                return
            state._again = False


def rebuild(app: Flask, state: Learning) -> dict[str, Any]:
    """Fit and judge a memory of every accepted correction of this model, store the gate's decision, and serve it
    in this worker at once when it passed.

    Another worker may have just built the same: when the newest record was built from the same accepted corrections,
    this worker loads it instead. When the accepted corrections changed while this one was fitted (a review on
    another worker), it fits again, so the newest record is never built from older data than an earlier one.

    Returns:
        The gate's report (:meth:`model.memory.MemoryBuilder.build`), with ``accepted_ids`` and ``seconds``.

    Raises:
        CorrectionMemoryError: the base features cannot be read or the corrections do not fit them.
        app.corrections.store.StoreError, sqlalchemy.exc.SQLAlchemyError: the database fails.
    """
    with app.app_context():
        store, predictor = get_store(), get_predictor()
        rows = store.accepted(state.model_id)
        for _ in range(MAX_REFITS):
            ids = [row.id for row in rows]
            newest = store.memories(state.model_id, limit=1)
            if newest and newest[0].report.get("accepted_ids") == ids:
                refresh(app, state)  # another worker built it already
                return newest[0].report
            logger.info("rebuilding the corrections memory from %d accepted corrections", len(rows))
            started = time.perf_counter()
            memory, report = state.builder(predictor).build([memory_correction(row) for row in rows])
            report.update(accepted_ids=ids, seconds=round(time.perf_counter() - started, 2))
            rows = store.accepted(state.model_id)
            if [row.id for row in rows] == ids:
                break
        view = _save(store, state, memory, report)
        if view.status == "served":
            predictor.set_memory(memory)
            state.served = view
        state.newest_seen = view.id
    new_species = ", ".join(report["new_species"]) or "none"
    outcome = report["reason"] or f"{report['corrections']} corrections, new species: {new_species}"
    logger.info("corrections memory %d %s in %.1f s: %s", view.id, view.status, report["seconds"], outcome)
    return report


def _save(store: Any, state: Learning, memory: CorrectionMemory | None, report: dict[str, Any]) -> MemoryView:
    """Store the gate's decision: refused with its reason, or served (a memory, or none when nothing accepted is
    left to learn from: an empty blob)."""
    if memory is None and report["corrections"] and report["reason"]:
        return store.save_memory(
            model_id=state.model_id, status="refused", reason=report["reason"], report=report, blob=None
        )
    blob = memory.to_bytes() if memory is not None else b""
    return store.save_memory(model_id=state.model_id, status="served", reason=None, report=report, blob=blob)


def memory_status(app: Flask) -> dict[str, Any]:
    """What the model page and the review page show of the corrections memory: ``off_reason``, the ``served``
    record and the newest record (``latest``: e.g. one the gate refused), as :class:`MemoryView` or None."""
    state = get_learning(app)
    newest = app.extensions[extension.EXTENSION_KEY].memories(state.model_id, limit=1)
    return {"off_reason": state.off_reason, "served": state.served, "latest": newest[0] if newest else None}


def _count_text(counts: dict[str, int]) -> str:
    """``{"a": 3, "b": 1}`` as ``"a 3, b 1"`` (most first)."""
    return ", ".join(f"{label} {n}" for label, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def memory_facts(view: MemoryView) -> list[tuple[str, str]]:
    """A memory record's report as ``(term, description)`` pairs for the pages (what it learnt, the gate's numbers).

    Source of the numbers: :meth:`model.memory.MemoryBuilder.build`'s report; missing keys are left out.
    """
    report = view.report
    facts = [("Built", f"{view.created_at:%Y-%m-%d %H:%M} UTC (record {view.id}, {view.status})")]
    if "corrections" in report:
        counts = report.get("counts") or {}
        facts.append(
            ("Corrections learnt", f"{report['corrections']}" + (f": {_count_text(counts)}" if counts else ""))
        )
    new = [label for label in report.get("new_species", []) if label not in OPEN_SET_KINDS.values()]
    facts.append(("New species", ", ".join(new) if new else "none"))
    if report.get("waiting"):
        facts.append(("Waiting for more photos", ", ".join(report["waiting"])))
    if "val_macro_f1" in report:
        base, new_f1 = report["val_macro_f1_base"], report["val_macro_f1"]
        facts.append(("Validation macro-F1", f"{base:.4f} without the corrections, {new_f1:.4f} with them"))
    if "held_out_right" in report:
        facts.append(
            (
                "Corrections answered right, each held out in turn",
                f"{report['held_out_right']} of {report['held_out']} "
                f"(the model alone: {report['held_out_right_base']})",
            )
        )
    if "confidence_threshold" in report:
        facts.append(("Named only from", f"{report['confidence_threshold']:.0%} confidence"))
    return facts


def memory_context(app: Flask) -> dict[str, Any]:
    """``templates/memory.html``'s context: ``off_reason``, the served memory's facts (None: the network's own head
    is served), and the newest record's status and reason when the gate refused it."""
    status = memory_status(app)
    served, latest = status["served"], status["latest"]
    refused = latest if latest is not None and latest.status == "refused" else None
    return {
        "off_reason": status["off_reason"],
        "served_facts": memory_facts(served) if served is not None and served.report.get("served") else None,
        "refused": refused,
        "refused_facts": memory_facts(refused) if refused is not None else None,
    }
