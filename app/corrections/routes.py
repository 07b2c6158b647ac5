"""The corrections' web side: the JSON API (:data:`api_bp`) and the reviewers' pages (:data:`review_bp`).

API (errors are ``{"error": message}`` JSON):

* ``POST /api/corrections`` (anyone): multipart ``image`` (exactly one), ``label``, optional ``crop``,
  ``predicted_label``, ``consent`` -> 201 ``{"id", "status": "pending"}`` with ``Location``; 400 for bad input, 413
  or 415 for a bad image (as ``/api/predict``), 429 past ``CORRECTIONS_PER_MINUTE`` for the client (``Retry-After``),
  507 at ``CORRECTIONS_MAX_PENDING`` pending corrections or past ``CORRECTIONS_MAX_PHOTO_MB`` of kept photos.
* Reviewers only, with ``Authorization: Bearer <token>`` (401 without; see :mod:`app.corrections.auth`):
  ``GET /api/corrections`` (the pending ones, oldest first), ``GET /api/corrections/<id>``, ``GET
  /api/corrections/<id>/photo``, ``POST /api/corrections/<id>/accept`` and ``/reject`` (200 with the correction),
  ``DELETE /api/corrections/<id>`` (204); 404 for an unknown id. A reviewed correction may be reviewed again: the
  last review counts.

Pages: ``/review/login``, ``POST /review/logout``, ``/review`` (the pending corrections with their photos, each with
accept, reject and delete buttons: CSRF-protected POST forms that redirect back with a message) and
``/review/photo/<sha256>``; all but the login need a logged-in reviewer (else a redirect to the login page).

After every successful accept, reject or delete, :func:`app.corrections.learning.review_changed` rebuilds what the
model learns from the reviews.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import re
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf.csrf import CSRFError
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import NotFound, RequestEntityTooLarge, ServiceUnavailable
from werkzeug.wrappers import Response

from app import api
from app.corrections import learning
from app.corrections.auth import Reviewer, api_reviewer_required, current_api_reviewer
from app.corrections.extension import get_store
from app.corrections.forms import LoginForm
from app.corrections.labels import MAX_LIST, FieldError, optional_text, parse_label
from app.corrections.photos import reencode_photo
from app.corrections.store import (
    CorrectionNotFound,
    CorrectionStore,
    CorrectionView,
    InvalidReview,
    PhotoNotFound,
    StoreError,
)
from app.inference import get_predictor
from app.uploads import CROP_FIELD, IMAGE_FIELD, check_uploads, decode_upload
from model.crop import Crop
from model.errors import ImageError

logger = logging.getLogger(__name__)

api_bp = Blueprint("corrections_api", __name__)
review_bp = Blueprint("review", __name__, url_prefix="/review")

#: Values of the ``consent`` field that keep the photo; anything else (or none) keeps no photo.
CONSENT_VALUES = frozenset({"true", "on", "1", "yes"})
#: Window of the per-client rate limit (``CORRECTIONS_PER_MINUTE``).
RATE_WINDOW = timedelta(minutes=1)
#: A kept photo's name: the SHA-256 of its JPEG, in hex.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: The review actions a reviewer may take on a pending correction, besides deleting it.
REVIEW_ACTIONS = ("accept", "reject")


class SubmissionRefused(Exception):
    """A submission refused by a cap: 429 (rate) or 507 (pending count, photo storage).

    Args:
        message: what happened and what to do, for people.
        status: 429 or 507.
        retry_after: seconds for the ``Retry-After`` header, or None.
    """

    def __init__(self, message: str, status: int, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


def _model_id() -> str:
    """The served model's id (:func:`app.corrections.learning.model_id`), recorded with each correction."""
    return learning.get_learning().model_id


def client_address() -> str:
    """The client's IP address: the peer's, or, when the peer is this host (nginx in front, ``deploy/nginx.conf``),
    the last address of ``X-Forwarded-For``, which that proxy appends. A forwarded address from any other peer is
    ignored, so a client cannot choose its own rate-limit bucket."""
    address = request.remote_addr or ""
    forwarded = request.headers.get("X-Forwarded-For", "")
    try:
        local = ipaddress.ip_address(address).is_loopback
    except ValueError:
        local = False
    if local and forwarded.strip():
        return forwarded.split(",")[-1].strip() or address
    return address


def client_key() -> str:
    """The key of the client's submissions in the database: the SHA-256 (hex) of its address (the address itself is
    not stored)."""
    return hashlib.sha256(client_address().encode()).hexdigest()


def correction_json(view: CorrectionView) -> dict[str, Any]:
    """A correction as the API answers it: the store's fields, times in ISO 8601."""
    body = dataclasses.asdict(view)
    for key, value in body.items():
        if isinstance(value, datetime):
            body[key] = value.isoformat()
        elif isinstance(value, tuple):
            body[key] = list(value)
    return body


def check_caps(store: CorrectionStore, client: str) -> None:
    """Refuse a submission past the client's rate or the pending cap (before any decoding).

    Raises:
        SubmissionRefused: 429 when ``client`` submitted ``CORRECTIONS_PER_MINUTE`` corrections in the last minute
            (counted in the database, so every worker and server agree); 507 when ``CORRECTIONS_MAX_PENDING``
            corrections wait for review.
    """
    config = current_app.config
    per_minute = config["CORRECTIONS_PER_MINUTE"]
    if store.submissions_since(client, datetime.now(timezone.utc) - RATE_WINDOW) >= per_minute:
        raise SubmissionRefused(
            f"too many corrections: at most {per_minute} a minute from one address; try again in a minute",
            429,
            retry_after=int(RATE_WINDOW.total_seconds()),
        )
    if store.count("pending") >= config["CORRECTIONS_MAX_PENDING"]:
        raise SubmissionRefused("too many corrections are waiting for review, try again later", 507)


def check_photo_room(store: CorrectionStore, size: int) -> None:
    """Refuse a photo of ``size`` bytes that would take the kept photos past ``CORRECTIONS_MAX_PHOTO_MB`` MiB.

    Raises:
        SubmissionRefused: 507, saying that the correction can be sent without the photo.
    """
    limit = float(current_app.config["CORRECTIONS_MAX_PHOTO_MB"]) * 2**20
    if store.photo_bytes_total() + size > limit:
        raise SubmissionRefused(
            "there is no room left for more photos: send the correction without keeping the photo, or try again later",
            507,
        )


def kept_photo(upload: FileStorage, crop: Crop | None, decoded: Image.Image) -> tuple[bytes, str, int, int]:
    """The photo kept with a user's consent: the whole upright photo (``decoded`` when it is not cropped, else the
    upload decoded again whole), at the resolution the model decodes it to, re-encoded as a JPEG without metadata
    (:func:`app.corrections.photos.reencode_photo`): ``(jpeg, sha256, width, height)``.

    Raises:
        ImageError: the whole photo cannot be decoded (see :func:`app.uploads.decode_upload`).
    """
    if crop is not None:
        upload.stream.seek(0)
        decoded = decode_upload(upload, None)
    return reencode_photo(decoded)


@api_bp.post("/api/corrections")
def submit() -> tuple[Response, int]:
    """Take a user's correction of the model's answer for one photo (see the module's docstring for the fields).

    Returns:
        201 ``{"id", "status": "pending"}`` with ``Location: /api/corrections/<id>``. Errors: 400 (no image, two
        images, an empty file, a bad label, crop or predicted label), 413, 415 (the image, as ``/api/predict``), 429
        (rate, with ``Retry-After``), 503 (busy decoding, or the database unavailable), 507 (caps).
    """
    values = request.form
    predictor = get_predictor()
    proposed = parse_label(values.get("label"), predictor.class_names, predictor.class_info)
    predicted = optional_text(values.get("predicted_label"), "predicted_label")
    consent = (values.get("consent") or "").strip().lower() in CONSENT_VALUES
    if len(request.files.getlist(IMAGE_FIELD)) > 1:
        raise ImageError(f"send exactly one photo in the field '{IMAGE_FIELD}' with a correction", 400)
    uploads = check_uploads(request.files, crops=values.getlist(CROP_FIELD))
    store, client = get_store(), client_key()
    check_caps(store, client)
    upload, crop = uploads.files[0], uploads.crops[0]
    image = decode_upload(upload, crop)
    features, scores = learning.features_and_scores(predictor, image)
    photo = kept_photo(upload, crop, image) if consent else None
    if photo is not None:
        check_photo_room(store, len(photo[0]))
    view = store.submit(
        label=proposed.label,
        label_kind=proposed.kind,
        features=features,
        model_id=_model_id(),
        client_key=client,
        predicted_label=predicted,
        crop=",".join(f"{v:.6g}" for v in crop) if crop is not None else None,
        photo=photo[0] if photo else None,
        photo_size=(photo[2], photo[3]) if photo else None,
        scores=scores,
    )
    kept = "kept" if photo else "not kept"
    logger.info("correction %d: %s (%s), photo %s", view.id, view.label_kind, view.label, kept)
    response = jsonify(id=view.id, status=view.status)
    response.headers["Location"] = url_for("corrections_api.get_correction", correction_id=view.id)
    return response, 201


@api_bp.get("/api/corrections")
@api_reviewer_required
def list_corrections() -> Response:
    """The pending corrections, oldest first: ``{"corrections": [...], "pending": total, "limit", "offset"}``.

    Query: ``status`` (``pending``, the only one listed), ``limit`` (1 to :data:`MAX_LIST`, default
    :data:`MAX_LIST`), ``offset`` (from 0). 400 for another value.
    """
    status = request.args.get("status", "pending")
    if status != "pending":
        return _json_error("status: only the pending corrections are listed (status=pending)", 400)
    limit = _int_arg("limit", MAX_LIST, 1, MAX_LIST)
    offset = _int_arg("offset", 0, 0, None)
    store = get_store()
    corrections = [correction_json(view) for view in store.pending(limit=limit, offset=offset)]
    return jsonify(corrections=corrections, pending=store.count("pending"), limit=limit, offset=offset)


def _int_arg(name: str, default: int, low: int, high: int | None) -> int:
    """The query parameter ``name`` as an int in ``[low, high]`` (no upper bound when ``high`` is None).

    Raises:
        FieldError: not an integer in range (answered 400).
    """
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    value = int(raw) if re.fullmatch(r"\d{1,9}", raw) else low - 1
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"from {low}"
        raise FieldError(f"{name} must be an integer {bounds}, got {raw[:20]!r}")
    return value


@api_bp.get("/api/corrections/<int:correction_id>")
@api_reviewer_required
def get_correction(correction_id: int) -> Response:
    """One correction (reviewers): the store's fields as JSON; 404 for an unknown id."""
    return jsonify(correction_json(get_store().get(correction_id)))


@api_bp.get("/api/corrections/<int:correction_id>/photo")
@api_reviewer_required
def correction_photo(correction_id: int) -> Response:
    """The photo kept with a correction (reviewers), ``image/jpeg``; 404 when none was kept."""
    view = get_store().get(correction_id)
    if view.photo_sha256 is None:
        return _json_error(f"correction {correction_id} has no photo: the user did not consent to keeping it", 404)
    return _jpeg(get_store().photo(view.photo_sha256))


@api_bp.post("/api/corrections/<int:correction_id>/<any(accept, reject):action>")
@api_reviewer_required
def review_correction(correction_id: int, action: str) -> Response:
    """Accept or reject a correction (reviewers; again if reviewed before: the last review counts): 200 with the
    reviewed correction; 404 for an unknown id, 409 when the store refuses the review (its reviewer is gone)."""
    view = get_store().review(correction_id, action, current_api_reviewer().id)
    _review_changed(action, correction_id, current_api_reviewer().name)
    return jsonify(correction_json(view))


@api_bp.delete("/api/corrections/<int:correction_id>")
@api_reviewer_required
def delete_correction(correction_id: int) -> tuple[str, int]:
    """Delete a correction and its photo (reviewers): 204; 404 for an unknown id."""
    get_store().delete(correction_id)
    _review_changed("delete", correction_id, current_api_reviewer().name)
    return "", 204


def _review_changed(action: str, correction_id: int, reviewer: str) -> None:
    """Log a review action and tell :mod:`app.corrections.learning` that the reviewed corrections changed."""
    logger.info("correction %d: %s by reviewer %s", correction_id, action, reviewer)
    learning.review_changed(current_app._get_current_object())  # type: ignore[attr-defined]


def _json_error(message: str, status: int) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    return response


def _jpeg(data: bytes) -> Response:
    """A kept photo as a response: JPEG, cached only by the reviewer's browser."""
    response = Response(data, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@api_bp.errorhandler(SubmissionRefused)
def refused(error: SubmissionRefused) -> Response:
    """429 or 507 ``{"error": message}``, with ``Retry-After`` for a 429."""
    response = _json_error(error.message, error.status)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response


@api_bp.errorhandler(FieldError)
def bad_field(error: FieldError) -> Response:
    """400 ``{"error": message}`` for a bad label, predicted label or query parameter."""
    return _json_error(str(error), 400)


@api_bp.errorhandler(CorrectionNotFound)
@api_bp.errorhandler(PhotoNotFound)
def not_found(error: StoreError) -> Response:
    """404 ``{"error": message}``: no such correction, or no such photo."""
    return _json_error(str(error) or "no such correction", 404)


@api_bp.errorhandler(InvalidReview)
def invalid_review(error: InvalidReview) -> Response:
    """409 ``{"error": message}``: the store refuses the review (e.g. its reviewer was deleted meanwhile)."""
    return _json_error(str(error), 409)


@api_bp.errorhandler(StoreError)
@api_bp.errorhandler(SQLAlchemyError)
def store_unavailable(error: Exception) -> Response:
    """503 ``{"error": message}`` when the database fails; the details go to the log only."""
    logger.error("corrections store error: %s", error)
    return _json_error("the corrections database is not available: try again later", 503)


api_bp.register_error_handler(ImageError, api.image_error)
api_bp.register_error_handler(RequestEntityTooLarge, api.too_large)


# --- the reviewers' pages ------------------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: ``target`` when it is a path of the review pages on this site, else
    ``/review``."""
    parts = urlsplit(target or "")
    if target and not parts.scheme and not parts.netloc and parts.path.startswith("/review") and "\\" not in target:
        return target
    return url_for("review.index")


@review_bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """The login form (name, password, CSRF token); a logged-in reviewer goes straight to the review page."""
    if current_user.is_authenticated:
        return redirect(url_for("review.index"))
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        reviewer = get_store().reviewer_by_password(form.name.data.strip(), form.password.data)
        if reviewer is not None:
            login_user(Reviewer(reviewer))
            logger.info("reviewer %s logged in", reviewer.name)
            return redirect(_safe_next(request.args.get("next")))
        logger.info("failed login as %r from %s", form.name.data[:100], client_address())
        error = "Unknown name or wrong password."
    return render_template("login.html", form=form, error=error), 200


@review_bp.post("/logout")
def logout() -> Response:
    """Log out (a CSRF-protected POST, so another site cannot log a reviewer out)."""
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("review.login"))


@review_bp.get("")
@login_required
def index() -> tuple[str, int]:
    """The pending corrections, oldest first (the first :data:`MAX_LIST`), each with its photo (or why there is
    none), the model's answer, the proposed label and its kind, the crop, and the accept, reject and delete
    forms."""
    store = get_store()
    return render_review(store.pending(limit=MAX_LIST), store.count("pending")), 200


def render_review(corrections: list[CorrectionView], pending: int, error: str | None = None) -> str:
    """The review page's HTML."""
    predictor = get_predictor()
    names = {name: predictor.score(name, 0.0) for name in predictor.class_names}
    memory = learning.memory_context(current_app._get_current_object())  # type: ignore[attr-defined]
    return render_template(
        "review.html", corrections=corrections, pending=pending, names=names, error=error, memory=memory
    )


@review_bp.post("/<int:correction_id>/<any(accept, reject, delete):action>")
@login_required
def review_action(correction_id: int, action: str) -> Response:
    """Accept, reject or delete a correction from the review page (CSRF-protected), then back to the page with a
    message saying what happened."""
    store = get_store()
    try:
        if action == "delete":
            store.delete(correction_id)
        else:
            store.review(correction_id, action, current_user.id)
    except CorrectionNotFound:
        flash(f"Correction {correction_id} no longer exists.", "error")
    except InvalidReview as exc:
        flash(f"Correction {correction_id} was not changed: {exc}", "error")
    else:
        _review_changed(action, correction_id, current_user.name)
        done = {"accept": "accepted", "reject": "rejected", "delete": "deleted"}[action]
        flash(f"Correction {correction_id} {done}.", "info")
    return redirect(url_for("review.index"))


@review_bp.get("/photo/<sha256>")
@login_required
def photo(sha256: str) -> Response:
    """A kept photo by its SHA-256 (the name the store gives it, never one a client chose), ``image/jpeg``; 404 for
    a malformed or unknown name."""
    if not SHA256_HEX.fullmatch(sha256):
        raise NotFound("no such photo")
    try:
        return _jpeg(get_store().photo(sha256))
    except PhotoNotFound:
        raise NotFound("no such photo") from None


@review_bp.after_request
def not_stored(response: Response) -> Response:
    """The review pages and photos are private: no cache (nor the browser's back/forward cache) keeps them after
    the reviewer logs out."""
    response.headers["Cache-Control"] = "no-store"
    return response


@review_bp.errorhandler(CSRFError)
def csrf_refused(error: CSRFError) -> tuple[str, int]:
    """400: the form's security token is missing, expired or from another session; the page again, saying so."""
    message = f"{error.description} Reload the page and try again."
    if current_user.is_authenticated:
        store = get_store()
        return render_review(store.pending(limit=MAX_LIST), store.count("pending"), error=message), 400
    return render_template("login.html", form=LoginForm(), error=message), 400


@review_bp.errorhandler(StoreError)
@review_bp.errorhandler(SQLAlchemyError)
def review_store_unavailable(error: Exception) -> Response:
    """503 when the database fails; the details go to the log only."""
    logger.error("corrections store error on the review pages: %s", error)
    return ServiceUnavailable("the corrections database is not available: try again later").get_response()
