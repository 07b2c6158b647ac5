"""The users' corrections in a real browser (issue 19): Chromium driven by Playwright against real gunicorn serving
the default model, with a small synthetic photo.

Covers the "Right?" question under an answer (static/corrections.js): No with another species and consent (the
photo kept without EXIF), Yes without consent (no photo; the model's own answer, and a canned "species" answer, since
the default model calls a synthetic photo no fish), a name the server refuses (its message on the page, nothing
stored; on a phone, where the choices must fit); the review pages (templates/login.html, templates/review.html): the
redirect to the login page, a wrong password, the pending corrections with their photos and labels, accept, reject
and delete with their messages, logging out; and the review API and kept photos refused to the browser without a
token or a login. Each flow checks what the user sees and then what the corrections database holds (a
:class:`CorrectionStore` on the server's SQLite file). Every page must log no console error (CSP violations
included), except the 4xx answers a test provokes.

Needs the ``playwright`` package (requirements-dev.txt) and Debian's Chromium (``make browser``; set
``FISH_CHROMIUM`` to use another binary); never ``playwright install``. Skipped with the reason when the browser
or the default model is missing.
"""

from __future__ import annotations

import io
import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.corrections.engine import SQLITE_FILE
from app.corrections.store import CorrectionNotFound, CorrectionStore
from tests.chromium import DESKTOP, HTTP_4XX, PHONE, Console, skip_without_browser
from tests.helpers import ROOT, gunicorn_server, photo

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = ROOT / "weights" / "fish4knowledge_lite2.pt"
PASSWORD = "correct horse battery staple"
THANKS = "Thanks — a reviewer will check it."

skip_without_browser()
if not MODEL.is_file():
    pytest.skip(f"the default model {MODEL} is missing", allow_module_level=True)


@dataclass(frozen=True)
class Server:
    """Real gunicorn and its corrections database: ``base`` URL, and ``store`` on the same SQLite file."""

    base: str
    store: CorrectionStore


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Real gunicorn (one worker) serving the default model, with a rate limit the tests never reach."""
    log_dir = tmp_path_factory.mktemp("gunicorn")
    database = f"sqlite:///{log_dir / 'instance' / SQLITE_FILE}"  # in gunicorn_server's instance folder
    # the app created and migrated the database before answering, so the store opens it as it is
    with (
        gunicorn_server(MODEL, log_dir, FISH_CORRECTIONS_PER_MINUTE="1000") as base,
        CorrectionStore(database, upgrade=False) as store,
    ):
        yield Server(base, store)


@pytest.fixture
def page(browser: Any, console: Console) -> Iterator[Any]:
    """A watched page in a new browser context (its own cookies), on a desktop screen."""
    context = browser.new_context(viewport=DESKTOP)
    yield console.watch(context.new_page())
    context.close()


@pytest.fixture
def phone(browser: Any, console: Console) -> Iterator[Any]:
    """A watched page in a new browser context, on a 390 x 844 phone."""
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    yield console.watch(context.new_page())
    context.close()


def exif_with_gps() -> bytes:
    """EXIF naming a camera and a GPS position: what a kept photo must lose."""
    exif = Image.Exif()
    exif[0x010F] = "FishCam"  # Make
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPSInfo
    return exif.tobytes()


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic JPEG photo (160 x 120) carrying EXIF with a GPS position."""
    path = tmp_path_factory.mktemp("photos") / "reef.jpg"
    path.write_bytes(photo((160, 120), exif=exif_with_gps()))
    assert Image.open(path).getexif()  # the original does carry it
    return path


def identify(
    page: Any, server: Server, picture: Path, verdict: str | None = None, crop_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Open the upload page, send ``picture`` (its crop box first moved with the keys ``crop_keys``) and wait for
    the "Right?" question under the answer; returns the API's prediction that the page shows: the model's, or with
    ``verdict`` in place of its own (its top class then the label, as the API gives it), for the verdicts the default
    model never gives a synthetic photo."""
    if verdict is not None:  # (the page's multipart body, a blob, cannot be sent on from a route: asked here)
        real = post_photo(f"{server.base}/api/predict", picture.read_bytes())
        canned = {**real, "verdict": verdict, "confident": verdict == "species", "label": real["top_k"][0]["label"]}
        page.route("**/api/predict", lambda route: route.fulfill(json=canned))
    page.goto(server.base + "/")
    page.set_input_files("#image", str(picture))
    for key in crop_keys:
        page.locator(".crop-box").press(key)
    with page.expect_response(lambda r: r.url.endswith("/api/predict")) as response:
        page.get_by_role("button", name="Identify").click()
    assert response.value.status == 200
    page.locator(".result [data-testid=correction]").wait_for()
    return response.value.json()


def model_answer(prediction: dict[str, Any]) -> str:
    """The model's answer as a correction's label: its class, or the verdict that names none."""
    verdict = prediction["verdict"]
    return verdict if verdict in ("unknown_species", "not_a_fish") else prediction["label"]


def score_text(score: dict[str, Any]) -> str:
    """How the "Right?" choices name one of the model's species."""
    name = score["common_name"] or score["display_name"] or score["label"]
    scientific = score["scientific_name"]
    return f"{name} ({scientific})" if scientific and scientific != name else name


def choose_another_species(page: Any, name: str) -> None:
    """Click No, choose "another species" and type ``name`` (not sent yet)."""
    page.get_by_role("button", name="No", exact=True).click()
    page.locator("input[name=correction-label][value=__other__]").check()
    page.locator("#correction-other").fill(name)


def send(page: Any) -> Any:
    """Click Send; returns the corrections API's response."""
    with page.expect_response(lambda r: r.url.endswith("/api/corrections")) as response:
        page.get_by_role("button", name="Send").click()
    return response.value


def post_photo(url: str, image: bytes, **form: str) -> dict[str, Any]:
    """POST ``image`` and the ``form`` fields to ``url`` as a script would (multipart); returns the JSON answer."""
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
    fields = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in form.items()]
    body = (head + "Content-Type: image/jpeg\r\n\r\n").encode() + image + b"\r\n"
    body += "".join(fields).encode() + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Accept": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def post_correction(base: str, image: bytes, **form: str) -> int:
    """POST a correction as a script would; returns its id."""
    return post_photo(f"{base}/api/corrections", image, **form)["id"]


# --- the "Right?" question on the upload page ---------------------------------------------------------------------


def test_no_then_another_species_with_consent_keeps_the_photo_without_exif(
    server: Server, page: Any, picture: Path
) -> None:
    """With a crop drawn: the crop is recorded, and the whole photo kept."""
    before = server.store.count()
    prediction = identify(page, server, picture, crop_keys=("Shift+ArrowLeft", "Shift+ArrowUp") * 5)
    crop = [float(v) for v in page.locator(".crop-box").get_attribute("data-crop").split(",")]
    assert crop == pytest.approx([0, 0, 0.9, 0.9])  # five steps of 2 % narrower and shorter
    ask = page.locator(".result [data-testid=correction]")
    assert "Right?" in ask.locator(".right-question").inner_text()
    assert ask.get_by_role("button", name="Yes", exact=True).is_visible()
    assert ask.get_by_role("button", name="No", exact=True).is_visible()
    consent = ask.get_by_role("checkbox", name=re.compile("Keep my photo"))
    assert consent.is_visible() and not consent.is_checked()  # off by default
    assert ask.locator("#correction-form").is_hidden()

    ask.get_by_role("button", name="No", exact=True).click()
    assert ask.locator("#correction-form").is_visible()
    assert page.evaluate("document.activeElement.name") == "correction-label"  # the keyboard is at the choices
    assert ask.get_by_role("button", name="No", exact=True).get_attribute("aria-expanded") == "true"
    choices = ask.locator("label.choice")
    named = prediction["top_k"][1:] if prediction["verdict"] == "species" else prediction["top_k"]
    values = ask.locator("input[name=correction-label]").evaluate_all("radios => radios.map((r) => r.value)")
    assert values == [s["label"] for s in named] + ["__other__", "unknown_species", "not_a_fish"]
    texts = [t.strip() for t in choices.all_inner_texts()]
    assert texts[: len(named)] == [score_text(s) for s in named]  # the model's other species
    assert texts[len(named) :] == ["another species:", "a fish, but none of these species", "not a fish"]

    choose_another_species(page, "Amphiprion perideraion")
    consent.check()
    response = send(page)
    assert response.status == 201
    status = ask.locator("#correction-status")
    assert status.inner_text() == THANKS and "error" not in (status.get_attribute("class") or "")
    assert ask.locator("#correction-form").is_hidden()
    correction = int(ask.get_attribute("data-correction-id"))
    assert correction == response.json()["id"]

    assert server.store.count() == before + 1
    view = server.store.get(correction)
    assert (view.status, view.label_kind, view.label) == ("pending", "new_species", "Amphiprion perideraion")
    assert view.predicted_label == model_answer(prediction)
    assert [float(v) for v in view.crop.split(",")] == pytest.approx(crop)  # what the features are of
    assert view.photo_sha256 is not None
    kept = Image.open(io.BytesIO(server.store.photo(view.photo_sha256)))
    assert kept.format == "JPEG" and kept.size == (160, 120)  # the whole photo, for the reviewer
    assert not kept.getexif() and "exif" not in kept.info  # no camera, no position


@pytest.mark.parametrize("verdict", [None, "species"], ids=["as-answered", "species"])
def test_yes_without_consent_stores_the_model_answer_and_no_photo(
    server: Server, page: Any, picture: Path, verdict: str | None
) -> None:
    before = server.store.count()
    prediction = identify(page, server, picture, verdict)
    assert prediction["verdict"] == (verdict or prediction["verdict"])
    ask = page.locator(".result [data-testid=correction]")
    ask.get_by_role("button", name="No", exact=True).click()  # the choices name the model's other species only
    values = ask.locator("input[name=correction-label]").evaluate_all("radios => radios.map((r) => r.value)")
    offered = prediction["top_k"][1:] if prediction["verdict"] == "species" else prediction["top_k"]
    assert values[: len(offered)] == [s["label"] for s in offered] and len(values) == len(offered) + 3
    with page.expect_response(lambda r: r.url.endswith("/api/corrections")) as response:
        ask.get_by_role("button", name="Yes", exact=True).click()
    assert response.value.status == 201
    assert ask.locator("#correction-status").inner_text() == THANKS
    assert ask.get_by_role("button", name="Yes", exact=True).is_disabled()  # sent once

    assert server.store.count() == before + 1
    view = server.store.get(int(ask.get_attribute("data-correction-id")))
    answer = model_answer(prediction)
    assert (view.status, view.label, view.predicted_label) == ("pending", answer, answer)
    assert view.label_kind == (answer if answer in ("unknown_species", "not_a_fish") else "species")
    assert view.photo_sha256 is None


def test_a_refused_name_shows_the_server_message_and_stores_nothing(
    server: Server, phone: Any, picture: Path, console: Console
) -> None:
    """On a phone: the choices fit its width, and the server's refusal is shown where the user can try again."""
    console.allow(HTTP_4XX)  # Chromium logs the API's 400
    page = phone
    before = server.store.count()
    identify(page, server, picture)
    ask = page.locator(".result [data-testid=correction]")
    status = ask.locator("#correction-status")
    ask.get_by_role("button", name="No", exact=True).click()
    widest = ask.evaluate(
        "(block) => Math.max(...[block, ...block.querySelectorAll('*')].map((e) => e.getBoundingClientRect().right))"
    )
    assert widest <= PHONE["width"]  # no choice, field or button past the screen's edge
    assert ask.locator("#correction-other").bounding_box()["width"] >= 150  # still wide enough to type in
    beside = ask.locator("label.choice").evaluate_all(
        """(labels) => labels.map((label) => {
            const words = document.createRange();
            words.selectNodeContents([...label.childNodes].find((node) => node.nodeType === Node.TEXT_NODE));
            const radio = label.querySelector("input[type=radio]").getBoundingClientRect();
            return words.getClientRects()[0].left > radio.right;
        })"""
    )
    assert beside == [True] * len(beside)  # each choice's words start beside its radio button, not under it
    page.get_by_role("button", name="Send").click()  # nothing chosen: said on the page, nothing sent
    assert status.inner_text() == "Choose what it is first." and "error" in status.get_attribute("class")

    choose_another_species(page, "Nemo 42")
    with page.expect_response(lambda r: r.url.endswith("/api/corrections")) as sent:
        page.locator("#correction-other").press("Enter")  # Enter in the name's field sends, as Send does
    response = sent.value
    assert response.status == 400
    message = response.json()["error"]
    assert "is not understood" in message
    assert status.inner_text() == f"Sorry: {message}" and "error" in status.get_attribute("class")
    assert ask.locator("#correction-form").is_visible()  # the user may try again
    assert ask.get_by_role("button", name="Send").is_enabled()
    assert ask.get_attribute("data-correction-id") is None
    assert server.store.count() == before
    assert any(HTTP_4XX.search(e) for e in console.errors)


# --- the review pages -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reviewer(server: Server) -> str:
    """A reviewer's name (password :data:`PASSWORD`)."""
    server.store.add_reviewer("alice", password=PASSWORD)
    return "alice"


def log_in(page: Any, name: str, password: str) -> None:
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_a_reviewer_logs_in_and_accepts_rejects_and_deletes(
    server: Server, page: Any, picture: Path, reviewer: str
) -> None:
    image = picture.read_bytes()
    species = post_photo(f"{server.base}/api/predict", image)["top_k"][0]  # one of the model's species
    accept, reject, delete = (
        post_correction(server.base, image, label=label, predicted_label=predicted, consent="true")
        for label, predicted in (
            ("Pterois volitans", species["label"]),
            ("unknown_species", "not_a_fish"),
            ("not_a_fish", species["label"]),
        )
    )

    response = page.goto(server.base + "/review")
    assert response.ok and page.url.startswith(server.base + "/review/login")  # redirected, not shown
    assert page.locator(".flashes").inner_text() == "Log in to review the corrections."
    assert page.locator(".correction").count() == 0
    log_in(page, reviewer, "not the password")
    assert page.get_by_role("alert").inner_text() == "Sorry: Unknown name or wrong password."
    assert "/review/login" in page.url

    log_in(page, reviewer, PASSWORD)
    page.wait_for_url(server.base + "/review")
    assert page.get_by_role("heading", name="Review the corrections").is_visible()
    pending = server.store.count("pending")
    assert pending >= 3
    assert page.locator(".correction").count() == min(pending, 100)
    shown = (
        (accept, score_text(species), "Pterois volitans", "a species the model does not know"),
        (reject, "not a fish", "a fish, but none of the model's species", "a fish, but none of the model's species"),
    )
    for correction, predicted, proposed, kind in shown:
        card = page.locator(f".correction[data-id='{correction}']")
        facts = card.locator(".facts dd").all_inner_texts()
        assert facts[:3] == [predicted, proposed, kind]  # the model's answer, the user's label and its kind
        assert card.locator(".facts dd.proposed i[lang=la]").count() == (correction == accept)  # italic Latin
        image_element = card.locator("img.correction-photo")
        image_element.scroll_into_view_if_needed()
        page.wait_for_function("(img) => img.complete", arg=image_element.element_handle())
        assert image_element.evaluate("img => img.naturalWidth") == 160  # the photo actually loaded

    for correction, button, done in ((accept, "Accept", "accepted"), (reject, "Reject", "rejected")):
        page.get_by_role("button", name=f"{button} correction {correction}").click()
        page.wait_for_url(server.base + "/review")
        assert page.locator(".flashes").inner_text() == f"Correction {correction} {done}."
        assert page.locator(f".correction[data-id='{correction}']").count() == 0  # no longer pending
        view = server.store.get(correction)
        assert (view.status, view.reviewed_by) == (done, reviewer)
    page.get_by_role("button", name=f"Delete correction {delete}").click()
    page.wait_for_url(server.base + "/review")
    assert page.locator(".flashes").inner_text() == f"Correction {delete} deleted."
    assert page.locator(f".correction[data-id='{delete}']").count() == 0
    with pytest.raises(CorrectionNotFound):
        server.store.get(delete)
    assert server.store.count("pending") == pending - 3

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(re.escape(server.base) + r"/review/login"))
    assert page.locator(".flashes").inner_text() == "You are logged out."
    page.goto(server.base + "/review")
    assert page.url.startswith(server.base + "/review/login")  # the session is gone


def test_the_review_api_refuses_the_browser_without_a_token(
    server: Server, phone: Any, picture: Path, reviewer: str
) -> None:
    """On a phone, which then shows the review page: each correction's facts stay inside its card."""
    page = phone
    correction = post_correction(server.base, picture.read_bytes(), label="not_a_fish", consent="true")
    sha256 = server.store.get(correction).photo_sha256
    page.goto(server.base + "/")
    # the kept photo, by either address: the API's wants a token, the review page's a logged-in reviewer
    assert page.request.get(f"{server.base}/api/corrections/{correction}/photo").status == 401
    hidden = page.request.get(f"{server.base}/review/photo/{sha256}", max_redirects=0)
    assert hidden.status == 302 and "/review/login" in hidden.headers["location"]
    for action in ("accept", "reject"):
        answer = page.request.post(f"{server.base}/api/corrections/{correction}/{action}")
        assert answer.status == 401 and answer.headers["www-authenticate"].startswith("Bearer")
        assert "error" in answer.json()
    assert page.request.delete(f"{server.base}/api/corrections/{correction}").status == 401
    assert page.request.get(f"{server.base}/api/corrections").status == 401

    # a logged-in reviewer's session does not authorise the API either
    page.goto(server.base + "/review/login")
    log_in(page, reviewer, PASSWORD)
    page.wait_for_url(server.base + "/review")
    assert page.request.post(f"{server.base}/api/corrections/{correction}/accept").status == 401
    assert server.store.get(correction).status == "pending"

    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    card = page.locator(f".correction[data-id='{correction}']")
    inside = card.evaluate(
        "(card) => Math.max(...[...card.querySelectorAll('*')].map((e) => e.getBoundingClientRect().right))"
        " <= card.getBoundingClientRect().right"
    )
    assert inside  # the model's long id wraps instead of running past the card's edge


def test_each_answer_of_several_photos_asks_right_on_its_own(
    server: Server, page: Any, picture: Path, tmp_path: Path
) -> None:
    """Several photos: every row of the table has its own "Right?" (its own ids and choices); the one answered is
    sent with its own photo and answer."""
    second = tmp_path / "second.jpg"
    second.write_bytes(photo((200, 150)))
    before = server.store.count()
    page.goto(server.base + "/")
    page.set_input_files("#image", [str(picture), str(second)])
    with page.expect_response(lambda r: r.url.endswith("/api/predict")) as response:
        page.get_by_role("button", name="Identify").click()
    predictions = response.value.json()["predictions"]
    asks = page.locator(".results-table tbody tr [data-testid=correction]")
    asks.nth(1).wait_for()
    assert asks.count() == 2
    ids = page.locator("[data-testid=correction] [id]").evaluate_all("nodes => nodes.map((n) => n.id)")
    assert len(ids) == len(set(ids))  # no id twice on the page
    row = asks.nth(1)
    row.get_by_role("button", name="No", exact=True).click()
    groups = page.locator("[data-testid=correction] input[type=radio]").evaluate_all(
        "radios => [...new Set(radios.map((r) => r.name))]"
    )
    assert len(groups) == 2  # choosing in one row never unchecks the other's choice
    with page.expect_response(lambda r: r.url.endswith("/api/corrections")) as sent:
        row.get_by_role("button", name="Yes", exact=True).click()
    assert sent.value.status == 201 and server.store.count() == before + 1
    view = server.store.get(sent.value.json()["id"])
    assert view.predicted_label == model_answer(predictions[1]) and view.crop is None
    assert asks.nth(0).get_by_role("button", name="Yes", exact=True).is_enabled()  # the other row untouched
