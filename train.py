"""Fine-tune a classifier on an ImageFolder tree: ``python train.py --help`` (also installed as ``fish-train``).

The command is :func:`training.cli.train_main`; it runs unchanged under ``torchrun``.
"""

import sys

from training.cli import train_main as main

if __name__ == "__main__":
    sys.exit(main())
