"""The steering controller from Python (issue 12): the contract, training, the gate in
generation (quiet = unsteered, per-row, recomputed each step), files and refusals."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import steerlab as sl
from steerlab import _chat

CONTRACT = {
    "direction": None,
    "layers": None,
    "read_layers": 4,
    "hidden": 1024,
    "strength": 4.0,
    "epochs": 10,
    "lr": 5e-5,
    "batch_size": 8,
    "stage2_steps": 0,
    "seed": 0,
}


@pytest.fixture(scope="module")
def requests() -> Any:
    return sl.datasets.load_requests()


@pytest.fixture(scope="module")
def ctrl(model: Any, requests: Any) -> sl.SteeringController:
    train = requests.split("train")
    return sl.SteeringController.fit(
        model, train.harmful[:40], train.benign[:40], hidden=64, epochs=5, lr=1e-3, progress=False
    )


def test_fit_signature_is_the_contract() -> None:
    params = inspect.signature(sl.SteeringController.fit).parameters
    assert list(params)[:4] == ["model", "harmful", "benign", "direction"]
    for name, default in CONTRACT.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default == default, name


def test_the_gate_separates_held_out_requests(
    model: Any, ctrl: sl.SteeringController, requests: Any
) -> None:
    held = requests.split("held_out")
    gh = ctrl.gate(model, held.harmful[:20])
    gb = ctrl.gate(model, held.benign[:20])
    assert gh.shape == (20,) and gh.dtype == np.float32
    assert gh.min() >= 0.0 and gh.max() <= 1.0
    assert gh.mean() > 0.6 > 0.4 > gb.mean(), (gh.mean(), gb.mean())
    stage1 = [h for h in ctrl.history if h["stage"] == 1.0]
    assert len(stage1) == 5
    assert stage1[-1]["val_acc"] > 0.8
    assert ctrl.training["best_epoch"] == int(np.argmin([h["val_bce"] for h in stage1]))
    assert ctrl.layers == sl.controller.default_layers(model.n_layers)
    assert ctrl.read_layers == list(range(model.n_layers - 4, model.n_layers))
    w = ctrl.weights(model, held.harmful[:3])
    assert w.shape == (3, len(ctrl.layers))
    assert ctrl.n_params == (4 * model.d_model + 1) * 64 + (64 + 1) * (1 + len(ctrl.layers))


def _quiet(ctrl: sl.SteeringController) -> sl.SteeringController:
    params = dict(ctrl.params)
    b2 = params["b2"].copy()
    b2[0] = -1e4
    params["b2"] = b2
    return sl.SteeringController(
        params,
        read_layers=ctrl.read_layers,
        layers=ctrl.layers,
        hidden=ctrl.hidden,
        strength=ctrl.strength,
        d_model=ctrl.params["directions"].shape[1],
        n_layers=ctrl._n_layers,
        fingerprint=ctrl._fingerprint,
    )


def test_gate_zero_gives_exactly_the_unsteered_tokens(
    model: Any, ctrl: sl.SteeringController, requests: Any
) -> None:
    held = requests.split("held_out")
    prompts = _chat.request_prompts(model._core, held.harmful[:3] + held.benign[:3])
    base = model.generate(prompts, max_new_tokens=12, return_ids=True)
    for quiet in (_quiet(ctrl), ctrl.with_strength(0.0)):
        assert model.generate(prompts, steering=quiet, max_new_tokens=12, return_ids=True) == base
        kl = sl.evaluate.continuation_kl(model, prompts, steering=quiet, max_new_tokens=6)
        assert np.all(kl == 0.0)
        conts = [model.decode(b[:4]) for b in base]
        lp = model.continuation_logprobs(prompts, conts, steering=quiet)
        lp0 = model.continuation_logprobs(prompts, conts)
        assert all(np.array_equal(a, b) for a, b in zip(lp, lp0, strict=True))
    traces = _quiet(ctrl).trace(model, prompts[:2], max_new_tokens=5)
    assert all(np.all(t.gates == 0.0) for t in traces)
    # The firing controller changes the harmful answers (its gate is open there).
    fired = model.generate(prompts[:3], steering=ctrl, max_new_tokens=12, return_ids=True)
    assert fired != base[:3]


def test_per_row_controllers_equal_each_row_alone(
    model: Any, ctrl: sl.SteeringController, requests: Any
) -> None:
    held = requests.split("held_out")
    prompts = _chat.request_prompts(model._core, [held.harmful[0], held.benign[0], held.harmful[1]])
    rows = [ctrl, None, ctrl.with_strength(2.0)]
    batch = model.generate(prompts, steering=rows, max_new_tokens=10, return_ids=True)
    for p, st, got in zip(prompts, rows, batch, strict=True):
        assert model.generate([p], steering=st, max_new_tokens=10, return_ids=True)[0] == got
    with model.steering(ctrl):
        inside = model.generate(prompts[:1], max_new_tokens=10, return_ids=True)
    assert inside[0] == batch[0]


def test_the_gate_turns_on_mid_generation(
    model: Any, ctrl: sl.SteeringController, requests: Any
) -> None:
    held = requests.split("held_out")
    gh = ctrl.gate(model, held.harmful[:20])
    gb = ctrl.gate(model, held.benign[:20])
    harmful = held.harmful[int(np.argmax(gh))]
    benign = held.benign[int(np.argmin(gb))]
    # A benign request whose continuation is forced into a harmful second turn.
    turn = f"Sure.<|im_end|>\n<|im_start|>user\n{harmful}<|im_end|>\n<|im_start|>assistant\n"
    t = ctrl.trace(model, [benign], continuations=[turn], max_new_tokens=3)[0]
    n_forced = len(model.encode(turn, add_special_tokens=False))
    assert t.gates.shape == (len(t.ids),) and len(t.ids) == n_forced + 3
    assert t.gates[0] < 0.1, t.gates[:3]
    assert t.gates[: n_forced // 2].max() < 0.5
    # Once the harmful turn has been read, a later step's gate fires.
    assert t.gates[n_forced:].max() > 0.5, t.gates
    # The first gate is the gate on the prompt.
    assert abs(t.gates[0] - ctrl.gate(model, [benign])[0]) < 1e-5


def test_save_load_and_refusals(
    model: Any, ctrl: sl.SteeringController, requests: Any, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    path = tmp_path / "guard.safetensors"
    ctrl.save(path)
    back = sl.SteeringController.load(path, model)
    held = requests.split("held_out")
    np.testing.assert_array_equal(
        back.gate(model, held.harmful[:3]), ctrl.gate(model, held.harmful[:3])
    )
    assert back.layers == ctrl.layers and back.strength == ctrl.strength
    assert [h["loss"] for h in back.history] == [h["loss"] for h in ctrl.history]
    tiny = sl.Model.load(tiny_llama_dir, dtype="f32")
    with pytest.raises((sl.InvalidArgumentError, sl.ShapeError), match="model"):
        sl.SteeringController.load(path, tiny)
    with pytest.raises(sl.SteerlabError, match=r"another model|d_model"):
        tiny.generate(["hello"], steering=ctrl, max_new_tokens=2)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(sl.SteerlabError):
        sl.SteeringController.load(bad, model)
    # Another kind of learned module is refused by name.
    train = sl.datasets.load_task("country_capital", "train")
    sc = sl.ActivationScalars.fit(
        model,
        train.prompts[:4],
        train.targets[:4],
        train.foils[:4],
        steps=1,
        layers=[0],
        progress=False,
    )
    other = tmp_path / "scalars.safetensors"
    sc.save(other)
    with pytest.raises(sl.ModelFormatError, match="not a steering controller"):
        sl.SteeringController.load(other, model)
    again = pickle.loads(pickle.dumps(ctrl))
    np.testing.assert_array_equal(again.params["w1"], ctrl.params["w1"])


def test_prompt_only_calls_refuse_a_controller(model: Any, ctrl: sl.SteeringController) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="acts during generation"):
        model.logits(["hello"], steering=ctrl)
    with pytest.raises(sl.InvalidArgumentError, match="acts during generation"):
        model.capture(["hello"], layers=[0], steering=ctrl)


def test_fit_refuses_bad_arguments(model: Any, requests: Any) -> None:
    h, b = requests.harmful[:6], requests.benign[:6]
    fit = sl.SteeringController.fit
    with pytest.raises(sl.InvalidArgumentError, match="at least 2"):
        fit(model, h[:1], b, epochs=1, hidden=4, progress=False)
    with pytest.raises(sl.InvalidArgumentError, match="repeat a layer"):
        fit(model, h, b, layers=[3, 3], epochs=1, hidden=4, progress=False)
    with pytest.raises(sl.OutOfRangeError):
        fit(model, h, b, layers=[99], epochs=1, hidden=4, progress=False)
    with pytest.raises(sl.InvalidArgumentError, match="strength"):
        fit(model, h, b, strength=float("nan"), epochs=1, hidden=4, progress=False)
    with pytest.raises(sl.InvalidArgumentError, match="no vector for steered layer"):
        fit(
            model,
            h,
            b,
            direction={5: np.ones(model.d_model)},
            layers=[5, 6],
            epochs=1,
            hidden=4,
            progress=False,
        )
    with pytest.raises(sl.InvalidArgumentError, match="shape"):
        fit(model, h, b, direction={5: np.ones(7)}, epochs=1, hidden=4, progress=False)
    with pytest.raises(sl.InvalidArgumentError, match="validation"):
        fit(model, h, b, validation=1.5, epochs=1, hidden=4, progress=False)
    with pytest.raises(sl.InvalidTypeError):
        fit(model, [1, 2], b, epochs=1, hidden=4, progress=False)


def test_stage_two_and_a_given_direction(model: Any, requests: Any) -> None:
    train = requests.split("train")
    d = model.d_model
    rng = np.random.default_rng(0)
    direction = {layer: rng.standard_normal(d) for layer in (8, 10)}
    c = sl.SteeringController.fit(
        model,
        train.harmful[:8],
        train.benign[:8],
        direction=direction,
        read_layers=[-1, -2],
        hidden=16,
        epochs=2,
        lr=1e-3,
        stage2_steps=3,
        stage2_tokens=4,
        progress=False,
    )
    assert c.layers == [8, 10] and c.read_layers == [model.n_layers - 1, model.n_layers - 2]
    dirs = c.params["directions"]
    np.testing.assert_allclose(dirs[0], direction[8] / np.linalg.norm(direction[8]), atol=1e-6)
    s2 = [h for h in c.history if h["stage"] == 2.0]
    assert len(s2) == 3 and all({"ce", "kl", "gate_harmful", "val_loss"} <= set(h) for h in s2)
    assert c.training["best_stage2_val_loss"] <= min(h["val_loss"] for h in s2) + 1e-9
    import matplotlib

    matplotlib.use("Agg")
    fig = c.plot()
    assert len(fig.axes) >= 2
