"""Gunicorn settings for serving ``wsgi:app``: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Environment: ``BIND`` (host:port), ``WEB_CONCURRENCY`` (worker processes), ``GUNICORN_THREADS`` (request threads
per worker), ``LOG_LEVEL``, plus the app's ``FISH_*`` settings, declared in ``app/settings.py``: this file sets
``FISH_THREADS`` (inference threads per worker) when it is unset, and checks ``FISH_MODEL_PATH`` before any worker
starts.
This file runs in the master process: it must not import torch or the app, so it loads ``app/settings.py`` (which
imports the standard library only) by its path rather than through the ``app`` package.
"""

import importlib.util
import logging
import os
import sys
import zipfile
from pathlib import Path
from types import ModuleType

#: Name under which the master holds ``app/settings.py`` in ``sys.modules`` (not ``app.settings``: that would make
#: it look like a module of an ``app`` package that was never imported; the workers import ``app.settings`` anew).
SETTINGS_MODULE = "_fish_app_settings"


def _load_app_settings() -> ModuleType:
    """``app/settings.py``, loaded by its path as gunicorn loads this file: without running ``app/__init__.py``,
    which imports Flask, torch and the model.

    Raises:
        FileNotFoundError: this file is not beside the ``app`` package (``app/settings.py`` is missing).
    """
    path = Path(__file__).resolve().parent / "app" / "settings.py"
    spec = importlib.util.spec_from_file_location(SETTINGS_MODULE, path)
    assert spec is not None and spec.loader is not None  # always so for a path that ends in .py
    module = importlib.util.module_from_spec(spec)
    sys.modules[SETTINGS_MODULE] = module  # dataclasses look a class's module up in sys.modules while building it
    spec.loader.exec_module(module)
    return module


_app_settings = _load_app_settings()


def _usable_cpus() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's cpuset), at least 1: the rule of the
    app's own default (model.runtime.cpu_threads), repeated here since the master must not import the model."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_cpus = _usable_cpus()

# BIND, WEB_CONCURRENCY, GUNICORN_THREADS and LOG_LEVEL are gunicorn's settings, not the app's: read here only, so they
# stay out of app/settings.py (whose declaration covers the FISH_* variables that the app reads).

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
os.environ.setdefault(_app_settings.SETTINGS["THREADS"].env_name, str(_cpus))


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
    clear line, instead of one traceback per worker. (The default, the shipped model, is checked by the app.) The
    path is the one the app will read: the variable's value through ``app/settings.py`` (JSON where possible)."""
    setting = _app_settings.SETTINGS["MODEL_PATH"]
    if not os.environ.get(setting.env_name):
        return
    path = str(_app_settings.from_environ(os.environ)["MODEL_PATH"])
    if problem := checkpoint_file_problem(path):
        sys.exit(f"cannot serve {setting.env_name}={path}: it {problem}; point it at a release.pt written by train.py")
