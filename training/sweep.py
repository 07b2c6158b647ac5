"""Run a grid of training configurations, one run folder each, and rank them in a leaderboard.

This module owns experiment files, a sweep's run folders and its leaderboard; training.config parses and checks
each run's options and training.trainer.fit trains it.

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
trains. The runs then train one after another in this process, each logging also to ``<run folder>/train.log``.
A run whose folder already holds ``metrics.json`` from the same configuration is not trained again: its saved
results are reused, so a stopped sweep resumes where it stopped (``--force`` retrains). A failed run is logged
with its traceback and shown as failed; the others still train.

Outputs in ``<out>``: ``sweep.yaml`` (the resolved experiment, after ``--set``, to reproduce it),
``leaderboard.csv`` and ``leaderboard.md`` (rewritten after every run; see :func:`write_leaderboard`), and one
run folder per run. Exit code: 0 when every selected run succeeded, 1 when some failed, 2 on a bad experiment
file or option.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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
from pathlib import Path
from typing import Any

import torch
import yaml

from model.logs import log_format, setup_logging
from model.network import WEIGHTS_IMAGENET, WEIGHTS_NONE
from training.config import TrainConfig, config_from_dict, load_yaml, normalise_keys
from training.trainer import fit

logger = logging.getLogger(__name__)

LEADERBOARD_CSV, LEADERBOARD_MD = "leaderboard.csv", "leaderboard.md"
SWEEP_YAML, METRICS_FILE = "sweep.yaml", "metrics.json"
#: Folder names a run may take: no separators, no leading dot, nothing a shell would need quoting for.
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")
MAX_NAME_LENGTH = 80
#: Run statuses in the leaderboard.
TRAINED, REUSED, FAILED, PENDING, NOT_RUN = "trained", "reused", "failed", "pending", "not run"


@dataclasses.dataclass
class Experiment:
    """An experiment file, its option names as :class:`TrainConfig` fields (a ``runs`` entry may add ``name``)."""

    name: str
    out: Path
    description: str = ""
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The experiment in its file format (what ``sweep.yaml`` holds)."""
        values = {**dataclasses.asdict(self), "out": str(self.out)}
        return {k: v for k, v in values.items() if v or k == "base"}


@dataclasses.dataclass
class Run:
    """One run: its name, the options it sets over ``base``, its validated config, and how it went (``status``:
    trained, reused, failed, pending or not run; ``metrics``: :func:`training.trainer.fit`'s ``metrics.json``)."""

    name: str
    overrides: dict[str, Any]
    config: TrainConfig
    status: str = PENDING
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the run has results (trained now or earlier)."""
        return self.status in (TRAINED, REUSED)


def _options(value: Any, where: str, named: bool = False) -> dict[str, Any]:
    """``value`` as train.py options named as fields, a run's ``name`` first; ValueError for anything else."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping of options (key: value), not {type(value).__name__}")
    name = value.get("name") if named else None
    if name is not None and not isinstance(name, str):
        raise ValueError(f"{where}.name must be a string")
    options = normalise_keys({k: v for k, v in value.items() if not (named and k == "name")}, where)
    if "out" in options:
        raise ValueError(f"{where} may not set 'out': each run trains into <sweep out>/<run name>")
    return {"name": name, **options} if name is not None else options


def parse_experiment(values: Mapping[str, Any], default_name: str = "sweep") -> Experiment:
    """Check an experiment mapping's structure and option names (see the module docstring).

    Raises:
        ValueError: unknown keys or options, wrong types, an empty grid list, or ``out`` set per run.
    """
    keys = [f.name for f in dataclasses.fields(Experiment)]
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise ValueError(f"unknown experiment key(s) {', '.join(unknown)}; expected {', '.join(keys)}")
    for key, kind in (("name", str), ("description", str), ("out", (str, os.PathLike)), ("runs", list)):
        if values.get(key) is not None and not isinstance(values[key], kind):
            raise ValueError(f"{key} may not be a {type(values[key]).__name__}")
    grid = _options(values.get("grid") or {}, "grid")
    for key, options in grid.items():
        if not isinstance(options, list) or not options:
            raise ValueError(f"grid.{key} must be a non-empty list of values, e.g. {key}: [a, b]")
    name = values.get("name") or default_name
    return Experiment(
        name=name,
        out=Path(values.get("out") or Path("runs", "sweeps", name)),
        description=values.get("description") or "",
        base=_options(values.get("base") or {}, "base"),
        grid=grid,
        runs=[_options(run, f"runs[{i}]", named=True) for i, run in enumerate(values.get("runs") or [], 1)],
    )


def parse_sets(sets: Iterable[str]) -> dict[str, Any]:
    """``["epochs=1", "head-hidden=[64]"]`` -> ``{"epochs": 1, "head_hidden": [64]}`` (values read as YAML).

    Raises:
        ValueError: an item without ``=``, an empty key, an unknown option, ``out``, or a value that is not YAML.
    """
    values: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=1")
        try:
            values[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: the value is not valid YAML: {exc}") from exc
    return _options(values, "--set")


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in key order, the last key varying fastest (none for ``{}``)."""
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())] if grid else []


def run_name(overrides: Mapping[str, Any]) -> str:
    """A folder-safe name from the options a run sets, e.g. ``{arch: resnet18, head: mlp}`` ->
    ``arch-resnet18_head-mlp`` (``base`` when it sets none). Long names are cut and end in a short hash, so
    they stay unique and stable.
    """

    def part(value: Any) -> str:
        if value is None or isinstance(value, bool):
            value = str(value).lower()
        text = str(value) if isinstance(value, (int, float, str)) else json.dumps(value, separators=(",", ":"))
        return re.sub(r"[^A-Za-z0-9.+=-]+", "-", text).strip("-.") or "x"

    name = "_".join(f"{key}-{part(value)}" for key, value in overrides.items()) or "base"
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME_LENGTH - 9]}-{digest}"
    return name


def plan_runs(experiment: Experiment) -> list[Run]:
    """The experiment's runs, each with a validated :class:`TrainConfig` (``out`` = ``<sweep out>/<name>``).

    Raises:
        ValueError: duplicate or unusable run names, no ``data``, or a bad option (the message names the run).
    """
    runs: list[Run] = []
    for overrides in [*expand_grid(experiment.grid), *map(dict, experiment.runs)] or [{}]:
        name = overrides.pop("name", None) or run_name(overrides)
        if not RUN_NAME_PATTERN.fullmatch(name) or name in (LEADERBOARD_CSV, LEADERBOARD_MD, SWEEP_YAML):
            raise ValueError(f"run name {name!r} is not a usable folder name: use letters, digits and . _ = + -")
        try:
            cfg = config_from_dict({**experiment.base, **overrides, "out": str(experiment.out / name)})
        except ValueError as exc:
            raise ValueError(f"run {name}: {exc}") from exc
        if not cfg.data:
            raise ValueError(f"run {name}: no data; set base.data (the ImageFolder root)")
        runs.append(Run(name, overrides, cfg))
    names = [run.name for run in runs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate run name(s) {', '.join(duplicates)}: give the runs distinct 'name' keys")
    return runs


def check_paths(runs: Iterable[Run]) -> None:
    """FileNotFoundError, naming the run and the option, unless every input path of every run exists."""
    for run in runs:
        cfg = run.config
        paths = {"data": cfg.data, "val_data": cfg.val_data, "class_info": cfg.class_info, "resume": cfg.resume}
        paths["weights"] = None if cfg.weights in (WEIGHTS_IMAGENET, WEIGHTS_NONE) else cfg.weights
        for option, path in paths.items():
            if path and not Path(path).exists():
                raise FileNotFoundError(f"run {run.name}: {option} {path} does not exist")


def _settings(run: Run, explicit: Iterable[str]) -> dict[str, Any]:
    """The run's options (but ``out``) that the experiment sets (``explicit``) or that differ from the defaults."""
    defaults, explicit = TrainConfig().to_dict(), set(explicit)
    return {k: v for k, v in run.config.to_dict().items() if k != "out" and (k in explicit or v != defaults[k])}


#: Leaderboard columns after ``rank``, ``run`` and the varied options: name -> (Markdown header, Markdown format
#: of a number, None: as text).
COLUMNS: dict[str, tuple[str, str | None]] = {
    "accuracy": ("accuracy", "{:.1%}"),
    "macro_f1": ("macro-F1", "{:.3f}"),
    "ece_before": ("ECE before", "{:.3f}"),
    "ece": ("ECE", "{:.3f}"),
    "photo_top1": ("photo top-1", "{:.1%}"),
    "photo_confidently_wrong": ("photo confidently wrong", "{:.1%}"),
    "unknown_named": ("unknown species named", "{:.1%}"),
    "not_subject_named": ("not-subject named", "{:.1%}"),
    "epochs": ("epochs", None),
    "best_epoch": ("best epoch", None),
    "minutes": ("minutes", "{:.1f}"),
    "train_images_per_s": ("train img/s", "{:.0f}"),
    "status": ("status", None),
}
#: Real-photo columns, only when some run has them (``metrics.json``'s ``open_set``, from ``--open-set-photos``):
#: top-1 and confidently wrong on known photos; how often unknown species and not-subject pictures get a species.
OPEN_SET_COLUMNS = ("photo_top1", "photo_confidently_wrong", "unknown_named", "not_subject_named")


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    return float(value) if ok else None


def _row(run: Run, rank: int | None, varied: Sequence[str]) -> dict[str, Any]:
    """One leaderboard row of raw values (None where unknown)."""
    m, config = run.metrics, run.config.to_dict()
    known, unknown, other = (
        (m.get("open_set") or {}).get(k) or {} for k in ("known_photos", "unknown_photos", "not_subject")
    )
    photos = [known.get("top1"), known.get("confidently_wrong"), unknown.get("species"), other.get("species")]
    row = {k: _number(m.get(k)) for k in ("accuracy", "macro_f1", "ece_before", "ece", "train_images_per_s")}
    row |= {k: _number(v) for k, v in zip(OPEN_SET_COLUMNS, photos, strict=True)}
    epochs, best, seconds = (_number(m.get(k)) for k in ("epochs_run", "best_epoch", "train_seconds"))
    row |= {
        "epochs": int(epochs) if epochs is not None else config["epochs"],
        "best_epoch": int(best) if best is not None else None,
        "minutes": seconds / 60 if seconds is not None else None,
        "status": f"{FAILED}: {run.error}" if run.status == FAILED and run.error else run.status,
    }
    return {"rank": rank, "run": run.name, **{k: config[k] for k in varied}, **row}


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else value


def _md_value(key: str, value: Any) -> str:
    fmt = COLUMNS.get(key, ("", None))[1]
    if value is None or fmt:
        return "" if value is None else fmt.format(value)
    if isinstance(value, float):
        return f"{value:g}"
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= 160 else text[:157] + "..."


def write_leaderboard(experiment: Experiment, runs: Sequence[Run]) -> tuple[Path, Path]:
    """Write ``leaderboard.csv`` and ``leaderboard.md`` into the experiment's ``out``: one row per run, best first.

    Columns: ``rank, run``, the options that differ between runs (those the runs set first, then in field order),
    then :data:`COLUMNS`: from ``metrics.json``, validation accuracy, macro-F1 and ECE before and after
    temperature scaling, the :data:`OPEN_SET_COLUMNS` (only when some run has them), epochs (run, else
    configured), the 0-based best epoch (as in ``metrics.csv``), minutes of training, training images/s; and the
    status. Rows are sorted by macro-F1, descending; runs without results (failed, then pending or not run) come
    last, unranked. The CSV holds raw numbers (fractions); the Markdown file a title, the description, the
    settings every run shares and a table with accuracy in percent and macro-F1 and ECE to 3 decimals.

    Returns:
        ``(csv_path, markdown_path)``.
    """
    configs = [run.config.to_dict() for run in runs]
    keys = dict.fromkeys([*(k for run in runs for k in run.overrides), *configs[0]])
    varied = [k for k in keys if k != "out" and any(c[k] != configs[0][k] for c in configs)]
    explicit = set(experiment.base).union(*(run.overrides for run in runs))
    fixed = {k: v for k, v in _settings(runs[0], explicit).items() if k not in varied}
    ranked = sorted((r for r in runs if r.ok), key=lambda r: -(_number(r.metrics.get("macro_f1")) or 0.0))
    unranked = [r for r in runs if r.status == FAILED] + [r for r in runs if not r.ok and r.status != FAILED]
    rows = [_row(run, i, varied) for i, run in enumerate(ranked, 1)] + [_row(run, None, varied) for run in unranked]
    absent = {k for k in OPEN_SET_COLUMNS if all(row[k] is None for row in rows)}
    columns = ["rank", "run", *varied, *(k for k in COLUMNS if k not in absent)]

    experiment.out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = experiment.out / LEADERBOARD_CSV, experiment.out / LEADERBOARD_MD
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _csv_value(row[k]) for k in columns} for row in rows)
    lines = [
        f"# Sweep {experiment.name}",
        "",
        *([experiment.description.strip(), ""] if experiment.description else []),
    ]
    if fixed:
        lines += ["Fixed settings: " + ", ".join(f"`{k}={_md_value(k, v)}`" for k, v in fixed.items()), ""]
    lines += [
        f"{len(ranked)} of {len(runs)} runs done. Validation accuracy, macro-F1 and expected calibration error "
        "(ECE, before and after temperature scaling) of each run's `release.pt`, best macro-F1 first; best epoch "
        "is 0-based (as in `metrics.csv`); minutes of training.",
        "",
        "| " + " | ".join("#" if c == "rank" else COLUMNS.get(c, (c,))[0] for c in columns) + " |",
        "|" + "|".join("--:" if c == "rank" or c in COLUMNS and c != "status" else ":--" for c in columns) + "|",
        *("| " + " | ".join(_md_value(c, row[c]) for c in columns) + " |" for row in rows),
    ]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def saved_metrics(run: Run) -> dict[str, Any] | None:
    """The metrics a run folder holds from an earlier sweep, or None when there are none or they are stale
    (the folder's ``config.yaml`` differs from ``run.config``)."""
    run_dir = Path(run.config.out)
    try:
        metrics, saved = json.loads((run_dir / METRICS_FILE).read_text()), load_yaml(run_dir / "config.yaml")
    except (OSError, ValueError):  # no file, or not valid JSON or YAML: train again
        return None
    current = run.config.to_dict()
    changed = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in current.items() if k != "out" and saved.get(k, v) != v]
    if changed:
        changes = ", ".join(changed)
        logger.warning(
            "run %s: the results in %s are from other settings (%s), so not reused", run.name, run_dir, changes
        )
        return None
    return metrics if isinstance(metrics, dict) else None


def train_run(run: Run) -> None:
    """Train one run in this process, logging also to ``<run folder>/train.log``; sets its status and metrics.

    Results of an earlier attempt in the folder (``metrics.csv``, ``metrics.json``) are removed first, so they
    are not mixed with the new ones. Any exception from training is logged with its traceback and recorded as a
    failure rather than raised, so a sweep goes on with its other runs.
    """
    run_dir = Path(run.config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.csv", METRICS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    handler = logging.FileHandler(run_dir / "train.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(log_format()))
    logging.getLogger().addHandler(handler)
    try:
        logger.info("run %s: training into %s (%s)", run.name, run_dir, _describe(run.overrides) or "base")
        run.metrics, run.status = dict(fit(run.config)), TRAINED
        accuracy, macro_f1 = (run.metrics.get(k, 0) for k in ("accuracy", "macro_f1"))
        logger.info("run %s: accuracy %.4f, macro-F1 %.4f", run.name, accuracy, macro_f1)
    except Exception as exc:  # any failure of one run is reported, and the sweep goes on
        logger.exception("run %s failed", run.name)
        run.status, run.error = FAILED, f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        gc.collect()  # free what the run left behind (GPU caches above all) before the next one
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def run_sweep(experiment: Experiment, runs: Sequence[Run], *, only: Sequence[str] = (), force: bool = False) -> None:
    """Train the selected runs one after another, keeping the leaderboard up to date; sets each run's status.

    ``only`` selects runs by name (default: all). A selected run with saved results from the same config is
    reused unless ``force``; a run not selected shows its saved results, if any, or ``not run``. Writes
    ``sweep.yaml`` first and the leaderboard after every run.

    Raises:
        ValueError: a name in ``only`` is not a run of the experiment.
    """
    names = [r.name for r in runs]
    if set(only) - set(names):
        raise ValueError(
            f"--only: no run named {', '.join(sorted(set(only) - set(names)))}; the runs are {', '.join(names)}"
        )
    selected = set(only or names)
    experiment.out.mkdir(parents=True, exist_ok=True)
    (experiment.out / SWEEP_YAML).write_text(yaml.safe_dump(experiment.to_dict(), sort_keys=False))

    for run in runs:
        run.metrics = (None if force and run.name in selected else saved_metrics(run)) or {}
        run.status = REUSED if run.metrics else PENDING if run.name in selected else NOT_RUN
    reused = [r.name for r in runs if r.status == REUSED and r.name in selected]
    if reused:
        logger.info("reusing the saved results of %s (--force trains them again)", ", ".join(reused))
    write_leaderboard(experiment, runs)
    to_train = [r for r in runs if r.status == PENDING]
    for n, run in enumerate(to_train, 1):
        logger.info("=== run %d/%d: %s", n, len(to_train), run.name)
        train_run(run)
        write_leaderboard(experiment, runs)


def get_args_parser() -> argparse.ArgumentParser:
    """The ``python -m training.sweep`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m training.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", metavar="FILE.yaml", help="experiment file: name, out, base, grid, runs")
    parser.add_argument(
        "--out", metavar="DIR", help="sweep folder instead of the file's 'out' (e.g. for other weights)"
    )
    parser.add_argument("--dry-run", action="store_true", help="check every config, list the runs, train nothing")
    parser.add_argument("--only", nargs="+", action="extend", default=[], metavar="NAME", help="train only these runs")
    parser.add_argument("--force", action="store_true", help="train again runs whose folder already holds metrics.json")
    set_help = "override a base option for every run, the value read as YAML (e.g. --set epochs=1); repeatable"
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; returns the exit code (0 all ok, 1 some runs failed, 2 bad experiment file or option)."""
    args = get_args_parser().parse_args(argv)
    setup_logging()
    try:
        experiment = parse_experiment(load_yaml(args.experiment), default_name=Path(args.experiment).stem)
        sets = parse_sets(args.sets)
        if overridden := sorted(set(sets) & set().union(experiment.grid, *experiment.runs)):
            logger.warning("--set %s: the grid or runs set it too, and their values win", ", ".join(overridden))
        experiment.base.update(sets)
        experiment.out = Path(args.out or experiment.out)
        runs = plan_runs(experiment)
        check_paths(runs)
        if args.dry_run:
            logger.info("sweep %s: %d run(s) into %s", experiment.name, len(runs), experiment.out)
            for run in runs:
                status = "has metrics.json" if (Path(run.config.out) / METRICS_FILE).is_file() else "to train"
                logger.info(
                    "%s (%s)\n  %s", run.name, status, _describe(_settings(run, [*experiment.base, *run.overrides]))
                )
            return 0
        run_sweep(experiment, runs, only=args.only, force=args.force)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s: %s", args.experiment, exc)
        return 2
    logger.info("leaderboard %s:\n%s", experiment.out / LEADERBOARD_MD, (experiment.out / LEADERBOARD_MD).read_text())
    failed = [r.name for r in runs if r.status == FAILED]
    if failed:
        logger.error("%d run(s) failed: %s (see their train.log)", len(failed), ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
