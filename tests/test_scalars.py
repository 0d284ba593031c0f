"""sl.ActivationScalars (activation scaling, Stoehr et al. 2024) on the default quantized
model: training flips answers for each kind, beta 0 / zero parameters are exactly the
unsteered model, static modules are tied to their token layout, files round-trip and
refuse other models, and every bad input raises with a message."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import steerlab as sl

# Four prompts of one token length (14 for SmolLM2) whose model answer we flip to the
# other name; held-out prompts share the template, not the names.
PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "When Anna and Tom went to the park, Tom gave a ball to",
    "When Lucy and Mark went to the shop, Mark gave a book to",
    "When Sara and Paul went to the beach, Paul gave a hat to",
]
TARGETS = [" John", " Tom", " Mark", " Paul"]
FOILS = [" Mary", " Anna", " Lucy", " Sara"]


def ids(model: Any, words: list[str]) -> list[int]:
    return [model.encode(w, add_special_tokens=False)[0] for w in words]


def logit_diff(model: Any, logits: np.ndarray) -> np.ndarray:
    t, f = ids(model, TARGETS), ids(model, FOILS)
    return np.array([logits[i, t[i]] - logits[i, f[i]] for i in range(len(t))])


@pytest.fixture(scope="module")
def fitted(model: Any) -> dict[str, sl.ActivationScalars]:
    out = {}
    for kind in ("scalar", "vector", "dynamic"):
        out[kind] = sl.ActivationScalars.fit(
            model,
            PROMPTS,
            TARGETS,
            FOILS,
            kind=kind,
            layers=range(6, 30),
            steps=12,
            lr=5e-2,
            batch_size=4,
            seed=0,
        )
    return out


@pytest.mark.parametrize("kind", ["scalar", "vector", "dynamic"])
def test_training_flips_the_answers(model: Any, fitted: dict[str, Any], kind: str) -> None:
    sc = fitted[kind]
    before = logit_diff(model, model.logits(PROMPTS))
    after = logit_diff(model, model.logits(PROMPTS, steering=sc))
    assert (before < 0).all(), before  # the model answers with the foil ...
    assert (after > 0).all(), (kind, after)  # ... and the trained module flips it
    assert len(sc.history) == 12 and sc.history[-1]["logit_diff"] > sc.history[0]["logit_diff"]
    assert {"effectiveness", "faithfulness", "minimality", "logit_diff"} <= set(sc.history[0])
    assert sc.history[0]["faithfulness"] == pytest.approx(0.0, abs=1e-4)
    assert sc.training["seconds"] > 0 and sc.training["steps_done"] == 12
    # beta scales the effect: for ActivScalar a negative beta pushes the other way (the
    # additive and dynamic kinds promise no such symmetry).
    if kind == "scalar":
        rev = logit_diff(model, model.logits(PROMPTS, steering=sc * -1.0))
        assert (rev < before).all(), (rev, before)
    half = logit_diff(model, model.logits(PROMPTS, steering=sc * 0.5))
    assert half.mean() > before.mean(), (kind, half, before)


def test_parameter_counts(model: Any, fitted: dict[str, Any]) -> None:
    d, n = model.d_model, 24 * 2
    assert fitted["scalar"].n_params == 14 * n
    assert fitted["vector"].n_params == 14 * d * n
    assert fitted["dynamic"].n_params == (d + 1) * n
    assert fitted["scalar"].layout == 14 and fitted["dynamic"].layout is None
    assert 0 < fitted["scalar"].n_nonzero() <= fitted["scalar"].n_params
    assert fitted["scalar"].params[("mlp_out", 6)].shape == (14,)
    assert fitted["vector"].params[("attn_out", 29)].shape == (14, d)
    assert fitted["dynamic"].params[("attn_out", 6)].shape == (d + 1,)


@pytest.mark.parametrize("kind", ["scalar", "vector", "dynamic"])
def test_beta_zero_and_zero_parameters_are_exactly_unsteered(
    model: Any, fitted: dict[str, Any], kind: str
) -> None:
    base = model.logits(PROMPTS)
    assert np.array_equal(model.logits(PROMPTS, steering=fitted[kind] * 0.0), base)
    sc = fitted[kind]
    zero = sl.ActivationScalars(
        kind,
        {k: np.zeros(v.size, np.float32) for k, v in sc.params.items()},
        d_model=model.d_model,
        n_layers=model.n_layers,
        fingerprint=model.fingerprint,
        layout=sc.layout,
    )
    assert np.array_equal(model.logits(PROMPTS, steering=zero), base)


def test_per_row_lists_and_generation(model: Any, fitted: dict[str, Any]) -> None:
    sc = fitted["scalar"]
    base = model.logits(PROMPTS)
    alone = model.logits(PROMPTS, steering=sc)
    mixed = model.logits(PROMPTS, steering=[sc, sc * 0.0, None, sc])
    np.testing.assert_allclose(mixed[[0, 3]], alone[[0, 3]], atol=1e-4)
    np.testing.assert_array_equal(mixed[[1, 2]], base[[1, 2]])
    # Generation: the static module acts on the prompt, the answer comes out flipped.
    out = model.generate(PROMPTS[:2], steering=sc, max_new_tokens=2, temperature=0.0)
    assert [o.lstrip().split()[0].strip(".,") for o in out] == ["John", "Tom"], out
    explicit = model.generate(["Hi"], steering=fitted["dynamic"], max_new_tokens=3, temperature=0.0)
    with model.steering(fitted["dynamic"]):
        assert model.generate(["Hi"], max_new_tokens=3, temperature=0.0) == explicit


def test_static_modules_refuse_another_length_and_dynamic_ones_transfer(
    model: Any, fitted: dict[str, Any]
) -> None:
    longer = ["When Mary and John went to the big store, John gave a drink to"]
    for kind in ("scalar", "vector"):
        with pytest.raises(sl.ShapeError, match=r"trained on prompts of 14 tokens.*DynScalar"):
            model.logits(longer, steering=fitted[kind])
    base = model.logits(longer)
    steered = model.logits(longer, steering=fitted["dynamic"])
    t, f = ids(model, [" John"])[0], ids(model, [" Mary"])[0]
    assert steered[0, t] - steered[0, f] > base[0, t] - base[0, f]


def test_training_runs_on_f32(tiny_llama_dir: Path) -> None:
    m = sl.Model.load(tiny_llama_dir, dtype="f32")
    prompts = ["a b c", "d e f"]
    sc = sl.ActivationScalars.fit(
        m, prompts, [" g", " h"], [" b", " e"], steps=3, batch_size=2, layers=[0, 1], lr=0.1
    )
    assert len(sc.history) == 3 and sc.training["model_dtype"] == m.dtype


def test_to_pandas_plot_and_repr(model: Any, fitted: dict[str, Any]) -> None:
    pytest.importorskip("pandas")
    df = fitted["scalar"].to_pandas()
    assert list(df.columns) == ["site", "layer", "position", "token", "alpha"]
    assert len(df) == fitted["scalar"].n_params
    assert df["token"].iloc[:14].tolist() == [model.decode([i]) for i in model.encode(PROMPTS[0])]
    assert "norm" in fitted["vector"].to_pandas().columns
    assert {"w_norm", "bias"} <= set(fitted["dynamic"].to_pandas().columns)
    assert "ActivScalar" in repr(fitted["scalar"]) and "n_params=672" in repr(fitted["scalar"])


def test_save_load_round_trip_and_refusals(
    model: Any, fitted: dict[str, Any], tmp_path: Path, tiny_llama_dir: Path
) -> None:
    for kind, sc in fitted.items():
        p = tmp_path / f"{kind}.safetensors"
        sc.save(p)
        back = sl.ActivationScalars.load(p, model)
        assert back == sc and back.history == sc.history and back.training == sc.training
        np.testing.assert_array_equal(
            model.logits(PROMPTS, steering=back), model.logits(PROMPTS, steering=sc)
        )
    tiny = sl.Model.load(tiny_llama_dir, dtype="f32")
    with pytest.raises(sl.SteerlabError, match="fingerprint"):
        sl.ActivationScalars.load(tmp_path / "scalar.safetensors", tiny)
    with pytest.raises(sl.SteerlabError):
        tiny.logits(["a b"], steering=fitted["dynamic"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(sl.ModelFormatError):
        sl.ActivationScalars.load(bad, model)
    with pytest.raises(sl.ModelNotFoundError, match=r"missing\.safetensors: file not found"):
        sl.ActivationScalars.load(tmp_path / "missing.safetensors", model)
    # A learned-module file of another kind is refused by kind.
    other = tmp_path / "other.safetensors"
    fitted["scalar"].save(other)
    meta, tensors = sl._core.load_learned(other)
    sl._core.save_learned(other, meta.replace('"activation_scalars"', '"controller"'), tensors)
    with pytest.raises(sl.ModelFormatError, match="holds a 'controller' module"):
        sl.ActivationScalars.load(other, model)


def test_pickle_and_copy(fitted: dict[str, Any]) -> None:
    sc = fitted["dynamic"] * 0.5
    assert pickle.loads(pickle.dumps(sc)) == sc
    assert copy.deepcopy(sc) == sc and (sc * 2.0).beta == 1.0 and (-sc).beta == -0.5
    with pytest.raises(sl.DivisionByZeroError):
        sc / 0


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (
            {"targets": TARGETS[:3]},
            sl.InvalidArgumentError,
            "targets has 3 entries but prompts has 4",
        ),
        (
            {"foils": TARGETS},
            sl.InvalidArgumentError,
            r"targets\[0\] ' John' and foils\[0\] ' John'",
        ),
        ({"targets": ["", *TARGETS[1:]]}, sl.InvalidArgumentError, "targets"),
        ({"steps": 0}, sl.InvalidArgumentError, "steps"),
        ({"lr": float("nan")}, sl.InvalidArgumentError, "lr"),
        ({"lr": float("inf")}, sl.InvalidArgumentError, "lr"),
        ({"kind": "scalars"}, sl.InvalidArgumentError, "kind must be one of"),
        ({"sites": ("attn",)}, sl.InvalidArgumentError, "unknown site"),
        ({"layers": [3, 3]}, sl.InvalidArgumentError, "repeat a layer"),
        ({"layers": [30]}, sl.OutOfRangeError, "30"),
        ({"sparsity": -1.0}, sl.InvalidArgumentError, "sparsity"),
        ({"keep": "first"}, sl.InvalidArgumentError, "keep"),
        (
            {
                "prompts": [
                    *PROMPTS[:3],
                    "When Mary and John went to the big store, John gave a drink to",
                ]
            },
            sl.ShapeError,
            "one token length.*kind='dynamic'",
        ),
    ],
)
def test_bad_inputs_raise(model: Any, kwargs: dict[str, Any], err: type, match: str) -> None:
    args = {"prompts": PROMPTS, "targets": TARGETS, "foils": FOILS, "steps": 1, **kwargs}
    with pytest.raises(err, match=match):
        sl.ActivationScalars.fit(
            model, args.pop("prompts"), args.pop("targets"), args.pop("foils"), **args
        )


def test_a_string_is_one_item(model: Any) -> None:
    sc = sl.ActivationScalars.fit(
        model, PROMPTS[0], " John", " Mary", steps=2, layers=[10], progress=False
    )
    assert sc.training["n_records"] == 1


def test_ctrl_c_keeps_the_completed_steps(model: Any) -> None:
    """A real SIGINT during fit (as Ctrl-C or Jupyter's stop button sends): fit stops
    within a step, warns, and returns the modules of the completed steps."""
    import os
    import signal
    import threading
    import time

    sent: dict[str, float] = {}

    def fire() -> None:
        sent["at"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(4.0, fire)  # the fit below takes minutes; a step ~0.5 s
    timer.start()
    try:
        with pytest.warns(sl.TrainingInterrupted, match=r"fit ActivScalar stopped by Ctrl-C"):
            sc = sl.ActivationScalars.fit(
                model, PROMPTS, TARGETS, FOILS, steps=2000, batch_size=4, layers=[10, 20]
            )
        stopped = time.monotonic()
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, old)
    assert 0 < len(sc.history) < 2000 and sc.training["interrupted"] is True
    assert stopped - sent["at"] < 5.0, "fit went on long after Ctrl-C"
    model.logits(PROMPTS[:1], steering=sc)  # usable


def test_an_edit_too_large_to_normalise_raises_for_every_operation(model: Any) -> None:
    """A finite edit whose squared norm overflows f32 would be normalised to zeros by the
    next RMSNorm (uniform logits, silently): the fixed operations and the learned
    modules refuse it alike."""
    big = np.full(model.d_model, 1e25, np.float32)
    with pytest.raises(sl.InvalidArgumentError, match="too large to normalise"):
        model.logits(PROMPTS[:1], steering=sl.Steering.add(5, big))
    sc = sl.ActivationScalars(
        "scalar",
        {("mlp_out", 5): np.full(14, 1.0, np.float32)},
        d_model=model.d_model,
        n_layers=model.n_layers,
        fingerprint=model.fingerprint,
        layout=14,
    )
    with pytest.raises(sl.InvalidArgumentError, match=r"ActivScalar.*too large to normalise"):
        model.logits(PROMPTS[:1], steering=sc * 1e30)
    with pytest.raises(sl.InvalidArgumentError, match="beta"):
        sc * 1e39


def test_dynamic_scalars_in_a_batch_equal_the_row_alone(model: Any) -> None:
    # One row of eight chat prompts with a DynScalar probe (the server batches requests
    # this way): the row's logits equal the row alone, bit for bit. A batched matmul
    # for alpha = w.h + b gave 0.51 apart here.
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(model.d_model) * 0.01).astype(np.float32)
    st = sl.ActivationScalars(
        "dynamic",
        {("mlp_out", 10): np.concatenate([w, [3.0]]).astype(np.float32)},
        d_model=model.d_model,
        n_layers=model.n_layers,
        fingerprint=model.fingerprint,
    )
    p = model.chat_prompt([{"role": "user", "content": "How was your week?"}])
    alone = model.logits([p], steering=[st])[0]
    for b in (7, 8, 9):
        batch = model.logits([p] * b, steering=[st] + [None] * (b - 1), batch_size=b)
        np.testing.assert_array_equal(batch[0], alone)
        shared = model.logits([p] * b, steering=st, batch_size=b)
        np.testing.assert_array_equal(shared[b - 1], alone)
