"""steerlab.stats: merging activation statistics (Chan, Golub & LeVeque 1979) and the
vectors built from them, which must equal the single-process builders."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")

from steerlab.stats import (  # noqa: E402
    ActivationStats,
    contrast_vector,
    mean_centring_vector,
)


def _random_acts(seed: int, n: int = 57, layers: int = 3, d: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # An offset far from zero makes the naive one-pass formula lose digits; Chan's keeps them.
    return rng.normal(size=(n, layers, d)) * rng.uniform(0.1, 5.0, size=d) + 1e3


def _splits(n: int, seed: int) -> list[slice]:
    rng = np.random.default_rng(seed)
    cuts = sorted(rng.choice(np.arange(1, n), size=5, replace=False).tolist())
    # an empty part and a one-row part among the random ones
    edges = [0, 0, 1, *cuts, n]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_of_random_splits_equals_the_whole(seed: int) -> None:
    x = _random_acts(seed)
    whole = ActivationStats.from_activations(x, [4, 9, 20])
    parts = [ActivationStats.from_activations(x[s], [4, 9, 20]) for s in _splits(len(x), seed)]
    assert any(p.count == 0 for p in parts) and any(p.count == 1 for p in parts)
    rng = np.random.default_rng(seed)
    rng.shuffle(parts)  # the order of merging does not matter
    merged = ActivationStats.merged(parts)
    assert merged.count == whole.count == len(x)
    assert merged.layers == [4, 9, 20]
    np.testing.assert_allclose(merged.mean(), whole.mean(), rtol=1e-10, atol=0)
    np.testing.assert_allclose(merged.comoment(), whole.comoment(), rtol=1e-10, atol=1e-10)
    for j, layer in enumerate([4, 9, 20]):
        ref = np.cov(x[:, j], rowvar=False)
        np.testing.assert_allclose(merged.covariance(layer), ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(merged.mean(layer), x[:, j].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(
            merged.second_moment(layer), x[:, j].T @ x[:, j], rtol=1e-10, atol=0
        )
    # pairwise tree merging (what Ray's partial rows give) agrees too
    a = ActivationStats.merged(parts[:3]) + ActivationStats.merged(parts[3:])
    np.testing.assert_allclose(a.comoment(), whole.comoment(), rtol=1e-10, atol=1e-10)


def test_update_in_place_and_operands_unchanged() -> None:
    x = _random_acts(5, n=20, layers=2, d=4)
    s = ActivationStats([0, 1], 4)
    assert s.count == 0
    assert s.update(x[:7]) is s
    s.update(x[7:8]).update(x[8:8]).update(x[8:])
    whole = ActivationStats.from_activations(x)
    np.testing.assert_allclose(s.comoment(), whole.comoment(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(s.mean(), whole.mean(), rtol=1e-12)
    a = ActivationStats.from_activations(x[:5])
    before = a.to_dict()
    _ = a + ActivationStats.from_activations(x[5:])
    assert a.count == 5 and np.array_equal(a.mean(), before["mean"])
    # empty statistics are the identity of merging
    empty = ActivationStats([0, 1], 4)
    assert (empty + a) == a and (a + empty) == a


def test_one_layer_2d_input_and_means_only() -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    s = ActivationStats.from_activations(x, [7], covariance=False)
    assert s.layers == [7] and s.d_model == 3 and not s.has_covariance
    np.testing.assert_array_equal(s.mean(7), x.astype(np.float64).mean(axis=0))
    with pytest.raises(sl.InvalidArgumentError, match="built with covariance=False"):
        s.covariance(7)
    with pytest.raises(sl.InvalidArgumentError, match="no layer 3; they have layers \\[7\\]"):
        s.mean(3)


def test_pairs_are_differences() -> None:
    rng = np.random.default_rng(3)
    p, q = rng.normal(size=(6, 2, 5)), rng.normal(size=(6, 2, 5))
    s = ActivationStats.from_pairs(p.astype(np.float32), q.astype(np.float32), [1, 2])
    ref = ActivationStats.from_activations(
        p.astype(np.float32).astype(np.float64) - q.astype(np.float32).astype(np.float64), [1, 2]
    )
    assert s == ref
    with pytest.raises(sl.ShapeError, match=r"pair up row by row: got shapes \(6, 2, 5\) and"):
        ActivationStats.from_pairs(p, q[:5])


def test_bad_shapes_and_values() -> None:
    with pytest.raises(
        sl.ShapeError, match=r"must be \[n, d_model\] or \[n, n_layers, d_model\], got shape \(3,\)"
    ):
        ActivationStats.from_activations(np.zeros(3))
    with pytest.raises(sl.ShapeError, match=r"got shape \(1, 2, 3, 4\)"):
        ActivationStats.from_activations(np.zeros((1, 2, 3, 4)))
    with pytest.raises(
        sl.ShapeError, match="layers names 1 layer\\(s\\) but the activations have 2"
    ):
        ActivationStats.from_activations(np.zeros((3, 2, 4)), [5])
    with pytest.raises(sl.InvalidArgumentError, match="repeated layer"):
        ActivationStats.from_activations(np.zeros((3, 2, 4)), [5, 5])
    with pytest.raises(sl.InvalidArgumentError, match=r"NaN or inf at index \(1, 0, 2\)"):
        x = np.zeros((3, 1, 4))
        x[1, 0, 2] = np.nan
        ActivationStats.from_activations(x)
    with pytest.raises(sl.InvalidTypeError, match="must be real numbers, got dtype <U1"):
        ActivationStats.from_activations(np.array([["a"]]))
    s = ActivationStats.from_activations(np.zeros((3, 2, 4)))
    with pytest.raises(
        sl.ShapeError,
        match="acts have 2 layer\\(s\\) of width 5 but these statistics hold 2 layer\\(s\\) of width 4",
    ):
        s.update(np.zeros((1, 2, 5)))
    with pytest.raises(
        sl.InvalidArgumentError,
        match=r"statistics of layers \[0, 1\] with statistics of layers \[0, 2\]",
    ):
        s.merge(ActivationStats.from_activations(np.zeros((3, 2, 4)), [0, 2]))
    with pytest.raises(sl.ShapeError, match="widths 4 and 5"):
        s.merge(ActivationStats.from_activations(np.zeros((3, 2, 5))))
    with pytest.raises(sl.InvalidArgumentError, match="with a co-moment and statistics without"):
        s.merge(ActivationStats.from_activations(np.zeros((3, 2, 4)), covariance=False))
    with pytest.raises(sl.InvalidArgumentError, match="different sources"):
        s.merge(ActivationStats.from_activations(np.zeros((3, 2, 4)), source={"position": "last"}))
    with pytest.raises(sl.InvalidTypeError, match="got ndarray"):
        s.merge(np.zeros((3, 2, 4)))  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidArgumentError, match="parts is empty"):
        ActivationStats.merged([])
    with pytest.raises(
        sl.InvalidArgumentError,
        match="the mean needs at least 1 row\\(s\\); these statistics hold 0",
    ):
        ActivationStats([0], 3).mean()
    with pytest.raises(sl.InvalidArgumentError, match="ddof=1 needs at least 2 row"):
        ActivationStats.from_activations(np.zeros((1, 3))).covariance(0)
    with pytest.raises(sl.InvalidTypeError, match="layers must be ints, got 'a'"):
        ActivationStats(["a"], 3)  # type: ignore[list-item]
    with pytest.raises(sl.InvalidArgumentError, match="d_model must be >= 1, got 0"):
        ActivationStats([0], 0)


def test_to_dict_round_trip_and_checks() -> None:
    x = _random_acts(9, n=11, layers=2, d=3)
    s = ActivationStats.from_activations(x, [3, 8], source={"fingerprint": "abc", "position": 2})
    d = s.to_dict()
    assert d["count"] == 11 and d["layers"] == [3, 8] and d["source"]["position"] == 2
    back = ActivationStats.from_dict(d)
    assert back == s and back.source == s.source
    assert pickle.loads(pickle.dumps(s)) == s
    means_only = ActivationStats.from_activations(x, covariance=False)
    assert ActivationStats.from_dict(means_only.to_dict()) == means_only
    bad = dict(d, mean=np.zeros((2, 4)))
    with pytest.raises(sl.ShapeError, match=r"mean has shape \(2, 4\); expected \(2, 3\)"):
        ActivationStats.from_dict(bad)
    with pytest.raises(sl.InvalidArgumentError, match=r"lacks field\(s\) \['count'\]"):
        ActivationStats.from_dict({k: v for k, v in d.items() if k != "count"})
    with pytest.raises(sl.InvalidArgumentError, match="count must be >= 0, got -1"):
        ActivationStats.from_dict(dict(d, count=-1))
    with pytest.raises(sl.InvalidArgumentError, match="count is 0 but the mean"):
        ActivationStats.from_dict(dict(d, count=0))
    with pytest.raises(sl.InvalidArgumentError, match="format 2 is not supported"):
        ActivationStats.from_dict(dict(d, format=2))
    with pytest.raises(sl.InvalidTypeError, match="from_dict takes a dict, got list"):
        ActivationStats.from_dict([])  # type: ignore[arg-type]


# ---------------------------------------------------------------- on the real model

LAYERS = [3, -1]


@pytest.fixture(scope="module")
def pairs() -> object:
    return sl.ContrastPairs.from_texts(sl.datasets.sentiment_pairs()[:10])


@pytest.fixture(scope="module")
def pair_diffs(model: object, pairs: object) -> ActivationStats:
    """Statistics of the differences, merged from three parts read separately."""
    wanted = [3, model.n_layers - 1]  # type: ignore[attr-defined]
    parts = []
    for s in (slice(0, 4), slice(4, 5), slice(5, 10)):
        sub = pairs[s]  # type: ignore[index]
        pos = model.capture(sub.positives, wanted, "last", progress=False)  # type: ignore[attr-defined]
        neg = model.capture(sub.negatives, wanted, "last", progress=False)  # type: ignore[attr-defined]
        parts.append(ActivationStats.from_pairs(pos, neg, wanted, source={"position": "last"}))
    return ActivationStats.merged(parts)


@pytest.mark.parametrize("method", ["mean_diff", "pca_diff", "pca_center"])
def test_contrast_vector_equals_train(
    model: object, pairs: object, pair_diffs: ActivationStats, method: str
) -> None:
    ref = sl.SteeringVector.train(model, pairs, LAYERS, method=method, progress=False)  # type: ignore[arg-type]
    got = contrast_vector(pair_diffs, method, model=model)  # type: ignore[arg-type]
    assert got.layers == ref.layers
    for layer in ref.layers:
        scale = float(np.abs(ref[layer]).max())
        np.testing.assert_allclose(got[layer], ref[layer], rtol=0, atol=1e-5 * scale)
    assert got.info.method == method and got.info.n_samples == 10
    assert got.info.fingerprint == model.fingerprint  # type: ignore[attr-defined]
    assert got.info.position == "last"
    assert got.info.residual_norms == pytest.approx(ref.info.residual_norms)
    assert got.info.scores == pytest.approx(ref.info.scores, rel=1e-6)
    assert got.doses() == pytest.approx(ref.doses(), rel=1e-5)


def test_contrast_vector_errors(model: object, pair_diffs: ActivationStats) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="'logistic' fits a probe"):
        contrast_vector(pair_diffs, "logistic")
    with pytest.raises(sl.InvalidArgumentError, match="identical means"):
        contrast_vector(ActivationStats.from_pairs(np.ones((3, 4)), np.ones((3, 4))))
    one = ActivationStats.from_pairs(np.ones((1, 4)), np.zeros((1, 4)))
    with pytest.raises(sl.InvalidArgumentError, match="method 'pca_diff' needs at least 2 row"):
        contrast_vector(one, "pca_diff")
    means_only = ActivationStats.from_pairs(np.eye(4), np.zeros((4, 4)), covariance=False)
    with pytest.raises(sl.InvalidArgumentError, match="needs the co-moment"):
        contrast_vector(means_only, "pca_center")
    other = ActivationStats.from_pairs(
        np.ones((2, 576)), np.zeros((2, 576)), [3], source={"fingerprint": "not-this-model"}
    )
    with pytest.raises(
        sl.InvalidArgumentError, match="fingerprint 'not-this-model', not this model"
    ):
        contrast_vector(other, model=model)  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidTypeError, match="differences must be an ActivationStats"):
        contrast_vector(np.ones((2, 3)))  # type: ignore[arg-type]


def test_mean_centring_vector_equals_mean_centring(model: object) -> None:
    target = list(sl.datasets.load_topic("ocean").texts[:9])
    background = sl.datasets.background_corpus()[:12]
    ref = sl.SteeringVector.mean_centring(model, target, background, layers=LAYERS)  # type: ignore[arg-type]
    wanted = ref.layers

    def stats_of(texts: list[str]) -> ActivationStats:
        acts = model.capture(texts, wanted, "mean_skip_first", progress=False)  # type: ignore[attr-defined]
        return ActivationStats.from_activations(acts, wanted, covariance=False)

    t = stats_of(target[:4]) + stats_of(target[4:])
    b = ActivationStats.merged([stats_of(background[:1]), stats_of(background[1:])])
    got = mean_centring_vector(t, b, model=model)  # type: ignore[arg-type]
    for layer in wanted:
        scale = float(np.abs(ref[layer]).max())
        np.testing.assert_allclose(got[layer], ref[layer], rtol=0, atol=1e-6 * scale)
    assert got.info.method == "mean_centring" and got.info.n_samples == 9
    with pytest.raises(sl.InvalidArgumentError, match="target statistics have layers"):
        mean_centring_vector(t, ActivationStats.from_activations(np.ones((2, 1, 576)), [0]))
