"""The review pages' forms (Flask-WTF). Every form of the review pages carries a CSRF token, signed with the app's
secret key and bound to the session; :class:`flask_wtf.csrf.CSRFProtect` (see :mod:`app.corrections.extension`)
refuses a POST without it, or with another session's, with a 400. The action buttons (accept, reject, delete, log
out) are plain forms with the token alone (``csrf_token()`` in ``templates/review.html``)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

#: Longest reviewer name and password the login form takes, in characters.
MAX_NAME_LENGTH = 100
MAX_PASSWORD_LENGTH = 1000


class LoginForm(FlaskForm):
    """A reviewer's login: name and password (``fish-admin add-reviewer NAME`` creates the account)."""

    name = StringField("Name", validators=[DataRequired(), Length(max=MAX_NAME_LENGTH)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=MAX_PASSWORD_LENGTH)])
    submit = SubmitField("Log in")
