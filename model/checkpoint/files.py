"""The checkpoint file: read and validate its raw schema dict, write it atomically.

Only :mod:`model.checkpoint.records` reads what this returns; everything else goes through
:func:`model.checkpoint.load_checkpoint` and the typed :class:`model.checkpoint.Checkpoint`.
"""

from __future__ import annotations

import os
import pickle
import platform
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision

from model.errors import CheckpointError  # declared without torch for the commands

#: The newest schema this code writes and reads (see :mod:`model.checkpoint`).
FORMAT_VERSION = 1
#: Keys without which a file is not one of our checkpoints.
REQUIRED_KEYS = ("format_version", "arch", "class_names", "preprocessing", "model")

# torch.load's unpickler raises many types on foreign bytes (a text file gives IndexError)
_UNREADABLE = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    zipfile.BadZipFile,
    OSError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    AttributeError,
)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that define the checkpoint's numerics."""
    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "timm": str(timm.__version__),
        "python": platform.python_version(),
    }


def read_file(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint's raw dict with ``weights_only=True`` (no arbitrary pickle code runs) and check its
    required keys and format version.

    Raises:
        CheckpointError: the file is missing, a directory, empty or unreadable, is not a torch file, holds objects that
            ``weights_only`` refuses, lacks a required key, or has a newer format version.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is an empty file (0 bytes)")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except _UNREADABLE as exc:
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (not a PyTorch file?): {first_line}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a checkpoint dict")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint of this project (missing {', '.join(missing)}); "
            "a bare state dict can be used as '--weights PATH' for training"
        )
    if not isinstance(raw["format_version"], int) or raw["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {raw['format_version']!r}; this code reads up to {FORMAT_VERSION}"
        )
    return raw


def write_file(raw: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a raw checkpoint dict atomically (temporary file then rename), so a crash never leaves half a
    checkpoint; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(dict(raw), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def network_weights(loaded: Any) -> Any:
    """The network's state dict in what ``torch.load`` read from a ``--weights`` file: a checkpoint of this
    project gives its ``model`` state dict, anything else (a bare state dict) is returned as it is."""
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        return loaded["model"]
    return loaded
