"""Quantize a checkpoint to int8 for OpenVINO: ``python quantize.py --help`` (also installed as ``fish-quantize``).

The command is :func:`training.cli.quantize_main`.
"""

import sys

from training.cli import quantize_main as main

if __name__ == "__main__":
    sys.exit(main())
