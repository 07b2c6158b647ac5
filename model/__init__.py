"""The network, its checkpoint, its transforms and the predictor built from them.

The names below are imported on first use (PEP 562), so that importing one light module of the package
(:mod:`model.decoding`, which the decoder processes of :mod:`model.decoder_pool` run) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "CheckpointError": "model.checkpoint",
    "load_checkpoint": "model.checkpoint",
    "make_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "WeightsUnavailableError": "model.network",
    "build_model": "model.network",
    "Prediction": "model.results",
    "Predictor": "model.predictor",
    "Preprocessing": "model.transforms",
    "eval_transform": "model.transforms",
    "train_transform": "model.transforms",
}

__all__ = [
    "CheckpointError",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "WeightsUnavailableError",
    "build_model",
    "eval_transform",
    "load_checkpoint",
    "make_checkpoint",
    "save_checkpoint",
    "train_transform",
]

if TYPE_CHECKING:
    from model.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint
    from model.network import WeightsUnavailableError, build_model
    from model.predictor import Predictor
    from model.results import Prediction
    from model.transforms import Preprocessing, eval_transform, train_transform


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
