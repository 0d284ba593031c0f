"""Steering-vector maths against numpy references, the SteeringVector value type, its
files (safetensors, llama.cpp control-vector GGUF) and its use for steering."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
_core = pytest.importorskip("steerlab._core")

from steerlab import SteeringVector  # noqa: E402
from steerlab.vectors import VectorInfo  # noqa: E402

RNG = np.random.default_rng(0)


def _pairs(n: int = 24, d: int = 16, shift: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Paired activations whose difference has a known positive component on axis 2."""
    neg = RNG.normal(size=(n, d)).astype(np.float32)
    pos = neg + RNG.normal(scale=0.3, size=(n, d)).astype(np.float32)
    pos[:, 2] += shift + RNG.uniform(0, 2, size=n).astype(np.float32)
    return pos, neg


# ----------------------------------------------------------------------- methods vs numpy


def test_mean_diff_matches_numpy() -> None:
    pos, neg = _pairs()
    v, score = _core.fit_direction(pos, neg, "mean_diff")
    np.testing.assert_allclose(v, (pos.astype(np.float64) - neg).mean(0), rtol=1e-6, atol=1e-6)
    assert score is None


def _scaled_like_mean_diff(u: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    md = (pos.astype(np.float64) - neg).mean(0)
    u = u if u @ md > 0 else -u
    return u * (u @ md)


def test_pca_center_is_the_top_singular_vector_of_the_differences() -> None:
    pos, neg = _pairs()
    diffs = pos.astype(np.float64) - neg
    _, s, vt = np.linalg.svd(diffs, full_matrices=False)
    want = _scaled_like_mean_diff(vt[0], pos, neg)
    v, explained = _core.fit_direction(pos, neg, "pca_center")
    np.testing.assert_allclose(v, want, rtol=1e-4, atol=1e-5)
    assert explained == pytest.approx(s[0] ** 2 / (s**2).sum(), rel=1e-6)
    # the sign follows the labels: positives project above negatives
    assert (pos @ v).mean() > (neg @ v).mean()
    w, _ = _core.fit_direction(neg, pos, "pca_center")
    np.testing.assert_allclose(w, -v, rtol=1e-4, atol=1e-5)


def test_pca_diff_is_the_top_component_of_the_centred_differences() -> None:
    pos, neg = _pairs(n=30, d=12)
    diffs = pos.astype(np.float64) - neg
    centred = diffs - diffs.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    want = _scaled_like_mean_diff(vt[0], pos, neg)
    v, explained = _core.fit_direction(pos, neg, "pca_diff")
    np.testing.assert_allclose(v, want, rtol=1e-4, atol=1e-5)
    assert explained == pytest.approx(s[0] ** 2 / (s**2).sum(), rel=1e-6)


def test_pca_wide_data_uses_the_gram_route_and_agrees() -> None:
    # more dimensions than rows, as at a real layer
    pos, neg = _pairs(n=10, d=64)
    _, _, vt = np.linalg.svd(pos.astype(np.float64) - neg, full_matrices=False)
    v, _ = _core.fit_direction(pos, neg, "pca_center")
    np.testing.assert_allclose(v, _scaled_like_mean_diff(vt[0], pos, neg), rtol=1e-4, atol=1e-5)


def _numpy_logistic(pos: np.ndarray, neg: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Newton's method on the same objective (centred, RMS-scaled features, L2 = 1/c)."""
    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    mu = x.mean(0)
    xc = x - mu
    rms = np.sqrt((xc**2).mean())
    xs = np.hstack([xc / rms, np.ones((len(x), 1))])
    reg = np.eye(xs.shape[1]) / c
    reg[-1, -1] = 0.0
    w = np.zeros(xs.shape[1])
    for _ in range(100):
        z = xs @ w
        p = 1 / (1 + np.exp(-y * z))
        g = xs.T @ (-y * (1 - p)) + reg @ w
        h = (xs * (p * (1 - p))[:, None]).T @ xs + reg
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-12:
            break
    return w[:-1] / rms


def test_logistic_probe_matches_a_numpy_newton_solver() -> None:
    pos, neg = _pairs(n=40, d=10, shift=0.5)
    v, acc = _core.fit_direction(pos, neg, "logistic")
    w = _numpy_logistic(pos, neg)
    u = w / np.linalg.norm(w)
    np.testing.assert_allclose(v, _scaled_like_mean_diff(u, pos, neg), rtol=1e-4, atol=1e-5)
    assert acc is not None and 0.5 < acc <= 1.0


def test_mean_centring_matches_numpy() -> None:
    target = RNG.normal(size=(7, 9)).astype(np.float32)
    background = RNG.normal(size=(30, 9)).astype(np.float32)
    v = _core.mean_centring(target, background)
    np.testing.assert_allclose(
        v, target.astype(np.float64).mean(0) - background.astype(np.float64).mean(0), atol=1e-6
    )


def test_pair_stats_match_numpy() -> None:
    pos, neg = _pairs(n=20, d=8)
    st = _core.pair_stats(pos, neg)
    p, q = pos.astype(np.float64), neg.astype(np.float64)
    diffs = p - q
    s = diffs.mean(0)
    cos = diffs @ s / (np.linalg.norm(diffs, axis=1) * np.linalg.norm(s))
    np.testing.assert_allclose(st["cosines"], cos, rtol=1e-9)
    assert st["mean_cosine"] == pytest.approx(cos.mean())
    mid = (p.mean(0) + q.mean(0)) / 2
    pp = 2 * (p - mid) @ s / (s @ s)
    pn = 2 * (q - mid) @ s / (s @ s)
    np.testing.assert_allclose(st["proj_pos"], pp, rtol=1e-9, atol=1e-12)
    assert pp.mean() == pytest.approx(1.0) and pn.mean() == pytest.approx(-1.0)
    assert st["d_prime"] == pytest.approx(
        abs(pp.mean() - pn.mean()) / np.sqrt((pp.var() + pn.var()) / 2)
    )
    assert st["diff_norm"] == pytest.approx(np.linalg.norm(s))
    norms = np.linalg.norm(np.concatenate([p, q]), axis=1)
    assert st["mean_norm"] == pytest.approx(norms.mean())


def test_steerability_stats_match_numpy() -> None:
    mults = [-1.0, -0.5, 0.0, 0.5, 1.0]
    margins = RNG.normal(size=(12, 5))
    st = _core.steerability(margins, mults)
    slopes = np.array([np.polyfit(mults, row, 1)[0] for row in margins])
    np.testing.assert_allclose(st["slope"], slopes, rtol=1e-9, atol=1e-12)
    effect = margins[:, 4] - margins[:, 2]
    np.testing.assert_allclose(st["effect"], effect)
    assert st["anti_steerable"] == pytest.approx((effect < 0).mean())
    assert st["mean_effect"] == pytest.approx(effect.mean())


def test_spearman_matches_pandas_ranks() -> None:
    pd = pytest.importorskip("pandas")
    x = [0.3, 0.1, 0.1, 0.9, 0.5, 0.7]
    y = [1.0, 2.0, 0.5, 3.0, 3.0, 2.5]
    want = pd.Series(x).rank().corr(pd.Series(y).rank())
    assert sl.evaluate.spearman(x, y) == pytest.approx(want)


@pytest.mark.parametrize(
    ("pos", "neg", "method", "err", "match"),
    [
        (np.zeros((0, 4)), np.zeros((0, 4)), "mean_diff", "InvalidArgumentError", "empty"),
        (np.ones((1, 4)), np.zeros((1, 4)), "pca_diff", "InvalidArgumentError", "at least 2"),
        (np.ones((3, 4)), np.ones((3, 4)), "mean_diff", "InvalidArgumentError", "identical means"),
        (np.ones((3, 4)), np.zeros((2, 4)), "mean_diff", "ShapeError", "pair up"),
        (np.full((2, 3), np.nan), np.zeros((2, 3)), "mean_diff", "InvalidArgumentError", "NaN"),
        (np.ones((2, 3)), np.zeros((2, 3)), "svd", "InvalidArgumentError", "unknown method"),
        (np.ones(3), np.zeros(3), "mean_diff", "ShapeError", "2-D"),
    ],
)
def test_method_bad_inputs(pos: Any, neg: Any, method: str, err: str, match: str) -> None:
    with pytest.raises(getattr(sl, err), match=match):
        _core.fit_direction(pos.astype(np.float32), neg.astype(np.float32), method)


def test_float64_input_is_refused_with_a_hint() -> None:
    with pytest.raises(sl.ShapeError, match="float32"):
        _core.fit_direction(np.ones((2, 3)), np.zeros((2, 3)), "mean_diff")


# ---------------------------------------------------------------- the SteeringVector type


def _vec(fp: str | None = "f" * 64, width: int = 6) -> SteeringVector:
    info = VectorInfo(d_model=width, fingerprint=fp, residual_norms={3: 10.0, 5: 20.0})
    return SteeringVector(
        {3: np.arange(width, dtype=np.float32), 5: np.ones(width, dtype=np.float32)}, info
    )


def test_arithmetic_and_views() -> None:
    v = _vec()
    np.testing.assert_array_equal((v * 2.0)[3], 2 * np.arange(6))
    np.testing.assert_array_equal((2.0 * v)[5], 2 * np.ones(6))
    np.testing.assert_array_equal((v / 4)[5], np.full(6, 0.25))
    np.testing.assert_array_equal((-v)[3], -np.arange(6))
    w = SteeringVector({5: np.ones(6)}, VectorInfo(d_model=6, fingerprint="f" * 64))
    s = v + w
    np.testing.assert_array_equal(s[5], 2 * np.ones(6))
    np.testing.assert_array_equal(s[3], np.arange(6))
    np.testing.assert_array_equal((v - w)[5], np.zeros(6))
    assert v.norms()[5] == pytest.approx(np.sqrt(6))
    for layer, n in v.normalized().norms().items():
        assert n == pytest.approx(1.0), layer
    assert v.at(5).layers == [5]
    assert v.cosine(v * 3.0) == pytest.approx({3: 1.0, 5: 1.0})
    assert v.cosine(-v)[3] == pytest.approx(-1.0)
    assert v.doses()[5] == pytest.approx(np.sqrt(6) / 20.0)
    dosed = v.dose(0.1)
    assert dosed.norms()[3] == pytest.approx(1.0, rel=1e-6)  # 0.1 * 10
    assert dosed.norms()[5] == pytest.approx(2.0, rel=1e-6)  # 0.1 * 20
    st = (v * 2.0).with_positions("generated").to_steering()
    assert st.positions == "generated"
    np.testing.assert_array_equal(st.vectors[3], 2 * np.arange(6))
    with pytest.raises(TypeError):
        v * "2"  # type: ignore[operator]


def test_value_type_errors() -> None:
    v = _vec()
    with pytest.raises(sl.InvalidArgumentError, match="layer 3's direction is zero"):
        SteeringVector({3: np.zeros(4)}).normalized()
    with pytest.raises(sl.OutOfRangeError, match=r"no layer\(s\) \[7\]"):
        v.at([3, 7])
    with pytest.raises(sl.OutOfRangeError, match="no layer 9"):
        v[9]
    with pytest.raises(sl.InvalidArgumentError, match="NaN"):
        SteeringVector({1: [0.0, np.nan]})
    with pytest.raises(sl.ShapeError, match="same width"):
        SteeringVector({1: np.ones(3), 2: np.ones(4)})
    with pytest.raises(sl.InvalidArgumentError, match="at least one layer"):
        SteeringVector({})
    with pytest.raises(sl.InvalidArgumentError, match="non-negative"):
        SteeringVector({-1: np.ones(3)})
    with pytest.raises(sl.InvalidArgumentError, match="different models"):
        v + _vec(fp="0" * 64)
    with pytest.raises(sl.ShapeError, match="widths 6 and 5"):
        v.cosine(_vec(width=5))
    with pytest.raises(sl.InvalidArgumentError, match="no residual-stream norm"):
        SteeringVector({1: np.ones(3)}).dose(0.1)
    with pytest.raises(sl.DivisionByZeroError, match="cannot divide a SteeringVector by zero"):
        v / 0.0
    with pytest.raises(sl.InvalidArgumentError, match="inf"):
        v * float("inf")


def test_safetensors_round_trip(tmp_path: Path) -> None:
    v = _vec()
    p = tmp_path / "v.safetensors"
    v.save(p)
    back = SteeringVector.load(p)
    assert back == v
    assert back.info == v.info


def test_corrupt_and_foreign_files_raise(tmp_path: Path) -> None:
    p = tmp_path / "v.safetensors"
    _vec().save(p)
    data = p.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(sl.ModelFormatError, match="not a valid safetensors"):
        SteeringVector.load(tmp_path / "cut.safetensors")
    with pytest.raises(sl.ModelNotFoundError):
        SteeringVector.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 3)
    with pytest.raises(sl.ModelFormatError):
        SteeringVector.from_gguf(tmp_path / "junk.gguf")
    # metadata that is not ours
    bad = data.replace(b"d_model", b"d_mode1")
    (tmp_path / "meta.safetensors").write_bytes(bad)
    with pytest.raises(sl.ModelFormatError, match="metadata"):
        SteeringVector.load(tmp_path / "meta.safetensors")


# -- llama.cpp control vectors: an independent reader and writer of the GGUF layout ------


def _read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A minimal GGUF v2/v3 reader (metadata of scalar/string types, F32 tensors)."""
    buf = path.read_bytes()
    assert buf[:4] == b"GGUF"
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    off = 24

    def string() -> str:
        nonlocal off
        (n,) = struct.unpack_from("<Q", buf, off)
        off += 8
        s = buf[off : off + n].decode()
        off += n
        return s

    scalar = {4: "<I", 5: "<i", 6: "<f", 10: "<Q", 7: "<?"}
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (t,) = struct.unpack_from("<I", buf, off)
        off += 4
        if t == 8:
            meta[key] = string()
        else:
            fmt = scalar[t]
            (meta[key],) = struct.unpack_from(fmt, buf, off)
            off += struct.calcsize(fmt)
    infos = []
    for _ in range(n_tensors):
        name = string()
        (nd,) = struct.unpack_from("<I", buf, off)
        off += 4
        dims = struct.unpack_from(f"<{nd}Q", buf, off)
        off += 8 * nd
        dtype, rel = struct.unpack_from("<IQ", buf, off)
        off += 12
        assert dtype == 0, "F32"
        infos.append((name, dims, rel))
    align = int(meta.get("general.alignment", 32))
    start = (off + align - 1) // align * align
    tensors = {
        name: np.frombuffer(buf, np.float32, int(np.prod(dims)), start + rel)
        for name, dims, rel in infos
    }
    meta["_version"] = version
    return meta, tensors


def _write_gguf_like_repeng(path: Path, dirs: dict[int, np.ndarray], hint: str) -> None:
    """Write a control vector the way gguf-py does for repeng (v3, u32 layer count)."""

    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kv = [
        (s("general.architecture"), struct.pack("<I", 8) + s("controlvector")),
        (s("controlvector.model_hint"), struct.pack("<I", 8) + s(hint)),
        (s("controlvector.layer_count"), struct.pack("<I", 4) + struct.pack("<I", len(dirs))),
    ]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(dirs), len(kv))
    body = b"".join(k + v for k, v in kv)
    infos = b""
    data = b""
    for layer, v in dirs.items():
        arr = np.asarray(v, dtype=np.float32)
        infos += s(f"direction.{layer}") + struct.pack("<I", 1) + struct.pack("<Q", arr.size)
        infos += struct.pack("<IQ", 0, len(data))
        data += arr.tobytes()
        data += b"\x00" * (-len(data) % 32)
    out = head + body + infos
    out += b"\x00" * (-len(out) % 32)
    path.write_bytes(out + data)


def test_control_vector_export_layout_and_round_trip(tmp_path: Path) -> None:
    v = _vec(width=8) * 1.7
    p = tmp_path / "cv.gguf"
    v.to_gguf(p, model_hint="llama")
    meta, tensors = _read_gguf(p)
    assert meta["general.architecture"] == "controlvector"
    assert meta["controlvector.model_hint"] == "llama"
    assert meta["controlvector.layer_count"] == 2
    # steerlab layer N (output of block N) is llama.cpp's direction.N: no offset
    assert sorted(tensors) == ["direction.3", "direction.5"]
    for layer in (3, 5):
        np.testing.assert_array_equal(tensors[f"direction.{layer}"], v[layer])
    back = SteeringVector.from_gguf(p)
    assert back.layers == [3, 5]
    for layer in (3, 5):
        np.testing.assert_array_equal(back[layer], v[layer])  # every value preserved
    assert back.info.method == "control_vector" and back.info.arch == "llama"


def test_control_vector_cannot_hold_layer_zero(tmp_path: Path) -> None:
    v = SteeringVector({0: np.ones(4), 2: np.ones(4)})
    with pytest.raises(sl.InvalidArgumentError, match="layer 0"):
        v.to_gguf(tmp_path / "cv.gguf")
    v.at(2).to_gguf(tmp_path / "cv.gguf")


def test_import_a_repeng_style_file(tmp_path: Path) -> None:
    dirs = {i: RNG.normal(size=10).astype(np.float32) for i in (1, 4, 9)}
    p = tmp_path / "repeng.gguf"
    _write_gguf_like_repeng(p, dirs, "mistral")
    v = SteeringVector.from_gguf(p)
    assert v.layers == [1, 4, 9]
    for i, d in dirs.items():
        np.testing.assert_array_equal(v[i], d)
    assert v.info.arch == "mistral"


def test_model_file_is_not_a_control_vector(model: Any) -> None:
    with pytest.raises(sl.ModelFormatError, match="expected 'controlvector'"):
        SteeringVector.from_gguf(model.path)


# ------------------------------------------------------------------- with a real model


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path) -> Any:
    return sl.Model.load(str(tiny_llama_dir))


TINY_PAIRS = [
    ("I love this sunny day", "I hate this rainy day"),
    ("What a wonderful gift", "What a terrible gift"),
    ("The food was delicious", "The food was disgusting"),
    ("She smiled with joy", "She frowned in anger"),
    ("A great result for us", "A bad result for us"),
]


def test_train_mean_diff_equals_numpy_on_captures(tiny: Any) -> None:
    pairs = sl.ContrastPairs.from_texts(TINY_PAIRS, position="mean_skip_first", name="toy")
    v = SteeringVector.train(tiny, pairs, layers=[0, -1])
    last = tiny.n_layers - 1
    assert v.layers == [0, last]
    acts_p = tiny.capture(pairs.positives, [0, last], "mean_skip_first")
    acts_n = tiny.capture(pairs.negatives, [0, last], "mean_skip_first")
    want = (acts_p.astype(np.float64) - acts_n).mean(0)
    np.testing.assert_allclose(v[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v[last], want[1], rtol=1e-5, atol=1e-6)
    info = v.info
    assert info.fingerprint == tiny.fingerprint and info.method == "mean_diff"
    assert info.dataset == "toy" and info.dataset_hash == pairs.dataset_hash()
    assert info.n_samples == 5 and info.position == "mean_skip_first"
    assert set(info.residual_norms) == {0, last}
    for method in ("pca_diff", "pca_center", "logistic"):
        w = SteeringVector.train(tiny, pairs, layers=[last], method=method)
        assert w.info.scores[last] > 0


def test_residual_norms_skip_the_first_token(tiny: Any) -> None:
    texts = ["one two three four", "a b c d e f g"]
    got = sl.vectors.residual_norms(tiny, [1], texts)
    acts = tiny.capture(texts, [1], "all")
    norms = np.concatenate([np.linalg.norm(a[0, 1:].astype(np.float64), axis=-1) for a in acts])
    assert got[1] == pytest.approx(norms.mean(), rel=1e-6)


def test_mean_centring_and_mean_of(tiny: Any) -> None:
    target = ["The rocket reached orbit", "Astronauts walked on the moon"]
    background = ["I bought bread", "The bus was late", "She read a book"]
    v = SteeringVector.mean_centring(tiny, target, background, layers=[1])
    t = tiny.capture(target, [1], "mean_skip_first")[:, 0].astype(np.float64)
    b = tiny.capture(background, [1], "mean_skip_first")[:, 0].astype(np.float64)
    np.testing.assert_allclose(v[1], t.mean(0) - b.mean(0), rtol=1e-5, atol=1e-6)
    m = SteeringVector.mean_of(tiny, target, layers=[1])
    np.testing.assert_allclose(m[1], t.mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(sl.InvalidArgumentError, match="empty"):
        SteeringVector.mean_centring(tiny, [], background, layers=[1])


def test_vector_steers_like_the_raw_mapping(tiny: Any) -> None:
    pairs = sl.ContrastPairs.from_texts(TINY_PAIRS)
    v = SteeringVector.train(tiny, pairs, layers=[1])
    prompts = ["Today is", "My friend"]
    a = tiny.generate(prompts, steering=v * 3.0, max_new_tokens=6, return_ids=True)
    b = tiny.generate(prompts, steering={1: 3.0 * v[1]}, max_new_tokens=6, return_ids=True)
    assert a == b
    with tiny.steering(v * 3.0):
        c = tiny.generate(prompts, max_new_tokens=6, return_ids=True)
    assert c == a
    rows = tiny.generate(prompts, steering=[v * 3.0, None], max_new_tokens=6, return_ids=True)
    assert rows[0] == a[0]
    assert rows[1] == tiny.generate(prompts[1], max_new_tokens=6, return_ids=True)


def test_vector_for_another_model_is_refused(tiny: Any, model: Any, tmp_path: Path) -> None:
    pairs = sl.ContrastPairs.from_texts(TINY_PAIRS)
    v = SteeringVector.train(tiny, pairs, layers=[1])
    with pytest.raises(sl.ShapeError, match="made for another model"):
        model.generate("Hi", steering=v, max_new_tokens=2)
    # same width, other weights: the fingerprint tells them apart
    foreign = SteeringVector(
        {1: np.ones(tiny.d_model)}, VectorInfo(d_model=tiny.d_model, fingerprint="0" * 64)
    )
    with pytest.raises(sl.InvalidArgumentError, match="another model"):
        tiny.generate("Hi", steering=foreign, max_new_tokens=2)
    with pytest.raises(sl.InvalidArgumentError, match=r"steering\[1\]"):
        tiny.generate(["Hi", "Yo"], steering=[None, foreign], max_new_tokens=2)
    with pytest.raises(sl.InvalidArgumentError, match="another model"), tiny.steering(foreign):
        pass
    p = tmp_path / "v.safetensors"
    foreign.save(p)
    with pytest.raises(sl.InvalidArgumentError, match="another model"):
        SteeringVector.load(p, tiny)
    adopted = SteeringVector.load(p, tiny, check_fingerprint=False)
    assert adopted.info.fingerprint == tiny.fingerprint
    too_deep = SteeringVector({tiny.n_layers + 3: np.ones(tiny.d_model)})
    with pytest.raises(sl.OutOfRangeError, match="layers"):
        tiny.generate("Hi", steering=too_deep, max_new_tokens=2)


def test_train_errors(tiny: Any) -> None:
    pairs = sl.ContrastPairs.from_texts(TINY_PAIRS[:1])
    with pytest.raises(sl.InvalidArgumentError, match="at least 2"):
        SteeringVector.train(tiny, pairs, layers=[1], method="pca_diff")
    with pytest.raises(sl.InvalidArgumentError, match="unknown method"):
        SteeringVector.train(tiny, pairs, layers=[1], method="svd")
    with pytest.raises(sl.OutOfRangeError, match="out of range"):
        SteeringVector.train(tiny, pairs, layers=[99])
    with pytest.raises(sl.InvalidTypeError, match="ContrastPairs"):
        SteeringVector.train(tiny, TINY_PAIRS, layers=[1])  # type: ignore[arg-type]
