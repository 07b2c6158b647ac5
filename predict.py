"""Classify a folder of images into a CSV: ``python predict.py --help`` (also installed as ``fish-predict``).

The command is :func:`model.batch_predict.main`, imported under the ``__main__`` guard: each decoder process
(:mod:`model.decoder_pool`) imports the script that was started, and this one must not bring torch with it.
"""

import sys

if __name__ == "__main__":
    from model.batch_predict import main

    sys.exit(main())
