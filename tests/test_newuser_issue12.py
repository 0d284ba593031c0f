"""Issue #12 (the weighted steering controller) used as a new user would, from the README's
"Steering controller" section and the public docstrings only.

What works is pinned so it stays right; each defect found was first written as a strict
xfail asserting the behaviour the charter asks for (a `SteerlabError` naming what was
wrong, nothing silently reshaped or degenerate passed on) and is a plain test since its
fix. Controllers are
tiny (a few requests, a narrow MLP, one or two epochs) so the file runs in well under a
minute on 2 cores.
"""

from __future__ import annotations

import inspect
import json
import math
import multiprocessing
import os
import pickle
import signal
import struct
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")

# Small settings for the README's example (2 cores): the contract defaults train on the
# full split (hidden=1024, 10 epochs) in about 100 s, too slow for the default run.
SMALL: dict[str, Any] = {"hidden": 16, "epochs": 2, "lr": 1e-3, "progress": False}


@pytest.fixture(scope="module")
def req() -> Any:
    return sl.datasets.load_requests()


@pytest.fixture(scope="module")
def parts(req: Any) -> Any:
    return req.split()


@pytest.fixture(scope="module")
def ctrl(model: Any, parts: Any) -> Any:
    train, _, _ = parts
    return sl.SteeringController.fit(model, train.harmful[:8], train.benign[:8], **SMALL)


@pytest.fixture(scope="module")
def rendered(model: Any, parts: Any) -> list[str]:
    """Two held-out harmful requests rendered with the chat template, as the README does."""
    _, _, test = parts
    return [model.chat_prompt([{"role": "user", "content": q}]) for q in test.harmful[:2]]


@pytest.fixture(scope="module")
def loud(ctrl: Any) -> Any:
    """The same controller at a strength whose effect on greedy text is visible."""
    return ctrl.with_strength(30.0)


def _rewrite_meta(src: Path, dst: Path, edit: Any) -> Path:
    """Copy a saved module, editing the JSON in its 'steerlab' metadata entry."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["steerlab"])
    edit(meta)
    header["__metadata__"]["steerlab"] = json.dumps(meta)
    body = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    return dst


# ------------------------------------------------------------------ the README's contract


def test_requests_contract(req: Any, parts: Any) -> None:
    """`load_requests()`: 314 harmful, 331 benign (88 alarming-looking); `split()` gives
    three disjoint parts covering everything."""
    assert (len(req.harmful), len(req.benign)) == (314, 331)
    assert len(req.alarming_benign) == 88 == int(np.sum(req.alarming_mask))
    train, val, test = parts
    for attr in ("harmful", "benign"):
        sets = [set(getattr(p, attr)) for p in (train, val, test)]
        assert sum(map(len, sets)) == len(getattr(req, attr))
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_fit_signature_is_the_contract() -> None:
    params = inspect.signature(sl.SteeringController.fit).parameters
    want = {
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
    assert list(params)[:3] == ["model", "harmful", "benign"]
    for name, default in want.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default == default, name
    rr = inspect.signature(sl.evaluate.refusal_rate).parameters
    assert rr["steering"].default is None and rr["max_new_tokens"].default == 48


def test_readme_example(
    model: Any, ctrl: Any, parts: Any, rendered: list[str], tmp_path: Path
) -> None:
    """Every line of the README's example runs and returns what it says."""
    _, _, test = parts
    assert ctrl.read_layers == [26, 27, 28, 29] and ctrl.hidden == 16 and ctrl.strength == 4.0
    out = model.generate(rendered, steering=ctrl, max_new_tokens=8)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(t, str) for t in out)
    g = ctrl.gate(model, test.benign[:3])
    assert g.dtype == np.float32 and g.shape == (3,) and ((g >= 0) & (g <= 1)).all()
    traces = ctrl.trace(model, rendered, max_new_tokens=4)
    assert len(traces) == 2
    for tr in traces:
        assert tr.gates.dtype == np.float32 and len(tr.gates) == len(tr.ids) <= 4
        assert ((tr.gates >= 0) & (tr.gates <= 1)).all()
    rep = sl.evaluate.refusal_rate(
        model, test.harmful[:2], steering=ctrl, max_new_tokens=4, judge_openings=1
    )
    assert 0.0 <= rep.rate <= 1.0 and len(rep.texts) == 2
    kl = sl.evaluate.continuation_kl(model, test.benign[:2], steering=ctrl, max_new_tokens=3)
    assert kl.dtype == np.float64 and kl.shape == (2,) and (kl >= 0).all()
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    fig = ctrl.plot()
    assert type(fig).__name__ == "Figure"
    path = tmp_path / "guard.safetensors"
    ctrl.save(path)
    back = sl.SteeringController.load(path, model)
    assert np.array_equal(back.gate(model, test.benign[:3]), g)
    assert back.history == ctrl.history and back.layers == ctrl.layers


def test_history_records_every_epoch(ctrl: Any) -> None:
    assert [h["epoch"] for h in ctrl.history] == [0.0, 1.0]
    for h in ctrl.history:
        assert h["stage"] == 1.0
        assert all(math.isfinite(h[k]) for k in ("loss", "bce", "reg", "val_bce", "val_acc"))


def test_plain_and_rendered_requests_gate_alike(
    model: Any, ctrl: Any, parts: Any, rendered: list[str]
) -> None:
    """'fit, gate and the evaluations accept plain requests or prompts already rendered'."""
    _, _, test = parts
    assert np.array_equal(ctrl.gate(model, test.harmful[:2]), ctrl.gate(model, rendered))


def test_with_strength_zero_is_exactly_unsteered(
    model: Any, ctrl: Any, rendered: list[str]
) -> None:
    quiet = ctrl.with_strength(0.0)
    assert model.generate(rendered, steering=quiet, max_new_tokens=6) == model.generate(
        rendered, max_new_tokens=6
    )
    conts = [" Sure, here", " I cannot"]
    for a, b in zip(
        model.continuation_logprobs(rendered, conts),
        model.continuation_logprobs(rendered, conts, steering=quiet),
        strict=True,
    ):
        assert np.array_equal(a, b)
    assert np.array_equal(
        sl.evaluate.continuation_kl(model, rendered, steering=quiet, max_new_tokens=3), [0.0, 0.0]
    )


def test_every_generation_door_agrees(model: Any, loud: Any, rendered: list[str]) -> None:
    """generate, the with-block, a per-row list, generate_stream and generate_monitored
    give the same text for a controller."""
    want = model.generate(rendered, steering=loud, max_new_tokens=6)
    assert want != model.generate(rendered, max_new_tokens=6)  # the patch does act
    with model.steering(loud):
        assert model.generate(rendered, max_new_tokens=6) == want
    rows = model.generate(rendered, steering=[loud, None], max_new_tokens=6)
    assert rows[0] == want[0] and rows[1] == model.generate(rendered[1:], max_new_tokens=6)[0]
    vec = sl.Steering.add(10, np.ones(model.d_model, np.float32))
    mixed = model.generate(rendered, steering=[loud, vec], max_new_tokens=6)
    assert mixed[0] == want[0]
    assert mixed[1] == model.generate(rendered[1:], steering=vec, max_new_tokens=6)[0]
    assert "".join(model.generate_stream(rendered[0], steering=loud, max_new_tokens=6)) == want[0]
    mon = model.generate_monitored(rendered, layers=[5], steering=loud, max_new_tokens=6)
    assert [m.text for m in mon] == want


def test_prompt_only_calls_refuse_a_controller(model: Any, ctrl: Any, rendered: list[str]) -> None:
    msg = r"steering controller acts during generation"
    calls = [
        lambda s: model.capture(rendered, layers=[5], steering=s),
        lambda s: model.logits(rendered, steering=s),
        lambda s: model.token_logprobs(rendered, steering=s),
    ]
    for call in calls:
        for s in (ctrl, [ctrl, None]):
            with pytest.raises(sl.InvalidArgumentError, match=msg):
                call(s)
        with model.steering(ctrl), pytest.raises(sl.InvalidArgumentError, match=msg):
            call(None)


def test_pickle_round_trip(model: Any, ctrl: Any, rendered: list[str]) -> None:
    back = pickle.loads(pickle.dumps(ctrl))
    assert np.array_equal(back.gate(model, rendered), ctrl.gate(model, rendered))
    assert back.history == ctrl.history and back.training == ctrl.training


def test_params_are_read_only(ctrl: Any) -> None:
    with pytest.raises(ValueError, match="read-only"):
        ctrl.params["w1"][0, 0] = 5.0


# ------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"hidden": 0}, "InvalidArgumentError", r"hidden must be >= 1, got 0"),
        ({"hidden": "8"}, "InvalidTypeError", r"hidden must be an int, got str"),
        ({"hidden": True}, "InvalidTypeError", r"hidden must be an int, got bool"),
        ({"hidden": 2**70}, "InvalidArgumentError", r"hidden must be <= 1048576"),
        ({"epochs": 0}, "InvalidArgumentError", r"epochs must be >= 1, got 0"),
        ({"epochs": 1.0}, "InvalidTypeError", r"epochs must be an int, got float"),
        ({"lr": 0}, "InvalidArgumentError", r"lr must be a finite number > 0"),
        ({"lr": -1.0}, "InvalidArgumentError", r"lr must be a finite number > 0"),
        ({"lr": math.nan}, "InvalidArgumentError", r"lr must be a finite number > 0.*nan"),
        ({"lr": math.inf}, "InvalidArgumentError", r"lr must be a finite number > 0.*inf"),
        ({"lr": "1e-3"}, "InvalidTypeError", r"lr must be a number, got str"),
        ({"strength": math.nan}, "InvalidArgumentError", r"strength must be a finite number"),
        ({"strength": math.inf}, "InvalidArgumentError", r"strength must be a finite number"),
        ({"strength": "4"}, "InvalidTypeError", r"strength must be a number"),
        ({"batch_size": 0}, "InvalidArgumentError", r"batch_size must be >= 1"),
        ({"stage2_steps": -1}, "InvalidArgumentError", r"stage2_steps must be >= 0"),
        ({"stage2_steps": 1.5}, "InvalidTypeError", r"stage2_steps must be an int"),
        ({"seed": -1}, "InvalidArgumentError", r"seed must be >= 0"),
        ({"seed": 2**70}, "InvalidArgumentError", r"seed must be <= 18446744073709551615"),
        ({"read_layers": 0}, "InvalidArgumentError", r"read_layers must be >= 1, got 0"),
        ({"read_layers": 31}, "InvalidArgumentError", r"read_layers must be <= 30, got 31"),
        ({"read_layers": []}, "InvalidArgumentError", r"read_layers is empty"),
        ({"read_layers": [5, 5]}, "InvalidArgumentError", r"read_layers \[5, 5\] repeat a layer"),
        ({"read_layers": [30]}, "OutOfRangeError", r"layer 30 is out of range .* -30\.\.29"),
        ({"read_layers": "4"}, "InvalidTypeError", r"read_layers must be an int, a list"),
        ({"layers": []}, "InvalidArgumentError", r"layers is empty"),
        ({"layers": [-31]}, "OutOfRangeError", r"layer -31 is out of range"),
        ({"layers": [5, -25]}, "InvalidArgumentError", r"layers \[5, -25\] repeat a layer"),
        ({"layers": [5.0]}, "InvalidTypeError", r"a layer of layers must be an int"),
        ({"validation": 0.0}, "InvalidArgumentError", r"validation must be"),
        ({"validation": 1.0}, "InvalidArgumentError", r"validation must be in \(0, 1\)"),
        ({"validation": ([], [])}, "InvalidArgumentError", r"validation harmful is empty"),
        ({"weight_reg": math.nan}, "InvalidArgumentError", r"weight_reg must be a finite"),
        ({"kl_weight": math.inf}, "InvalidArgumentError", r"kl_weight must be a finite"),
        ({"stage2_tokens": 0}, "InvalidArgumentError", r"stage2_tokens must be >= 1"),
        ({"chat": "yes"}, "InvalidArgumentError", r"chat must be True, False or 'auto'"),
        ({"progress": "x"}, "InvalidTypeError", r"progress must be True, False or None"),
    ],
)
def test_fit_rejects_bad_settings(
    model: Any, req: Any, kw: dict[str, Any], exc: str, match: str
) -> None:
    args = {**SMALL, **kw}
    with pytest.raises(getattr(sl, exc), match=match):
        sl.SteeringController.fit(model, req.harmful[:4], req.benign[:4], **args)


@pytest.mark.parametrize(
    ("direction", "exc", "match"),
    [
        (
            {5: np.ones(10, np.float32)},
            "InvalidArgumentError",
            r"layer 5 has shape \(10,\); expected \(576,\)",
        ),
        (
            {5: np.zeros(576, np.float32)},
            "InvalidArgumentError",
            r"layer 5 has norm 0\.0; expected a finite, non-zero",
        ),
        ({5: np.full(576, np.nan, np.float32)}, "InvalidArgumentError", r"layer 5 has norm nan"),
        ({5: np.full(576, np.inf, np.float32)}, "InvalidArgumentError", r"layer 5 has norm inf"),
        ({"5": np.ones(576, np.float32)}, "InvalidTypeError", r"a direction layer must be an int"),
        (
            "refusal",
            "InvalidTypeError",
            r"direction must be None, a SteeringVector or a \{layer: vector\}",
        ),
        (np.ones(576, np.float32), "InvalidTypeError", r"direction must be None, a SteeringVector"),
    ],
)
def test_fit_rejects_bad_directions(
    model: Any, req: Any, direction: Any, exc: str, match: str
) -> None:
    with pytest.raises(getattr(sl, exc), match=match):
        sl.SteeringController.fit(
            model, req.harmful[:4], req.benign[:4], direction=direction, layers=[5], **SMALL
        )


def test_fit_rejects_a_direction_missing_a_steered_layer(model: Any, req: Any) -> None:
    with pytest.raises(sl.InvalidArgumentError, match=r"no vector for steered layer 6"):
        sl.SteeringController.fit(
            model,
            req.harmful[:4],
            req.benign[:4],
            direction={5: np.ones(576, np.float32)},
            layers=[5, 6],
            **SMALL,
        )


def test_fit_names_the_shape_of_a_2d_direction(model: Any, req: Any) -> None:
    with pytest.raises(sl.InvalidArgumentError, match=r"shape \(2, 576\)"):
        sl.SteeringController.fit(
            model,
            req.harmful[:4],
            req.benign[:4],
            direction={5: np.ones((2, 576), np.float32)},
            layers=[5],
            **SMALL,
        )


@pytest.mark.parametrize(
    ("harmful", "exc", "match"),
    [
        ([], "InvalidArgumentError", r"harmful is empty"),
        (
            ["one request"],
            "InvalidArgumentError",
            r"harmful has 1 request\(s\); expected at least 2",
        ),
        ([1, 2], "InvalidTypeError", r"harmful\[0\] must be a str, got int"),
        ([b"a", b"b"], "InvalidTypeError", r"harmful\[0\] must be a str, got bytes"),
    ],
)
def test_fit_rejects_bad_requests(model: Any, req: Any, harmful: Any, exc: str, match: str) -> None:
    with pytest.raises(getattr(sl, exc), match=match):
        sl.SteeringController.fit(model, harmful, req.benign[:4], **SMALL)
    with pytest.raises(sl.InvalidTypeError, match=r"model must be a steerlab\.Model, got str"):
        sl.SteeringController.fit("model", req.harmful[:4], req.benign[:4], **SMALL)


def test_fit_does_not_return_a_diverged_controller(model: Any, req: Any) -> None:
    """With 4 + 4 requests and lr=1e30 the training loss stays finite but the validation
    BCE is NaN: fit raises (as with 6 + 6, where the training loss itself is NaN) instead
    of returning a degenerate controller."""
    with pytest.raises(sl.InvalidArgumentError, match=r"stage 1 diverged .* NaN"):
        sl.SteeringController.fit(
            model, req.harmful[:4], req.benign[:4], hidden=8, epochs=1, lr=1e30, progress=False
        )


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        ("gate_model", "InvalidTypeError", r"model must be a steerlab\.Model, got str"),
        ("gate_empty", "InvalidArgumentError", r"prompts is empty"),
        ("gate_none", "InvalidTypeError", r"prompts must be a str or a list of str, got NoneType"),
        ("gate_int", "InvalidTypeError", r"prompts\[0\] must be a str, got int"),
        ("gate_batch", "InvalidArgumentError", r"batch_size must be >= 1, got 0"),
        ("gate_long", "ContextLengthError", r"the model's context is 8192 tokens"),
        ("trace_empty", "InvalidArgumentError", r"prompts is empty"),
        ("trace_zero", "InvalidArgumentError", r"max_new_tokens must be >= 1, got 0"),
        ("trace_float", "InvalidTypeError", r"max_new_tokens must be an int, got float"),
        ("trace_conts", "InvalidArgumentError", r"1 continuations for 2 prompts"),
        ("refusal_empty", "InvalidArgumentError", r"prompts is empty"),
        ("refusal_zero", "InvalidArgumentError", r"max_new_tokens must be >= 1, got 0"),
        ("refusal_steering", "InvalidTypeError", r"steering must be None, a steerlab\.Steering"),
        (
            "refusal_rows",
            "InvalidArgumentError",
            r"the steering list has 1 entries but there are 2",
        ),
        ("refusal_judge", "InvalidArgumentError", r"judge_openings must be between 1 and 32"),
        ("kl_empty", "InvalidArgumentError", r"prompts is empty"),
        ("kl_nan", "InvalidTypeError", r"max_new_tokens must be an int, got float nan"),
        ("kl_model", "InvalidTypeError", r"model must be a steerlab\.Model, got str"),
        ("clp_count", "InvalidArgumentError", r"1 continuations for 2 prompts"),
        ("clp_empty", "InvalidArgumentError", r"continuation 0 \(''\) encodes to no token"),
        ("clp_none", "InvalidTypeError", r"continuations must be a str or a list of str"),
        ("clp_rows", "InvalidArgumentError", r"the steering list has 1 entries but there are 2"),
        ("strength_nan", "InvalidArgumentError", r"strength must be a finite number, got nan"),
        ("strength_str", "InvalidTypeError", r"strength must be a number, got str"),
        ("strength_huge", "InvalidArgumentError", r"too large .*expected a smaller strength"),
    ],
)
def test_calls_with_a_controller_reject_bad_inputs(
    model: Any, ctrl: Any, rendered: list[str], call: str, exc: str, match: str
) -> None:
    ev = sl.evaluate
    calls = {
        "gate_model": lambda: ctrl.gate("m", rendered),
        "gate_empty": lambda: ctrl.gate(model, []),
        "gate_none": lambda: ctrl.gate(model, None),
        "gate_int": lambda: ctrl.gate(model, [1]),
        "gate_batch": lambda: ctrl.gate(model, rendered, batch_size=0),
        "gate_long": lambda: ctrl.gate(model, ["word " * 9000]),
        "trace_empty": lambda: ctrl.trace(model, []),
        "trace_zero": lambda: ctrl.trace(model, rendered, max_new_tokens=0),
        "trace_float": lambda: ctrl.trace(model, rendered, max_new_tokens=2.5),
        "trace_conts": lambda: ctrl.trace(model, rendered, continuations=["a"], max_new_tokens=1),
        "refusal_empty": lambda: ev.refusal_rate(model, [], steering=ctrl),
        "refusal_zero": lambda: ev.refusal_rate(model, rendered, steering=ctrl, max_new_tokens=0),
        "refusal_steering": lambda: ev.refusal_rate(
            model, rendered, steering="x", max_new_tokens=1
        ),
        "refusal_rows": lambda: ev.refusal_rate(model, rendered, steering=[ctrl], max_new_tokens=1),
        "refusal_judge": lambda: ev.refusal_rate(
            model, rendered, steering=ctrl, max_new_tokens=1, judge_openings=0
        ),
        "kl_empty": lambda: ev.continuation_kl(model, [], steering=ctrl),
        "kl_nan": lambda: ev.continuation_kl(
            model, rendered, steering=ctrl, max_new_tokens=math.nan
        ),
        "kl_model": lambda: ev.continuation_kl("m", rendered, steering=ctrl),
        "clp_count": lambda: model.continuation_logprobs(rendered, ["a"], steering=ctrl),
        "clp_empty": lambda: model.continuation_logprobs(rendered, ["", "a"], steering=ctrl),
        "clp_none": lambda: model.continuation_logprobs(rendered, None, steering=ctrl),
        "clp_rows": lambda: model.continuation_logprobs(rendered, ["a", "b"], steering=[ctrl]),
        "strength_nan": lambda: ctrl.with_strength(math.nan),
        "strength_str": lambda: ctrl.with_strength("2"),
        "strength_huge": lambda: model.generate(
            rendered[:1], steering=ctrl.with_strength(1e30), max_new_tokens=1
        ),
    }
    with pytest.raises(getattr(sl, exc), match=match):
        calls[call]()


# ------------------------------------------------------------------------ files, models


def test_load_refuses_other_models(
    model: Any, ctrl: Any, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    path = tmp_path / "g.safetensors"
    ctrl.save(path)
    tiny = sl.Model.load(tiny_llama_dir, dtype="f32")
    with pytest.raises(sl.InvalidArgumentError, match=r"trained on the model with fingerprint"):
        sl.SteeringController.load(path, tiny)
    width = r"reads activations of width 576, but the model's d_model is 64"
    with pytest.raises(sl.ShapeError, match=width):
        ctrl.gate(tiny, ["hi"])
    with pytest.raises(sl.ShapeError, match=width):
        tiny.generate(["hi"], steering=ctrl, max_new_tokens=1)
    with pytest.raises(sl.ShapeError, match=width):
        tiny.continuation_logprobs(["hi"], [" there"], steering=ctrl)
    try:
        gemma = sl.Model.load(sl.catalog.gemma3_270m_path())
    except sl.ModelNotFoundError:
        return
    with pytest.raises(sl.InvalidArgumentError, match=r"trained on the model with fingerprint"):
        sl.SteeringController.load(path, gemma)
    with pytest.raises(sl.ShapeError, match=r"the model's d_model is 640"):
        gemma.generate(["hi"], steering=ctrl, max_new_tokens=1)


def test_load_refuses_broken_and_foreign_files(model: Any, ctrl: Any, tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    ctrl.save(path)
    raw = path.read_bytes()
    for n in (0, 8, len(raw) // 2, len(raw) - 1):
        cut = tmp_path / f"cut{n}.safetensors"
        cut.write_bytes(raw[:n])
        with pytest.raises(sl.ModelFormatError, match=r"not a valid safetensors file"):
            sl.SteeringController.load(cut, model)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(sl.ModelFormatError, match=r"not a valid safetensors file"):
        sl.SteeringController.load(junk, model)
    with pytest.raises(sl.ModelNotFoundError, match="file not found"):
        sl.SteeringController.load(tmp_path / "nope.safetensors", model)
    with pytest.raises(sl.InvalidTypeError, match=r"path must be a str or a pathlib\.Path"):
        sl.SteeringController.load(None, model)
    vec = tmp_path / "vec.safetensors"
    sl.SteeringVector({5: np.ones(model.d_model, np.float32)}).save(vec)
    with pytest.raises(sl.ModelFormatError, match=r"expected 'steerlab\.learned_module'"):
        sl.SteeringController.load(vec, model)
    sc = sl.ActivationScalars(
        "scalar",
        {("mlp_out", 5): np.full(14, 1.0, np.float32)},
        d_model=model.d_model,
        n_layers=model.n_layers,
        fingerprint=model.fingerprint,
        layout=14,
    )
    scp = tmp_path / "sc.safetensors"
    sc.save(scp)
    with pytest.raises(
        sl.ModelFormatError, match=r"'activation_scalars' module, not a steering controller"
    ):
        sl.SteeringController.load(scp, model)
    with pytest.raises(
        sl.ModelFormatError, match=r"'steering_controller' module, not activation scalars"
    ):
        sl.ActivationScalars.load(path, model)


def test_load_refuses_a_corrupt_history(model: Any, ctrl: Any, tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    ctrl.save(path)

    def edit(meta: dict[str, Any]) -> None:
        meta["hyperparameters"]["history"] = [5, 5]

    bad = _rewrite_meta(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(sl.ModelFormatError, match="history"):
        sl.SteeringController.load(bad, model)


def test_load_and_save_docstrings_name_real_errors() -> None:
    for fn in (sl.SteeringController.load, sl.SteeringController.save):
        raises = (fn.__doc__ or "").split("Raises:")[1]
        for word in raises.replace("/", " ").replace(":", " ").split():
            if word.endswith("Error"):
                assert hasattr(sl, word), f"{fn.__qualname__} names {word}"


# ------------------------------------------------------------------ processes, Ctrl-C

_FORK: dict[str, Any] = {}


def _child_generate(q: Any) -> None:
    model, steer, prompts = _FORK["args"]
    q.put(model.generate(prompts, steering=steer, max_new_tokens=5))


def test_forked_worker_generates_with_a_controller(
    model: Any, loud: Any, rendered: list[str]
) -> None:
    """A worker forked after loading, fitting and generating gives the parent's text."""
    want = model.generate(rendered, steering=loud, max_new_tokens=5)
    _FORK["args"] = (model, loud, rendered)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child_generate, args=(q,))
    proc.start()
    try:
        assert q.get(timeout=60) == want
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0


def test_ctrl_c_during_stage_one_keeps_the_best_so_far(
    model: Any, req: Any, rendered: list[str]
) -> None:
    """A real SIGINT during a long stage 1: fit stops at once, warns, returns a usable
    controller holding the completed epochs."""
    sent: dict[str, float] = {}

    def fire() -> None:
        sent["at"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(4.0, fire)  # the capture of 12 prompts takes ~1-2 s
    timer.start()
    try:
        with pytest.warns(sl.TrainingInterrupted, match=r"stopped by Ctrl-C"):
            c = sl.SteeringController.fit(
                model, req.harmful[:6], req.benign[:6], hidden=256, epochs=10**6, progress=False
            )
        stopped = time.monotonic()
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)
    assert 0 < len(c.history) < 10**6 and c.training["interrupted"] is True
    assert stopped - sent["at"] < 2.0, "fit went on long after Ctrl-C"
    g = c.gate(model, rendered)
    assert ((g >= 0) & (g <= 1)).all()


def test_ctrl_c_during_the_capture_pass_raises_keyboard_interrupt(
    model: Any, req: Any, rendered: list[str]
) -> None:
    sent: dict[str, float] = {}

    def fire() -> None:
        sent["at"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, fire)
    timer.start()
    try:
        with warnings.catch_warnings(), pytest.raises(KeyboardInterrupt):
            warnings.simplefilter("ignore")
            sl.SteeringController.fit(model, req.harmful[:40], req.benign[:40], **SMALL)
        stopped = time.monotonic()
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)
    assert stopped - sent["at"] < 2.0
    assert model.generate(rendered[:1], max_new_tokens=2)  # the model stays usable


# ------------------------------------------------------------- the public constructor


def _parts_of(ctrl: Any, model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    params = {k: np.array(v) for k, v in ctrl.params.items()}
    meta = {
        "read_layers": ctrl.read_layers,
        "layers": ctrl.layers,
        "hidden": ctrl.hidden,
        "strength": ctrl.strength,
        "d_model": model.d_model,
        "n_layers": model.n_layers,
        "fingerprint": model.fingerprint,
    }
    return params, meta


def test_constructor_rebuilds_the_controller_and_checks_values(
    model: Any, ctrl: Any, rendered: list[str]
) -> None:
    params, meta = _parts_of(ctrl, model)
    same = sl.SteeringController(params, **meta)
    assert np.array_equal(same.gate(model, rendered), ctrl.gate(model, rendered))
    cases: list[tuple[dict[str, Any], dict[str, Any], Any, str]] = [
        ({"w1": params["w1"][:, :4]}, {}, sl.ShapeError, r"params\['w1'\] has shape \(2304, 4\)"),
        ({"w1": params["w1"].ravel()}, {}, sl.ShapeError, r"params\['w1'\] has shape \(\d+,\)"),
        (
            {"w1": np.full_like(params["w1"], np.nan)},
            {},
            sl.InvalidArgumentError,
            r"W1 has a non-finite value \(NaN\)",
        ),
        (
            {"scale": np.zeros_like(params["scale"])},
            {},
            sl.InvalidArgumentError,
            r"input scale is 0",
        ),
        (
            {"directions": params["directions"] * 1000},
            {},
            sl.InvalidArgumentError,
            r"expected a unit direction",
        ),
        ({}, {"layers": [99] * len(ctrl.layers)}, sl.OutOfRangeError, r"include layer 99"),
        ({}, {"strength": math.nan}, sl.InvalidArgumentError, r"strength must be a finite number"),
        ({}, {"n_layers": 31}, sl.OutOfRangeError, r"trained on a model with 31 layers"),
        ({}, {"fingerprint": "deadbeef"}, sl.InvalidArgumentError, r"trained on model deadbeef"),
    ]
    for p, m, exc, match in cases:
        with pytest.raises(exc, match=match):
            c = sl.SteeringController({**params, **p}, **{**meta, **m})
            c.gate(model, rendered)


def test_constructor_refuses_a_transposed_w1(model: Any, ctrl: Any, rendered: list[str]) -> None:
    params, meta = _parts_of(ctrl, model)
    params["w1"] = params["w1"].T.copy()
    with pytest.raises(sl.ShapeError, match=r"w1"):
        sl.SteeringController(params, **meta).gate(model, rendered)


def test_constructor_bad_arguments_raise_steerlab_errors(model: Any, ctrl: Any) -> None:
    params, meta = _parts_of(ctrl, model)
    del params["w1"]
    with pytest.raises(sl.SteerlabError, match="w1"):
        sl.SteeringController(params, **meta)
    with pytest.raises(sl.SteerlabError, match="params"):
        sl.SteeringController(None, **meta)
    full, _ = _parts_of(ctrl, model)
    with pytest.raises(sl.SteerlabError, match="training"):
        sl.SteeringController(full, **meta, training="x")


def test_constructor_refuses_unknown_params(model: Any, ctrl: Any) -> None:
    params, meta = _parts_of(ctrl, model)
    params["zzz"] = np.ones(3, np.float32)
    with pytest.raises(sl.InvalidArgumentError, match="zzz"):
        sl.SteeringController(params, **meta)


def test_threads_share_a_model_and_a_controller(model: Any, loud: Any, rendered: list[str]) -> None:
    want = model.generate(rendered, steering=loud, max_new_tokens=4)
    got: list[Any] = [None] * 3

    def run(i: int) -> None:
        got[i] = model.generate(rendered, steering=loud, max_new_tokens=4)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [want] * 3


def test_gate_weights_and_trace_agree(model: Any, ctrl: Any, rendered: list[str]) -> None:
    """`gate` is the gate at the prompt's last token, the first entry of `trace`; `weights`
    is ``[n, L]`` in [0, 1]; forced continuations are traced token by token."""
    g = ctrl.gate(model, rendered)
    traces = ctrl.trace(model, rendered, max_new_tokens=2)
    assert np.allclose([t.gates[0] for t in traces], g, atol=1e-6)
    w = ctrl.weights(model, rendered)
    assert w.dtype == np.float32 and w.shape == (2, len(ctrl.layers))
    assert ((w >= 0) & (w <= 1)).all()
    forced = ctrl.trace(
        model, rendered, continuations=[" Sure", " I cannot do that"], max_new_tokens=2
    )
    for t in forced:
        assert len(t.gates) == len(t.ids)
    assert len(forced[1].ids) > len(forced[0].ids)


def test_per_row_lists_reach_the_evaluations(model: Any, loud: Any, rendered: list[str]) -> None:
    kl = sl.evaluate.continuation_kl(model, rendered, steering=[loud, None], max_new_tokens=3)
    assert kl[0] > 0 and kl[1] == 0.0


def test_fit_takes_any_sequence_of_requests(model: Any, req: Any) -> None:
    a = sl.SteeringController.fit(model, tuple(req.harmful[:4]), iter(req.benign[:4]), **SMALL)
    b = sl.SteeringController.fit(model, req.harmful[:4], req.benign[:4], **SMALL)
    assert a.history == b.history
