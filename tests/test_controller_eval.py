"""bench/controller_eval.py: CAST's threshold search, the table, and one tiny end-to-end run
of the command line (the full-size figures are in bench/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import steerlab as sl

BENCH = Path(__file__).parent.parent / "bench"


@pytest.fixture(scope="module")
def ce() -> Any:
    spec = importlib.util.spec_from_file_location("controller_eval", BENCH / "controller_eval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["controller_eval"] = module
    spec.loader.exec_module(module)
    return module


def test_best_threshold_separable(ce: Any) -> None:
    t, bal = ce.best_threshold(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0]))
    assert (t, bal) == (2.5, 1.0)


def test_best_threshold_overlap(ce: Any) -> None:
    # pos 1, 5, 6 against neg 0, 2, 3: above 4 fires on 2 of 3 harmful, 0 of 3 benign
    # (balanced 5/6); above 0.5 fires on every harmful and 2 of 3 benign (4/6).
    t, bal = ce.best_threshold(np.array([1.0, 5.0, 6.0]), np.array([0.0, 2.0, 3.0]))
    assert t == 4.0
    assert bal == pytest.approx(5 / 6)


def test_best_threshold_reversed_classes(ce: Any) -> None:
    # harmful below benign: no threshold "fire when above" beats chance
    _, bal = ce.best_threshold(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    assert bal == 0.5


def test_subset_is_seeded_and_ordered(ce: Any) -> None:
    items = list(range(50))
    a = ce.subset(items, 7, seed=3)
    assert a == ce.subset(items, 7, seed=3)
    assert a == sorted(a) and len(set(a)) == 7
    assert ce.subset(items, None, 0) == items and ce.subset(items, 99, 0) == items


def test_held_out_alarming_mask_follows_the_subset(ce: Any) -> None:
    req = sl.datasets.load_requests().split("held_out")
    data = ce.held_out(10, seed=0)
    alarming = set(req.alarming_benign)
    assert [b in alarming for b in data["benign"]] == data["alarming"].tolist()
    assert len(data["harmful"]) == len(data["benign"]) == 10


def _figures() -> dict[str, Any]:
    def row(refusal: float, kl: float, gate: dict[str, float]) -> dict[str, Any]:
        return {
            "refusal_harmful": refusal,
            "refusal_harmful_judge": 0.5,
            "false_refusal_benign": 0.25,
            "false_refusal_benign_judge": 0.0,
            "false_refusal_alarming": None,
            "kl_benign": kl,
            "kl_measured": True,
            "gate_harmful": gate,
            "gate_benign": gate,
        }

    return {
        "results": {
            "constant": row(0.1, 0.25, {"mean": 1.0, "p10": 1.0, "p90": 1.0}),
            "cast": row(0.2, 0.125, {"fired": 0.75}),
            "stage1@0.001": row(0.3, 0.0625, {"mean": 0.5, "p10": 0.25, "p90": 0.75}),
            "stage2*16": row(0.5, 0.5, {"mean": 0.5, "p10": 0.25, "p90": 0.75}),
        },
        "cast": {"layer": 12, "threshold": -3.5, "val_balanced_accuracy": 0.9},
    }


def test_table(ce: Any) -> None:
    lines = ce.table(_figures()).splitlines()
    assert len(lines) == 6
    assert lines[2] == (
        "| constant steering | 10% / 50% | 25% / 0% | - | 0.2500 | 1.00 [1.00, 1.00] | "
        "1.00 [1.00, 1.00] |"
    )
    assert lines[3].startswith("| CAST (projection threshold), layer 12, t = -3.50 | 20% / 50%")
    assert lines[3].endswith("| 0.1250 | fired 75% | fired 75% |")
    assert lines[4].startswith("| controller, stage 1 (lr 0.001) | 30% / 50% |")
    assert lines[4].endswith("| 0.0625 | 0.50 [0.25, 0.75] | 0.50 [0.25, 0.75] |")
    assert lines[5].startswith("| controller, stage 2, alpha 16 | 50% / 50% |")


def test_command_line_run_and_table(
    ce: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], model: sl.Model
) -> None:
    """A tiny run through `main` writes JSON whose `--table` reprint is the same table."""
    out = tmp_path / "ce.json"
    ce.main(
        [
            "--n", "2", "--n-train", "4", "--max-new-tokens", "4", "--epochs", "1",
            "--hidden", "8", "--stage2-steps", "1", "--judge-openings", "1",
            "--configs", "none", "constant", "cast", "stage1", "stage2",
            "--no-progress", "--out", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    figs = json.loads(out.read_text())
    assert list(figs["results"]) == ["none", "constant", "cast", "stage1", "stage2"]
    assert figs["meta"]["n_harmful"] == figs["meta"]["n_benign"] == 2
    assert figs["results"]["none"]["kl_benign"] == 0.0
    assert figs["results"]["constant"]["kl_benign"] > 0.0
    for name in ("stage1", "stage2"):
        g = figs["results"][name]["gates"]
        assert len(g["harmful"]) == len(g["benign"]) == 2
        assert all(0.0 <= x <= 1.0 for x in g["harmful"] + g["benign"])
    assert "harmful_texts" not in figs["results"]["constant"]["per_prompt"]
    table = ce.table(figs)
    assert table in printed
    ce.main(["--table", str(out)])
    assert table in capsys.readouterr().out
