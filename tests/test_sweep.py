"""training.sweep: experiment files, run planning and naming, resuming, failures, the leaderboard, and one real
2-run sweep on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tests.helpers import make_imagefolder
from training import sweep
from training.config import TrainConfig, config_from_dict, save_config
from training.sweep import (
    Experiment,
    Run,
    expand_grid,
    parse_experiment,
    parse_sets,
    plan_runs,
    run_name,
    write_leaderboard,
)


def _experiment(tmp_path: Path, **values: Any) -> Path:
    """Write ``tmp_path/exp.yaml`` (sweep out under ``tmp_path/out``, data in ``tmp_path``) and return its path."""
    values.setdefault("out", str(tmp_path / "out"))
    values.setdefault("base", {})
    values["base"].setdefault("data", str(tmp_path))
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


class FakeFit:
    """Stands in for ``training.trainer.fit``: writes ``config.yaml`` and ``metrics.json`` and scores a run by its
    lr (macro-F1 = lr), or raises for the lr values in ``fail``."""

    def __init__(self, fail: tuple[float, ...] = ()) -> None:
        self.fail = fail
        self.calls: list[TrainConfig] = []

    def __call__(self, cfg: TrainConfig) -> dict[str, Any]:
        self.calls.append(cfg)
        if cfg.lr in self.fail:
            raise RuntimeError(f"boom at lr {cfg.lr}")
        out = Path(cfg.out)
        save_config(cfg, out / "config.yaml")
        metrics = {
            "accuracy": 0.5 + cfg.lr,
            "macro_f1": cfg.lr,
            "best_epoch": cfg.epochs - 1,
            "train_seconds": 90.0,
            "train_images_per_s": 123.4,
        }
        (out / "metrics.json").write_text(json.dumps(metrics))
        return metrics


@pytest.fixture
def fake_fit(monkeypatch: pytest.MonkeyPatch) -> FakeFit:
    fake = FakeFit()
    monkeypatch.setattr(sweep, "fit", fake)
    monkeypatch.setattr(sweep, "gc", SimpleNamespace(collect=lambda: 0))  # nothing to free (gc.collect: ~0.5 s)
    return fake


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_expand_grid_is_the_cartesian_product_in_key_order() -> None:
    assert expand_grid({"arch": ["a", "b"], "lr": [1, 2]}) == [
        {"arch": "a", "lr": 1},
        {"arch": "a", "lr": 2},
        {"arch": "b", "lr": 1},
        {"arch": "b", "lr": 2},
    ]
    assert expand_grid({}) == []


def test_run_names_are_folder_safe_stable_and_short() -> None:
    assert run_name({"arch": "resnet18", "head": "mlp"}) == "arch-resnet18_head-mlp"
    assert run_name({}) == "base"
    assert run_name({"lr": 0.05, "cache_images": True, "val_data": None}) == "lr-0.05_cache_images-true_val_data-none"
    assert run_name({"weights": "../w/r18 best.pt", "head_hidden": [64, 32]}) == (
        "weights-w-r18-best.pt_head_hidden-64-32"
    )
    long = {"weights": "/very/long/path/" * 10, "lr": 0.1}
    assert run_name(long) == run_name(dict(long)) and len(run_name(long)) == sweep.MAX_NAME_LENGTH
    assert run_name(long) != run_name({**long, "lr": 0.2})


def test_runs_are_the_grid_then_the_extra_runs_each_merged_over_base(tmp_path: Path) -> None:
    experiment = parse_experiment(
        {
            "out": str(tmp_path / "sw"),
            "base": {"data": "d", "arch": "resnet18", "epochs": 3, "batch-size": 8},
            "grid": {"lr": [0.1, 0.2], "epochs": [1]},
            "runs": [{"name": "big", "arch": "resnet50"}, {"batch_size": 4}],
        }
    )
    runs = plan_runs(experiment)
    assert [r.name for r in runs] == ["lr-0.1_epochs-1", "lr-0.2_epochs-1", "big", "batch_size-4"]
    assert [(r.config.lr, r.config.epochs, r.config.arch, r.config.batch_size) for r in runs] == [
        (0.1, 1, "resnet18", 8),
        (0.2, 1, "resnet18", 8),
        (0.01, 3, "resnet50", 8),  # runs merge over base, not over the grid
        (0.01, 3, "resnet18", 4),
    ]
    assert runs[2].config.out == str(tmp_path / "sw" / "big")
    assert runs[2].overrides == {"arch": "resnet50"}


def test_base_alone_is_one_run_and_defaults_come_from_the_file_name(tmp_path: Path) -> None:
    experiment = parse_experiment({"base": {"data": "d"}}, default_name="f4k_base")
    assert experiment.out == Path("runs/sweeps/f4k_base")
    assert [r.name for r in plan_runs(experiment)] == ["base"]
    only_runs = parse_experiment({"base": {"data": "d"}, "runs": [{"lr": 0.1}]})
    assert [r.name for r in plan_runs(only_runs)] == ["lr-0.1"]


def test_yaml_exponents_are_read_as_numbers() -> None:
    """PyYAML reads ``1e-3`` as a string; float options still get a number."""
    experiment = parse_experiment(yaml.safe_load("base: {data: d}\ngrid: {lr: [1e-3, 0.01]}"))
    assert [(r.name, r.config.lr) for r in plan_runs(experiment)] == [("lr-1e-3", 0.001), ("lr-0.01", 0.01)]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"grid": {"lr": [0.1]}, "runs": [{"lr": 0.1}]}, "duplicate run name"),
        ({"runs": [{"name": "a", "lr": 0.1}, {"name": "a", "lr": 0.2}]}, "duplicate run name"),
        ({"grid": {"lr": [0.1], "epoch": [3]}}, "unknown option"),
        ({"runs": [{"optimiser": "adamw"}]}, "optimiser"),
        ({"grid": {"epochs": [2, 0]}}, "run epochs-0: --epochs must be >= 1"),
        ({"grid": {"epochs": ["ten"]}}, "run epochs-ten"),
        ({"grid": {"arch": ["resnet18", "resnet81"]}}, "unknown arch 'resnet81'"),
        ({"runs": [{"name": "../up", "lr": 0.1}]}, "not a usable folder name"),
        ({"runs": [{"out": "elsewhere"}]}, "may not set 'out'"),
        ({"base": {"data": "d", "out": "x"}}, "may not set 'out'"),
        ({"grid": {"lr": 0.1}}, "grid.lr must be a non-empty list"),
        ({"grid": {"lr": []}}, "grid.lr must be a non-empty list"),
        ({"bse": {}}, "unknown experiment key"),
        ({"base": {}}, "no data"),
    ],
)
def test_bad_experiments_fail_before_training(values: dict[str, Any], message: str) -> None:
    values = {"base": {"data": "d"}, **values}
    with pytest.raises(ValueError, match=message):
        plan_runs(parse_experiment(values))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"grid": {"lr": [0.1, 0.1]}}, "duplicate run name"),
        ({"grid": {"arch": ["resnet18"], "heads": ["mlp"]}}, "unknown option"),
        ({"base": {"data": "missing"}}, "data missing does not exist"),
    ],
)
def test_cli_bad_experiment_exits_2_without_training(
    tmp_path: Path,
    fake_fit: FakeFit,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    values: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert sweep.main([str(_experiment(tmp_path, **values))]) == 2
    assert message in caplog.text
    assert not fake_fit.calls and not (tmp_path / "out").exists()


def test_cli_missing_or_broken_file_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert sweep.main([str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in caplog.text
    (tmp_path / "bad.yaml").write_text("base: [unclosed\n")
    assert sweep.main([str(tmp_path / "bad.yaml")]) == 2
    assert "not valid YAML" in caplog.text
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert sweep.main([str(tmp_path / "list.yaml")]) == 2
    assert "must hold a mapping" in caplog.text


def test_parse_sets_reads_values_as_yaml() -> None:
    assert parse_sets(["epochs=1", "head-hidden=[64, 32]", "augment=strong", "cache_images=true", "val_data="]) == {
        "epochs": 1,
        "head_hidden": [64, 32],
        "augment": "strong",
        "cache_images": True,
        "val_data": None,
    }
    for bad in ("epochs", "=1", "head_hidden=[1"):
        with pytest.raises(ValueError, match="--set"):
            parse_sets([bad])


def test_set_overrides_base_and_is_saved_in_sweep_yaml(tmp_path: Path, fake_fit: FakeFit) -> None:
    path = _experiment(tmp_path, base={"epochs": 12}, grid={"lr": [0.1, 0.2]})
    assert sweep.main([str(path), "--set", "epochs=2", "--set", "batch-size=4"]) == 0
    assert [(c.epochs, c.batch_size) for c in fake_fit.calls] == [(2, 4), (2, 4)]
    saved = yaml.safe_load((tmp_path / "out" / "sweep.yaml").read_text())
    assert saved["name"] == "exp" and saved["base"]["epochs"] == 2 and saved["base"]["batch_size"] == 4
    assert saved["grid"] == {"lr": [0.1, 0.2]}
    assert sweep.main([str(path), "--set", "out=elsewhere"]) == 2


def test_dry_run_lists_the_runs_and_trains_nothing(
    tmp_path: Path, fake_fit: FakeFit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = _experiment(tmp_path, grid={"arch": ["resnet18"], "lr": [0.1, 0.2]}, runs=[{"name": "strong", "lr": 0.3}])
    assert sweep.main([str(path), "--dry-run"]) == 0
    assert not fake_fit.calls and not (tmp_path / "out").exists()
    for name in ("arch-resnet18_lr-0.1", "arch-resnet18_lr-0.2", "strong"):
        assert name in caplog.text
    assert "lr=0.3" in caplog.text


def test_resume_reuses_saved_results_unless_forced_or_stale(tmp_path: Path, fake_fit: FakeFit) -> None:
    path = _experiment(tmp_path, grid={"lr": [0.1, 0.2]})
    assert sweep.main([str(path)]) == 0
    assert len(fake_fit.calls) == 2
    assert sweep.main([str(path)]) == 0  # everything done: nothing trains
    assert len(fake_fit.calls) == 2
    assert [r["status"] for r in _rows(tmp_path / "out" / "leaderboard.csv")] == ["reused", "reused"]

    (tmp_path / "out" / "lr-0.1" / "metrics.json").unlink()  # as if stopped during this run
    assert sweep.main([str(path)]) == 0
    assert [c.lr for c in fake_fit.calls[2:]] == [0.1]

    assert sweep.main([str(path), "--force", "--only", "lr-0.2"]) == 0
    assert [c.lr for c in fake_fit.calls[3:]] == [0.2]

    assert sweep.main([str(path), "--set", "epochs=2"]) == 0  # saved with other settings: trained again
    assert [c.lr for c in fake_fit.calls[4:]] == [0.1, 0.2]


def test_only_trains_the_named_runs(tmp_path: Path, fake_fit: FakeFit, caplog: pytest.LogCaptureFixture) -> None:
    path = _experiment(tmp_path, grid={"lr": [0.1, 0.2, 0.3]})
    assert sweep.main([str(path), "--only", "lr-0.3", "lr-0.1"]) == 0
    assert [c.lr for c in fake_fit.calls] == [0.1, 0.3]
    rows = _rows(tmp_path / "out" / "leaderboard.csv")
    assert [(r["run"], r["status"]) for r in rows] == [
        ("lr-0.3", "trained"),
        ("lr-0.1", "trained"),
        ("lr-0.2", "not run"),
    ]
    assert sweep.main([str(path), "--only", "lr-0.4"]) == 2
    assert "no run named lr-0.4" in caplog.text


def test_a_failed_run_is_reported_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeFit(fail=(0.2,))
    monkeypatch.setattr(sweep, "fit", fake)
    monkeypatch.setattr(sweep, "gc", SimpleNamespace(collect=lambda: 0))  # as fake_fit does
    path = _experiment(tmp_path, grid={"lr": [0.1, 0.2, 0.3]})
    assert sweep.main([str(path)]) == 1
    assert [c.lr for c in fake.calls] == [0.1, 0.2, 0.3]
    rows = _rows(tmp_path / "out" / "leaderboard.csv")
    assert [(r["rank"], r["run"], r["status"]) for r in rows] == [
        ("1", "lr-0.3", "trained"),
        ("2", "lr-0.1", "trained"),
        ("", "lr-0.2", "failed: RuntimeError: boom at lr 0.2"),
    ]
    log = (tmp_path / "out" / "lr-0.2" / "train.log").read_text()
    assert "run lr-0.2 failed" in log and "Traceback" in log and "RuntimeError: boom at lr 0.2" in log
    assert "boom at lr 0.2" in caplog.text and "1 run(s) failed: lr-0.2" in caplog.text
    assert not [h for h in logging.getLogger().handlers if getattr(h, "baseFilename", "").endswith("train.log")]

    monkeypatch.setattr(sweep, "fit", FakeFit())  # fixed: the next sweep trains only the failed run
    assert sweep.main([str(path)]) == 0
    assert [r["status"] for r in _rows(tmp_path / "out" / "leaderboard.csv")] == ["reused", "trained", "reused"]


def _run(experiment: Experiment, name: str, overrides: dict[str, Any], status: str, **metrics: Any) -> Run:
    """A run of ``experiment`` that sets ``overrides``, with this status and these metrics."""
    cfg = config_from_dict({**experiment.base, **overrides, "out": str(experiment.out / name)})
    return Run(name, overrides, cfg, status, metrics)


def test_leaderboard_is_sorted_by_macro_f1_with_failures_last(tmp_path: Path) -> None:
    base = {"data": "d", "arch": "resnet18", "weights": "none", "epochs": 10}
    experiment = Experiment("t", tmp_path, description="Which lr?", base=base)

    def result(name: str, lr: float, status: str = "trained", **metrics: Any) -> Run:
        return _run(experiment, name, {"lr": lr}, status, **metrics)

    full = {"accuracy": 0.9375, "macro_f1": 0.91234, "ece_before": 0.08, "ece": 0.021, "epochs_run": 7}
    results = [
        result("a", 0.1, "failed"),
        result("b", 0.2, accuracy=0.5, macro_f1=0.4, best_epoch=3, train_seconds=120.0, train_images_per_s=50.0),
        result("c", 0.3, best_epoch=6, train_seconds=30.0, train_images_per_s=80.0, **full),
        result("d", 0.4, "pending"),
    ]
    results[0].error = "RuntimeError: CUDA out of memory | really"
    csv_path, md_path = write_leaderboard(experiment, results)
    assert (csv_path, md_path) == (tmp_path / "leaderboard.csv", tmp_path / "leaderboard.md")
    rows = _rows(csv_path)
    assert list(rows[0]) == [
        "rank",
        "run",
        "lr",  # the only option that differs between runs
        "accuracy",
        "macro_f1",
        "ece_before",
        "ece",
        "epochs",
        "best_epoch",
        "minutes",
        "train_images_per_s",
        "status",
    ]
    assert [(r["rank"], r["run"]) for r in rows] == [("1", "c"), ("2", "b"), ("", "a"), ("", "d")]
    assert rows[0] == {
        "rank": "1",
        "run": "c",
        "lr": "0.3",
        "accuracy": "0.9375",
        "macro_f1": "0.91234",
        "ece_before": "0.08",
        "ece": "0.021",
        "epochs": "7",  # epochs_run, when the run stopped early
        "best_epoch": "6",
        "minutes": "0.5",
        "train_images_per_s": "80",
        "status": "trained",
    }
    assert (rows[1]["ece"], rows[1]["epochs"], rows[1]["minutes"]) == ("", "10", "2")  # optional metrics: blank
    assert rows[2]["status"] == "failed: RuntimeError: CUDA out of memory | really"

    md = md_path.read_text()
    assert md.startswith(
        "# Sweep t\n\nWhich lr?\n\nFixed settings: `data=d`, `arch=resnet18`, `weights=none`, `epochs=10`\n"
    )
    assert "0-based" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0] == (
        "| # | run | lr | accuracy | macro-F1 | ECE before | ECE | epochs | best epoch | minutes | train img/s "
        "| status |"
    )
    assert table[2] == "| 1 | c | 0.3 | 93.8% | 0.912 | 0.080 | 0.021 | 7 | 6 | 0.5 | 80 | trained |"
    assert table[4].startswith("|  | a | 0.1 |") and "out of memory \\| really" in table[4]
    assert len(table) == 2 + len(results)


@pytest.mark.slow
def test_real_two_run_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Two real 1-epoch trainings of a resnet18 at 32 px on 3 colours: two release.pt files, a 2-row leaderboard."""
    caplog.set_level(logging.INFO)  # what reaches train.log (main's basicConfig does this outside pytest)
    monkeypatch.chdir(tmp_path)
    data = make_imagefolder(tmp_path / "data", per_class=8, groups_per_class=4)
    path = _experiment(
        tmp_path,
        name="tiny",
        description="Linear or MLP head?",
        base={
            "data": str(data),
            "weights": "none",
            "epochs": 1,
            "image-size": 32,
            "batch-size": 8,
            "workers": 0,
            "device": "cpu",
            "group-pattern": r"fish_(\d+)_",
            "val-fraction": 0.25,
        },
        grid={"arch": ["resnet18"], "head": ["linear", "mlp"]},
    )
    assert sweep.main([str(path)]) == 0
    out = tmp_path / "out"
    for name in ("arch-resnet18_head-linear", "arch-resnet18_head-mlp"):
        assert (out / name / "release.pt").is_file() and (out / name / "metrics.json").is_file()
        assert "epoch 1/1" in (out / name / "train.log").read_text()
    rows = _rows(out / "leaderboard.csv")
    assert sorted(r["head"] for r in rows) == ["linear", "mlp"]
    assert [r["status"] for r in rows] == ["trained", "trained"] and rows[0]["rank"] == "1"
    assert float(rows[0]["macro_f1"]) >= float(rows[1]["macro_f1"])
    md = (out / "leaderboard.md").read_text()
    assert md.startswith("# Sweep tiny\n\nLinear or MLP head?\n") and md.count("| arch-resnet18_head-") == 2


def test_out_option_moves_the_sweep_folder(tmp_path: Path, fake_fit: FakeFit) -> None:
    path = _experiment(tmp_path, grid={"lr": [0.1, 0.2]})
    elsewhere = tmp_path / "elsewhere"
    assert sweep.main([str(path), "--out", str(elsewhere)]) == 0
    assert (elsewhere / "leaderboard.md").is_file() and (elsewhere / "sweep.yaml").is_file()
    assert [Path(c.out).parent for c in fake_fit.calls] == [elsewhere, elsewhere]
    assert not (tmp_path / "out").exists()


def test_leaderboard_adds_the_real_photo_columns_when_runs_have_them(tmp_path: Path) -> None:
    report = {
        "known_photos": {"top1": 0.615, "confidently_wrong": 0.046, "species": 0.456},
        "unknown_photos": {"species": 0.085},
        "not_subject": {"species": 0.025},
    }
    experiment = Experiment("photos", tmp_path, base={"data": "d"})
    results = [
        _run(experiment, "p", {"arch": "tf_efficientnet_lite0"}, "trained", macro_f1=0.95, open_set=report),
        _run(experiment, "q", {"arch": "resnet50"}, "trained", macro_f1=0.89),
    ]
    csv_path, md_path = write_leaderboard(experiment, results)
    rows = _rows(csv_path)
    assert list(rows[0])[list(rows[0]).index("ece") + 1 : list(rows[0]).index("epochs")] == [
        "photo_top1",
        "photo_confidently_wrong",
        "unknown_named",
        "not_subject_named",
    ]
    assert rows[0]["photo_top1"] == "0.615" and rows[0]["not_subject_named"] == "0.025" and rows[1]["photo_top1"] == ""
    assert "| photo top-1 |" in md_path.read_text() and "61.5%" in md_path.read_text()
