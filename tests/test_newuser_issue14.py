"""A new user's pass over issue 14 (the wheel's import, the pytest plugin, the command line
and Ray): the README's examples at tiny sizes, and bad inputs of every kind. Each test
pins one property that should hold: a clear `SteerlabError` (CLI: exit 1 and one line,
usage errors 2, Ctrl-C 130), never a traceback, a silent reshape or lost data.

Sizes are tiny: the CLI and the plugin run on tests/fixtures/tiny_llama (3 layers,
d_model 64) where the model does not matter, Ray on a 2-CPU local cluster."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")

from steerlab import testing  # noqa: E402

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_llama"
SCRIPT = Path(sys.executable).parent / "steerlab"

PAIRS = [
    ("I love this, it is wonderful.", "I hate this, it is awful."),
    ("What a great and happy day.", "What a terrible and sad day."),
    ("The food was delicious.", "The food was disgusting."),
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(sl.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("STEERLAB_DEFAULT_MODEL", None)
    return env


def cli(*args: str, cwd: Path | None = None, stdin: str | None = None) -> Any:
    """Run the installed console script (quiet) in a subprocess."""
    if not SCRIPT.exists():
        pytest.fail(f"the console script {SCRIPT} is not installed")
    return subprocess.run(
        [str(SCRIPT), "-q", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        input=stdin,
        timeout=120,
    )


def one_line(result: Any, command: str, match: str) -> None:
    """Exit 1, exactly one stderr line ``steerlab COMMAND: error: ...`` containing `match`."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"steerlab {command}: error: "), lines[0]
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Input files of every kind, and a vector trained on the tiny model by the CLI."""
    d = tmp_path_factory.mktemp("newuser14")
    with open(d / "pairs.jsonl", "w", encoding="utf-8") as f:
        for pos, neg in PAIRS:
            f.write(json.dumps({"positive": pos, "negative": neg}) + "\n")
    (d / "texts.txt").write_text("Hello world\nThe sea is blue 🌊\n", encoding="utf-8")
    (d / "blank.txt").write_text("\n  \n\n")
    (d / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    (d / "badjson.jsonl").write_text('{"text": "a"}\n{bad json\n')
    (d / "nofield.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n')
    (d / "junk.safetensors").write_text("junk")
    (d / "dir.npy").mkdir()
    r = cli(
        "train", "vector", "--model", str(TINY), "--pairs", "pairs.jsonl", "--layers", "1,2",
        "-o", "tiny.safetensors", cwd=d,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return d


# ------------------------------------------------------------------ import


def test_import_steerlab_pulls_no_extra_and_no_pytest() -> None:
    """`import steerlab` (and steerlab.testing, steerlab.stats, steerlab.cli) in a fresh
    process imports none of matplotlib, pandas, fastapi, uvicorn, ray; `import steerlab`
    not pytest either."""
    code = (
        "import sys, steerlab\n"
        "print(sorted(m for m in ('matplotlib', 'pandas', 'fastapi', 'uvicorn', 'ray', 'pytest')"
        " if m in sys.modules))\n"
        "import steerlab.testing, steerlab.stats, steerlab.cli\n"
        "print(sorted(m for m in ('matplotlib', 'pandas', 'fastapi', 'uvicorn', 'ray')"
        " if m in sys.modules))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "[]"]


# ------------------------------------------------------------------ command line


def test_cli_capture_readme_example(work: Path, tmp_path: Path) -> None:
    """README: ``steerlab capture texts.txt --layers 10,15 -o acts.npy`` gives float32
    [n_texts, n_layers, d_model], equal to Model.capture (here layers 1,2 of the tiny model;
    unicode text included)."""
    out = tmp_path / "acts.npy"
    r = cli("capture", "texts.txt", "--model", str(TINY), "--layers", "1,2", "-o", str(out),
            cwd=work)  # fmt: skip
    assert r.returncode == 0, r.stderr
    acts = np.load(out)
    assert acts.shape == (2, 2, 64) and acts.dtype == np.float32
    model = sl.Model.load(TINY)
    texts = ["Hello world", "The sea is blue 🌊"]
    np.testing.assert_allclose(acts, model.capture(texts, [1, 2], "last"), rtol=1e-5, atol=1e-5)


def test_cli_capture_reads_stdin(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.npy"
    r = cli("capture", "-", "--model", str(TINY), "--layers", "0", "-o", str(out),
            stdin="one\ntwo\n\nthree\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (3, 1, 64)


BAD_INPUTS = [
    # (command args, the fragment the one-line message must hold)
    (["capture", "texts.txt", "--layers", "3", "-o", "a.npy"], "layer 3 is out of range"),
    (["capture", "texts.txt", "--layers=-4", "-o", "a.npy"], "layer -4 is out of range"),
    (["capture", "texts.txt", "--layers", "2:1", "-o", "a.npy"], "--layers: bad layer '2:1'"),
    (["capture", "texts.txt", "--layers", "", "-o", "a.npy"], "--layers"),
    (["capture", "missing.txt", "--layers", "1", "-o", "a.npy"], "'missing.txt' does not exist"),
    (["capture", "blank.txt", "--layers", "1", "-o", "a.npy"], "holds no texts"),
    (["capture", "latin1.txt", "--layers", "1", "-o", "a.npy"], "is not UTF-8 text"),
    (["capture", "badjson.jsonl", "--layers", "1", "-o", "a.npz"], "line 2: not valid JSON"),
    (["capture", "nofield.jsonl", "--layers", "1", "-o", "a.npz"], "line 2: no field 'text'"),
    (["capture", "texts.txt", "--layers", "1", "-o", "a.csv"], "expected a .npy or .npz"),
    (["capture", "texts.txt", "--layers", "1", "-o", "no/a.npy"], "'no' does not exist"),
    (["capture", "texts.txt", "--layers", "1", "-o", "dir.npy"], "is a folder"),
    (["capture", "texts.txt", "--layers", "1", "--position", "99", "-o", "a.npy"],
     "position 99 is outside the row"),
    (["capture", "texts.txt", "--layers", "1", "--position", "all", "-o", "a.npy"],
     "write a .npz file"),
    (["capture", "texts.txt", "--layers", "1", "--batch-size", "0", "-o", "a.npy"],
     "--batch-size must be at least 1, got 0"),
    (["--model", "junk.safetensors", "capture", "texts.txt", "--layers", "1", "-o", "a.npy"],
     "junk.safetensors"),
    (["--device", "tpu", "capture", "texts.txt", "--layers", "1", "-o", "a.npy"],
     "device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    (["generate", "Hi", "--vector", "tiny.safetensors:nan"], "the coefficient must be finite"),
    (["generate", "Hi", "--vector", "tiny.safetensors:inf"], "the coefficient must be finite"),
    (["generate", "Hi", "--vector", "tiny.safetensors:x"], "bad coefficient 'x'"),
    (["generate", "Hi", "--vector", "tiny.safetensors:1e300"], "overflows float32"),
    (["generate", "Hi", "--vector", "gone.safetensors:1"], "gone.safetensors: file not found"),
    (["generate", "Hi", "--vector", "junk.safetensors:1"], "not a valid safetensors file"),
    (["generate", "Hi", "--vector", "texts.txt:1"], "not a valid safetensors file"),
    (["generate", "Hi", "--max-new-tokens", "-1"], "max_new_tokens must be >= 0, got -1"),
    (["export", "tiny.safetensors", "out.txt"], "cannot tell the format of 'out.txt'"),
    (["export", "tiny.safetensors", "out.gguf", "--scale", "nan"], "expected a finite number"),
    (["export", "tiny.safetensors", "out.gguf", "--layers", "0"], "no layer(s) [0]"),
    (["export", "junk.safetensors", "out.gguf"], "not a valid safetensors file"),
    (["train", "vector", "--dataset", "nope", "--layers", "1", "-o", "v.safetensors"],
     "unknown dataset 'nope'"),
    (["train", "vector", "--pairs", "pairs.jsonl", "--layers", "1", "--limit", "0",
      "-o", "v.safetensors"], "--limit must be at least 1, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "match"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_cli_bad_input_is_one_line_exit_1(work: Path, args: list[str], match: str) -> None:
    if "--model" not in args:
        args = ["--model", str(TINY), *args]
    command = next(a for a in args if a in ("capture", "generate", "export", "train"))
    r = cli(*args, cwd=work)
    one_line(r, "train vector" if command == "train" else command, match)
    leftovers = {p.name for p in work.iterdir()} - {
        "pairs.jsonl", "texts.txt", "blank.txt", "latin1.txt", "badjson.jsonl",
        "nofield.jsonl", "junk.safetensors", "dir.npy", "tiny.safetensors",
    }  # fmt: skip
    assert leftovers == set()  # nothing half-written, no temporary file left


def test_cli_vector_for_another_model_is_refused(work: Path) -> None:
    """A vector made on the tiny model (d_model 64) used with the default SmolLM2 (576)."""
    r = cli("generate", "Hi", "--vector", "tiny.safetensors:1", "--max-new-tokens", "1",
            cwd=work)  # fmt: skip
    one_line(r, "generate", "it was made for another model")


@pytest.mark.parametrize(
    "args",
    [
        ["--dtype", "f16", "capture", "texts.txt", "--layers", "1", "-o", "a.npy"],
        ["bogus"],
        [],
        ["train", "vector", "--pairs", "pairs.jsonl", "--dataset", "optimism", "--layers", "1",
         "-o", "v.safetensors"],
        ["capture", "texts.txt", "-o", "a.npy"],
    ],
)  # fmt: skip
def test_cli_usage_error_exits_2(work: Path, args: list[str]) -> None:
    r = cli(*args, cwd=work)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("usage: steerlab")


def test_cli_train_output_must_be_safetensors(work: Path, tmp_path: Path) -> None:
    """`train -o x.npy` must not write safetensors bytes into a file named .npy (which
    numpy then cannot read): the output is refused before any work."""
    out = tmp_path / "x.npy"
    r = cli("train", "vector", "--model", str(TINY), "--pairs", str(work / "pairs.jsonl"),
            "--layers", "1", "-o", str(out))  # fmt: skip
    one_line(r, "train vector", "--output")
    assert ".safetensors" in r.stderr
    assert not out.exists()


def test_cli_diagnose_plot_with_unknown_extension_is_one_line(work: Path, tmp_path: Path) -> None:
    """`diagnose --plot diag.jpgx` is refused with one line before any work: no
    matplotlib traceback, and no --json written beside it."""
    r = cli("diagnose", "--model", str(TINY), "--pairs", str(work / "pairs.jsonl"),
            "--layers", "1", "--json", str(tmp_path / "d.json"),
            "--plot", str(tmp_path / "d.jpgx"))  # fmt: skip
    one_line(r, "diagnose", "--plot")
    assert "png" in r.stderr
    assert os.listdir(tmp_path) == []


def test_cli_diagnose_plot_png_is_written(work: Path, tmp_path: Path) -> None:
    r = cli("diagnose", "--model", str(TINY), "--pairs", str(work / "pairs.jsonl"),
            "--layers", "1,2", "--plot", str(tmp_path / "d.png"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_export_reads_back(work: Path, tmp_path: Path) -> None:
    """README: export to .npz holds 'layers' int64 [L] and 'directions' float32 [L, d],
    scaled by --scale."""
    r = cli("export", str(work / "tiny.safetensors"), str(tmp_path / "v.npz"), "--scale", "4")
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "v.npz")
    vec = sl.SteeringVector.load(work / "tiny.safetensors")
    assert z["layers"].tolist() == [1, 2] and z["layers"].dtype == np.int64
    assert z["directions"].dtype == np.float32 and z["directions"].shape == (2, 64)
    np.testing.assert_allclose(z["directions"][0], 4 * np.asarray(vec[1]), rtol=1e-6)


def test_cli_ctrl_c_during_capture_exits_130_and_writes_nothing(tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("".join(f"A rather long sentence number {i} about the sea.\n"
                             for i in range(4000)))  # fmt: skip
    p = subprocess.Popen(
        [str(SCRIPT), "capture", str(texts), "--layers", "all", "--batch-size", "1",
         "-o", str(tmp_path / "a.npy")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    assert p.stderr is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "capture:" not in seen and time.monotonic() < deadline:
        ch = p.stderr.read(1)
        if not ch:
            break
        seen += ch
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, seen + err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == ["t.txt"]


def test_cli_stream_with_output_prints_text_and_writes_the_json_line(tmp_path: Path) -> None:
    """Help: --stream prints plain text on stdout; --output still gets the JSON line."""
    out = tmp_path / "s.jsonl"
    r = cli("generate", "Hi", "--stream", "--model", str(TINY), "--max-new-tokens", "3",
            "-o", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = json.loads(out.read_text(encoding="utf-8"))
    assert line["prompt"] == "Hi"
    assert r.stdout.rstrip("\n") == line["text"]


def test_cli_export_in_place_is_whole(work: Path, tmp_path: Path) -> None:
    """Exporting a vector onto its own path (atomic) leaves a readable, scaled vector."""
    path = tmp_path / "v.safetensors"
    path.write_bytes((work / "tiny.safetensors").read_bytes())
    r = cli("export", str(path), str(path), "--scale", "2")
    assert r.returncode == 0, r.stderr
    before = sl.SteeringVector.load(work / "tiny.safetensors")
    after = sl.SteeringVector.load(path)
    np.testing.assert_allclose(np.asarray(after[2]), 2 * np.asarray(before[2]), rtol=1e-6)
    assert os.listdir(tmp_path) == ["v.safetensors"]


def test_ctrl_c_during_the_first_capture_in_python_is_a_keyboard_interrupt() -> None:
    """The Python API (a notebook): Ctrl-C during a process's first forward pass raises
    KeyboardInterrupt, not a panic. (The extension fetches NumPy's C API lazily, by
    running Python code, when it first builds or reads an array; an interrupt pending there
    makes rust-numpy panic: this happened in `steerlab capture`, whose first array is the
    forward pass's result. Here Model.load has already fetched it.)"""
    code = (
        "import sys, steerlab as sl\n"
        f"m = sl.Model.load({str(TINY)!r})\n"
        "texts = [f'A rather long sentence number {i} about the sea.' for i in range(4000)]\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    m.capture(texts, list(range(3)), 'last', 4000, progress=False)\n"
        "except KeyboardInterrupt:\n"
        "    print('KeyboardInterrupt', flush=True)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert "panicked" not in err, err[:600]
    assert out.strip() == "KeyboardInterrupt", (out, err[:600])


# ------------------------------------------------------------------ the pytest plugin

INNER = """
def test_uses_model(steerlab_model):
    print("MODEL", steerlab_model.n_layers, steerlab_model.d_model)
"""


def test_plugin_command_line_wins_over_a_bad_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsteerlab_model = nope.gguf\nsteerlab_dtype = F32\n")
    pytester.makepyfile(INNER)
    res = pytester.runpytest("-s", f"--steerlab-model={TINY}", "--steerlab-dtype", "f32")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*MODEL 3 64*"])


def test_plugin_ini_model_path_is_relative_to_the_ini(pytester: pytest.Pytester) -> None:
    sub = pytester.mkdir("sub")
    (sub / "tiny").symlink_to(TINY)
    (sub / "pytest.ini").write_text("[pytest]\nsteerlab_model = tiny\n")
    (sub / "test_x.py").write_text(INNER)
    res = pytester.runpytest("-s", str(sub / "test_x.py"), "-c", str(sub / "pytest.ini"))
    res.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--steerlab-dtype", "F32"], "*invalid choice*"),
        (["--steerlab-model", "/no/such/model.gguf"], "*--steerlab-model: no file or folder*"),
        (["--steerlab-json", "/no/such/dir/r.json"], "*--steerlab-json: the folder*"),
        (["--steerlab-json", "."], "*--steerlab-json: '.' is a folder*"),
    ],
)
def test_plugin_bad_option_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], match: str
) -> None:
    pytester.makepyfile(INNER)
    res = pytester.runpytest(*args)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([match])


def test_plugin_empty_json_path_says_it_is_empty(pytester: pytest.Pytester) -> None:
    """``--steerlab-json ''`` is not "a folder": the message says the path is empty."""
    pytester.makepyfile(INNER)
    res = pytester.runpytest("--steerlab-json", "")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--steerlab-json*empty*"])


def test_plugin_empty_model_path_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """``--steerlab-model ''`` must not quietly mean the current folder."""
    pytester.makepyfile(INNER)
    res = pytester.runpytest("--steerlab-model", "")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--steerlab-model*empty*"])


def test_plugin_off_with_no_steerlab(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(INNER)
    res = pytester.runpytest("-p", "no:steerlab", "-p", "no:cacheprovider")
    res.assert_outcomes(errors=1)
    res.stdout.fnmatch_lines(["*fixture 'steerlab_model' not found*"])


RECORDS = """
import numpy as np

def test_rec(steerlab_results):
    steerlab_results.record("r", {"inf": float("inf"), "ninf": -np.inf, "flag": np.bool_(True),
                                  "none": None})
"""


def test_plugin_record_keeps_numpy_bools_and_none(pytester: pytest.Pytester) -> None:
    """A numpy bool is stored as a JSON bool (not the string 'True'), None as null."""
    pytester.makepyfile(RECORDS)
    out = pytester.path / "r.json"
    res = pytester.runpytest(f"--steerlab-model={TINY}", "--steerlab-json", str(out))
    res.assert_outcomes(passed=1)
    measured = json.loads(out.read_text())["results"][0]["measured"]
    assert measured["flag"] is True
    assert measured["none"] is None


def test_plugin_summary_shows_infinities_as_infinities(pytester: pytest.Pytester) -> None:
    """A recorded +inf / -inf is not shown as 'nan' in the terminal summary (the JSON
    stores null for all three, so the sign is lost there too)."""
    pytester.makepyfile(RECORDS)
    res = pytester.runpytest(f"--steerlab-model={TINY}")
    res.assert_outcomes(passed=1)
    line = next(s for s in res.stdout.lines if s.startswith("RECORD"))
    assert "inf inf" in line and "ninf -inf" in line, line


def test_plugin_record_refuses_a_value_json_cannot_hold(pytester: pytest.Pytester) -> None:
    """Docstring: values are numbers, str, bool or None; an object is not silently stored
    as its repr."""
    pytester.makepyfile(
        "def test_rec(steerlab_results):\n    steerlab_results.record('r', {'obj': object()})\n"
    )
    res = pytester.runpytest(f"--steerlab-model={TINY}")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*InvalidTypeError*measured*obj*"])


def test_plugin_two_runs_on_one_json_leave_a_whole_file(tmp_path: Path) -> None:
    """xdist-like double use of one --steerlab-json path: the writes are atomic, so the
    file is one run's complete document, never a mix."""
    (tmp_path / "test_r.py").write_text(
        "def test_rec(steerlab_results):\n    steerlab_results.record('r', {'x': 1.0})\n"
    )
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_r.py",
           f"--steerlab-model={TINY}", "--steerlab-json", str(out)]  # fmt: skip
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for _ in range(2)]  # fmt: skip
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    doc = json.loads(out.read_text())
    assert doc["summary"] == {"checks": 1, "passed": 0, "failed": 0}
    assert sorted(os.listdir(tmp_path)) == ["r.json", "test_r.py"]


@pytest.fixture(scope="module")
def tiny() -> Any:
    return sl.Model.load(TINY)


@pytest.fixture(scope="module")
def tiny_vec(tiny: Any) -> Any:
    return sl.SteeringVector.train(tiny, sl.ContrastPairs.from_texts(PAIRS), layers=[1])


def test_helpers_refuse_bad_arguments_with_steerlab_errors(tiny: Any, tiny_vec: Any) -> None:
    records = sl.datasets.load_behaviour("optimism").records[100:102]
    good = {"coefficient": 1.0, "min_margin_shift": 0.0, "max_anti_steerable": 1.0}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"coefficient": math.nan}, "coefficient must be a finite number > 0.0, got nan"),
        ({"coefficient": -1.0}, "coefficient must be a finite number > 0.0"),
        ({"min_margin_shift": math.nan}, "min_margin_shift must be a finite number, got nan"),
        ({"max_anti_steerable": 1.5}, "max_anti_steerable"),
    ]
    for change, match in cases:
        with pytest.raises(sl.SteerlabError, match=match.replace("(", r"\(")):
            testing.assert_steers(tiny, tiny_vec, records, **{**good, **change})
    with pytest.raises(sl.SteerlabError, match="no records given"):
        testing.assert_steers(tiny, tiny_vec, [], **good)
    with pytest.raises(sl.SteerlabError, match="keywords is empty"):
        testing.assert_on_topic(tiny, tiny_vec, ["Hi"], [], min_rate=0.1, max_new_tokens=2)
    with pytest.raises(sl.SteerlabError, match="prompts is empty"):
        testing.assert_on_topic(tiny, tiny_vec, [], ["sea"], min_rate=0.1, max_new_tokens=2)
    with pytest.raises(sl.SteerlabError, match="max_rate must be a finite number"):
        testing.assert_false_refusal_rate(tiny, tiny_vec, ["hi"], max_rate=1.5)


def test_helpers_refuse_a_vector_for_another_model(tiny_vec: Any) -> None:
    smol = sl.Model.load(sl.catalog.smollm2_135m_path())
    records = sl.datasets.load_behaviour("optimism").records[100:102]
    with pytest.raises(sl.ShapeError, match="it was made for another model"):
        testing.assert_steers(smol, tiny_vec, records, coefficient=1.0, min_margin_shift=0.0,
                              max_anti_steerable=1.0)  # fmt: skip


# ------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir=tmp_path_factory.getbasetemp()))
    if len(str(temp)) > 40:
        temp = Path(tempfile.mkdtemp(prefix="ray"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(temp),
             configure_logging=False)  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


def _worker_error(ds: Any) -> str:
    """Run `ds`; it must fail; the text a user sees (the exception and its causes)."""
    with pytest.raises(Exception) as info:  # Ray wraps what the worker raised
        ds.take_all()
    parts, e = [], info.value
    while e is not None:
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__
    return "\n".join(parts)


pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`\w+` is deprecated:DeprecationWarning:ray\.data\.context"),
    pytest.mark.filterwarnings("ignore:Use 'expr' instead of 'fn':UserWarning"),
]


def test_ray_capture_keeps_rows_across_empty_blocks(cluster: Any, tiny: Any) -> None:
    import steerlab.ray as slr

    ds = cluster.data.range(6).map(lambda r: {"id": r["id"], "text": "x" * (r["id"] + 1)})
    ds = ds.repartition(6).filter(lambda r: r["id"] % 2 == 0)  # three empty blocks
    rows = sorted(slr.capture(ds, TINY, layers=[1, -1]).take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [0, 2, 4]
    want = tiny.capture([r["text"] for r in rows], [1, -1], "last")
    np.testing.assert_allclose(np.stack([r["activations"] for r in rows]), want, rtol=1e-5)


def test_ray_capture_does_not_overwrite_an_input_column(cluster: Any) -> None:
    """README: every input column is kept; a column named like the output is not silently
    replaced (refused on the driver)."""
    import steerlab.ray as slr

    ds = cluster.data.from_items([{"text": "a", "activations": 1}])
    with pytest.raises(sl.SteerlabError, match="activations"):
        slr.capture(ds, TINY, layers=[1])


def test_ray_generate_does_not_overwrite_an_input_column(cluster: Any) -> None:
    import steerlab.ray as slr

    ds = cluster.data.from_items([{"prompt": "a", "generation": "mine"}])
    with pytest.raises(sl.SteerlabError, match="generation"):
        slr.generate(ds, TINY, max_new_tokens=1)


def test_ray_bad_row_error_carries_steerlab_message(cluster: Any) -> None:
    """A bad value in a row is found on a worker; the error the user gets (Ray's wrapper)
    carries steerlab's message naming the row and the value. (One failing dataset only:
    after a failed actor pool the next dataset on a 2-CPU cluster was seen to wait for
    minutes; see the report.)"""
    import steerlab.ray as slr

    ds = cluster.data.from_items([{"text": "a"}, {"text": None}])
    msg = _worker_error(slr.capture(ds, TINY, layers=[1]))
    assert "text[1]" in msg and "None" in msg, msg


def test_ray_transforms_name_the_bad_row_and_value(tiny_vec: Any) -> None:
    """What the workers raise, called as plain callables (no cluster)."""
    import steerlab.ray as slr

    cap = slr.Capture(TINY, layers=[3])
    with pytest.raises(sl.SteerlabError, match="layer 3 is out of range"):
        cap({"text": np.array(["a"])})
    gen = slr.Generate(TINY, vectors={"v": tiny_vec}, vector_column="v", coefficient_column="c",
                       max_new_tokens=1)  # fmt: skip
    with pytest.raises(sl.SteerlabError, match=r"c\[0\] must be a finite number, got nan"):
        gen({"prompt": np.array(["Hi"]), "v": np.array(["v"]), "c": np.array([math.nan])})
    with pytest.raises(sl.SteerlabError, match=r"v\[0\] names vector .*nope.*not in vectors"):
        gen({"prompt": np.array(["Hi"]), "v": np.array(["nope"]), "c": np.array([1.0])})
    with pytest.raises(sl.SteerlabError, match=r"prompt\[1\] must be a str, got NoneType"):
        gen({"prompt": np.array(["Hi", None], dtype=object)})


def test_ray_sweep_and_train_vector_checks(cluster: Any) -> None:
    import steerlab.ray as slr

    pairs = sl.ContrastPairs.from_texts(PAIRS)
    with pytest.raises(sl.SteerlabError, match="coefficients is empty"):
        slr.sweep(["a"], {"h": {1: np.ones(64, np.float32)}}, [], model=TINY)
    with pytest.raises(sl.SteerlabError, match=r"coefficients\[0\] must be a finite number"):
        slr.sweep(["a"], {"h": {1: np.ones(64, np.float32)}}, [math.nan], model=TINY)
    with pytest.raises(sl.SteerlabError, match="ds has no rows"):
        slr.train_vector(slr.from_pairs(pairs).filter(lambda r: False), TINY, layers=[1])
    with pytest.raises(sl.SteerlabError, match="unknown method 'foo'"):
        slr.train_vector(slr.from_pairs(pairs), TINY, layers=[1], method="foo")


# ------------------------------------------------------------------ statistics


def test_stats_merge_refuses_mismatched_parts() -> None:
    from steerlab.stats import ActivationStats

    rng = np.random.default_rng(0)
    a = ActivationStats.from_activations(rng.standard_normal((4, 2, 8)), layers=[1, 2])
    b = ActivationStats.from_activations(rng.standard_normal((3, 2, 8)), layers=[1, 3])
    c = ActivationStats.from_activations(rng.standard_normal((3, 2, 6)), layers=[1, 2])
    with pytest.raises(sl.SteerlabError, match=r"layers \[1, 2\] with .* layers \[1, 3\]"):
        a + b
    with pytest.raises(sl.ShapeError, match="widths 8 and 6"):
        a + c
    with pytest.raises(sl.SteerlabError, match="repeated layer"):
        ActivationStats.from_activations(np.zeros((2, 2, 4)), layers=[1, 1])
    with pytest.raises(sl.SteerlabError, match="NaN or inf"):
        ActivationStats.from_activations(np.full((2, 1, 4), np.nan))
    d = a.to_dict()
    d.pop("mean")
    with pytest.raises(sl.SteerlabError, match=r"lacks field\(s\) \['mean'\]"):
        ActivationStats.from_dict(d)


def test_stats_of_huge_finite_activations_do_not_overflow_silently() -> None:
    """Finite float64 activations near 1e308 must not give inf means/covariances (with
    only a numpy RuntimeWarning): an error naming the overflow, or finite results."""
    from steerlab.stats import ActivationStats

    acts = np.full((2, 1, 4), 1e308)
    acts[1] *= -0.5
    with pytest.raises(sl.InvalidArgumentError, match="co-moment overflows float64"):
        ActivationStats.from_activations(acts)
    ok = ActivationStats.from_activations(np.full((2, 1, 4), 1e100))
    assert np.isfinite(ok.covariance(0)).all()
