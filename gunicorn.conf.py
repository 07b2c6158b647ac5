"""Gunicorn settings for serving ``wsgi:app``: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Environment: ``BIND`` (host:port), ``WEB_CONCURRENCY`` (worker processes), ``FISH_THREADS`` (inference threads
per worker; computed here when unset), plus the app's ``FISH_*`` settings (see ``app.create_app``).
This file runs in the master process: it must not import torch or the app.
"""

import logging
import os
import sys
import zipfile


def _usable_cpus() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's cpuset), at least 1: the rule of the
    app's own default (model.runtime.cpu_threads), repeated here since the master must not import the model."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_cpus = _usable_cpus()

# Address to listen on; put a reverse proxy (TLS, buffering of slow clients) in front for public use.
bind = os.environ.get("BIND", "127.0.0.1:8000")
# Worker processes: each loads its own copy of the model; 2 to 4, about one per two cores.
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, min(4, _cpus // 2))))
# Threads per worker (gthread): 8, so that concurrent requests can share one batch through the network
# (model/batching.py); GUNICORN_THREADS overrides.
threads = int(os.environ.get("GUNICORN_THREADS", 8))
# Seconds a worker may spend on one request before it is killed and restarted.
timeout = 60
# Load the app in each worker after the fork, never in the master, so torch is not initialised before forking.
preload_app = False
# No runtime-control socket (gunicorn >= 25 puts one at a fixed per-user path, so two servers would collide).
control_socket_disable = True
# Access log to stdout; error log (and the app's logs, see post_fork) to stderr.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")

# Inference threads per worker: every core this process may use, so that a lone request on an idle server gets all
# of them; under load each worker batches its requests (model/batching.py). On 2 cores with OpenVINO, 2 workers x 2
# threads gave 5 ms p50 for one client and 314 req/s for 16 (ApacheBench), against 6 ms and 307 req/s for 2 x 1 and
# 4 ms and 300 req/s for 1 x 2 (`make bench` compares them); 2 workers keep serving while one restarts.
os.environ.setdefault("FISH_THREADS", str(_cpus))


def post_fork(server: object, worker: object) -> None:
    """In each worker, before the app loads: send the app's and model's log records to stderr."""
    logging.basicConfig(
        level=loglevel.upper(),
        format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        datefmt="[%Y-%m-%d %H:%M:%S %z]",
    )


def checkpoint_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be a checkpoint, judged without torch (this file runs in the master): missing, a
    directory, empty, or not the zip archive that ``torch.save`` writes; None when it may be one."""
    if os.path.isdir(path):
        return "is a directory, not a checkpoint file"
    if not os.path.isfile(path):
        return "does not exist"
    if os.path.getsize(path) == 0:
        return "is an empty file (0 bytes)"
    if not zipfile.is_zipfile(path):
        return "is not a PyTorch checkpoint (torch.save writes a zip archive)"
    return None


def on_starting(server: object) -> None:
    """In the master, before any worker starts: refuse a ``FISH_MODEL_PATH`` that cannot be a checkpoint with one
    clear line, instead of one traceback per worker. (The default, the shipped model, is checked by the app.)"""
    path = os.environ.get("FISH_MODEL_PATH")
    if path and (problem := checkpoint_file_problem(path)):
        sys.exit(f"cannot serve FISH_MODEL_PATH={path}: it {problem}; point it at a release.pt written by train.py")
