"""sl.evaluate.answer_flips against a numpy recomputation from model.logits, the
identity steering (alpha 0, None) giving exactly no change, per-row steering, bad
input, and the activation-scaling plots (plot_scalars, plot_beta_sweep,
plot_answer_flips)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")

from steerlab.evaluate import (  # noqa: E402
    AnswerFlips,
    answer_flips,
    answer_flips_sweep,
    answer_logit_diff,
)

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "def fibonacci(n):",
    "Hello there",
    "One, two, three,",
    "The cat sat on the",
]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path) -> Any:
    return sl.Model.load(str(tiny_llama_dir))


def _letters(model: Any) -> list[str]:
    """Lower-case letters that are one token each for `model`."""
    return [c for c in "abcdefghijklmnopqrstuvwxyz" if len(model.encode(c, False)) == 1]


def _ref_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _ref_kl_other(l0: np.ndarray, l1: np.ndarray, t: int, f: int) -> float:
    """KL(p0 || p1) over the vocabulary without t and f, written the plain way."""
    keep = np.array([j not in (t, f) for j in range(l0.shape[0])])
    lp, lq = _ref_log_softmax(l0[keep]), _ref_log_softmax(l1[keep])
    p = np.exp(lp)
    return float(np.sum(np.where(p > 0, p * (lp - lq), 0.0)))


def _reference(model: Any, prompts: list[str], t: list[str], f: list[str], steering: Any) -> dict:
    with model.steering(None):
        l0 = model.logits(prompts).astype(np.float64)
    l1 = model.logits(prompts, steering).astype(np.float64)
    ti = [model.encode(s, False)[0] for s in t]
    fi = [model.encode(s, False)[0] for s in f]
    before = np.array([l0[i, ti[i]] - l0[i, fi[i]] for i in range(len(prompts))])
    after = np.array([l1[i, ti[i]] - l1[i, fi[i]] for i in range(len(prompts))])
    kl = np.array([_ref_kl_other(l0[i], l1[i], ti[i], fi[i]) for i in range(len(prompts))])
    return {"before": before, "after": after, "kl": kl, "t": ti, "f": fi}


def _flip_pair(model: Any, prompt: str, steering: Any) -> tuple[str, str]:
    """Two one-token letters (target, foil) the unsteered model ranks foil first and the
    steered model target first (so the steering flips this record)."""
    letters = _letters(model)
    ids = [model.encode(c, False)[0] for c in letters]
    with model.steering(None):
        l0 = model.logits(prompt)[0, ids].astype(np.float64)
    l1 = model.logits(prompt, steering)[0, ids].astype(np.float64)
    for a in range(len(ids)):
        for b in range(len(ids)):
            if a != b and l0[a] - l0[b] < 0 and l1[a] - l1[b] > 0:
                return letters[a], letters[b]
    pytest.fail("no letter pair flips under this steering; pick a stronger one")


STRONG = sl.Steering.scale(1, 3.0, site="mlp_out") + sl.Steering.scale(0, -0.9, site="attn_out")


# ------------------------------------------------------------------------- values


def test_values_match_numpy(tiny: Any) -> None:
    letters = _letters(tiny)
    targets = letters[: len(PROMPTS)]
    foils = letters[len(PROMPTS) : 2 * len(PROMPTS)]
    res = answer_flips(tiny, PROMPTS, targets, foils, steering=STRONG, batch_size=4)
    ref = _reference(tiny, PROMPTS, targets, foils, STRONG)
    assert res.n == len(PROMPTS)
    np.testing.assert_array_equal(res.target_ids, ref["t"])
    np.testing.assert_array_equal(res.foil_ids, ref["f"])
    np.testing.assert_allclose(res.logit_diff_before, ref["before"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.logit_diff_after, ref["after"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.kl, ref["kl"], rtol=1e-9, atol=1e-12)
    assert (res.kl > 0).all()
    flipped = (ref["after"] > 0) & (ref["before"] <= 0)
    np.testing.assert_array_equal(res.flipped, flipped)
    wrong = ref["before"] <= 0
    assert res.n_wrong_before == wrong.sum() > 0
    assert res.flip_rate == pytest.approx(flipped.sum() / wrong.sum())
    assert res.accuracy_before == pytest.approx(np.mean(ref["before"] > 0))
    assert res.accuracy_after == pytest.approx(np.mean(ref["after"] > 0))
    assert res.logit_diff_change == pytest.approx(np.mean(ref["after"] - ref["before"]))
    assert res.kl_other == pytest.approx(ref["kl"].mean())
    right = ~wrong
    expected_reverse = (right & (ref["after"] <= 0)).sum() / right.sum()
    assert res.reverse_flip_rate == pytest.approx(expected_reverse)
    assert res.target_tokens == tuple(targets) and res.foil_tokens == tuple(foils)
    # the lower-level helper gives the same logit differences
    np.testing.assert_allclose(
        answer_logit_diff(tiny, PROMPTS, targets, foils), res.logit_diff_before, atol=1e-6
    )
    np.testing.assert_allclose(
        answer_logit_diff(tiny, PROMPTS, targets, foils, STRONG), res.logit_diff_after, atol=1e-6
    )


def test_kl_is_the_renormalised_kl_without_the_answers(tiny: Any) -> None:
    # the two answer tokens are removed: moving only them leaves the KL at 0 up to
    # float32 logits, while the plain KL over the full vocabulary is far from 0
    prompt = PROMPTS[0]
    with tiny.steering(None):
        base = tiny.logits(prompt)[0].astype(np.float64)
    t, f = tiny.encode("a", False)[0], tiny.encode("b", False)[0]
    moved = base.copy()
    moved[t] += 5.0
    moved[f] -= 3.0
    assert _ref_kl_other(base, moved, t, f) == pytest.approx(0.0, abs=1e-12)
    from steerlab.evaluate import _kl_other

    kl = _kl_other(base[None], moved[None], np.array([t]), np.array([f]))
    assert kl.shape == (1,) and kl[0] == pytest.approx(0.0, abs=1e-12)
    full = float(
        np.sum(np.exp(_ref_log_softmax(base)) * (_ref_log_softmax(base) - _ref_log_softmax(moved)))
    )
    assert full > 1e-3


def test_a_steering_that_flips_is_counted(tiny: Any) -> None:
    target, foil = _flip_pair(tiny, PROMPTS[0], STRONG)
    res = answer_flips(tiny, PROMPTS[0], target, foil, steering=STRONG)
    assert res.n == 1 and res.flipped.tolist() == [True]
    assert res.flip_rate == 1.0 and res.n_flipped == 1
    assert res.accuracy_before == 0.0 and res.accuracy_after == 1.0
    assert res.logit_diff_change > 0 and res.kl_other > 0
    # the other way round the same steering breaks a right answer
    back = answer_flips(tiny, PROMPTS[0], foil, target, steering=STRONG)
    assert back.flipped.tolist() == [False] and np.isnan(back.flip_rate)
    assert back.reverse_flip_rate == 1.0 and back.logit_diff_change < 0


# ---------------------------------------------------------------- identity steerings


@pytest.mark.parametrize(
    "steering",
    [
        None,
        sl.Steering.scale(1, 0.0, site="attn_out"),
        sl.Steering.scale(0, 0.0, site="mlp_out") + sl.Steering.scale(2, 0.0, site="attn_out"),
        STRONG * 0.0,
    ],
    ids=["none", "alpha0", "two_alpha0", "beta0"],
)
def test_identity_steering_changes_nothing_exactly(tiny: Any, steering: Any) -> None:
    letters = _letters(tiny)
    res = answer_flips(tiny, PROMPTS, letters[:6], letters[6:12], steering=steering)
    assert res.n_wrong_before > 0  # so the flip rate is a number, not NaN
    assert res.flip_rate == 0.0 and res.n_flipped == 0
    assert res.logit_diff_change == 0.0
    assert res.kl_other == 0.0 and (res.kl == 0.0).all()
    np.testing.assert_array_equal(res.logit_diff_after, res.logit_diff_before)
    assert res.accuracy_after == res.accuracy_before


def test_baseline_ignores_an_active_steering_block(tiny: Any) -> None:
    letters = _letters(tiny)
    plain = answer_flips(tiny, PROMPTS, letters[:6], letters[6:12], steering=STRONG)
    with tiny.steering(STRONG * -1.0):
        inside = answer_flips(tiny, PROMPTS, letters[:6], letters[6:12], steering=STRONG)
        none = answer_flips(tiny, PROMPTS, letters[:6], letters[6:12])
    np.testing.assert_array_equal(inside.logit_diff_before, plain.logit_diff_before)
    np.testing.assert_array_equal(inside.logit_diff_after, plain.logit_diff_after)
    np.testing.assert_array_equal(none.logit_diff_after, plain.logit_diff_before)


# ------------------------------------------------------------------- steering forms


def test_per_row_steering_list(tiny: Any) -> None:
    letters = _letters(tiny)
    t, f = letters[:6], letters[6:12]
    rows = [None, STRONG, None, STRONG * 0.5, STRONG, None]
    res = answer_flips(tiny, PROMPTS, t, f, steering=rows, batch_size=4)
    for i, row in enumerate(rows):
        single = answer_flips(tiny, PROMPTS[i], t[i], f[i], steering=row)
        assert res.logit_diff_before[i] == pytest.approx(single.logit_diff_before[0], abs=1e-5)
        assert res.logit_diff_after[i] == pytest.approx(single.logit_diff_after[0], abs=1e-5)
        assert res.kl[i] == pytest.approx(single.kl[0], abs=1e-6)
        if row is None:
            assert res.kl[i] == 0.0
            assert res.logit_diff_after[i] == res.logit_diff_before[i]
        else:
            assert res.kl[i] > 0
    # a tuple works too, and an object with to_steering()
    assert answer_flips(tiny, PROMPTS, t, f, steering=tuple(rows)).kl.tolist() == res.kl.tolist()

    class Scalars:
        def to_steering(self) -> Any:
            return STRONG

    obj = answer_flips(tiny, PROMPTS, t, f, steering=Scalars())
    ref = answer_flips(tiny, PROMPTS, t, f, steering=STRONG)
    np.testing.assert_array_equal(obj.logit_diff_after, ref.logit_diff_after)


def test_batch_size_does_not_change_the_result(tiny: Any) -> None:
    letters = _letters(tiny)
    a = answer_flips(tiny, PROMPTS, letters[:6], letters[6:12], steering=STRONG, batch_size=1)
    b = answer_flips(tiny, PROMPTS, letters[:6], letters[6:12], steering=STRONG, batch_size=16)
    np.testing.assert_allclose(a.logit_diff_after, b.logit_diff_after, atol=1e-4)
    np.testing.assert_allclose(a.kl, b.kl, rtol=1e-3, atol=1e-7)


def test_default_model_capitals(model: Any) -> None:
    prompts = [f"The capital of {c} is" for c in ("France", "Italy", "Japan", "Germany")]
    right = [" Paris", " Rome", " Tokyo", " Berlin"]
    wrong = [" Rome", " Paris", " Berlin", " Tokyo"]
    knows = answer_flips(model, prompts, right, wrong)
    assert knows.accuracy_before == 1.0 and np.isnan(knows.flip_rate)
    assert knows.n_wrong_before == 0 and knows.to_dict()["flip_rate"] is None
    assert "n/a" in knows.summary()
    # removing the early MLPs moves the answers towards the foils
    ablate = sum(
        (sl.Steering.scale(layer, -1.0, site="mlp_out") for layer in range(4)), sl.Steering()
    )
    res = answer_flips(model, prompts, wrong, right, steering=ablate)
    ref = _reference(model, prompts, wrong, right, ablate)
    np.testing.assert_allclose(res.logit_diff_before, ref["before"], atol=1e-6)
    np.testing.assert_allclose(res.logit_diff_after, ref["after"], atol=1e-6)
    np.testing.assert_allclose(res.kl, ref["kl"], rtol=1e-9)
    assert res.accuracy_before == 0.0 and res.logit_diff_change > 0 and res.kl_other > 0
    assert res.flip_rate == pytest.approx(res.n_flipped / 4)


# ------------------------------------------------------------------------- sweep


class _Scalars:
    """Stands in for sl.ActivationScalars: to_steering() and ``* beta``."""

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = beta

    def to_steering(self) -> Any:
        return STRONG * self.beta

    def __mul__(self, beta: float) -> _Scalars:
        return _Scalars(self.beta * beta)


class _OnlyToSteering:
    def to_steering(self) -> Any:
        return STRONG


@pytest.mark.parametrize(
    "steering", [STRONG, _Scalars(), _OnlyToSteering()], ids=["steering", "mul", "to_steering"]
)
def test_sweep_matches_answer_flips_at_each_beta(tiny: Any, steering: Any) -> None:
    letters = _letters(tiny)
    t, f = letters[:6], letters[6:12]
    betas = [-1.0, 0.0, 0.5, 1.0]
    sweep = answer_flips_sweep(tiny, PROMPTS, t, f, steering, betas, batch_size=4, name="s")
    assert list(sweep) == betas
    for b, res in sweep.items():
        one = answer_flips(tiny, PROMPTS, t, f, steering=STRONG * b, batch_size=4)
        np.testing.assert_array_equal(res.logit_diff_before, one.logit_diff_before)
        np.testing.assert_allclose(res.logit_diff_after, one.logit_diff_after, atol=1e-6)
        np.testing.assert_allclose(res.kl, one.kl, rtol=1e-9, atol=1e-15)
        assert res.name == f"s beta={b:g}"
    zero = sweep[0.0]
    assert zero.logit_diff_change == 0.0 and zero.kl_other == 0.0 and zero.flip_rate == 0.0
    assert sweep[1.0].kl_other > 0 and sweep[-1.0].kl_other > 0


def test_sweep_per_row_and_bad_input(tiny: Any) -> None:
    letters = _letters(tiny)
    t, f = letters[:3], letters[3:6]
    p = PROMPTS[:3]
    rows = [None, STRONG, {1: np.full(64, 0.5)}]
    sweep = answer_flips_sweep(tiny, p, t, f, rows, [2.0])
    one = answer_flips(tiny, p, t, f, steering=[None, STRONG * 2.0, {1: np.full(64, 1.0)}])
    np.testing.assert_allclose(sweep[2.0].logit_diff_after, one.logit_diff_after, atol=1e-6)
    assert sweep[2.0].kl[0] == 0.0 and sweep[2.0].name == "beta=2"
    with pytest.raises(sl.InvalidArgumentError, match="betas is empty"):
        answer_flips_sweep(tiny, p, t, f, STRONG, [])
    with pytest.raises(sl.InvalidArgumentError, match="betas must be distinct"):
        answer_flips_sweep(tiny, p, t, f, STRONG, [1.0, 1])
    with pytest.raises(sl.InvalidArgumentError, match=r"betas\[1\] must be a finite number"):
        answer_flips_sweep(tiny, p, t, f, STRONG, [1.0, float("nan")])
    with pytest.raises(sl.InvalidTypeError, match=r"betas\[0\] must be a number, got str"):
        answer_flips_sweep(tiny, p, t, f, STRONG, ["1"])
    with pytest.raises(sl.InvalidTypeError, match="betas must be a list of numbers, got float"):
        answer_flips_sweep(tiny, p, t, f, STRONG, 1.0)
    with pytest.raises(sl.InvalidArgumentError, match="a sweep needs a steering"):
        answer_flips_sweep(tiny, p, t, f, None)
    with pytest.raises(
        sl.InvalidArgumentError, match="cannot scale a Steering that holds a project_out"
    ):
        answer_flips_sweep(tiny, p, t, f, sl.Steering.project_out(1, np.ones(64)))
    with pytest.raises(sl.InvalidArgumentError, match="the steering list has 2 entries"):
        answer_flips_sweep(tiny, p, t, f, [STRONG, None])
    with pytest.raises(sl.InvalidArgumentError, match="targets has 2 entries"):
        answer_flips_sweep(tiny, p, t[:2], f, STRONG)


# --------------------------------------------------------------------- the result


def test_result_reports(tiny: Any) -> None:
    pd = pytest.importorskip("pandas")
    letters = _letters(tiny)
    res = answer_flips(tiny, PROMPTS, letters[:6], letters[6:12], steering=STRONG, name="strong")
    frame = res.to_pandas()
    assert isinstance(frame, pd.DataFrame) and len(frame) == res.n
    assert list(frame.columns[:3]) == ["prompt", "target", "foil"]
    assert frame["prompt"].tolist() == PROMPTS
    np.testing.assert_array_equal(
        frame["logit_diff_change"], res.logit_diff_after - res.logit_diff_before
    )
    np.testing.assert_array_equal(frame["flipped"], res.flipped)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["n"] == 6 and d["name"] == "strong" and len(d["records"]) == 6
    assert d["flip_rate"] == pytest.approx(res.flip_rate)
    assert d["kl_other"] == pytest.approx(res.kl_other)
    assert d["records"][2]["target"] == letters[2]
    text = repr(res)
    assert "\n" not in text and text.startswith("<AnswerFlips strong:")
    assert f"{res.n_flipped}/{res.n_wrong_before} wrong answers flipped" in text
    assert "\n" not in res.summary()


def test_result_is_frozen_and_pickles(tiny: Any) -> None:
    letters = _letters(tiny)
    res = answer_flips(tiny, PROMPTS[:3], letters[:3], letters[3:6], steering=STRONG)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        res.kl[0] = 1.0
    for other in (pickle.loads(pickle.dumps(res)), copy.deepcopy(res)):
        assert isinstance(other, AnswerFlips)
        np.testing.assert_array_equal(other.kl, res.kl)
        assert other.prompts == res.prompts and other.metrics() == res.metrics()


# ------------------------------------------------------------------------ bad input


def test_bad_inputs_raise(tiny: Any) -> None:
    letters = _letters(tiny)
    t, f = letters[:3], letters[3:6]
    p = PROMPTS[:3]
    with pytest.raises(sl.InvalidArgumentError, match="targets has 2 entries but prompts has 3"):
        answer_flips(tiny, p, t[:2], f)
    with pytest.raises(sl.InvalidArgumentError, match="foils has 4 entries but prompts has 3"):
        answer_flips(tiny, p, t, letters[3:7])
    with pytest.raises(sl.InvalidArgumentError, match="targets has 3 entries but prompts has 1"):
        answer_flips(tiny, p[0], t, f)  # a str is one prompt, never broadcast
    with pytest.raises(
        sl.InvalidArgumentError, match=r"targets\[1\] is '', which tokenizes to no token"
    ):
        answer_flips(tiny, p, [t[0], "", t[2]], f)
    with pytest.raises(sl.InvalidArgumentError, match=r"foils\[2\] is '', which tokenizes"):
        answer_flips(tiny, p, t, [f[0], f[1], ""])
    # ' Paris' and ' Rome' both start with the tiny tokenizer's space token
    with pytest.raises(
        sl.InvalidArgumentError,
        match=r"targets\[0\] ' Paris' and foils\[0\] ' Rome' start with the same token",
    ):
        answer_flips(tiny, p[0], " Paris", " Rome")
    with pytest.raises(sl.InvalidArgumentError, match=r"targets\[1\] 'b' and foils\[1\] 'b'"):
        answer_flips(tiny, p[:2], ["a", "b"], ["c", "b"])
    with pytest.raises(sl.InvalidArgumentError, match="prompts is empty"):
        answer_flips(tiny, [], [], [])
    with pytest.raises(sl.InvalidTypeError, match=r"targets\[0\] must be a str, got int"):
        answer_flips(tiny, p, [1, 2, 3], f)
    with pytest.raises(sl.InvalidTypeError, match="foils must be a str or a list of str"):
        answer_flips(tiny, p, t, None)
    with pytest.raises(sl.InvalidArgumentError, match="batch_size must be >= 1, got 0"):
        answer_flips(tiny, p, t, f, batch_size=0)
    with pytest.raises(sl.InvalidTypeError, match="batch_size must be an int"):
        answer_flips(tiny, p, t, f, batch_size=2.0)
    with pytest.raises(sl.InvalidTypeError, match="name must be a str or None, got int"):
        answer_flips(tiny, p, t, f, name=3)
    with pytest.raises(sl.InvalidTypeError, match="progress must be True, False or None"):
        answer_flips(tiny, p, t, f, progress="yes")
    with pytest.raises(sl.InvalidTypeError, match=r"steering must be None, a steerlab\.Steering"):
        answer_flips(tiny, p, t, f, steering="strong")
    with pytest.raises(
        sl.InvalidArgumentError, match="the steering list has 2 entries but there are 3 prompts"
    ):
        answer_flips(tiny, p, t, f, steering=[STRONG, None])
    with pytest.raises(sl.ShapeError, match="64"):
        answer_flips(tiny, p, t, f, steering={0: np.ones(7)})
    with pytest.raises(sl.OutOfRangeError, match="out of range"):
        answer_flips(tiny, p, t, f, steering=sl.Steering.scale(9, 0.5, site="mlp_out"))
    with pytest.raises(sl.InvalidArgumentError, match="targets has 2 entries"):
        answer_logit_diff(tiny, p, t[:2], f)


class _NaNModel:
    """Delegates to a real model, but its steered logits hold a NaN (the engine raises
    before that happens; this checks the guard behind it)."""

    def __init__(self, model: Any) -> None:
        self._m = model
        self.steering = model.steering

    def encode(self, *args: Any, **kw: Any) -> Any:
        return self._m.encode(*args, **kw)

    def decode(self, *args: Any, **kw: Any) -> Any:
        return self._m.decode(*args, **kw)

    def logits(self, prompts: Any, steering: Any = None, **kw: Any) -> Any:
        out = self._m.logits(prompts, steering, **kw)
        if steering is not None:
            out[-1, 5] = np.nan
        return out


def test_non_finite_logits_raise(tiny: Any) -> None:
    letters = _letters(tiny)
    with pytest.raises(
        sl.InvalidArgumentError,
        match=r"the steered next-token logits of prompts\[4\] are not finite; the steering",
    ):
        answer_flips(_NaNModel(tiny), PROMPTS, letters[:6], letters[6:12], STRONG, batch_size=5)
    # the engine itself refuses a steering that overflows an activation
    huge = sl.Steering({1: np.full(64, 3e38)}) + sl.Steering({2: np.full(64, 3e38)})
    with pytest.raises(sl.InvalidArgumentError, match=r"non-finite|too large to normalise"):
        answer_flips(tiny, PROMPTS[:2], letters[:2], letters[2:4], steering=huge)


# -------------------------------------------------------------------------- plots


@pytest.fixture
def plt() -> Any:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def _scalar_frame(sites: tuple[str, ...] = ("attn_out", "mlp_out"), n_layers: int = 3) -> Any:
    pd = pytest.importorskip("pandas")
    tokens = ["The", " capital", " of", " France", " is"]
    rows = [
        {"site": s, "layer": layer, "position": p, "token": tok, "alpha": 0.1 * (layer - p)}
        for s in sites
        for layer in range(n_layers)
        for p, tok in enumerate(tokens)
    ]
    return pd.DataFrame(rows)


def _heatmaps(fig: Any) -> list[Any]:
    return [a for a in fig.axes if a.images]


def test_plot_scalars(plt: Any) -> None:
    from matplotlib.figure import Figure

    frame = _scalar_frame()
    fig = sl.plots.plot_scalars(frame)
    assert isinstance(fig, Figure)
    panels = _heatmaps(fig)
    assert [a.get_title() for a in panels] == ["attn_out", "mlp_out"]
    assert len(fig.axes) == 3  # two panels and the colorbar
    image = panels[0].images[0]
    assert image.get_array().shape == (3, 5)
    lo, hi = image.get_clim()
    assert lo == -hi and hi == pytest.approx(0.4)  # centred at 0, the largest |alpha|
    labels = [t.get_text() for t in panels[0].get_xticklabels()]
    assert labels[1] == "1 ' capital'"
    np.testing.assert_allclose(image.get_array()[2, 0], 0.2)

    # an object with to_pandas(); mlp_out first in the table still draws attn_out first
    class Scalars:
        def to_pandas(self) -> Any:
            return frame.iloc[::-1]

    assert [a.get_title() for a in _heatmaps(sl.plots.plot_scalars(Scalars()))] == [
        "attn_out",
        "mlp_out",
    ]
    # one site, another value column, missing cells, a given axes
    one = _scalar_frame(("mlp_out",)).assign(norm=lambda d: d["alpha"].abs()).iloc[1:]
    fig, ax = plt.subplots()
    assert sl.plots.plot_scalars(one, value="norm", ax=ax, vmax=2.0) is fig
    assert len(_heatmaps(fig)) == 1
    assert np.ma.is_masked(ax.images[0].get_array()[0, 0])
    assert ax.images[0].get_clim() == (-2.0, 2.0)
    # sites= picks and orders panels; no token column: positions as labels
    fig = sl.plots.plot_scalars(frame.drop(columns="token"), sites=["mlp_out"], annotate=True)
    (panel,) = _heatmaps(fig)
    assert panel.get_title() == "mlp_out"
    assert [t.get_text() for t in panel.get_xticklabels()] == ["0", "1", "2", "3", "4"]
    assert len(panel.texts) == 15
    # all zeros still draws (alpha initialised at 0)
    zeros = frame.assign(alpha=0.0)
    assert _heatmaps(sl.plots.plot_scalars(zeros))[0].images[0].get_clim() == (-1.0, 1.0)


def test_plot_scalars_bad_input(plt: Any) -> None:
    frame = _scalar_frame()
    with pytest.raises(
        sl.InvalidTypeError, match="takes a pandas DataFrame or an object with to_pandas"
    ):
        sl.plots.plot_scalars([1, 2, 3])
    with pytest.raises(sl.InvalidArgumentError, match=r"missing \['alpha'\]"):
        sl.plots.plot_scalars(frame.drop(columns="alpha"))
    with pytest.raises(sl.InvalidArgumentError, match=r"missing \['beta'\]"):
        sl.plots.plot_scalars(frame, value="beta")
    with pytest.raises(sl.InvalidArgumentError, match="has no rows"):
        sl.plots.plot_scalars(frame.iloc[:0])
    dup = frame.iloc[[0, 0, 1]]
    with pytest.raises(
        sl.InvalidArgumentError, match="more than one row for site 'attn_out', layer 0, position 0"
    ):
        sl.plots.plot_scalars(dup)
    with pytest.raises(sl.InvalidArgumentError, match=r"sites \['resid_post'\] must be"):
        sl.plots.plot_scalars(frame, sites=["resid_post"])
    with pytest.raises(sl.InvalidArgumentError, match="column 'layer' must hold integers"):
        sl.plots.plot_scalars(frame.assign(layer=0.5))
    with pytest.raises(sl.InvalidTypeError, match="column 'alpha' must hold numbers"):
        sl.plots.plot_scalars(frame.assign(alpha="x"))
    with pytest.raises(sl.InvalidArgumentError, match="vmax must be a finite number > 0"):
        sl.plots.plot_scalars(frame, vmax=0)
    _, ax = plt.subplots()
    with pytest.raises(sl.InvalidArgumentError, match="ax has 1 Axes for 2 site panels"):
        sl.plots.plot_scalars(frame, ax=ax)


def _sweep(tiny: Any, betas: list[float]) -> dict[float, Any]:
    letters = _letters(tiny)
    return answer_flips_sweep(tiny, PROMPTS, letters[:6], letters[6:12], STRONG, betas)


def test_plot_beta_sweep(tiny: Any, plt: Any) -> None:
    pd = pytest.importorskip("pandas")
    betas = [0.5, -1.0, 0.0, 1.0]
    results = _sweep(tiny, betas)
    fig = sl.plots.plot_beta_sweep(results)
    assert len(fig.axes) == 2
    left, right = fig.axes
    x, y = left.lines[0].get_data()
    assert list(x) == sorted(betas)
    assert list(y) == [results[b].mean_logit_diff_after for b in sorted(betas)]
    flip = right.lines[0].get_data()[1]
    assert flip[sorted(betas).index(0.0)] == 0.0
    # a list with betas, and overlaying a second method on the same axes
    again = sl.plots.plot_beta_sweep(list(results.values()), betas, ax=fig.axes, label="other")
    assert again is fig and len(left.lines) >= 2
    # a frame of metrics (one row per beta) and a frame of records (one row per record)
    metrics = pd.DataFrame([{"beta": b, **r.metrics()} for b, r in results.items()])
    f2 = sl.plots.plot_beta_sweep(metrics)
    np.testing.assert_allclose(f2.axes[0].lines[0].get_data()[1], y)
    records = pd.concat([r.to_pandas().assign(beta=b) for b, r in results.items()])
    f3 = sl.plots.plot_beta_sweep(records)
    np.testing.assert_allclose(f3.axes[0].lines[0].get_data()[1], y)
    np.testing.assert_allclose(f3.axes[1].lines[0].get_data()[1], flip)


def test_plot_beta_sweep_bad_input(tiny: Any, plt: Any) -> None:
    pd = pytest.importorskip("pandas")
    results = _sweep(tiny, [0.0, 1.0])
    values = list(results.values())
    with pytest.raises(sl.InvalidArgumentError, match="needs betas= with one beta each, got None"):
        sl.plots.plot_beta_sweep(values)
    with pytest.raises(sl.InvalidArgumentError, match="needs betas= with one beta each, got 3"):
        sl.plots.plot_beta_sweep(values, [0.0, 1.0, 2.0])
    with pytest.raises(sl.InvalidArgumentError, match="a beta appears twice"):
        sl.plots.plot_beta_sweep(values, [1.0, 1.0])
    with pytest.raises(sl.InvalidTypeError, match="expected an AnswerFlips"):
        sl.plots.plot_beta_sweep({0.0: "x"})
    with pytest.raises(sl.InvalidTypeError, match="a beta must be a number"):
        sl.plots.plot_beta_sweep({"a": values[0]})
    with pytest.raises(sl.InvalidTypeError, match=r"takes \{beta: AnswerFlips\}"):
        sl.plots.plot_beta_sweep("sweep")
    with pytest.raises(sl.InvalidArgumentError, match="no results to draw"):
        sl.plots.plot_beta_sweep({})
    with pytest.raises(sl.InvalidArgumentError, match=r"missing \['beta'\]"):
        sl.plots.plot_beta_sweep(pd.DataFrame({"flip_rate": [0.1]}))
    with pytest.raises(sl.InvalidArgumentError, match="ax must be two Axes"):
        _, ax = plt.subplots()
        sl.plots.plot_beta_sweep(results, ax=ax)


def test_plot_answer_flips(tiny: Any, plt: Any) -> None:
    from matplotlib.figure import Figure

    letters = _letters(tiny)
    res = answer_flips(tiny, PROMPTS, letters[:6], letters[6:12], steering=STRONG, name="s")
    fig = res.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    points = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert points == res.n
    assert fig.axes[0].get_title().startswith("s: flip rate")
