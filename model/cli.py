"""Command-line pieces shared by the commands that load a checkpoint into a :class:`model.predictor.Predictor`.

``fish-evaluate`` / ``evaluate.py`` (:mod:`training.cli`), ``fish-predict`` / ``predict.py``
(:mod:`model.batch_predict`) and ``fish-quantize`` / ``quantize.py`` declare their inference options
(``--checkpoint``, ``--batch-size``, ``--workers``, ``--device``, ``--precision``, ``--backend``) and
tell a user's mistake (exit code 2, one logged line) from a bug here, once. It lives in ``model`` because
``model.batch_predict`` uses it and ``model`` imports nothing from ``training``; it imports neither torch nor the
model's modules, so the commands build their parsers (and answer ``--help``) before loading them.
"""

from __future__ import annotations

import argparse

from model.choices import BACKENDS, SERVED_PRECISIONS
from model.errors import BackendUnavailableError, CheckpointError, QuantizationUnavailableError

#: What loading or running a checkpoint raises for a user's mistake (a bad file, int8 not made, a backend that
#: cannot run here); the commands log it and exit with code 2, together with ``ValueError`` and ``OSError``.
PREDICTOR_ERRORS: tuple[type[Exception], ...] = (
    CheckpointError,
    BackendUnavailableError,
    QuantizationUnavailableError,
)


def command_parser(description: str) -> argparse.ArgumentParser:
    """A command's parser (defaults shown in ``--help``) with its ``--checkpoint`` option (a path, required)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by train.py (release.pt, best.pt...)")
    return parser


def add_inference_arguments(parser: argparse.ArgumentParser, *, precision: str, backend: str) -> None:
    """Add ``--batch-size``, ``--workers``, ``--device``, ``--precision`` and ``--backend`` to ``parser``.

    Args:
        precision: the command's default ``--precision`` (``"auto"`` or one of ``SERVED_PRECISIONS``).
        backend: the command's default ``--backend`` (one of ``BACKENDS``).
    """
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images (0: inline)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1... or auto")
    parser.add_argument(
        "--precision",
        choices=("auto", *SERVED_PRECISIONS),
        default=precision,
        help="auto: OpenVINO keeps the faster of fp32 and bf16 measured here; torch takes bf16 where the CPU or "
        "GPU computes it natively, else fp32; int8 needs --backend openvino and quantize.py's network",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=backend,
        help="torch (the reference), openvino, or auto: OpenVINO on the CPU, torch on a GPU",
    )
