"""The web app's settings, declared once: every ``FISH_*`` environment variable that the app reads.

Each :class:`Setting` of :data:`SETTINGS` declares one setting: its config key (``TOP_K``, read from the environment
variable ``FISH_TOP_K``), type, default, bounds or choices, unit and one-line help. From that one declaration come

* the app's defaults (:func:`defaults`) and the reading of values from the environment (:func:`parse_value`: JSON
  where possible, so ``FISH_TOP_K=3`` is an int and ``FISH_THREADS=null`` is None; :func:`from_environ`), both
  applied by :func:`app.configure`;
* the checks (:meth:`Setting.check`, :func:`validate`), in the words the app has always used (``"TOP_K (env
  FISH_TOP_K) must be a positive integer, got 0"``), and for PRECISION and BACKEND the names that
  ``model.predictor`` accepts;
* the ``FISH_*`` rows of the README's configuration table (:func:`markdown_rows`; ``tests/test_settings.py`` fails
  when README.md no longer holds them verbatim);
* what ``gunicorn.conf.py`` reads: the name and default of ``FISH_THREADS``, and ``FISH_MODEL_PATH`` as the app
  will read it.

Why a module that loads on its own: ``gunicorn.conf.py`` runs in gunicorn's master process, which must import
neither torch nor the app. ``import app.settings`` would first run ``app/__init__.py`` (a package's ``__init__``
runs before its modules), which imports Flask, torch and the model, and moving the settings out of the ``app``
package would put a top-level module beside the packages for one file. So this module imports the standard library
only, and ``gunicorn.conf.py`` loads it by its path with ``importlib.util.spec_from_file_location``, the way
gunicorn loads ``gunicorn.conf.py`` itself; the app imports it as ``app.settings``. Keep it that way: nothing here
may import Flask, torch, numpy or another module of this repository (``tests/test_settings.py`` checks it).

Other ``FISH_*`` variables are not declared here: Flask reads them into the config as its own settings (e.g.
``FISH_MAX_FORM_PARTS``), unchecked, as it always has.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The repository root: the default checkpoint's path is relative to it.
ROOT = Path(__file__).resolve().parents[1]
#: Prefix of the environment variables that set the settings: ``FISH_<KEY>``, e.g. ``FISH_MODEL_PATH``.
ENV_PREFIX = "FISH"
#: Slack of an inclusive upper bound, so that a threshold that float arithmetic left a hair above 1 still counts as
#: 1 (as the app has always accepted).
UPPER_BOUND_SLACK = 1e-9


@dataclass(frozen=True)
class Setting:
    """One app setting: config key ``key``, environment variable ``FISH_<key>``.

    Attributes:
        key: the key in ``app.config`` (upper case), e.g. ``"TOP_K"``.
        type: ``int``, ``float`` (an int is accepted too) or ``str``: the value's type, checked along with the
            bounds or choices (a setting with neither is not checked; see below).
        default: the value when neither the environment nor ``create_app``'s ``config`` sets it.
        help: one line, in Markdown: the README table's "meaning" column.
        nullable: None is a valid value too (e.g. THREADS: every core; the thresholds: the checkpoint's).
        ge, gt, le: bounds of a number (>=, >, <= with :data:`UPPER_BOUND_SLACK`). A float setting with bounds must
            also be finite, and NaN never passes.
        choices: the accepted values of a ``str`` setting.
        unit: what a number counts (``"seconds"``, ``"bytes"``...); a float setting's error names it.
        shown_default: the README's "default" column (Markdown) where the default value would not say it, e.g.
            "from the checkpoint" for None; else the value, as code.

    A setting with neither bounds nor choices is not checked here: its value goes to the code that uses it as
    given (MODEL_PATH to the checkpoint loader, DEVICE to torch; DECODE_WAIT_S, REQUEST_DEADLINE_S and BATCH_WAIT_MS
    to ``float()`` where they are used), as it always has.

    Raises:
        ValueError: the declaration itself is inconsistent (bounds on a str, choices on a number, a default that
            its own checks refuse); raised when the module loads.
    """

    key: str
    type: type
    default: Any
    help: str
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    unit: str | None = None
    shown_default: str | None = None

    def __post_init__(self) -> None:
        if not (self.key.isidentifier() and self.key.isupper()):
            raise ValueError(f"a setting's key is an upper-case identifier, got {self.key!r}")
        if self.type not in (int, float, str):
            raise ValueError(f"{self.key}: type must be int, float or str, got {self.type!r}")
        lower = self.ge if self.ge is not None else self.gt
        if (self.type is str and (lower, self.le) != (None, None)) or (self.type is not str and self.choices):
            raise ValueError(f"{self.key}: bounds are for int and float settings, choices for str settings")
        if self.ge is not None and self.gt is not None:
            raise ValueError(f"{self.key}: give ge or gt, not both")
        if self.le is not None and lower is None:
            raise ValueError(f"{self.key}: an upper bound needs a lower bound")
        if self.type is int and (self.ge is None or self.gt is not None or self.le is not None):
            raise ValueError(f"{self.key}: an int setting is checked against a lower bound, ge, only")
        if self.default is None and not self.nullable:
            raise ValueError(f"{self.key}: a default of None needs nullable=True")
        self.check(self.default)

    @property
    def env_name(self) -> str:
        """The environment variable that sets it, e.g. ``FISH_TOP_K``."""
        return f"{ENV_PREFIX}_{self.key}"

    @property
    def rule(self) -> str | None:
        """What the setting accepts, as its error message words it (e.g. ``"a positive integer"``, ``"[0, 1]"``,
        ``"a number of seconds > 0"``); None when it is not checked."""
        if self.choices:
            return "one of " + ", ".join(repr(choice) for choice in self.choices)
        if self.type is int and self.ge is not None:
            return "a positive integer" if self.ge == 1 else f"an integer >= {self.ge:g}"
        lower = self.ge if self.ge is not None else self.gt
        if lower is None:
            return None  # no bounds: not checked
        if self.le is not None:
            return f"{'[' if self.ge is not None else '('}{lower:g}, {self.le:g}]"
        number = f"a number of {self.unit}" if self.unit else "a finite number"
        return f"{number} {'>=' if self.ge is not None else '>'} {lower:g}"

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is valid for this setting (always True for an unchecked one)."""
        if self.rule is None or (value is None and self.nullable):
            return True
        if self.choices:
            return isinstance(value, str) and value in self.choices
        numbers = (int,) if self.type is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numbers):
            return False
        # Comparisons, not math.isfinite (which overflows on a huge int); each is False for NaN.
        if not -math.inf < value < math.inf:
            return False
        if (self.ge is not None and not value >= self.ge) or (self.gt is not None and not value > self.gt):
            return False
        return self.le is None or value < self.le + UPPER_BOUND_SLACK

    def check(self, value: Any) -> None:
        """Refuse a value that this setting does not accept.

        Raises:
            ValueError: ``"<KEY> (env FISH_<KEY>) must be <rule>, got <value>"``, e.g. ``"TOP_K (env FISH_TOP_K)
                must be a positive integer, got 0"``.
        """
        if not self.accepts(value):
            raise ValueError(f"{self.key} (env {self.env_name}) must be {self.rule}, got {value!r}")

    def markdown_row(self) -> str:
        """This setting's row of the README's configuration table: ``| `FISH_KEY` | default | help |``."""
        if self.shown_default is not None:
            shown = self.shown_default
        elif isinstance(self.default, float):
            shown = f"`{self.default:g}`"
        else:
            shown = f"`{self.default}`"
        return f"| `{self.env_name}` | {shown} | {self.help} |"


def _declare(settings: Iterable[Setting]) -> dict[str, Setting]:
    """``settings`` by key, in their order. Raises ValueError when a key comes twice."""
    declared: dict[str, Setting] = {}
    for setting in settings:
        if setting.key in declared:
            raise ValueError(f"setting {setting.key} is declared twice")
        declared[setting.key] = setting
    return declared


#: Every app setting, by key, in the order of the README's table.
SETTINGS: dict[str, Setting] = _declare(
    (
        Setting(
            "MODEL_PATH",
            str,
            str(ROOT / "weights" / "fish4knowledge_lite2.pt"),
            "checkpoint to serve",  # a checkpoint or release.pt written by train.py (model.checkpoint loads it)
            shown_default="`weights/fish4knowledge_lite2.pt`",
        ),
        # the default of a request's top_k; clipped to the number of classes (app.uploads.default_top_k)
        Setting("TOP_K", int, 5, "classes listed per prediction", ge=1),
        Setting(
            "MAX_CONTENT_LENGTH", int, 16 * 1024 * 1024, "largest request body in bytes (413 above)", ge=1, unit="bytes"
        ),
        Setting(
            "MAX_IMAGE_PIXELS",
            int,
            50_000_000,  # model.decoding.DEFAULT_MAX_PIXELS (tests/test_settings.py checks that they agree)
            "largest decoded image in pixels (413 above)",
            ge=1,
            unit="pixels",
        ),
        Setting(
            "MAX_IMAGES_PER_REQUEST",
            int,
            16,  # app.uploads.DEFAULT_MAX_IMAGES_PER_REQUEST
            "most `image` fields in one request (413 above)",  # to the page or the API
            ge=1,
        ),
        # The open-set thresholds (model.open_set); None keeps the checkpoint's, chosen on validation data.
        Setting(
            "CONFIDENCE_THRESHOLD",
            float,
            None,
            'below it the answer is "not sure" (0 turns that off)',
            nullable=True,
            ge=0,
            le=1,
            shown_default="from the checkpoint",
        ),
        Setting(
            "LOGIT_THRESHOLD",
            float,
            None,
            'below this logit of the likeliest species the answer is also "not sure" (a weak match; -1e9 turns it off)',
            nullable=True,
            ge=-1e9,
            le=1e9,
            shown_default="from the checkpoint",
        ),
        Setting(
            "NOVELTY_THRESHOLD",
            float,
            None,
            'above it the answer is "unknown species"',
            nullable=True,
            ge=0,
            shown_default="from the checkpoint",
        ),
        Setting(
            "SUBJECT_THRESHOLD",
            float,
            None,
            'below this subject score the answer is "not a fish" (0 turns that test off, not the hierarchy one)',
            nullable=True,
            ge=0,
            le=1,
            shown_default="from the checkpoint",
        ),
        Setting("DEVICE", str, "cpu", "torch device for inference"),
        Setting(
            "PRECISION",
            str,
            "auto",
            "`auto` (OpenVINO: the faster of fp32 and bf16, timed at start-up on this machine; torch: bf16 where the "
            "CPU or GPU computes it natively), `fp32`, `bf16`, `int8` (OpenVINO, after `quantize.py`)",
            choices=("auto", "fp32", "bf16", "int8"),  # "auto" and model.backends.SERVED_PRECISIONS
        ),
        Setting(
            "BACKEND",
            str,
            "auto",
            "`auto` (OpenVINO on the CPU; torch on a GPU, or where OpenVINO cannot compile the model), `openvino`, "
            "`torch`",
            choices=("auto", "openvino", "torch"),  # model.backends.BACKENDS and resolve_backend
        ),
        Setting(
            "THREADS",
            int,
            None,
            "inference threads per worker (OpenVINO's, or torch's); torch keeps one beside OpenVINO",
            nullable=True,
            ge=1,
            # None in the app: every core the process may use; gunicorn.conf.py sets it to that count when unset
            shown_default="every core",
        ),
        Setting(
            "MAX_CONCURRENT_DECODES",
            int,
            2,
            "image decodes running at once in one worker, each in its own decoder process (started with the worker)",
            ge=1,  # a request that waits more than DECODE_WAIT_S for a free one gets a 503
        ),
        Setting(
            "DECODE_TIMEOUT_S",
            float,
            3.0,  # model.decoder_pool.DEFAULT_DECODE_TIMEOUT_S
            "deadline of one image's decode in seconds; past it the decoder process is killed and replaced, and the "
            "request gets a 413",
            gt=0,
            unit="seconds",  # see model.decoder_pool
        ),
        Setting(
            "DECODE_MEMORY_MB",
            int,
            1024,  # model.decoder_pool.DEFAULT_DECODE_MEMORY_MB (model.decoder_pool refuses less than 64)
            "memory (address space) a decoder process may add to what it starts with; a decode that needs more gets "
            "a 413",
            ge=1,
            unit="MiB",
        ),
        Setting(
            "DECODE_WAIT_S",
            float,
            10.0,
            "how long an upload waits for a decode slot before a 503",
            unit="seconds",
        ),
        Setting(
            "REQUEST_DEADLINE_S",
            float,
            30.0,
            "seconds after which a request decodes no more photos and gets a 503 (gunicorn's `timeout` never fires "
            "in gthread workers)",
            unit="seconds",  # from the request's arrival (app.uploads.start_deadline): a bound on one request's work
        ),
        Setting(
            "BATCH_MAX_SIZE",
            int,
            16,
            "most images concurrent requests of one worker share in a batch (1: no batching)",
            ge=1,  # see model.batching
        ),
        Setting(
            "BATCH_WAIT_MS",
            float,
            0.0,
            "how long an open batch waits for more requests, in milliseconds (0: a batch is what queued while the "
            "previous one ran)",
            unit="milliseconds",  # model.batching.MicroBatcher refuses a negative wait
        ),
        Setting(
            "DATABASE_URL",
            str,
            None,
            "SQLAlchemy URL of the corrections database, e.g. `postgresql+psycopg://user@host/fish` for several "
            "servers (default: SQLite `corrections.sqlite3` in `FISH_INSTANCE_PATH`, WAL journal)",
            nullable=True,
            shown_default="SQLite in the instance folder",
        ),
        Setting(
            "INSTANCE_PATH",
            str,
            None,
            "folder of the app's own files: the SQLite database, the generated secret key",
            nullable=True,
            shown_default="`instance/` beside `app/`",
        ),
        Setting(
            "SECRET_KEY",
            str,
            None,
            "key that signs the reviewers' sessions and CSRF tokens; set the same on every server (default: one "
            "generated once into the instance folder)",
            nullable=True,
            shown_default="generated",
        ),
        Setting(
            "CORRECTIONS_PER_MINUTE",
            int,
            10,
            "corrections one client (IP address) may submit per minute before a 429",
            ge=1,
        ),
        Setting(
            "CORRECTIONS_MAX_PENDING",
            int,
            1000,
            "pending corrections kept at most; past it a submission gets a 507 until reviewers catch up",
            ge=1,
        ),
        Setting(
            "CORRECTIONS_MAX_PHOTO_MB",
            float,
            1024.0,
            "total size of the kept photos, in MiB; past it a submission with a photo gets a 507",
            gt=0,
            unit="MiB",
        ),
        Setting(
            "MEMORY_POLL_S",
            float,
            2.0,
            "how often a worker looks for a newly accepted corrections memory, in seconds",
            gt=0,
            unit="seconds",
        ),
    )
)


def defaults() -> dict[str, Any]:
    """Every setting's default, by key (a new dict)."""
    return {key: setting.default for key, setting in SETTINGS.items()}


def parse_value(text: str) -> Any:
    """An environment variable's value as the app reads it: parsed as JSON where possible (``"3"`` -> 3, ``"0.5"``
    -> 0.5, ``"null"`` -> None, ``"true"`` -> True), else the text itself (``"cpu"``, a path). The rule of Flask's
    ``Config.from_prefixed_env``, which applies it to every ``FISH_*`` variable."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON (json.JSONDecodeError), or nested too deep; as Flask does
        return text


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings that ``environ`` sets (``FISH_<KEY>``), by key, each value read by :func:`parse_value`;
    unchecked (see :func:`validate`)."""
    return {key: parse_value(environ[s.env_name]) for key, s in SETTINGS.items() if s.env_name in environ}


def validate(config: Mapping[str, Any]) -> None:
    """Check every declared setting's value in ``config`` (a missing key counts as its default); other keys pass.

    Raises:
        ValueError: the first setting, in declaration order, whose value its :meth:`Setting.check` refuses.
    """
    for key, setting in SETTINGS.items():
        setting.check(config.get(key, setting.default))


def markdown_rows() -> list[str]:
    """The ``FISH_*`` rows of the README's configuration table, in declaration order."""
    return [setting.markdown_row() for setting in SETTINGS.values()]
