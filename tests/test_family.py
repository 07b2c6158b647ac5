"""The family answer: the taxonomy a checkpoint records, the family of a prediction, what the page and the API say
of it, and choosing its threshold on photo folders (``training.family``)."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.checkpoint import ClassNames, load_checkpoint
from model.predictor import Predictor
from model.results import ClassScore, Prediction
from model.taxonomy import Families, FamilyScore
from tests.helpers import COLOURS, encode, make_app, synthetic_image
from training import family as family_step
from training.data import Sample, read_class_info

CLASS_NAMES = sorted(COLOURS)  # blue_tang, clownfish, green_chromis
#: blue tangs are surgeonfish; the tiny model's clownfish and green chromis both damselfish.
TAXONOMY = {
    "blue_tang": {"common_name": "Blue tang", "family": "Acanthuridae", "family_common_name": "surgeonfish"},
    "clownfish": {"common_name": "Clownfish", "genus": "Amphiprion", "family": "Pomacentridae",
                  "family_common_name": "damselfish"},
    "green_chromis": {"common_name": "Green chromis", "family": "Pomacentridae", "family_common_name": "damselfish"},
}  # fmt: skip


def _families() -> Families:
    families = Families.of(CLASS_NAMES, {k: ClassNames.from_dict(v) for k, v in TAXONOMY.items()})
    assert families is not None
    return families


def test_a_family_is_the_sum_of_its_species_probabilities() -> None:
    families = _families()
    assert families.names == ["Acanthuridae", "Pomacentridae"] and families.members.tolist() == [0, 1, 1]
    assert families.common_names == ["surgeonfish", "damselfish"] and families.species(1) == 2
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]])
    torch.testing.assert_close(families.probabilities(probs), torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    damsel, tang = families.best(probs[[0]] + torch.tensor([[-0.1, 0.1, 0.0]]), 0.6), families.best(probs[[1]], 0.95)
    assert damsel == [FamilyScore("Pomacentridae", "damselfish", pytest.approx(0.6), True, 2)]
    assert tang[0].name == "Acanthuridae" and not tang[0].likely  # 0.9 < 0.95
    assert Families.of(CLASS_NAMES, {name: ClassNames(common_name="x") for name in CLASS_NAMES}) is None


def test_class_info_reads_the_taxonomy_columns(tmp_path: Path) -> None:
    path = tmp_path / "species.csv"
    path.write_text(
        "class,common_name,genus,family,family_common_name\nclownfish,Clownfish,Amphiprion,Pomacentridae,\n"
    )
    info = read_class_info(path, CLASS_NAMES)
    assert info == {"clownfish": {"common_name": "Clownfish", "genus": "Amphiprion", "family": "Pomacentridae"}}


def _prediction(verdict: str, family: FamilyScore | None) -> Prediction:
    top = [ClassScore("clownfish", 0.5, "Clownfish"), ClassScore("green_chromis", 0.3, "Green chromis")]
    return Prediction(top_k=top, threshold=0.9, verdict=verdict, family=family)


def test_the_page_names_a_likely_family_when_the_species_is_unsure() -> None:
    from app.web import verdict_headline

    damsel = FamilyScore("Pomacentridae", "damselfish", 0.95, True, 6)
    assert verdict_headline(_prediction("not_sure", damsel), "fish") == (
        "Not sure of the species: a damselfish (Pomacentridae), maybe Clownfish or Green chromis"
    )
    assert verdict_headline(_prediction("unknown_species", damsel), "fish") == (
        "A damselfish (Pomacentridae), but probably none of the 6 damselfish species this model knows"
    )
    lone = FamilyScore("Acanthuridae", None, 0.97, True, 1)
    assert verdict_headline(_prediction("unknown_species", lone), "fish") == (
        "One of the Acanthuridae, but probably not the one species of that family this model knows"
    )
    unlikely = dataclasses.replace(damsel, likely=False)
    assert verdict_headline(_prediction("not_sure", unlikely), "fish") == "Not sure: maybe Clownfish or Green chromis"
    assert verdict_headline(_prediction("unknown_species", None), "fish") == "Probably a fish this model does not know"
    assert verdict_headline(_prediction("species", damsel), "fish") == "Clownfish"  # the species says it all
    assert verdict_headline(_prediction("not_a_fish", damsel), "fish") == "This does not look like a fish"


def test_predictions_carry_the_family_and_the_api_and_csv_give_it(checkpoint_factory: Callable[..., Path]) -> None:
    path = checkpoint_factory(
        "family.pt", class_info=TAXONOMY, serving={"confidence_threshold": 0.99, "family_threshold": 0.5}
    )
    predictor = Predictor.from_checkpoint(path)
    assert predictor.summary()["verdict_thresholds"]["family"] == 0.5
    [orange] = predictor.predict([synthetic_image(COLOURS["clownfish"])])
    assert orange.verdict == "not_sure"  # the tiny model is about 86 % sure: below 0.99
    assert orange.family is not None and orange.family.name == "Pomacentridae" and orange.family.likely
    probs = predictor.probabilities(predictor.preprocess([synthetic_image(COLOURS["clownfish"])]))
    assert orange.family.probability == pytest.approx(float(probs[0, 1] + probs[0, 2]), abs=1e-6)

    client = make_app(MODEL_PATH=str(path)).test_client()
    photo = encode(synthetic_image(COLOURS["clownfish"]))
    answer = client.post("/api/predict", data={"image": (io.BytesIO(photo), "o.jpg")}).get_json()
    # the app serves at its own precision (bf16 where the CPU has it): the same family, nearly the same probability
    expected = {"name": "Pomacentridae", "common_name": "damselfish", "likely": True, "species": 2}
    assert answer["family"] == {**expected, "probability": pytest.approx(orange.family.probability, abs=0.02)}
    assert answer["model"]["verdict_thresholds"]["family"] == 0.5
    page = client.post("/", data={"image": (io.BytesIO(photo), "o.jpg")}).get_data(as_text=True)
    assert "Not sure of the species: a damselfish (Pomacentridae), maybe Clownfish or" in page
    two = [(io.BytesIO(photo), "o.jpg"), (io.BytesIO(photo), "p.jpg")]  # a results table, with its CSV link
    rows = list(csv.DictReader(io.StringIO(_csv_of(client.post("/", data={"image": two}).get_data(as_text=True)))))
    assert rows[0]["family"] == "Pomacentridae" and float(rows[0]["family_probability"]) > 0.5
    model_page = re.sub(r"\s+", " ", client.get("/model").get_data(as_text=True))
    assert "The family, when the species is unsure, from</dt> <dd>50.0% family probability" in model_page
    assert '<td>damselfish <i lang="la">Pomacentridae</i></td>' in model_page


def _csv_of(page: str) -> str:
    """The CSV of the page's no-JavaScript download link."""
    from urllib.parse import unquote

    link = re.search(r'href="data:text/csv;charset=utf-8,([^"]+)"', page)
    assert link, "no CSV download link"
    return unquote(link.group(1).replace("&amp;", "&"))


def test_a_model_without_taxonomy_answers_family_null(client) -> None:  # noqa: ANN001 - the conftest fixture
    photo = encode(synthetic_image(COLOURS["clownfish"]))
    answer = client.post("/api/predict", data={"image": (io.BytesIO(photo), "o.jpg")}).get_json()
    assert answer["family"] is None and "family" not in answer["model"]["verdict_thresholds"]


def test_photo_folders_say_what_family_each_photo_shows() -> None:
    samples = [
        Sample(p, -1)
        for p in ("clownfish/a.jpg", "Pomacentridae/b.jpg", "Serranidae/c.jpg", "pink_skunk/d.jpg", "e.jpg")
    ]
    truths = family_step.true_families(samples, CLASS_NAMES, _families())
    assert truths == ["Pomacentridae", "Pomacentridae", family_step.OUTSIDE, None, None]
    named = ["Pomacentridae", None, "Acanthuridae", "Pomacentridae", None]
    counts = family_step.family_counts(named, truths)
    assert counts["family_images"] == 3 and counts["family_right"] == pytest.approx(1 / 3)
    assert counts["family_wrong"] == pytest.approx(1 / 3)  # a surgeonfish named for a grouper
    assert counts["family_right_ours"] == 0.5 and counts["family_wrong_ours"] == 0.0


def _photos(root: Path) -> Path:
    """Photo folders like the dev sets: clownfish (a known species), a damselfish family folder and a grouper
    family (outside the model's families) whose photos are orange too."""
    for folder, colour, count in (("clownfish", "clownfish", 6), ("Pomacentridae", "green_chromis", 4),
                                  ("Serranidae", "clownfish", 4)):  # fmt: skip
        (root / folder).mkdir(parents=True)
        for seed in range(count):
            synthetic_image(COLOURS[colour], seed=100 + seed).save(root / folder / f"{seed}.jpg")
    return root


def test_the_family_command_gives_a_release_its_taxonomy_and_threshold(
    checkpoint_factory: Callable[..., Path], tmp_path: Path
) -> None:
    release = checkpoint_factory("plain.pt", serving={"confidence_threshold": 0.99})
    species = tmp_path / "species.csv"
    with species.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "common_name", "family", "family_common_name"])
        writer.writerows([name, t["common_name"], t["family"], t["family_common_name"]] for name, t in TAXONOMY.items())
    photos, out = _photos(tmp_path / "photos"), tmp_path / "family.pt"
    args = [str(release), "--class-info", str(species), "--open-set-photos", str(photos), "--out", str(out)]
    assert family_step.main([*args, "--workers", "0"]) == 0

    ckpt = load_checkpoint(out)
    assert ckpt.class_info["clownfish"].family == "Pomacentridae"
    threshold = ckpt.serving.family_threshold if ckpt.serving else None
    # every photo is answered 'not sure'; the orange groupers are named damselfish at any threshold their
    # probability reaches, and they are all of the unknown photos of known family... but none of the model's
    # families: only the known clownfish (all right) and the damselfish folder constrain the threshold
    assert threshold is not None and threshold == family_step.THRESHOLD_GRID[0]
    report = ckpt.evaluation.open_set
    assert report["known_photos"].family_right == 1.0 and report["known_photos"].family_wrong == 0.0
    unknown = ckpt.metrics["open_set"]["unknown_photos"]
    assert unknown["family_right_ours"] == 1.0 and unknown["family_wrong"] == pytest.approx(0.5)
    assert Predictor.from_checkpoint(out).family_threshold == threshold

    assert family_step.main([str(release), "--class-info", str(species), "--open-set-photos",
                             str(tmp_path / "none"), "--out", str(out)]) == 2  # fmt: skip


def test_the_threshold_rises_until_few_enough_families_are_wrong(
    checkpoint_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """Blue-tang photos filed under the damselfish: each damselfish answer is wrong, so the threshold rises above
    every such photo's damselfish probability (or to 1, never naming the family)."""
    path = checkpoint_factory("family.pt", class_info=TAXONOMY, serving={"confidence_threshold": 0.99})
    predictor = Predictor.from_checkpoint(path)
    root = tmp_path / "photos"
    (root / "Pomacentridae").mkdir(parents=True)
    for seed in range(5):
        Image.blend(synthetic_image(COLOURS["clownfish"], seed=seed), synthetic_image(COLOURS["blue_tang"]), 0.3).save(
            root / "Pomacentridae" / f"{seed}.jpg"
        )
    (root / "Acanthuridae").mkdir()
    for seed in range(5):
        synthetic_image(COLOURS["clownfish"], seed=seed).save(root / "Acanthuridae" / f"{seed}.jpg")
    sets = family_step.family_sets(predictor, [str(root)], workers=0)
    threshold, reports = family_step.choose_family_threshold(predictor, sets)
    damsel = predictor.families.probabilities(predictor.calibrated(sets["unknown_photos"][0].logits))[:, 1]
    wrong = damsel[5:]  # the orange photos filed as surgeonfish, in file order after the damselfish folder
    assert threshold > float(wrong.max()) or threshold == 1.0
    assert reports["unknown_photos"]["family_wrong_ours"] <= family_step.MAX_WRONG_UNKNOWN


def test_the_release_step_chooses_the_family_threshold_when_the_classes_have_families(
    checkpoint_factory: Callable[..., Path], tmp_path: Path
) -> None:
    photos = str(_photos(tmp_path / "photos"))
    plain = load_checkpoint(checkpoint_factory("plain.pt", serving={"confidence_threshold": 0.99}))
    assert family_step.choose_for_release(plain, [photos], {}) is None  # no taxonomy: nothing to choose
    release = load_checkpoint(
        checkpoint_factory("family.pt", class_info=TAXONOMY, serving={"confidence_threshold": 0.99})
    )
    chosen = family_step.choose_for_release(release, [photos], {})
    assert chosen is not None
    threshold, reports = chosen
    assert threshold in family_step.THRESHOLD_GRID and set(reports) == {"known_photos", "unknown_photos"}
    assert reports["known_photos"]["family_images"] == 6 and reports["unknown_photos"]["family_images"] == 8
