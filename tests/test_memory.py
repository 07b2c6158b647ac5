"""model/memory.py: the corrections memory (a head refitted on training features plus accepted corrections), its
gate, its blob, and the predictor serving it. Synthetic features: each class a cluster around its own direction."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from model.memory import (
    MIN_CONFIDENCE_THRESHOLD,
    MIN_NEW_SPECIES,
    NOT_FISH_LABEL,
    UNKNOWN_LABEL,
    BaseFeatures,
    Correction,
    CorrectionMemory,
    CorrectionMemoryError,
    MemoryBuilder,
    fit_head,
    memory_labels,
    sample_weights,
    verdict_for,
)
from model.open_set import OpenSetRule

DIM = 16
CLASSES = ["a", "b", "c"]


def cluster(direction: int, n: int, seed: int, spread: float = 0.15) -> np.ndarray:
    """``n`` float32 rows near the unit vector ``direction`` of :data:`DIM`."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(0, spread, (n, DIM)).astype(np.float32)
    rows[:, direction] += 1.0
    return rows


@pytest.fixture(scope="module")
def base() -> BaseFeatures:
    """20 training and 10 validation rows per class; class i around direction i."""
    train = np.concatenate([cluster(i, 20, seed=i) for i in range(3)])
    val = np.concatenate([cluster(i, 10, seed=10 + i) for i in range(3)])
    targets = np.repeat(np.arange(3), 20), np.repeat(np.arange(3), 10)
    return BaseFeatures(train, targets[0], val, targets[1])


@pytest.fixture(scope="module")
def builder(base: BaseFeatures) -> MemoryBuilder:
    return MemoryBuilder(base, CLASSES, temperature=1.0, rule=OpenSetRule(confidence_threshold=0.5))


def corrections(label: str, direction: int, n: int, seed: int) -> list[Correction]:
    return [Correction(label, row) for row in cluster(direction, n, seed)]


def test_base_features_round_trip_through_int8(base: BaseFeatures, tmp_path: Path) -> None:
    path = tmp_path / "model.features.npz"
    base.save(path)
    loaded = BaseFeatures.load(path)
    assert loaded.train.shape == base.train.shape and loaded.train.dtype == np.float32
    np.testing.assert_array_equal(loaded.val_targets, base.val_targets)
    unit = base.train / np.linalg.norm(base.train, axis=1, keepdims=True)
    np.testing.assert_allclose(loaded.train, unit, atol=0.01)  # int8 rows of unit vectors
    with pytest.raises(CorrectionMemoryError, match="cannot read"):
        BaseFeatures.load(tmp_path / "missing.npz")


def test_sample_weights_balance_the_users_photos_then_the_labels() -> None:
    targets = np.array([0] * 8 + [1] * 4 + [0] * 2)
    from_users = np.array([False] * 12 + [True] * 2)
    weights = sample_weights(targets, from_users)
    # within label 0 the 2 users' photos weigh as much as its 8 training crops
    assert weights[12:].sum() == pytest.approx(weights[:8].sum())
    # every label weighs the same in all: N / labels
    assert weights[targets == 0].sum() == pytest.approx(weights[targets == 1].sum()) == pytest.approx(7.0)


def test_a_new_species_needs_enough_photos() -> None:
    few = corrections("Amphiprion perideraion", 3, MIN_NEW_SPECIES - 1, seed=1)
    labels, waiting = memory_labels(CLASSES, [*few, Correction(NOT_FISH_LABEL, np.ones(DIM, np.float32))])
    assert labels == [*CLASSES, NOT_FISH_LABEL] and waiting == ["Amphiprion perideraion"]
    labels, waiting = memory_labels(CLASSES, corrections("Amphiprion perideraion", 3, MIN_NEW_SPECIES, seed=1))
    assert labels == [*CLASSES, "Amphiprion perideraion"] and waiting == []


def test_fit_head_learns_a_new_label_and_refuses_other_dimensions(base: BaseFeatures) -> None:
    labels = [*CLASSES, "d"]
    weight, bias = fit_head(base, labels, corrections("d", 3, 10, seed=2))
    assert weight.shape == (4, DIM) and bias.shape == (4,) and weight.dtype == np.float32
    probe = cluster(3, 5, seed=99)
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    assert ((probe @ weight.T + bias).argmax(1) == 3).all()
    with pytest.raises(CorrectionMemoryError, match="16 values"):
        fit_head(base, labels, [Correction("d", np.ones(DIM + 1, np.float32))])


def test_build_serves_a_memory_that_names_the_new_species(builder: MemoryBuilder) -> None:
    learnt = corrections("Amphiprion perideraion", 3, 10, seed=3) + corrections(UNKNOWN_LABEL, 4, 10, seed=4)
    memory, report = builder.build(learnt)
    assert memory is not None and report["served"] and report["reason"] is None
    assert memory.new_species == ["Amphiprion perideraion"]
    assert memory.labels == (*CLASSES, "Amphiprion perideraion", UNKNOWN_LABEL)
    assert report["held_out_right"] > report["held_out_right_base"] == 0  # the model alone knows neither
    assert report["val_macro_f1"] >= report["val_macro_f1_base"] - 0.005
    logits = memory.logits(torch.from_numpy(cluster(3, 4, seed=5)))
    assert logits.shape == (4, 5) and (logits.argmax(1) == 3).all()


def test_the_gate_refuses_corrections_that_break_known_classes(builder: MemoryBuilder) -> None:
    # 30 "corrections" saying that photos of class a are class b: validation macro-F1 collapses
    memory, report = builder.build(corrections("b", 0, 30, seed=6))
    assert memory is None and not report["served"]
    assert "validation macro-F1 would fall" in report["reason"]
    assert report["val_macro_f1"] < report["val_macro_f1_base"] - 0.005


def test_nothing_to_learn_is_said(builder: MemoryBuilder) -> None:
    memory, report = builder.build(corrections("Rare fish", 5, MIN_NEW_SPECIES - 1, seed=7))
    assert memory is None and report["corrections"] == 0 and report["waiting"] == ["Rare fish"]
    assert "no accepted corrections" in report["reason"]


def test_blob_round_trip_and_damaged_blobs(builder: MemoryBuilder) -> None:
    memory, _ = builder.build(corrections("d", 3, 6, seed=8))
    assert memory is not None
    again = CorrectionMemory.from_bytes(memory.to_bytes())
    assert again.labels == memory.labels and again.counts == {"d": 6} and again.report == memory.report
    np.testing.assert_array_equal(again.weight, memory.weight)
    assert again.confidence_threshold == memory.confidence_threshold
    with pytest.raises(CorrectionMemoryError, match="not a corrections memory"):
        CorrectionMemory.from_bytes(b"not an npz")


def test_verdicts_over_a_memorys_labels() -> None:
    labels = [*CLASSES, "d", UNKNOWN_LABEL, NOT_FISH_LABEL]
    rule = OpenSetRule(confidence_threshold=0.5)
    assert verdict_for(np.array([0.1, 0, 0, 0.1, 0, 0.8]), labels, rule, None) == (NOT_FISH_LABEL, 0)
    assert verdict_for(np.array([0.1, 0, 0, 0.2, 0.7, 0]), labels, rule, None) == (UNKNOWN_LABEL, 3)
    assert verdict_for(np.array([0, 0, 0.1, 0.9, 0, 0]), labels, rule, None) == ("species", 3)
    assert verdict_for(np.array([0.3, 0.3, 0.4, 0, 0, 0]), labels, rule, None) == ("not_sure", 2)


# --- the predictor serving a memory --------------------------------------------------------------------------------


def hand_made_memory(predictor, label: str, dim: int) -> CorrectionMemory:
    """A memory whose one extra label always wins (its bias), over the predictor's classes."""
    labels = (*predictor.class_names, label)
    bias = np.zeros(len(labels), np.float32)
    bias[-1] = 20.0
    return CorrectionMemory(labels, np.zeros((len(labels), dim), np.float32), bias, 0.5, len(predictor.class_names))


def test_the_predictor_serves_a_memory_and_drops_it(tiny_checkpoint: Path, jpeg_bytes) -> None:
    import io

    from PIL import Image

    from model.predictor import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    photo = Image.open(io.BytesIO(jpeg_bytes()))
    dim = predictor.embed([photo]).shape[1]
    before = predictor.predict([photo])[0]
    predictor.set_memory(hand_made_memory(predictor, "Amphiprion perideraion", dim))
    named = predictor.predict([photo])[0]
    assert (named.label, named.verdict) == ("Amphiprion perideraion", "species")
    assert named.top_k[0].scientific_name == "Amphiprion perideraion"
    predictor.set_memory(hand_made_memory(predictor, NOT_FISH_LABEL, dim))
    refused = predictor.predict([photo])[0]
    assert refused.verdict == "not_a_fish" and refused.label in predictor.class_names  # the best species, as before
    predictor.set_memory(None)
    assert predictor.predict([photo])[0].label == before.label and predictor.memory is None


def test_the_predictor_refuses_a_memory_of_another_model(tiny_checkpoint: Path) -> None:
    from model.predictor import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    memory = hand_made_memory(predictor, "d", 4)
    with pytest.raises(ValueError, match="other classes"):
        predictor.set_memory(dataclasses.replace(memory, labels=("x", "y", "z", "d")))


def test_the_threshold_stays_between_a_majority_and_the_checkpoints(base: BaseFeatures) -> None:
    strict = MemoryBuilder(base, CLASSES, temperature=1.0, rule=OpenSetRule(confidence_threshold=0.9))
    memory, _ = strict.build(corrections("d", 3, 10, seed=9))  # none held out is wrong: the majority floor holds
    assert memory is not None and memory.confidence_threshold == MIN_CONFIDENCE_THRESHOLD
    lenient = MemoryBuilder(base, CLASSES, temperature=1.0, rule=OpenSetRule(confidence_threshold=0.3))
    memory, _ = lenient.build(corrections("d", 3, 10, seed=9))
    assert memory is not None and memory.confidence_threshold == 0.3  # never stricter than the checkpoint
    # a release with a logit check holds a head without logits (the memory's) to its confidence-only threshold
    rule = OpenSetRule(confidence_threshold=0.3, logit_threshold=2.0, unknown_confidence_threshold=0.45)
    assert rule.confidence_threshold_without_logit == 0.45
    memory, _ = MemoryBuilder(base, CLASSES, temperature=1.0, rule=rule).build(corrections("d", 3, 10, seed=9))
    assert memory is not None and memory.confidence_threshold == 0.45
