"""The options of ``fish-predict`` / ``predict.py`` (:mod:`model.batch_predict`), in a module without torch.

``fish-predict`` parses its arguments with :func:`get_args_parser` before it imports the command's module (torch,
the predictor), so ``--help`` and a mistyped option answer at once (:func:`model.commands.predict`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from model.cli import add_inference_arguments, command_parser
from model.decoder_pool import DEFAULT_DECODE_TIMEOUT_S
from model.decoding import DEFAULT_MAX_PIXELS


def get_args_parser() -> argparse.ArgumentParser:
    """Arguments of ``predict.py`` / ``fish-predict``: :func:`model.cli.add_inference_arguments`' with
    ``--workers`` meaning decoder processes here (not DataLoader processes as in ``evaluate.py``), plus the
    decoding limits ``--decode-timeout`` and ``--max-pixels`` (the web app's defaults)."""
    parser = command_parser("Classify every image under a folder (recursively) and write one CSV row per image.")
    parser.add_argument("folder", type=Path, help="folder of images; sub-folders are searched, other files ignored")
    parser.add_argument("--output", type=Path, required=True, help="CSV file to write (replaced if it exists)")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per image (at most the class count)")
    parser.add_argument(
        "--crops",
        type=Path,
        help="CSV with columns path (as the output's) and crop (x,y,w,h: fractions of the upright photo): classify "
        "only that part of each listed photo",
    )
    add_inference_arguments(parser, precision="auto", backend="auto")
    # --workers as model.cli declares it for evaluate.py too, with this command's meaning in its help
    workers = next(action for action in parser._actions if action.dest == "workers")
    workers.help = (
        "decoder processes: each file is read and decoded in one, under a deadline and a memory limit, as the web "
        "app decodes uploads (0 counts as 1: no file is ever decoded in this process)"
    )
    parser.add_argument(
        "--decode-timeout",
        type=float,
        default=DEFAULT_DECODE_TIMEOUT_S,
        metavar="SECONDS",
        help="deadline of one file's decode (> 0): past it the file gets an error row and its decoder process is "
        "replaced",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="largest image decoded, in pixels (width x height, > 0); a larger one gets an error row",
    )
    return parser


def check_options(args: argparse.Namespace) -> None:
    """Check the numbers and the output path of :func:`get_args_parser`'s ``args``.

    Raises:
        ValueError: ``--top-k`` or ``--batch-size`` below 1, ``--workers`` below 0, ``--decode-timeout`` not a
            finite number > 0, ``--max-pixels`` below 1, or ``--output`` an existing folder.
    """
    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        raise ValueError("--top-k and --batch-size must be at least 1, --workers at least 0")
    if not (args.decode_timeout > 0 and math.isfinite(args.decode_timeout)):
        raise ValueError(f"--decode-timeout must be a number of seconds > 0, got {args.decode_timeout}")
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be at least 1, got {args.max_pixels}")
    if args.output.is_dir():
        raise ValueError(f"--output {args.output} is a folder; give a file name")
