"""Evaluate a checkpoint on labelled images: ``python evaluate.py --help`` (also installed as ``fish-evaluate``).

The command is :func:`training.cli.evaluate_main`.
"""

import sys

from training.cli import evaluate_main as main

if __name__ == "__main__":
    sys.exit(main())
