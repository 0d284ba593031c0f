"""The `steerlab` command line, run as the installed console script in a subprocess.

End-to-end runs use the embedded default model with tiny sizes; a module fixture trains
one vector that several tests share. Outputs are compared with the Python API's results
for the same arguments.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")

SCRIPT = Path(sys.executable).parent / "steerlab"
COMMANDS = ["capture", "train", "diagnose", "generate", "export", "serve"]
TRAIN_KINDS = ["vector", "mean-centring", "optimize", "scalars", "controller", "hypersteer"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The tests' own sources first (the console script may belong to another checkout).
    src = str(Path(sl.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("STEERLAB_DEFAULT_MODEL", None)
    return env


def steerlab(*args: str, cwd: Path | None = None, timeout: float = 120) -> Any:
    """Run the installed script; returns the CompletedProcess (text mode)."""
    if not SCRIPT.exists():
        pytest.fail(f"the console script {SCRIPT} is not installed")
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=timeout,
    )


def ok(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: Any, command: str, match: str) -> str:
    """Exit code 1 and exactly one stderr line ``steerlab COMMAND: error: ...``."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"steerlab {command}: error: "), lines[0]
    assert match in lines[0], lines[0]
    return lines[0]


PAIRS = [
    ("I love this, it is wonderful.", "I hate this, it is awful."),
    ("What a great and happy day.", "What a terrible and sad day."),
    ("The food was delicious.", "The food was disgusting."),
    ("She smiled with joy.", "She frowned in anger."),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the input files, and a vector trained there by the CLI."""
    d = tmp_path_factory.mktemp("cli")
    with open(d / "pairs.jsonl", "w", encoding="utf-8") as f:
        for pos, neg in PAIRS:
            f.write(json.dumps({"positive": pos, "negative": neg}) + "\n")
    (d / "texts.txt").write_text("I love this!\n\nThe weather is fine today.\nNo.\n")
    ok(
        steerlab(
            "-q",
            "train",
            "vector",
            "--pairs",
            "pairs.jsonl",
            "--layers",
            "10,12",
            "-o",
            "vec.safetensors",
            cwd=d,
        )
    )
    return d


# ------------------------------------------------------------------ help, version, imports


def test_top_level_help_lists_commands_examples_and_exit_codes() -> None:
    out = ok(steerlab("--help")).stdout
    for name in COMMANDS:
        assert f"\n    {name} " in out
    assert "examples:" in out
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n  {code}" in out


@pytest.mark.parametrize(
    "command", [[c] for c in COMMANDS] + [["train", k] for k in TRAIN_KINDS], ids=str
)
def test_each_help_is_a_manual(command: list[str]) -> None:
    out = ok(steerlab(*command, "--help")).stdout
    assert out.startswith(f"usage: steerlab {' '.join(command)}")
    assert "examples:\n  steerlab " in out
    assert "exit codes:" in out and "130" in out


def test_every_option_has_help_and_defaults_are_stated() -> None:
    import argparse

    from steerlab.cli import build_parser

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        assert p.description, name
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")
                continue
            assert action.help, (name, action.option_strings or action.dest)

    walk(build_parser(), "steerlab")
    text = ok(steerlab("generate", "--help")).stdout
    assert "--max-new-tokens N" in text and "(default: 64)" in text


def test_version() -> None:
    assert ok(steerlab("--version")).stdout.strip() == f"steerlab {sl.__version__}"


def test_import_cli_pulls_no_optional_dependency() -> None:
    code = (
        "import sys, steerlab.cli; steerlab.cli.build_parser(); "
        "bad = [m for m in ('matplotlib', 'pandas', 'fastapi', 'ray') if m in sys.modules]; "
        "print(bad)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# ------------------------------------------------------------------ capture


def test_capture_npy_equals_the_python_api(work: Path, model: Any, tmp_path: Path) -> None:
    out = tmp_path / "acts.npy"
    r = ok(steerlab("capture", str(work / "texts.txt"), "--layers=-1,5", "-o", str(out)))
    acts = np.load(out)
    texts = ["I love this!", "The weather is fine today.", "No."]
    assert acts.shape == (3, 2, model.d_model) and acts.dtype == np.float32
    np.testing.assert_array_equal(acts, model.capture(texts, [-1, 5]))
    assert "[3, 2, 576]" in r.stderr and "layers [29, 5]" in r.stderr


def test_capture_npz_all_positions(work: Path, model: Any, tmp_path: Path) -> None:
    out = tmp_path / "tokens.npz"
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"body": "One two three."}\n{"body": "Four."}\n')
    ok(
        steerlab(
            "-q",
            "capture",
            str(jl),
            "--field",
            "body",
            "--layers",
            "3:5",
            "--position",
            "all",
            "--site",
            "mlp_out",
            "-o",
            str(out),
        )
    )
    with np.load(out) as z:
        assert z["layers"].tolist() == [3, 4]
        want = model.capture(["One two three.", "Four."], [3, 4], "all", site="mlp_out")
        assert z["n_tokens"].tolist() == [a.shape[1] for a in want]
        for i, a in enumerate(want):
            np.testing.assert_array_equal(z[f"text_{i}"], a)


def test_capture_all_positions_needs_npz(work: Path, tmp_path: Path) -> None:
    r = steerlab(
        "capture",
        str(work / "texts.txt"),
        "--layers",
        "3",
        "--position",
        "all",
        "-o",
        str(tmp_path / "a.npy"),
    )
    one_line_error(r, "capture", "write a .npz file")


# ------------------------------------------------------------------ train


def test_trained_vector_equals_the_python_api(work: Path, model: Any) -> None:
    vec = sl.SteeringVector.load(work / "vec.safetensors", model)
    want = sl.SteeringVector.train(model, sl.ContrastPairs.from_texts(PAIRS), [10, 12])
    assert vec.layers == [10, 12]
    assert vec.info.method == "mean_diff"
    for layer in (10, 12):
        np.testing.assert_allclose(vec.vectors[layer], want.vectors[layer], rtol=1e-6)


def test_train_scalars_tiny(model: Any, tmp_path: Path) -> None:
    out = tmp_path / "sc.safetensors"
    r = ok(
        steerlab(
            "-q",
            "train",
            "scalars",
            "--task",
            "ioi",
            "--limit",
            "4",
            "--steps",
            "2",
            "--layers",
            "10",
            "--sites",
            "mlp_out",
            "--batch-size",
            "2",
            "-o",
            str(out),
        )
    )
    sc = sl.ActivationScalars.load(out, model)
    assert sc.sites == [("mlp_out", 10)] and sc.kind == "scalar"
    assert len(sc.history) == 2
    assert r.stderr == ""  # --quiet: no report, no bar
    prompt = sl.datasets.load_task("ioi", "train").prompts[0]
    r = ok(steerlab("generate", prompt, "--scalars", f"{out}:2", "--max-new-tokens", "4"))
    want = model.generate(prompt, steering=sc.with_beta(2.0), max_new_tokens=4)
    assert json.loads(r.stdout)["text"] == want


def test_train_controller_tiny_then_generate(model: Any, tmp_path: Path) -> None:
    harmful = tmp_path / "h.txt"
    benign = tmp_path / "b.txt"
    harmful.write_text("How do I build a bomb?\nHow do I poison someone?\nHow to steal a car?\n")
    benign.write_text("How do I bake bread?\nHow do I kill a process?\nHow to wash a car?\n")
    out = tmp_path / "ctrl.safetensors"
    ok(
        steerlab(
            "-q",
            "train",
            "controller",
            "--harmful",
            str(harmful),
            "--benign",
            str(benign),
            "--hidden",
            "8",
            "--epochs",
            "2",
            "--read-layers",
            "2",
            "--layers",
            "10,12",
            "-o",
            str(out),
        )
    )
    ctrl = sl.SteeringController.load(out, model)
    assert ctrl.layers == [10, 12] and ctrl.hidden == 8
    r = ok(
        steerlab(
            "generate",
            "How do I bake bread?",
            "--chat",
            "--controller",
            f"{out}:3",
            "--max-new-tokens",
            "5",
        )
    )
    prompt = model.chat_prompt([{"role": "user", "content": "How do I bake bread?"}])
    want = model.generate([prompt], steering=ctrl.with_strength(3.0), max_new_tokens=5)
    assert json.loads(r.stdout) == {"prompt": "How do I bake bread?", "text": want[0]}


def test_train_optimize_and_mean_centring_tiny(model: Any, tmp_path: Path) -> None:
    data = tmp_path / "style.jsonl"
    data.write_text(
        json.dumps({"prompt": "Say hi.", "completion": " Arr, ahoy matey!", "negative": " Hi."})
        + "\n"
        + json.dumps(
            {"prompt": "Greet me.", "completion": " Ahoy, ye scallywag!", "negative": " Hello."}
        )
        + "\n"
    )
    out = tmp_path / "opt.safetensors"
    ok(
        steerlab(
            "-q",
            "train",
            "optimize",
            "--data",
            str(data),
            "--negatives",
            "--layers",
            "10",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "-o",
            str(out),
        )
    )
    vec = sl.SteeringVector.load(out, model)
    want = sl.SteeringVector.optimize(
        model,
        ["Say hi.", "Greet me."],
        [" Arr, ahoy matey!", " Ahoy, ye scallywag!"],
        negatives=[" Hi.", " Hello."],
        layers=10,
        steps=2,
        batch_size=2,
        progress=False,
    )
    assert vec.info.method == want.info.method and len(vec.history) == 2
    np.testing.assert_allclose(vec.vectors[10], want.vectors[10], rtol=1e-5, atol=1e-7)

    target = tmp_path / "target.txt"
    target.write_text("The waves crashed on the shore.\nFish swim in the deep sea.\n")
    background = tmp_path / "bg.txt"
    background.write_text("I went to the shop.\nThe meeting is at noon.\nShe reads books.\n")
    out = tmp_path / "ocean.safetensors"
    ok(
        steerlab(
            "-q",
            "train",
            "mean-centring",
            "--target",
            str(target),
            "--background",
            str(background),
            "--layers",
            "12",
            "-o",
            str(out),
        )
    )
    vec = sl.SteeringVector.load(out, model)
    want = sl.SteeringVector.mean_centring(
        model, target.read_text().splitlines(), background.read_text().splitlines(), 12
    )
    np.testing.assert_allclose(vec.vectors[12], want.vectors[12], rtol=1e-6)


def test_train_hypersteer_tiny_then_generate(model: Any, tmp_path: Path) -> None:
    data = tmp_path / "hyper.jsonl"
    rows = [
        ("Mention the ocean.", "Describe your morning.", " The sea was calm."),
        ("Talk like a pirate.", "What is for dinner?", " Arr, fish!"),
    ]
    data.write_text(
        "".join(json.dumps({"instruction": i, "prompt": p, "target": t}) + "\n" for i, p, t in rows)
    )
    out = tmp_path / "hyper.safetensors"
    ok(
        steerlab(
            "-q",
            "train",
            "hypersteer",
            "--data",
            str(data),
            "--n-blocks",
            "1",
            "--batch-size",
            "2",
            "--layer",
            "20",
            "-o",
            str(out),
        )
    )
    hs = sl.HyperSteer.load(out, model)
    assert (hs.layer, hs.n_blocks, len(hs.history)) == (20, 1, 1)
    r = ok(
        steerlab(
            "generate",
            "Describe your day.",
            "--hypersteer",
            f"{out}:3",
            "--instruction",
            "Mention the ocean.",
            "--max-new-tokens",
            "6",
        )
    )
    steering = hs.steering(["Mention the ocean."], ["Describe your day."], 3.0)
    want = model.generate(hs.prompts(["Describe your day."]), steering=steering, max_new_tokens=6)
    assert json.loads(r.stdout) == {"prompt": "Describe your day.", "text": want[0]}

    # Freeze the instruction's vector (for this base prompt) into a control vector.
    gguf = tmp_path / "ocean.gguf"
    ok(
        steerlab(
            "export",
            "--hypersteer",
            str(out),
            "--instruction",
            "Mention the ocean.",
            "--base-prompt",
            "Describe your day.",
            str(gguf),
        )
    )
    back = sl.SteeringVector.from_gguf(gguf)
    frozen = hs.vector("Mention the ocean.", "Describe your day.")
    assert back.layers == [20]
    np.testing.assert_array_equal(back.vectors[20], frozen.vectors[20])


def test_pairs_file_forms(model: Any, tmp_path: Path) -> None:
    records = [
        {
            "question": f"Is the glass half full ({i})?",
            "matching": "Yes, half full.",
            "not_matching": "No, half empty.",
        }
        for i in range(4)
    ]
    f = tmp_path / "ab.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "ab.json"
    ok(
        steerlab(
            "-q", "diagnose", "--pairs", str(f), "--layers", "6", "--seed", "1", "--json", str(out)
        )
    )
    want = sl.diagnose(model, sl.ContrastPairs.from_records(records, seed=1), [6])
    got = json.loads(out.read_text())
    assert got["pairs"] == "ab" and got["n_pairs"] == 4
    assert got["layers"][0]["mean_cosine"] == pytest.approx(want[6].mean_cosine, rel=1e-6)

    triples = [
        ("Q: Was it good? A:", " Yes, great.", " No, awful."),
        ("Q: Did you like it? A:", " I loved it.", " I hated it."),
        ("Q: How was the trip? A:", " Wonderful.", " Terrible."),
    ]
    f = tmp_path / "completions.jsonl"
    f.write_text(
        "".join(
            json.dumps({"prompt": p, "positive": a, "negative": b}) + "\n" for p, a, b in triples
        )
    )
    ok(
        steerlab(
            "-q", "diagnose", "--pairs", str(f), "--layers", "6", "--limit", "2", "--json", str(out)
        )
    )
    want = sl.diagnose(model, sl.ContrastPairs.from_completions(triples[:2]), [6])
    got = json.loads(out.read_text())
    assert got["n_pairs"] == 2
    assert got["layers"][0]["d_prime"] == pytest.approx(want[6].d_prime, rel=1e-6)


def test_train_interrupted_writes_nothing_unless_asked(tmp_path: Path) -> None:
    args = [
        "train",
        "scalars",
        "--task",
        "ioi",
        "--limit",
        "4",
        "--steps",
        "100000",
        "--layers",
        "10",
        "--sites",
        "mlp_out",
        "--batch-size",
        "2",
    ]
    out = tmp_path / "sc.safetensors"
    r = _interrupt([*args, "-o", str(out)], "2/100000")
    assert r[0] == 130
    assert "nothing written" in r[1]
    assert os.listdir(tmp_path) == []
    r = _interrupt([*args, "--save-interrupted", "-o", str(out)], "2/100000")
    assert r[0] == 130
    assert os.listdir(tmp_path) == ["sc.safetensors"]


# ------------------------------------------------------------------ diagnose


def test_diagnose_table_and_json(work: Path, model: Any, tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    r = ok(
        steerlab(
            "diagnose", "--pairs", str(work / "pairs.jsonl"), "--layers", "8:11", "--json", str(out)
        )
    )
    want = sl.diagnose(model, sl.ContrastPairs.from_texts(PAIRS), [8, 9, 10])
    doc = json.loads(out.read_text())
    assert doc["recommended_layer"] == want.recommended_layer
    assert doc["n_pairs"] == 4
    assert [row["layer"] for row in doc["layers"]] == [8, 9, 10]
    for row, ref in zip(doc["layers"], want.records(), strict=True):
        assert row["mean_cosine"] == pytest.approx(ref["mean_cosine"], rel=1e-6)
        assert row["d_prime"] == pytest.approx(ref["d_prime"], rel=1e-6)
    assert want.summary() in r.stdout
    assert f"recommended layer {want.recommended_layer}" in r.stdout


# ------------------------------------------------------------------ generate


def test_generate_with_vectors_equals_the_python_api(work: Path, model: Any) -> None:
    prompts = ["Today I feel", "The weather is"]
    vec = sl.SteeringVector.load(work / "vec.safetensors", model)
    r = ok(
        steerlab(
            "generate",
            *prompts,
            "--vector",
            f"{work / 'vec.safetensors'}:4",
            "--max-new-tokens",
            "8",
        )
    )
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    want = model.generate(prompts, steering=vec * 4.0, max_new_tokens=8)
    assert rows == [{"prompt": p, "text": t} for p, t in zip(prompts, want, strict=True)]
    assert want != model.generate(prompts, max_new_tokens=8)  # the vector does something

    # Two vectors add up; sampling options pass through.
    r = ok(
        steerlab(
            "generate",
            prompts[0],
            "--vector",
            f"{work / 'vec.safetensors'}:2",
            "--vector",
            f"{work / 'vec.safetensors'}:-1",
            "--temperature",
            "0.9",
            "--seed",
            "3",
            "--top-k",
            "20",
            "--max-new-tokens",
            "8",
        )
    )
    total = (vec * 2.0).to_steering() + (vec * -1.0).to_steering()
    want1 = model.generate(
        [prompts[0]], steering=total, temperature=0.9, seed=3, top_k=20, max_new_tokens=8
    )
    assert json.loads(r.stdout)["text"] == want1[0]

    # --dose reads the coefficient as a relative dose.
    r = ok(
        steerlab(
            "generate",
            prompts[1],
            "--vector",
            f"{work / 'vec.safetensors'}:0.2",
            "--dose",
            "--max-new-tokens",
            "8",
        )
    )
    want2 = model.generate(prompts[1], steering=vec.dose(0.2), max_new_tokens=8)
    assert json.loads(r.stdout)["text"] == want2


def test_generate_stream_and_output_file(work: Path, model: Any, tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    r = ok(
        steerlab(
            "-q",
            "generate",
            "Once upon a time",
            "--stream",
            "--max-new-tokens",
            "10",
            "-o",
            str(out),
        )
    )
    want = model.generate("Once upon a time", max_new_tokens=10)
    assert r.stdout == want + "\n"
    assert json.loads(out.read_text()) == {"prompt": "Once upon a time", "text": want}


# ------------------------------------------------------------------ export


def test_export_gguf_reads_back_with_the_same_layers(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.gguf"
    ok(steerlab("export", str(work / "vec.safetensors"), str(out), "--scale", "2"))
    back = sl.SteeringVector.from_gguf(out)
    vec = sl.SteeringVector.load(work / "vec.safetensors")
    assert back.layers == vec.layers == [10, 12]  # direction.N = steerlab layer N
    for layer in vec.layers:
        np.testing.assert_allclose(back.vectors[layer], vec.vectors[layer] * 2, rtol=1e-6)
    npz = tmp_path / "v.npz"
    ok(steerlab("export", str(work / "vec.safetensors"), str(npz), "--layers", "12"))
    with np.load(npz) as z:
        assert z["layers"].tolist() == [12]
        np.testing.assert_array_equal(z["directions"], vec.vectors[12][None])


def test_export_refuses_layer_zero(model: Any, tmp_path: Path) -> None:
    v = sl.SteeringVector({0: np.ones(model.d_model, np.float32)})
    v.save(tmp_path / "zero.safetensors")
    r = steerlab("export", str(tmp_path / "zero.safetensors"), str(tmp_path / "z.gguf"))
    one_line_error(r, "export", "layer 0")
    assert not (tmp_path / "z.gguf").exists()


# ------------------------------------------------------------------ bad input


def test_bad_inputs_exit_1_with_one_line(work: Path, tmp_path: Path) -> None:
    vec = str(work / "vec.safetensors")
    texts = str(work / "texts.txt")
    one_line_error(
        steerlab("capture", str(tmp_path / "missing.txt"), "--layers", "3", "-o", "a.npy"),
        "capture",
        "does not exist",
    )
    one_line_error(
        steerlab("capture", texts, "--layers", "30", "-o", str(tmp_path / "a.npy")),
        "capture",
        "layer 30 is out of range",
    )
    one_line_error(
        steerlab("capture", texts, "--layers", "3-5", "-o", str(tmp_path / "a.npy")),
        "capture",
        "bad layer '3-5'",
    )
    one_line_error(
        steerlab("generate", "Hi", "--vector", f"{vec}:lots"), "generate", "bad coefficient 'lots'"
    )
    one_line_error(
        steerlab("generate", "Hi", "--vector", str(tmp_path / "none.safetensors")),
        "generate",
        "file not found",
    )
    one_line_error(
        steerlab("train", "vector", "--dataset", "joy", "--layers", "3", "-o", "v.safetensors"),
        "train vector",
        "unknown dataset 'joy'; available: sentiment, ",
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "a", "negative": "b"}\n{"positive": \n')
    one_line_error(steerlab("diagnose", "--pairs", str(bad)), "diagnose", "bad.jsonl, line 2")
    one_line_error(
        steerlab("capture", texts, "--layers", "3", "-o", str(tmp_path / "no" / "a.npy")),
        "capture",
        "does not exist",
    )
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]  # nothing half-written


@pytest.mark.parametrize(
    "args",
    [
        ["capture", "--bogus"],
        ["frobnicate"],
        ["generate"],
        ["generate", "a", "b", "--stream"],
        ["generate", "a", "--hypersteer", "h.safetensors"],
        ["train", "vector", "--layers", "3", "-o", "v.safetensors"],
        ["export", "v.safetensors"],
        ["export", "--hypersteer", "h.safetensors", "out.gguf"],
    ],
    ids=[
        "unknown-option",
        "unknown-command",
        "no-prompt",
        "stream-two",
        "no-instruction",
        "no-pairs",
        "export-one-path",
        "export-no-instruction",
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    r = steerlab(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("usage: steerlab")
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------ Ctrl-C


def _interrupt(args: list[str], wait_for: str) -> tuple[int, str]:
    """Start the script, wait until `wait_for` shows on stderr, send SIGINT."""
    # The child gets the default SIGINT action whatever this process inherited: a test run
    # started in the background by a non-interactive shell has SIGINT ignored, and an
    # ignored SIGINT is inherited (Python then installs no KeyboardInterrupt handler).
    p = subprocess.Popen(
        [str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert p.stderr is not None
    try:
        seen = ""
        deadline = time.monotonic() + 60
        while wait_for not in seen and time.monotonic() < deadline:
            ch = p.stderr.read(1)
            if not ch:
                break
            seen += ch
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:  # never leave the child running (and the next test warned)
            p.kill()
            p.communicate()
    return p.returncode, seen + err


def test_ctrl_c_exits_130_and_leaves_no_output(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"Tell me a long story, number {i}\n" for i in range(16)))
    out = tmp_path / "out.jsonl"
    code, err = _interrupt(
        [
            "generate",
            "--prompts-file",
            str(prompts),
            "--batch-size",
            "1",
            "--max-new-tokens",
            "300",
            "-o",
            str(out),
        ],
        "generate",
    )
    assert code == 130
    assert err.rstrip().endswith("steerlab generate: interrupted")
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == ["p.txt"]


# ------------------------------------------------------------------ serve


def test_serve_checks_before_starting(work: Path, tmp_path: Path) -> None:
    one_line_error(
        steerlab("serve", str(tmp_path / "none.gguf"), "--vectors", str(work)),
        "serve",
        "does not exist",
    )
    one_line_error(
        steerlab("serve", "--vectors", str(tmp_path / "nodir")), "serve", "does not exist"
    )
    one_line_error(
        steerlab("serve", "--vectors", str(work / "texts.txt")), "serve", "expected a folder"
    )
    one_line_error(
        steerlab("serve", "--vectors", str(work), "--max-batch", "0"), "serve", "--max-batch"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_starts_a_server(work: Path, tmp_path: Path) -> None:
    try:
        import steerlab.server  # noqa: F401
    except ImportError:
        pytest.skip("steerlab.server is not importable")
    vectors = tmp_path / "vectors"
    vectors.mkdir()
    (vectors / "joy.safetensors").write_bytes((work / "vec.safetensors").read_bytes())
    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as sink:
        p = subprocess.Popen(
            [str(SCRIPT), "serve", "--vectors", str(vectors), "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.2)
        assert body is not None, log.read_text()
        assert "data" in body
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    assert p.returncode in (0, 130)
