"""The corrections database (:mod:`app.corrections.store`, its migrations, :mod:`app.corrections.backup`): every
test runs on SQLite (a file in ``tmp_path``) and on PostgreSQL (a throw-away cluster, :mod:`tests.postgres`;
marked slow), and both must pass the same tests.

Nothing is lost: a store reopened after a restart has every accepted correction; a writer SIGKILLed mid-burst loses
no write it acknowledged; a backup restores what it saved, into a database the open store keeps using.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text

from app.corrections import backup as backups
from app.corrections import migrations
from app.corrections.models import Base
from app.corrections.store import (
    CorrectionNotFound,
    CorrectionStore,
    InvalidReview,
    PhotoNotFound,
    ReviewerExists,
)
from tests.helpers import ROOT, encode, synthetic_image
from tests.postgres import postgres_server, postgres_url  # noqa: F401

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database's URL: a SQLite file in ``tmp_path``, or a database on the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'corrections.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(url: str) -> CorrectionStore:
    """A store on :func:`url`, migrated, closed after the test."""
    with CorrectionStore(url) as opened:
        yield opened


def features(seed: int, dim: int = 8) -> np.ndarray:
    """``dim`` float32 features, different for each seed."""
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def photo(seed: int) -> tuple[bytes, tuple[int, int]]:
    """A tiny JPEG and its size, different for each seed."""
    return encode(synthetic_image((20, 120, 200), (12, 8), seed=seed), quality=90), (12, 8)


def submit(store: CorrectionStore, seed: int = 0, *, with_photo: int | None = None, **fields):
    """Submit a valid correction (``fields`` override), with the photo of seed ``with_photo`` if given."""
    values = dict(label=f"clownfish {seed}", label_kind="species", features=features(seed), model_id="model-a")
    values.update(client_key="c" * 64, predicted_label="blue_tang", crop="0,0,1,1")
    if with_photo is not None:
        values["photo"], values["photo_size"] = photo(with_photo)
    return store.submit(**{**values, **fields})


# --- corrections --------------------------------------------------------------------------------------------------


def test_submitted_corrections_are_pending_and_read_back(store: CorrectionStore) -> None:
    first = submit(store, 1, with_photo=1)
    second = submit(store, 2, label_kind="not_a_fish", label="rock", predicted_label=None, crop=None)
    assert first.status == second.status == "pending" and first.id < second.id
    assert store.get(first.id) == first and store.get(second.id) == second
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)
    assert (first.label, first.crop, first.model_id, first.reviewed_by) == ("clownfish 1", "0,0,1,1", "model-a", None)
    assert second.photo_sha256 is None and len(first.photo_sha256) == 64
    assert store.pending() == [first, second] and store.pending(limit=1, offset=1) == [second]
    assert store.by_status("accepted") == [] and store.by_status("pending", limit=None) == [first, second]
    assert (store.count(), store.count("pending"), store.count("rejected")) == (2, 2, 0)
    with pytest.raises(CorrectionNotFound, match="no correction 999"):
        store.get(999)
    for huge in (2**31, 2**63, 2**80):  # past PostgreSQL's int4 and SQLite's int64: no such row, no database error
        for call in (store.get, store.delete, lambda i: store.review(i, "accept", 1)):
            with pytest.raises(CorrectionNotFound):
                call(huge)
        assert store.reviewer(huge) is None


def test_reviews_accept_reject_and_review_again(store: CorrectionStore) -> None:
    ana_id, bo_id = (store.reviewer_by_token(store.add_reviewer(name)) for name in ("ana", "bo"))
    one, two = submit(store, 1), submit(store, 2)
    accepted = store.review(one.id, "accept", ana_id.id)
    assert (accepted.status, accepted.reviewed_by) == ("accepted", "ana") and accepted.reviewed_at is not None
    assert store.review(two.id, "reject", bo_id.id).status == "rejected"
    assert (store.count("accepted"), store.count("rejected"), store.count("pending")) == (1, 1, 0)
    again = store.review(one.id, "reject", bo_id.id)  # the last review counts
    assert (again.status, again.reviewed_by) == ("rejected", "bo") and again.reviewed_at >= accepted.reviewed_at
    assert store.get(one.id) == again and store.by_status("rejected") == [again, store.get(two.id)]
    assert store.accepted() == []
    with pytest.raises(InvalidReview, match="accept or reject"):
        store.review(one.id, "approve", ana_id.id)
    for reviewer_id in (99, 2**31):
        with pytest.raises(InvalidReview, match=f"no reviewer {reviewer_id}"):
            store.review(one.id, "accept", reviewer_id)
    with pytest.raises(CorrectionNotFound):
        store.review(999, "accept", ana_id.id)
    assert store.get(one.id) == again  # the refused reviews changed nothing


def test_delete_removes_the_photo_only_when_no_other_correction_has_it(store: CorrectionStore) -> None:
    shared_a, shared_b, alone = submit(store, 1, with_photo=7), submit(store, 2, with_photo=7), submit(store, 3)
    sha = shared_a.photo_sha256
    assert shared_b.photo_sha256 == sha
    store.delete(shared_a.id)
    assert store.photo(sha) == photo(7)[0]  # still used by shared_b
    store.delete(shared_b.id)
    with pytest.raises(PhotoNotFound):
        store.photo(sha)
    assert store.photo_bytes_total() == 0
    store.delete(alone.id)
    assert store.count() == 0
    with pytest.raises(CorrectionNotFound):
        store.delete(alone.id)


def test_a_photo_is_stored_once_per_content(store: CorrectionStore) -> None:
    jpeg, _ = photo(3)
    first, second = submit(store, 1, with_photo=3), submit(store, 2, with_photo=3)
    other = submit(store, 3, with_photo=4)
    assert first.photo_sha256 == second.photo_sha256 != other.photo_sha256
    assert store.photo(first.photo_sha256) == jpeg
    assert store.photo_bytes_total() == len(jpeg) + len(photo(4)[0])
    for unknown in ("0" * 64, "\x00"):
        with pytest.raises(PhotoNotFound):
            store.photo(unknown)


def test_accepted_returns_features_bit_exact_of_the_model_asked(store: CorrectionStore) -> None:
    reviewer = store.reviewer_by_token(store.add_reviewer("ana"))
    tricky = np.array([0.1, -0.0, 1e-45, -3.4028235e38, 1 / 3, 7.0, np.nextafter(1, 2), 2.5e-39], dtype=np.float32)
    a = submit(store, 1, features=tricky)
    b = submit(store, 2, model_id="model-b", features=features(2, dim=5))
    pending = submit(store, 3)
    c = submit(store, 4, label_kind="new_species", label="zebra goby")
    for correction in (a, b, c):
        store.review(correction.id, "accept", reviewer.id)
    of_a = store.accepted("model-a")
    assert [(x.id, x.label, x.label_kind) for x in of_a] == [
        (a.id, "clownfish 1", "species"),
        (c.id, "zebra goby", "new_species"),
    ]
    assert of_a[0].features.dtype == np.float32 and of_a[0].features.tobytes() == tricky.tobytes()
    assert of_a[1].features.tobytes() == features(4).tobytes()
    assert [x.id for x in store.accepted()] == [a.id, b.id, c.id] and pending.id not in [x.id for x in of_a]
    assert store.accepted("model-b")[0].features.tobytes() == features(2, dim=5).tobytes()
    assert store.accepted("model-c") == []


def test_submissions_since_counts_a_clients_recent_submissions(store: CorrectionStore) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    submit(store, 1)
    submit(store, 2)
    submit(store, 3, client_key="d" * 64)
    assert store.submissions_since("c" * 64, before) == 2
    assert store.submissions_since("d" * 64, before) == 1
    assert store.submissions_since("c" * 64, datetime.now(timezone.utc) + timedelta(minutes=1)) == 0
    assert store.submissions_since("c" * 64, before.astimezone(timezone(timedelta(hours=5)))) == 2
    with pytest.raises(ValueError, match="timezone-aware"):
        store.submissions_since("c" * 64, datetime.now())


# --- reviewers and memories ---------------------------------------------------------------------------------------


def test_reviewers_by_token_and_by_password(store: CorrectionStore) -> None:
    token = store.add_reviewer("ana", "correct horse")
    bot_token = store.add_reviewer("bot")
    ana = store.reviewer_by_token(token)
    assert ana is not None and ana.name == "ana" and store.reviewer(ana.id) == ana
    assert store.reviewer_by_password("ana", "correct horse") == ana
    assert store.reviewer_by_password("ana", "wrong horse") is None
    assert store.reviewer_by_password("nobody", "correct horse") is None
    assert store.reviewer_by_password("ana\x00", "correct horse") is None  # no database error on PostgreSQL
    assert store.reviewer_by_token(bot_token).name == "bot" and token != bot_token
    assert store.reviewer_by_password("bot", "") is None  # token-only: no password signs in
    for wrong in ("", token[:-1], token + "x", bot_token.upper()):
        assert store.reviewer_by_token(wrong) is None
    assert store.reviewer(999) is None
    with pytest.raises(ReviewerExists, match="ana"):
        store.add_reviewer("ana", "other")
    assert store.reviewer_by_token(token) == ana  # the refused duplicate changed nothing


def test_memories_served_refused_latest_and_newest_first(store: CorrectionStore) -> None:
    served = store.save_memory(model_id="m", status="served", reason=None, report={"n": 1}, blob=b"\x00one")
    refused = store.save_memory(model_id="m", status="refused", reason="worse", report={"acc": 0.5}, blob=None)
    store.save_memory(model_id="other", status="served", reason=None, report={}, blob=b"two")
    assert (refused.status, refused.reason, refused.report) == ("refused", "worse", {"acc": 0.5})
    assert store.latest_memory("m") == (served, b"\x00one")
    assert store.latest_memory("m", status=None) == (refused, None)
    assert store.latest_memory("m", status="refused") == (refused, None)
    assert store.latest_memory("nothing") is None
    assert store.memories("m") == [refused, served] and store.memories("m", limit=1) == [refused]
    assert store.memories("m", limit=0) == []
    with pytest.raises(ValueError, match="status"):
        store.save_memory(model_id="m", status="kept", reason=None, report={}, blob=b"x")
    with pytest.raises(ValueError, match="status"):
        store.latest_memory("m", status="kept")
    with pytest.raises(ValueError, match="blob"):
        store.save_memory(model_id="m", status="served", reason=None, report={}, blob=None)
    with pytest.raises(ValueError, match="JSON"):
        store.save_memory(model_id="m", status="refused", reason="x", report={"a": object()}, blob=None)
    with pytest.raises(ValueError, match="negative"):
        store.memories("m", limit=-1)
    assert len(store.memories("m")) == 2


BAD_SUBMISSIONS = [
    ({"label": ""}, "label"),
    ({"label": "x" * 201}, "label must be at most 200"),
    ({"label_kind": "fish"}, "label_kind"),
    ({"features": features(0).astype(np.float64)}, "float32"),
    ({"features": np.zeros((2, 4), np.float32)}, "1-D"),
    ({"features": np.array([1.0, np.nan], np.float32)}, "finite"),
    ({"features": [1.0, 2.0]}, "numpy array"),
    ({"model_id": "m" * 129}, "model_id"),
    ({"client_key": " "}, "client_key"),
    ({"crop": "0,0,2"}, "crop"),
    ({"photo": b"GIF89a...", "photo_size": (1, 1)}, "JPEG"),
    ({"photo": photo(0)[0], "photo_size": (0, 8)}, "photo_size"),
    ({"photo_size": (12, 8)}, "without a photo"),
    ({"predicted_label": "blue\x00tang"}, "NUL"),  # PostgreSQL's text cannot hold one: refused on both
]


def test_invalid_input_is_refused_with_a_message_naming_it(store: CorrectionStore) -> None:
    for fields, message in BAD_SUBMISSIONS:
        with pytest.raises(ValueError, match=message):
            submit(store, 1, **fields)
    for name in ("", " ana", "n" * 65, "a\x00b"):
        with pytest.raises(ValueError, match="name"):
            store.add_reviewer(name)
    with pytest.raises(ValueError, match="password"):
        store.add_reviewer("ana", "")
    for call in (lambda: store.by_status("done"), lambda: store.count("done"), lambda: store.pending(-1)):
        with pytest.raises(ValueError):
            call()
    assert store.count() == 0 and store.reviewer(1) is None  # nothing half-written


# --- migrations ---------------------------------------------------------------------------------------------------


def test_the_migrated_schema_is_the_models(store: CorrectionStore, url: str) -> None:
    """An upgraded empty database has exactly the tables, columns, indexes and constraints of the models."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            head = ScriptDirectory.from_config(migrations.alembic_config(connection)).get_current_head()
            assert migrations.current_revision(connection) == head == "0002"
    finally:
        engine.dispose()


def test_a_database_of_the_first_schema_upgrades_keeping_its_corrections(url: str) -> None:
    """A database written by the first release (revision 0001, no scores) is upgraded on opening; its corrections
    stay, and are learnt from without scores."""
    engine = create_engine(url)
    try:
        migrations.upgrade(engine, "0001")
        blob = features(3).astype("<f4").tobytes()
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO corrections (created_at, status, label, label_kind, features, feature_dim, "
                    "model_id, client_key) VALUES (:now, 'accepted', 'clownfish', 'species', :blob, 8, 'model-a', "
                    ":client)"
                ),
                {"now": datetime.now(timezone.utc), "blob": blob, "client": "c" * 64},
            )
    finally:
        engine.dispose()
    with CorrectionStore(url) as upgraded:
        [old] = upgraded.accepted("model-a")
        assert old.label == "clownfish" and old.scores is None
        np.testing.assert_array_equal(old.features, features(3))
        kept = submit(upgraded, 4, scores=(0.9, None, 0.25, 0.0))
        reviewer = upgraded.reviewer_by_token(upgraded.add_reviewer("ann"))
        upgraded.review(kept.id, "accept", reviewer.id)
        assert [row.scores for row in upgraded.accepted("model-a")] == [None, (0.9, None, 0.25, 0.0)]


@pytest.mark.parametrize("scores", [(0.5, 0.1), (0.5, float("nan"), None, None), ("0.5", None, None, None), 0.5])
def test_scores_that_are_not_four_numbers_are_refused(store: CorrectionStore, scores: object) -> None:
    with pytest.raises(ValueError, match="scores"):
        submit(store, scores=scores)
    assert store.count() == 0


def test_opening_a_second_store_on_a_migrated_database_changes_nothing(store: CorrectionStore, url: str) -> None:
    kept = submit(store, 1)
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        with CorrectionStore(url) as second:
            assert second.get(kept.id) == kept
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert statements and any("alembic_version" in statement for statement in statements)
    writes = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE")
    assert [statement for statement in statements if statement.lstrip().upper().startswith(writes)] == []


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_opening_a_fresh_database_at_once_both_succeed(backend: str, tmp_path: Path, request) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'c.db'}"
    command = [sys.executable, "-m", "tests.store_writer", "open", url]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    processes = [subprocess.Popen(command, cwd=ROOT, text=True, **pipes) for _ in range(2)]
    try:
        assert [process.stdout.readline() for process in processes] == ["ready\n", "ready\n"]
        for process in processes:  # both migrate a database nobody has migrated yet, now
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert [process.returncode for process in processes] == [0, 0] and outputs == ["done\n", "done\n"]
    with CorrectionStore(url, upgrade=False) as store:
        assert store.count("pending") == 2


# --- nothing lost -------------------------------------------------------------------------------------------------


def test_a_restart_of_every_worker_keeps_every_accepted_correction(url: str) -> None:
    workers = [CorrectionStore(url), CorrectionStore(url)]
    reviewer = workers[0].reviewer_by_token(workers[0].add_reviewer("ana"))
    expected = {}
    for seed in range(6):
        worker = workers[seed % 2]
        correction = submit(worker, seed, with_photo=seed % 3)
        if seed % 3 != 2:
            workers[1 - seed % 2].review(correction.id, "accept", reviewer.id)
            expected[correction.id] = features(seed).tobytes()
    for worker in workers:
        worker.close()
    with CorrectionStore(url) as restarted:
        assert {kept.id: kept.features.tobytes() for kept in restarted.accepted()} == expected
        assert restarted.count("pending") == 2 and restarted.photo_bytes_total() > 0


@pytest.mark.slow
def test_a_writer_killed_mid_burst_loses_no_acknowledged_write(url: str, tmp_path: Path) -> None:
    with CorrectionStore(url) as store:
        reviewer = store.reviewer_by_token(store.add_reviewer("ana"))
    command = [sys.executable, "-m", "tests.store_writer", "burst", url, str(reviewer.id)]
    with open(tmp_path / "writer.log", "wb") as log:
        writer = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        lines = [writer.stdout.readline() for _ in range(60)]
        os.kill(writer.pid, signal.SIGKILL)  # mid-burst: it is writing as fast as it can
        assert writer.wait(timeout=30) == -signal.SIGKILL, (tmp_path / "writer.log").read_text()
        lines += writer.stdout.read().splitlines(keepends=True)  # printed before the kill, still in the pipe
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    acknowledged = [line.split() for line in lines if line.endswith("\n")]
    assert len(acknowledged) >= 60, (tmp_path / "writer.log").read_text()
    submitted = {int(fields[1]): int(fields[2]) for fields in acknowledged if fields[0] == "submit"}
    reviewed = {int(fields[1]): fields[2] for fields in acknowledged if fields[0] == "review"}
    with CorrectionStore(url) as reopened:
        for correction_id, i in submitted.items():
            kept = reopened.get(correction_id)
            assert kept.label == f"fish {i}" and kept.status == reviewed.get(correction_id, "pending")
        assert reopened.count() in (len(submitted), len(submitted) + 1)  # + the one in flight, if it committed
        accepted = {kept.id: kept.features for kept in reopened.accepted("m")}
        assert all(accepted[i].tolist() == [submitted[i]] * 8 for i, status in reviewed.items() if status == "accepted")


# --- backup and restore -------------------------------------------------------------------------------------------


def snapshot(store: CorrectionStore, token: str) -> tuple:
    """Everything the store answers about its data (features and photos as bytes)."""
    views = [view for status in ("pending", "accepted", "rejected") for view in store.by_status(status, None)]
    photos = {view.photo_sha256: store.photo(view.photo_sha256) for view in views if view.photo_sha256}
    accepted = [(kept.id, kept.label, kept.features.tobytes()) for kept in store.accepted()]
    reviewers = (store.reviewer_by_token(token), store.reviewer_by_password("ana", "pw"), store.reviewer(2))
    memories = (store.memories("m"), store.latest_memory("m"))
    return views, photos, store.photo_bytes_total(), accepted, reviewers, memories


def other_database(url: str, tmp_path: Path) -> str:
    """A new, empty database beside the one of ``url``."""
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'other.sqlite3'}"
    from tests.postgres import create_database

    return create_database(url.rsplit("/", 1)[0])


def test_a_restored_backup_brings_back_the_data_and_the_open_store_works_on(
    store: CorrectionStore, url: str, tmp_path: Path
) -> None:
    token = store.add_reviewer("ana", "pw")
    ana = store.reviewer_by_token(token)
    first, second, third = submit(store, 1, with_photo=1), submit(store, 2, with_photo=2), submit(store, 3)
    store.review(first.id, "accept", ana.id)
    store.review(third.id, "reject", ana.id)
    store.save_memory(model_id="m", status="served", reason=None, report={"n": 1}, blob=b"memory")
    saved = snapshot(store, token)
    (tmp_path / "backups").mkdir()
    path = backups.backup(url, tmp_path / "backups")  # a folder: a file named by the time in it
    assert path.parent == tmp_path / "backups" and path.is_file() and list(path.parent.iterdir()) == [path]

    store.review(third.id, "accept", ana.id)  # change, delete and add after the backup
    store.delete(first.id)
    store.delete(second.id)
    submit(store, 4, with_photo=4)
    store.add_reviewer("bo")
    store.save_memory(model_id="m", status="refused", reason="worse", report={}, blob=None)
    assert snapshot(store, token) != saved

    backups.restore(url, path)
    assert snapshot(store, token) == saved  # the open store reads the restored data
    added = submit(store, 5, with_photo=1)
    assert store.review(added.id, "accept", ana.id).status == "accepted"
    with CorrectionStore(url) as reopened:
        assert [kept.id for kept in reopened.accepted()] == [first.id, added.id]
        assert reopened.photo(first.photo_sha256) == photo(1)[0]


def test_a_backup_taken_while_the_app_writes_is_consistent(store: CorrectionStore, url: str, tmp_path: Path) -> None:
    for seed in range(5):
        submit(store, seed, with_photo=seed)
    stop, written = threading.Event(), []

    def write() -> None:
        while not stop.is_set():
            written.append(submit(store, len(written) + 5, with_photo=len(written)).id)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        path = backups.backup(url, tmp_path / "nested" / "corrections.backup")
    finally:
        stop.set()
        writer.join()
    copy = other_database(url, tmp_path)  # no SQLite file yet: what a restore after losing the disk finds
    backups.restore(copy, path)
    with CorrectionStore(copy) as restored:
        views = restored.pending(limit=None)
        assert 5 <= len(views) <= 5 + len(written) and [view.id for view in views] == list(range(1, len(views) + 1))
        for view in views:
            assert restored.photo(view.photo_sha256) == store.photo(view.photo_sha256)
            assert restored.get(view.id) == store.get(view.id)


def test_backup_and_restore_refuse_what_they_cannot_do_with_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    with pytest.raises(backups.BackupError, match="no SQLite database at"):
        backups.backup(url, tmp_path / "b")
    with pytest.raises(backups.BackupError, match="SQLite and PostgreSQL"):
        backups.backup("mysql://host/db", tmp_path / "b")
    with pytest.raises(backups.BackupError, match="no backup file at"):
        backups.restore(url, tmp_path / "missing")
    (tmp_path / "garbage").write_bytes(b"not a database at all" * 100)
    with pytest.raises(backups.BackupError, match="restore of"):
        backups.restore(url, tmp_path / "garbage")
    with contextlib.closing(sqlite3.connect(tmp_path / "other.db")) as other:
        other.execute("CREATE TABLE t (x)")
    with pytest.raises(backups.BackupError, match="no backup of a corrections database"):
        backups.restore(url, tmp_path / "other.db")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".*partial"))


def test_postgresql_tools_get_the_connection_by_environment_never_the_password_in_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def run(command, env, **kwargs):
        calls.append((command, env))
        return subprocess.CompletedProcess(command, 1, "", "pg_dump: error: connection refused")

    monkeypatch.setattr(backups.subprocess, "run", run)
    url = "postgresql+psycopg://fish:s3cret%40@db.example:5433/corrections"
    with pytest.raises(backups.BackupError, match="pg_dump.*failed.*connection refused"):
        backups.backup(url, tmp_path / "b.dump")
    (tmp_path / "b.dump").write_bytes(b"PGDMP")
    with pytest.raises(backups.BackupError, match="pg_restore.*failed.*connection refused"):
        backups.restore(url, tmp_path / "b.dump")
    for command, env in calls:
        assert not any("s3cret" in argument for argument in command) and "--no-password" in command
        assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGPASSWORD"]) == (
            "db.example",
            "5433",
            "fish",
            "s3cret@",
        )
        assert env["PGDATABASE"] == "corrections"


@pytest.mark.slow
def test_postgresql_backup_and_restore_report_the_tools_errors(request, tmp_path: Path) -> None:
    database = request.getfixturevalue("postgres_url")
    missing = database.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(backups.BackupError, match='pg_dump of no_such_database failed.*"no_such_database" does not'):
        backups.backup(missing, tmp_path / "b.dump")
    (tmp_path / "garbage").write_bytes(b"not an archive" * 100)
    with pytest.raises(backups.BackupError, match="pg_restore of .* failed.*valid archive"):
        backups.restore(database, tmp_path / "garbage")
