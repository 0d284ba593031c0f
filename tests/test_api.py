"""The public Python API on the embedded default model: shapes, conventions, options."""

from __future__ import annotations

import copy
import os
import pickle
import threading
from typing import Any

import numpy as np
import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl
from steerlab import models


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the reference's RMS."""
    return float(np.abs(a - b).max() / np.sqrt(np.mean(np.square(b))))


def random_steering(model: sl.Model, layer: int, scale: float = 8.0, seed: int = 0) -> sl.Steering:
    v = np.random.default_rng(seed).standard_normal(model.d_model).astype(np.float32)
    return sl.Steering({layer: v / np.linalg.norm(v) * scale})


# ------------------------------------------------------------------ package and model


def test_package_exports() -> None:
    for name in sl.__all__:
        assert hasattr(sl, name), name
    assert isinstance(sl.__version__, str)


def test_default_model_identity(model: sl.Model) -> None:
    assert model.arch == "llama"
    assert (model.n_layers, model.d_model, model.vocab_size) == (30, 576, 49152)
    assert isinstance(model.fingerprint, str) and model.fingerprint
    assert model.device == "cpu"
    assert isinstance(model.dtype, str)
    assert model.path == models.default_model_path()
    assert "llama" in repr(model)


def test_default_model_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike) -> None:
    target = os.path.join(tmp_path, "m.gguf")
    open(target, "wb").close()
    monkeypatch.setenv(models.DEFAULT_MODEL_ENV, target)
    assert models.default_model_path() == target


def test_gemma3_path_is_cached() -> None:
    try:
        path = models.gemma3_270m_path()
    except sl.ModelNotFoundError as exc:
        pytest.skip(str(exc))
    assert os.path.isfile(path) and path.endswith(".gguf")
    assert models.gemma3_270m_path() is path


def test_copy_and_pickle(model: sl.Model) -> None:
    assert copy.copy(model) is model
    assert copy.deepcopy(model) is model
    again = pickle.loads(pickle.dumps(model))
    assert again.fingerprint == model.fingerprint
    assert again.path == model.path


# ------------------------------------------------------------------------- tokens


def test_encode_decode_roundtrip(model: sl.Model) -> None:
    text = "Hello world, héllo wörld! 你好"
    ids = model.encode(text)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert model.decode(ids, skip_special_tokens=True) == text
    assert model.decode(np.array(ids)) == model.decode(ids)


def test_chat_prompt(model: sl.Model) -> None:
    prompt = model.chat_prompt([{"role": "user", "content": "Hi there"}])
    assert "<|im_start|>user\nHi there<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    no_gen = model.chat_prompt(
        [{"role": "user", "content": "Hi there"}], add_generation_prompt=False
    )
    assert not no_gen.endswith("<|im_start|>assistant\n")
    own = model.chat_prompt(
        [{"role": "user", "content": "x"}],
        chat_template="{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}",
    )
    assert own == "[user:x]"


def test_chat_prompt_raise_exception_and_tojson(model: sl.Model) -> None:
    template = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}"
        "{{ messages | tojson }}"
    )
    out = model.chat_prompt([{"role": "user", "content": "<é>"}], chat_template=template)
    assert out == '[{"role": "user", "content": "<é>"}]'
    with pytest.raises(sl.InvalidArgumentError, match="user first"):
        model.chat_prompt([{"role": "system", "content": "x"}], chat_template=template)


# ------------------------------------------------------------------------ capture


def test_capture_shapes(model: sl.Model, prompts: list[str]) -> None:
    acts = model.capture(prompts, layers=[0, 5, -1])
    assert isinstance(acts, np.ndarray)
    assert acts.dtype == np.float32
    assert acts.shape == (len(prompts), 3, model.d_model)
    one = model.capture(prompts[0], layers=3)
    assert one.shape == (1, 1, model.d_model)
    ranged = model.capture(prompts[:2], layers=range(2, 5))
    assert ranged.shape == (2, 3, model.d_model)


def test_negative_layer_counts_from_the_end(model: sl.Model, prompts: list[str]) -> None:
    a = model.capture(prompts, layers=[-1, -2])
    b = model.capture(prompts, layers=[model.n_layers - 1, model.n_layers - 2])
    np.testing.assert_array_equal(a, b)


def test_capture_positions_agree(model: sl.Model, prompts: list[str]) -> None:
    layers = [1, 7]
    full = model.capture(prompts, layers, position="all")
    assert isinstance(full, list) and len(full) == len(prompts)
    for text, arr in zip(prompts, full, strict=True):
        assert arr.dtype == np.float32
        assert arr.shape == (len(layers), len(model.encode(text)), model.d_model)
    last = model.capture(prompts, layers, position="last")
    mean = model.capture(prompts, layers, position="mean")
    first = model.capture(prompts, layers, position=0)
    minus_one = model.capture(prompts, layers, position=-1)
    for i, arr in enumerate(full):
        assert rel_err(last[i], arr[:, -1]) < 1e-5
        assert rel_err(minus_one[i], arr[:, -1]) < 1e-5
        assert rel_err(first[i], arr[:, 0]) < 1e-5
        assert rel_err(mean[i], arr.mean(axis=1)) < 1e-4


@pytest.fixture(scope="module")
def model_f32() -> Any:
    """The default model dequantized to f32: the exact path."""
    return sl.Model.load(dtype="f32")


def test_capture_independent_of_batching(model_f32: sl.Model, prompts: list[str]) -> None:
    """Left padding and masks: a text's activations do not depend on its batch mates."""
    model = model_f32
    together = model.capture(prompts, layers=[2, 20], batch_size=8)
    alone = model.capture(prompts, layers=[2, 20], batch_size=1)
    for i in range(len(prompts)):
        assert rel_err(together[i], alone[i]) < 1e-3


def test_quantized_path_is_exactly_batch_invariant(model: sl.Model, prompts: list[str]) -> None:
    """On the quantized path a text's captures and logits are bit-identical alone and in a
    batch: steerlab's CPU kernels quantize each activation row on its own."""
    assert model.dtype == "auto"
    together = model.capture(prompts, layers=[0, 2, 20, -1], position="all", batch_size=8)
    alone = model.capture(prompts, layers=[0, 2, 20, -1], position="all", batch_size=1)
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a, b)
    logits = model.logits(prompts)
    for i, p in enumerate(prompts):
        np.testing.assert_array_equal(logits[i], model.logits(p)[0])


# ------------------------------------------------------------------------- logits


def test_logits_shape_and_greedy_agreement(model_f32: sl.Model, prompts: list[str]) -> None:
    model = model_f32
    logits = model.logits(prompts)
    assert logits.dtype == np.float32
    assert logits.shape == (len(prompts), model.vocab_size)
    assert np.isfinite(logits).all()
    first = model.generate(prompts, max_new_tokens=1, return_ids=True)
    for row, ids in zip(logits, first, strict=True):
        assert ids == [int(np.argmax(row))]
    single = model.logits(prompts[0])
    assert single.shape == (1, model.vocab_size)
    assert rel_err(single[0], logits[0]) < 1e-3


# ----------------------------------------------------------------------- generate


def test_generate_types(model: sl.Model, prompts: list[str]) -> None:
    texts = model.generate(prompts, max_new_tokens=6)
    assert isinstance(texts, list) and len(texts) == len(prompts)
    assert all(isinstance(t, str) for t in texts)
    ids = model.generate(prompts, max_new_tokens=6, return_ids=True)
    assert all(isinstance(row, list) and len(row) <= 6 for row in ids)
    assert all(isinstance(i, int) for row in ids for i in row)
    for text, row in zip(texts, ids, strict=True):
        assert text == model.decode(row, skip_special_tokens=True)
    single = model.generate(prompts[0], max_new_tokens=6)
    assert isinstance(single, str) and single == texts[0]
    assert model.generate(prompts, max_new_tokens=0) == ["", "", ""]


def test_greedy_is_deterministic_and_batch_independent(model: sl.Model, prompts: list[str]) -> None:
    batched = model.generate(prompts, max_new_tokens=12, return_ids=True)
    again = model.generate(prompts, max_new_tokens=12, return_ids=True)
    alone = [model.generate([p], max_new_tokens=12, return_ids=True)[0] for p in prompts]
    assert batched == again == alone


def test_sampling_is_seeded(model_f32: sl.Model, prompts: list[str]) -> None:
    model = model_f32
    kwargs = {"max_new_tokens": 10, "temperature": 1.0, "top_k": 50, "top_p": 0.95}
    a = model.generate(prompts, seed=1234, **kwargs)
    b = model.generate(prompts, seed=1234, **kwargs)
    assert a == b
    # prompt i samples with seed + i whatever the batching
    one_by_one = model.generate(prompts, seed=1234, batch_size=1, **kwargs)
    assert one_by_one == a


def test_stop_string_truncates(model: sl.Model, prompts: list[str]) -> None:
    full = model.generate(prompts[1], max_new_tokens=24)
    assert len(full) > 8
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = model.generate(prompts[1], max_new_tokens=24, stop=[stop, "\x00never"])
    assert cut == full[: full.find(stop)]
    ids = model.generate(prompts[1], max_new_tokens=24, stop=stop, return_ids=True)
    assert stop in model.decode(ids, skip_special_tokens=True)


def test_stream_joins_to_generate(model: sl.Model, prompts: list[str]) -> None:
    for prompt in prompts:
        pieces = list(model.generate_stream(prompt, max_new_tokens=16))
        assert all(isinstance(p, str) and p for p in pieces)
        assert "".join(pieces) == model.generate(prompt, max_new_tokens=16)


def test_stream_with_stop_and_multibyte(model: sl.Model) -> None:
    prompt = "Write the word café three times in Chinese: 咖啡馆, 咖啡馆,"
    full = model.generate(prompt, max_new_tokens=20)
    pieces = list(model.generate_stream(prompt, max_new_tokens=20))
    assert "".join(pieces) == full
    assert not any("\ufffd" in p for p in pieces) or "\ufffd" in full
    if len(full) > 6:
        stop = full[3:6]
        streamed = "".join(model.generate_stream(prompt, max_new_tokens=20, stop=stop))
        assert streamed == model.generate(prompt, max_new_tokens=20, stop=stop)
        assert stop not in streamed


# ----------------------------------------------------------------------- steering


def test_steering_changes_output(model: sl.Model, prompts: list[str]) -> None:
    steer = random_steering(model, layer=12, scale=20.0)
    plain = model.generate(prompts, max_new_tokens=12, return_ids=True)
    steered = model.generate(prompts, steering=steer, max_new_tokens=12, return_ids=True)
    assert plain != steered
    as_dict = model.generate(prompts, steering=steer.vectors, max_new_tokens=12, return_ids=True)
    assert as_dict == steered


def test_steering_at_layer_adds_exactly_the_vector(model: sl.Model, prompts: list[str]) -> None:
    """Layer l is the output of block l, recorded after the intervention at l."""
    layer = 10
    steer = random_steering(model, layer=layer, scale=5.0)
    vec = steer.vectors[layer]
    plain = model.capture(prompts, [layer - 1, layer], position="all")
    steered = model.capture(prompts, [layer - 1, layer], position="all", steering=steer)
    for p, s in zip(plain, steered, strict=True):
        np.testing.assert_allclose(s[0], p[0], atol=1e-5 * np.abs(p[0]).max())
        np.testing.assert_allclose(s[1] - p[1], np.broadcast_to(vec, p[1].shape), atol=1e-3)


def test_to_steering_protocol(model: sl.Model, prompts: list[str]) -> None:
    steer = random_steering(model, layer=12, scale=20.0)

    class Vector:
        def to_steering(self) -> sl.Steering:
            return steer

    a = model.logits(prompts, steering=Vector())
    b = model.logits(prompts, steering=steer)
    np.testing.assert_array_equal(a, b)


def test_context_manager(model: sl.Model, prompts: list[str]) -> None:
    steer = random_steering(model, layer=12, scale=20.0)
    other = random_steering(model, layer=12, scale=20.0, seed=1)
    plain = model.logits(prompts)
    explicit = model.logits(prompts, steering=steer)
    explicit_other = model.logits(prompts, steering=other)
    with model.steering(steer):
        np.testing.assert_array_equal(model.logits(prompts), explicit)
        # an explicit argument wins over the block
        np.testing.assert_array_equal(model.logits(prompts, steering=other), explicit_other)
        with model.steering(other):
            np.testing.assert_array_equal(model.logits(prompts), explicit_other)
        with model.steering(None):
            np.testing.assert_array_equal(model.logits(prompts), plain)
        np.testing.assert_array_equal(model.logits(prompts), explicit)
        ids = model.generate(prompts, max_new_tokens=8, return_ids=True)
        assert ids == model.generate(prompts, steering=steer, max_new_tokens=8, return_ids=True)
        streamed = "".join(model.generate_stream(prompts[0], max_new_tokens=8))
        assert streamed == model.generate(prompts[0], steering=steer, max_new_tokens=8)
    np.testing.assert_array_equal(model.logits(prompts), plain)


def test_context_manager_restores_on_error(model: sl.Model, prompts: list[str]) -> None:
    plain = model.logits(prompts[:1])
    steer = random_steering(model, layer=3, scale=20.0)
    with pytest.raises(RuntimeError, match="boom"), model.steering(steer):
        raise RuntimeError("boom")
    np.testing.assert_array_equal(model.logits(prompts[:1]), plain)


def test_context_manager_does_not_leak_into_threads(model: sl.Model, prompts: list[str]) -> None:
    plain = model.logits(prompts[:1])
    seen: list[np.ndarray] = []
    with model.steering(random_steering(model, layer=12, scale=20.0)):
        worker = threading.Thread(target=lambda: seen.append(model.logits(prompts[:1])))
        worker.start()
        worker.join()
    np.testing.assert_array_equal(seen[0], plain)


# ----------------------------------------------------------------------- progress


def test_progress_flag(model: sl.Model, capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["a b c"] * 3
    model.capture(texts, layers=[0], batch_size=1, progress=False)
    assert capsys.readouterr().err == ""
    model.capture(texts, layers=[0], batch_size=1, progress=True)
    assert "capture" in capsys.readouterr().err
    sl.set_progress(False)
    model.capture(texts, layers=[0], batch_size=1)
    model.generate(texts, max_new_tokens=1, batch_size=1)
    assert capsys.readouterr().err == ""
    sl.set_progress(None)
    model.capture(texts, layers=[0], batch_size=8)  # one batch: no bar
    assert capsys.readouterr().err == ""
