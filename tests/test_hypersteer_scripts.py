"""scripts/train_hypersteer.py and bench/hypersteer_eval.py at smoke sizes: outputs,
the target cache, resume, the keyword filter, the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("steerlab._core")

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_train_script_writes_caches_and_resumes(tmp_path: Path, model: object) -> None:
    small = [
        "--instructions",
        "4",
        "--pairs-per-instruction",
        "1",
        "--n-blocks",
        "1",
        "--max-target-tokens",
        "6",
        "--validation",
        "2",
        "--checkpoint-every",
        "1",
        "--batch-size",
        "2",
    ]
    out = run("scripts/train_hypersteer.py", "--out", str(tmp_path), *small)
    assert "done in" in out
    for name in ("hypersteer.safetensors", "history.json", "loss.png", "targets.json"):
        assert (tmp_path / name).is_file(), name
    rec = json.loads((tmp_path / "history.json").read_text())
    assert rec["training"]["steps_done"] == 2 and len(rec["history"]) == 2
    assert rec["command"].startswith("python scripts/train_hypersteer.py --model smollm2")
    # Resume a finished run: no more steps, the same history; the targets are reused.
    targets = (tmp_path / "targets.json").read_text()
    run("scripts/train_hypersteer.py", "--out", str(tmp_path), *small, "--resume")
    again = json.loads((tmp_path / "history.json").read_text())
    assert again["history"] == rec["history"]
    assert (tmp_path / "targets.json").read_text() == targets
    assert again["training"]["seconds_targets"] < 30
    # The keyword filter keeps only pairs whose target shows a keyword (or unreliable).
    kf = tmp_path / "kf"
    out = run(
        "scripts/train_hypersteer.py",
        "--out",
        str(kf),
        "--instructions",
        "12",
        "--pairs-per-instruction",
        "2",
        "--n-blocks",
        "1",
        "--max-target-tokens",
        "24",
        "--validation",
        "0",
        "--keyword-filter",
    )
    rec = json.loads((kf / "history.json").read_text())
    counts = rec["keyword_filter"]
    assert counts["pairs"] == 24
    kept = counts["greedy_hit"] + counts["sampled_hit"] + counts["unreliable_kept"]
    assert kept + counts["dropped"] == 24
    assert 0 <= counts["greedy_hit_other_instruction"] <= 24 - counts["unreliable_kept"]
    assert rec["training"]["n_examples"] == kept
    assert "--keyword-filter" in rec["command"] and "True" not in rec["command"]


def test_eval_script_small_run_and_table(tmp_path: Path, model: object) -> None:
    ck = tmp_path / "hs"
    run(
        "scripts/train_hypersteer.py",
        "--out",
        str(ck),
        "--instructions",
        "2",
        "--pairs-per-instruction",
        "1",
        "--n-blocks",
        "1",
        "--max-target-tokens",
        "4",
        "--validation",
        "0",
    )
    res = tmp_path / "eval.json"
    out = run(
        "bench/hypersteer_eval.py",
        "--hypersteer",
        str(ck / "hypersteer.safetensors"),
        "--concepts",
        "1",
        "--prompts",
        "2",
        "--max-new-tokens",
        "4",
        "--factors",
        "1",
        "--methods",
        "none",
        "hypersteer",
        "--out",
        str(res),
    )
    assert "| hypersteer | held-out |" in out
    saved = json.loads(res.read_text())
    assert set(saved["groups"]) == {"held_in", "held_out"}
    spec = saved["hypersteer_specificity"]
    assert -1.0 <= spec["mean_pairwise_cosine"] <= 1.0 and spec["mean_norm"] >= 0.0
    table = run("bench/hypersteer_eval.py", "--table", str(res))
    assert table.count("\n") == 2 + 4  # header, rule, 2 methods x 2 groups
