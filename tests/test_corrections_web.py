"""The corrections' web side (issue 19): ``POST /api/corrections`` (labels, consent, caps), the reviewers' API with
bearer tokens, the review pages (login, CSRF, accept / reject / delete), the secret key, and the labels' rules.

One app per module (:func:`app` of conftest, the tiny model); each test gets its own SQLite database in its
``tmp_path`` (:func:`store` swaps it into the app), so tests never see each other's corrections.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from app.corrections import learning
from app.corrections.extension import EXTENSION_KEY, instance_secret_key
from app.corrections.labels import FieldError, ProposedLabel, parse_label
from app.corrections.store import CorrectionStore
from model.checkpoint import ClassNames
from tests.helpers import (
    COLOURS,
    assert_json_error,
    assert_matches,
    csrf_token,
    encode,
    log_in_reviewer,
    photo,
    synthetic_image,
)

CLASS_NAMES = sorted(COLOURS)
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty corrections database at the newest schema, migrated once per module: each :func:`store` is a copy
    (a migration per test cost tens of milliseconds, most of it waiting for the disk)."""
    path = tmp_path_factory.mktemp("corrections") / "migrated.sqlite3"
    CorrectionStore.from_config({"DATABASE_URL": f"sqlite:///{path}"}).close()
    assert not path.with_name(f"{path.name}-wal").exists()  # closed: everything is in the file copied
    return path


@pytest.fixture
def store(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_database: Path
) -> Iterator[CorrectionStore]:
    """A fresh corrections database (SQLite in ``tmp_path``, a copy of :func:`migrated_database`, opened as the app
    opens it) in the module's app, for this test only."""
    database = tmp_path / "c.sqlite3"
    shutil.copyfile(migrated_database, database)
    fresh = CorrectionStore.from_config({"DATABASE_URL": f"sqlite:///{database}"})
    monkeypatch.setitem(app.extensions, EXTENSION_KEY, fresh)
    yield fresh
    fresh.close()


@pytest.fixture
def reviews(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The apps that ``learning.review_changed`` was called with, one per call."""
    calls: list[Any] = []
    monkeypatch.setattr(learning, "review_changed", calls.append)
    return calls


@pytest.fixture
def token(store: CorrectionStore) -> str:
    """The API token of a reviewer named alice (password :data:`PASSWORD`)."""
    return store.add_reviewer("alice", password=PASSWORD)


def submit(client: FlaskClient, image: bytes | None = None, address: str = "192.0.2.1", **form: Any) -> Any:
    """POST a correction (a clownfish JPEG and label ``clownfish`` unless given) from the client ``address``."""
    data: dict[str, Any] = {"label": "clownfish", **form}
    if image is not None:
        data["image"] = (io.BytesIO(image), "../../etc/passwd")
    return client.post(
        "/api/corrections", data=data, content_type="multipart/form-data", environ_base={"REMOTE_ADDR": address}
    )


def created(response: Any) -> int:
    """The id of a 201 answer, checked."""
    assert response.status_code == 201, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["status"] == "pending" and response.headers["Location"].endswith(f"/api/corrections/{body['id']}")
    return body["id"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def log_in(client: FlaskClient, name: str = "alice", password: str = PASSWORD) -> Any:
    return log_in_reviewer(client, name, password)


# --- submitting ------------------------------------------------------------------------------------------------------


def test_a_correction_is_stored_pending_without_its_photo_by_default(
    client: FlaskClient, store: CorrectionStore, jpeg_bytes: Callable[..., bytes]
) -> None:
    correction = created(submit(client, jpeg_bytes(), label="blue_tang", predicted_label="clownfish"))
    view = store.get(correction)
    assert (view.status, view.label, view.label_kind, view.predicted_label) == (
        "pending",
        "blue_tang",
        "species",
        "clownfish",
    )
    assert view.photo_sha256 is None and view.crop is None
    # the model the features are of: the checkpoint's name and the start of its SHA-256
    digest = hashlib.sha256(Path(client.application.config["MODEL_PATH"]).read_bytes()).hexdigest()
    assert view.model_id == f"tiny.pt:{digest[:16]}"
    assert store.count("pending") == 1 and store.photo_bytes_total() == 0
    assert store.submissions_since(hashlib.sha256(b"192.0.2.1").hexdigest(), view.created_at.replace(year=2000)) == 1


@pytest.mark.parametrize("consent", ["false", "off", "no", "", "maybe"])
def test_no_photo_is_kept_without_consent(client: FlaskClient, store: CorrectionStore, consent: str) -> None:
    view = store.get(created(submit(client, photo((64, 48)), consent=consent)))
    assert view.photo_sha256 is None and store.photo_bytes_total() == 0


def exif_with_gps() -> bytes:
    """EXIF with a camera, an orientation (rotate 90 degrees: the upright photo is portrait) and a GPS position."""
    exif = Image.Exif()
    exif[0x010F] = "FishCam"  # Make
    exif[0x0112] = 6  # Orientation: rotate 90 CW to view
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPSInfo
    return exif.tobytes()


@pytest.mark.parametrize("consent", ["true", "on", "1"])
def test_with_consent_the_photo_is_kept_upright_and_without_exif(
    client: FlaskClient, store: CorrectionStore, consent: str
) -> None:
    original = photo((96, 64), exif=exif_with_gps())
    assert b"FishCam" in original
    view = store.get(created(submit(client, original, consent=consent)))
    kept = store.photo(view.photo_sha256)
    assert hashlib.sha256(kept).hexdigest() == view.photo_sha256
    assert b"FishCam" not in kept and b"Exif" not in kept
    image = Image.open(io.BytesIO(kept))
    assert image.format == "JPEG" and not image.getexif() and image.size[1] > image.size[0]  # upright: portrait
    assert store.photo_bytes_total() == len(kept)


def test_with_a_crop_the_whole_photo_is_kept_and_the_crop_recorded(client: FlaskClient, store: CorrectionStore) -> None:
    view = store.get(created(submit(client, photo((96, 64)), consent="true", crop="0.25,0.25,0.5,0.5")))
    assert view.crop == "0.25,0.25,0.5,0.5"
    assert Image.open(io.BytesIO(store.photo(view.photo_sha256))).size == (96, 64)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("clownfish", ("clownfish", "species")),
        (" Green Chromis ", ("green_chromis", "species")),
        ("not_a_fish", ("not_a_fish", "not_a_fish")),
        ("Not a fish", ("not_a_fish", "not_a_fish")),
        ("unknown_species", ("unknown_species", "unknown_species")),
        ("Pterois volitans", ("Pterois volitans", "new_species")),
        ("pterois  VOLITANS", ("Pterois volitans", "new_species")),
        ("Chromis viridis viridis", ("Chromis viridis viridis", "new_species")),
        ("Amphiprion ocellaris-like", ("Amphiprion ocellaris-like", "new_species")),
    ],
)
def test_label_kinds(
    client: FlaskClient, store: CorrectionStore, jpeg_bytes: Callable[..., bytes], label: str, expected: tuple
) -> None:
    view = store.get(created(submit(client, jpeg_bytes(), label=label)))
    assert (view.label, view.label_kind) == expected


def test_scientific_names_of_the_model_species_are_its_classes() -> None:
    info = {"clownfish": ClassNames(scientific_name="Amphiprion clarkii")}
    assert parse_label("amphiprion CLARKII", CLASS_NAMES, info) == ProposedLabel("clownfish", "species")
    assert parse_label("Amphiprion ocellaris", CLASS_NAMES, info) == ProposedLabel(
        "Amphiprion ocellaris", "new_species"
    )


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ({"label": ""}, "label is required"),
        ({"label": "   "}, "label is required"),
        ({"label": None}, "label is required"),
        ({"label": "x" * 201}, "at most 200"),
        ({"label": "fish"}, "scientific name"),
        ({"label": "Pterois volitans!"}, "scientific name"),
        ({"label": "P. volitans"}, "scientific name"),
        ({"label": "Pterois volitans 3"}, "scientific name"),
        ({"label": "<script>alert(1)</script>"}, "scientific name"),
        ({"predicted_label": "y" * 201}, "predicted_label is too long"),
        ({"predicted_label": "clown\x00fish"}, "predicted_label must not contain control characters"),
        ({"crop": "0,0,2,2"}, "crop"),
        ({"crop": "0.5"}, "crop"),
    ],
)
def test_bad_fields_are_refused_with_a_message(
    client: FlaskClient, store: CorrectionStore, jpeg_bytes: Callable[..., bytes], form: dict[str, Any], words: str
) -> None:
    data = {key: value for key, value in {"label": "clownfish", **form}.items() if value is not None}
    data["image"] = (io.BytesIO(jpeg_bytes()), "a.jpg")
    response = client.post("/api/corrections", data=data, content_type="multipart/form-data")
    assert words in assert_json_error(response, 400)["error"]
    assert store.count() == 0


def test_images_other_than_one_are_refused(
    client: FlaskClient, store: CorrectionStore, jpeg_bytes: Callable[..., bytes]
) -> None:
    assert "no image" in assert_json_error(submit(client), 400)["error"]
    two = {"image": [(io.BytesIO(jpeg_bytes()), "a.jpg"), (io.BytesIO(jpeg_bytes()), "b.jpg")], "label": "clownfish"}
    response = client.post("/api/corrections", data=two, content_type="multipart/form-data")
    assert "exactly one" in assert_json_error(response, 400)["error"]
    assert "empty" in assert_json_error(submit(client, b""), 400)["error"]
    assert_json_error(submit(client, b"not an image at all"), 415)
    assert store.count() == 0


def test_the_rate_limit_is_per_client_and_says_when_to_retry(
    app: Flask, client: FlaskClient, store: CorrectionStore, jpeg_bytes: Callable[..., bytes], monkeypatch
) -> None:
    monkeypatch.setitem(app.config, "CORRECTIONS_PER_MINUTE", 2)
    for _ in range(2):
        created(submit(client, jpeg_bytes()))
    refused = submit(client, jpeg_bytes())
    assert "at most 2 a minute" in assert_json_error(refused, 429)["error"]
    assert refused.headers["Retry-After"] == "60"
    created(submit(client, jpeg_bytes(), address="192.0.2.2"))  # another client
    assert store.count("pending") == 3


def test_the_proxy_address_counts_only_from_a_local_peer(
    app: Flask, client: FlaskClient, store: CorrectionStore, jpeg_bytes: Callable[..., bytes], monkeypatch
) -> None:
    monkeypatch.setitem(app.config, "CORRECTIONS_PER_MINUTE", 1)
    proxied = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}  # nginx appends the address it saw: the last one
    for address in ("198.51.100.7", "198.51.100.8"):
        response = client.post(
            "/api/corrections",
            data={"image": (io.BytesIO(jpeg_bytes()), "a.jpg"), "label": "clownfish"},
            headers={"X-Forwarded-For": address},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        )
        created(response)
    response = client.post(
        "/api/corrections",
        data={"image": (io.BytesIO(jpeg_bytes()), "a.jpg"), "label": "clownfish"},
        headers=proxied,
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert_json_error(response, 429)  # 198.51.100.7 again
    created(submit(client, jpeg_bytes(), address="192.0.2.3"))
    spoofed = client.post(  # a remote peer cannot pick another bucket with the header
        "/api/corrections",
        data={"image": (io.BytesIO(jpeg_bytes()), "a.jpg"), "label": "clownfish"},
        headers={"X-Forwarded-For": "192.0.2.99"},
        environ_base={"REMOTE_ADDR": "192.0.2.3"},
    )
    assert_json_error(spoofed, 429)


def test_too_many_pending_corrections_get_a_507(
    app: Flask, client: FlaskClient, store: CorrectionStore, jpeg_bytes: Callable[..., bytes], monkeypatch
) -> None:
    monkeypatch.setitem(app.config, "CORRECTIONS_MAX_PENDING", 2)
    created(submit(client, jpeg_bytes(), address="192.0.2.1"))
    created(submit(client, jpeg_bytes(), address="192.0.2.2"))
    response = submit(client, jpeg_bytes(), address="192.0.2.3")
    assert assert_json_error(response, 507)["error"] == "too many corrections are waiting for review, try again later"
    assert store.count("pending") == 2


def test_no_room_for_photos_gets_a_507_and_the_correction_can_go_without(
    app: Flask, client: FlaskClient, store: CorrectionStore, monkeypatch
) -> None:
    monkeypatch.setitem(app.config, "CORRECTIONS_MAX_PHOTO_MB", 2**-20)  # 1 byte: less than any kept photo
    big = encode(synthetic_image(COLOURS["clownfish"], (200, 160)))
    assert "without keeping the photo" in assert_json_error(submit(client, big, consent="true"), 507)["error"]
    view = store.get(created(submit(client, big)))
    assert view.photo_sha256 is None


# --- the reviewers' API ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/corrections"),
        ("GET", "/api/corrections/1"),
        ("GET", "/api/corrections/1/photo"),
        ("POST", "/api/corrections/1/accept"),
        ("POST", "/api/corrections/1/reject"),
        ("DELETE", "/api/corrections/1"),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic YWxpY2U6cHc=", "Bearer "])
def test_review_calls_need_a_reviewer_token(
    client: FlaskClient, store: CorrectionStore, token: str, reviews: list, method: str, path: str, authorization
) -> None:
    created(submit(client, encode(synthetic_image(COLOURS["clownfish"]))))
    headers = {"Authorization": authorization} if authorization else {}
    response = client.open(path, method=method, headers=headers)
    assert_json_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert store.get(1).status == "pending" and reviews == []


def test_a_reviewer_session_does_not_authorise_the_api(
    client: FlaskClient, store: CorrectionStore, token: str, reviews: list, jpeg_bytes: Callable[..., bytes]
) -> None:
    correction = created(submit(client, jpeg_bytes()))
    assert log_in(client).status_code == 302
    assert_json_error(client.post(f"/api/corrections/{correction}/accept"), 401)
    assert store.get(correction).status == "pending" and reviews == []


def test_accept_reject_and_delete_through_the_api(
    app: Flask, client: FlaskClient, store: CorrectionStore, token: str, reviews: list, jpeg_bytes
) -> None:
    first, second, third = (created(submit(client, jpeg_bytes(), address=f"192.0.2.{i}")) for i in (1, 2, 3))
    listed = client.get("/api/corrections?status=pending", headers=bearer(token)).get_json()
    assert [c["id"] for c in listed["corrections"]] == [first, second, third] and listed["pending"] == 3

    accepted = client.post(f"/api/corrections/{first}/accept", headers=bearer(token))
    assert accepted.status_code == 200
    assert accepted.get_json()["status"] == "accepted" and accepted.get_json()["reviewed_by"] == "alice"
    rejected = client.post(f"/api/corrections/{second}/reject", headers=bearer(token))
    assert rejected.status_code == 200 and rejected.get_json()["status"] == "rejected"
    deleted = client.delete(f"/api/corrections/{third}", headers=bearer(token))
    assert deleted.status_code == 204 and deleted.get_data() == b""

    assert [store.get(first).status, store.get(second).status] == ["accepted", "rejected"]
    assert_json_error(client.get(f"/api/corrections/{third}", headers=bearer(token)), 404)
    assert reviews == [app, app, app]
    assert client.get("/api/corrections", headers=bearer(token)).get_json()["pending"] == 0


def test_review_api_errors(client: FlaskClient, store: CorrectionStore, token: str, reviews: list, jpeg_bytes) -> None:
    for method, path in (("POST", "/api/corrections/99/accept"), ("DELETE", "/api/corrections/99")):
        assert_json_error(client.open(path, method=method, headers=bearer(token)), 404)
    correction = created(submit(client, jpeg_bytes()))
    assert (
        "no photo"
        in assert_json_error(client.get(f"/api/corrections/{correction}/photo", headers=bearer(token)), 404)["error"]
    )
    assert_json_error(client.get("/api/corrections?status=accepted", headers=bearer(token)), 400)
    assert_json_error(client.get("/api/corrections?limit=0", headers=bearer(token)), 400)
    assert_json_error(client.get("/api/corrections?offset=-1", headers=bearer(token)), 400)
    assert client.post(f"/api/corrections/{correction}/accept", headers=bearer(token)).status_code == 200
    again = client.post(f"/api/corrections/{correction}/reject", headers=bearer(token))  # the last review counts
    assert again.status_code == 200 and again.get_json()["status"] == "rejected" and len(reviews) == 2


def test_a_reviewer_gets_a_correction_and_its_photo(client: FlaskClient, store: CorrectionStore, token: str) -> None:
    correction = created(submit(client, photo((64, 48)), consent="true", predicted_label="clownfish"))
    body = client.get(f"/api/corrections/{correction}", headers=bearer(token)).get_json()
    assert body["id"] == correction and body["label"] == "clownfish" and body["photo_sha256"]
    assert body["created_at"].startswith("20") and body["reviewed_by"] is None
    jpeg = client.get(f"/api/corrections/{correction}/photo", headers=bearer(token))
    assert jpeg.status_code == 200 and jpeg.mimetype == "image/jpeg"
    assert hashlib.sha256(jpeg.get_data()).hexdigest() == body["photo_sha256"]


# --- the review pages ------------------------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_login_page(client: FlaskClient, store: CorrectionStore) -> None:
    for path in ("/review", "/review/photo/" + "0" * 64):
        response = client.get(path)
        assert response.status_code == 302 and "/review/login" in response.headers["Location"]
    assert client.post("/review/1/accept").status_code == 400  # no session, so no CSRF token either


def test_login_refuses_a_wrong_password(client: FlaskClient, store: CorrectionStore, token: str) -> None:
    response = log_in(client, password="wrong")
    assert response.status_code == 200 and "Unknown name or wrong password" in response.get_data(as_text=True)
    assert client.get("/review").status_code == 302


def test_the_login_form_needs_its_csrf_token(client: FlaskClient, store: CorrectionStore, token: str) -> None:
    response = client.post("/review/login", data={"name": "alice", "password": PASSWORD})
    assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    assert client.get("/review").status_code == 302


def test_a_reviewer_reviews_on_the_page(
    app: Flask, client: FlaskClient, store: CorrectionStore, token: str, reviews: list, jpeg_bytes
) -> None:
    with_photo = created(submit(client, photo((64, 48)), consent="true", predicted_label="clownfish"))
    without = created(submit(client, jpeg_bytes(), label="Pterois volitans", address="192.0.2.9"))
    response = log_in(client)
    assert response.status_code == 302 and response.headers["Location"].endswith("/review")
    page = client.get("/review").get_data(as_text=True)
    sha = store.get(with_photo).photo_sha256
    assert f'src="/review/photo/{sha}"' in page and "Photo not kept (no consent)" in page
    assert "Pterois volitans" in page and "a species the model does not know" in page
    jpeg = client.get(f"/review/photo/{sha}")
    assert jpeg.status_code == 200 and jpeg.mimetype == "image/jpeg" and jpeg.get_data() == store.photo(sha)
    assert client.get("/review/photo/" + "f" * 64).status_code == 404
    assert client.get("/review/photo/..%2F..%2Fsecret_key").status_code == 404

    token_field = csrf_token(page)
    response = client.post(f"/review/{with_photo}/accept", data={"csrf_token": token_field}, follow_redirects=True)
    assert response.status_code == 200 and f"Correction {with_photo} accepted." in response.get_data(as_text=True)
    client.post(f"/review/{without}/delete", data={"csrf_token": token_field})
    assert store.get(with_photo).status == "accepted" and store.get(with_photo).reviewed_by == "alice"
    assert store.count() == 1 and reviews == [app, app]
    gone = client.post(f"/review/{without}/reject", data={"csrf_token": token_field}, follow_redirects=True)
    assert f"Correction {without} no longer exists." in gone.get_data(as_text=True) and len(reviews) == 2


def test_review_forms_without_the_csrf_token_are_refused(
    client: FlaskClient, store: CorrectionStore, token: str, reviews: list, jpeg_bytes
) -> None:
    correction = created(submit(client, jpeg_bytes()))
    log_in(client)
    for action in ("accept", "reject", "delete"):
        for data in ({}, {"csrf_token": "forged"}):
            response = client.post(f"/review/{correction}/{action}", data=data)
            assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    assert client.post("/review/logout").status_code == 400
    assert store.get(correction).status == "pending" and reviews == []
    assert client.get("/review").status_code == 200  # still logged in


def test_logout(client: FlaskClient, store: CorrectionStore, token: str) -> None:
    log_in(client)
    page = client.get("/review")
    assert page.headers["Cache-Control"] == "no-store"  # not kept by a cache or the back button after logout
    response = client.post("/review/logout", data={"csrf_token": csrf_token(page.get_data(as_text=True))})
    assert response.status_code == 302 and response.headers["Location"].endswith("/review/login")
    assert client.get("/review").status_code == 302


# --- the OpenAPI document ---------------------------------------------------------------------------------------------


def test_answers_match_the_openapi_document(
    client: FlaskClient, store: CorrectionStore, token: str, reviews: list, jpeg_bytes: Callable[..., bytes]
) -> None:
    document = client.get("/api/openapi.json").get_json()
    path = "/api/corrections"
    response = submit(client, jpeg_bytes(), crop="0.1,0.1,0.5,0.5")
    assert_matches(document, path, "post", 201, response.get_json())
    correction = response.get_json()["id"]
    assert_matches(document, path, "post", 400, submit(client, jpeg_bytes(), label="?").get_json())
    assert_matches(document, path, "get", 200, client.get(path, headers=bearer(token)).get_json())
    assert_matches(document, path, "get", 401, client.get(path).get_json())
    one = client.get(f"{path}/{correction}", headers=bearer(token)).get_json()
    assert_matches(document, path + "/{id}", "get", 200, one)
    accepted = client.post(f"{path}/{correction}/accept", headers=bearer(token)).get_json()
    assert_matches(document, path + "/{id}/accept", "post", 200, accepted)
    assert_matches(document, path + "/{id}", "get", 404, client.get(f"{path}/99", headers=bearer(token)).get_json())
    assert client.delete(f"{path}/{correction}", headers=bearer(token)).status_code == 204


# --- the secret key and the labels' rules ----------------------------------------------------------------------------


def test_the_secret_key_is_generated_once_private(tmp_path: Path) -> None:
    key = instance_secret_key(tmp_path / "instance")
    assert len(key) == 64 and instance_secret_key(tmp_path / "instance") == key
    path = tmp_path / "instance" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "instance").iterdir()] == ["secret_key"]  # no temporary file left
    path.write_text("short\n")
    with pytest.raises(ValueError, match="no usable secret key"):
        instance_secret_key(tmp_path / "instance")


def test_the_app_reads_its_secret_key_from_the_instance_folder(app: Flask) -> None:
    path = Path(app.config["INSTANCE_PATH"]) / "secret_key"
    assert app.config["SECRET_KEY"] == path.read_text().strip()


@pytest.mark.parametrize("label", ["", "a", "Pterois", "Pterois volitans sp. nov", "1 2", "Ptérois volitans"])
def test_parse_label_refuses(label: str) -> None:
    with pytest.raises(FieldError):
        parse_label(label, CLASS_NAMES, {})
