"""Crops: ``x,y,w,h`` fractions of the upright photo, parsed and checked once, applied in the decoder, echoed in the
answer; the API, the page and predict.py take them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image

from model.crop import Crop
from model.decoding import decode_image
from model.errors import ImageError
from tests.helpers import COLOURS, encode, synthetic_image


def two_fish(size: tuple[int, int] = (400, 200)) -> Image.Image:
    """A photo whose left half is a clownfish's colour and right half a blue tang's."""
    image = synthetic_image(COLOURS["clownfish"], size)
    image.paste(synthetic_image(COLOURS["blue_tang"], (size[0] // 2, size[1])), (size[0] // 2, 0))
    return image


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.1,0.2,0.3", "four numbers"),
        ("a,b,c,d", "must be numbers"),
        ("0,0,nan,1", "finite"),
        ("0.5,0.5,0,0.2", "empty"),
        ("-0.1,0,0.5,0.5", "outside the image"),
        ("0.6,0,0.5,0.5", "outside the image"),
    ],
)
def test_malformed_crops_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Crop.parse(text)


def test_a_crop_is_a_box_of_at_least_one_pixel() -> None:
    assert Crop.parse("0.25,0.5,0.5,0.5").box((400, 200)) == (100, 100, 300, 200)
    assert Crop.parse("0,0,1,1.0000001") == Crop(0, 0, 1, 1)  # a client's rounding is forgiven
    assert Crop(0.999, 0.999, 1e-9, 1e-9).box((10, 10)) == (9, 9, 10, 10)


def test_the_decoder_crops_the_upright_photo_at_the_resolution_the_model_needs() -> None:
    photo = encode(two_fish((4000, 2000)), "JPEG", quality=90)
    left = decode_image(photo, reduce_to=64, crop=Crop(0, 0, 0.5, 1))
    # the crop is 2000 x 2000: decoded at 1/8 it would be 250 px, at least the 64 px asked for the crop
    assert min(left.size) >= 64 and left.size[0] == left.size[1]
    assert left.getpixel((left.width // 2, left.height // 2))[0] > 180  # the orange half, not the blue one
    # EXIF orientation 6 (turned 90 degrees): the crop is of the upright photo, whose top half is orange
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = encode(two_fish((400, 200)).rotate(90, expand=True), "JPEG", exif=exif.tobytes())
    upright = decode_image(turned)
    assert upright.size == (400, 200)
    assert decode_image(turned, crop=Crop(0, 0, 0.5, 1)).getpixel((100, 100))[0] > 180
    with pytest.raises(ImageError, match="too narrow") as refused:
        # a 4000 x 2 crop: its short side resized to 100 px would make 200,000 x 100 pixels, over the 10 M
        decode_image(photo, max_pixels=10_000_000, resize_short_side=100, crop=Crop(0, 0, 1, 0.001))
    assert refused.value.status == 400


def test_the_api_answers_for_the_crop_and_echoes_it(client: FlaskClient) -> None:
    photo = encode(two_fish())

    def ask(*crops: str, images: int = 1) -> tuple[int, dict]:
        data = {"image": [(io.BytesIO(photo), f"{i}.jpg") for i in range(images)], "crop": list(crops)}
        response = client.post("/api/predict", data=data)
        return response.status_code, response.get_json()

    status, left = ask("0,0,0.5,1")
    assert status == 200 and left["label"] == "clownfish" and left["crop"] == [0.0, 0.0, 0.5, 1.0]
    status, right = ask("0.5,0,0.5,1")
    assert status == 200 and right["label"] == "blue_tang"
    status, whole = ask()
    assert status == 200 and whole["crop"] is None
    status, both = ask("0,0,0.5,1", "", images=2)  # one per image, an empty one for the whole photo
    assert status == 200 and [p["crop"] for p in both["predictions"]] == [[0.0, 0.0, 0.5, 1.0], None]
    status, error = ask("0,0,0.5,1", images=2)
    assert status == 400 and error["error"].startswith("crop: give one per image")
    status, error = ask("0,0,0.5,1", "0.9,0,0.5,1", images=2)
    assert status == 400 and error["error"].startswith("crop 2 of 2: the crop reaches outside the image")
    status, error = ask("0,0,0,0")
    assert status == 400 and "crop: the crop is empty" in error["error"]


def test_the_page_takes_the_crop_without_javascript(client: FlaskClient) -> None:
    page = client.post("/", data={"image": (io.BytesIO(encode(two_fish())), "f.jpg"), "crop": "0.5,0,0.5,1"})
    assert page.status_code == 200 and "Blue tang" in page.get_data(as_text=True)
    bad = client.post("/", data={"image": (io.BytesIO(encode(two_fish())), "f.jpg"), "crop": "1,1,1,1"})
    assert bad.status_code == 400 and "the crop reaches outside the image" in bad.get_data(as_text=True)


def test_predict_py_takes_crops_from_a_csv(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from model.batch_predict import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        two_fish().save(folder / name)
    crops = tmp_path / "crops.csv"
    crops.write_text('path,crop\na.jpg,"0.5,0,0.5,1"\n')
    output = tmp_path / "out.csv"
    args = [str(folder), "--checkpoint", str(tiny_checkpoint), "--output", str(output), "--workers", "1"]
    args += ["--backend", "torch"]  # not "auto" (OpenVINO converts and times the model: tests/test_model.py)
    assert main([*args, "--crops", str(crops)]) == 0
    rows = {row["path"]: row for row in csv.DictReader(output.open())}
    assert rows["a.jpg"]["label"] == "blue_tang" and rows["a.jpg"]["crop"] == "0.5000,0.0000,0.5000,1.0000"
    assert rows["b.jpg"]["crop"] == ""
    crops.write_text('path,crop\nc.jpg,"0,0,1,1"\n')
    assert main([*args, "--crops", str(crops)]) == 2  # not an image under the folder
    crops.write_text(json.dumps({"not": "a csv"}))
    assert main([*args, "--crops", str(crops)]) == 2


def test_explain_adds_where_the_model_looked_for_one_image(client: FlaskClient) -> None:
    """``explain=true`` adds a PNG heat map of the network's input size over the (cropped) photo; at most one per
    request; the page's checkbox shows it without JavaScript."""
    import base64

    photo = encode(two_fish())
    answer = client.post("/api/predict?explain=true", data={"image": (io.BytesIO(photo), "f.jpg")}).get_json()
    assert answer["explanation"].startswith("data:image/png;base64,")
    heat_map = Image.open(io.BytesIO(base64.b64decode(answer["explanation"].split(",", 1)[1])))
    assert heat_map.format == "PNG" and heat_map.size == (32, 32)  # the tiny model's input
    plain = client.post("/api/predict", data={"image": (io.BytesIO(photo), "f.jpg")}).get_json()
    assert plain["explanation"] is None and plain["label"] == answer["label"]

    two = {"image": [(io.BytesIO(photo), "a.jpg"), (io.BytesIO(photo), "b.jpg")], "explain": "true"}
    refused = client.post("/api/predict", data=two)
    assert refused.status_code == 400 and "at most one explanation per request" in refused.get_json()["error"]
    odd = client.post("/api/predict", data={"image": (io.BytesIO(photo), "f.jpg"), "explain": "maybe"})
    assert odd.status_code == 400 and odd.get_json()["error"] == "explain must be true or false, got 'maybe'"

    page = client.post("/", data={"image": (io.BytesIO(photo), "f.jpg"), "explain": "true", "crop": "0.5,0,0.5,1"})
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and '<figure class="explanation"><img class="thumbnail" src="data:image/png' in html
    assert "Where it looked for Blue tang" in html
