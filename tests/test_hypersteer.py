"""sl.HyperSteer on the default quantized model, at tiny sizes (one copied block, a few
steps): the contract's calls, factor 0 = unsteered exactly, per-row batches = each row
alone, save/load and the refusal of another model, resume, and the errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("steerlab._core")
import steerlab as sl

STEER = [
    "Mention the ocean.",
    "Talk like a pirate.",
    "Use lots of cooking metaphors.",
    "Answer in a gloomy tone.",
]
BASE = [
    "Describe your morning routine.",
    "What makes a good weekend?",
    "Give me tips for learning to draw.",
    "How do I stay focused at work?",
]


@pytest.fixture(scope="module")
def hs(model: Any) -> sl.HyperSteer:
    return sl.HyperSteer.fit(
        model,
        STEER,
        BASE,
        n_blocks=1,
        epochs=2,
        batch_size=2,
        max_target_tokens=8,
        lr=1e-3,
        progress=False,
    )


@pytest.fixture(scope="module")
def hs_plain(model: Any) -> sl.HyperSteer:
    return sl.HyperSteer.fit(
        model,
        STEER[:2],
        BASE[:2],
        variant="no_context",
        layer=-3,
        n_blocks=1,
        batch_size=2,
        max_target_tokens=6,
        lr=1e-3,
        progress=False,
    )


def test_fit_records_the_run(hs: sl.HyperSteer, model: Any) -> None:
    assert hs.variant == "cross_attention"
    assert hs.layer == int(0.75 * model.n_layers) == 22
    assert hs.n_blocks == 1
    assert len(hs.history) == 4  # 2 epochs x 2 batches of 2
    assert all(np.isfinite(h["ce"]) and h["ce"] > 0 for h in hs.history)
    t = hs.training
    assert t["n_examples"] == 4 and t["steps"] == 4 and t["steps_done"] == 4
    assert t["lr"] == 1e-3 and t["targets"] == "self-distilled (greedy)"
    assert t["n_params"] == hs.n_params > 0
    assert len(t["example_targets"]) == 3 and all(t["example_targets"])
    assert "HyperSteer(variant='cross_attention', layer=22, n_blocks=1" in repr(hs)


def test_default_learning_rate_follows_the_paper() -> None:
    assert sl.hypersteer.default_lr(20) == pytest.approx(8e-5)
    assert sl.hypersteer.default_lr(4) == pytest.approx(8e-5 * 5**0.5)


def test_factor_zero_is_the_unsteered_model_and_factor_one_steers(
    hs: sl.HyperSteer, model: Any
) -> None:
    prompts = hs.prompts(BASE)
    zero = hs.steering(STEER, BASE, factor=0.0)
    plain = model.generate(prompts, max_new_tokens=10, return_ids=True)
    assert model.generate(prompts, steering=zero, max_new_tokens=10, return_ids=True) == plain
    lz = model.logits(prompts[:2], steering=zero[:2])
    lp = model.logits(prompts[:2])
    np.testing.assert_array_equal(lz, lp)
    one = hs.steering(STEER, BASE, factor=1.0)
    lo = model.logits(prompts[:2], steering=one[:2])
    assert np.abs(lo - lp).max() > 1e-3
    v = hs.vectors(STEER, BASE)
    assert v.shape == (4, model.d_model) and v.dtype == np.float32
    np.testing.assert_allclose(one[1].vectors[hs.layer], v[1], rtol=0, atol=0)
    two = hs.steering(STEER[:1], BASE[:1], factor=2.5)
    np.testing.assert_allclose(two[0].vectors[hs.layer], 2.5 * v[0], rtol=1e-6)


def test_many_instructions_in_one_batch_equal_each_row_alone(hs: sl.HyperSteer, model: Any) -> None:
    prompts = hs.prompts(BASE)
    rows = hs.steering(STEER, BASE)
    batch = model.generate(prompts, steering=rows, max_new_tokens=12, return_ids=True)
    for i in range(len(prompts)):
        alone = model.generate(
            prompts[i : i + 1], steering=rows[i : i + 1], max_new_tokens=12, return_ids=True
        )
        assert alone[0] == batch[i], f"row {i}"
    # A row's vector does not depend on the batch it is computed in.
    v_all = hs.vectors(STEER, BASE)
    np.testing.assert_array_equal(hs.vectors(STEER[2:3], BASE[2:3])[0], v_all[2])


def test_cross_attention_vectors_depend_on_the_base_prompt(hs: sl.HyperSteer) -> None:
    v = hs.vectors([STEER[0], STEER[0]], [BASE[0], BASE[1]])
    assert np.abs(v[0] - v[1]).max() > 1e-6
    with pytest.raises(sl.InvalidArgumentError, match="pass base_prompts"):
        hs.vectors(STEER)
    with pytest.raises(sl.InvalidArgumentError, match="pass base_prompts"):
        hs.vector("Mention the ocean.")
    sv = hs.vector("Mention the ocean.", BASE[0], factor=2.0)
    np.testing.assert_allclose(
        sv.vectors[hs.layer], 2.0 * hs.vectors(STEER[:1], BASE[:1])[0], rtol=1e-6
    )


def test_no_context_writes_one_vector_per_instruction(hs_plain: sl.HyperSteer, model: Any) -> None:
    assert hs_plain.variant == "no_context" and hs_plain.layer == model.n_layers - 3
    vec = hs_plain.vector("Mention the ocean")  # an instruction it never saw
    assert isinstance(vec, sl.SteeringVector)
    assert list(vec.vectors) == [hs_plain.layer]
    assert vec.info.method == "hypersteer"
    rows = hs_plain.steering(["Mention the ocean", "Mention the ocean"], BASE[:2])
    np.testing.assert_array_equal(rows[0].vectors[hs_plain.layer], rows[1].vectors[hs_plain.layer])
    np.testing.assert_array_equal(rows[0].vectors[hs_plain.layer], vec.vectors[hs_plain.layer])
    with pytest.raises(sl.InvalidArgumentError, match="reads only the steering prompt"):
        hs_plain.vectors(STEER[:1], BASE[:1])
    out = model.generate(hs_plain.prompts(BASE[:1]), steering=vec, max_new_tokens=6)
    assert isinstance(out[0], str)


def test_save_load_round_trip_and_refusals(
    hs: sl.HyperSteer, model: Any, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    p = tmp_path / "hyper.safetensors"
    hs.save(p)
    back = sl.HyperSteer.load(p, model)
    assert (back.variant, back.layer, back.n_blocks) == (hs.variant, hs.layer, hs.n_blocks)
    assert back.history == hs.history
    assert back.training["n_examples"] == 4
    np.testing.assert_array_equal(back.vectors(STEER, BASE), hs.vectors(STEER, BASE))
    other = sl.Model.load(tiny_llama_dir)
    with pytest.raises((sl.InvalidArgumentError, sl.ShapeError)):
        sl.HyperSteer.load(p, other)
    with pytest.raises(sl.InvalidArgumentError, match="is another model"):
        hs.check_model(other)
    hs.check_model(model)
    # Another kind of learned module.
    vec = sl.SteeringVector({3: np.ones(model.d_model, dtype=np.float32)})
    q = tmp_path / "vec.safetensors"
    vec.save(q)
    with pytest.raises(sl.SteerlabError):
        sl.HyperSteer.load(q, model)
    # A corrupt file.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(sl.ModelFormatError):
        sl.HyperSteer.load(bad, model)
    with pytest.raises(sl.ModelNotFoundError):
        sl.HyperSteer.load(tmp_path / "missing.safetensors", model)


def test_resume_refuses_another_run_and_a_finished_run_does_no_more_steps(
    model: Any, tmp_path: Path
) -> None:
    ck = tmp_path / "ck.safetensors"
    kw: dict[str, Any] = dict(
        n_blocks=1,
        batch_size=1,
        max_target_tokens=4,
        lr=1e-3,
        seed=3,
        progress=False,
        targets=["The sea is calm.", "Arr, matey!"],
    )
    done = sl.HyperSteer.fit(model, STEER[:2], BASE[:2], checkpoint=ck, checkpoint_every=1, **kw)
    assert len(done.history) == 2 and done.training["targets"] == "given"
    with pytest.raises(sl.InvalidArgumentError, match="epochs was 1, now 2"):
        sl.HyperSteer.fit(model, STEER[:2], BASE[:2], epochs=2, resume=ck, **kw)
    again = sl.HyperSteer.fit(model, STEER[:2], BASE[:2], resume=ck, **kw)
    assert again.history == done.history
    np.testing.assert_array_equal(
        again.vectors(STEER[:2], BASE[:2]), done.vectors(STEER[:2], BASE[:2])
    )


def test_resume_continues_the_batch_order(model: Any, tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(
        n_blocks=1,
        batch_size=1,
        max_target_tokens=4,
        lr=1e-3,
        seed=5,
        progress=False,
        epochs=2,
        targets=["The sea is calm today.", "Arr, matey, the sea!"],
    )
    full = sl.HyperSteer.fit(model, STEER[:2], BASE[:2], **kw)
    ck = tmp_path / "mid.safetensors"
    # A run cut after its second step's checkpoint, resumed: the same losses per step
    # (same batches; AdamW's moments restart, so only the first resumed step's loss is
    # bit-equal: it is computed before any update).
    import steerlab.hypersteer as mod

    real = mod._checkpoint
    calls = []

    def cut(*a: Any, **k: Any) -> None:
        real(*a, **k)
        calls.append(a[-1])
        if a[-1] == 2:
            raise KeyboardInterrupt

    mod._checkpoint = cut  # type: ignore[assignment]
    try:
        with pytest.warns(sl.TrainingInterrupted, match="after 2 of 4 steps"):
            sl.HyperSteer.fit(model, STEER[:2], BASE[:2], checkpoint=ck, checkpoint_every=1, **kw)
    finally:
        mod._checkpoint = real  # type: ignore[assignment]
    assert calls == [1, 2]
    resumed = sl.HyperSteer.fit(model, STEER[:2], BASE[:2], resume=ck, **kw)
    assert [h["step"] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.history[:2] == full.history[:2]
    assert resumed.history[2]["loss"] == pytest.approx(full.history[2]["loss"], rel=1e-5)


def test_bad_arguments_raise(model: Any) -> None:
    fit = sl.HyperSteer.fit
    with pytest.raises(sl.InvalidArgumentError, match="2 steering_prompts and 1 base_prompts"):
        fit(model, STEER[:2], BASE[:1])
    with pytest.raises(sl.InvalidArgumentError, match="steering_prompts is empty"):
        fit(model, [], [])
    with pytest.raises(sl.InvalidArgumentError, match="variant must be one of"):
        fit(model, STEER[:1], BASE[:1], variant="lora")
    with pytest.raises(sl.InvalidArgumentError, match="n_blocks must be >= 1"):
        fit(model, STEER[:1], BASE[:1], n_blocks=0)
    with pytest.raises(sl.OutOfRangeError, match="n_blocks 31 is out of range"):
        fit(model, STEER[:1], BASE[:1], n_blocks=31)
    with pytest.raises(sl.OutOfRangeError, match="layer 30 is out of range"):
        fit(model, STEER[:1], BASE[:1], layer=30)
    with pytest.raises(sl.InvalidArgumentError, match="lr must be a finite number > 0"):
        fit(model, STEER[:1], BASE[:1], lr=-1.0)
    with pytest.raises(sl.InvalidTypeError, match=r"steering_prompts\[1\]"):
        fit(model, ["ok", 3], BASE[:2])
    with pytest.raises(sl.InvalidArgumentError, match="1 targets for 2 pairs"):
        fit(model, STEER[:2], BASE[:2], targets=["x"])
    rendered = model.chat_prompt([{"role": "user", "content": BASE[0]}])
    with pytest.raises(sl.InvalidArgumentError, match="already a rendered chat prompt"):
        fit(model, STEER[:1], [rendered])
    with pytest.raises(sl.InvalidTypeError, match=r"model must be a steerlab\.Model"):
        fit("model", STEER[:1], BASE[:1])
    with pytest.raises(sl.InvalidArgumentError, match="chat must be True, False or 'auto'"):
        fit(model, STEER[:1], BASE[:1], chat="yes")


def test_bad_inference_arguments_raise(hs: sl.HyperSteer) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="3 steering_prompts and 2 base_prompts"):
        hs.steering(STEER[:3], BASE[:2])
    with pytest.raises(sl.InvalidArgumentError, match="factor"):
        hs.steering(STEER[:1], BASE[:1], factor=float("nan"))
    with pytest.raises(sl.InvalidTypeError):
        hs.vector(3, BASE[0])  # type: ignore[arg-type]


def test_plot(hs: sl.HyperSteer) -> None:
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    fig = hs.plot()
    assert fig.axes[0].get_xlabel() == "step"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_loader_pairs_feed_fit(model: Any) -> None:
    data = sl.datasets.load_steering_prompts()
    sp, bp = data.split(instructions="held_in", base_prompts="train").pairs(2, seed=1)
    hs = sl.HyperSteer.fit(
        model, sp, bp, n_blocks=1, max_target_tokens=4, batch_size=2, progress=False
    )
    held_out = data.split(instructions="held_out").instructions[:2]
    rows = hs.steering(held_out, bp[:2])
    assert len(rows) == 2


def test_all_but_first_positions(model: Any) -> None:
    p = ["Hello there, how are you"]
    n = len(model.encode(p[0]))
    v = np.ones(model.d_model, dtype=np.float32)
    a = model.logits(p, steering=sl.Steering.add(3, v, positions="all_but_first"))
    b = model.logits(p, steering=sl.Steering.add(3, v, positions=list(range(1, n))))
    np.testing.assert_array_equal(a, b)
    c = model.logits(p, steering=sl.Steering.add(3, v, positions="all"))
    assert np.abs(a - c).max() > 0
    # Generated tokens are steered too.
    g1 = model.generate(
        p,
        steering=sl.Steering.add(3, 4 * v, positions="all_but_first"),
        max_new_tokens=6,
        return_ids=True,
    )
    g2 = model.generate(
        p,
        steering=sl.Steering.add(3, 4 * v, positions=list(range(1, n))),
        max_new_tokens=6,
        return_ids=True,
    )
    assert g1 != g2
    with pytest.raises(sl.InvalidArgumentError, match="touch no token here"):
        model.logits(["a"], steering=sl.Steering.add(3, v, positions="all_but_first"))


def test_mean_pool_round_trips(model: Any, tmp_path: Path) -> None:
    hs = sl.HyperSteer.fit(
        model,
        STEER[:2],
        BASE[:2],
        variant="no_context",
        pool="mean",
        n_blocks=1,
        max_target_tokens=4,
        batch_size=2,
        lr=1e-3,
        targets=["The sea.", "Arr."],
        progress=False,
    )
    assert hs.pool == "mean" and hs.training["pool"] == "mean"
    p = tmp_path / "m.safetensors"
    hs.save(p)
    back = sl.HyperSteer.load(p, model)
    assert back.pool == "mean"
    np.testing.assert_array_equal(back.vectors(STEER), hs.vectors(STEER))
    with pytest.raises(sl.InvalidArgumentError, match="pool must be one of 'last', 'mean'"):
        sl.HyperSteer.fit(model, STEER[:1], BASE[:1], pool="max")
