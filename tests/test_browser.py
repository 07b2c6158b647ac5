"""The upload page and the model page in a real browser: Chromium driven by Playwright, against real gunicorn
serving the default model, with real Fish4Knowledge photos.

Covers the file picker, drag and drop, paste, several photos with the CSV download, a non-image, how the script
words each verdict (from canned API answers), the page with JavaScript turned off, and the model page; every page
must log no console error (CSP violations included). Screenshots (desktop and a 390 x 844 phone) go to
``test-artifacts/screenshots/``.

Needs the ``playwright`` package (requirements-dev.txt) and Debian's Chromium (``make test`` installs it; set
``FISH_CHROMIUM`` to use another binary); never ``playwright install``. Skipped with the reason when the browser,
the default model or the photos are missing.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.web import verdict_headline
from model.results import VERDICTS, ClassScore, Prediction, csv_header
from model.taxonomy import FamilyScore
from tests.chromium import DESKTOP, HTTP_4XX, PHONE, Console, skip_without_browser
from tests.helpers import ROOT, SHARED_DATA, gunicorn_server

pytestmark = [pytest.mark.browser, pytest.mark.real_data]

logger = logging.getLogger(__name__)

MODEL = ROOT / "weights" / "fish4knowledge_lite2.pt"
PHOTOS = SHARED_DATA / "fish4knowledge"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"

skip_without_browser()
if not MODEL.is_file():
    pytest.skip(f"the default model {MODEL} is missing", allow_module_level=True)
if not PHOTOS.is_dir():
    pytest.skip(f"no Fish4Knowledge photos at {PHOTOS} (set FISH_SHARED_DATA)", allow_module_level=True)


def photo(species: str, index: int = 0) -> Path:
    """The ``index``-th photo (sorted by name) of a species folder."""
    paths = sorted((PHOTOS / species).glob("*.jpg"))
    if len(paths) <= index:
        pytest.skip(f"no photo {index} of {species} in {PHOTOS}")
    return paths[index]


def api_predict(base: str, path: Path, crop: str | None = None) -> dict[str, Any]:
    """What ``/api/predict`` says about one photo (to compare with what the page shows), or about its ``crop``."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + (f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="crop"\r\n\r\n{crop}' if crop else "").encode()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base}/api/predict",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def species_text(prediction: dict[str, Any], model: dict[str, Any]) -> str:
    """The headline the page shows for an API answer (``prediction``, answered by ``model``): the server's own
    words (``app.web.verdict_headline``), which ``headline()`` in app.js must repeat."""
    scores = [
        ClassScore(s["label"], s["confidence"], s["common_name"], s["scientific_name"]) for s in prediction["top_k"]
    ]
    family = FamilyScore(**prediction["family"]) if prediction.get("family") else None
    answer = Prediction(scores, prediction["threshold"], prediction["verdict"], family=family)
    return verdict_headline(answer, model.get("subject"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Real gunicorn (one worker) serving the default model; yields its base URL."""
    with gunicorn_server(MODEL, tmp_path_factory.mktemp("gunicorn")) as base:
        yield base


@pytest.fixture
def new_page(browser: Any, console: Console) -> Iterator[Any]:
    """Factory: ``new_page(viewport=..., javascript=True, **context_options)`` gives a watched page."""
    contexts = []

    def make(viewport: dict[str, int] = DESKTOP, javascript: bool = True, **options: Any) -> Any:
        context = browser.new_context(
            viewport=viewport, java_script_enabled=javascript, accept_downloads=True, **options
        )
        contexts.append(context)
        return console.watch(context.new_page())

    yield make
    for context in contexts:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as ``test-artifacts/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def phone(new_page: Any, **options: Any) -> Any:
    return new_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2, **options)


def test_upload_with_the_file_picker(server: str, new_page: Any) -> None:
    page = new_page()
    response = page.goto(server + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    picture = photo("amphiprion_clarkii")
    page.set_input_files("#image", str(picture))
    preview = page.locator("#preview img")
    assert preview.count() == 1 and preview.get_attribute("src").startswith("blob:")  # shown before sending
    assert picture.name in page.locator("#status").inner_text()
    screenshot(page, "desktop-preview")

    page.get_by_role("button", name="Identify").click()
    page.locator(".result .species").wait_for()
    expected = api_predict(server, picture)
    assert expected["verdict"] in ("species", "not_sure")  # a photo of one of its species, from its own data
    assert page.locator(".result").get_attribute("data-verdict") == expected["verdict"]
    assert page.locator(".result .species").inner_text() == species_text(expected, expected["model"])
    confidence = page.locator(".result .confidence strong").inner_text()
    assert re.fullmatch(r"\d{1,3}\.\d%", confidence)
    assert confidence == f"{expected['confidence'] * 100:.1f}%"
    assert float(page.locator(".result meter.confidence-bar").get_attribute("value")) == pytest.approx(
        expected["confidence"], abs=1e-4
    )
    assert page.locator(".result .top-k tbody tr").count() == 5
    assert page.locator(".result .top-k meter").count() == 5
    assert page.url == server + "/"  # no reload
    screenshot(page, "desktop-result")


def test_the_crop_box_is_drawn_with_the_mouse_and_the_keyboard_and_sent(server: str, new_page: Any) -> None:
    """One chosen photo shows a crop box: dragged by its corner and its middle with the mouse, moved and resized
    with the keys, reset by "Use the whole photo"; the box is sent as the API's crop field, and the page shows
    what the API answers for that crop."""
    page = new_page()
    page.goto(server + "/")
    picture = photo("amphiprion_clarkii", 3)
    page.set_input_files("#image", str(picture))
    box, frame = page.locator(".crop-box"), page.locator(".crop-frame img")
    page.wait_for_function("document.querySelector('.crop-frame img').naturalWidth > 0")  # drawn at its size
    assert page.locator("#crop-editor").is_visible() and box.get_attribute("data-crop") == ""  # the whole photo
    assert page.locator("#crop-reset").is_disabled()
    page.locator("#crop-reset").scroll_into_view_if_needed()  # the whole box in view: the mouse cannot scroll
    area, handle = frame.bounding_box(), page.locator(".crop-handle").bounding_box()
    # the resize handle, from the bottom-right corner to the middle: about the top-left quarter
    start = (handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    end = (area["x"] + area["width"] / 2, area["y"] + area["height"] / 2)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=5)
    page.mouse.up()
    x, y, w, h = (float(v) for v in box.get_attribute("data-crop").split(","))
    assert (x, y) == (0, 0)
    assert w == pytest.approx(1 + (end[0] - start[0]) / area["width"], abs=0.01)
    assert h == pytest.approx(1 + (end[1] - start[1]) / area["height"], abs=0.01)
    # drag the box by its middle a fifth of the photo right and down
    page.mouse.move(area["x"] + area["width"] / 5, area["y"] + area["height"] / 5)
    page.mouse.down()
    page.mouse.move(area["x"] + area["width"] * 2 / 5, area["y"] + area["height"] * 2 / 5, steps=5)
    page.mouse.up()
    x, y, _, _ = (float(v) for v in box.get_attribute("data-crop").split(","))
    assert x == pytest.approx(0.2, abs=0.01) and y == pytest.approx(0.2, abs=0.01)
    box.focus()
    page.keyboard.press("ArrowLeft")  # 2 % left
    page.keyboard.press("Shift+ArrowUp")  # 2 % shorter
    x2, y2, w2, h2 = (float(v) for v in box.get_attribute("data-crop").split(","))
    assert x2 == pytest.approx(x - 0.02, abs=1e-3) and y2 == pytest.approx(y, abs=1e-3)
    assert h2 == pytest.approx(h - 0.02, abs=0.03) and w2 == pytest.approx(w, abs=0.03)
    screenshot(page, "desktop-crop")
    sent = box.get_attribute("data-crop")

    with page.expect_response(lambda r: r.url.endswith("/api/predict")) as response:
        page.get_by_role("button", name="Identify").click()
    # the API echoes the crop it was sent (the request's multipart body, a blob, is not readable here)
    assert response.value.json()["crop"] == pytest.approx([float(v) for v in sent.split(",")])
    page.locator(".result .species").wait_for()
    expected = api_predict(server, picture, sent)
    assert expected["crop"] == pytest.approx([float(v) for v in sent.split(",")])
    assert page.locator(".result .species").inner_text() == species_text(expected, expected["model"])

    page.locator("#crop-reset").click()
    assert box.get_attribute("data-crop") == "" and page.locator("#crop-reset").is_disabled()
    page.set_input_files("#image", [str(picture), str(photo("amphiprion_clarkii", 4))])
    assert page.locator("#crop-editor").is_hidden()  # several photos are sent whole


def test_the_heat_map_is_shown_when_asked(server: str, new_page: Any) -> None:
    """The "Show where the model looked" checkbox adds the API's heat map beside the photo (one photo)."""
    page = new_page()
    page.goto(server + "/")
    page.set_input_files("#image", str(photo("amphiprion_clarkii", 2)))
    page.get_by_label("Show where the model looked").check()
    with page.expect_response(lambda r: r.url.endswith("/api/predict")) as response:
        page.get_by_role("button", name="Identify").click()
    answer = response.value.json()
    figure = page.locator(".result figure.explanation img")
    figure.wait_for()
    assert figure.get_attribute("src") == answer["explanation"] and answer["explanation"].startswith("data:image/png")
    assert page.locator(".result figure.explanation figcaption").inner_text().startswith("Where it looked for ")
    screenshot(page, "desktop-explanation")


def test_drag_and_drop_then_paste(server: str, new_page: Any) -> None:
    page = new_page()
    page.goto(server + "/")
    picture = photo("zebrasoma_scopas")
    transfer = page.evaluate_handle(
        """([name, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return transfer;
        }""",
        [picture.name, base64.b64encode(picture.read_bytes()).decode()],
    )
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    assert "dragover" in page.locator("#dropzone").get_attribute("class")
    page.dispatch_event("#dropzone", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    assert "dragover" not in page.locator("#dropzone").get_attribute("class")
    assert page.locator("#preview figcaption").all_inner_texts() == [picture.name]
    assert page.evaluate("document.getElementById('image').files.length") == 1  # the form has the file too
    page.get_by_role("button", name="Identify").click()
    page.locator(".result .species").wait_for()
    expected = api_predict(server, picture)
    assert page.locator(".result .species").inner_text() == species_text(expected, expected["model"])

    # Paste an image (Ctrl+V): it replaces the choice, under a generated name.
    page.evaluate(
        """(transfer) => document.dispatchEvent(
            new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }))""",
        transfer,
    )
    assert re.fullmatch(r"pasted-[\d-]+\.jpeg", page.locator("#preview figcaption").inner_text())


def test_keyboard_opens_the_picker(server: str, new_page: Any) -> None:
    page = new_page()
    choosers: list[Any] = []
    # Listening from the start turns on Playwright's file-chooser interception before any key is pressed (enabling
    # it inside expect_file_chooser races with the key press and loses about one time in three).
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    page.goto(server + "/")
    page.keyboard.press("Tab")  # skip link
    page.keyboard.press("Tab")  # site name
    for _ in range(4):
        if page.evaluate("document.activeElement.id") == "image":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "image"  # the drop zone's input takes focus
    assert page.locator("#dropzone").evaluate("el => getComputedStyle(el).outlineStyle") == "solid"  # focus ring
    for key in ("Space", "Enter"):
        with page.expect_file_chooser(timeout=5000) as chooser:
            page.keyboard.press(key)
        assert chooser.value.is_multiple(), key
        chooser.value.set_files([])  # closes the picker, choosing nothing


def test_several_photos_give_a_table_and_a_csv(server: str, new_page: Any, console: Console, tmp_path: Path) -> None:
    console.allow(HTTP_4XX)  # the batch is refused once for the text file, then sent again without it
    page = new_page()
    page.goto(server + "/")
    pictures = [photo("amphiprion_clarkii", 1), photo("chromis_chrysura"), photo("lutjanus_fulvus")]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    page.set_input_files("#image", [str(p) for p in pictures[:2]] + [str(notes), str(pictures[2])])
    assert page.locator("#preview figure").count() == 4
    page.get_by_role("button", name="Identify").click()
    page.locator(".results-table").wait_for()
    rows = page.locator(".results-table tbody tr")
    assert rows.count() == 4
    assert page.locator(".results-table .file-name").all_inner_texts() == [
        pictures[0].name,
        pictures[1].name,
        notes.name,
        pictures[2].name,
    ]
    assert "not a supported image" in rows.nth(2).locator(".row-error").inner_text()
    expected = [api_predict(server, p) for p in pictures]
    shown = [rows.nth(i).locator(".species").inner_text() for i in (0, 1, 3)]
    assert shown == [species_text(e, e["model"]) for e in expected]
    assert "Done: 3 photos identified, 1 refused." in page.locator("#status").inner_text()
    screenshot(page, "desktop-results-table")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download the results (CSV)").click()
    download = download_info.value
    assert download.suggested_filename == "fish-species.csv"
    table = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert [r["file_name"] for r in table] == [pictures[0].name, pictures[1].name, notes.name, pictures[2].name]
    assert table[2]["top_5_confidence"] == "" and "not a supported image" in table[2]["error"]  # padded as the server
    for row, prediction in zip([table[0], table[1], table[3]], expected, strict=True):
        assert row["label"] == prediction["label"] == row["top_1"]
        assert row["species"] == prediction["display_name"]
        assert float(row["confidence"]) == pytest.approx(prediction["confidence"], abs=1e-4)
        assert (row["verdict"], row["confident"]) == (prediction["verdict"], str(prediction["confident"]).lower())
        assert row["top_5"] and row["top_5_confidence"]
    assert table[2]["label"] == "" and "not a supported image" in table[2]["error"]

    small = phone(new_page)
    small.goto(server + "/")
    small.set_input_files("#image", [str(p) for p in pictures])
    small.get_by_role("button", name="Identify").click()
    small.locator(".results-table").wait_for()
    page_width = small.evaluate("document.documentElement.scrollWidth")
    assert page_width <= PHONE["width"]  # the table scrolls inside its card, the page does not
    screenshot(small, "phone-results-table")


def test_a_non_image_shows_an_error(server: str, new_page: Any, console: Console, tmp_path: Path) -> None:
    console.allow(HTTP_4XX)
    page = new_page()
    page.goto(server + "/")
    notes = tmp_path / "fish.txt"
    notes.write_text("a text file is not a photo\n")
    page.set_input_files("#image", str(notes))
    assert page.locator("#preview .not-image").is_visible()
    page.get_by_role("button", name="Identify").click()
    error = page.get_by_role("alert")
    error.wait_for()
    assert error.is_visible()
    assert "not a supported image" in error.inner_text() and error.inner_text().startswith("Sorry:")
    assert page.locator(".result").count() == 0
    assert any(HTTP_4XX.search(e) for e in console.errors)


def test_the_script_words_each_verdict(server: str, new_page: Any) -> None:
    """The API's answers are replaced by each verdict in turn (the default model may never give some of them): the
    script shows the server's words, the hint, the closest species, and the verdict in the table and its CSV."""
    pictures = [
        photo("amphiprion_clarkii"),
        photo("chromis_chrysura"),
        photo("lutjanus_fulvus"),
        photo("zebrasoma_scopas"),
    ]
    real = api_predict(server, pictures[0])
    model = real.pop("model")
    n = model["num_classes"]
    knows = f"This model knows {n} species"
    hints = {
        "species": None,
        # below the confidence threshold, or (the logit threshold) above it
        "not_sure": "The best guess is below the"
        if real["confidence"] < real["threshold"]
        else "The best guess matches the species this model knows only weakly",
        "unknown_species": f"{knows}, and this photo looks like none of them.",
        "not_a_fish": f"{knows}{' of ' + model['subject'] if model.get('subject') else ''}: try a photo with one",
    }
    answers: list[dict[str, Any]] = []
    page = new_page()
    page.route("**/api/predict", lambda route: route.fulfill(status=200, json=answers[-1]))
    page.goto(server + "/")
    for verdict in VERDICTS:
        prediction = {**real, "verdict": verdict, "confident": verdict == "species"}
        answers.append({**prediction, "model": model})
        page.set_input_files("#image", str(pictures[0]))
        page.get_by_role("button", name="Identify").click()
        result = page.locator(f'.result[data-verdict="{verdict}"]')
        result.wait_for()
        assert result.locator(".species").inner_text() == species_text(prediction, model)
        if hints[verdict] is None:
            assert result.locator(".hint").count() == 0
        else:
            assert result.locator(".hint").inner_text().startswith(hints[verdict])
        if verdict in ("unknown_species", "not_a_fish"):
            assert result.locator(".hint a").get_attribute("href") == "/model"
        assert result.locator(".confidence").count() == (verdict in ("species", "not_sure"))
        caption = "Top 5 species" if verdict == "species" else "Closest species it knows"
        assert result.locator(".top-k caption").inner_text() == caption
        assert result.locator(".top-k tbody tr").count() == 5  # the closest species, whatever the verdict
        screenshot(page, f"desktop-result-{verdict.replace('_', '-')}")

    answers.append(
        {
            "predictions": [
                {**real, "verdict": v, "confident": v == "species", "index": i} for i, v in enumerate(VERDICTS)
            ],
            "model": model,
        }
    )
    page.set_input_files("#image", [str(p) for p in pictures])
    page.get_by_role("button", name="Identify").click()
    page.locator(".results-table").wait_for()
    rows = page.locator(".results-table tbody tr")
    assert [rows.nth(i).get_attribute("data-verdict") for i in range(4)] == list(VERDICTS)
    shown = [rows.nth(i).locator(".species").inner_text() for i in range(4)]
    assert shown == [species_text({**real, "verdict": v}, model) for v in VERDICTS]
    assert page.locator(".results-table .top-label").all_inner_texts() == ["Closest species it knows"] * 3
    assert page.locator(".results-table .top-list li").count() == 4 * 5
    screenshot(page, "desktop-results-table-verdicts")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download the results (CSV)").click()
    reader = csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text(encoding="utf-8")))
    table = list(reader)
    assert reader.fieldnames == csv_header("file_name", 5)  # the server's layout (model/results.py)
    assert [(r["verdict"], r["confident"]) for r in table] == [(v, str(v == "species").lower()) for v in VERDICTS]


def test_the_page_works_without_javascript(server: str, new_page: Any) -> None:
    page = phone(new_page, javascript=False)
    page.goto(server + "/")
    assert page.locator("#image").is_visible()  # the plain file input, no drop zone tricks
    picture = photo("dascyllus_reticulatus")
    page.set_input_files("#image", str(picture))
    with page.expect_navigation():
        page.get_by_role("button", name="Identify").click()
    expected = api_predict(server, picture)
    assert page.locator(".result .species").inner_text() == species_text(expected, expected["model"])
    assert page.locator(".result .thumbnail").get_attribute("src").startswith("data:image/jpeg;base64,")
    assert page.locator(".result .top-k tbody tr").count() == 5
    screenshot(page, "phone-result-no-js")

    pictures = [photo("acanthurus_nigrofuscus"), photo("pomacentrus_moluccensis")]
    page.set_input_files("#image", [str(p) for p in pictures])
    with page.expect_navigation():
        page.get_by_role("button", name="Identify").click()
    assert page.locator(".results-table .file-name").all_inner_texts() == [p.name for p in pictures]
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download the results (CSV)").click()
    table = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text(encoding="utf-8"))))
    assert [r["file_name"] for r in table] == [p.name for p in pictures]


def test_model_page(server: str, new_page: Any) -> None:
    page = new_page()
    page.goto(server + "/")
    page.get_by_role("link", name="About the model").first.click()
    page.wait_for_url(server + "/model")
    assert page.get_by_role("heading", level=1).inner_text() == "About the model"
    assert page.locator("#classes-table tbody tr").count() == 15
    assert page.locator("#confusion-matrix tbody tr").count() == 15
    assert page.locator("#confusion-matrix td.cm-hit").count() == 15
    assert "Clark's anemonefish" in page.locator("#classes-table").inner_text()
    assert page.locator("#verdict-thresholds dt").first.inner_text() == "“Not sure” below"
    screenshot(page, "desktop-model")
    small = phone(new_page)
    small.goto(server + "/model")
    assert small.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(small, "phone-model")
