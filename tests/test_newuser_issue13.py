"""Issue #13 (HyperSteer) used as a new user would, from the README's "HyperSteer" section,
the issue's API contract and the public docstrings only.

What works is pinned so it stays right. Tests that expose a defect assert the behaviour
the charter and the docstrings ask for (a `SteerlabError` naming what was wrong, nothing
silently ignored or reshaped, the state a docstring promises) and fail until it is fixed;
each says in its docstring what happens now. Hypernetworks are tiny (one copied block, a
few pairs, 4-token targets) so the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")

# One copied block, 4-token targets: proves the loop in about a second on 2 cores.
SMALL: dict[str, Any] = {"n_blocks": 1, "max_target_tokens": 4, "batch_size": 4, "progress": False}
INS = ["Mention the ocean.", "Talk like a pirate.", "Answer in French."]
BASE = [
    "Plan my weekend.",
    "Describe your morning routine.",
    "How do I stay focused while working from home?",
]
# Given targets skip self-distillation where a test does not need it.
TARGETS = [" The ocean is calm.", " Arr, matey!", " Bonjour, mon ami."]


@pytest.fixture(scope="module")
def data() -> Any:
    return sl.datasets.load_steering_prompts()


@pytest.fixture(scope="module")
def pairs(data: Any) -> tuple[list[str], list[str]]:
    train = data.split(instructions="held_in", base_prompts="train")
    return train.pairs(6, seed=0)


@pytest.fixture(scope="module")
def ca(model: Any, pairs: tuple[list[str], list[str]]) -> Any:
    """The README's cross_attention hypernetwork (self-distilled targets), tiny."""
    steer, base = pairs
    return sl.HyperSteer.fit(model, steer, base, variant="cross_attention", epochs=1, **SMALL)


@pytest.fixture(scope="module")
def nc(model: Any) -> Any:
    return sl.HyperSteer.fit(model, INS, BASE, targets=TARGETS, variant="no_context", **SMALL)


@pytest.fixture(scope="module")
def saved(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hs") / "hyper.safetensors"
    ca.save(path)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path) -> Any:
    return sl.Model.load(str(tiny_llama_dir))


def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    """Copy a saved module, editing the JSON in its 'steerlab' metadata entry."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["steerlab"])
    edit(meta)
    header["__metadata__"]["steerlab"] = json.dumps(meta)
    body = json.dumps(header).encode()
    body += b" " * ((8 - len(body) % 8) % 8)
    dst.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    return dst


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


# --------------------------------------------------------------- the README and the contract


def test_dataset_contract(data: Any) -> None:
    """The README's counts and the issue's attributes: 347 instructions over 168 concepts,
    one keyword list each, 233 base prompts; `split` and `pairs` as documented."""
    assert len(data.instructions) == 347 and len(set(data.concepts)) == 168
    assert len(data.base_prompts) == 233
    assert len(data.keywords) == 347
    assert all(isinstance(k, list) and all(isinstance(w, str) for w in k) for k in data.keywords)
    train = data.split(instructions="held_in", base_prompts="train")
    held = data.split("held_out", "held_out")
    assert not set(train.concepts) & set(held.concepts)
    steer, base = train.pairs(len(train) * 3, seed=0)
    assert len(steer) == len(base) == 3 * len(train)
    assert set(steer) <= set(train.instructions) and set(base) <= set(train.base_prompts)
    assert train.pairs(5, seed=1) == train.pairs(5, seed=1)


def test_fit_signature_is_the_contract() -> None:
    params = inspect.signature(sl.HyperSteer.fit).parameters
    assert list(params)[:3] == ["model", "steering_prompts", "base_prompts"]
    want = {
        "targets": None,
        "variant": "cross_attention",
        "layer": None,
        "n_blocks": 4,
        "epochs": 1,
        "lr": None,
        "batch_size": 8,
        "max_target_tokens": 48,
        "seed": 0,
    }
    for name, default in want.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default == default, name
    assert sl.hypersteer.default_lr(20) == pytest.approx(8e-5)
    assert sl.hypersteer.default_lr(4) == pytest.approx(8e-5 * math.sqrt(5))
    assert sl.hypersteer.default_layer(30) == 22


def test_readme_example(model: Any, ca: Any, tmp_path: Path) -> None:
    """Every line of the README's snippet runs (at tiny sizes) and returns what it says."""
    assert (ca.variant, ca.layer, ca.n_blocks, ca.pool) == ("cross_attention", 22, 1, "last")
    assert ca.training["lr"] == pytest.approx(sl.hypersteer.default_lr(1))
    assert ca.training["targets"].startswith("self-distilled")
    rows = ca.steering(["Mention the ocean.", "Talk like a pirate."], ["Plan my weekend."] * 2)
    assert isinstance(rows, list) and len(rows) == 2
    assert all(isinstance(r, sl.Steering) for r in rows)
    out = model.generate(ca.prompts(["Plan my weekend."] * 2), steering=rows, max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    vec = ca.vector("Mention the ocean.", "Plan my weekend.")
    assert isinstance(vec, sl.SteeringVector) and list(vec.layers) == [22]
    assert vec.positions == "all_but_first"
    hist = ca.history
    assert len(hist) == ca.training["steps"] == 2
    for h in hist:
        assert {"step", "loss", "ce", "grad_norm", "lr"} <= set(h) and h["loss"] == h["ce"]
        assert math.isfinite(h["loss"]) and h["loss"] > 0
    fig = ca.plot()
    assert fig.axes
    _close(fig)
    ca.save(tmp_path / "hyper.safetensors")
    back = sl.HyperSteer.load(tmp_path / "hyper.safetensors", model)
    assert (back.variant, back.layer, back.n_blocks) == (ca.variant, ca.layer, ca.n_blocks)


def test_issue_contract_lines(model: Any, nc: Any) -> None:
    """The issue's lines as written: `hs.vector("Mention the ocean")` on a no_context
    network, and `model.generate(base_prompts, steering=rows, ...)` on plain prompts."""
    vec = nc.vector("Mention the ocean")
    assert isinstance(vec, sl.SteeringVector) and list(vec.layers) == [nc.layer]
    np.testing.assert_array_equal(vec[nc.layer], nc.vectors(["Mention the ocean"])[0])
    rows = nc.steering(INS, BASE, factor=1.0)
    out = model.generate(BASE, steering=rows, max_new_tokens=3)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    v = nc.vectors(INS)
    assert v.dtype == np.float32 and v.shape == (3, model.d_model)


def test_axbench_contract(model: Any, data: Any, ca: Any) -> None:
    """`sl.evaluate.axbench` with every method of the issue's line, at a tiny size."""
    held = data.split("held_out", "held_out").sample(1, seed=0)
    methods = {
        "hypersteer": ca,
        "prompt": "prompt",
        "diffmean": "diffmean",
        "optimized": "optimized",
        "none": None,
    }
    report = sl.evaluate.axbench(
        model,
        held,
        held.base_prompts[:2],
        methods=methods,
        factors=[1.0, 2.0],
        max_new_tokens=3,
        optimize_steps=1,
        progress=False,
    )
    df = report.to_pandas()
    assert set(df["method"]) == set(methods)
    assert set(df["half"]) == {"selection", "report"}
    for col in ("aggregate", "concept_score", "relevance", "fluency"):
        assert ((df[col] >= 0) & (df[col] <= 2)).all(), col
    fig = report.plot()
    assert fig.axes
    _close(fig)


# ------------------------------------------------------------------ properties that must hold


@pytest.mark.parametrize("which", ["ca", "nc"])
def test_factor_zero_is_unsteered(model: Any, which: str, request: pytest.FixtureRequest) -> None:
    hs = request.getfixturevalue(which)
    prompts = hs.prompts(BASE)
    rows = hs.steering(INS, BASE, factor=0.0)
    assert all(np.count_nonzero(r.vectors[hs.layer]) == 0 for r in rows)
    assert model.generate(prompts, steering=rows, max_new_tokens=6) == model.generate(
        prompts, max_new_tokens=6
    )
    np.testing.assert_array_equal(model.logits(prompts, steering=rows), model.logits(prompts))


def test_per_row_batch_equals_each_row_alone(model: Any, ca: Any) -> None:
    """Rows of different instructions and prompt lengths in one generate call give what
    each gives alone (factor 16: large enough that the steering changes the text)."""
    prompts = ca.prompts(BASE)
    rows = ca.steering(INS, BASE, factor=16.0)
    batch = model.generate(prompts, steering=rows, max_new_tokens=6)
    assert batch != model.generate(prompts, max_new_tokens=6)
    alone = [
        model.generate([p], steering=[r], max_new_tokens=6)[0]
        for p, r in zip(prompts, rows, strict=True)
    ]
    assert batch == alone


def test_a_rows_vector_does_not_depend_on_its_batch(ca: Any, nc: Any) -> None:
    v = ca.vectors(INS, BASE)
    for i in range(3):
        np.testing.assert_array_equal(ca.vectors([INS[i]], [BASE[i]])[0], v[i])
    padded = ca.vectors([*INS, "word " * 60], [*BASE, "Tell me a long story. " * 20])
    np.testing.assert_array_equal(padded[:3], v)
    # a rendered base prompt is kept as it is: same vector as its plain request
    np.testing.assert_array_equal(ca.vectors(INS, ca.prompts(BASE)), v)
    # no_context: the base prompt plays no part in the vector
    a = nc.steering(INS, BASE)
    b = nc.steering(INS, BASE[::-1])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.vectors[nc.layer], y.vectors[nc.layer])


def test_vector_is_factor_times_vectors(ca: Any) -> None:
    v = ca.vectors(INS[:1], BASE[:1])[0]
    np.testing.assert_allclose(ca.vector(INS[0], BASE[0], factor=2.5)[ca.layer], 2.5 * v)
    np.testing.assert_allclose(ca.steering(INS[:1], BASE[:1], factor=-1.0)[0].vectors[ca.layer], -v)


@pytest.mark.parametrize("which", ["ca", "nc"])
def test_save_load_round_trip(
    model: Any, which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    hs = request.getfixturevalue(which)
    hs.save(tmp_path / "h.safetensors")
    back = sl.HyperSteer.load(str(tmp_path / "h.safetensors"), model)
    base = BASE if hs.variant == "cross_attention" else None
    np.testing.assert_array_equal(back.vectors(INS, base), hs.vectors(INS, base))
    assert back.history == hs.history and back.training == hs.training
    assert (back.variant, back.layer, back.n_blocks, back.pool, back.chat, back.n_params) == (
        hs.variant,
        hs.layer,
        hs.n_blocks,
        hs.pool,
        hs.chat,
        hs.n_params,
    )


def test_pool_mean_round_trip(model: Any, tmp_path: Path) -> None:
    hs = sl.HyperSteer.fit(model, INS, BASE, targets=TARGETS, pool="mean", layer=-3, **SMALL)
    assert (hs.pool, hs.layer) == ("mean", 27)
    hs.save(tmp_path / "m.safetensors")
    back = sl.HyperSteer.load(tmp_path / "m.safetensors", model)
    assert back.pool == "mean" and back.layer == 27
    np.testing.assert_array_equal(back.vectors(INS, BASE), hs.vectors(INS, BASE))


def test_factor_one_is_what_training_saw() -> None:
    """On the f32 model, the final validation cross-entropy (the same pairs and targets as
    training) equals the cross-entropy of `generate`'s path steered at factor 1, and
    `val_ce_start` equals the unsteered one: fit and use steer the same positions."""
    m32 = sl.Model.load(dtype="f32")
    targets = sl.hypersteer.distill_targets(m32, INS, BASE, max_target_tokens=4, progress=False)
    hs = sl.HyperSteer.fit(
        m32,
        INS,
        BASE,
        targets=targets,
        epochs=2,
        lr=1e-3,
        validation=(INS, BASE),
        **SMALL,
    )
    prompts = hs.prompts(BASE)

    def ce(steering: Any) -> float:
        lp = m32.continuation_logprobs(prompts, targets, steering=steering, progress=False)
        return float(-np.concatenate(lp).mean())

    assert hs.training["val_ce_start"] == pytest.approx(ce(None), abs=1e-4)
    assert hs.training["val_ce_start"] == pytest.approx(hs.history[0]["loss"], abs=1e-5)
    assert hs.history[-1]["val_ce"] == pytest.approx(ce(hs.steering(INS, BASE)), abs=1e-4)
    assert hs.history[-1]["val_ce"] < hs.training["val_ce_start"]


def test_threads_share_a_hypernetwork(ca: Any) -> None:
    want = ca.vectors(INS, BASE)
    got: list[Any] = [None] * 4

    def work(i: int) -> None:
        got[i] = ca.vectors(INS, BASE)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in got:
        np.testing.assert_array_equal(g, want)


def test_given_targets_are_cut_and_empty_ones_dropped(model: Any) -> None:
    hs = sl.HyperSteer.fit(model, INS[:2], BASE[:2], targets=[" ocean" * 50, ""], **SMALL)
    assert hs.training["dropped"] == 1 and hs.training["n_examples"] == 1
    assert hs.training["example_targets"] == [" ocean ocean ocean ocean"]


def test_gemma(model: Any) -> None:
    try:
        path = sl.models.gemma3_270m_path()
    except sl.ModelNotFoundError:
        pytest.skip("Gemma 3 270M is not installed")
    g = sl.Model.load(path)
    hs = sl.HyperSteer.fit(g, INS[:2], BASE[:2], targets=TARGETS[:2], **SMALL)
    assert hs.layer == sl.hypersteer.default_layer(g.n_layers) == 13
    prompts = hs.prompts(BASE[:2])
    assert prompts[0].startswith("<bos><start_of_turn>user")
    rows0 = hs.steering(INS[:2], BASE[:2], factor=0.0)
    assert g.generate(prompts, steering=rows0, max_new_tokens=4) == g.generate(
        prompts, max_new_tokens=4
    )
    with pytest.raises(sl.InvalidArgumentError, match="another model"):
        hs.check_model(model)


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"variant": "cross"}, "InvalidArgumentError", r"variant must be one of .*got 'cross'"),
        ({"variant": None}, "InvalidArgumentError", r"variant must be one of"),
        ({"pool": "max"}, "InvalidArgumentError", r"pool must be one of 'last', 'mean'"),
        ({"layer": 30}, "OutOfRangeError", r"layer 30 is out of range .*-30\.\.29"),
        ({"layer": -31}, "OutOfRangeError", r"layer -31 is out of range"),
        ({"layer": 1.0}, "InvalidTypeError", r"layer must be an int, got float"),
        ({"layer": True}, "InvalidTypeError", r"layer must be an int, got bool"),
        ({"n_blocks": 0}, "InvalidArgumentError", r"n_blocks must be >= 1, got 0"),
        ({"n_blocks": 2.0}, "InvalidTypeError", r"n_blocks must be an int, got float"),
        ({"n_blocks": True}, "InvalidTypeError", r"n_blocks must be an int, got bool"),
        ({"epochs": 0}, "InvalidArgumentError", r"epochs must be >= 1, got 0"),
        ({"epochs": 1.0}, "InvalidTypeError", r"epochs must be an int, got float"),
        ({"lr": 0}, "InvalidArgumentError", r"lr must be a finite number > 0, got 0"),
        ({"lr": math.nan}, "InvalidArgumentError", r"lr must be a finite number > 0, got nan"),
        ({"lr": math.inf}, "InvalidArgumentError", r"lr must be a finite number > 0, got inf"),
        ({"lr": True}, "InvalidTypeError", r"lr must be a number, got bool"),
        ({"batch_size": 0}, "InvalidArgumentError", r"batch_size must be >= 1, got 0"),
        ({"batch_size": True}, "InvalidTypeError", r"batch_size must be an int, got bool"),
        ({"max_target_tokens": 0}, "InvalidArgumentError", r"max_target_tokens must be >= 1"),
        ({"max_target_tokens": 2.0}, "InvalidTypeError", r"max_target_tokens must be an int"),
        ({"seed": -1}, "InvalidArgumentError", r"seed must be >= 0, got -1"),
        ({"seed": 2**70}, "InvalidArgumentError", r"seed must be <= 18446744073709551615"),
        ({"seed": 1.5}, "InvalidTypeError", r"seed must be an int, got float"),
        ({"weight_decay": math.nan}, "InvalidArgumentError", r"weight_decay is NaN"),
        ({"chat": "yes"}, "InvalidArgumentError", r"chat must be True, False or 'auto'"),
        ({"checkpoint_every": -1}, "InvalidArgumentError", r"checkpoint_every must be >= 0"),
        (
            {"validate_every": 0, "validation": (INS[:1], BASE[:1])},
            "InvalidArgumentError",
            r"validate_every must be >= 1",
        ),
        (
            {"validation": ["a"]},
            "InvalidTypeError",
            r"validation must be \(steering_prompts, base_prompts\) or",
        ),
        ({"targets": ["x"]}, "InvalidArgumentError", r"1 targets for 2 pairs"),
        ({"targets": [1, 2]}, "InvalidTypeError", r"targets\[0\] must be a str, got int"),
        ({"targets": ["", ""]}, "InvalidArgumentError", r"every target is empty"),
        ({"progress": "yes"}, "InvalidTypeError", r"progress must be True, False or None"),
    ],
)
def test_fit_refuses_bad_arguments(model: Any, kw: dict[str, Any], exc: str, match: str) -> None:
    args = {**SMALL, **kw}
    with pytest.raises(getattr(sl, exc), match=match):
        sl.HyperSteer.fit(model, INS[:2], BASE[:2], **args)


def test_fit_refuses_bad_lists(model: Any) -> None:
    fit = sl.HyperSteer.fit
    with pytest.raises(sl.InvalidArgumentError, match=r"2 steering_prompts and 1 base_prompts"):
        fit(model, INS[:2], BASE[:1], **SMALL)
    with pytest.raises(sl.InvalidArgumentError, match=r"steering_prompts is empty"):
        fit(model, [], [], **SMALL)
    with pytest.raises(sl.InvalidTypeError, match=r"steering_prompts\[0\] must be a str"):
        fit(model, [1, 2], BASE[:2], **SMALL)
    with pytest.raises(sl.InvalidTypeError, match=r"base_prompts\[1\] must be a str"):
        fit(model, INS[:2], [BASE[0], None], **SMALL)
    with pytest.raises(sl.InvalidTypeError, match=r"model must be a steerlab.Model"):
        fit("model", INS[:2], BASE[:2], **SMALL)
    with pytest.raises(sl.InvalidArgumentError, match=r"steering prompt has no tokens"):
        fit(model, [""], [""], targets=["x"], **SMALL)
    rendered = model.chat_prompt([{"role": "user", "content": "Hi"}])
    with pytest.raises(sl.InvalidArgumentError, match=r"already a rendered chat prompt"):
        fit(model, INS[:1], [rendered], **SMALL)
    with pytest.raises(sl.ContextLengthError, match=r"the model's context is 8192 tokens"):
        fit(model, INS[:1], ["word " * 9000], targets=["x"], **SMALL)


@pytest.mark.parametrize("factor", [math.nan, math.inf, -math.inf])
def test_non_finite_factor(ca: Any, factor: float) -> None:
    with pytest.raises(sl.InvalidArgumentError, match=r"factor must be a finite number"):
        ca.steering(INS[:1], BASE[:1], factor=factor)
    with pytest.raises(sl.InvalidArgumentError, match=r"factor must be a finite number"):
        ca.vector(INS[0], BASE[0], factor=factor)


@pytest.mark.parametrize("factor", ["1", None, True])
def test_non_number_factor(ca: Any, factor: Any) -> None:
    with pytest.raises(sl.InvalidTypeError, match=r"factor must be a number"):
        ca.steering(INS[:1], BASE[:1], factor=factor)


def test_use_refuses_bad_lists(ca: Any, nc: Any) -> None:
    with pytest.raises(sl.InvalidArgumentError, match=r"2 steering_prompts and 1 base_prompts"):
        ca.steering(INS[:2], BASE[:1])
    with pytest.raises(sl.InvalidArgumentError, match=r"steering_prompts is empty"):
        ca.steering([], [])
    with pytest.raises(sl.InvalidTypeError, match=r"steering_prompts\[0\] must be a str"):
        ca.steering([1], BASE[:1])
    with pytest.raises(sl.InvalidTypeError, match=r"base_prompts\[0\] must be a str, got bytes"):
        ca.steering(INS[:1], [b"x"])
    with pytest.raises(sl.InvalidArgumentError, match=r"cross_attention .*pass base_prompts"):
        ca.vectors(INS)
    with pytest.raises(sl.InvalidArgumentError, match=r"cross_attention .*pass base_prompts"):
        ca.vector(INS[0])
    with pytest.raises(sl.InvalidArgumentError, match=r"no_context .*pass no base_prompts"):
        nc.vectors(INS, BASE)
    with pytest.raises(sl.InvalidTypeError, match=r"instruction must be a str, got list"):
        nc.vector(INS[:2])
    with pytest.raises(sl.InvalidArgumentError, match=r"has no tokens"):
        nc.vectors([""])
    with pytest.raises(sl.ContextLengthError, match=r"longer than the model's context"):
        nc.vectors(["word " * 9000])
    with pytest.raises(sl.InvalidArgumentError, match=r"base_prompts is empty"):
        ca.prompts([])


def test_load_refuses_bad_files(model: Any, tiny: Any, saved: Path, tmp_path: Path) -> None:
    load = sl.HyperSteer.load
    with pytest.raises(sl.InvalidArgumentError, match=r"trained on the model with fingerprint"):
        load(saved, tiny)
    with pytest.raises(sl.InvalidArgumentError, match=r"another model"):
        load(saved, model).check_model(tiny)
    other = sl.HyperSteer.fit(tiny, INS[:1], BASE[:1], targets=TARGETS[:1], chat=False, **SMALL)
    other.save(tmp_path / "tiny.safetensors")
    with pytest.raises(sl.InvalidArgumentError, match=r"not on this model"):
        load(tmp_path / "tiny.safetensors", model)
    with pytest.raises(sl.ModelNotFoundError, match=r"file not found"):
        load(tmp_path / "none.safetensors", model)
    with pytest.raises(sl.ModelFormatError, match=r"Is a directory"):
        load(tmp_path, model)
    with pytest.raises(sl.InvalidTypeError, match=r"path must be a str or a pathlib.Path"):
        load(3, model)
    with pytest.raises(sl.InvalidTypeError, match=r"model must be a steerlab.Model"):
        load(saved, "model")
    raw = saved.read_bytes()
    for name, body in [("empty", b""), ("head", raw[:20]), ("half", raw[: len(raw) // 2])]:
        (tmp_path / name).write_bytes(body)
        with pytest.raises(sl.ModelFormatError, match=r"not a valid safetensors file"):
            load(tmp_path / name, model)
    vec = load(saved, model).vector(INS[0], BASE[0])
    vec.save(tmp_path / "vec.safetensors")
    with pytest.raises(sl.ModelFormatError, match=r"expected 'steerlab.learned_module'"):
        load(tmp_path / "vec.safetensors", model)
    # a NaN weight
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    start, end = header["head.bias"]["data_offsets"]
    data = bytearray(raw[8 + n :])
    data[start:end] = np.full((end - start) // 4, np.nan, np.float32).tobytes()
    (tmp_path / "nan").write_bytes(raw[: 8 + n] + bytes(data))
    with pytest.raises(sl.ModelFormatError, match=r"'head.bias' has a NaN or inf value"):
        load(tmp_path / "nan", model)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("variant", "x", r"variant is 'x'; expected one of"),
        ("variant", "no_context", r"unexpected tensor 'blocks.0.cross"),
        ("layer", 99, r"layer is 99; expected an int in 0..29"),
        ("n_blocks", 2, r"'blocks.1.attn_norm' is missing"),
        ("n_blocks", 31, r"n_blocks is 31"),
        ("pool", "max", r"pool is 'max'; expected one of"),
    ],
)
def test_load_refuses_hostile_metadata(
    model: Any, saved: Path, tmp_path: Path, key: str, value: Any, match: str
) -> None:
    def edit(meta: dict[str, Any]) -> None:
        meta["hyperparameters"][key] = value

    with pytest.raises(sl.ModelFormatError, match=match):
        sl.HyperSteer.load(_rewrite(saved, tmp_path / "h.safetensors", edit), model)


# ---------------------------------------------------------------------------------- defects


def test_pickle_and_copy_round_trip(ca: Any) -> None:
    """Model, ActivationScalars and SteeringController pickle; a HyperSteer raises a raw
    ``TypeError: cannot pickle 'steerlab._core.HyperNet' object`` from both
    `pickle.dumps` and `copy.deepcopy` (not even a SteerlabError)."""
    want = ca.vectors(INS, BASE)
    for again in (pickle.loads(pickle.dumps(ca)), copy.deepcopy(ca)):
        np.testing.assert_array_equal(again.vectors(INS, BASE), want)
        assert again.history == ca.history and again.training == ca.training


def test_factor_overflowing_float32_is_refused_cleanly(ca: Any) -> None:
    """factor=1e39 is finite in Python but not in float32: today numpy's
    ``RuntimeWarning: overflow encountered in cast`` leaks out of `steering`/`vector`
    (hypersteer.py casts ``np.float32(f)``), which under ``-W error`` (this suite's
    setting) escapes as a RuntimeWarning, not a SteerlabError; without it the user gets a
    warning and then an error about "the steering vector for resid_post[22]" that does not
    name the argument at fault."""
    with pytest.raises(sl.InvalidArgumentError, match=r"factor"):
        ca.steering(INS[:1], BASE[:1], factor=1e39)
    with pytest.raises(sl.InvalidArgumentError, match=r"factor"):
        ca.vector(INS[0], BASE[0], factor=1e39)


def test_n_blocks_beyond_the_model_is_out_of_range(model: Any) -> None:
    """`fit`'s docstring: "OutOfRangeError: a layer or `n_blocks` the model lacks"; today
    n_blocks=31 on a 30-layer model raises InvalidArgumentError ("n_blocks must be <=
    30"). Either the code or the docstring is wrong; this test follows the docstring."""
    with pytest.raises(sl.OutOfRangeError, match=r"n_blocks"):
        sl.HyperSteer.fit(
            model, INS[:1], BASE[:1], targets=TARGETS[:1], **{**SMALL, "n_blocks": 31}
        )


@pytest.mark.parametrize(
    "kw",
    [{"checkpoint_every": 1}, {"validate_every": 1}],
)
def test_settings_that_need_another_argument_are_not_ignored(
    model: Any, kw: dict[str, Any]
) -> None:
    """``checkpoint_every=1`` without ``checkpoint=`` and ``validate_every=1`` without
    ``validation=`` are silently ignored today (the run trains and writes / validates
    nothing); the charter says nothing is silently ignored."""
    name = next(iter(kw))
    with pytest.raises(sl.InvalidArgumentError, match=name):
        sl.HyperSteer.fit(model, INS[:1], BASE[:1], targets=TARGETS[:1], **SMALL, **kw)


def test_checkpoint_into_a_missing_folder_fails_before_training(
    model: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint path in a folder that does not exist is only found out when the first
    checkpoint is written: with ``checkpoint_every=0`` that is after the last step, so the
    whole run is lost (ModelNotFoundError "…: file not found" after training; measured: 6.2
    s for a 24-step run whose training alone takes 5.7 s). It should be refused before
    the first step (no step shows on the progress bar)."""
    with pytest.raises(sl.ModelNotFoundError, match=r"/nonexistent-steerlab-dir"):
        sl.HyperSteer.fit(
            model,
            INS,
            BASE,
            targets=TARGETS,
            **{**SMALL, "batch_size": 1, "progress": True},
            epochs=2,
            checkpoint="/nonexistent-steerlab-dir/h.safetensors",
        )
    err = capsys.readouterr().err
    assert "ce=" not in err, "training steps ran before the checkpoint path was checked"


@pytest.mark.parametrize("change", ["data", "targets"])
def test_resume_refuses_a_checkpoint_of_another_run(
    model: Any, tmp_path: Path, change: str
) -> None:
    """`fit`'s docstring: `resume` must be "a checkpoint written by an earlier run with
    the same data and settings" and InvalidArgumentError is raised for "a `resume` file
    from another run". Only settings are compared today (epochs, seed, n_blocks, …): a
    checkpoint resumed with other pairs or other targets is accepted and its parameters
    silently continued on data they were not trained on (with a finished checkpoint, fit
    returns it as the "trained" result)."""
    ck = tmp_path / "ck.safetensors"
    sl.HyperSteer.fit(model, INS, BASE, targets=TARGETS, checkpoint=ck, **SMALL)
    ins, targets = INS, TARGETS
    if change == "data":
        ins = INS[::-1]
    else:
        targets = [" Something else entirely."] * 3
    with pytest.raises(sl.InvalidArgumentError, match=r"another run"):
        sl.HyperSteer.fit(model, ins, BASE, targets=targets, resume=ck, **SMALL)


_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time, warnings
    import steerlab as sl
    # A process started in the background by a non-interactive shell inherits SIGINT
    # ignored; a user's Ctrl-C reaches a Python that raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ck, ins, base, targets, kw = json.loads(sys.argv[1])
    model = sl.Model.load()

    def interrupt():
        while not os.path.exists(ck):
            time.sleep(0.002)
        time.sleep(0.1)  # land inside a step, as a user's Ctrl-C mostly does
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hs = sl.HyperSteer.fit(model, ins, base, targets=targets, checkpoint=ck,
                               checkpoint_every=2, **kw)
    print(json.dumps({
        "steps": len(hs.history),
        "interrupted": hs.training["interrupted"],
        "warnings": [[w.category.__name__, str(w.message)] for w in caught],
    }))
    """
)


def test_ctrl_c_keeps_the_completed_steps_and_resume_continues(model: Any, tmp_path: Path) -> None:
    """Ctrl-C (a real SIGINT, in a child process) stops training with TrainingInterrupted
    and a checkpoint; resuming it must replay the uninterrupted run: the loss at the first
    resumed step equals the uninterrupted run's (same parameters, same batch; AdamW's
    moments restart only from that step's update on).

    Today the interrupted step's update is applied but its history entry is dropped: the
    returned hypernetwork and the checkpoint hold the parameters after k+1 updates while
    history and steps_done say k (checked by copying an uninterrupted run's checkpoint at
    step 3: identical vectors to a run interrupted with 2 steps in its history), so the
    resumed run trains on batch k twice and its loss at step k differs (0.777 vs 0.907 in
    the reproduction)."""
    ins = [*INS, "Talk about robots."]
    base = [*BASE, "What makes a good weekend?"]
    targets = [*TARGETS, " Robots are fun."]
    kw = {**SMALL, "batch_size": 1, "epochs": 6}
    ck = tmp_path / "ck.safetensors"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = json.dumps([str(ck), ins, base, targets, kw])
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    k = child["steps"]
    assert child["interrupted"] is True and 2 <= k < 24, child
    assert [c for c, _ in child["warnings"]] == ["TrainingInterrupted"]
    assert f"after {k} of 24 steps" in child["warnings"][0][1]
    part = sl.HyperSteer.load(ck, model)
    assert len(part.history) == k
    full = sl.HyperSteer.fit(model, ins, base, targets=targets, **kw)
    assert [h["loss"] for h in part.history] == [h["loss"] for h in full.history[:k]]
    resumed = sl.HyperSteer.fit(model, ins, base, targets=targets, resume=ck, **kw)
    assert len(resumed.history) == 24 and resumed.training["interrupted"] is False
    assert [h["loss"] for h in resumed.history[: k + 1]] == [
        h["loss"] for h in full.history[: k + 1]
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("history", "x"),
        ("history", None),
        ("history", [1]),
        ("history", [{"step": "a"}]),
        ("training", "x"),
        ("training", None),
        ("layer", 22.5),
        ("layer", "22"),
        ("layer", True),
        ("n_blocks", "1"),
        ("chat", "yes"),
        ("chat", None),
    ],
)
def test_load_refuses_malformed_metadata(
    model: Any, saved: Path, tmp_path: Path, key: str, value: Any
) -> None:
    """A file whose metadata has the wrong type must raise ModelFormatError naming the
    entry. Today: history/training of the wrong type raise raw AttributeError, TypeError
    or ValueError ("'str' object has no attribute 'items'", "dictionary update sequence
    element #0 has length 1"); layer 22.5 / "22" / true load as layer 22 / 22 / 1 and
    n_blocks "1" as 1 (silently coerced); chat "yes" / null load and every later
    `steering`/`vectors` call fails with "chat must be True, False or 'auto'"."""

    def edit(meta: dict[str, Any]) -> None:
        meta["hyperparameters"][key] = value

    with pytest.raises(sl.ModelFormatError, match=key):
        sl.HyperSteer.load(_rewrite(saved, tmp_path / "h.safetensors", edit), model)


def test_load_refuses_a_site_that_contradicts_the_layer(
    model: Any, saved: Path, tmp_path: Path
) -> None:
    """The header's ``sites`` says ``resid_post.5`` while ``layer`` says 22: today the
    file loads (layer 22) and the contradiction goes unnoticed."""

    def edit(meta: dict[str, Any]) -> None:
        meta["sites"] = ["resid_post.5"]

    with pytest.raises(sl.ModelFormatError, match=r"resid_post"):
        sl.HyperSteer.load(_rewrite(saved, tmp_path / "h.safetensors", edit), model)


def test_plot_refuses_a_bad_ax(ca: Any) -> None:
    """``hs.plot(ax=3)`` raises a raw ``AttributeError: 'int' object has no attribute
    'figure'`` (steerlab.plots._axes does not check ax; SteeringController.plot gives a raw
    TypeError the same way)."""
    with pytest.raises(sl.InvalidTypeError, match=r"ax"):
        ca.plot(ax=3)


def test_axbench_refuses_a_hypersteer_of_another_model(tiny: Any, ca: Any) -> None:
    """axbench holds both the model and the HyperSteer; today a HyperSteer trained on
    SmolLM2 passed with the 3-layer tiny model fails with "OutOfRangeError: layer 22 is
    out of range for a model with 3 layers" (a layer the user never passed) instead of
    saying the hypernetwork belongs to another model (`check_model`); on a model with
    enough layers and the same width nothing would stop it."""
    with pytest.raises(sl.InvalidArgumentError, match=r"another model|fingerprint"):
        sl.evaluate.axbench(
            tiny,
            ["Mention the ocean."],
            ["a", "b"],
            methods={"hs": ca},
            factors=[1.0],
            max_new_tokens=2,
            chat=False,
            progress=False,
        )


def test_axbench_refuses_the_class_for_an_instance(model: Any) -> None:
    """``methods={"hs": sl.HyperSteer}`` (the class, e.g. before fitting) has a callable
    ``.steering`` and is taken for a HyperSteer: raw ``TypeError: HyperSteer.steering()
    missing 1 required positional argument: 'base_prompts'``."""
    with pytest.raises(sl.InvalidTypeError, match=r"methods\['hs'\]"):
        sl.evaluate.axbench(
            model,
            ["Mention the ocean."],
            ["a", "b"],
            methods={"hs": sl.HyperSteer},
            factors=[1.0],
            max_new_tokens=2,
            progress=False,
        )
