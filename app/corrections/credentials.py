"""How reviewers' credentials are stored: only hashes, never a password or a token.

A password is hashed with werkzeug's ``generate_password_hash`` (:data:`PASSWORD_HASH_METHOD`: scrypt, salted); an
API token (``secrets.token_urlsafe(32)``, random enough that no slow hash is needed) by its SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

from werkzeug.security import check_password_hash, generate_password_hash

#: werkzeug's password hash method: scrypt at werkzeug's default strength (N = 2**15, r = 8, p = 1; about 80 ms of
#: CPU a hash or a check on this project's 2-core machines). A stored hash names its own method and parameters, so
#: a check follows whatever a hash was written with.
PASSWORD_HASH_METHOD = "scrypt"


def new_token() -> tuple[str, str]:
    """A new API token and its hash, as stored: ``(token, token_hash(token))``."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    """The SHA-256 (64 hex characters) of an API token, as stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(stored: str, token: str) -> bool:
    """Whether ``token`` hashes to ``stored``, compared in constant time."""
    return hmac.compare_digest(stored, token_hash(token))


def hash_password(password: str) -> str:
    """The salted hash of ``password`` with :data:`PASSWORD_HASH_METHOD` (werkzeug's format, e.g. ``scrypt:...``)."""
    return generate_password_hash(password, method=PASSWORD_HASH_METHOD)


def password_matches(stored: str | None, password: object) -> bool:
    """Whether ``password`` is the one ``stored`` was hashed from; False for a missing hash (a token-only
    reviewer, an unknown name) or a password that is not a string, after the same hashing work as a real check (no
    telling names apart by timing)."""
    if stored is None or not isinstance(password, str):
        check_password_hash(_dummy_password_hash(), password if isinstance(password, str) else "")
        return False
    return check_password_hash(stored, password)


@functools.cache
def _dummy_password_hash() -> str:
    """A hash no password matches (of a random string nobody sees)."""
    return hash_password(secrets.token_urlsafe(16))
