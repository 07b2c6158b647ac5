"""The names the commands' options and the API choose from, in a module that imports nothing.

``train.py``, ``evaluate.py``, ``quantize.py`` and ``predict.py`` build their parsers from these before importing
torch, so ``--help`` and a mistyped option answer at once; the modules that implement each name
(:mod:`model.heads`, :mod:`model.transforms`, :mod:`model.backends`) import them from here.
"""

from __future__ import annotations

#: ``--head`` choices: the classifier put on the backbone's pooled features (:mod:`model.heads`).
HEADS: tuple[str, ...] = ("linear", "mlp", "cosine", "normalized")
#: Names accepted by :func:`model.transforms.train_transform`'s ``augment`` (and ``train.py --augment``).
AUGMENT_PRESETS: tuple[str, ...] = ("none", "basic", "strong", "morphology", "photo", "scene")
#: Float precisions of both backends (torch autocast, OpenVINO's inference precision).
PRECISIONS = ("fp32", "bf16")
#: int8 runs on OpenVINO only, from a network quantized beforehand (``quantize.py``, :mod:`model.quantization`).
INT8 = "int8"
#: Every precision a Predictor may run in (``"auto"`` resolves to one of them): the ``--precision`` choices and the
#: API document's enum.
SERVED_PRECISIONS = (*PRECISIONS, INT8)
#: Inference engines behind the same Predictor API: OpenVINO (CPU), eager PyTorch, or ``"auto"`` (see
#: :func:`model.backends.resolve_backend`).
BACKENDS = ("auto", "openvino", "torch")
