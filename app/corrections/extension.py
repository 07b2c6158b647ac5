"""The users' corrections in an app (Flask's ``init_app`` pattern): the store, the secret key, the reviewers' login,
CSRF protection and the two blueprints.

:func:`init_app` opens one :class:`app.corrections.store.CorrectionStore` per app, kept in
``app.extensions["corrections"]`` (never a module global) and reached with :func:`get_store`; it is closed when the
app is garbage-collected or the process exits. In gunicorn (``preload_app = False``) every worker opens its own, so
no database connection crosses a fork.

The secret key that signs the reviewers' sessions and the CSRF tokens is ``SECRET_KEY`` when set (the same on every
server), else one generated once into ``<instance>/secret_key`` (mode 0600): the first worker to start writes it
atomically (a hard link of a complete temporary file, which fails if another worker got there first), so every
worker of a server reads the same key.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import weakref
from pathlib import Path

from flask import Flask, current_app
from flask_wtf.csrf import CSRFProtect

from app.corrections.store import CorrectionStore

logger = logging.getLogger(__name__)

#: Key of the :class:`CorrectionStore` in ``app.extensions``.
EXTENSION_KEY = "corrections"
#: Key of the app's :class:`flask_wtf.csrf.CSRFProtect` in ``app.extensions`` (Flask-WTF's own name).
CSRF_KEY = "csrf"
#: File of the generated secret key, in the instance folder.
SECRET_KEY_FILE = "secret_key"
#: Shortest secret key read back from the instance folder, in characters (``secrets.token_hex(32)`` gives 64).
MIN_SECRET_KEY_LENGTH = 32


def init_app(app: Flask) -> None:
    """Wire the corrections into ``app``: the instance folder, the secret key and session cookie settings, the store,
    the reviewers' login (:func:`app.corrections.auth.init_app`), CSRF protection and the blueprints
    (:data:`app.corrections.routes.api_bp`, :data:`app.corrections.routes.review_bp`).

    CSRF is checked on every POST, PUT, PATCH and DELETE of the app except the JSON API blueprints and the upload
    page: the corrections API takes anonymous submissions and token-authenticated reviews (a session cookie never
    authorises it), and the upload page changes nothing on the server.

    Raises:
        app.corrections.store.StoreError: the database cannot be opened or migrated.
        OSError: the instance folder or the secret key file cannot be written or read.
        ValueError: the secret key file holds too short a key.
    """
    instance = Path(app.config.get("INSTANCE_PATH") or app.instance_path)
    app.config["INSTANCE_PATH"] = str(instance)  # so the store's default SQLite file is in the same folder
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = instance_secret_key(instance)
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    from app import api, web  # the blueprints import get_store from here: imported once this module is loaded
    from app.corrections import auth, learning, routes

    store = CorrectionStore.from_config(app.config)
    weakref.finalize(app, store.close)
    app.extensions[EXTENSION_KEY] = store
    auth.init_app(app)
    learning.init_app(app)
    # No Referer check on HTTPS (Flask-WTF's default): the pages send Referrer-Policy: no-referrer, so browsers send
    # none; the signed, session-bound token and the SameSite=Lax session cookie do the work.
    app.config.setdefault("WTF_CSRF_SSL_STRICT", False)
    csrf = CSRFProtect(app)
    csrf.exempt(routes.api_bp)
    csrf.exempt(api.bp)  # the classifier's API: anonymous, changes nothing
    csrf.exempt(web.bp)  # the upload page: anonymous, changes nothing
    app.register_blueprint(routes.api_bp)
    app.register_blueprint(routes.review_bp)


def get_store() -> CorrectionStore:
    """The current app's corrections store (call inside a request or app context)."""
    return current_app.extensions[EXTENSION_KEY]


def instance_secret_key(instance: Path) -> str:
    """The secret key kept in ``instance/secret_key``, generated on the first call (``secrets.token_hex(32)``).

    Several processes may call this at once: each writes a complete candidate to a temporary file (mode 0600) and
    hard-links it to the final name, which succeeds for exactly one of them; all then read the file that won.

    Raises:
        OSError: the folder or file cannot be created or read.
        ValueError: the file exists but holds fewer than :data:`MIN_SECRET_KEY_LENGTH` characters.
    """
    instance.mkdir(parents=True, exist_ok=True)
    path = instance / SECRET_KEY_FILE
    if not path.exists():
        descriptor, temporary = tempfile.mkstemp(prefix=".secret_key.", dir=instance)  # mkstemp: mode 0600
        try:
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, path)
            logger.info("generated a secret key in %s", path)
        except FileExistsError:
            pass  # another worker wrote it first: read theirs
        finally:
            os.unlink(temporary)
    key = path.read_text(encoding="ascii").strip()
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ValueError(f"{path} holds no usable secret key: delete it to generate a new one, or set FISH_SECRET_KEY")
    return key
