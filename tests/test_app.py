"""The Flask app: upload page, JSON API, bad and odd uploads, start-up failures, gunicorn config and a real server."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import runpy
import struct
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from html import unescape
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from app import create_app
from model.checkpoint import CheckpointError
from model.decoding import decode_image
from model.errors import ImageError
from model.results import VERDICTS, Prediction
from model.runtime import cpu_threads
from tests.helpers import (
    COLOURS,
    ROOT,
    TINY_ARCH,
    answer_with_verdicts,
    encode,
    gunicorn_server,
    make_app,
    modules_loaded_by,
    synthetic_image,
)
from tools.loadtest import multipart

CLASS_NAMES = sorted(COLOURS)
SPECIES_NAMES = ("Blue tang", "Clownfish", "Green chromis")


def post_image(
    client: FlaskClient, data: bytes, url: str = "/api/predict", filename: str = "fish.jpg", **form: Any
) -> Any:
    """POST ``data`` as the multipart file field ``image`` plus extra form fields."""
    return client.post(url, data={"image": (io.BytesIO(data), filename), **form}, content_type="multipart/form-data")


def assert_json_error(response: Any, status: int) -> str:
    """The response is ``{"error": str}`` JSON with ``status``; returns the message."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"]
    return body["error"]


def png_declaring_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR is patched (with a correct CRC) to claim ``width`` x ``height`` pixels."""
    png = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def truncated_jpeg() -> bytes:
    """The first 60% of a noisy 256x256 JPEG: the header parses, the pixel data ends early."""
    data = encode(synthetic_image((90, 120, 200), size=(256, 256)), quality=95)
    return data[: int(len(data) * 0.6)]


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF orientation (6: rotate 90 degrees clockwise) makes it 20x40 upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(synthetic_image(COLOURS["blue_tang"], size=(40, 20)), exif=exif.tobytes())


def sixteen_bit_png() -> bytes:
    arr = np.linspace(0, 65535, 32 * 24, dtype=np.uint16).reshape(24, 32)
    image = Image.fromarray(arr)  # uint16 gives mode "I;16"
    assert image.mode == "I;16"
    return encode(image, "PNG")


def rgba_png() -> bytes:
    image = synthetic_image(COLOURS["green_chromis"]).convert("RGBA")
    image.putalpha(128)
    return encode(image, "PNG")


def animated_gif(colours: list[tuple[int, int, int]]) -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in colours]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


# --- the upload page ---------------------------------------------------------------------------------------------


def alert_text(html: str) -> str:
    """The text of the page's error box (``role="alert"``), or "" when it is hidden."""
    match = re.search(r'<div id="error" class="error" role="alert"( hidden)?>(.*?)</div>', html, re.S)
    assert match, "the page has no error box"
    return "" if match.group(1) else re.sub(r"<[^>]+>", "", match.group(2)).strip()


def assert_no_inline_code(html: str) -> None:
    """Ready for the strict Content-Security-Policy: scripts only from files, no inline styles, no CDN."""
    scripts = re.findall(r"<script\b.*?</script>", html, re.S)
    # the page's scripts, from files, nothing inline: the upload page's and its "Right?" question's (corrections)
    assert scripts == [f'<script src="/static/{name}.js" defer></script>' for name in ("app", "corrections")]
    assert "style=" not in html and "https://" not in html and "http://" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


def test_page_renders_form(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert '<html lang="en">' in html
    assert 'name="viewport"' in html
    assert 'enctype="multipart/form-data"' in html and 'action="/"' in html and 'method="post"' in html
    input_tag = re.search(r"<input [^>]*>", html).group(0)
    for attribute in ('type="file"', 'name="image"', 'id="image"', 'accept="image/*"', "multiple", "required"):
        assert attribute in input_tag
    assert '<label for="image"' in html  # the drop zone is the input's label
    assert 'data-api="/api/predict"' in html
    assert "Reef fish identifier" in html
    assert TINY_ARCH in html and "3 species" in html
    assert 'href="/model"' in html
    assert alert_text(html) == ""
    assert_no_inline_code(html)


@pytest.mark.parametrize(("path", "mimetype"), [("style.css", "text/css"), ("app.js", "text/javascript")])
def test_static_files_are_served(client: FlaskClient, path: str, mimetype: str) -> None:
    response = client.get(f"/static/{path}")
    assert response.status_code == 200
    assert response.mimetype == mimetype


def test_form_post_shows_species_confidence_and_top_k(client: FlaskClient, jpeg_bytes: Callable[..., bytes]) -> None:
    response = post_image(client, jpeg_bytes(), url="/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert '<p class="species">Clownfish</p>' in html  # a clownfish-coloured photo, the trained tiny model
    assert re.search(r"Confidence <strong>\d+\.\d%</strong>", html)
    assert html.count("<meter") == 1 + len(CLASS_NAMES)  # the confidence bar and one bar per top-k class
    assert "Top 3 species" in html
    assert 'src="data:image/jpeg;base64,' in html
    verdict = html.split('<p class="species')[1].split("</p>")[0]
    assert "_" not in verdict
    assert alert_text(html) == ""
    assert_no_inline_code(html)


@pytest.mark.parametrize(("threshold", "sure"), [(0.0, True), (1.0, False)])
def test_form_post_says_when_it_is_not_sure(
    tiny_checkpoint: Path, jpeg_bytes: Callable[..., bytes], threshold: float, sure: bool
) -> None:
    client = make_app(MODEL_PATH=str(tiny_checkpoint), CONFIDENCE_THRESHOLD=threshold).test_client()
    html = post_image(client, jpeg_bytes(), url="/").get_data(as_text=True)
    if sure:
        assert '<p class="species">Clownfish</p>' in html and "Not sure" not in html
    else:
        sentence = re.search(r'<p class="species not-sure">(Not sure: maybe ([^<]+) or ([^<]+))</p>', html)
        assert sentence, html
        assert sentence.group(2) == "Clownfish" and sentence.group(3) in SPECIES_NAMES
        assert "below the 100.0% confidence" in html
        assert '<p class="species">' not in html


@pytest.mark.parametrize(("logit_threshold", "sure"), [(-1e6, True), (1e6, False)])
def test_a_weak_best_logit_makes_it_not_sure_whatever_the_confidence(
    checkpoint_factory: Callable[..., Path], jpeg_bytes: Callable[..., bytes], logit_threshold: float, sure: bool
) -> None:
    """The release's second "not sure" threshold, on the best class's logit: served from the checkpoint, said in the
    page's words (not the confidence's), shown in the API's thresholds."""
    serving = {"confidence_threshold": 0.5, "temperature": 1.0, "logit_threshold": logit_threshold}
    client = make_app(MODEL_PATH=str(checkpoint_factory(serving=serving))).test_client()
    answer = post_image(client, jpeg_bytes()).get_json()
    assert answer["confidence"] >= 0.5 and answer["verdict"] == ("species" if sure else "not_sure")
    assert answer["model"]["verdict_thresholds"]["not_sure_logit"] == logit_threshold
    html = re.sub(r"\s+", " ", post_image(client, jpeg_bytes(), url="/").get_data(as_text=True))
    assert ("matches the species this model knows only weakly" in html) is not sure
    assert "confidence this model needs" not in html
    # FISH_LOGIT_THRESHOLD overrides the checkpoint's, either way
    overridden = make_app(MODEL_PATH=str(checkpoint_factory(serving=serving)), LOGIT_THRESHOLD=-logit_threshold)
    assert post_image(overridden.test_client(), jpeg_bytes()).get_json()["verdict"] == (
        "not_sure" if sure else "species"
    )


NAME = "(?:" + "|".join(SPECIES_NAMES) + ")"
KNOWS = 'This model knows <a href="/model">3 species</a>'


@pytest.mark.parametrize(
    ("verdict", "subject", "headline", "hint"),
    [
        # forced at threshold 0, where only the logit threshold can make it "not sure"
        ("not_sure", "fish", f"Not sure: maybe {NAME} or {NAME}", "matches the species this model knows only weakly"),
        ("unknown_species", "fish", "Probably a fish this model does not know", f"{KNOWS}, and this photo looks like"),
        ("unknown_species", None, "Probably none of the species this model knows", f"{KNOWS}, and this photo looks"),
        ("not_a_fish", "fish", "This does not look like a fish", f"{KNOWS} of fish: try a photo with one of them"),
        ("not_a_fish", "eel", "This does not look like an eel", f"{KNOWS} of eel: try a photo with one of them"),
        ("not_a_fish", None, "This does not look like anything this model was trained on", f"{KNOWS}: try a photo"),
    ],
)
def test_form_post_words_each_verdict(
    app: Flask,
    client: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
    jpeg_bytes: Callable[..., bytes],
    verdict: str,
    subject: str | None,
    headline: str,
    hint: str,
) -> None:
    answer_with_verdicts(monkeypatch, app, [verdict], subject=subject)
    html = post_image(client, jpeg_bytes(), url="/").get_data(as_text=True)
    said = re.search(rf'<p class="species {verdict.replace("_", "-")}">([^<]+)</p>', html)
    assert said and re.fullmatch(headline, said.group(1)), html
    assert f"<title>{said.group(1)} – Reef fish identifier</title>" in html
    assert f'<section class="card result" aria-labelledby="result-heading" data-verdict="{verdict}">' in html
    assert '<p class="species">' not in html and 'class="scientific"' not in html
    assert hint in re.sub(r"\s+", " ", html)
    # the closest species stay in view, labelled as such; the confidence only where a species is guessed
    assert "<caption>Closest species it knows</caption>" in html and "Top 3 species" not in html
    assert sorted(re.findall(rf'<th scope="row">({NAME})</th>', html)) == sorted(SPECIES_NAMES)
    assert ("Confidence <strong>" in html) is (verdict == "not_sure")
    assert html.count("<meter") == len(CLASS_NAMES) + (verdict == "not_sure")
    assert_no_inline_code(html)


def test_results_table_and_csv_say_each_verdict(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, jpeg_bytes: Callable[..., bytes]
) -> None:
    answer_with_verdicts(monkeypatch, app, list(VERDICTS), subject="fish")
    files = [(io.BytesIO(jpeg_bytes()), f"{verdict}.jpg") for verdict in VERDICTS]
    html = client.post("/", data={"image": files}, content_type="multipart/form-data").get_data(as_text=True)
    assert re.findall(r'<tr data-verdict="([a-z_]+)">', html) == list(VERDICTS)
    said = re.findall(r'<p class="(species[^"]*)">([^<]+)</p>', html)
    assert [css for css, _ in said] == ["species", "species not-sure", "species unknown-species", "species not-a-fish"]
    assert said[0][1] == "Clownfish" and re.fullmatch(f"Not sure: maybe {NAME} or {NAME}", said[1][1])
    assert said[2][1] == "Probably a fish this model does not know"
    assert said[3][1] == "This does not look like a fish"
    assert html.count('<p class="top-label">Closest species it knows</p>') == 3
    assert html.count('<ol class="top-list">') == 4  # the top 3 of every photo
    assert html.count('<td class="confidence-cell"><span class="number">–</span></td>') == 2
    link = re.search(r'<a class="button" id="csv-download" href="data:text/csv;charset=utf-8,([^"]+)"', html)
    reader = csv.DictReader(io.StringIO(urllib.parse.unquote(link.group(1))))
    table = list(reader)
    assert reader.fieldnames[:10] == [
        *("file_name", "species", "label", "confidence", "verdict", "confident", "family", "family_probability"),
        *("crop", "error"),
    ]
    assert [(r["file_name"], r["verdict"], r["confident"]) for r in table] == [
        (f"{verdict}.jpg", verdict, str(verdict == "species").lower()) for verdict in VERDICTS
    ]
    assert all(r["label"] == "clownfish" and r["top_3"] in CLASS_NAMES for r in table)
    assert_no_inline_code(html)


def test_verdict_headline_words() -> None:
    from app.web import verdict_headline, with_article
    from model.results import ClassScore

    top = [ClassScore("a_b", 0.4, "Ab fish", "A b"), ClassScore("c_d", 0.3), ClassScore("e_f", 0.3)]
    said = {verdict: verdict_headline(Prediction(top, 0.5, verdict), "fish") for verdict in VERDICTS}
    assert said == {
        "species": "Ab fish",
        "not_sure": "Not sure: maybe Ab fish or C d",
        "unknown_species": "Probably a fish this model does not know",
        "not_a_fish": "This does not look like a fish",
    }
    assert verdict_headline(Prediction(top[1:], 0.5, "species")) == "C d"
    assert verdict_headline(Prediction(top[:1], 0.5, "not_sure")) == "Not sure: maybe Ab fish"
    assert [with_article(noun) for noun in ("fish", "eel", "Urchin")] == ["a fish", "an eel", "an Urchin"]


def test_form_post_several_files_gives_a_table_and_csv(client: FlaskClient, jpeg_bytes: Callable[..., bytes]) -> None:
    files = [
        (io.BytesIO(jpeg_bytes(COLOURS["blue_tang"])), "reef/one.jpg"),
        (io.BytesIO(b"not an image at all"), "notes.txt"),
        (io.BytesIO(encode(synthetic_image(COLOURS["clownfish"]), "PNG")), "=cmd|calc.png"),
    ]
    response = client.post("/", data={"image": files}, content_type="multipart/form-data")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Results for 3 photos" in html
    rows = re.findall(r'<th scope="row" class="file-name">([^<]*)</th>', html)
    assert rows == ["one.jpg", "notes.txt", "=cmd|calc.png"]  # base names, in order, escaped by Jinja
    assert html.count('class="row-error"') == 1 and "not a supported image" in html
    assert html.count('class="row-thumbnail"') == 2
    link = re.search(r'<a class="button" id="csv-download" href="([^"]+)" download="fish-species.csv">', html)
    assert link and link.group(1).startswith("data:text/csv;charset=utf-8,")
    text = urllib.parse.unquote(link.group(1).split(",", 1)[1])
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["file_name"] for r in table] == ["one.jpg", "notes.txt", "'=cmd|calc.png"]  # no formula injection
    assert (table[0]["label"], table[0]["species"]) == ("blue_tang", "Blue tang")
    assert (table[2]["label"], table[2]["species"]) == ("clownfish", "Clownfish")
    assert 0 <= float(table[0]["confidence"]) <= 1 and table[0]["confident"] in ("true", "false")
    assert table[0]["top_1"] == table[0]["label"] and table[0]["top_3"] in CLASS_NAMES
    assert table[1]["label"] == "" and "not a supported image" in table[1]["error"]
    assert_no_inline_code(html)


@pytest.fixture(scope="module")
def limited_app(tiny_checkpoint: Path) -> Flask:
    """An app that takes at most 2 images per request."""
    return make_app(MODEL_PATH=str(tiny_checkpoint), MAX_IMAGES_PER_REQUEST=2)


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        (lambda jpeg: {}, 400, "no image uploaded: send the file(s) in the multipart form field 'image'"),
        (lambda jpeg: {"image": (io.BytesIO(b""), "")}, 400, "choose an image file to upload first"),
        (
            lambda jpeg: {"image": [(io.BytesIO(jpeg), f"{i}.jpg") for i in range(3)]},
            413,
            "too many images: 3 in one request, the limit is 2",
        ),
        (lambda jpeg: {"image": (io.BytesIO(jpeg), "a.jpg"), "top_k": "9"}, 400, "top_k must be an integer"),
    ],
    ids=["no-field", "no-file-chosen", "too-many", "bad-top_k"],
)
def test_page_and_api_refuse_an_upload_with_one_message(
    limited_app: Flask, jpeg_bytes: Callable[..., bytes], form: Callable[[bytes], dict], status: int, message: str
) -> None:
    """One check (``app.uploads.check_uploads``) for both: the same status and words on the page as in the API,
    except that the page takes no ``top_k`` (it lists TOP_K classes)."""
    client = limited_app.test_client()
    api = client.post("/api/predict", data=form(jpeg_bytes()), content_type="multipart/form-data")
    assert api.status_code == status and api.get_json()["error"].startswith(message)
    page = client.post("/", data=form(jpeg_bytes()), content_type="multipart/form-data")
    if "top_k" in message:
        assert page.status_code == 200 and 'class="card result' in page.get_data(as_text=True)
    else:
        assert page.status_code == status
        assert unescape(alert_text(page.get_data(as_text=True))) == "Sorry: " + api.get_json()["error"]


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [(b"", 400, "empty"), (b"hello, this is plain text", 415, "not a supported image"), (truncated_jpeg(), 400, "")],
    ids=["empty", "text", "truncated"],
)
def test_form_post_bad_upload_shows_error(client: FlaskClient, data: bytes, status: int, message: str) -> None:
    response = post_image(client, data, url="/")
    assert response.status_code == status
    html = response.get_data(as_text=True)
    assert message in alert_text(html) and alert_text(html).startswith("Sorry:")
    assert 'name="image"' in html  # the form is still there to try again
    assert 'class="card result' not in html


def test_form_post_without_a_file(client: FlaskClient) -> None:
    response = client.post("/", data={}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "image" in alert_text(response.get_data(as_text=True))
    # what a browser sends when the form is submitted with no file chosen: an empty part without a file name
    response = client.post("/", data={"image": (io.BytesIO(b""), "")}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "choose an image file" in alert_text(response.get_data(as_text=True))


def test_form_post_too_large(tiny_checkpoint: Path, jpeg_bytes: Callable[..., bytes]) -> None:
    client = make_app(MODEL_PATH=str(tiny_checkpoint), MAX_CONTENT_LENGTH=1024).test_client()
    response = post_image(client, jpeg_bytes(size=(200, 200)), url="/")
    assert response.status_code == 413
    assert "too large" in alert_text(response.get_data(as_text=True))


def test_results_csv_and_data_url() -> None:
    from app.web import FileResult, csv_data_url, results_csv
    from model.results import csv_cell

    assert [csv_cell(v) for v in ("=1+1", "+1", "-1", "@a", "fish", None, 0.5)] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@a",
        "fish",
        "",
        "0.5",
    ]
    text = results_csv([FileResult("a, b.jpg", error='bad "image"')])
    assert text == (
        "file_name,species,label,confidence,verdict,confident,family,family_probability,crop,error\r\n"
        '"a, b.jpg",,,,,,,,,"bad ""image"""\r\n'
    )
    assert csv_data_url("a,b\r\n") == "data:text/csv;charset=utf-8,a%2Cb%0D%0A"


def test_the_page_gives_app_js_the_servers_csv_layout(client: FlaskClient) -> None:
    """static/app.js writes the CSV from data-csv-layout: the columns of model.results, whose fields are the
    declared result's, and the server's download name."""
    from model.results import CSV_FIELDS, CSV_LAYOUT, PredictionResult, csv_header

    page = client.get("/").get_data(as_text=True)
    attribute = re.search(r"data-csv-layout='([^']+)'", page)
    assert attribute, "the form has no data-csv-layout"
    layout = json.loads(unescape(attribute.group(1)))
    assert layout == {"file": "file_name", **json.loads(json.dumps(CSV_LAYOUT))}
    header = [layout["file"], *(column for column, _ in layout["fields"])]
    header += [name.replace("{i}", str(i)) for i in (1, 2) for name in layout["top_k"]]
    assert header == csv_header("file_name", 2)
    # every field is the result's, or a field of one of its objects (family.name)
    for field in (field for _, field in CSV_FIELDS if field):
        head, _, rest = field.partition(".")
        assert head in PredictionResult.model_fields, field
        if rest:
            assert rest in PredictionResult.model_fields[head].annotation.__args__[0].model_fields, field
    assert 'data-csv-filename="fish-species.csv"' in page


# --- the model page ----------------------------------------------------------------------------------------------


def test_model_page_renders_a_bare_checkpoint(client: FlaskClient) -> None:
    """The tiny checkpoint has no per-class metrics, confusion matrix, names or threshold: the page still works."""
    response = client.get("/model")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<h1>About the model</h1>" in html
    assert TINY_ARCH in html and "32 × 32" in html
    for label, name in zip(CLASS_NAMES, SPECIES_NAMES, strict=True):
        assert f'<th scope="row">{name} <code class="label">{label}</code></th>' in html
    assert "records no per-species metrics" in html
    assert "records no confusion matrix" in html
    assert "<dt>Input size</dt>" in html  # from the checkpoint's config {"arch", "image_size"}
    assert "it has no threshold for not being sure" in html and 'id="verdict-thresholds"' not in html
    assert 'aria-current="page"' in html
    assert "<script" not in html and "style=" not in html


@pytest.fixture(scope="module")
def described_checkpoint(checkpoint_factory: Callable[..., Path]) -> Path:
    """A tiny checkpoint with everything the model page can show: names, config, per-class metrics, threshold."""
    return checkpoint_factory(
        "described.pt",
        epoch=4,
        config={
            "data": "/secret/training/photos",
            "out": "runs/secret",
            "arch": "resnet18",
            "weights": "none",
            "epochs": 5,
            "batch_size": 8,
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "scheduler": "cosine",
            "warmup_epochs": 1.0,
            "label_smoothing": 0.1,
            "image_size": 32,
            "crop_pct": 0.875,
            "val_fraction": 0.2,
            "group_pattern": r"fish_(\d+)_",
            "seed": 7,
        },
        class_info={
            "blue_tang": {"common_name": "Palette surgeonfish", "scientific_name": "Paracanthurus hepatus"},
            "clownfish": {"common_name": "Clown anemonefish"},
        },
        metrics={
            "val_accuracy": 0.8,
            "val_macro_f1": 0.75,
            "val_images": 20.0,
            "best_epoch": 3.0,
            "per_class": {
                "blue_tang": {"precision": 1.0, "recall": 0.9, "f1": 0.947, "support": 10},
                "clownfish": {"precision": 0.5, "recall": 0.6, "f1": 0.545, "support": 5},
                "green_chromis": {"precision": 0.7, "recall": 0.8, "f1": 0.747, "support": 5},
            },
            "confusion_matrix": [[9, 1, 0], [2, 3, 0], [0, 1, 4]],
        },
        serving={"confidence_threshold": 0.5, "coverage": 0.9, "selective_accuracy": 0.95},
    )


def test_model_page_shows_names_training_metrics_and_confusion(described_checkpoint: Path) -> None:
    html = make_app(MODEL_PATH=str(described_checkpoint)).test_client().get("/model").get_data(as_text=True)
    # names: common and scientific where the checkpoint has them, the prettified label otherwise
    assert ">Palette surgeonfish <code" in html and '<i lang="la">Paracanthurus hepatus</i>' in html
    assert ">Clown anemonefish <code" in html and ">Green chromis <code" in html
    # metrics
    assert "80.0%" in html and "0.750" in html and "20 validation photos" in html
    assert '<td class="number">0.947</td>' in html and '<td class="number">10</td>' in html
    assert "50.0% confidence" in html and "95.0% of those are right" in html
    # training, without file-system paths
    for fact in ("Architecture", "Initial weights", "Epochs", "Input size", "Optimizer", "Data split", "Random seed"):
        assert f"<dt>{fact}</dt>" in html
    assert "learning rate 0.1, momentum 0.9, weight decay 0.0005" in html
    assert "from epoch 4" in html and "20% of the images held out" in html and "fish_(\\d+)_" in html
    assert "secret" not in html
    # the confusion matrix: counts in shaded cells, hits on the diagonal
    table = html.split('id="confusion-matrix"')[1].split("</table>")[0]
    cells = re.findall(r'<td class="(cm-(?:hit|miss) cm-\d)">(\d+)</td>', table)
    assert [int(count) for _, count in cells] == [9, 1, 0, 2, 3, 0, 0, 1, 4]
    assert cells[0][0] == "cm-hit cm-5" and cells[1][0] == "cm-miss cm-1" and cells[2][0] == "cm-miss cm-0"
    assert '<th scope="row">Palette surgeonfish</th>' in table and "<caption" in table
    assert "style=" not in html


@pytest.mark.parametrize(
    ("subject", "last_term", "last_sentence"),
    [
        ("fish", "“Not a fish” below", "looks less like a fish than this"),
        (None, "“Unlike its training photos” below", "looks less like its training photos than this"),
    ],
)
def test_model_page_explains_the_verdict_thresholds(
    app: Flask,
    client: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
    subject: str | None,
    last_term: str,
    last_sentence: str,
) -> None:
    thresholds = {"not_sure": 0.455, "unknown_species": 123.456, "not_a_fish": 0.3}
    answer_with_verdicts(monkeypatch, app, ["species"], subject=subject, verdict_thresholds=thresholds)
    html = client.get("/model").get_data(as_text=True)
    listed = re.sub(r"\s+", " ", html.split('<dl class="facts" id="verdict-thresholds">')[1].split("</dl>")[0])
    assert re.findall(r"<dt>([^<]+)</dt>", listed) == ["“Not sure” below", "“Unknown species” above", last_term]
    assert "<dd>45.5% confidence: when even the likeliest species is less likely than this" in listed
    assert "<dd>123 novelty: a photo whose features are farther than this" in listed
    assert "<dd>30.0% subject score: a photo that " + last_sentence in listed
    assert "<script" not in html and "style=" not in html


def test_model_page_explains_the_hierarchy_rule_and_lists_every_folder(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    thresholds = {
        "not_sure": 0.5,
        "unknown_species": 7000.0,
        "not_a_fish": 0.25,
        "not_a_fish_taxon": 0.05,
        "not_a_fish_contrast": 0.6,
    }
    answer_with_verdicts(monkeypatch, app, ["species"], subject="fish", verdict_thresholds=thresholds)
    html = re.sub(r"\s+", " ", client.get("/model").get_data(as_text=True))
    terms = re.findall(r"<dt>(“[^<]+)</dt>", html)
    assert terms[-2:] == ["“Not a fish” below", "“Not a fish”, among photos unlike its species"]
    assert "gives the fish classes of its hierarchy less than 5.0% of its probability" in html
    assert "gives other living things (coral, sea anemones, crabs, turtles…) 60.0% more than those" in html
    assert "a photo farther than the “unknown species” novelty from every species it knows" in html
    # a release with the hierarchy's own gate and a logit threshold (2026-12-03) says both
    thresholds |= {"not_a_fish_novelty": 5000.0, "not_sure_logit": 3.25}
    answer_with_verdicts(monkeypatch, app, ["species"], subject="fish", verdict_thresholds=thresholds)
    html = re.sub(r"\s+", " ", client.get("/model").get_data(as_text=True))
    assert "a photo farther than 5,000 novelty from every species it knows is also called not a fish" in html
    assert re.findall(r"<dt>(“[^<]+)</dt>", html)[:2] == ["“Not sure” below", "“Not sure”, for a weak match, below"]
    assert "<dd>3.25 logit: when the likeliest species’ logit" in html

    from app.model_page import open_set_rows
    from model.checkpoint import EvaluationRecord

    report = {
        "not_subject:reef_photos/not_fish": {"images": 150, "not_a_fish": 0.4},
        "val": {"images": 821, "species": 0.9},
        "not_subject": {"images": 2000, "not_a_fish": 0.8},
        "unknown_photos:reef_photos/fish": {"images": 274, "unknown_species": 0.5},
    }
    assert [
        (row["name"], row["images"]) for row in open_set_rows(EvaluationRecord.from_dict({"open_set": report}))
    ] == [
        ("Validation photos (video crops of its species)", 821),
        ("Photographs of species it does not know (reef_photos/fish)", 274),
        ("Pictures of something else", 2000),
        ("Pictures of something else (reef_photos/not_fish)", 150),
    ]


@pytest.mark.parametrize(
    ("thresholds", "terms"),
    [
        ({"not_sure": 0.5, "unknown_species": None, "not_a_fish": None}, ["“Not sure” below"]),
        (
            {"not_sure": 0.5, "unknown_species": 7.0, "not_a_fish": None},
            ["“Not sure” below", "“Unknown species” above"],
        ),
        ({"not_sure": 0.0, "unknown_species": None, "not_a_fish": 0.2}, ["“Not a fish” below"]),
        ({"not_sure": 0.0, "unknown_species": None, "not_a_fish": None}, []),
        (
            {"not_sure": 0.0, "not_sure_logit": 2.0, "unknown_species": None, "not_a_fish": None},
            ["“Not sure”, for a weak match, below"],
        ),
    ],
)
def test_model_page_leaves_out_the_checks_a_model_lacks(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, thresholds: dict[str, Any], terms: list[str]
) -> None:
    answer_with_verdicts(monkeypatch, app, ["species"], subject="fish", verdict_thresholds=thresholds)
    html = client.get("/model").get_data(as_text=True)
    assert re.findall(r"<dt>(“[^<]+)</dt>", html) == terms
    assert ("it has no threshold for not being sure" in html) is (not terms)


def test_confusion_rows_shading_and_bad_matrices() -> None:
    from app.model_page import confusion_rows, shade_level

    assert [shade_level(c, 10) for c in (0, 1, 2, 3, 5, 9, 10)] == [0, 1, 1, 2, 3, 5, 5]
    assert shade_level(0, 0) == 0
    rows = confusion_rows([[2, 0], [0, 0]], ["a", "b"])
    assert rows is not None and rows[0]["total"] == 2 and rows[1]["total"] == 0
    assert [c["css"] for c in rows[0]["cells"]] == ["cm-hit cm-5", "cm-miss cm-0"]
    for bad in (None, [], [[1, 2]], [[1], [2]], "matrix"):
        assert confusion_rows(bad, ["a", "b"]) is None


# --- security headers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/model", "/static/style.css", "/static/app.js", "/healthz", "/nope", "/api/x"])
def test_security_headers_on_every_response(client: FlaskClient, path: str) -> None:
    from app import SECURITY_HEADERS

    response = client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (path, name)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_security_headers_on_errors_and_posts(client: FlaskClient, jpeg_bytes: Callable[..., bytes]) -> None:
    for response in (
        post_image(client, b"text", url="/"),
        post_image(client, b"text"),
        post_image(client, jpeg_bytes(), url="/"),
        client.get("/api/predict"),
    ):
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert response.headers["Referrer-Policy"] == "no-referrer"


def test_debug_mode_never_comes_from_the_environment(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DEBUG", "1")
    monkeypatch.setenv("FISH_DEBUG", "true")
    assert make_app(MODEL_PATH=str(tiny_checkpoint)).debug is False
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert not settings.get("reload") and "debug" not in settings


# --- the JSON API ------------------------------------------------------------------------------------------------


def test_api_predict_schema(client: FlaskClient, jpeg_bytes: Callable[..., bytes]) -> None:
    response = post_image(client, jpeg_bytes())
    assert response.status_code == 200
    body = response.get_json()
    assert body["label"] == "clownfish"  # a clownfish-coloured photo, the trained tiny model
    assert 0.5 < body["confidence"] < 1.0
    top = body["top_k"]
    assert len(top) == len(CLASS_NAMES)  # default TOP_K=5 clipped to 3 classes
    assert [t["label"] for t in top][0] == body["label"]
    assert top[0]["confidence"] == pytest.approx(body["confidence"])
    assert sorted({t["label"] for t in top}) == CLASS_NAMES
    confidences = [t["confidence"] for t in top]
    assert confidences == sorted(confidences, reverse=True)
    assert sum(confidences) == pytest.approx(1.0, abs=1e-4)
    assert body["model"]["arch"] == TINY_ARCH
    assert body["model"]["num_classes"] == len(CLASS_NAMES)
    assert body["verdict"] in VERDICTS and body["confident"] is (body["verdict"] == "species")
    assert {"subject_score", "novelty"} <= set(body)


@pytest.mark.parametrize("verdict", VERDICTS)
def test_api_says_each_verdict(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, jpeg_bytes: Callable[..., bytes], verdict: str
) -> None:
    answer_with_verdicts(monkeypatch, app, [verdict])
    body = post_image(client, jpeg_bytes()).get_json()
    assert (body["verdict"], body["confident"]) == (verdict, verdict == "species")
    assert (body["subject_score"], body["novelty"]) == (0.25, 42.5)
    assert len(body["top_k"]) == len(CLASS_NAMES)  # the closest classes, whatever the verdict


def test_api_says_the_verdict_of_each_image(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, jpeg_bytes: Callable[..., bytes]
) -> None:
    answer_with_verdicts(monkeypatch, app, list(VERDICTS))
    files = [(io.BytesIO(jpeg_bytes()), f"{i}.jpg") for i in range(len(VERDICTS))]
    body = client.post("/api/predict", data={"image": files}, content_type="multipart/form-data").get_json()
    assert [(p["index"], p["verdict"], p["confident"]) for p in body["predictions"]] == [
        (i, verdict, verdict == "species") for i, verdict in enumerate(VERDICTS)
    ]


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_api_top_k(client: FlaskClient, jpeg_bytes: Callable[..., bytes], top_k: int) -> None:
    as_form = post_image(client, jpeg_bytes(), top_k=str(top_k))
    as_query = post_image(client, jpeg_bytes(), url=f"/api/predict?top_k={top_k}")
    for response in (as_form, as_query):
        assert response.status_code == 200
        assert len(response.get_json()["top_k"]) == top_k


@pytest.mark.parametrize("top_k", ["0", "4", "-1", "two", "1.5", "1e9"])
def test_api_bad_top_k(client: FlaskClient, jpeg_bytes: Callable[..., bytes], top_k: str) -> None:
    message = assert_json_error(post_image(client, jpeg_bytes(), top_k=top_k), 400)
    assert "top_k" in message


def test_healthz(client: FlaskClient, tiny_checkpoint: Path) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body == {"status": "ok", "model": TINY_ARCH, "checkpoint": tiny_checkpoint.name, "classes": CLASS_NAMES}


# Bad uploads, missing fields, body limits and odd images: tests/test_api_inputs.py.


def test_api_too_elongated(tiny_checkpoint: Path) -> None:
    client = make_app(MODEL_PATH=str(tiny_checkpoint), MAX_IMAGE_PIXELS=100_000).test_client()
    # 300 x 300 = 90 kpx decodes, but 3000 x 3 scaled to a 36 px short side would be 432 kpx.
    assert post_image(client, encode(Image.new("RGB", (300, 300)), "PNG")).status_code == 200
    assert_json_error(post_image(client, encode(Image.new("RGB", (3000, 3)), "PNG")), 413)


def test_api_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    assert_json_error(client.get("/api/nope"), 404)
    response = client.get("/api/predict")
    assert_json_error(response, 405)
    assert "POST" in response.headers["Allow"]
    assert not client.get("/nope").is_json  # HTML pages keep HTML errors


# --- decoding, directly ------------------------------------------------------------------------------------------


def test_decode_applies_exif_orientation() -> None:
    image = decode_image(exif_rotated_jpeg())
    assert image.mode == "RGB"
    assert image.size == (20, 40)


def test_decode_takes_first_frame_of_animation() -> None:
    image = decode_image(animated_gif([(255, 0, 0), (0, 0, 255)]))
    r, g, b = image.getpixel((8, 8))
    assert r > 200 and b < 50


def test_decode_converts_modes_to_rgb() -> None:
    for data in (sixteen_bit_png(), rgba_png(), encode(Image.new("1", (4, 4)), "PNG")):
        assert decode_image(data).mode == "RGB"


def test_decode_errors_carry_status() -> None:
    with pytest.raises(ImageError) as info:
        decode_image(b"")
    assert info.value.status == 400
    with pytest.raises(ImageError) as info:
        decode_image(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=9_999)
    assert info.value.status == 413 and "100 x 100" in info.value.message


def test_decode_does_not_change_pillow_limits() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError):
        decode_image(png_declaring_size(30_000, 30_000))
    assert before == Image.MAX_IMAGE_PIXELS


# --- start-up and configuration ----------------------------------------------------------------------------------


def test_missing_checkpoint_fails_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="FISH_MODEL_PATH") as info:
        make_app(MODEL_PATH=str(path))
    assert str(path) in str(info.value)


def test_text_file_checkpoint_fails_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="FISH_MODEL_PATH") as info:
        make_app(MODEL_PATH=str(path))
    assert str(path) in str(info.value)


def test_environment_overrides_defaults_and_config_overrides_environment(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, jpeg_bytes: Callable[..., bytes]
) -> None:
    monkeypatch.setenv("FISH_MODEL_PATH", str(tiny_checkpoint))
    monkeypatch.setenv("FISH_TOP_K", "2")
    monkeypatch.setenv("FISH_BACKEND", "torch")  # see helpers.make_app
    app = create_app()
    assert app.config["MODEL_PATH"] == str(tiny_checkpoint) and app.config["TOP_K"] == 2
    assert len(post_image(app.test_client(), jpeg_bytes()).get_json()["top_k"]) == 2
    assert create_app({"TOP_K": 1}).config["TOP_K"] == 1


@pytest.mark.parametrize("setting", [{"TOP_K": 0}, {"TOP_K": "five"}, {"MAX_IMAGE_PIXELS": -1}, {"THREADS": 0}])
def test_bad_settings_fail_at_start_up(tiny_checkpoint: Path, setting: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(setting))):
        make_app(MODEL_PATH=str(tiny_checkpoint), **setting)


@pytest.mark.slow  # converts the model for OpenVINO
def test_threads_setting_reaches_the_backend(tiny_checkpoint: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        app = make_app(MODEL_PATH=str(tiny_checkpoint), THREADS=1, BACKEND="torch")
        assert app.extensions["predictor"].backend == "torch" and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        pytest.importorskip("openvino", reason="the openvino backend needs the openvino package")
        app = make_app(MODEL_PATH=str(tiny_checkpoint), THREADS=2, BACKEND="openvino")
        compiled = app.extensions["predictor"]._openvino.compiled
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
        assert torch.get_num_threads() == 1  # torch only preprocesses beside OpenVINO
    finally:
        torch.set_num_threads(before)


def test_predictor_is_per_app(tiny_checkpoint: Path, checkpoint_factory: Callable[..., Path]) -> None:
    other_classes = ["moorish_idol", "yellow_tang"]
    other = checkpoint_factory(class_names=other_classes)  # two classes: random weights (see checkpoint_factory)
    first, second = make_app(MODEL_PATH=str(tiny_checkpoint)), make_app(MODEL_PATH=str(other))
    assert first.extensions["predictor"] is not second.extensions["predictor"]
    assert first.test_client().get("/healthz").get_json()["classes"] == CLASS_NAMES
    assert second.test_client().get("/healthz").get_json()["classes"] == other_classes
    assert first.extensions["predictor"].class_names == CLASS_NAMES  # loading the second left the first alone


# --- gunicorn ----------------------------------------------------------------------------------------------------


def test_gunicorn_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIND", "127.0.0.1:9999")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.delenv("FISH_THREADS", raising=False)  # restored (removed) after the test
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["bind"] == "127.0.0.1:9999"
    assert settings["workers"] == 3
    assert settings["preload_app"] is False
    assert settings["threads"] >= 1 and settings["timeout"] > 0
    assert settings["control_socket_disable"] is True
    # a lone request gets every core this process may use: the app's own rule (cpu_threads), not the host's count
    assert os.environ["FISH_THREADS"] == str(cpu_threads())
    # the master must not import torch (nor the app, which does), directly or through another module
    assert modules_loaded_by("import runpy; runpy.run_path('gunicorn.conf.py')", ("torch", "app", "model")) == []


def test_gunicorn_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BIND", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FISH_THREADS", "7")  # an explicit setting wins
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["bind"] == "127.0.0.1:8000"
    assert 2 <= settings["workers"] <= 4
    assert os.environ["FISH_THREADS"] == "7"


@pytest.mark.slow
def test_gunicorn_serves_predictions(tiny_checkpoint: Path, tmp_path: Path, jpeg_bytes: Callable[..., bytes]) -> None:
    with gunicorn_server(tiny_checkpoint, tmp_path) as base:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            health = json.load(response)
        assert health["status"] == "ok" and health["classes"] == CLASS_NAMES

        body, content_type = multipart("image", "fish.jpg", jpeg_bytes(), "image/jpeg")
        request = urllib.request.Request(
            f"{base}/api/predict", data=body, headers={"Content-Type": content_type}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            result = json.load(response)
        assert result["label"] == "clownfish" and 0.5 < result["confidence"] < 1.0

        bad, content_type = multipart("image", "x.txt", b"not an image", "text/plain")
        request = urllib.request.Request(
            f"{base}/api/predict", data=bad, headers={"Content-Type": content_type}, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        assert info.value.code == 415 and "error" in json.load(info.value)


def test_model_page_reports_the_verdicts_measured_at_training(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = app.extensions["predictor"]
    report = {
        "val": {"images": 821.0, "species": 0.951, "not_sure": 0.045, "unknown_species": 0.002, "not_a_fish": 0.001,
                "top1": 0.962, "confidently_wrong": 0.013},
        "unknown_photos": {"images": 153.0, "species": 0.085, "not_sure": 0.765, "unknown_species": 0.124,
                           "not_a_fish": 0.026},
    }  # fmt: skip
    from model.checkpoint import EvaluationRecord

    evaluation = dataclasses.replace(
        predictor.card.evaluation, open_set=EvaluationRecord.from_dict({"open_set": report}).open_set
    )
    monkeypatch.setattr(predictor, "card", dataclasses.replace(predictor.card, evaluation=evaluation))
    answer_with_verdicts(monkeypatch, app, ["species"], subject="fish")
    html = client.get("/model").get_data(as_text=True)
    table = re.sub(r"\s+", " ", html.split('id="open-set-table"')[1].split("</table>")[0])
    rows = re.findall(r'<th scope="row">([^<]+)</th>((?: ?<td class="num">[^<]*</td>)+)', table)
    assert [name for name, _ in rows] == [
        "Validation photos (video crops of its species)",
        "Photographs of species it does not know",
    ]
    assert re.findall(r">([^<]*)</td>", rows[0][1]) == ["821", "95.1%", "4.5%", "0.2%", "0.1%", "96.2%", "1.3%"]
    assert re.findall(r">([^<]*)</td>", rows[1][1]) == ["153", "8.5%", "76.5%", "12.4%", "2.6%", "–", "–"]
    assert "Not a fish</th>" in table


@pytest.mark.slow  # starts gunicorn
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "is an empty file (0 bytes)"),
        (lambda p: p.mkdir(), "is a directory, not a checkpoint file"),
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("not a checkpoint"), "is not a PyTorch checkpoint"),
    ],
)
def test_gunicorn_refuses_a_bad_model_path_in_one_line(tmp_path: Path, make: Any, reason: str) -> None:
    """The master checks FISH_MODEL_PATH before forking (without torch) and exits with one clear line."""
    from tools.loadtest import free_port

    path = tmp_path / "model.pt"
    make(path)
    env = {**os.environ, "FISH_MODEL_PATH": str(path), "BIND": f"127.0.0.1:{free_port()}"}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"cannot serve FISH_MODEL_PATH={path}: it {reason}" in output
    assert "Traceback" not in output and "Booting worker" not in output


@pytest.mark.parametrize(
    "data",
    [
        {**{f"field{i}": "x" for i in range(1500)}, "image": (io.BytesIO(b"abc"), "a.jpg")},  # too many parts
        {"note": "x" * 600_000, "image": (io.BytesIO(b"abc"), "a.jpg")},  # a text field over 500 kB
    ],
    ids=["too-many-fields", "long-text-field"],
)
def test_form_limits_say_so_rather_than_blaming_the_body_size(client: FlaskClient, data: dict) -> None:
    """Werkzeug refuses both with the same 413 as an oversized body; the message must give the real reason."""
    response = client.post("/api/predict", data=data)
    assert response.status_code == 413
    message = response.get_json()["error"]
    assert message.startswith("the form has too many fields or too long a text field") and "MiB" not in message
    page = client.post("/", data={**data, "image": (io.BytesIO(b"abc"), "a.jpg")})
    assert page.status_code == 413 and "too many fields" in page.get_data(as_text=True)
