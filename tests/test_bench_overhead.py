"""bench/overhead.py: the controller it times (issue 12) is the one its report describes.

Its W5c / W6c pairs say "a gate that fires at every step" and "a gate of exactly 0"; these
tests check that on the default model, and that the table holds each case to its own
target (10% for the controller, 5% for the rest).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def ovh() -> Any:
    """bench/overhead.py as a module (its import sets RAYON_NUM_THREADS; undone here)."""
    saved = dict(os.environ)
    spec = importlib.util.spec_from_file_location("bench_overhead", BENCH / "overhead.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return mod


def test_steered_layers_are_the_middle_half(ovh: Any) -> None:
    assert ovh.ctrl_layers(30) == list(range(7, 22))  # 7..21
    assert ovh.ctrl_layers(8) == [2, 3, 4, 5]


def test_controllers_fire_and_stay_quiet(ovh: Any, model: Any) -> None:
    from steerlab import _core

    fires = ovh.make_controller(model, ovh.CTRL_GATE_BIAS["fires"], 64)
    quiet = ovh.make_controller(model, ovh.CTRL_GATE_BIAS["quiet"], 64)
    n = model.n_layers
    assert fires.read_layers == list(range(n - ovh.CTRL_READ, n))
    assert fires.layers == ovh.ctrl_layers(n)
    assert fires.hidden == 64
    states = np.random.default_rng(0).standard_normal((3, ovh.CTRL_READ * model.d_model))
    assert (fires.outputs(states.astype(np.float32))[:, 0] > 0.999).all()
    assert (quiet.outputs(states.astype(np.float32))[:, 0] == 0.0).all()
    # The same during generation, at every position that predicts a token; the quiet
    # controller leaves the greedy continuation exactly unsteered.
    ids = [model.encode("The capital of France is")]
    config = _core.GenConfig(max_new_tokens=4, ignore_eos=True)
    plain = model._core.generate(ids, None, config)
    out, gates, _ = model._core.generate_traced(ids, [[quiet]], config)
    assert out == plain
    assert gates == [[0.0] * 4]
    _, gates, _ = model._core.generate_traced(ids, [[fires]], config)
    assert gates is not None and min(gates[0]) > 0.999 and len(gates[0]) == 4


def test_table_holds_each_case_to_its_target(ovh: Any) -> None:
    case = {"median": 0.08, "min": 0.01, "max": 0.12}
    result = {"dtypes": {"auto": {"capture (W1)": case, "controller, fires (W5c)": case}}}
    lines = ovh.table(result)
    assert lines[2] == "| capture (W1) | auto | +8.0% | +1.0% - +12.0% | ≤ 5% | **no** |"
    assert lines[3] == "| controller, fires (W5c) | auto | +8.0% | +1.0% - +12.0% | ≤ 10% | yes |"
