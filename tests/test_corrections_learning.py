"""app/corrections/learning.py: accepted corrections become a memory that the served model uses at once, behind the
gate, picked up by every worker; the model page says what was learnt (issue 19).

The tiny checkpoint of ``conftest.py`` (three colours as species) with base features of synthetic photos beside it;
a fourth colour is the new species the users teach."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.corrections.extension import get_store
from app.corrections.learning import get_learning, model_id, rebuild
from app.inference import get_predictor
from model.memory import BaseFeatures, features_path
from tests.helpers import COLOURS, encode, log_in_reviewer, make_app, synthetic_image

CLASS_NAMES = sorted(COLOURS)
NEW_SPECIES = "Amphiprion perideraion"
PURPLE = (150, 30, 190)


def photo(colour: tuple[int, int, int], seed: int) -> bytes:
    return encode(synthetic_image(colour, (40, 32), seed))


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny checkpoint with its base features beside it: 12 training and 6 validation photos per
    class, embedded by the served predictor (as ``training.memory_features`` does for a release)."""
    from model.predictor import Predictor

    path = tmp_path_factory.mktemp("learning") / "tiny.pt"
    shutil.copyfile(tiny_checkpoint, path)
    predictor = Predictor.from_checkpoint(path, precision="fp32")  # as make_app serves it

    def embed(seeds: range) -> tuple[np.ndarray, np.ndarray]:
        images = [synthetic_image(COLOURS[name], (40, 32), seed) for name in CLASS_NAMES for seed in seeds]
        return predictor.embed(images), np.repeat(np.arange(len(CLASS_NAMES)), len(seeds))

    (train, train_targets), (val, val_targets) = embed(range(100, 112)), embed(range(200, 206))
    BaseFeatures(train, train_targets, val, val_targets).save(features_path(path))
    return path


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    return tmp_path / "instance"


def serving_app(checkpoint: Path, instance: Path) -> Flask:
    """One "worker": an app on the shared instance folder (its SQLite database), polling at every request."""
    return make_app(
        MODEL_PATH=str(checkpoint), INSTANCE_PATH=str(instance), CORRECTIONS_PER_MINUTE=1000, MEMORY_POLL_S=1e-6
    )


def teach(
    app: Flask, client: FlaskClient, token: str, label: str, colour: tuple[int, int, int], n: int, first_seed: int = 300
) -> list[int]:
    """Submit ``n`` photos of ``colour`` labelled ``label`` and accept each through the API; wait for the rebuild."""
    ids = []
    for seed in range(first_seed, first_seed + n):
        response = client.post(
            "/api/corrections", data={"image": (io.BytesIO(photo(colour, seed)), "p.jpg"), "label": label}
        )
        assert response.status_code == 201, response.get_json()
        ids.append(response.get_json()["id"])
    for correction in ids:
        response = client.post(f"/api/corrections/{correction}/accept", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
    assert get_learning(app).wait_idle(120), "the memory rebuild did not finish"
    return ids


def answer(client: FlaskClient, colour: tuple[int, int, int], seed: int = 999) -> dict:
    response = client.post("/api/predict", data={"image": (io.BytesIO(photo(colour, seed)), "p.jpg")})
    assert response.status_code == 200
    return response.get_json()


@pytest.fixture
def worker(checkpoint: Path, instance: Path) -> tuple[Flask, FlaskClient, str]:
    app = serving_app(checkpoint, instance)
    with app.app_context():
        token = get_store().add_reviewer("ann")
    return app, app.test_client(), token


def test_accepted_photos_of_a_new_species_are_named_by_every_worker(
    worker: tuple[Flask, FlaskClient, str], checkpoint: Path, instance: Path
) -> None:
    app, client, token = worker
    other = serving_app(checkpoint, instance)  # a second worker, started before the corrections
    assert answer(client, PURPLE)["label"] != NEW_SPECIES
    teach(app, client, token, NEW_SPECIES, PURPLE, 6)

    named = answer(client, PURPLE)
    assert (named["label"], named["verdict"]) == (NEW_SPECIES, "species")
    assert named["top_k"][0]["scientific_name"] == NEW_SPECIES
    assert answer(client, COLOURS["blue_tang"])["label"] == "blue_tang"  # the known species still answered
    assert answer(other.test_client(), PURPLE)["label"] == NEW_SPECIES  # the other worker picked it up
    restarted = serving_app(checkpoint, instance)  # a worker started afterwards serves it before its first answer
    assert answer(restarted.test_client(), PURPLE)["label"] == NEW_SPECIES

    with app.app_context():
        memories = get_store().memories(model_id(checkpoint))
        # each correction recorded its photo's open-set scores as the served model gave them (none for this model)
        assert [row.scores for row in get_store().accepted(model_id(checkpoint))] == [(None,) * 4] * 6
    assert memories[0].status == "served" and memories[0].report["new_species"] == [NEW_SPECIES]
    page = client.get("/model").get_data(as_text=True)
    section = page[page.index('id="memory"') :]
    assert NEW_SPECIES in section and "Corrections learnt" in section and "Validation macro-F1" in section


def test_deleting_the_corrections_withdraws_what_they_taught(worker: tuple[Flask, FlaskClient, str]) -> None:
    app, client, token = worker
    ids = teach(app, client, token, NEW_SPECIES, PURPLE, 4)
    assert answer(client, PURPLE)["label"] == NEW_SPECIES
    for correction in ids:
        client.delete(f"/api/corrections/{correction}", headers={"Authorization": f"Bearer {token}"})
    assert get_learning(app).wait_idle(120)
    assert answer(client, PURPLE)["label"] in CLASS_NAMES
    with app.app_context():
        assert get_predictor().memory is None


def test_a_harmful_memory_is_refused_with_its_reason_and_the_served_one_stays(
    worker: tuple[Flask, FlaskClient, str],
) -> None:
    app, client, token = worker
    teach(app, client, token, NEW_SPECIES, PURPLE, 4)
    # then photos of blue tangs named as another species: the validation blue tangs would go to it
    teach(app, client, token, "Acanthurus coeruleus", COLOURS["blue_tang"], 8, first_seed=200)
    with app.app_context():
        latest = get_store().memories(get_learning(app).model_id, limit=1)[0]
        assert latest.status == "refused" and "validation macro-F1" in latest.reason
        assert get_predictor().memory is not None and get_predictor().memory.new_species == [NEW_SPECIES]
    assert answer(client, COLOURS["blue_tang"])["label"] == "blue_tang"
    page = client.get("/model").get_data(as_text=True)
    assert "The newest memory was refused" in page and "validation macro-F1 would fall" in page
    with app.app_context():  # and on the review page, for the reviewers
        get_store().add_reviewer("bob", password="a long enough password")
    log_in_reviewer(client, "bob", "a long enough password")
    review = client.get("/review").get_data(as_text=True)
    assert "The newest memory was refused" in review and "validation macro-F1 would fall" in review


def test_without_base_features_corrections_are_kept_but_not_learnt(tiny_checkpoint: Path, tmp_path: Path) -> None:
    app = serving_app(tiny_checkpoint, tmp_path / "instance")  # the session checkpoint: no features beside it
    assert not features_path(tiny_checkpoint).exists()
    client = app.test_client()
    with app.app_context():
        token = get_store().add_reviewer("ann")
    teach(app, client, token, NEW_SPECIES, PURPLE, 3)
    with app.app_context():
        assert get_store().count("accepted") == 3 and get_store().memories(get_learning(app).model_id) == []
    page = client.get("/model").get_data(as_text=True)
    assert "Learning from corrections is off" in page and "training.memory_features" in page


def test_the_model_id_is_the_name_and_the_start_of_the_sha256(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_bytes(b"abc")
    assert model_id(path) == "m.pt:ba7816bf8f01cfea"  # SHA-256("abc") starts ba7816bf8f01cfea


def test_a_worker_loads_a_memory_another_built_from_the_same_corrections(
    worker: tuple[Flask, FlaskClient, str], checkpoint: Path, instance: Path
) -> None:
    app, client, token = worker
    teach(app, client, token, NEW_SPECIES, PURPLE, 3)
    other = serving_app(checkpoint, instance)
    state = get_learning(other)
    with other.app_context():
        before = get_store().memories(state.model_id)
        report = rebuild(other, state)  # as after a review it also saw: nothing changed since the last build
        assert get_store().memories(state.model_id) == before  # no second fit, no second record
        assert report["new_species"] == [NEW_SPECIES] and get_predictor().memory.new_species == [NEW_SPECIES]


def test_a_database_failure_while_polling_keeps_the_memory_and_the_answers(
    worker: tuple[Flask, FlaskClient, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app, client, token = worker
    teach(app, client, token, NEW_SPECIES, PURPLE, 3)
    with app.app_context():
        store = get_store()

    def down(*args: object, **kwargs: object) -> None:
        raise OSError("the database server is gone")

    monkeypatch.setattr(store, "memories", down)
    named = answer(client, PURPLE)  # polled first: the failure is logged, the answer given with the memory
    assert named["label"] == NEW_SPECIES
    assert "could not look for a new corrections memory (the database server is gone)" in caplog.text
