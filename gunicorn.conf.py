"""Gunicorn settings for serving ``wsgi:app``: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Environment: ``BIND`` (host:port), ``WEB_CONCURRENCY`` (worker processes), ``FISH_TORCH_THREADS`` (torch
threads per worker; computed here when unset), plus the app's ``FISH_*`` settings (see ``app.create_app``).
This file runs in the master process: it must not import torch or the app.
"""

import logging
import os

_cpus = os.cpu_count() or 1

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

# Share the cores between workers so their torch thread pools do not oversubscribe the CPU.
os.environ.setdefault("FISH_TORCH_THREADS", str(max(1, _cpus // workers)))


def post_fork(server: object, worker: object) -> None:
    """In each worker, before the app loads: send the app's and model's log records to stderr."""
    logging.basicConfig(
        level=loglevel.upper(),
        format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        datefmt="[%Y-%m-%d %H:%M:%S %z]",
    )
