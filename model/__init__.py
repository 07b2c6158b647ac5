"""The network, its checkpoint, its transforms and the predictor built from them."""

from model.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint
from model.network import WeightsUnavailableError, build_model
from model.predictor import Prediction, Predictor
from model.transforms import Preprocessing, eval_transform, train_transform

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
