"""The corrections memory in the app: rebuilt after each review, picked up by every worker (owned by the lead; being
written). ``review_changed(app)`` is what the review routes call after an accept, a reject or a delete."""

from __future__ import annotations

from flask import Flask


def review_changed(app: Flask) -> None:
    """Rebuild the memory of accepted corrections after a review action (being written: does nothing yet)."""
