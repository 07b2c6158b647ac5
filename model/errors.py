"""The model's errors that a user's request or command can cause, light on purpose (no imports).

:class:`ImageError`, an image that cannot be classified, with the HTTP status a server answers it with: raised by the
decoding path (:mod:`model.decoding`, :mod:`model.jpeg_check`, :mod:`model.decoder_pool`) in the web app and in
``predict.py`` alike; decoder processes raise it and pickle it back. The others say why a checkpoint cannot be
served; the commands (:mod:`model.cli`) name them without importing torch, and the modules that raise them
(:mod:`model.checkpoint`, :mod:`model.backends`, :mod:`model.quantization`) import them from here.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A file is missing, is not one of our checkpoints, or has an unsupported format version."""


class BackendUnavailableError(RuntimeError):
    """The requested inference backend is not installed or cannot compile the model."""


class QuantizationUnavailableError(RuntimeError):
    """NNCF or OpenVINO is not installed, or the int8 network of a checkpoint has not been made."""


class ImageError(Exception):
    """An image that cannot be classified.

    Args:
        message: explanation for the user (no internals, no file names).
        status: HTTP status code to answer with: 400 (corrupt), 413 (too costly: pixels, scans, segments, decode
            time or memory) or 415 (not a supported format); 503 when the server is too busy to decode it.
        index: position (from 0) of the offending file among the request's ``image`` fields, when the request
            has several.
    """

    def __init__(self, message: str, status: int = 400, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.index = index

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, int, int | None]]:
        """Pickled with its status and index (a decoder process raises it and the server answers it)."""
        return type(self), (self.message, self.status, self.index)
