"""Who may review corrections: reviewers, in two ways that never mix.

* **The review pages** (``/review``): a session, through Flask-Login, after a login with name and password
  (:func:`init_app` sets up a :class:`flask_login.LoginManager` per app; its user loader reads the reviewer from the
  store at each request, so a deleted reviewer is logged out). An anonymous visitor is redirected to the login page.
* **The review API** (``/api/corrections...``): ``Authorization: Bearer <token>`` on every request, the token that
  ``fish-admin add-reviewer NAME`` printed (:func:`api_reviewer_required`). A missing or unknown token gets a 401 JSON
  answer with ``WWW-Authenticate: Bearer``.

A logged-in browser session does **not** authorise API calls: the API reads the ``Authorization`` header only, never
the session cookie. So another site cannot make a reviewer's browser accept or delete corrections through the API
(the API needs no CSRF token), and the pages' forms, which do use the session, carry CSRF tokens instead.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, g, jsonify, request
from flask_login import LoginManager, UserMixin
from werkzeug.wrappers import Response

from app.corrections.extension import get_store
from app.corrections.store import ReviewerView

logger = logging.getLogger(__name__)

#: Key of the app's :class:`flask_login.LoginManager` in ``app.extensions``.
LOGIN_MANAGER_KEY = "login_manager"
#: The ``WWW-Authenticate`` challenge of a 401 from the review API.
BEARER_CHALLENGE = 'Bearer realm="fish corrections"'

View = TypeVar("View", bound=Callable[..., Any])


class Reviewer(UserMixin):
    """A logged-in reviewer, as Flask-Login holds it (``current_user``).

    Args:
        view: the store's record of the reviewer.
    """

    def __init__(self, view: ReviewerView) -> None:
        self.id = view.id
        self.name = view.name

    def get_id(self) -> str:
        """The reviewer's id as Flask-Login keeps it in the session."""
        return str(self.id)


def init_app(app: Flask) -> None:
    """Give ``app`` its own :class:`flask_login.LoginManager`: sessions of reviewers, read back from the store, and
    the review pages' login view (``review.login``) for anonymous visitors."""
    manager = LoginManager()
    manager.login_view = "review.login"
    manager.login_message = "Log in to review the corrections."
    manager.login_message_category = "info"

    @manager.user_loader
    def load_reviewer(user_id: str) -> Reviewer | None:
        if not user_id.isdigit():
            return None
        view = get_store().reviewer(int(user_id))
        return Reviewer(view) if view is not None else None

    manager.init_app(app)
    app.extensions[LOGIN_MANAGER_KEY] = manager


def bearer_token() -> str | None:
    """The token of the request's ``Authorization: Bearer <token>`` header (scheme case-insensitive), or None."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def unauthorized(message: str) -> Response:
    """A 401 JSON answer ``{"error": message}`` with the ``WWW-Authenticate: Bearer`` challenge."""
    response = jsonify(error=message)
    response.status_code = 401
    response.headers["WWW-Authenticate"] = BEARER_CHALLENGE
    return response


def api_reviewer_required(view: View) -> View:
    """Decorate an API view that only reviewers may call: it runs with ``g.reviewer`` (a
    :class:`app.corrections.store.ReviewerView`) set from the request's bearer token.

    Answers 401 JSON with ``WWW-Authenticate: Bearer`` when the ``Authorization`` header is missing, is not a
    bearer token, or names no reviewer. The session cookie is never looked at.
    """

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = bearer_token()
        if token is None:
            return unauthorized("reviewers only: send 'Authorization: Bearer <token>' (fish-admin add-reviewer)")
        reviewer = get_store().reviewer_by_token(token)
        if reviewer is None:
            logger.info("refused an unknown reviewer token from %s", request.remote_addr)
            return unauthorized("unknown or revoked reviewer token")
        g.reviewer = reviewer
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def current_api_reviewer() -> ReviewerView:
    """The reviewer that :func:`api_reviewer_required` authenticated for this request."""
    return g.reviewer
