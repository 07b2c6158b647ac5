"""The four verdicts: the rule, its scores, the thresholds train.py chooses, and what the predictor answers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from model.checkpoint import load_checkpoint
from model.imagenet_hierarchy import subject_classes_for
from model.network import build_model
from model.open_set import (
    ClassGaussians,
    OpenSetNetwork,
    OpenSetRule,
    OpenSetScores,
    distillation_loss,
    lowest_confidence_threshold,
    lowest_threshold,
    subject_classes,
    subject_score,
)
from model.predictor import Predictor
from tests.helpers import COLOURS, make_imagefolder, synthetic_image


@pytest.mark.parametrize(
    ("confidence", "subject", "novelty", "verdict"),
    [
        (0.9, 0.8, 1.0, "species"),
        (0.3, 0.8, 1.0, "not_sure"),
        (0.9, 0.8, 50.0, "unknown_species"),
        (0.9, 0.01, 1.0, "not_a_fish"),
        (0.3, 0.01, 50.0, "not_a_fish"),  # not the subject wins over every other answer
        (0.3, 0.8, 50.0, "unknown_species"),
        (0.9, None, None, "species"),  # a model without the scores skips their checks
    ],
)
def test_rule_checks_subject_then_novelty_then_confidence(
    confidence: float, subject: float | None, novelty: float | None, verdict: str
) -> None:
    rule = OpenSetRule(confidence_threshold=0.5, subject_threshold=0.1, novelty_threshold=10.0, subject="fish")
    assert rule.verdict(confidence, subject, novelty) == verdict


@pytest.mark.parametrize(
    ("subject", "novelty", "taxon", "other", "verdict"),
    [
        (0.01, 5.0, 0.5, 0.1, "not_a_fish"),  # nothing like the training data: whatever the novelty
        (0.5, 5.0, 0.01, 0.0, "not_sure"),  # no fish taxon, but as close to the training images as they are
        (0.5, 50.0, 0.01, 0.0, "not_a_fish"),  # no fish taxon and unlike the training images
        (0.5, 50.0, 0.3, 0.95, "not_a_fish"),  # another living thing (a sea anemone) far more than a fish
        (0.5, 50.0, 0.3, 0.6, "unknown_species"),  # fish enough: a fish it does not know
        (0.5, 5.0, 0.3, 0.95, "not_sure"),
        (0.5, 50.0, 0.3, None, "unknown_species"),  # no other-organism score: the contrast test is skipped
        (0.5, 50.0, None, None, "unknown_species"),  # a model without the hierarchy
    ],
)
def test_hierarchy_test_judges_only_pictures_unlike_the_training_images(
    subject: float, novelty: float, taxon: float | None, other: float | None, verdict: str
) -> None:
    rule = OpenSetRule(0.5, 0.1, 10.0, "fish", taxon_threshold=0.1, contrast_threshold=0.5)
    assert rule.verdict(0.4, subject, novelty, taxon, other) == verdict
    # without the hierarchy's thresholds the taxon and other scores do nothing
    assert OpenSetRule(0.5, 0.1, 10.0, "fish").verdict(0.9, 0.5, 50.0, 0.0, 1.0) == "unknown_species"


def test_hierarchy_test_judges_from_its_own_novelty_gate_when_it_has_one() -> None:
    rule = OpenSetRule(0.5, 0.1, 10.0, "fish", taxon_threshold=0.1, contrast_threshold=0.5)
    gated = dataclasses.replace(rule, hierarchy_novelty_threshold=4.0)
    # a sea anemone as close to the training images as novelty 5: judged by the lower gate only
    assert rule.verdict(0.9, 0.5, 5.0, 0.3, 0.95) == "species"
    assert gated.verdict(0.9, 0.5, 5.0, 0.3, 0.95) == "not_a_fish"
    assert gated.verdict(0.9, 0.5, 3.0, 0.3, 0.95) == "species"  # below the gate: not judged
    assert gated.verdict(0.9, 0.5, 5.0, 0.3, 0.6) == "species"  # judged, and fish enough; "unknown" only above 10
    assert rule.thresholds()["not_a_fish_novelty"] == 10.0 and gated.thresholds()["not_a_fish_novelty"] == 4.0
    assert OpenSetRule(0.5, 0.1, 10.0).thresholds()["not_a_fish_novelty"] is None  # no hierarchy test


@pytest.mark.parametrize(
    ("confidence", "max_logit", "verdict"),
    [
        (0.9, 5.0, "species"),
        (0.9, 2.0, "not_sure"),  # confident among its species, but a weak match to any of them
        (0.3, 5.0, "not_sure"),  # a strong match, to two species at once
        (0.9, None, "species"),  # no logit given (a corrections memory's own head): the check is skipped
    ],
)
def test_logit_threshold_is_a_second_not_sure_check(confidence: float, max_logit: float | None, verdict: str) -> None:
    rule = OpenSetRule(0.5, 0.1, 10.0, "fish", logit_threshold=3.0)
    assert rule.verdict(confidence, 0.8, 1.0, max_logit=max_logit) == verdict
    assert rule.verdict(confidence, 0.01, 1.0, max_logit=max_logit) == "not_a_fish"  # the other checks come first
    assert rule.thresholds()["not_sure_logit"] == 3.0


def test_a_serving_record_holds_every_threshold_of_a_rule() -> None:
    from model.checkpoint import ServingRecord

    rule = OpenSetRule(
        0.6, 0.1, 10.0, "fish", 0.05, 0.5, hierarchy_novelty_threshold=4.0, logit_threshold=3.0,
        unknown_confidence_threshold=0.9,
    )  # fmt: skip
    record = ServingRecord(temperature=0.5).with_rule(rule)
    assert record.confidence_threshold == 0.6 and record.temperature == 0.5
    assert record.rule() == dataclasses.replace(rule, confidence_threshold=0.0)  # the predictor sets that one
    assert ServingRecord.from_dict(record.to_dict()).rule() == record.rule()  # and the file keeps them all
    # overrides win where given
    assert record.rule(novelty_threshold=20.0, logit_threshold=-1.0).novelty_threshold == 20.0
    assert record.rule(logit_threshold=-1.0).logit_threshold == -1.0 and record.rule().subject_threshold == 0.1


def test_hierarchy_gives_the_fish_classes_and_the_other_living_things() -> None:
    fish = subject_classes_for("Fish")
    assert fish is not None and fish.synset == "n02512053"
    assert len(fish.subject) == 16 and {0, 2, 391, 393, 397} <= set(fish.subject)  # tench, white shark, ..., puffer
    # jellyfish, sea anemone, brain coral, starfish, loggerhead, daisy and (a person) scuba diver: alive and not
    # fish; coral reef, seashore and sports cars are not organisms at all
    assert {107, 108, 109, 327, 33, 985, 983} <= set(fish.other_organisms)
    assert not {973, 978, 817} & set(fish.other_organisms) and not set(fish.subject) & set(fish.other_organisms)
    assert len(subject_classes_for("bird").subject) == 59
    assert subject_classes_for("car") is None  # not a living thing: no contrast with the other organisms
    assert (
        subject_classes_for("unicorn") is None and subject_classes_for("") is None and subject_classes_for(None) is None
    )


def _scores(subject: list[float], novelty: list[float], taxon: list[float], other: list[float]) -> OpenSetScores:
    return OpenSetScores(*(torch.tensor(v, dtype=torch.float32) for v in (subject, novelty, taxon, other)))


def test_contrast_rule_refuses_the_most_other_pictures_within_the_subject_budget() -> None:
    from training.open_set import choose_contrast_rule

    rule = OpenSetRule(0.0, subject_threshold=0.2, novelty_threshold=10.0, subject="fish")
    # fish: familiar crops (novelty 1) with no fish taxon at all, novel photos with some; one the subject-score test
    # refuses already (subject 0.1), which the hierarchy's budget does not count
    fish = _scores(
        [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1],
        [1, 1, 20, 20, 20, 20, 20],
        [0.0, 0.0, 0.3, 0.4, 0.5, 0.6, 0.0],
        [0.9, 0.9, 0.5, 0.3, 0.2, 0.1, 0.0],
    )
    # sea life without fish: novel, mostly other organisms; one looks like a fish
    sea_life = _scores([0.9] * 4, [30] * 4, [0.05, 0.1, 0.1, 0.6], [0.9, 0.6, 0.85, 0.1])
    taxon, contrast = choose_contrast_rule([fish], [sea_life], rule, rejection=0.0)
    chosen = dataclasses.replace(rule, taxon_threshold=taxon, contrast_threshold=contrast)
    assert [chosen.not_subject(*fish.row(i)) for i in range(7)] == [False] * 6 + [True]  # only the one refused before
    assert [chosen.not_subject(*sea_life.row(i)) for i in range(4)] == [True, True, True, False]
    # allowed to refuse one fish in seven, it refuses the same sea life (no more can be had) and no fish more
    assert choose_contrast_rule([fish], [sea_life], rule, rejection=0.15) == (taxon, contrast)
    # no other pictures: the highest taxon threshold that passes, the contrast test off
    taxon_only, off = choose_contrast_rule([fish], [], rule, rejection=0.0)
    assert off == 1.0 and 0.0 < taxon_only <= 0.3
    # every pair refuses too many (all fish novel without fish taxon): the test never fires
    hopeless = _scores([0.9, 0.9], [20, 20], [0.0, 0.0], [1.0, 1.0])
    assert choose_contrast_rule([hopeless], [sea_life], rule, rejection=0.0) == (0.0, 1.0)


def _imagenet_logits(n: int, fish: float, anemone: float) -> torch.Tensor:
    """``(n, 1000)`` logits whose softmax puts ``fish`` on the tench (0), ``anemone`` on the sea anemone (108) and
    the rest evenly on the other classes."""
    probabilities = torch.full((n, 1000), (1.0 - fish - anemone) / 998)
    probabilities[:, 0], probabilities[:, 108] = fish, anemone
    return probabilities.log()


def test_release_lowers_the_hierarchy_gate_where_that_refuses_more_sea_life() -> None:
    """Sea anemones as unlike the training images as a middling photo of a known fish: the "unknown species"
    threshold does not judge them, a gate at the known photos' lower novelty quantiles does."""
    from training.evaluation import Outputs
    from training.open_set import choose_open_set, hierarchy_gates, refused_share

    gen = torch.Generator().manual_seed(0)
    means = torch.eye(4) * 10

    def outputs(features: torch.Tensor, targets: torch.Tensor, fish: float, anemone: float) -> Outputs:
        logits = torch.nn.functional.one_hot(targets.clamp(min=0), 4)[:, :3].float() * 5
        return Outputs(
            logits=logits,
            targets=targets,
            features=features,
            imagenet_logits=_imagenet_logits(len(targets), fish, anemone),
        )

    targets = torch.arange(90) % 3
    train_set = outputs(means[targets] + torch.randn(90, 4, generator=gen), targets, 0.5, 0.4)
    val = outputs(means[targets[:30]] + torch.randn(30, 4, generator=gen), targets[:30], 0.5, 0.4)
    # 20 photos of class 0 ever farther from its mean (novelty about r^2, r = 1..20), along the fourth axis
    radius = torch.arange(1, 21, dtype=torch.float32)[:, None]
    photos = outputs(means[0] + radius * torch.eye(4)[3], torch.zeros(20, dtype=torch.long), 0.6, 0.35)
    sea_life = outputs(means[0] + 12 * torch.eye(4)[3].repeat(10, 1), torch.full((10,), -1), 0.03, 0.9)
    calibration = {"val": val, "known_photos": photos}
    fit = choose_open_set(
        train_set,
        calibration,
        temperature=1.0,
        confidence_threshold=0.0,
        novelty_rejection=0.1,
        subject="fish",
        hierarchy=subject_classes_for("fish"),
        not_subject=[sea_life],
    )
    rule = fit.rule
    assert 0 in fit.subject_classes and 108 in fit.subject_classes  # the sea anemone passes the subject score
    novelty = fit.scores(sea_life).novelty
    assert rule.judged_above < novelty.min() and novelty.max() < rule.novelty_threshold  # not "unknown species"
    assert rule.judged_above in hierarchy_gates(fit, calibration)
    assert refused_share([fit.scores(sea_life)], rule) == 1.0
    assert refused_share([fit.scores(photos)], rule) == 0.0 and refused_share([fit.scores(val)], rule) == 0.0
    # with the gate at the "unknown species" threshold, none of them would be refused
    old = dataclasses.replace(rule, hierarchy_novelty_threshold=None)
    assert refused_share([fit.scores(sea_life)], old) == 0.0


def test_open_set_samples_name_one_set_per_folder(tmp_path: Path) -> None:
    from model.open_set import set_kind
    from training.photo_sets import open_set_samples

    clownfish = _photos(tmp_path / "clownfish_photos")
    reef = tmp_path / "reef_photos" / "fish"
    for family in ("wrasses", "groupers"):
        (reef / family).mkdir(parents=True)
        synthetic_image((20, 90, 200), seed=1).save(reef / family / "a.jpg")
    flowers, sea_life = tmp_path / "flowers", tmp_path / "reef_photos" / "not_fish"
    for folder in (flowers, sea_life):
        folder.mkdir(parents=True)
        synthetic_image((200, 90, 20), seed=2).save(folder / "b.png")
    sets = open_set_samples([clownfish, reef], [flowers, sea_life], ["clownfish", "damselfish"])
    assert {name: len(rows) for name, (_, rows) in sets.items()} == {
        "known_photos": 4,
        "unknown_photos": 4,
        "unknown_photos:reef_photos/fish": 2,
        "not_subject": 1,
        "not_subject:reef_photos/not_fish": 1,
    }
    assert set_kind("unknown_photos:reef_photos/fish") == "unknown_photos" and set_kind("val") == "val"
    assert open_set_samples(str(clownfish), None, ["clownfish"]).keys() == {"known_photos", "unknown_photos"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"confidence_threshold": 1.5},
        {"subject_threshold": -0.1},
        {"novelty_threshold": float("inf")},
        {"contrast_threshold": 1.5},
        {"taxon_threshold": -0.5},
        {"hierarchy_novelty_threshold": -1.0},
        {"logit_threshold": float("nan")},
        {"unknown_confidence_threshold": 1.5},
    ],
)
def test_rule_rejects_thresholds_out_of_range(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="threshold"):
        OpenSetRule(**kwargs)


def test_subject_classes_cover_the_mean_probability() -> None:
    probs = torch.zeros(4, 1000)
    probs[:, 393] = 0.5  # anemone fish
    probs[:, 973] = 0.3  # coral reef
    probs[:, 5] = 0.2
    assert subject_classes(probs, coverage=0.5) == [393]
    assert subject_classes(probs, coverage=0.7) == [393, 973]
    assert subject_classes(probs, coverage=0.95) == [5, 393, 973]
    logits = torch.log(probs.clamp_min(1e-12))
    assert torch.allclose(subject_score(logits, [393, 973]), torch.full((4,), 0.8), atol=1e-4)
    with pytest.raises(ValueError, match="coverage"):
        subject_classes(probs, coverage=0.0)


def test_novelty_is_the_squared_mahalanobis_distance_to_the_nearest_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.cat([torch.randn(200, 4, generator=gen) + 5, torch.randn(200, 4, generator=gen) - 5])
    targets = torch.cat([torch.zeros(200), torch.ones(200)]).long()
    gaussians = ClassGaussians.fit(features, targets, 2)
    queries = torch.tensor([[5.0, 5, 5, 5], [-5.0, -5, -5, -5], [0.0, 0, 0, 0], [40.0, -40, 40, -40]])
    expected = (
        torch.stack([((queries - m) @ gaussians.precision * (queries - m)).sum(1) for m in gaussians.means], 1)
        .min(1)
        .values
    )
    novelty = gaussians.novelty(queries)
    assert torch.allclose(novelty, expected, rtol=1e-4, atol=1e-3)
    assert novelty[0] < 1 and novelty[1] < 1  # at a class mean
    assert 80 < novelty[2] < 120 and novelty[3] > 4000  # 10 and about 80 standard deviations away
    restored = ClassGaussians.from_dict({k: v.half() for k, v in gaussians.to_dict().items()})
    assert torch.allclose(restored.novelty(queries), novelty, rtol=0.05)
    with pytest.raises(ValueError, match="every class"):
        ClassGaussians.fit(features, targets, 3)


def test_open_set_network_gives_features_and_the_kept_imagenet_logits() -> None:
    model = build_model("tf_efficientnet_lite0", 3, "imagenet", keep_pretrained_head=True).eval()
    reference = build_model("tf_efficientnet_lite0", 1000, "imagenet").eval()
    reference.classifier.load_state_dict(model.pretrained_head.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        logits, features, imagenet_logits = OpenSetNetwork(model)(images)
        assert logits.shape == (2, 3) and features.shape == (2, 1280)
        assert torch.allclose(imagenet_logits, reference(images), atol=1e-4)  # the unmodified network's logits
    scratch = OpenSetNetwork(build_model("resnet18", 3, "none").eval())
    assert scratch(torch.randn(1, 3, 32, 32))[2].shape == (1, 0)


def test_distillation_loss_is_zero_for_the_teacher_and_positive_otherwise() -> None:
    teacher = torch.randn(4, 10)
    assert float(distillation_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(torch.randn(4, 10), teacher)) > 0.01


def _photos(root: Path) -> Path:
    """Real-photo stand-ins: a known class (clownfish, orange) and a species the model lacks (pink)."""
    for folder, colour, seed in (("clownfish", COLOURS["clownfish"], 500), ("pink_skunk", (240, 150, 200), 600)):
        (root / folder).mkdir(parents=True)
        for i in range(4):
            synthetic_image(colour, seed=seed + i).save(root / folder / f"{i}.jpg")
    return root


@pytest.mark.slow
def test_train_chooses_and_records_the_open_set_thresholds(tmp_path: Path) -> None:
    """train.py with ImageNet weights keeps the ImageNet head (with distillation), chooses the thresholds on
    validation and photo folders, records them in release.pt, and the predictor answers with them."""
    data = make_imagefolder(tmp_path / "data", per_class=8, groups_per_class=4)
    photos = _photos(tmp_path / "photos")
    not_subject = tmp_path / "not_fish"
    not_subject.mkdir()
    for i in range(3):
        synthetic_image((128, 128, 128), seed=700 + i).save(not_subject / f"{i}.png")
    args = [
        "--data", str(data), "--out", str(tmp_path / "run"), "--arch", "tf_efficientnet_lite0", "--weights",
        "imagenet", "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--workers", "0",
        "--group-pattern", r"fish_(\d+)_", "--val-fraction", "0.25", "--subject", "fish",
        "--open-set-photos", str(photos), "--not-subject", str(not_subject),
    ]  # fmt: skip
    assert train.main(args) == 0
    release = load_checkpoint(tmp_path / "run" / "release.pt").to_dict()
    serving = release["serving"]
    assert serving["subject"] == "fish"
    assert 0 <= serving["subject_threshold"] <= 1 and serving["novelty_threshold"] > 0
    assert release["open_set"]["subject_classes"] and release["open_set"]["gaussians"]["means"].shape == (3, 1280)
    assert "pretrained_head.weight" in release["model"]
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())["open_set"]
    assert set(report) == {"val", "known_photos", "unknown_photos", "not_subject"}
    assert report["known_photos"]["images"] == 4 and report["unknown_photos"]["images"] == 4
    assert report["not_subject"]["images"] == 3
    for rep in report.values():
        assert sum(rep[v] for v in ("species", "not_sure", "unknown_species", "not_a_fish")) == pytest.approx(1.0)

    predictor = Predictor.from_checkpoint(tmp_path / "run" / "release.pt")
    assert predictor.summary()["verdict_thresholds"] == {
        "not_sure": pytest.approx(serving["confidence_threshold"]),
        "unknown_species": pytest.approx(serving["novelty_threshold"]),
        "not_a_fish": pytest.approx(serving["subject_threshold"]),
        "not_a_fish_taxon": pytest.approx(serving["taxon_threshold"]),
        "not_a_fish_contrast": pytest.approx(serving["contrast_threshold"]),
        "not_a_fish_novelty": pytest.approx(serving["hierarchy_novelty_threshold"]),
        "not_sure_logit": serving.get("logit_threshold"),  # --max-unknown-named not given: no logit check
    }
    assert "logit_threshold" not in serving
    # "fish" is a WordNet noun: the hierarchy's 16 fish classes and the other organisms travel in the release
    fish = subject_classes_for("fish")
    assert release["open_set"]["hierarchy"] == {"taxon": fish.subject, "other": fish.other_organisms}
    prediction = predictor.predict([synthetic_image(COLOURS["clownfish"], seed=3)])[0]
    assert None not in (prediction.subject_score, prediction.novelty, prediction.taxon_score, prediction.other_score)
    assert prediction.verdict == predictor.open_set.verdict(
        prediction.confidence,
        prediction.subject_score,
        prediction.novelty,
        prediction.taxon_score,
        prediction.other_score,
    )
    # the thresholds are overridable: a novelty threshold of 0 calls every fish an unknown species
    predictor.open_set = OpenSetRule(predictor.confidence_threshold, 0.0, 0.0, "fish")
    assert predictor.predict([synthetic_image(COLOURS["clownfish"], seed=3)])[0].verdict == "unknown_species"

    # released again on the same weights with another option, nothing retrained
    from training.rerelease import main as rerelease

    again = tmp_path / "again"
    split = tmp_path / "run" / "split.csv"
    args = [str(tmp_path / "run" / "release.pt"), "--out", str(again), "--split-file", str(split)]
    assert rerelease([*args, "--max-unknown-named", "0.25", "--workers", "0"]) == 0
    second = load_checkpoint(again / "release.pt")
    assert second.config["max_unknown_named"] == 0.25 and second.serving.hierarchy_novelty_threshold is not None
    assert second.serving.temperature == pytest.approx(serving["temperature"], rel=1e-2)  # fp16 weights, re-read
    first = load_checkpoint(tmp_path / "run" / "release.pt")
    assert second.state_dict.keys() == first.state_dict.keys()
    assert all(torch.equal(second.state_dict[k], v) for k, v in first.state_dict.items())
    assert (again / "split.csv").read_text() == split.read_text()
    assert rerelease([str(tmp_path / "nothing.pt"), "--out", str(again), "--split-file", str(split)]) == 2


def test_a_model_from_scratch_has_no_subject_check(tiny_checkpoint: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    assert predictor.summary()["verdict_thresholds"]["not_a_fish"] is None
    prediction = predictor.predict([synthetic_image(COLOURS["clownfish"])])[0]
    assert prediction.subject_score is None and prediction.verdict in ("species", "not_sure")


def test_not_sure_threshold_rises_until_few_photos_are_named_wrongly() -> None:
    from training.open_set import lowest_confidence_threshold

    # 10 photos: confidences of the best class rise with i; the 4 most confident ones are counted (named wrongly)
    confidence = np.linspace(0.5, 0.95, 10)
    counted = np.arange(10) >= 6
    assert confidence[8] < lowest_confidence_threshold(confidence, counted, 0.1) <= confidence[9] + 1e-9  # one stays
    assert lowest_confidence_threshold(confidence, counted, 0.5) == 0.0  # 4 of 10 is within 50 %
    assert lowest_confidence_threshold(confidence, np.zeros(10, bool), 0.0) == 0.0  # none counted
    assert lowest_confidence_threshold(confidence, np.ones(10, bool), 0.0) > 0.95  # none may be named: above all


def test_unknown_photos_set_a_logit_threshold_when_asked() -> None:
    from training.evaluation import Outputs
    from training.open_set import choose_open_set, verdict_counts

    gen = torch.Generator().manual_seed(0)
    targets = torch.arange(60) % 3

    def outputs(n: int, known: bool) -> Outputs:
        return Outputs(
            logits=torch.randn(n, 3, generator=gen) * 3,
            targets=targets[:n] if known else torch.full((n,), -1),
            features=torch.randn(n, 4, generator=gen) * 0.1,  # all close to the class means: never "unknown"
            imagenet_logits=torch.zeros(n, 0),
        )

    train_set = Outputs(
        logits=torch.randn(60, 3), targets=targets, features=torch.randn(60, 4), imagenet_logits=torch.zeros(60, 0)
    )
    calibration = {"val": outputs(30, True), "unknown_photos": outputs(40, False)}
    kwargs = {"temperature": 1.0, "confidence_threshold": 0.0, "novelty_rejection": 0.0}
    unasked = choose_open_set(train_set, calibration, **kwargs).rule
    assert unasked.confidence_threshold == 0.0 and unasked.logit_threshold is None
    rule = choose_open_set(train_set, calibration, max_unknown_named=0.1, **kwargs).rule
    # the unknown photos set a threshold on the best class's logit, and leave the confidence threshold alone
    assert rule.confidence_threshold == 0.0 and rule.logit_threshold is not None
    unknown = calibration["unknown_photos"]
    verdicts = verdict_counts(
        torch.softmax(unknown.logits, 1),
        unknown.targets,
        OpenSetScores(None, None),
        rule,
        max_logits=unknown.logits.max(1).values,
    )
    assert verdicts["species"] == 0.1  # 4 of 40: the most allowed, and the lowest threshold that allows no more
    best = unknown.logits.max(1).values
    assert int((best >= rule.logit_threshold).sum()) == 4 and int((best >= rule.logit_threshold - 1e-3).sum()) > 4
    # and the confidence that would do the same without the logit check, for heads without logits (a memory)
    confidence = torch.softmax(unknown.logits, 1).max(1).values
    assert (
        rule.unknown_confidence_threshold is not None
        and int((confidence >= rule.unknown_confidence_threshold).sum()) == 4
    )
    assert rule.confidence_threshold_without_logit == rule.unknown_confidence_threshold


def test_lowest_threshold_lets_through_at_most_the_allowed_fraction_of_counted_images() -> None:
    # logits, not probabilities: any real scores
    scores = np.array([7.5, 3.0, 12.0, -2.0, 9.0, 4.0, 5.5, 0.5, 8.0, 6.0])
    counted = np.array([True, False, True, True, False, True, False, True, True, False])
    threshold = lowest_threshold(scores, counted, 0.2)  # 2 of 10 counted images may stay at or above it
    assert ((scores >= threshold) & counted).sum() == 2  # 12.0 and 8.0
    assert threshold > 7.5 and ((scores >= 7.5) & counted).sum() == 3  # the lowest such: just above the third
    assert lowest_threshold(scores, counted, 0.6) == -np.inf  # 6 counted, 6 allowed: any threshold
    # as a confidence: clamped to [0, 1]
    confidence = np.array([1.0, 1.0, 0.2])
    assert lowest_confidence_threshold(confidence, np.array([True, True, False]), 0.0) == 1.0
    assert lowest_confidence_threshold(confidence, np.array([False, False, True]), 0.5) == 0.0
