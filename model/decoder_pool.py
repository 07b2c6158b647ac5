"""Decoding in separate processes that can be stopped: a hard bound on what any one image may cost.

:class:`DecoderPool` keeps a few pre-started decoder processes (a `pebble <https://pypi.org/project/Pebble/>`_
``ProcessPool``, forked from a ``forkserver`` that imports Pillow alone, never torch) and runs
:func:`model.decoding.decode_image` in them. The reduced image comes back, never the full-size one. Each decode
is bounded three ways, whatever the format and whatever the decoder does:

- a wall-clock deadline (``timeout_s``): past it the process is killed at once (SIGTERM, no Python handler to wait
  for) and replaced, and the caller gets a 413 :class:`model.errors.ImageError`;
- a memory limit (``RLIMIT_AS``, ``memory_mb`` above what the process holds when it starts): an allocation past
  it fails inside the decoder (413);
- a CPU-time limit (``RLIMIT_CPU``, the deadline plus a second): the kernel ends a decoder that outlives the
  server process that should have stopped it.

Its users: the web app (:mod:`app.inference` makes one pool per app, one process per decode slot) and
``predict.py`` (one pool per run). The same checks, limits and errors serve both.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import resource
import signal
import threading
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pebble import ProcessExpired, ProcessPool
from PIL import Image

from model.decoding import decode_image
from model.errors import ImageError

logger = logging.getLogger(__name__)

#: Default deadline of one decode, in seconds of wall-clock time. Measured on a 2-core Xeon with AMX: a 12-megapixel
#: phone JPEG takes 0.07 s, the slowest legitimate files under the default limits 0.4 to 2.1 s (a 50-megapixel
#: progressive JPEG 1.4 s, a 50-megapixel RGBA PNG 2.1 s); the review's bombs took 20 to 63 s.
DEFAULT_DECODE_TIMEOUT_S = 3.0
#: Default address-space limit of a decoder process, in MiB: the worst legitimate decode under the default
#: 50-megapixel limit holds about 600 MB (the file, an RGBA and an RGB copy), on top of about 60 MB of Python and
#: Pillow.
DEFAULT_DECODE_MEMORY_MB = 1024


def _start_decoder(memory_bytes: int) -> None:
    """Initializer of each decoder process: its memory limit, and SIGTERM's default action (pebble installs a
    Python handler, which would run only once the C decoder returned), so that a stop is immediate.

    The limit is ``memory_bytes`` on top of the address space the process starts with. A forkserver child also
    imports the parent's ``__main__`` script (multiprocessing's rule): light for gunicorn and pytest, but a script
    that imports torch starts its decoders with gigabytes of address space already reserved.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    limit = _address_space_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _address_space_bytes() -> int:
    """This process's virtual memory size (``VmSize`` of /proc/self/status), in bytes; 0 where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _decode_in_process(source: bytes | str, cpu_seconds: int, options: dict[str, Any]) -> Image.Image:
    """Run in a decoder process: read ``source`` (bytes, or a file path for ``predict.py``) and decode it under a
    CPU-time limit of ``cpu_seconds`` more than this process has used.

    Raises:
        ImageError: from :func:`model.decoding.decode_image`; 413 when the decode runs out of memory; 400 when
            the file cannot be read.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_limit = math.ceil(usage.ru_utime + usage.ru_stime) + cpu_seconds
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, hard))
    try:
        if isinstance(source, str):
            try:
                source = Path(source).read_bytes()
            except OSError as exc:
                raise ImageError(f"unreadable file: {exc.strerror or exc}", 400) from exc
        return decode_image(source, **options)
    except MemoryError as exc:
        raise ImageError("image is too large: decoding it needs more memory than a decode may use", 413) from exc


def _unavailable(exc: BaseException) -> ImageError:
    logger.error("the decoder pool cannot decode: %s", exc)
    return ImageError("the server cannot decode images right now: try again in a moment", 503)


def _ready() -> int:
    """A no-op task: the decoder process that runs it has started."""
    return os.getpid()


class DecoderPool:
    """``processes`` pre-started decoder processes, each decode bounded in time, CPU and memory.

    Args:
        processes: decoder processes (at least 1): the decodes that can run at once. Extra decodes wait in a queue
            (their deadline starts when a process takes them), so callers bound their own concurrency.
        timeout_s: the deadline of one decode, in seconds (> 0).
        memory_mb: the address space each decoder process may add to what it starts with, in MiB (>= 64).

    Raises:
        ValueError: an argument is out of range.
    """

    def __init__(
        self,
        processes: int,
        *,
        timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
        memory_mb: int = DEFAULT_DECODE_MEMORY_MB,
    ) -> None:
        if processes < 1 or not timeout_s > 0 or memory_mb < 64:
            raise ValueError(
                f"a decoder pool needs processes >= 1, timeout_s > 0 and memory_mb >= 64, got {processes},"
                f" {timeout_s} and {memory_mb}"
            )
        self.processes = processes
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self._cpu_seconds = math.ceil(self.timeout_s) + 1
        self._close_lock = threading.Lock()
        self._closed = False
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["model.decoder_pool"])
        self._pool = ProcessPool(
            max_workers=processes,
            initializer=_start_decoder,
            initargs=(memory_mb * 2**20,),
            context=context,
        )
        for future in [self._pool.schedule(_ready) for _ in range(processes)]:
            future.result()  # start-up costs here, not in the first requests

    def submit(self, source: bytes | str | os.PathLike[str], **options: Any) -> Future[Image.Image]:
        """Start decoding ``source`` (the file's bytes, or its path, read inside the decoder) with
        :func:`model.decoding.decode_image`'s keyword ``options``; :meth:`result` waits for it.

        Raises:
            ImageError: 503 when the pool is closed or broken.
        """
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        try:
            return self._pool.schedule(
                _decode_in_process, args=(source, self._cpu_seconds, options), timeout=self.timeout_s
            )
        except RuntimeError as exc:  # pebble: "The Pool is not active"
            raise _unavailable(exc) from exc

    def result(self, future: Future[Image.Image]) -> Image.Image:
        """The image of a :meth:`submit`, or its refusal as an :class:`ImageError`.

        Raises:
            ImageError: the file's own (see :func:`model.decoding.decode_image`), or 400 for any other error raised
                in the decoder (the boundary fails closed); 413 when the decode passed its deadline or its decoder
                process died (its CPU or memory limit); 503 when the pool broke or was closed under it.
        """
        try:
            return future.result()
        except ImageError:
            raise
        except FutureTimeoutError as exc:
            logger.warning("stopped a decode at its deadline of %g s", self.timeout_s)
            raise ImageError(
                f"this image takes too long to decode (the limit is {self.timeout_s:g} s): send a smaller photo,"
                " or save it again as an ordinary JPEG or PNG",
                413,
            ) from exc
        except ProcessExpired as exc:
            logger.warning("a decoder process died (exit code %s) and was replaced", exc.exitcode)
            raise ImageError(
                "this image needs more time or memory to decode than one image may use: send a smaller photo",
                413,
            ) from exc
        except (BrokenProcessPool, CancelledError) as exc:  # the pool broke or was stopped: no file's fault
            raise _unavailable(exc) from exc
        except Exception as exc:  # the isolation boundary fails closed: a decoder's unforeseen error is a refusal
            logger.error("a decoder raised %r; refused the image", exc)
            raise ImageError("corrupt image file: it cannot be decoded", 400) from exc

    def decode(self, source: bytes | str | os.PathLike[str], **options: Any) -> Image.Image:
        """Decode ``source`` in a decoder process and wait: :meth:`submit` then :meth:`result`."""
        return self.result(self.submit(source, **options))

    def close(self) -> None:
        """Stop the decoder processes (running decodes are killed); later calls get 503. Safe to call again and
        from several threads at once (pebble's own stop is not: two joins race to stop the same worker); a second
        call returns once the first has stopped the processes."""
        with self._close_lock:
            if not self._closed:
                self._pool.stop()
                self._pool.join()
                self._closed = True

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
