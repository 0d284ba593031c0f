"""`SteeringVector.optimize`: a trained additive vector generalises to held-out data, its
history and settings, determinism, save/load, bad inputs, Ctrl-C, the loss plot.

Training data: the shipped pirate style set (`steerlab.datasets.load_style`), chat
formatted; "held-out loss" is the mean cross-entropy per token of the held-out pirate
answers (the training loss, on items the vector never saw). Sizes are small (a few
training items, a late layer so backward runs through few blocks) to keep this file to
about a minute on two cores.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl
from steerlab.optimize import TrainingInterrupted

LAYER = 20
N_TRAIN = 8
# Measured with these settings (8 training items, layer 20, batch 4): held-out loss
# 4.762 unsteered -> 4.060 after 15 steps at lr 0.1 on the quantized default model;
# dtype="f32": 4.755 -> 4.215 after 8 steps at lr 0.2 (4.048 after 15 at 0.1). The
# assertion asks for 0.2 nats, under half of the smaller drop.
MARGIN = 0.2
TRAIN_KW: dict[str, Any] = {"steps": 15, "lr": 0.1, "batch_size": 4, "seed": 0, "progress": False}
F32_KW: dict[str, Any] = {"steps": 8, "lr": 0.2}


def _chat(model: sl.Model, requests: tuple[str, ...]) -> list[str]:
    return [model.chat_prompt([{"role": "user", "content": r}]) for r in requests]


def _split(model: sl.Model, split: str, n: int | None = None) -> tuple[list[str], list[str]]:
    data = sl.datasets.load_style("pirate", split)
    return _chat(model, data.prompts)[:n], list(data.completions)[:n]


def _heldout_loss(model: sl.Model, steering: Any) -> float:
    """Mean cross-entropy per completion token of the held-out pirate answers."""
    prompts, completions = _split(model, "heldout")
    lps = model.token_logprobs(
        [p + c for p, c in zip(prompts, completions, strict=True)],
        steering=steering,
        progress=False,
    )
    scored = [lp[len(model.encode(p)) - 1 :] for p, lp in zip(prompts, lps, strict=True)]
    return float(-np.concatenate(scored).mean())


def _train(model: sl.Model, **kw: Any) -> sl.SteeringVector:
    prompts, completions = _split(model, "train", N_TRAIN)
    return sl.SteeringVector.optimize(
        model, prompts, completions, layers=[LAYER], **{**TRAIN_KW, **kw}
    )


@pytest.fixture(scope="module")
def trained(model: sl.Model) -> sl.SteeringVector:
    return _train(model)


@pytest.fixture(scope="module")
def model_f32() -> sl.Model:
    try:
        return sl.Model.load(dtype="f32")
    except sl.ModelNotFoundError as exc:
        pytest.skip(f"default model not installed: {exc}")


# ------------------------------------------------------------------ the shipped style set


def test_style_set_splits() -> None:
    assert "pirate" in sl.datasets.style_names()
    full = sl.datasets.load_style("pirate")
    train = sl.datasets.load_style("Pirate", "train")
    held = sl.datasets.load_style("pirate", split="heldout")
    assert (len(full), len(train), len(held)) == (48, 36, 12)
    assert (full.split, train.split, held.split) == ("all", "train", "heldout")
    assert held.prompts == full.prompts[3::4]
    assert set(train.prompts) | set(held.prompts) == set(full.prompts)
    assert not set(train.prompts) & set(held.prompts)
    for part in (full, train, held):
        assert len(part.prompts) == len(part.completions) == len(part.negatives)
    assert all(c != n for c, n in zip(full.completions, full.negatives, strict=True))
    assert len(set(full.prompts)) == 48
    # the style is in the completions, not in the neutral answers
    assert sum("matey" in c.lower() for c in full.completions) >= 40
    assert not any("matey" in n.lower() or "arr" in n.lower().split() for n in full.negatives)


def test_style_set_refuses_bad_names() -> None:
    with pytest.raises(sl.InvalidArgumentError, match="unknown style 'ninja'; available: pirate"):
        sl.datasets.load_style("ninja")
    with pytest.raises(sl.InvalidArgumentError, match=r"unknown split 'test'; expected one of"):
        sl.datasets.load_style("pirate", "test")
    with pytest.raises(sl.InvalidTypeError, match="split must be a str, got int"):
        sl.datasets.load_style("pirate", 1)  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidTypeError, match="style name must be a str, got NoneType"):
        sl.datasets.load_style(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------ generalisation


def test_lowers_heldout_loss_quantized(model: sl.Model, trained: sl.SteeringVector) -> None:
    assert model.dtype == "auto"
    before = _heldout_loss(model, None)
    after = _heldout_loss(model, trained)
    assert after < before - MARGIN, (before, after)


def test_lowers_heldout_loss_f32(model_f32: sl.Model) -> None:
    vec = _train(model_f32, **F32_KW)
    before = _heldout_loss(model_f32, None)
    after = _heldout_loss(model_f32, vec)
    assert after < before - MARGIN, (before, after)


# ------------------------------------------------------------------ artifact


def test_history_and_info(trained: sl.SteeringVector) -> None:
    hist = trained.history
    assert len(hist) == TRAIN_KW["steps"]
    for i, rec in enumerate(hist):
        assert {"loss", "grad_norm", "lr", "ce"} <= set(rec), rec
        assert "margin" not in rec
        assert all(math.isfinite(v) for v in rec.values()), rec
        assert rec["lr"] == pytest.approx(TRAIN_KW["lr"])
        assert rec.get("step", i) == i
    # Without negatives the loss is the cross-entropy itself.
    assert [r["loss"] for r in hist] == pytest.approx([r["ce"] for r in hist])
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert trained.info.method == "optimized"
    assert trained.layers == [LAYER]
    t = trained.info.training
    assert t["objective"] == "likelihood"
    assert (t["steps"], t["steps_done"], t["interrupted"]) == (15, 15, False)
    assert (t["lr"], t["batch_size"], t["seed"]) == (0.1, 4, 0)
    assert t["best_loss"] == pytest.approx(min(r["loss"] for r in hist))
    assert hist[t["best_step"]]["loss"] == pytest.approx(t["best_loss"])
    # the history is a copy
    trained.history.clear()
    assert len(trained.history) == TRAIN_KW["steps"]


def test_history_with_negatives_has_margin(model: sl.Model) -> None:
    data = sl.datasets.load_style("pirate", "train")
    vec = sl.SteeringVector.optimize(
        model,
        _chat(model, data.prompts[:2]),
        list(data.completions[:2]),
        negatives=list(data.negatives[:2]),
        layers=[-3],
        steps=2,
        progress=False,
    )
    assert vec.layers == [27]
    assert vec.info.training["objective"] == "preference"
    for rec in vec.history:
        assert {"loss", "grad_norm", "lr", "ce", "margin"} <= set(rec)
        # loss = softplus(-margin) per example, averaged: log(1 + e^-m) >= 0
        assert rec["loss"] > 0 and all(math.isfinite(v) for v in rec.values())


def test_deterministic_for_a_seed(model: sl.Model) -> None:
    small = {"steps": 3, "batch_size": 2}
    a = _train(model, **small)
    b = _train(model, **small)
    assert a.history == b.history
    np.testing.assert_array_equal(a[LAYER], b[LAYER])
    c = _train(model, seed=1, **small)  # another batch order
    assert [r["loss"] for r in c.history] != [r["loss"] for r in a.history]


def test_save_load_round_trip(model: sl.Model, trained: sl.SteeringVector, tmp_path: Path) -> None:
    path = tmp_path / "pirate.safetensors"
    trained.save(path)
    again = sl.SteeringVector.load(path, model)
    assert again == trained
    np.testing.assert_array_equal(again[LAYER], trained[LAYER])
    assert again.info.method == "optimized"
    assert again.history == trained.history
    assert again.info.training == trained.info.training
    assert again.positions == trained.positions


def test_loaded_vector_refuses_another_model(
    trained: sl.SteeringVector, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    path = tmp_path / "pirate.safetensors"
    trained.save(path)
    other = sl.Model.load(tiny_llama_dir)
    with pytest.raises((sl.InvalidArgumentError, sl.ShapeError), match="another model"):
        sl.SteeringVector.load(path, other)


def test_loaded_vector_refuses_another_fingerprint(
    model: sl.Model, trained: sl.SteeringVector, tmp_path: Path
) -> None:
    # Same width and layers, another model's fingerprint in the metadata.
    foreign = sl.SteeringVector(
        trained.vectors, dataclasses.replace(trained.info, fingerprint="0" * 64)
    )
    path = tmp_path / "foreign.safetensors"
    foreign.save(path)
    with pytest.raises(sl.InvalidArgumentError, match="made for another model"):
        sl.SteeringVector.load(path, model)
    adopted = sl.SteeringVector.load(path, model, check_fingerprint=False)
    assert adopted.info.fingerprint == model.fingerprint
    assert adopted.history == trained.history


def test_plot_history_returns_a_figure(trained: sl.SteeringVector) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig = trained.plot_history()
    assert isinstance(fig, Figure)
    (line, *_) = fig.axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx([r["loss"] for r in trained.history])
    plt.close(fig)


def test_plot_history_refuses_an_untrained_vector() -> None:
    vec = sl.SteeringVector({3: np.ones(8, dtype=np.float32)})
    with pytest.raises(sl.InvalidArgumentError, match="has no training history"):
        vec.plot_history()


# ------------------------------------------------------------------ bad inputs

P2 = ["Hello there", "Good morning"]
C2 = [" Arr matey!", " Ahoy!"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompts": [], "completions": []}, sl.InvalidArgumentError, "prompts is empty"),
        (
            {"completions": [" Arr"]},
            sl.InvalidArgumentError,
            "2 prompts but 1 completions; expected one per prompt",
        ),
        (
            {"negatives": [" no"]},
            sl.InvalidArgumentError,
            "2 prompts but 1 negatives; expected one per prompt",
        ),
        ({"steps": 0}, sl.InvalidArgumentError, "steps must be >= 1, got 0"),
        ({"lr": 0.0}, sl.InvalidArgumentError, r"lr must be a finite number > 0.0, got 0.0"),
        ({"lr": -1e-3}, sl.InvalidArgumentError, r"lr must be a finite number > 0.0, got -0.001"),
        ({"lr": float("nan")}, sl.InvalidArgumentError, "lr must be a finite number"),
        ({"batch_size": 0}, sl.InvalidArgumentError, "batch_size must be >= 1, got 0"),
        (
            {"layers": [30]},
            sl.OutOfRangeError,
            r"layer 30 is out of range for a model with 30 layers \(expected -30..29\)",
        ),
        ({"layers": [-31]}, sl.OutOfRangeError, "layer -31 is out of range"),
        (
            {"completions": ["", " Ahoy!"]},
            sl.InvalidArgumentError,
            "pair 0: the completion encodes to no token; expected some text",
        ),
        (
            {"negatives": [" no", ""]},
            sl.InvalidArgumentError,
            "pair 1: the negative encodes to no token; expected some text",
        ),
        (
            {"prompts": ["", "Good morning"]},
            sl.InvalidArgumentError,
            "pair 0: the prompt encodes to no token",
        ),
        ({"prompts": ["a", 3]}, sl.InvalidTypeError, "prompts"),
        ({"init": "vec"}, sl.InvalidTypeError, "init must be a SteeringVector or None, got str"),
    ],
)
def test_bad_inputs(model: sl.Model, kwargs: dict[str, Any], error: type, message: str) -> None:
    args: dict[str, Any] = {
        "prompts": P2,
        "completions": C2,
        "layers": [LAYER],
        "steps": 1,
        "progress": False,
    }
    args.update(kwargs)
    with pytest.raises(error, match=message):
        sl.SteeringVector.optimize(model, **args)


def test_init_for_other_layers_is_refused(model: sl.Model) -> None:
    init = sl.SteeringVector({5: np.zeros(model.d_model, dtype=np.float32)})
    with pytest.raises(
        sl.InvalidArgumentError,
        match=r"init has no vector for layer\(s\) \[20\]; it has layers \[5\]",
    ):
        sl.SteeringVector.optimize(model, P2, C2, layers=[5, LAYER], init=init, steps=1)


def test_init_for_another_model_is_refused(model: sl.Model) -> None:
    init = sl.SteeringVector({LAYER: np.zeros(model.d_model + 1, dtype=np.float32)})
    with pytest.raises(sl.ShapeError, match="made for another model"):
        sl.SteeringVector.optimize(model, P2, C2, layers=[LAYER], init=init, steps=1)


def test_init_is_the_starting_point(model: sl.Model) -> None:
    # lr tiny: one step barely moves the vector away from init.
    start = np.random.default_rng(0).standard_normal(model.d_model).astype(np.float32)
    init = sl.SteeringVector({LAYER: start})
    vec = sl.SteeringVector.optimize(
        model, P2, C2, layers=[LAYER], init=init, steps=1, lr=1e-6, progress=False
    )
    np.testing.assert_allclose(vec[LAYER], start, atol=1e-4)


@pytest.mark.parametrize(
    "build",
    [
        lambda m: sl.SteeringVector.optimize(m, P2, C2, layers=[1]),
        lambda m: sl.SteeringVector.train(m, sl.ContrastPairs.from_texts([("a", "b")]), [1]),
        lambda m: sl.SteeringVector.mean_centring(m, ["a"], ["b"], layers=[1]),
        lambda m: sl.SteeringVector.mean_of(m, ["a"], layers=[1]),
    ],
    ids=["optimize", "train", "mean_centring", "mean_of"],
)
def test_model_must_be_a_model(build: Any) -> None:
    # (was an AttributeError from deep inside: the layers were resolved on the str)
    with pytest.raises(sl.InvalidTypeError, match=r"model must be a steerlab\.Model, got str"):
        build("model")


# ------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_returns_the_best_vector_so_far(
    model: sl.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT (as Ctrl-C or Jupyter's stop button sends) during training, sent
    once three steps have finished: optimize stops, warns, and returns the vector."""
    import steerlab.optimize as opt

    real = opt._core.VectorTrainer
    sent: dict[str, float] = {}
    timers: list[threading.Timer] = []

    def fire() -> None:
        sent["at"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)

    class Trainer:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._inner = real(*args, **kwargs)

        def step(self) -> Any:
            rec = self._inner.step()
            # After the third step, so that the best parameters are not the initial zero
            # vector (the loss of step k is measured with the parameters before its
            # update, so after one step the best parameters are the initial ones).
            if len(self._inner.history) == 3 and not timers:
                timers.append(threading.Timer(0.05, fire))
                timers[0].start()
            return rec

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    monkeypatch.setattr(opt._core, "VectorTrainer", Trainer)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.warns(TrainingInterrupted, match=r"stopped by Ctrl-C after \d+ of 500 steps"):
            # full batches: the loss falls step after step, so the best step is not 0
            vec = _train(model, steps=500, batch_size=N_TRAIN)
        stopped = time.monotonic()
    finally:
        for t in timers:
            t.cancel()
            t.join()
        signal.signal(signal.SIGINT, old)
    assert "at" in sent
    assert stopped - sent["at"] < 5.0, "training went on long after Ctrl-C"
    t = vec.info.training
    assert t["interrupted"] is True
    assert 3 <= t["steps_done"] < 500
    assert t["best_step"] >= 1
    assert len(vec.history) == t["steps_done"]
    assert vec.info.method == "optimized"
    assert np.isfinite(vec[LAYER]).all() and np.linalg.norm(vec[LAYER]) > 0
    # the model still works afterwards
    assert np.isfinite(_heldout_loss(model, vec))


def test_ctrl_c_before_the_first_step_raises(
    model: sl.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing trained yet: the KeyboardInterrupt goes on up, with no warning (the suite
    turns warnings into errors, so a TrainingInterrupted would fail this test)."""
    import steerlab.optimize as opt

    real = opt._core.VectorTrainer

    class Trainer:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._inner = real(*args, **kwargs)

        def step(self) -> Any:
            raise KeyboardInterrupt

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    monkeypatch.setattr(opt._core, "VectorTrainer", Trainer)
    with pytest.raises(KeyboardInterrupt):
        sl.SteeringVector.optimize(model, P2, C2, layers=[LAYER], steps=5, progress=False)


def test_keep_last_or_best(model: sl.Model, trained: sl.SteeringVector) -> None:
    """keep="last" (the default) returns the vector after the last step; keep="best" the
    parameters that gave the lowest batch loss (the same run, so the same history)."""
    best = _train(model, keep="best")
    assert trained.info.training["keep"] == "last" and best.info.training["keep"] == "best"
    assert [r["loss"] for r in best.history] == [r["loss"] for r in trained.history]
    # The best parameters predate at least the last update, so they are not the last.
    assert not np.array_equal(best[LAYER], trained[LAYER])
    with pytest.raises(sl.InvalidArgumentError, match="keep must be 'last' or 'best', got 'first'"):
        _train(model, keep="first", steps=1)
