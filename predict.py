"""Classify a folder of images into a CSV: ``python predict.py --help`` (also installed as ``fish-predict``).

The command is :func:`model.batch_predict.main`.
"""

import sys

from model.batch_predict import main

if __name__ == "__main__":
    sys.exit(main())
