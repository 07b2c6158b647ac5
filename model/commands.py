"""The installed commands that start decoder processes, as light entry points: ``fish-predict``.

A console script imports its entry point's module at its top, and every decoder process of
:mod:`model.decoder_pool` imports the script that was started (multiprocessing's rule for ``__main__``). So the
entry point lives here, in a module that imports nothing, and the command's module (torch and all) is imported
when the command runs, in the main process only.
"""

from __future__ import annotations


def predict() -> int:
    """``fish-predict``: :func:`model.batch_predict.main`, with the arguments parsed before the command's module
    (torch and all) is imported, so that ``--help`` answers at once."""
    from model.predict_cli import get_args_parser

    args = get_args_parser().parse_args()
    from model.batch_predict import run

    return run(args)
