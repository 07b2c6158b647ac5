"""The commands' logging: one line format and one setup, in a module that imports nothing heavy (the light
commands, ``fish-admin``, use it without loading torch)."""

from __future__ import annotations

import logging


def log_format(rank: int = 0) -> str:
    """The commands' log line: ``time level logger: message``, with ``[rank N]`` before the logger in torchrun's
    processes other than rank 0."""
    return f"%(asctime)s %(levelname)s {f'[rank {rank}] ' if rank else ''}%(name)s: %(message)s"


def setup_logging(rank: int = 0) -> None:
    """Log to stderr as :func:`log_format` says: INFO and above (the commands' progress and errors), or only
    WARNING and above in torchrun's processes other than rank 0 (``rank``), so that one process reports progress."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=log_format(rank))
