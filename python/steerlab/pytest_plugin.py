"""steerlab's pytest plugin: a model fixture and evaluation records for steering tests.

Registered through the ``pytest11`` entry point, so pytest loads it in every run of an
environment where steerlab is installed; it does nothing until used. What it adds:

- options (command line wins over the ini/pyproject setting of the same name):

  ``--steerlab-model PATH`` / ini ``steerlab_model``: the model `steerlab_model` loads,
  a ``.gguf`` file or a Hugging Face folder (default: the embedded default model,
  ``steerlab.Model.load()``); an ini path is relative to the ini file's folder.
  ``--steerlab-dtype {auto,f32}`` / ini ``steerlab_dtype``: as in `steerlab.Model.load`.
  ``--steerlab-json PATH`` / ini ``steerlab_json``: write the run's evaluation records
  there as JSON at the end of the session (atomically: a temporary file in the same
  folder, then a rename).

  A path that does not exist (or a JSON path whose folder does not), or a dtype other
  than ``auto``/``f32``, is a usage error naming the option.

- fixtures: ``steerlab_model`` (session scope: the model, loaded once per session) and
  ``steerlab_results`` (a `Results` for a test to record its own numbers).

- records: each call of a `steerlab.testing` helper (`assert_steers`, `assert_on_topic`,
  `assert_false_refusal_rate`; also reachable as attributes of this module), passed or
  failed, is recorded with the test's node id; the terminal summary then gains a
  "steerlab evaluations" section with one line per check (values against bounds).

The JSON file::

    {"schema": "steerlab-pytest-results/1", "created": "2026-12-01T02:00:00+00:00",
     "steerlab_version": "0.1.0",
     "model": {"path": ..., "dtype": ..., "fingerprint": ..., "arch": ...} or null,
     "summary": {"checks": 3, "passed": 2, "failed": 1},
     "results": [{"nodeid": "tests/test_eval.py::test_optimism", "check": "assert_steers",
                  "passed": true, "measured": {"mean_margin_shift": 0.73, ...},
                  "conditions": [{"metric": "mean_margin_shift", "value": 0.73,
                                  "op": ">=", "bound": 0.3, "passed": true}, ...]}]}

NaN is written as null, +/-inf as the strings "inf" / "-inf". Under pytest-xdist each worker would write its
own records to the same path: give each run its own path there.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from steerlab.model import Model

__all__ = [
    "Results",
    "steerlab_model",
    "steerlab_results",
]

SCHEMA = "steerlab-pytest-results/1"
DTYPES = ("auto", "f32")
_HELPERS = ("assert_steers", "assert_on_topic", "assert_false_refusal_rate")


def __getattr__(name: str) -> Any:
    # The helpers live in steerlab.testing; imported on first use, not with the plugin.
    if name in _HELPERS:
        import steerlab.testing

        return getattr(steerlab.testing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------ session state


class _State:
    """One pytest session's settings and records."""

    def __init__(
        self, model: Path | None, model_source: str, dtype: str, json_path: Path | None
    ) -> None:
        self.model_path = model
        self.model_source = model_source
        self.dtype = dtype
        self.json_path = json_path
        self.records: list[dict[str, Any]] = []
        self.nodeid: str | None = None
        self.model_info: dict[str, Any] | None = None
        self.loads = 0
        self.json_error: str | None = None
        self.json_how = ""


# Innermost session last (pytester runs a session inside a session).
_STATES: list[_State] = []
_STATE_KEY = pytest.StashKey[_State]()


def _record_check(record: Mapping[str, Any]) -> None:
    """Called by `steerlab.testing` for each helper call (see ``_publish`` there)."""
    if not _STATES:
        return
    state = _STATES[-1]
    state.records.append({"nodeid": state.nodeid or "<outside a test>", **record})


# ------------------------------------------------------------------ options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("steerlab", "steerlab steering evaluations")
    group.addoption(
        "--steerlab-model",
        dest="steerlab_model",
        metavar="PATH",
        default=None,
        help="model for the steerlab_model fixture: a .gguf file or a Hugging Face folder "
        "(default: ini steerlab_model, else steerlab's embedded default model)",
    )
    group.addoption(
        "--steerlab-dtype",
        dest="steerlab_dtype",
        choices=DTYPES,
        default=None,
        help="dtype for the steerlab_model fixture: auto (GGUF weights stay quantized) or "
        "f32 (default: ini steerlab_dtype, else auto)",
    )
    group.addoption(
        "--steerlab-json",
        dest="steerlab_json",
        metavar="PATH",
        default=None,
        help="write the steerlab evaluation records of this run to PATH as JSON "
        "(default: ini steerlab_json, else none)",
    )
    parser.addini("steerlab_model", "model for the steerlab_model fixture (a path)", type="string")
    parser.addini(
        "steerlab_dtype", "dtype for the steerlab_model fixture: auto or f32", type="string"
    )
    parser.addini(
        "steerlab_json", "write steerlab evaluation records to this JSON path", type="string"
    )


def _setting(config: pytest.Config, name: str) -> tuple[str | None, str, Path]:
    """(value, how to name it in a message, the folder a relative path is read from)."""
    cli = config.getoption(name)
    if cli is not None:
        return cli, f"--{name.replace('_', '-')}", config.invocation_params.dir
    ini = config.getini(name)
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    if isinstance(ini, str) and ini.strip():
        where = config.inipath.name if config.inipath is not None else "the ini file"
        return ini.strip(), f"the ini option {name} (in {where})", base
    return None, "", base


def pytest_configure(config: pytest.Config) -> None:
    model, model_how, base = _setting(config, "steerlab_model")
    model_path = None
    for value, how in ((model, model_how), _setting(config, "steerlab_json")[:2]):
        if value is not None and not value.strip():
            # '' would resolve to the current folder: name the mistake instead.
            raise pytest.UsageError(f"{how}: the path is empty; give a file path")
    if model is not None:
        model_path = Path(os.path.abspath(base / Path(model).expanduser()))
        if not model_path.exists():
            raise pytest.UsageError(
                f"{model_how}: no file or folder at {model!r} (resolved to {model_path}); "
                f"expected a .gguf file or a Hugging Face model folder"
            )
    dtype, dtype_how, _ = _setting(config, "steerlab_dtype")
    if dtype is not None and dtype not in DTYPES:
        raise pytest.UsageError(
            f"{dtype_how}: dtype must be 'auto' (GGUF weights stay quantized) or 'f32', "
            f"got {dtype!r}"
        )
    out, out_how, base = _setting(config, "steerlab_json")
    json_path = None
    if out is not None:
        json_path = Path(os.path.abspath(base / Path(out).expanduser()))
        if json_path.is_dir():
            raise pytest.UsageError(
                f"{out_how}: {out!r} is a folder; expected the path of a JSON file to write"
            )
        if not json_path.parent.is_dir():
            raise pytest.UsageError(
                f"{out_how}: the folder {str(json_path.parent)!r} of {out!r} does not exist; "
                f"create it or choose another path"
            )
    if model_path is not None:
        source = f"{model_how} {model!r}"
    else:
        source = "steerlab's default model (steerlab.Model.load())"
    state = _State(model_path, source, dtype or "auto", json_path)
    state.json_how = out_how
    config.stash[_STATE_KEY] = state
    _STATES.append(state)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE_KEY, None)
    if state is not None and state in _STATES:
        _STATES.remove(state)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    state = item.config.stash.get(_STATE_KEY, None)
    if state is None:
        return (yield)
    state.nodeid = item.nodeid
    try:
        return (yield)
    finally:
        state.nodeid = None


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def steerlab_model(pytestconfig: pytest.Config) -> Model:
    """The model named by ``--steerlab-model`` / ini ``steerlab_model`` (default:
    steerlab's embedded default model, SmolLM2-135M-Instruct Q4_1), loaded with
    ``--steerlab-dtype`` / ini ``steerlab_dtype`` once per session.

    A model that fails to load fails the tests that use the fixture, with a message
    naming the option and steerlab's error.
    """
    import steerlab as sl

    state = pytestconfig.stash[_STATE_KEY]
    path = None if state.model_path is None else str(state.model_path)
    t0 = time.perf_counter()
    try:
        model = sl.Model.load(path, dtype=state.dtype)
    except sl.SteerlabError as exc:
        pytest.fail(
            f"steerlab_model: cannot load {state.model_source} with dtype "
            f"{state.dtype!r}: {type(exc).__name__}: {exc}",
            pytrace=False,
        )
    state.loads += 1
    state.model_info = {
        "path": model.path,
        "dtype": model.dtype,
        "arch": model.arch,
        "fingerprint": model.fingerprint,
        "load_seconds": round(time.perf_counter() - t0, 3),
    }
    return model


class Results:
    """Records of one test for the run's JSON file and terminal summary (the
    ``steerlab_results`` fixture)."""

    def __init__(self, state: _State, nodeid: str) -> None:
        self._state = state
        self._nodeid = nodeid

    def record(
        self, check: str, measured: Mapping[str, Any], *, passed: bool | None = None
    ) -> dict[str, Any]:
        """Record a measurement of this test.

        Args:
            check: a name for it, e.g. ``"optimism_dose_sweep"``.
            measured: ``{name: value}``, values JSON-friendly (numbers, str, bool,
                None; numpy scalars are converted, NaN becomes null).
            passed: the verdict, or None when the record only informs.

        Returns:
            The record as stored.

        Raises:
            InvalidTypeError: check not a non-empty str, measured not a mapping with str
                keys or holding a value of another type (nested lists, tuples, arrays
                and str-keyed mappings of those values are accepted), passed not a bool
                or None.
        """
        from steerlab.errors import InvalidTypeError
        from steerlab.testing import _json_value

        if not isinstance(check, str) or not check:
            raise InvalidTypeError(f"check must be a non-empty str, got {check!r}")
        if not isinstance(measured, Mapping) or not all(isinstance(k, str) for k in measured):
            raise InvalidTypeError(
                f"measured must be a mapping with str keys, got {type(measured).__name__}"
            )
        for k, v in measured.items():
            _check_json_friendly(v, f"measured[{k!r}]")
        if passed is not None and not isinstance(passed, bool):
            raise InvalidTypeError(f"passed must be a bool or None, got {type(passed).__name__}")
        rec: dict[str, Any] = {
            "nodeid": self._nodeid,
            "check": check,
            "passed": passed,
            "measured": {k: _json_value(v) for k, v in measured.items()},
            "conditions": [],
        }
        self._state.records.append(rec)
        return rec

    @property
    def records(self) -> list[dict[str, Any]]:
        """This test's records so far (helper calls included)."""
        return [r for r in self._state.records if r["nodeid"] == self._nodeid]


@pytest.fixture
def steerlab_results(request: pytest.FixtureRequest) -> Results:
    """A `Results` that records this test's own numbers into the run's steerlab records
    (``results.record("name", {"metric": 0.5}, passed=True)``)."""
    return Results(request.config.stash[_STATE_KEY], request.node.nodeid)


# ------------------------------------------------------------------ the end of the run


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE_KEY, None)
    if state is None or state.json_path is None:
        return
    passed = sum(1 for r in state.records if r["passed"] is True)
    failed = sum(1 for r in state.records if r["passed"] is False)
    doc = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "steerlab_version": getattr(sys.modules.get("steerlab"), "__version__", None),
        "model": state.model_info,
        "summary": {"checks": len(state.records), "passed": passed, "failed": failed},
        "results": state.records,
    }
    try:
        _write_atomic(state.json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    except (OSError, ValueError) as exc:
        state.json_error = f"{type(exc).__name__}: {exc}"
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _check_json_friendly(v: Any, where: str) -> None:
    """`v` is a number, str, bool, None, a numpy scalar or array of those, or a list,
    tuple or str-keyed mapping of such values; anything else would be stored as its repr.

    Raises:
        InvalidTypeError: naming `where` and the type.
    """
    import numpy as np

    from steerlab.errors import InvalidTypeError

    if v is None or isinstance(v, bool | int | float | str | np.bool_ | np.number):
        return
    if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
        return
    if isinstance(v, list | tuple):
        for i, x in enumerate(v):
            _check_json_friendly(x, f"{where}[{i}]")
        return
    if isinstance(v, Mapping):
        for k, x in v.items():
            if not isinstance(k, str):
                raise InvalidTypeError(f"{where} has a key {k!r}; keys must be str")
            _check_json_friendly(x, f"{where}[{k!r}]")
        return
    raise InvalidTypeError(
        f"{where} is a {type(v).__name__}, which JSON cannot hold; record numbers, str, "
        f"bool, None, or lists / str-keyed dicts of them"
    )


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE_KEY, None)
    if state is None or not (state.records or state.json_path is not None):
        return
    tr = terminalreporter
    if state.records:
        tr.write_sep("=", "steerlab evaluations")
        for r in state.records:
            verdict = {True: "PASSED", False: "FAILED", None: "RECORD"}[r["passed"]]
            conds = r["conditions"]
            if conds:
                detail = ", ".join(_condition_text(c) for c in conds)
            else:
                detail = ", ".join(f"{k} {_value_text(v)}" for k, v in r["measured"].items())
            tr.write(verdict, green=r["passed"] is True, red=r["passed"] is False, bold=True)
            tr.write_line(f" {r['nodeid']} {r['check']}: {detail}")
    if state.json_path is not None:
        if state.json_error is None:
            tr.write_line(f"steerlab: wrote {len(state.records)} records to {state.json_path}")
        else:
            tr.write_line(
                f"steerlab: could not write the JSON file of {state.json_how} "
                f"({state.json_path}): {state.json_error}",
                red=True,
            )


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "nan" if v is None else str(v)


def _condition_text(c: Mapping[str, Any]) -> str:
    return f"{c['metric']} {_value_text(c['value'])} {c['op']} {_value_text(c['bound'])}"
