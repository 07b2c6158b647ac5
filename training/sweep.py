"""Run a grid of training configurations, one run folder each, and rank them in a leaderboard.

Usage::

    python -m training.sweep experiments/f4k_archs.yaml --dry-run        # list the runs, check every config
    python -m training.sweep experiments/f4k_archs.yaml --set epochs=1   # quick check of the whole pipeline
    python -m training.sweep experiments/f4k_archs.yaml                  # train (resumes a stopped sweep)
    python -m training.sweep experiments/f4k_archs.yaml --only arch-resnet50_head-mlp --force
    python -m training.sweep experiments/f4k_archs.yaml --set weights=imagenet --out runs/sweeps/f4k_imagenet

Experiment file (YAML)::

    name: f4k_archs            # optional; default: the file's stem
    out: runs/sweeps/f4k_archs # optional; default runs/sweeps/<name>
    description: free text     # optional, copied to the top of leaderboard.md
    base:                      # train.py options shared by every run ('-' or '_' in the names)
      data: ../shared/data/fish4knowledge
      weights: none
      epochs: 12
    grid:                      # optional: every combination of these values
      arch: [resnet18, resnet50]
      head: [linear, mlp]
    runs:                      # optional: extra runs, each a mapping of options (`name` names it)
      - {name: r18-strong, arch: resnet18, augment: strong}

The runs are every combination of ``grid`` merged over ``base`` (in the order written, the last key varying
fastest), then each entry of ``runs`` merged over ``base`` (not over the grid). With neither ``grid`` nor
``runs``, ``base`` alone is one run, named ``base``. A run's name is its ``name`` key, or else is made from the
options it sets, e.g. ``arch=resnet18, head=mlp`` gives ``arch-resnet18_head-mlp``; names must be unique.
Each run trains into ``<out>/<run name>``, so ``out`` may not be set in ``base``, ``grid`` or ``runs``. Relative
paths (``out``, ``data``, ...) are relative to the current directory: run from the repository root.
``--set KEY=VALUE`` overrides ``base`` for every run (values that the grid or a run sets still win).

Every configuration is checked (unknown options, ranges, architecture names, input paths) before anything
trains. The runs then train one after another in this process (:func:`training.trainer.fit`), each logging also
to ``<run folder>/train.log``. A run whose folder already holds ``metrics.json`` from the same configuration is
not trained again: its saved results are reused, so a stopped sweep resumes where it stopped (``--force``
retrains). A failed run is logged with its traceback and shown as failed; the others still train.

Outputs in ``<out>``: ``sweep.yaml`` (the resolved experiment, after ``--set``, to reproduce it),
``leaderboard.csv`` and ``leaderboard.md`` (rewritten after every run; see :func:`write_leaderboard`), and one
run folder per run.

Exit code: 0 when every selected run succeeded, 1 when some failed, 2 on a bad experiment file or option.
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import itertools
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.network import WEIGHTS_IMAGENET, WEIGHTS_NONE
from training.config import TrainConfig, config_from_dict, load_yaml
from training.trainer import fit

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_SWEEPS_DIR = Path("runs") / "sweeps"
EXPERIMENT_KEYS = ("name", "out", "description", "base", "grid", "runs")
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
SWEEP_YAML = "sweep.yaml"
METRICS_FILE = "metrics.json"
RUN_LOG = "train.log"
#: Folder names a run may take: no separators, no leading dot, nothing a shell would need quoting for.
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")
MAX_NAME_LENGTH = 80

#: Run statuses in the leaderboard.
TRAINED, REUSED, FAILED, PENDING, NOT_RUN = "trained", "reused", "failed", "pending", "not run"
OK_STATUSES = (TRAINED, REUSED)


@dataclass
class Experiment:
    """A parsed experiment file (keys normalised to ``TrainConfig`` field names)."""

    name: str
    out: Path
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The experiment in its file format (what ``sweep.yaml`` holds)."""
        values: dict[str, Any] = {"name": self.name, "out": str(self.out)}
        if self.description:
            values["description"] = self.description
        values["base"] = dict(self.base)
        if self.grid:
            values["grid"] = {k: list(v) for k, v in self.grid.items()}
        if self.runs:
            values["runs"] = [dict(r) for r in self.runs]
        return values


@dataclass(frozen=True)
class Run:
    """One planned training run: its name, the options it sets over ``base``, and its validated config."""

    name: str
    overrides: dict[str, Any]
    config: TrainConfig


@dataclass
class RunResult:
    """A leaderboard row: the run's resolved config (``TrainConfig.to_dict()``), its status and its metrics.

    ``metrics`` is :func:`training.trainer.fit`'s result (``metrics.json``), empty unless the run succeeded;
    ``status`` is one of ``trained``, ``reused``, ``failed``, ``pending`` or ``not run``.
    """

    name: str
    config: dict[str, Any]
    status: str = PENDING
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the run has results (trained now or earlier)."""
        return self.status in OK_STATUSES


def _normalise(values: Mapping[str, Any]) -> dict[str, Any]:
    """Option names as ``TrainConfig`` fields: ``batch-size`` -> ``batch_size``."""
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping of options (key: value), not {type(value).__name__}")
    return _normalise(value)


def _no_out(values: Mapping[str, Any], where: str) -> None:
    if "out" in values:
        raise ValueError(f"{where} may not set 'out': each run trains into <sweep out>/<run name>")


def parse_experiment(values: Mapping[str, Any], default_name: str = "sweep") -> Experiment:
    """Check the structure of an experiment mapping (see the module docstring) and normalise its option names.

    The options themselves are checked by :func:`plan_runs`.

    Raises:
        ValueError: unknown top-level keys, wrong types, an empty grid list, or ``out`` set per run.
    """
    unknown = sorted(set(values) - set(EXPERIMENT_KEYS))
    if unknown:
        raise ValueError(f"unknown experiment key(s) {', '.join(unknown)}; expected {', '.join(EXPERIMENT_KEYS)}")
    name = values.get("name") or default_name
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, not {type(name).__name__}")
    out = values.get("out") or DEFAULT_SWEEPS_DIR / name
    if not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"out must be a path, not {type(out).__name__}")
    description = values.get("description") or ""
    if not isinstance(description, str):
        raise ValueError(f"description must be text, not {type(description).__name__}")

    base = _mapping(values.get("base"), "base")
    _no_out(base, "base")
    grid = _mapping(values.get("grid"), "grid")
    _no_out(grid, "grid")
    for key, options in grid.items():
        if key == "name":
            raise ValueError("grid may not vary 'name'")
        if not isinstance(options, list) or not options:
            raise ValueError(f"grid.{key} must be a non-empty list of values, e.g. {key}: [a, b]")

    runs_value = values.get("runs") or []
    if not isinstance(runs_value, list):
        raise ValueError(f"runs must be a list of mappings, not {type(runs_value).__name__}")
    runs = []
    for i, entry in enumerate(runs_value, 1):
        run = _mapping(entry, f"runs[{i}]")
        _no_out(run, f"runs[{i}]")
        if "name" in run and not isinstance(run["name"], str):
            raise ValueError(f"runs[{i}].name must be a string")
        runs.append(run)
    return Experiment(name=name, out=Path(out), description=description, base=base, grid=grid, runs=runs)


def load_experiment(path: str | os.PathLike[str], sets: Sequence[str] = ()) -> Experiment:
    """Read an experiment file and apply ``--set KEY=VALUE`` overrides to its ``base``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad YAML, a bad experiment structure, or a malformed ``--set``.
    """
    path = Path(path)
    experiment = parse_experiment(load_yaml(path), default_name=path.stem)
    overrides = parse_sets(sets)
    _no_out(overrides, "--set")
    set_elsewhere = sorted(set(overrides) & (set(experiment.grid).union(*experiment.runs)))
    if set_elsewhere:
        logger.warning("--set %s: the grid or runs set it too, and their values win", ", ".join(set_elsewhere))
    experiment.base.update(overrides)
    return experiment


def parse_sets(sets: Iterable[str]) -> dict[str, Any]:
    """``["epochs=1", "head-hidden=[64]"]`` -> ``{"epochs": 1, "head_hidden": [64]}`` (values as YAML).

    Raises:
        ValueError: an item without ``=``, an empty key, or a value that is not valid YAML.
    """
    values: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=1")
        try:
            values[key] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: the value is not valid YAML: {exc}") from exc
    return values


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in key order, the last key varying fastest.

    ``{"arch": ["a", "b"], "lr": [1, 2]}`` -> ``[{arch: a, lr: 1}, {arch: a, lr: 2}, {arch: b, lr: 1}, ...]``;
    an empty grid gives no combinations.
    """
    if not grid:
        return []
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def _name_part(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        text = str(value).lower()
    elif isinstance(value, (int, float, str)):
        text = str(value)
    else:
        text = json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9.+=-]+", "-", text).strip("-.") or "x"


def run_name(overrides: Mapping[str, Any]) -> str:
    """A folder-safe name from the options a run sets, e.g. ``{arch: resnet18, head: mlp}`` ->
    ``arch-resnet18_head-mlp`` (``base`` when it sets none). Long names are cut and end in a short hash, so
    they stay unique and stable.
    """
    if not overrides:
        return "base"
    name = "_".join(f"{key}-{_name_part(value)}" for key, value in overrides.items())
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME_LENGTH - 9]}-{digest}"
    return name


def _check_name(name: str) -> None:
    if not RUN_NAME_PATTERN.fullmatch(name) or name in (LEADERBOARD_CSV, LEADERBOARD_MD, SWEEP_YAML):
        raise ValueError(
            f"run name {name!r} is not a usable folder name: use letters, digits and . _ = + - "
            "(starting with a letter or digit)"
        )


def plan_runs(experiment: Experiment) -> list[Run]:
    """The experiment's runs, each with a validated :class:`TrainConfig` (``out`` = ``<sweep out>/<name>``).

    Raises:
        ValueError: duplicate or unusable run names, unknown options, out-of-range values or unknown
            architectures (the message names the run).
    """
    entries: list[tuple[str | None, dict[str, Any]]] = [(None, combo) for combo in expand_grid(experiment.grid)]
    for run in experiment.runs:
        overrides = dict(run)
        entries.append((overrides.pop("name", None), overrides))
    if not entries:
        entries = [(None, {})]

    runs: list[Run] = []
    seen: dict[str, int] = {}
    for explicit, overrides in entries:
        name = explicit or run_name(overrides)
        _check_name(name)
        seen[name] = seen.get(name, 0) + 1
        values = {**experiment.base, **overrides, "out": str(experiment.out / name)}
        try:
            cfg = config_from_dict(values)
        except (ValueError, TypeError) as exc:  # TypeError: a value of the wrong type, e.g. epochs: ten
            raise ValueError(f"run {name}: {exc}") from exc
        if not cfg.data:
            raise ValueError(f"run {name}: no data; set base.data (the ImageFolder root)")
        runs.append(Run(name=name, overrides=overrides, config=cfg))
    duplicates = sorted(name for name, count in seen.items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate run name(s) {', '.join(duplicates)}: give the runs distinct 'name' keys")
    return runs


def check_paths(runs: Iterable[Run]) -> None:
    """Check that every run's input paths exist (data, val_data, class_info, a weights file, resume).

    Raises:
        FileNotFoundError: naming the run and the option.
    """
    for run in runs:
        cfg = run.config
        paths = {"data": cfg.data, "val_data": cfg.val_data, "class_info": cfg.class_info, "resume": cfg.resume}
        if cfg.weights not in (WEIGHTS_IMAGENET, WEIGHTS_NONE):
            paths["weights"] = cfg.weights
        for option, path in paths.items():
            if path and not Path(path).exists():
                raise FileNotFoundError(f"run {run.name}: {option} {path} does not exist")


def varied_keys(configs: Sequence[Mapping[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """Options whose value is not the same in every config (never ``out``): those in ``first`` first, then the
    rest in field order."""
    if len(configs) < 2:
        return []
    keys = dict.fromkeys([*first, *configs[0]])
    return [k for k in keys if k != "out" and any(c.get(k) != configs[0].get(k) for c in configs[1:])]


def fixed_settings(runs: Sequence[Run], base: Mapping[str, Any], varied: Sequence[str]) -> dict[str, Any]:
    """Options shared by every run that the experiment sets or that differ from ``TrainConfig``'s defaults."""
    if not runs:
        return {}
    defaults = TrainConfig().to_dict()
    explicit = set(base).union(*(r.overrides for r in runs))
    config = runs[0].config.to_dict()
    return {
        k: v for k, v in config.items() if k not in varied and k != "out" and (k in explicit or v != defaults.get(k))
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _row(result: RunResult, rank: int | None, varied: Sequence[str]) -> dict[str, Any]:
    """One leaderboard row of raw values (None where unknown)."""
    m = result.metrics
    seconds = _number(m.get("train_seconds"))
    epochs = _number(m.get("epochs_run"))
    status = f"{FAILED}: {result.error}" if result.status == FAILED and result.error else result.status
    return {
        "rank": rank,
        "run": result.name,
        **{k: result.config.get(k) for k in varied},
        "accuracy": _number(m.get("accuracy")),
        "macro_f1": _number(m.get("macro_f1")),
        "ece_before": _number(m.get("ece_before")),
        "ece": _number(m.get("ece")),
        **_open_set_columns(m.get("open_set") or {}),
        "epochs": int(epochs) if epochs is not None else result.config.get("epochs"),
        "best_epoch": int(v) if (v := _number(m.get("best_epoch"))) is not None else None,
        "minutes": seconds / 60 if seconds is not None else None,
        "train_images_per_s": _number(m.get("train_images_per_s")),
        "status": status,
    }


def _open_set_columns(report: Mapping[str, Any]) -> dict[str, float | None]:
    """Real-photo columns from ``metrics.json``'s ``open_set`` (absent without ``--open-set-photos``): top-1 and
    confidently wrong on known photos, and how often unknown-species photos and not-subject pictures are named as a
    species."""
    known, unknown, other = (report.get(k) or {} for k in ("known_photos", "unknown_photos", "not_subject"))
    return {
        "photo_top1": _number(known.get("top1")),
        "photo_confidently_wrong": _number(known.get("confidently_wrong")),
        "unknown_named": _number(unknown.get("species")),
        "not_subject_named": _number(other.get("species")),
    }


def rank_results(results: Sequence[RunResult]) -> list[tuple[int | None, RunResult]]:
    """Results with their rank, best validation macro-F1 first; runs without results last, unranked, in order."""
    ok = [r for r in results if r.ok]
    ok.sort(key=lambda r: -(_number(r.metrics.get("macro_f1")) or 0.0))
    failed = [r for r in results if r.status == FAILED]
    rest = [r for r in results if not r.ok and r.status != FAILED]
    return [*((i, r) for i, r in enumerate(ok, 1)), *((None, r) for r in [*failed, *rest])]


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def _md_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "accuracy" or key in OPEN_SET_COLUMNS:
        return f"{100 * value:.1f}%"
    if key in ("macro_f1", "ece_before", "ece"):
        return f"{value:.3f}"
    if key == "minutes":
        return f"{value:.1f}"
    if key == "train_images_per_s":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= 160 else text[:157] + "..."


MD_HEADERS = {
    "rank": "#",
    "run": "run",
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "ece_before": "ECE before",
    "ece": "ECE",
    "photo_top1": "photo top-1",
    "photo_confidently_wrong": "photo confidently wrong",
    "unknown_named": "unknown species named",
    "not_subject_named": "not-subject named",
    "epochs": "epochs",
    "best_epoch": "best epoch",
    "minutes": "minutes",
    "train_images_per_s": "train img/s",
    "status": "status",
}
MD_NUMERIC = set(MD_HEADERS) - {"run", "status"}
#: Columns of :func:`_open_set_columns`, written only when some run has them.
OPEN_SET_COLUMNS = ("photo_top1", "photo_confidently_wrong", "unknown_named", "not_subject_named")


def write_leaderboard(
    results: Sequence[RunResult],
    out_dir: str | os.PathLike[str],
    *,
    varied: Sequence[str] | None = None,
    title: str = "Leaderboard",
    description: str = "",
    fixed: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``out_dir/leaderboard.csv`` and ``out_dir/leaderboard.md``: one row per run, best first.

    Columns: ``rank, run``, the ``varied`` options (default: those that differ between the results' configs),
    ``accuracy, macro_f1, ece_before, ece`` (validation, from ``metrics.json``; ECE before and after
    temperature scaling), ``epochs`` (run, else configured), ``best_epoch`` (0-based, as in ``metrics.csv``),
    ``minutes`` (training time), ``train_images_per_s`` and ``status``; runs with ``--open-set-photos`` add
    :data:`OPEN_SET_COLUMNS` after ``ece``. Rows are sorted by macro-F1, descending;
    runs without results (failed, then pending or not run) come last, unranked. The CSV holds raw numbers
    (fractions); the Markdown file a title, the ``description``, the ``fixed`` settings on one line and a table
    with accuracy in percent and macro-F1 and ECE to 3 decimals.

    Returns:
        ``(csv_path, markdown_path)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if varied is None:
        varied = varied_keys([r.config for r in results])
    rows = [_row(result, rank, varied) for rank, result in rank_results(results)]
    open_set = [k for k in OPEN_SET_COLUMNS if any(row[k] is not None for row in rows)]  # only with photos
    columns = ["rank", "run", *varied, *(k for k in list(MD_HEADERS)[2:] if k not in OPEN_SET_COLUMNS or k in open_set)]

    csv_path = out / LEADERBOARD_CSV
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row[k]) for k in columns})

    lines = [f"# {title}", ""]
    if description:
        lines += [description.strip(), ""]
    if fixed:
        lines += ["Fixed settings: " + ", ".join(f"`{k}={_md_value(k, v)}`" for k, v in fixed.items()), ""]
    done = sum(r.ok for r in results)
    lines += [
        f"{done} of {len(results)} runs done. Validation accuracy, macro-F1 and expected calibration error (ECE, "
        "before and after temperature scaling) of each run's `release.pt`, best macro-F1 first; best epoch is "
        "0-based (as in `metrics.csv`); minutes of training.",
        "",
        "| " + " | ".join(MD_HEADERS.get(c, c) for c in columns) + " |",
        "|" + "|".join("--:" if c in MD_NUMERIC else ":--" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(_md_value(c, row[c]) for c in columns) + " |" for row in rows]
    md_path = out / LEADERBOARD_MD
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run folder was trained with (``config.yaml`` or ``config.json``), if readable."""
    for name, loader in (("config.yaml", yaml.safe_load), ("config.json", json.loads)):
        path = run_dir / name
        if path.is_file():
            try:
                saved = loader(path.read_text())
            except (yaml.YAMLError, json.JSONDecodeError):
                return None
            return saved if isinstance(saved, dict) else None
    return None


def saved_results(run: Run) -> dict[str, Any] | None:
    """The metrics a run folder holds from an earlier sweep, or None when there are none or they are stale
    (its saved config differs from ``run.config``)."""
    run_dir = Path(run.config.out)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON: run %s trains again", path, run.name)
        return None
    saved = _saved_config(run_dir)
    if saved is not None:
        current = json.loads(json.dumps(run.config.to_dict()))
        changed = sorted(k for k in current.keys() & saved.keys() if k != "out" and current[k] != saved[k])
        if changed:
            logger.warning(
                "run %s: the results in %s are from other settings (%s), so they are not reused",
                run.name,
                run_dir,
                ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in changed),
            )
            return None
    return metrics if isinstance(metrics, dict) else None


def _release_memory() -> None:
    """Free what a finished run left behind before the next one (GPU caches above all)."""
    gc.collect()
    import torch  # already imported by training.trainer

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_run(run: Run) -> RunResult:
    """Train one run in this process, logging also to ``<run folder>/train.log``.

    Results of an earlier attempt in the folder (``metrics.csv``, ``metrics.json``) are removed first, so they
    are not mixed with the new ones. Any exception from training is logged with its traceback and returned as a
    failed result rather than raised, so a sweep goes on with its other runs.
    """
    run_dir = Path(run.config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.csv", METRICS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    handler = logging.FileHandler(run_dir / RUN_LOG, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        logger.info("run %s: training into %s (%s)", run.name, run_dir, _describe(run.overrides) or "base")
        metrics = fit(run.config)
    except Exception as exc:  # any failure of one run is reported, and the sweep goes on
        logger.exception("run %s failed", run.name)
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return RunResult(run.name, run.config.to_dict(), FAILED, error=error)
    finally:
        root.removeHandler(handler)
        handler.close()
        _release_memory()
    logger.info(
        "run %s: accuracy %.4f, macro-F1 %.4f", run.name, metrics.get("accuracy", 0), metrics.get("macro_f1", 0)
    )
    return RunResult(run.name, run.config.to_dict(), TRAINED, metrics=dict(metrics))


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def run_sweep(
    experiment: Experiment,
    runs: Sequence[Run],
    *,
    only: Sequence[str] = (),
    force: bool = False,
) -> list[RunResult]:
    """Train the selected runs one after another and keep the leaderboard up to date.

    ``only`` selects runs by name (default: all). A selected run with saved results from the same config is
    reused unless ``force``; a run not selected shows its saved results, if any, or ``not run``. Writes
    ``sweep.yaml`` first and the leaderboard after every run.

    Returns:
        The results, in plan order.

    Raises:
        ValueError: a name in ``only`` is not a run of the experiment.
    """
    names = [r.name for r in runs]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ValueError(f"--only: no run named {', '.join(unknown)}; the runs are {', '.join(names)}")
    selected = set(only or names)

    out = experiment.out
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_YAML).write_text(yaml.safe_dump(experiment.to_dict(), sort_keys=False))

    configs = [r.config.to_dict() for r in runs]
    first = list(dict.fromkeys(k for r in runs for k in r.overrides))
    varied = varied_keys(configs, first)
    board = {
        "varied": varied,
        "title": f"Sweep {experiment.name}",
        "description": experiment.description,
        "fixed": fixed_settings(runs, experiment.base, varied),
    }

    results: list[RunResult] = []
    for run, config in zip(runs, configs, strict=True):
        saved = None if force and run.name in selected else saved_results(run)
        if saved is not None:
            results.append(RunResult(run.name, config, REUSED, metrics=saved))
        else:
            results.append(RunResult(run.name, config, PENDING if run.name in selected else NOT_RUN))
    to_train = [i for i, r in enumerate(results) if r.status == PENDING]
    reused = [r.name for r in results if r.status == REUSED and r.name in selected]
    if reused:
        logger.info("reusing the saved results of %s (--force trains them again)", ", ".join(reused))
    write_leaderboard(results, out, **board)

    for n, i in enumerate(to_train, 1):
        logger.info("=== run %d/%d: %s", n, len(to_train), runs[i].name)
        results[i] = train_run(runs[i])
        write_leaderboard(results, out, **board)
    return results


def get_args_parser() -> argparse.ArgumentParser:
    """The ``python -m training.sweep`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m training.sweep",
        description=__doc__ or "Train a grid of configurations from an experiment file and write a leaderboard.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", metavar="FILE.yaml", help="experiment file: name, out, base, grid, runs")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="sweep folder instead of the file's 'out' (e.g. to keep ImageNet runs apart from the checked-in ones)",
    )
    parser.add_argument("--dry-run", action="store_true", help="check every config, list the runs, train nothing")
    parser.add_argument(
        "--only", nargs="+", action="extend", default=[], metavar="NAME", help="train only these runs (by name)"
    )
    parser.add_argument("--force", action="store_true", help="train again runs whose folder already holds metrics.json")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base option for every run, the value read as YAML (e.g. --set epochs=1); repeatable",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; returns the exit code (0 all ok, 1 some runs failed, 2 bad experiment file or option)."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        experiment = load_experiment(args.experiment, args.sets)
        if args.out:
            experiment.out = Path(args.out)
        runs = plan_runs(experiment)
        check_paths(runs)
        if args.dry_run:
            _log_plan(experiment, runs)
            return 0
        results = run_sweep(experiment, runs, only=args.only, force=args.force)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s: %s", args.experiment, exc)
        return 2
    failed = [r.name for r in results if r.status == FAILED]
    md = (experiment.out / LEADERBOARD_MD).read_text()
    logger.info("leaderboard %s:\n%s", experiment.out / LEADERBOARD_MD, md)
    if failed:
        logger.error("%d run(s) failed: %s (see their train.log)", len(failed), ", ".join(failed))
        return 1
    return 0


def _log_plan(experiment: Experiment, runs: Sequence[Run]) -> None:
    """Log what a sweep would train (``--dry-run``)."""
    defaults = TrainConfig().to_dict()
    logger.info("sweep %s: %d run(s) into %s", experiment.name, len(runs), experiment.out)
    for run in runs:
        config = run.config.to_dict()
        explicit = {*experiment.base, *run.overrides}
        settings = {k: v for k, v in config.items() if k != "out" and (k in explicit or v != defaults[k])}
        status = "has metrics.json" if (Path(run.config.out) / METRICS_FILE).is_file() else "to train"
        logger.info("%s (%s)\n  %s", run.name, status, _describe(settings))


if __name__ == "__main__":
    sys.exit(main())
