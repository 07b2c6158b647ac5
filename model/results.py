"""The results table of predictions as CSV: one layout for the web page's download (``app.web``), ``predict.py``
and ``static/app.js`` (which writes the same columns from the API's answers in the browser).

Columns: the file (``file_name`` on the page, ``path`` in ``predict.py``), then ``species, label, confidence,
verdict, confident, error``, then ``top_1, top_1_confidence`` to ``top_K, top_K_confidence``. ``species`` is the
most probable class's display name, ``label`` its class name, ``confidence`` its calibrated probability (4
decimals), whatever the ``verdict`` (one of :data:`model.predictor.VERDICTS`); ``confident`` is ``true`` only for
the ``species`` verdict. A file that could not be classified has only its ``error``.
"""

from __future__ import annotations

from model.predictor import Prediction

#: The columns after the file's own, before the top-k pairs.
COLUMNS: tuple[str, ...] = ("species", "label", "confidence", "verdict", "confident", "error")


def csv_cell(value: object) -> str:
    """``value`` as a CSV cell that spreadsheets will not run as a formula (``=``, ``+``, ``-``, ``@``, tab and
    carriage return prefixed with ``'``, as OWASP's "CSV Injection" advice says)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_header(file_column: str, k: int) -> list[str]:
    """The header: ``file_column``, :data:`COLUMNS`, then ``top_i, top_i_confidence`` for i = 1..k."""
    return [file_column, *COLUMNS, *(f"top_{i}{suffix}" for i in range(1, k + 1) for suffix in ("", "_confidence"))]


def csv_row(name: str, prediction: Prediction | None, error: str, k: int) -> list[str]:
    """One row under :func:`csv_header` with ``k`` top-k pairs (fewer classes leave the rest empty), every cell
    escaped by :func:`csv_cell`; without a prediction, only ``name`` and ``error``."""
    if prediction is None:
        row = [name, "", "", "", "", "", error]
    else:
        p = prediction
        row = [name, p.display_name, p.label, f"{p.confidence:.4f}", p.verdict, str(p.confident).lower(), error]
        for score in p.top_k[:k]:
            row += [score.label, f"{score.confidence:.4f}"]
    row += [""] * (len(COLUMNS) + 1 + 2 * k - len(row))
    return [csv_cell(cell) for cell in row]
