"""How a :class:`training.config.TrainConfig` option is declared, and how list values are read.

:func:`option` makes a pydantic field that also carries its ``--help`` group (a key of :data:`GROUPS`) and how
errors word it; :func:`csv_list` and :func:`int_list` read comma-separated command-line values. ``training.config``
builds the parser, the YAML reading and the checks from these declarations.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import Field

#: ``--help`` groups, in the order shown: key used by :func:`option` -> title.
GROUPS = {
    "data": "data",
    "model": "model",
    "fine-tuning": "fine-tuning",
    "open set": "open set: when to answer 'not sure', 'unknown species' or 'not a fish' (see model/open_set.py)",
    "optimisation": "optimisation",
    "run": "run",
}


def option(
    default: Any, group: str, help: str | None = None, *, required: bool = False, rule: str | None = None, **bounds: Any
) -> Any:
    """A :class:`TrainConfig` field: its default, ``--help`` group (a key of :data:`GROUPS`) and text, and pydantic
    bounds (``gt``, ``ge``, ``lt``, ``le``, ``min_length``).

    ``required``: must be set on the command line or in ``--config`` (its command-line default is None).
    ``rule``: how an error names what the option accepts, where the bounds alone would not say it well.

    Raises:
        ValueError: ``group`` is not a key of :data:`GROUPS`.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}; expected one of {', '.join(GROUPS)}")
    return Field(
        default, description=help, json_schema_extra={"group": group, "required": required, "rule": rule}, **bounds
    )


def csv_list(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated option value."""
    return [v.strip() for v in value.split(",") if v.strip()]


def int_list(value: str) -> list[int]:
    """``"256,128"`` -> ``[256, 128]``: a comma-separated option value of integers.

    Raises:
        argparse.ArgumentTypeError: an item is not an integer (argparse words it as a usage error).
    """
    try:
        return [int(v) for v in csv_list(value)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from exc
