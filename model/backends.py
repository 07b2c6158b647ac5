"""The inference backends behind :class:`model.predictor.Predictor`: the precision and backend lists, the choice of
a backend (:func:`resolve_backend`), and the network compiled by OpenVINO with its start-up precision timing
(:class:`OpenVINONetwork`). The one serving module that imports ``openvino`` (``model.quantization`` makes the int8
network with it at training time).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from typing import Any

import torch

from model.choices import BACKENDS, INT8, PRECISIONS, SERVED_PRECISIONS  # declared without torch for the parsers
from model.errors import BackendUnavailableError  # declared without torch for the commands

logger = logging.getLogger(__name__)


class OpenVINONetwork:
    """The network compiled by OpenVINO for the CPU; called on a float32 batch, it returns the torch module's
    outputs as a tuple (for :class:`model.open_set.OpenSetNetwork`: logits, features, ImageNet logits).

    Converted with ``openvino.convert_model`` from the loaded PyTorch module (no file is written), compiled with
    the ``LATENCY`` performance hint (one stream: one request uses every thread) and ``INFERENCE_PRECISION_HINT``
    bf16 or f32. Compiled models are thread-safe; each calling thread gets its own infer request.

    ``precision="auto"`` compiles f32 and, where OpenVINO reports native bf16 (``OPTIMIZATION_CAPABILITIES``),
    bf16 too, times each on one image and keeps the faster (:attr:`timings` holds the medians): the choice comes
    from a measurement on the machine at hand, not from its flags. Measured on this project's 2-core AVX-512 BF16
    machine, default model at 192 px: 1.9 ms f32, 1.05 ms bf16 per image (``make bench``).

    Args:
        model: the PyTorch network in eval mode, ``(N, 3, S, S)`` float32 to a tensor or a tuple of them.
        image_size: ``S``, for the example input of the conversion and of the timing.
        precision: ``"fp32"``, ``"bf16"``, ``"auto"``, or ``"int8"`` (then ``int8_model`` is what runs, its
            remaining float operations in bf16 where the CPU has it natively, else f32).
        num_threads: CPU threads for OpenVINO's inference (``INFERENCE_NUM_THREADS``); None for its default (all).
        int8_model: the quantized ``openvino.Model`` of ``model`` (:mod:`model.quantization`), for ``"int8"``.

    Attributes:
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``, the one compiled.
        timings: ``{precision: median ms per image}`` of the ``"auto"`` measurement (empty otherwise).

    Raises:
        BackendUnavailableError: OpenVINO is not installed, or conversion failed.
    """

    #: Timed single-image inferences per candidate precision of ``"auto"`` (after 3 untimed ones).
    AUTO_REPEATS = 15

    def __init__(
        self,
        model: torch.nn.Module,
        image_size: int,
        precision: str,
        num_threads: int | None,
        int8_model: Any = None,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailableError(
                "the openvino backend needs the openvino package: pip install openvino (or use backend torch)"
            ) from exc
        example = torch.zeros(1, 3, image_size, image_size)
        try:
            core = ov.Core()
            native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if precision == INT8:
                converted = int8_model  # Predictor checks that there is one
            else:
                converted = ov.convert_model(model.float().eval(), example_input=example)
            candidates = [precision]
            if precision == "auto":
                candidates = ["fp32", "bf16"] if native_bf16 else ["fp32"]
            compiled = {}
            for name in candidates:
                bf16 = name == "bf16" or (name == "int8" and native_bf16)
                config: dict[str, Any] = {
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                }
                if num_threads:
                    config["INFERENCE_NUM_THREADS"] = num_threads
                compiled[name] = core.compile_model(converted, "CPU", config)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise BackendUnavailableError(f"OpenVINO could not compile the model: {exc}") from exc
        self.timings: dict[str, float] = {}
        if len(compiled) > 1:
            # interleaved, so that whatever else runs meanwhile (another worker starting) slows every candidate
            image = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).numpy()
            requests = {name: candidate.create_infer_request() for name, candidate in compiled.items()}
            times: dict[str, list[float]] = {name: [] for name in compiled}
            for repeat in range(3 + self.AUTO_REPEATS):
                for name, request in requests.items():
                    start = time.perf_counter()
                    request.infer({0: image})
                    if repeat >= 3:
                        times[name].append((time.perf_counter() - start) * 1000)
            self.timings = {name: statistics.median(values) for name, values in times.items()}
            logger.info("OpenVINO precision auto: %s ms per image", {k: round(v, 2) for k, v in self.timings.items()})
        self.precision = min(compiled, key=lambda name: self.timings.get(name, 0.0))
        self.compiled = compiled[self.precision]
        self._local = threading.local()

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The module's outputs, float32 tensors, for a float32 batch ``(N, 3, S, S)``."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer({0: batch.contiguous().numpy()})
        return tuple(torch.from_numpy(result[i].copy()) for i in range(len(self.compiled.outputs)))


def resolve_backend(name: str, device: str | torch.device = "cpu") -> str:
    """``"auto"`` becomes ``"openvino"`` on the CPU when the package is installed, else ``"torch"``.

    OpenVINO runs the default model 2.5x faster than PyTorch's bf16 autocast for one photo and 1.9x for a batch of
    16 on this project's 2-core AVX-512 BF16 machine, and 4.9x for one photo on a 2-core Xeon with AMX
    (``make bench``). GPUs keep PyTorch. Other names are returned unchanged.
    """
    if name != "auto":
        return name
    if torch.device(device).type != "cpu":
        return "torch"
    try:
        import openvino  # noqa: F401
    except ImportError:
        logger.warning("openvino is not installed (pip install openvino): predicting with torch, which is slower")
        return "torch"
    return "openvino"


def check_backend(backend: str, precision: str, device: str | torch.device, int8_model: Any) -> str:
    """The backend that ``backend`` resolves to (:func:`resolve_backend`) after checking that it
    and ``precision`` are known names and fit ``device`` and ``int8_model`` (see :class:`model.predictor.Predictor`).

    Raises:
        ValueError: an unknown name, OpenVINO off the CPU, or int8 without OpenVINO or its quantized network.
    """
    if precision not in ("auto", *SERVED_PRECISIONS):
        raise ValueError(f"precision must be 'auto', {INT8!r} or one of {PRECISIONS}, got {precision!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "openvino" and torch.device(device).type != "cpu":
        raise ValueError("the openvino backend runs on the CPU: use device cpu or backend torch")
    resolved = resolve_backend(backend, device)
    if precision == INT8 and (resolved != "openvino" or int8_model is None):
        raise ValueError(
            "precision int8 needs the openvino backend (backend auto or openvino, on the CPU) and the quantized "
            "network (quantize.py)"
        )
    return resolved
