"""Post-training int8 quantization of a checkpoint's network for OpenVINO, with NNCF.

``quantize.py`` (the command) calibrates on training images and writes the int8 network beside the checkpoint
(:func:`int8_path`: ``model.pt`` -> ``model.int8.xml`` and ``.bin``, plus ``model.int8.json`` with what it
measured); a predictor loads it with ``precision="int8"`` (``FISH_PRECISION=int8``). Method: NNCF's default
post-training quantization (per-channel symmetric int8 weights, activations quantized at the statistics of the
calibration images, fast bias correction), the ``MIXED`` preset (asymmetric activations): NNCF's documentation,
"Post-training Quantization" (https://docs.openvino.ai/nncf/).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from model.errors import QuantizationUnavailableError  # declared without torch for the commands

logger = logging.getLogger(__name__)


def int8_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where the int8 OpenVINO network of ``checkpoint`` lives: the same name with ``.int8.xml`` (and ``.bin``)."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ".int8.xml")


def report_path(checkpoint: str | os.PathLike[str]) -> Path:
    """The JSON record of how the int8 network of ``checkpoint`` was made and how well it agrees with fp32."""
    return int8_path(checkpoint).with_suffix(".json")


def quantize(
    network: torch.nn.Module, image_size: int, calibration: Iterable[torch.Tensor], subset_size: int = 300
) -> Any:
    """The int8 ``openvino.Model`` of ``network``, calibrated on ``calibration``.

    Args:
        network: float32 module in eval mode, ``(N, 3, S, S)`` preprocessed images to a tensor or tuple of them
            (the predictor's :class:`model.open_set.OpenSetNetwork`).
        image_size: ``S``.
        calibration: preprocessed float32 batches ``(N, 3, S, S)`` (the eval transform of training images).
        subset_size: how many calibration samples NNCF reads (its default, 300).

    Raises:
        QuantizationUnavailableError: nncf or openvino is not installed.
    """
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise QuantizationUnavailableError("int8 quantization needs nncf and openvino: pip install nncf") from exc
    converted = ov.convert_model(network.float().eval(), example_input=torch.zeros(1, 3, image_size, image_size))
    dataset = nncf.Dataset(list(calibration), lambda batch: batch.numpy())
    return nncf.quantize(converted, dataset, preset=nncf.QuantizationPreset.MIXED, subset_size=subset_size)


def save(model: Any, checkpoint: str | os.PathLike[str]) -> Path:
    """Write the int8 network beside ``checkpoint`` (:func:`int8_path`, .xml and .bin); returns the .xml."""
    import openvino as ov

    path = int8_path(checkpoint)
    ov.save_model(model, path, compress_to_fp16=False)
    return path


def write_report(checkpoint: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write ``report`` (how the int8 network was made, how it agrees with fp32) as :func:`report_path`'s JSON."""
    path = report_path(checkpoint)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def load(checkpoint: str | os.PathLike[str]) -> Any:
    """The int8 ``openvino.Model`` made for ``checkpoint``.

    Raises:
        QuantizationUnavailableError: it has not been made (the message says how), or openvino is missing.
    """
    path = int8_path(checkpoint)
    if not path.is_file():
        raise QuantizationUnavailableError(
            f"no int8 network for {checkpoint}: make {path} with "
            f"`python quantize.py --checkpoint {checkpoint} --data <training images>`"
        )
    try:
        import openvino as ov
    except ImportError as exc:
        raise QuantizationUnavailableError("int8 inference needs openvino: pip install openvino") from exc
    return ov.Core().read_model(path)
