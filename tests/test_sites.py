"""Sites inside blocks and the intervention operations, from Python.

Component sites (``attn_out``, ``mlp_out``, ``resid_mid``, ``resid_post``) match Hugging
Face transformers' forward hooks (goldens made by ``bench/reference/make_goldens.py
--sites``), the residual identity holds, and each operation does what it says at the
site it names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl
from steerlab import catalog

HERE = Path(__file__).parent
GOLDENS = HERE / "goldens"
FIXTURES = HERE / "fixtures"
SITE_TOL = 1e-3  # max |ours - ref| / RMS(ref) per layer, as the hidden-state parity
COMPONENTS = ("attn_out", "resid_mid", "mlp_out", "resid_post")


def _path(name: str) -> str:
    if name == "smollm2":
        return catalog.smollm2_135m_path()
    if name == "gemma3":
        return catalog.gemma3_270m_path()
    return str(FIXTURES / name)


@pytest.fixture(
    scope="module", params=["smollm2", "gemma3", "tiny_llama", "tiny_qwen2", "tiny_gemma3"]
)
def subject(request: pytest.FixtureRequest) -> tuple[str, sl.Model, dict, dict[str, np.ndarray]]:
    name = request.param
    meta = json.loads((GOLDENS / f"sites_{name}.json").read_text())
    arrays = dict(np.load(GOLDENS / f"sites_{name}.npz"))
    return name, sl.Model.load(_path(name), dtype="f32"), meta, arrays


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    ref64 = ref.astype(np.float64)
    rms = float(np.sqrt(np.mean(ref64**2)))
    return float(np.max(np.abs(ours.astype(np.float64) - ref64))) / max(rms, 1e-30)


def test_component_sites_match_transformers_hooks(subject: tuple) -> None:
    name, model, meta, ref = subject
    assert model.encode(meta["prompt"]) == meta["input_ids"]
    layers = list(range(model.n_layers))
    for site in COMPONENTS:
        ours = model.capture(meta["prompt"], layers, "all", site=site, progress=False)[0]
        assert ours.shape == ref[site].shape, (name, site)
        worst = max(_rel(ours[i], ref[site][i]) for i in layers)
        print(f"[sites] {name} {site}: worst max|err|/RMS = {worst:.3g}")
        assert worst <= SITE_TOL, f"{name} {site}: {worst:.3g} x RMS from transformers"
    embed = model.capture(meta["prompt"], ["embed"], "all", progress=False)[0][0]
    assert _rel(embed, ref["embed"]) <= SITE_TOL


def test_residual_identity_on_real_models(subject: tuple) -> None:
    _name, model, meta, _ = subject
    layers = list(range(model.n_layers))
    get = {
        s: model.capture(meta["prompt"], layers, "all", site=s, progress=False)[0]
        for s in COMPONENTS
    }
    prev = model.capture(meta["prompt"], ["embed"], "all", progress=False)[0][0]
    for i in layers:
        scale = float(np.abs(get["resid_post"][i]).max())
        np.testing.assert_allclose(
            get["resid_mid"][i], prev + get["attn_out"][i], atol=1e-5 * scale
        )
        np.testing.assert_allclose(
            get["resid_post"][i], prev + get["attn_out"][i] + get["mlp_out"][i], atol=1e-5 * scale
        )
        prev = get["resid_post"][i]


@pytest.fixture(scope="module")
def tiny() -> sl.Model:
    return sl.Model.load(str(FIXTURES / "tiny_llama"), dtype="f32")


TEXT = "hello world again and again"


def test_scale_minus_one_removes_a_component(tiny: sl.Model) -> None:
    off = sl.Steering.scale(1, -1.0, site="mlp_out")
    mlp = tiny.capture(TEXT, [1], "all", site="mlp_out", steering=off, progress=False)[0][0]
    assert np.abs(mlp).max() == 0.0
    post = tiny.capture(TEXT, [1], "all", steering=off, progress=False)[0][0]
    mid = tiny.capture(TEXT, [1], "all", site="resid_mid", steering=off, progress=False)[0][0]
    np.testing.assert_array_equal(post, mid)


def test_scale_per_position(tiny: sl.Model) -> None:
    n = len(tiny.encode(TEXT))
    alpha = np.zeros(n, np.float32)
    alpha[2] = 1.0  # double position 2 only
    plain = tiny.capture(TEXT, [0], "all", site="attn_out", progress=False)[0][0]
    s = sl.Steering.scale(0, alpha, site="attn_out")
    got = tiny.capture(TEXT, [0], "all", site="attn_out", steering=s, progress=False)[0][0]
    np.testing.assert_allclose(got[2], 2 * plain[2], rtol=1e-6)
    np.testing.assert_array_equal(np.delete(got, 2, 0), np.delete(plain, 2, 0))
    with pytest.raises(sl.ShapeError, match=r"expected \[1\] .* or \[n\] with n >= "):
        tiny.capture(
            TEXT, [0], site="attn_out", steering=sl.Steering.scale(0, alpha[:2], site="attn_out")
        )


def test_project_out_and_clamp(tiny: sl.Model) -> None:
    rng = np.random.default_rng(0)
    u = rng.standard_normal(tiny.d_model).astype(np.float32)
    unit = u / np.linalg.norm(u)
    ablated = tiny.capture(
        TEXT,
        [2],
        "all",
        site="resid_mid",
        steering=sl.Steering.project_out(2, 3 * u, site="resid_mid"),
        progress=False,
    )[0][0]
    assert np.abs(ablated @ unit).max() < 1e-4
    clamped = tiny.capture(
        TEXT, [2], "all", steering=sl.Steering.clamp(2, u, 5.0, positions=[-1]), progress=False
    )[0][0]
    assert abs(float(clamped[-1] @ unit) - 5.0) < 1e-4
    plain = tiny.capture(TEXT, [2], "all", progress=False)[0][0]
    np.testing.assert_array_equal(clamped[:-1], plain[:-1])
    with pytest.raises(sl.InvalidArgumentError, match="is zero; expected a nonzero direction"):
        sl.Steering.project_out(0, np.zeros(tiny.d_model))
    with pytest.raises(sl.InvalidArgumentError, match="clamp value"):
        sl.Steering.clamp(0, u, float("nan"))


def test_operations_compose_per_row_and_in_generation(tiny: sl.Model) -> None:
    rng = np.random.default_rng(1)
    v = rng.standard_normal(tiny.d_model).astype(np.float32) * 4
    combo = (
        sl.Steering.add(0, v, site="attn_out")
        + sl.Steering.project_out(1, v)
        + sl.Steering.scale(2, 0.5, site="mlp_out", positions="last")
    )
    assert [o.op for o in combo.ops] == ["add", "project_out", "scale"]
    prompts = ["hello world", "again and again and"]
    alone = [tiny.generate([p], max_new_tokens=5, steering=combo)[0] for p in prompts]
    batch = tiny.generate(prompts, max_new_tokens=5, steering=[combo, None])
    assert batch[0] == alone[0]
    assert batch[1] == tiny.generate([prompts[1]], max_new_tokens=5)[0]
    with pytest.raises(
        sl.InvalidArgumentError, match="cannot scale a Steering that holds a project_out"
    ):
        combo * 2.0
    doubled = (
        sl.Steering.add(0, v, site="attn_out") + sl.Steering.scale(2, 0.5, site="mlp_out")
    ) * 2.0
    np.testing.assert_allclose(doubled.ops[0].array, 2 * v, rtol=1e-6)
    np.testing.assert_allclose(doubled.ops[1].array, [1.0])


def test_site_and_operation_arguments_are_checked(tiny: sl.Model) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="unknown site 'mlp'"):
        tiny.capture(TEXT, [0], site="mlp")  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidTypeError, match="site must be a str"):
        sl.Steering.add(0, np.ones(4), site=3)  # type: ignore[arg-type]
    with pytest.raises(sl.OutOfRangeError, match="layer 9 is out of range"):
        tiny.capture(TEXT, [0], steering=sl.Steering.scale(9, 0.1, site="attn_out"))
    with pytest.raises(sl.ShapeError, match=r"expected \[64\]"):
        tiny.capture(TEXT, [0], steering=sl.Steering.add(0, np.ones(3), site="mlp_out"))


def test_operations_pickle_and_compare(tiny: sl.Model) -> None:
    import pickle

    u = np.arange(1, tiny.d_model + 1, dtype=np.float32)
    s = sl.Steering.clamp(1, u, 2.0, site="resid_mid", positions=[0, -1]) + sl.Steering({0: u})
    back = pickle.loads(pickle.dumps(s))
    assert back == s and back is not s
    assert "clamp(resid_mid[1]" in repr(s)


def test_generate_monitored(tiny: sl.Model) -> None:
    prompts = ["hello world", "again and again and"]
    steer = sl.Steering.add(1, np.linspace(-1, 1, tiny.d_model), site="mlp_out")
    runs = tiny.generate_monitored(
        prompts, [0, 2], site="resid_mid", max_new_tokens=5, steering=steer
    )
    plain = tiny.generate(prompts, max_new_tokens=5, steering=steer, return_ids=True)
    first = tiny.capture(prompts, [0, 2], "last", site="resid_mid", steering=steer)
    for r, run in enumerate(runs):
        assert isinstance(run, sl.MonitoredGeneration)
        assert run.ids == plain[r]
        assert run.activations.shape == (2, len(run.ids), tiny.d_model)
        assert run.activations.dtype == np.float32
        # Token 0 was produced by the last prompt position.
        np.testing.assert_allclose(run.activations[:, 0], first[r], rtol=1e-5, atol=1e-5)
    with pytest.raises(sl.OutOfRangeError, match="out of range"):
        tiny.generate_monitored("hi", [7], max_new_tokens=2)
    with pytest.raises(sl.InvalidArgumentError, match="unknown site"):
        tiny.generate_monitored("hi", [0], site="attn", max_new_tokens=2)  # type: ignore[arg-type]
