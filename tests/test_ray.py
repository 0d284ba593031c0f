"""steerlab.ray on a local Ray cluster started here (2 CPUs): every result equals the
single-process path on the same data."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import steerlab.ray as slr  # noqa: E402
from steerlab.stats import ActivationStats, contrast_vector  # noqa: E402

# Ray Data's own deprecation warnings (its DataContext sets deprecated fields on creation).
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`\w+` is deprecated:DeprecationWarning:ray\.data\.context"
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray instance with 2 CPUs; its temp dir under pytest's (or a short one:
    Ray's socket paths must stay under 107 characters)."""
    temp = tmp_path_factory.mktemp("ray")
    if len(str(temp)) > 40:
        temp = Path(tempfile.mkdtemp(prefix="ray", dir=tmp_path_factory.getbasetemp()))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(temp),
        configure_logging=False,
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def _by_id(ds: Any) -> list[dict[str, Any]]:
    return sorted(ds.take_all(), key=lambda r: r["id"])


TEXTS = [
    "The sea was calm that morning.",
    "I love this!",
    "Quarterly revenue rose by four percent, beating estimates.",
    "def fibonacci(n):",
    "She opened the door and",
    "Cats sleep most of the day.",
    "x",
]


# ---------------------------------------------------------------- without a cluster


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_import_steerlab_does_not_import_ray() -> None:
    out = _run("import sys, steerlab; print('ray' in sys.modules, 'ray.data' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_without_ray_the_import_names_the_extra() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            raise ImportError(f'No module named {name!r} (blocked)')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import steerlab\n"
        "try:\n"
        "    import steerlab.ray\n"
        "except steerlab.SteerlabError as e:\n"
        "    print(type(e).__name__, isinstance(e, ImportError), e)\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MissingExtraError True steerlab.ray needs ray")
    assert "pip install 'steerlab[ray]'" in out.stdout


# ---------------------------------------------------------------- capture


def test_capture_equals_model_capture(cluster: None, model: Any) -> None:
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    rows = _by_id(slr.capture(ds, model.path, layers=[2, -1], batch_size=3, concurrency=2))
    ref = model.capture(TEXTS, [2, -1], progress=False)
    got = np.stack([r["activations"] for r in rows])
    assert got.dtype == np.float32 and got.shape == ref.shape == (len(TEXTS), 2, model.d_model)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert [r["text"] for r in rows] == TEXTS  # the input columns are kept

    # the callable class itself, through map_batches, with position "all" (ragged rows)
    out = ds.map_batches(
        slr.Capture,
        fn_constructor_kwargs={"layers": 4, "position": "all", "site": "mlp_out"},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=4,
        batch_format="numpy",
    )
    rows = _by_id(out)
    ref_all = model.capture(TEXTS, 4, "all", site="mlp_out", progress=False)
    for r, a in zip(rows, ref_all, strict=True):
        assert r["activations"].shape == a.shape
        np.testing.assert_allclose(r["activations"], a, rtol=0, atol=1e-5)


def test_capture_checks_arguments_on_the_driver(cluster: None, model: Any) -> None:
    ds = ray.data.from_items([{"id": 0, "sentence": "hello"}])
    with pytest.raises(sl.InvalidArgumentError, match=r"ds has no column\(s\) \['text'\]"):
        slr.capture(ds, layers=1)
    with pytest.raises(sl.InvalidArgumentError, match="unknown position 'first'"):
        slr.capture(ds, layers=1, position="first", text_column="sentence")
    with pytest.raises(sl.InvalidTypeError, match=r"ds must be a ray\.data\.Dataset, got list"):
        slr.capture(["hello"], layers=1)  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidArgumentError, match="concurrency must be >= 1, got 0"):
        slr.capture(ds, layers=1, text_column="sentence", concurrency=0)
    with pytest.raises(
        sl.InvalidArgumentError, match=r"concurrency must be an int or a \(min, max\) pair"
    ):
        slr.capture(ds, layers=1, text_column="sentence", concurrency=(1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidArgumentError, match="dtype must be 'auto'"):
        slr.capture(ds, layers=1, text_column="sentence", dtype="f16")
    with pytest.raises(sl.InvalidArgumentError, match="model is a Model loaded with dtype="):
        slr.capture(ds, model, layers=1, text_column="sentence", dtype="f32")


# ---------------------------------------------------------------- statistics, vectors


def test_pair_stats_give_the_single_process_vectors(cluster: None, model: Any) -> None:
    pairs = sl.ContrastPairs.from_texts(sl.datasets.sentiment_pairs()[:10])
    ds = slr.from_pairs(pairs)
    diffs = slr.pair_stats(ds, layers=[3, -1], batch_size=3, concurrency=2)
    assert diffs.count == 10 and diffs.layers == [3, model.n_layers - 1]
    assert diffs.source["position"] == "last" and diffs.source["data"] == "differences"
    for method in ("mean_diff", "pca_diff", "pca_center"):
        ref = sl.SteeringVector.train(model, pairs, [3, -1], method=method, progress=False)
        got = contrast_vector(diffs, method, model=model)
        for layer in ref.layers:
            scale = float(np.abs(ref[layer]).max())
            np.testing.assert_allclose(got[layer], ref[layer], rtol=0, atol=1e-5 * scale)

    vec = slr.train_vector(ds, layers=-2, method="pca_center", batch_size=4)
    ref = sl.SteeringVector.train(model, pairs, -2, method="pca_center", progress=False)
    assert vec.layers == ref.layers == [model.n_layers - 2]
    scale = float(np.abs(ref[vec.layers[0]]).max())
    np.testing.assert_allclose(vec[vec.layers[0]], ref[vec.layers[0]], rtol=0, atol=1e-5 * scale)
    assert vec.info.fingerprint == model.fingerprint and vec.info.n_samples == 10
    assert vec.info.residual_norms == pytest.approx(ref.info.residual_norms)
    assert vec.info.scores == pytest.approx(ref.info.scores, rel=1e-6)
    vec.check_model(model)


def test_grouped_stats_and_mean_centring(cluster: None, model: Any) -> None:
    target = list(sl.datasets.load_topic("ocean").texts[:6])
    background = sl.datasets.background_corpus()[:8]
    rows = [{"text": t, "group": "target"} for t in target]
    rows += [{"text": t, "group": "background"} for t in background]
    grouped = slr.stats(
        ray.data.from_items(rows),
        layers=[5],
        position="mean_skip_first",
        group_column="group",
        covariance=True,
        batch_size=5,
    )
    assert isinstance(grouped, dict) and sorted(grouped) == ["background", "target"]
    for name, texts in (("target", target), ("background", background)):
        acts = model.capture(texts, [5], "mean_skip_first", progress=False)
        ref = ActivationStats.from_activations(acts, [5])
        assert grouped[name].count == len(texts)
        np.testing.assert_allclose(grouped[name].mean(), ref.mean(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(grouped[name].comoment(), ref.comoment(), rtol=1e-9, atol=1e-9)

    vec = slr.mean_centring(target, background, layers=[5, -1], batch_size=4)
    ref_vec = sl.SteeringVector.mean_centring(model, target, background, layers=[5, -1])
    for layer in ref_vec.layers:
        scale = float(np.abs(ref_vec[layer]).max())
        np.testing.assert_allclose(vec[layer], ref_vec[layer], rtol=0, atol=1e-6 * scale)
    assert vec.info.method == "mean_centring" and vec.info.n_samples == 6


# Ray warns that an actor pool got fewer inputs than actors (the empty dataset: none).
@pytest.mark.filterwarnings("ignore:The minimum number of concurrent actors:UserWarning")
def test_stats_errors(cluster: None) -> None:
    ds = ray.data.from_items([{"text": "hello"}])
    # the checking task loads the model: Ray re-raises the steerlab error as itself
    with pytest.raises(sl.OutOfRangeError, match="layer 99 is out of range"):
        slr.stats(ds, layers=99)
    with pytest.raises(sl.InvalidArgumentError, match="read position 'all' does not give"):
        slr.stats(ds, layers=1, position="all")
    empty = ds.limit(0)
    with pytest.raises(sl.InvalidArgumentError, match="ds has no rows"):
        slr.stats(empty, layers=1)
    with pytest.raises(sl.InvalidArgumentError, match="unknown method 'logistic'"):
        slr.train_vector(ds, layers=1, method="logistic")
    with pytest.raises(sl.InvalidArgumentError, match=r"no column\(s\) \['positive', 'negative'\]"):
        slr.train_vector(ds, layers=1)


# ---------------------------------------------------------------- generation, sweeps


PROMPTS = ["The weather today is", "My favourite food is", "Once upon a time"]


@pytest.fixture(scope="module")
def happy(model: Any) -> Any:
    pairs = sl.ContrastPairs.from_texts(sl.datasets.sentiment_pairs()[:8])
    return sl.SteeringVector.train(model, pairs, [8], progress=False)


def test_generate_with_per_row_steering_equals_model_generate(
    cluster: None, model: Any, happy: Any
) -> None:
    names = ["happy", None, "happy", "sad", "happy", ""]
    coefs = [4.0, 1.0, -6.0, 3.0, 0.0, 2.0]
    prompts = PROMPTS * 2
    ds = ray.data.from_items(
        [
            {"id": i, "prompt": p, "vector": n, "coefficient": c}
            for i, (p, n, c) in enumerate(zip(prompts, names, coefs, strict=True))
        ]
    )
    vectors = {"happy": happy, "sad": sl.Steering({8: -happy[8]})}
    out = slr.generate(
        ds,
        model,  # a Model travels as its path and is reloaded on the worker
        vectors=vectors,
        vector_column="vector",
        coefficient_column="coefficient",
        max_new_tokens=10,
        batch_size=4,
        perplexity=True,
        topic="ocean",
    )
    rows = _by_id(out)
    steering = [None if not n else vectors[n] * c for n, c in zip(names, coefs, strict=True)]
    ref = model.generate(prompts, steering=steering, max_new_tokens=10)
    assert [r["generation"] for r in rows] == ref
    assert len(set(ref)) > 3  # the steerings differ
    ppl = model.perplexity([t or " " for t in ref], prefix=prompts, progress=False)
    np.testing.assert_allclose([r["perplexity"] for r in rows], ppl, rtol=1e-6)
    topic = sl.datasets.load_topic("ocean")
    assert [r["on_topic"] for r in rows] == [sl.datasets.topic_score(t, topic) for t in ref]


def test_generate_samples_with_each_rows_seed(cluster: None, model: Any, happy: Any) -> None:
    ds = ray.data.from_items(
        [{"id": i, "prompt": p, "seed": 100 + 7 * i} for i, p in enumerate(PROMPTS)]
    )
    rows = _by_id(
        slr.generate(
            ds,
            steering=happy * 2.0,
            seed_column="seed",
            temperature=0.9,
            top_k=40,
            max_new_tokens=8,
            batch_size=3,
        )
    )
    for r in rows:
        alone = model.generate(
            r["prompt"],
            steering=happy * 2.0,
            temperature=0.9,
            top_k=40,
            seed=r["seed"],
            max_new_tokens=8,
        )
        assert r["generation"] == alone


def test_generate_checks_arguments(cluster: None, happy: Any) -> None:
    ds = ray.data.from_items([{"prompt": "Hi", "vector": "happy"}])
    with pytest.raises(sl.InvalidArgumentError, match=r"ds has no column\(s\) \['coef'\]"):
        slr.generate(ds, vectors={"happy": happy}, coefficient_column="coef")
    with pytest.raises(sl.InvalidTypeError, match="one steering for all rows"):
        slr.generate(ds, steering=[happy])
    with pytest.raises(sl.InvalidTypeError, match=r"vectors\['x'\] must be a SteeringVector"):
        slr.generate(ds, vectors={"x": 3.0})
    with pytest.raises(sl.InvalidArgumentError, match="temperature"):
        slr.generate(ds, temperature=-1.0)
    # an unknown vector name is seen on the worker; Ray wraps the error
    bad = slr.generate(ds, vectors={"sad": happy}, vector_column="vector", max_new_tokens=2)
    with pytest.raises(Exception, match=r"names vector 'happy', which is not in vectors"):
        bad.take_all()


def test_sweep_returns_the_grid_of_steered_generations(
    cluster: None, model: Any, happy: Any
) -> None:
    prompts = PROMPTS[:2]
    coefs = [0.0, 4.0, 8.0]
    ds = slr.sweep(
        prompts, {"happy": happy}, coefs, topic="ocean", max_new_tokens=8, temperature=0.8
    )
    table = ds.to_pandas().sort_values("seed").reset_index(drop=True)
    assert list(table.columns) == [
        "prompt",
        "prompt_index",
        "vector",
        "coefficient",
        "seed",
        "generation",
        "on_topic",
        "perplexity",
    ]
    assert len(table) == len(prompts) * len(coefs)
    assert list(zip(table.coefficient, table.prompt_index, strict=True)) == [
        (c, i) for c in coefs for i in range(len(prompts))
    ]
    report = sl.evaluate.steered_generations(
        model,
        prompts,
        {f"happy*{c}": happy * c for c in coefs},
        topic="ocean",
        max_new_tokens=8,
        temperature=0.8,
        seed=0,
        progress=False,
    )
    for k, c in enumerate(coefs):
        part = table[table.coefficient == c]
        assert list(part.generation) == report.texts[f"happy*{c}"]
        assert list(part.on_topic) == report.on_topic[f"happy*{c}"]  # type: ignore[index]
        np.testing.assert_allclose(part.perplexity, report.perplexity[f"happy*{c}"], rtol=1e-6)
        assert list(part.seed) == [k * len(prompts) + i for i in range(len(prompts))]


# ---------------------------------------------------------------- the classes alone


def test_transforms_are_plain_callables_without_a_cluster(model: Any, happy: Any) -> None:
    """`Generate` is an ordinary class: called on a numpy batch it gives, per row, what
    `Model.generate` gives for that prompt alone (seeded sampling, stop strings)."""
    prompts = ["The weather today is", "My favourite food is", "Hi"]
    seeds = [3, 1, 4]
    g = slr.Generate(
        steering=happy,
        coefficient_column="k",
        seed_column="seed",
        temperature=1.1,
        max_new_tokens=16,
        stop=[".", ","],
    )
    batch = {
        "prompt": np.array(prompts, dtype=object),
        "seed": np.array(seeds),
        "k": np.array([2.0, -2.0, 0.5]),
    }
    out = g(batch)
    ref = [
        model.generate(
            p, steering=happy * k, temperature=1.1, seed=s, max_new_tokens=16, stop=[".", ","]
        )
        for p, s, k in zip(prompts, seeds, batch["k"], strict=True)
    ]
    assert list(out["generation"]) == ref
    assert sorted(out) == ["generation", "k", "prompt", "seed"]
    with pytest.raises(sl.InvalidArgumentError, match=r"seed\[1\] must be >= 0, got -1"):
        g(dict(batch, seed=np.array([1, -1, 2])))
    with pytest.raises(sl.InvalidArgumentError, match=r"k\[0\] must be a finite number, got nan"):
        g(dict(batch, k=np.array([np.nan, 1.0, 1.0])))
    with pytest.raises(sl.InvalidArgumentError, match=r"the batch has no column 'seed'"):
        g({"prompt": batch["prompt"], "k": batch["k"]})
    c = slr.Capture(layers=[1, 2], text_column="t")
    acts = c({"t": np.array(prompts, dtype=object)})["activations"]
    np.testing.assert_array_equal(acts, model.capture(prompts, [1, 2], progress=False))
