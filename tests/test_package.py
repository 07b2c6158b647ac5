"""The installed package (``make install``: ``pip install -e .``): its commands and where its imports resolve.

Skipped, with the reason, where the running Python has not installed this checkout (e.g. a venv shared between
checkouts); ``make test`` always installs it first.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import evaluate
import quantize
import train
from app.corrections import admin
from model import commands
from tests.helpers import ROOT, modules_loaded_by

#: Each command and the main it runs: the root script's, or (fish-predict, which starts decoder processes) its
#: light entry point in model.commands, which runs predict.py's main (model.batch_predict.main); fish-admin (the
#: corrections database's administration) has no root script.
COMMANDS = {
    "fish-admin": admin.main,
    "fish-train": train.main,
    "fish-evaluate": evaluate.main,
    "fish-predict": commands.predict,
    "fish-quantize": quantize.main,
}


def _installed_here() -> importlib.metadata.Distribution:
    """The ``fish-classifier`` distribution, when it is installed editable from this checkout; else skip.

    Looked up in the environment's site-packages only: the ``fish_classifier.egg-info`` that the editable build
    leaves in the checkout (on ``sys.path`` under pytest) is no installation.
    """
    site_packages = sysconfig.get_path("purelib")
    dist = next(iter(importlib.metadata.distributions(name="fish-classifier", path=[site_packages])), None)
    if dist is None:
        pytest.skip(f"fish-classifier is not installed in {sys.prefix} (make install)")
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    if origin.get("url") != ROOT.as_uri() or not origin.get("dir_info", {}).get("editable"):
        pytest.skip(f"fish-classifier in {sys.prefix} is installed from {origin.get('url')}, not {ROOT.as_uri()}")
    return dist


def test_entry_points_run_the_root_scripts_mains() -> None:
    dist = _installed_here()
    scripts = {ep.name: ep for ep in dist.entry_points if ep.group == "console_scripts"}
    assert sorted(scripts) == sorted(COMMANDS)
    for name, main in COMMANDS.items():
        assert scripts[name].load() is main, name


def test_the_commands_parse_their_options_without_torch() -> None:
    """``fish-train``, ``fish-evaluate``, ``fish-quantize`` and ``fish-predict`` build their parsers (``--help``, a
    mistyped option) before loading torch, timm or scikit-learn: 0.1 s instead of 5 to 8 s each, measured here."""
    statement = (
        "import training.cli, model.predict_cli; from training.config import get_args_parser\n"
        "get_args_parser(); training.cli.evaluate_args_parser(); training.cli.quantize_args_parser()\n"
        "model.predict_cli.get_args_parser()"
    )
    assert modules_loaded_by(statement, ("torch", "torchvision", "timm", "sklearn", "openvino")) == []


@pytest.mark.slow
def test_packages_import_from_another_folder(tmp_path: Path) -> None:
    _installed_here()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import app, model, training, tools; print('\\n'.join(m.__file__ for m in (app, model, training, tools)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for package, path in zip(("app", "model", "training", "tools"), result.stdout.split(), strict=True):
        assert Path(path) == ROOT / package / "__init__.py"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_console_script_help(name: str, tmp_path: Path) -> None:
    _installed_here()
    script = Path(sys.executable).parent / name
    assert script.is_file(), f"{script} is missing: reinstall with make install"
    result = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {name} ")
