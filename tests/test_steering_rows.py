"""`Steering` values, their normalisation into rows, and per-row steering on a model."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl
from steerlab.steering import prepare

D = 8


def vec(seed: int, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(d)


# ----------------------------------------------------------------- Steering values


def test_steering_holds_float32_copies() -> None:
    source = vec(0)
    s = sl.Steering({3: source, np.int64(-1): vec(1)})
    assert s.layers == [3, -1]
    assert s.positions == "all"
    for v in s.vectors.values():
        assert v.dtype == np.float32 and v.flags.c_contiguous and not v.flags.writeable
    source[:] = 0.0
    assert np.abs(s.vectors[3]).sum() > 0


def test_arithmetic() -> None:
    a = sl.Steering({3: vec(0)})
    b = sl.Steering({3: vec(1), 5: vec(2)})
    np.testing.assert_allclose((a * 2.0).vectors[3], 2 * a.vectors[3], rtol=1e-6)
    np.testing.assert_allclose((3 * a).vectors[3], 3 * a.vectors[3], rtol=1e-6)
    np.testing.assert_allclose((a / 4).vectors[3], a.vectors[3] / 4, rtol=1e-6)
    np.testing.assert_allclose((-a).vectors[3], -a.vectors[3])
    total = a + b
    assert total.layers == [3, 5]
    np.testing.assert_allclose(total.vectors[3], a.vectors[3] + b.vectors[3], rtol=1e-6)
    np.testing.assert_array_equal(total.vectors[5], b.vectors[5])
    np.testing.assert_allclose((total - b).vectors[3], a.vectors[3], atol=1e-6)
    scaled = a * np.float32(0.5)
    assert isinstance(scaled, sl.Steering)
    assert a == sl.Steering({3: vec(0)})
    assert a != a * 2


def test_arithmetic_errors() -> None:
    a = sl.Steering({3: vec(0)})
    with pytest.raises(sl.DivisionByZeroError, match="cannot divide a Steering by zero") as info:
        a / 0
    assert isinstance(info.value, ZeroDivisionError) and isinstance(info.value, sl.SteerlabError)
    with pytest.raises(TypeError):
        a * "2"  # type: ignore[operator]
    with pytest.raises(TypeError):
        a + {3: vec(0)}  # type: ignore[operator]
    with pytest.raises(sl.InvalidTypeError, match="real number"):
        a * True
    with pytest.raises(sl.InvalidArgumentError, match="cannot scale a Steering by nan"):
        a * float("nan")
    # Joining steerings on different positions keeps both operations (a Steering is a
    # list of operations); the single-positions views then say so.
    joined = a + sl.Steering({3: vec(1)}, positions="prompt")
    assert [o.positions for o in joined.ops] == ["all", "prompt"]
    with pytest.raises(sl.InvalidArgumentError, match="different positions"):
        _ = joined.positions
    with pytest.raises(sl.InvalidArgumentError, match="several add operations"):
        _ = joined.vectors
    with pytest.raises(sl.ShapeError, match="widths 8 and 9 at layer 3"):
        a + sl.Steering({3: vec(1, d=9)})


def test_positions() -> None:
    for name in ("all", "prompt", "generated", "last"):
        assert sl.Steering({0: vec(0)}, positions=name).positions == name
    assert sl.Steering({0: vec(0)}, positions=range(2)).positions == [0, 1]
    assert sl.Steering({0: vec(0)}, positions=-1).positions == [-1]
    assert sl.Steering({0: vec(0)}).with_positions([0, 2]).positions == [0, 2]
    with pytest.raises(sl.InvalidArgumentError, match="unknown steering positions 'first'"):
        sl.Steering({0: vec(0)}, positions="first")  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidArgumentError, match="empty"):
        sl.Steering({0: vec(0)}, positions=[])
    with pytest.raises(sl.InvalidTypeError, match="must be ints"):
        sl.Steering({0: vec(0)}, positions=[1.5])  # type: ignore[list-item]


def test_constructor_errors() -> None:
    with pytest.raises(sl.InvalidTypeError, match="mapping"):
        sl.Steering([vec(0)])  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidTypeError, match="layer index must be an int"):
        sl.Steering({1.0: vec(0)})  # type: ignore[dict-item]
    with pytest.raises(sl.ShapeError, match="1-D"):
        sl.Steering({1: np.zeros((2, D))})
    with pytest.raises(sl.ShapeError, match="1-D"):
        sl.Steering({1: 3.0})
    with pytest.raises(sl.InvalidTypeError, match="not an array of numbers"):
        sl.Steering({1: ["a", "b"]})


def test_pickle_copy_repr() -> None:
    s = sl.Steering({3: vec(0), 5: vec(1)}, positions=[0, -1]) * 2
    assert pickle.loads(pickle.dumps(s)) == s
    assert copy.deepcopy(s) == s
    assert "3: <8 floats" in repr(s) and "positions=[0, -1]" in repr(s)


# ---------------------------------------------------------------- normalisation


def test_rows_format() -> None:
    s = sl.Steering({3: vec(0)}, positions="last")
    rows = prepare(s).rows(2)  # type: ignore[union-attr]
    assert rows is not None and len(rows) == 2
    site, layer, op, array, value, positions = rows[0][0]
    assert (site, layer, op, value, positions) == ("resid_post", 3, "add", 0.0, "last")
    assert array.dtype == np.float32 and array.flags.c_contiguous
    assert prepare(None) is None
    assert prepare({}).rows(3) is None  # type: ignore[union-attr]
    assert prepare([None, None]).rows(2) is None  # type: ignore[union-attr]
    per_row = prepare([None, {3: vec(1)}]).rows(2)  # type: ignore[union-attr]
    assert per_row is not None and per_row[0] == [] and per_row[1][0][5] == "all"


def test_to_steering_may_return_a_mapping() -> None:
    class Vector:
        def to_steering(self) -> dict[int, np.ndarray]:
            return {4: vec(0)}

    rows = prepare(Vector()).rows(1)  # type: ignore[union-attr]
    assert rows is not None and rows[0][0][:3] == ("resid_post", 4, "add")


# ------------------------------------------------------------------- on a model


def _steer(model: sl.Model, seed: int, layer: int = 12, scale: float = 16.0) -> sl.Steering:
    v = vec(seed, model.d_model)
    return sl.Steering({layer: scale * v / np.linalg.norm(v)})


def test_per_row_generate_equals_alone(model: sl.Model, prompts: list[str]) -> None:
    steers = [_steer(model, 0), None, _steer(model, 1) * 0.5 + _steer(model, 2, layer=20)]
    together = model.generate(prompts, steering=steers, max_new_tokens=10, return_ids=True)
    for prompt, steer, ids in zip(prompts, steers, together, strict=True):
        alone = model.generate([prompt], steering=steer, max_new_tokens=10, return_ids=True)
        assert alone[0] == ids


def test_coefficient_sweep_in_one_batch(model: sl.Model) -> None:
    base = _steer(model, 3, scale=1.0)
    coefs = [0.0, 4.0, 8.0, 16.0]
    prompt = "I think that"
    logits = model.logits([prompt] * len(coefs), steering=[base * c for c in coefs])
    for c, row in zip(coefs, logits, strict=True):
        alone = model.logits(prompt, steering=base * c)[0]
        # Exact: rows never interact, on the quantized path too.
        np.testing.assert_array_equal(row, alone)
    plain = model.logits(prompt)[0]
    np.testing.assert_allclose(logits[0], plain, atol=1e-3 * np.abs(plain).max())


def test_per_row_capture_equals_alone(model: sl.Model, prompts: list[str]) -> None:
    steers = [None, _steer(model, 4, layer=5), _steer(model, 5, layer=5)]
    together = model.capture(prompts, layers=[5, 20], steering=steers, position="mean")
    for i, (prompt, steer) in enumerate(zip(prompts, steers, strict=True)):
        alone = model.capture(prompt, layers=[5, 20], steering=steer, position="mean")[0]
        np.testing.assert_array_equal(together[i], alone)


def test_positions_on_the_prompt(model: sl.Model, prompts: list[str]) -> None:
    """Explicit indices and 'generated' touch only what they name (causal attention)."""
    layer = 8
    text = prompts[1]
    n = len(model.encode(text))
    plain = model.capture(text, [layer], position="all")[0][0]  # [seq, d]
    base = _steer(model, 6, layer=layer, scale=4.0)

    at_last = model.capture(text, [layer], "all", steering=base.with_positions([-1]))[0][0]
    np.testing.assert_allclose(at_last[:-1], plain[:-1], atol=1e-5 * np.abs(plain).max())
    np.testing.assert_allclose(at_last[-1] - plain[-1], base.vectors[layer], atol=1e-3)

    at_two = model.capture(text, [layer], "all", steering=base.with_positions([2]))[0][0]
    changed = np.abs(at_two - plain).max(axis=1) > 1e-3
    assert changed.tolist() == [i == 2 for i in range(n)]

    # A capture reads no generated token: 'generated' would steer nothing, so it raises.
    with pytest.raises(sl.InvalidArgumentError, match="steering positions 'generated' touch no"):
        model.capture(text, [layer], "all", steering=base.with_positions("generated"))

    named_last = model.capture(text, [layer], "all", steering=base.with_positions("last"))
    np.testing.assert_array_equal(named_last[0][0], at_last)
    prompt_only = model.capture(text, [layer], "all", steering=base.with_positions("prompt"))
    everywhere = model.capture(text, [layer], "all", steering=base)
    np.testing.assert_array_equal(prompt_only[0][0], everywhere[0][0])


def test_generated_positions_start_after_the_prompt(model: sl.Model, prompts: list[str]) -> None:
    """The first new token is predicted at the last prompt position, not a generated one."""
    steer = _steer(model, 7, layer=10, scale=40.0)
    plain = model.generate(prompts, max_new_tokens=6, return_ids=True)
    on_generated = model.generate(
        prompts, steering=steer.with_positions("generated"), max_new_tokens=6, return_ids=True
    )
    on_last = model.generate(
        prompts, steering=steer.with_positions("last"), max_new_tokens=6, return_ids=True
    )
    for p, g, last in zip(plain, on_generated, on_last, strict=True):
        assert g[0] == p[0]
        assert g != p or last != p  # a vector this large changes something
