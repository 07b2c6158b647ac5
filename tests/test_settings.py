"""The app's settings declaration (app/settings.py): what configure() makes of it, the checks and their messages, the
README table, its agreement with the code that uses the settings, and gunicorn.conf.py's use of it.

No model is loaded here: :func:`app.configure` runs on a bare Flask app.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import runpy
import zipfile
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app import configure, settings
from app.settings import SETTINGS, Setting
from tests.helpers import ROOT, modules_loaded_by


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``FISH_*`` variable in the environment (restored after the test); set some with ``environ.setenv``."""
    for name in [name for name in os.environ if name.startswith(f"{settings.ENV_PREFIX}_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def configured(config: dict[str, Any] | None = None) -> Flask:
    """A bare Flask app (no model) after :func:`app.configure`."""
    app = Flask("test_settings")
    configure(app, config)
    return app


# --- the README ------------------------------------------------------------------------------------------------


def readme_configuration_rows() -> list[str]:
    """The ``FISH_*`` rows of README.md's "### Configuration" table, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n### Configuration\n", 1)[1]
    section = re.split(r"\n#{1,3} ", section, maxsplit=1)[0]
    return [line for line in section.splitlines() if line.startswith(f"| `{settings.ENV_PREFIX}_")]


def test_readme_table_lists_every_setting_as_declared() -> None:
    rows = settings.markdown_rows()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [row for row in rows if row not in readme.splitlines()]
    assert not missing, "README.md's configuration table lacks these rows (app/settings.py):\n" + "\n".join(missing)
    # and no row of a setting that is no longer declared, nor another order
    assert readme_configuration_rows() == rows


def test_markdown_row_shows_the_default_as_code_or_the_declared_text() -> None:
    assert SETTINGS["TOP_K"].markdown_row() == "| `FISH_TOP_K` | `5` | classes listed per prediction |"
    assert SETTINGS["DECODE_TIMEOUT_S"].markdown_row().startswith("| `FISH_DECODE_TIMEOUT_S` | `3` | ")
    assert SETTINGS["THREADS"].markdown_row().startswith("| `FISH_THREADS` | every core | ")


# --- the declaration and the code that uses the settings ---------------------------------------------------------


def test_defaults_and_choices_agree_with_the_code_that_uses_them() -> None:
    from app.uploads import DEFAULT_MAX_IMAGES_PER_REQUEST
    from model.backends import BACKENDS, SERVED_PRECISIONS
    from model.batching import MicroBatcher
    from model.decoder_pool import DEFAULT_DECODE_MEMORY_MB, DEFAULT_DECODE_TIMEOUT_S
    from model.decoding import DEFAULT_MAX_PIXELS

    defaults = settings.defaults()
    assert defaults["MAX_IMAGE_PIXELS"] == DEFAULT_MAX_PIXELS
    assert defaults["MAX_IMAGES_PER_REQUEST"] == DEFAULT_MAX_IMAGES_PER_REQUEST
    assert defaults["DECODE_TIMEOUT_S"] == DEFAULT_DECODE_TIMEOUT_S
    assert defaults["DECODE_MEMORY_MB"] == DEFAULT_DECODE_MEMORY_MB
    batcher = inspect.signature(MicroBatcher).parameters
    assert defaults["BATCH_MAX_SIZE"] == batcher["max_batch"].default
    assert defaults["BATCH_WAIT_MS"] == batcher["max_wait_ms"].default
    assert SETTINGS["PRECISION"].choices == ("auto", *SERVED_PRECISIONS)
    assert SETTINGS["BACKEND"].choices == BACKENDS
    assert defaults["MODEL_PATH"] == str(ROOT / "weights" / "fish4knowledge_lite2.pt")


def test_settings_module_loads_without_flask_torch_or_the_app() -> None:
    """gunicorn.conf.py loads app/settings.py by its path in gunicorn's master: it must stay standard-library only."""
    load = (
        "import importlib.util; "
        "spec = importlib.util.spec_from_file_location('fish_settings', 'app/settings.py'); "
        "module = importlib.util.module_from_spec(spec); sys.modules['fish_settings'] = module; "
        "spec.loader.exec_module(module); assert module.SETTINGS"
    )
    heavy = ("app", "model", "training", "flask", "werkzeug", "torch", "numpy", "PIL")
    assert modules_loaded_by(load, heavy) == []


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"key": "top_k", "type": int, "default": 1, "ge": 1}, "upper-case identifier"),
        ({"key": "X", "type": list, "default": []}, "type must be int, float or str"),
        ({"key": "X", "type": str, "default": "a", "ge": 0}, "bounds are for int and float"),
        ({"key": "X", "type": int, "default": 1, "ge": 1, "choices": ("a",)}, "bounds are for int and float"),
        ({"key": "X", "type": float, "default": 1.0, "ge": 0, "gt": 0}, "ge or gt"),
        ({"key": "X", "type": float, "default": 1.0, "le": 2}, "upper bound needs a lower bound"),
        ({"key": "X", "type": int, "default": 1}, "lower bound, ge, only"),
        ({"key": "X", "type": int, "default": None, "ge": 1}, "nullable=True"),
        ({"key": "X", "type": int, "default": 0, "ge": 1}, "X (env FISH_X) must be a positive integer, got 0"),
        ({"key": "X", "type": str, "default": "b", "choices": ("a",)}, "X (env FISH_X) must be one of 'a', got 'b'"),
    ],
)
def test_inconsistent_declaration_is_refused(declaration: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Setting(help="h", **declaration)


# --- configure(): defaults, environment, config ------------------------------------------------------------------


def test_defaults_come_from_the_declaration(environ: pytest.MonkeyPatch) -> None:
    app = configured()
    for key, setting in SETTINGS.items():
        assert app.config[key] == setting.default, key
    assert app.config["TOP_K"] == 5 and app.config["MAX_CONTENT_LENGTH"] == 16 * 1024 * 1024
    assert app.config["THREADS"] is None and app.config["DEBUG"] is False


def test_environment_values_are_parsed_as_json_where_possible(environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {
        "FISH_TOP_K": ("3", 3),
        "FISH_THREADS": ("null", None),
        "FISH_CONFIDENCE_THRESHOLD": ("0.5", 0.5),
        "FISH_DECODE_TIMEOUT_S": ("2", 2),
        "FISH_DEVICE": ("cpu", "cpu"),
        "FISH_PRECISION": ("int8", "int8"),
        "FISH_MODEL_PATH": (str(tmp_path / "m.pt"), str(tmp_path / "m.pt")),
        "FISH_MAX_FORM_PARTS": ("2000", 2000),  # Flask's own setting, not declared: passes through, as before
    }
    for name, (text, _) in values.items():
        environ.setenv(name, text)
    environ.setenv("FISH_DEBUG", "true")
    app = configured()
    for name, (_, value) in values.items():
        key = name.removeprefix("FISH_")
        assert app.config[key] == value and type(app.config[key]) is type(value), name
    assert app.config["DEBUG"] is False  # never from the environment
    # gunicorn.conf.py's reading of the declared ones gives the same values
    declared = settings.from_environ({name: text for name, (text, _) in values.items()})
    assert declared == {key: app.config[key] for key in SETTINGS if f"FISH_{key}" in values}


def test_from_environ_reads_the_declared_settings_only() -> None:
    environ = {"FISH_TOP_K": "3", "FISH_DEVICE": "cuda:1", "FISH_MAX_FORM_PARTS": "2000", "TOP_K": "9"}
    assert settings.from_environ(environ) == {"TOP_K": 3, "DEVICE": "cuda:1"}
    assert settings.parse_value('"quoted"') == "quoted" and settings.parse_value("not json") == "not json"


def test_config_overrides_the_environment_and_other_keys_pass_through(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("FISH_TOP_K", "3")
    environ.setenv("FISH_BATCH_MAX_SIZE", "4")
    app = configured({"TOP_K": 1, "TESTING": True, "SOMETHING_ELSE": [1, 2], "DEBUG": True})
    assert app.config["TOP_K"] == 1 and app.config["BATCH_MAX_SIZE"] == 4
    assert app.config["TESTING"] is True and app.config["SOMETHING_ELSE"] == [1, 2]
    assert app.config["DEBUG"] is True  # an explicit config may turn debug mode on


# --- configure(): the checks --------------------------------------------------------------------------------------

POSITIVE_INTEGERS = [key for key, s in SETTINGS.items() if s.type is int]


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        *[(key, 0, "a positive integer") for key in POSITIVE_INTEGERS],
        ("TOP_K", -1, "a positive integer"),
        ("TOP_K", True, "a positive integer"),
        ("TOP_K", 2.0, "a positive integer"),
        ("TOP_K", "five", "a positive integer"),
        ("TOP_K", None, "a positive integer"),
        ("DECODE_TIMEOUT_S", 0, "a number of seconds > 0"),
        ("DECODE_TIMEOUT_S", -1.5, "a number of seconds > 0"),
        ("DECODE_TIMEOUT_S", math.nan, "a number of seconds > 0"),
        ("DECODE_TIMEOUT_S", math.inf, "a number of seconds > 0"),
        ("DECODE_TIMEOUT_S", "3", "a number of seconds > 0"),
        ("DECODE_TIMEOUT_S", None, "a number of seconds > 0"),
        ("CONFIDENCE_THRESHOLD", 1.5, "[0, 1]"),
        ("CONFIDENCE_THRESHOLD", -0.1, "[0, 1]"),
        ("CONFIDENCE_THRESHOLD", math.nan, "[0, 1]"),
        ("CONFIDENCE_THRESHOLD", False, "[0, 1]"),
        ("SUBJECT_THRESHOLD", "high", "[0, 1]"),
        ("SUBJECT_THRESHOLD", 1.001, "[0, 1]"),
        ("NOVELTY_THRESHOLD", math.inf, "a finite number >= 0"),
        ("NOVELTY_THRESHOLD", -1, "a finite number >= 0"),
        ("LOGIT_THRESHOLD", math.inf, "[-1e+09, 1e+09]"),
        ("LOGIT_THRESHOLD", math.nan, "[-1e+09, 1e+09]"),
        ("PRECISION", "fp16", "one of 'auto', 'fp32', 'bf16', 'int8'"),
        ("PRECISION", "FP32", "one of 'auto', 'fp32', 'bf16', 'int8'"),
        ("BACKEND", "onnx", "one of 'auto', 'openvino', 'torch'"),
        ("BACKEND", None, "one of 'auto', 'openvino', 'torch'"),
    ],
)
def test_bad_values_are_refused_with_the_settings_rule(
    environ: pytest.MonkeyPatch, key: str, value: Any, rule: str
) -> None:
    message = f"{key} (env FISH_{key}) must be {rule}, got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        configured({key: value})


@pytest.mark.parametrize(
    ("name", "text"),
    [("FISH_TOP_K", "0"), ("FISH_TOP_K", "five"), ("FISH_THREADS", "1.5"), ("FISH_CONFIDENCE_THRESHOLD", "2")],
)
def test_bad_environment_values_are_refused(environ: pytest.MonkeyPatch, name: str, text: str) -> None:
    environ.setenv(name, text)
    with pytest.raises(ValueError, match=f"^{name.removeprefix('FISH_')} \\(env {name}\\) must be "):
        configured()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TOP_K", 1),
        ("MAX_CONTENT_LENGTH", 10**30),
        ("THREADS", None),
        ("THREADS", 3),
        ("DECODE_TIMEOUT_S", 0.001),
        ("DECODE_TIMEOUT_S", 3),
        ("CONFIDENCE_THRESHOLD", 0),
        ("CONFIDENCE_THRESHOLD", 1),
        ("CONFIDENCE_THRESHOLD", 1 + 1e-10),  # float slack above an inclusive upper bound
        ("SUBJECT_THRESHOLD", None),
        ("NOVELTY_THRESHOLD", 0.0),
        ("NOVELTY_THRESHOLD", 1e6),
        ("PRECISION", "int8"),
        ("BACKEND", "torch"),
        # not checked here, as before: their users convert them
        ("MODEL_PATH", Path("weights") / "x.pt"),
        ("DEVICE", "cuda:0"),
        ("DECODE_WAIT_S", 0),
        ("REQUEST_DEADLINE_S", 5),
        ("BATCH_WAIT_MS", 2.5),
    ],
)
def test_good_values_are_accepted(environ: pytest.MonkeyPatch, key: str, value: Any) -> None:
    assert configured({key: value}).config[key] == value


# --- gunicorn.conf.py ---------------------------------------------------------------------------------------------


def test_gunicorn_master_checks_the_model_path_the_app_will_read(
    environ: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "release.pt"
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("data.pkl", b"")
    environ.setenv("FISH_THREADS", "1")
    on_starting = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["on_starting"]
    on_starting(None)  # unset: the app checks its default itself

    environ.setenv("FISH_MODEL_PATH", str(good))
    on_starting(None)
    environ.setenv("FISH_MODEL_PATH", f'"{good}"')  # JSON, as the app reads it: the same file
    on_starting(None)
    environ.setenv("FISH_MODEL_PATH", str(tmp_path / "missing.pt"))
    with pytest.raises(SystemExit, match=re.escape(f"cannot serve FISH_MODEL_PATH={tmp_path / 'missing.pt'}: it")):
        on_starting(None)
