"""Contracts a user relies on without checking: the ids `encode` shows are the ids the
model is fed, steering lands where it is asked to (or raises), sampling follows the
probabilities, every bad argument raises a `SteerlabError` naming it, and values survive
save/load, pickle and copies unchanged."""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl
from steerlab import _core, models
from steerlab.vectors import VectorInfo

REQUIRE = os.environ.get("STEERLAB_REQUIRE_CORE") == "1"

GOLDENS = Path(__file__).parent / "goldens"


@pytest.fixture(scope="module")
def gemma() -> sl.Model:
    try:
        path = models.gemma3_270m_path()
    except sl.ModelNotFoundError as exc:
        if REQUIRE:
            pytest.fail(f"Gemma-3-270M is not installed: {exc}")
        pytest.skip(f"Gemma-3-270M is not installed: {exc}")
    return sl.Model.load(path)


def _gemma_template() -> str:
    import json

    return str(json.loads((GOLDENS / "gemma3.json").read_text())["chat_template"])


def _unit(model: sl.Model, seed: int, scale: float) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(model.d_model).astype(np.float32)
    return (scale * v / np.linalg.norm(v)).astype(np.float32)


MESSAGES = [{"role": "user", "content": "Name a colour."}]


def _cases(model: sl.Model, gemma_model: bool) -> list[str]:
    template = _gemma_template() if gemma_model else None
    chat = model.chat_prompt(MESSAGES, chat_template=template)
    literal = "<bos>Hello there" if gemma_model else "<|im_start|>user\nHi<|im_end|>"
    return ["The capital of France is", chat, literal]


# ------------------------------------------------------------ one tokenization path


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_encode_is_what_the_model_is_fed(
    which: str, model: sl.Model, request: pytest.FixtureRequest
) -> None:
    m: sl.Model = model if which == "smollm2" else request.getfixturevalue("gemma")
    for text in _cases(m, which == "gemma3"):
        ids = m.encode(text)
        fed = m.capture(text, [0], position="all")[0]  # [1, n_fed, d]
        assert fed.shape[1] == len(ids), f"{which}: {text!r}"
        assert len(m.token_logprobs(text)[0]) == len(ids) - 1
        new = m.generate(text, max_new_tokens=2, return_ids=True, ignore_eos=True)
        assert len(new) == 2
    if which == "gemma3":
        chat = _cases(m, True)[1]
        assert chat.startswith("<bos>")
        ids = m.encode(chat)
        bos = m.encode("<bos>")
        assert bos == [2]
        # One BOS, not two (Hugging Face's tokenizer returns [2, 2, ...] here).
        assert ids[0] == 2 and ids[1] != 2
        assert m.encode("Hello")[0] == 2  # a plain text still gets its BOS
        assert m.encode(chat, add_special_tokens=False) == ids
        # The fed tokens are those ids: the embedding row 0 is BOS's, row 1 is not.
        emb = m.capture(chat, ["embed"], "all")[0][0]  # type: ignore[list-item]
        bos_emb = m.capture("<bos>", ["embed"], "all")[0][0][0]  # type: ignore[list-item]
        np.testing.assert_array_equal(emb[0], bos_emb)
        assert not np.array_equal(emb[1], bos_emb)


def test_tiny_gemma_single_bos(tiny_gemma3_dir: Path) -> None:
    m = sl.Model.load(tiny_gemma3_dir)
    bos = m.encode("")
    assert len(bos) == 1
    text = m._core.bos_token + "hello"
    ids = m.encode(text)
    assert ids.count(bos[0]) == 1 and ids[0] == bos[0]
    assert m.capture(text, [0], "all")[0].shape[1] == len(ids)


@pytest.fixture(scope="module")
def tiny_gemma3_dir() -> Path:
    path = Path(__file__).parent / "fixtures" / "tiny_gemma3"
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_steering_at_an_encode_index_lands_on_that_token(
    which: str, model: sl.Model, request: pytest.FixtureRequest
) -> None:
    m: sl.Model = model if which == "smollm2" else request.getfixturevalue("gemma")
    layer = 3
    chat = _cases(m, which == "gemma3")[1]
    ids = m.encode(chat)
    n = len(ids)
    v = _unit(m, 0, 8.0)
    plain = m.capture(chat, [layer], "all")[0][0]  # [n, d]
    for i in (1, n // 2, n - 1):
        steer = sl.Steering({layer: v}, positions=[i])
        got = m.capture(chat, [layer], "all", steering=steer)[0][0]
        changed = np.abs(got - plain).max(axis=1) > 1e-3
        assert changed.tolist() == [j == i for j in range(n)], f"{which}: index {i}"
    # In generate, encode's last index is the last prompt token (not decode step 0):
    # its first new token is the one logits() gives under the same steering.
    steer = sl.Steering({layer: _unit(m, 1, 60.0)}, positions=[n - 1])
    first = m.generate(chat, steering=steer, max_new_tokens=1, return_ids=True)
    expect = int(np.argmax(m.logits(chat, steering=steer.with_positions([-1]))[0]))
    assert first == [expect] or (first == [] and expect in m.eos_ids)


# --------------------------------------------------------- positions outside a row


def test_positions_outside_the_prompt_raise(model: sl.Model) -> None:
    layer = 4
    v = _unit(model, 2, 4.0)
    short = "Hi there"
    n = len(model.encode(short))
    msg = rf"row 0: steering position -8 is outside the row, which has {n} prompt tokens"
    for call in (
        lambda s: model.capture(short, [layer], steering=s),
        lambda s: model.logits(short, steering=s),
        lambda s: model.token_logprobs(short, steering=s),
        lambda s: model.generate(short, steering=s, max_new_tokens=3),
        lambda s: model.generate_stream(short, steering=s, max_new_tokens=3),
    ):
        with pytest.raises(sl.OutOfRangeError, match=msg):
            call(sl.Steering({layer: v}, positions=[-8]))
    # In a batch the short row raises, even though the long row has that position.
    long = "Once upon a time, in a small village by the sea, there lived"
    with pytest.raises(sl.OutOfRangeError, match=rf"row 1: steering position {n + 2} "):
        model.logits([long, short], steering=sl.Steering({layer: v}, positions=[n + 2]))
    with pytest.raises(sl.OutOfRangeError, match=rf"row 1: steering position {n + 2} "):
        model.logits([long, short], steering=[None, sl.Steering({layer: v}, positions=[n + 2])])
    # Across batches, the message says which inputs the engine's batch holds.
    with pytest.raises(
        sl.OutOfRangeError,
        match=rf"^in the batch of inputs 1..1 \(its row r is input 1 \+ r\): row 0: steering "
        rf"position {n + 2} ",
    ):
        model.logits(
            [long, short], steering=sl.Steering({layer: v}, positions=[n + 2]), batch_size=1
        )
    # A per-row list: only the row that carries the position is checked.
    ok = model.logits([long, short], steering=[sl.Steering({layer: v}, positions=[n + 2]), None])
    assert ok.shape == (2, model.vocab_size)
    # Ranges count too.
    with pytest.raises(sl.OutOfRangeError, match="row 0: steering position"):
        model.capture(short, [layer], steering=sl.Steering({layer: v}, positions=range(n + 1)))


def test_generate_positions_reach_the_tokens_it_reads(model: sl.Model) -> None:
    layer = 4
    v = _unit(model, 3, 4.0)
    text = "Hi there"
    n = len(model.encode(text))
    # max_new_tokens=3: the model reads generated tokens 0 and 1 (positions n, n + 1);
    # the third is sampled and never fed.
    ok = sl.Steering({layer: v}, positions=[n, n + 1, -n])
    out = model.generate(text, steering=ok, max_new_tokens=3, ignore_eos=True, return_ids=True)
    assert len(out) == 3
    bad = sl.Steering({layer: v}, positions=[n + 2])
    with pytest.raises(
        sl.OutOfRangeError,
        match=rf"steering position {n + 2} is outside the row, which has {n} prompt tokens "
        rf"\(expected 0..{n - 1} or -{n}..-1, or {n}..{n + 1} for the 2 generated token\(s\)",
    ):
        model.generate(text, steering=bad, max_new_tokens=3)


def test_generated_positions_in_a_prompt_only_call_raise(model: sl.Model) -> None:
    v = sl.Steering({4: _unit(model, 4, 4.0)}, positions="generated")
    with pytest.raises(sl.InvalidArgumentError, match="steering positions 'generated' touch no"):
        model.logits("Hi", steering=v)
    with pytest.raises(sl.InvalidArgumentError, match="'generated' touch no token"):
        model.generate("Hi", steering=v, max_new_tokens=1)
    assert isinstance(model.generate("Hi", steering=v, max_new_tokens=2), str)


# ------------------------------------------------------------------ sampling


@pytest.mark.parametrize("temperature", [1e-38, 1e-30, 5e-324, 1e-12])
def test_tiny_temperature_is_greedy(model: sl.Model, temperature: float) -> None:
    prompts = ["The capital of France is", "def fibonacci(n):"]
    greedy = model.generate(prompts, max_new_tokens=8, return_ids=True, ignore_eos=True)
    got = model.generate(
        prompts,
        max_new_tokens=8,
        temperature=temperature,
        seed=0,
        return_ids=True,
        ignore_eos=True,
    )
    assert got == greedy


# ----------------------------------------------------- every bad argument, named

V8 = np.ones(8, dtype=np.float32)
BIG = 2**70
HUGE = 10**5000  # past Python's str() limit for ints


def _vec(model: sl.Model) -> sl.SteeringVector:
    return sl.SteeringVector({3: np.ones(model.d_model, dtype=np.float32)})


Case = tuple[str, Callable[[sl.Model, Path], Any], type[Exception], str]

CASES: list[Case] = [
    # Model.load
    (
        "load path surrogate",
        lambda m, t: sl.Model.load("\ud800.gguf"),
        sl.InvalidArgumentError,
        r"path '\\ud800\.gguf' cannot be encoded",
    ),
    (
        "load path NUL",
        lambda m, t: sl.Model.load("a\x00b"),
        sl.InvalidArgumentError,
        r"path 'a\\x00b' contains a NUL",
    ),
    ("load path empty", lambda m, t: sl.Model.load(""), sl.InvalidArgumentError, "path is empty"),
    (
        "load path bytes",
        lambda m, t: sl.Model.load(b"x.gguf"),
        sl.InvalidTypeError,
        "path must be a str or a pathlib.Path, got bytes",
    ),
    (
        "load dtype",
        lambda m, t: sl.Model.load("x", dtype=np.str_("q8")),
        sl.InvalidArgumentError,
        "dtype must be",
    ),
    (
        "load device",
        lambda m, t: sl.Model.load("x", device=0),
        sl.InvalidArgumentError,
        "device must be",
    ),
    # generate
    (
        "max_new_tokens 2**63",
        lambda m, t: m.generate("hi", max_new_tokens=2**63),
        sl.InvalidArgumentError,
        "max_new_tokens must be <= 9223372036854775807, got 9223372036854775808",
    ),
    (
        "max_new_tokens huge",
        lambda m, t: m.generate("hi", max_new_tokens=HUGE),
        sl.InvalidArgumentError,
        r"max_new_tokens must be <= 9223372036854775807, got <16610-bit int>",
    ),
    (
        "max_new_tokens bool",
        lambda m, t: m.generate("hi", max_new_tokens=True),
        sl.InvalidTypeError,
        "max_new_tokens must be an int, got bool True",
    ),
    (
        "max_new_tokens float",
        lambda m, t: m.generate("hi", max_new_tokens=np.float64(3)),
        sl.InvalidTypeError,
        "max_new_tokens must be an int, got float64",
    ),
    (
        "max_new_tokens negative",
        lambda m, t: m.generate("hi", max_new_tokens=np.int8(-1)),
        sl.InvalidArgumentError,
        "max_new_tokens must be >= 0, got -1",
    ),
    (
        "temperature str",
        lambda m, t: m.generate("hi", temperature="0.5"),
        sl.InvalidTypeError,
        "temperature must be a number, got str '0.5'",
    ),
    (
        "temperature bool",
        lambda m, t: m.generate("hi", temperature=True),
        sl.InvalidTypeError,
        "temperature must be a number, got bool True",
    ),
    (
        "temperature nan",
        lambda m, t: m.generate("hi", temperature=np.float32("nan")),
        sl.InvalidArgumentError,
        "temperature must be a finite number >= 0",
    ),
    (
        "temperature int overflow",
        lambda m, t: m.generate("hi", temperature=HUGE),
        sl.InvalidArgumentError,
        r"temperature must be a finite number >= 0 \(0 = greedy\), got <16610-bit int>",
    ),
    (
        "top_k 2**64",
        lambda m, t: m.generate("hi", top_k=2**64),
        sl.InvalidArgumentError,
        "top_k must be <= 9223372036854775807",
    ),
    (
        "top_k bool",
        lambda m, t: m.generate("hi", top_k=False),
        sl.InvalidTypeError,
        "top_k must be an int, got bool False",
    ),
    (
        "top_p inf",
        lambda m, t: m.generate("hi", top_p=float("inf")),
        sl.InvalidArgumentError,
        r"top_p must be in \(0, 1\], got inf",
    ),
    (
        "top_p str",
        lambda m, t: m.generate("hi", top_p="0.9"),
        sl.InvalidTypeError,
        "top_p must be a number",
    ),
    (
        "seed 2**64",
        lambda m, t: m.generate("hi", seed=2**64),
        sl.InvalidArgumentError,
        "seed must be <= 18446744073709551615, got 18446744073709551616",
    ),
    (
        "seed negative",
        lambda m, t: m.generate("hi", seed=-1),
        sl.InvalidArgumentError,
        "seed must be >= 0, got -1",
    ),
    (
        "seed float",
        lambda m, t: m.generate("hi", seed=1.0),
        sl.InvalidTypeError,
        "seed must be an int, got float 1.0",
    ),
    (
        "stop bytes",
        lambda m, t: m.generate("hi", stop=b"x"),
        sl.InvalidTypeError,
        "stop must be a str or a list of str, got bytes",
    ),
    (
        "stop item",
        lambda m, t: m.generate("hi", stop=[HUGE]),
        sl.InvalidTypeError,
        "stop strings must be str, got int <16610-bit int>",
    ),
    (
        "stop surrogate",
        lambda m, t: m.generate("hi", stop=["\udfff"]),
        sl.InvalidArgumentError,
        r"stop\[0\] contains a lone surrogate",
    ),
    (
        "return_ids str",
        lambda m, t: m.generate("hi", return_ids="yes"),
        sl.InvalidTypeError,
        "return_ids must be True or False, got str 'yes'",
    ),
    (
        "ignore_eos int",
        lambda m, t: m.generate("hi", ignore_eos=1),
        sl.InvalidTypeError,
        "ignore_eos must be True or False, got int 1",
    ),
    (
        "batch_size 2**64",
        lambda m, t: m.generate("hi", batch_size=2**64),
        sl.InvalidArgumentError,
        "batch_size must be <= 9223372036854775807",
    ),
    (
        "batch_size bool",
        lambda m, t: m.generate("hi", batch_size=True),
        sl.InvalidTypeError,
        "batch_size must be an int, got bool True",
    ),
    (
        "progress str",
        lambda m, t: m.generate("hi", progress="yes"),
        sl.InvalidTypeError,
        "progress must be True, False or None",
    ),
    (
        "prompt surrogate",
        lambda m, t: m.generate(["ok", "a\ud800b"]),
        sl.InvalidArgumentError,
        r"prompts\[1\] contains a lone surrogate '\\ud800' at index 1",
    ),
    ("prompts empty", lambda m, t: m.generate([]), sl.InvalidArgumentError, "prompts is empty"),
    (
        "prompts dict",
        lambda m, t: m.generate({"a": 1}),
        sl.InvalidTypeError,
        "prompts must be a str or a list of str, got dict",
    ),
    (
        "prompt item",
        lambda m, t: m.generate([np.str_("ok"), 3]),
        sl.InvalidTypeError,
        r"prompts\[1\] must be a str, got int 3",
    ),
    # generate_stream
    (
        "stream surrogate",
        lambda m, t: m.generate_stream("\ud800"),
        sl.InvalidArgumentError,
        "prompt contains a lone surrogate",
    ),
    (
        "stream max_new_tokens",
        lambda m, t: m.generate_stream("hi", max_new_tokens=2**64),
        sl.InvalidArgumentError,
        "max_new_tokens must be <=",
    ),
    (
        "stream seed",
        lambda m, t: m.generate_stream("hi", seed=True),
        sl.InvalidTypeError,
        "seed must be an int, got bool",
    ),
    # capture
    (
        "capture position 2**70",
        lambda m, t: m.capture("hi", [0], position=BIG),
        sl.OutOfRangeError,
        f"position {BIG} is out of range",
    ),
    (
        "capture position bool",
        lambda m, t: m.capture("hi", [0], position=True),
        sl.InvalidTypeError,
        "position must be 'last', 'mean', 'mean_skip_first', 'all' or an int",
    ),
    (
        "capture position numpy",
        lambda m, t: m.capture("hi", [0], position=np.int64(1000)),
        sl.OutOfRangeError,
        "row 0: capture position 1000 is outside the row, which has",
    ),
    (
        "capture layer 2**70",
        lambda m, t: m.capture("hi", [BIG]),
        sl.OutOfRangeError,
        f"layer {BIG} is out of range",
    ),
    (
        "capture layer -2**63",
        lambda m, t: m.capture("hi", [-(2**63)]),
        sl.OutOfRangeError,
        f"layer {-(2**63)} is out of range: this model has",
    ),
    (
        "capture layer numpy",
        lambda m, t: m.capture("hi", np.int64(99)),
        sl.OutOfRangeError,
        "layer 99 is out of range",
    ),
    (
        "capture layers dict",
        lambda m, t: m.capture("hi", {0: 1}),
        sl.InvalidTypeError,
        "layers must be an int, 'embed', or a list of those, got dict",
    ),
    (
        "capture layers bool",
        lambda m, t: m.capture("hi", [np.bool_(True)]),
        sl.InvalidTypeError,
        "layers must be an int",
    ),
    (
        "capture texts surrogate",
        lambda m, t: m.capture("\ud800", [0]),
        sl.InvalidArgumentError,
        "texts contains a lone surrogate",
    ),
    (
        "capture batch_size",
        lambda m, t: m.capture("hi", [0], batch_size=1.0),
        sl.InvalidTypeError,
        "batch_size must be an int, got float 1.0",
    ),
    # logits / token_logprobs / perplexity
    (
        "logits texts",
        lambda m, t: m.logits([None]),
        sl.InvalidTypeError,
        r"texts\[0\] must be a str, got NoneType",
    ),
    (
        "logits steering layer",
        lambda m, t: m.logits("hi", steering={BIG: np.ones(m.d_model)}),
        sl.OutOfRangeError,
        f"a layer index {BIG} is out of range",
    ),
    (
        "logits steering bool layer",
        lambda m, t: m.logits("hi", steering={True: np.ones(4)}),
        sl.InvalidTypeError,
        "a layer index must be an int, got bool True",
    ),
    (
        "logprobs batch_size",
        lambda m, t: m.token_logprobs("hi", batch_size=0),
        sl.InvalidArgumentError,
        "batch_size must be >= 1, got 0",
    ),
    (
        "perplexity prefix",
        lambda m, t: m.perplexity("hi", prefix=5),
        sl.InvalidTypeError,
        "prefix must be a str or a list of str, got int",
    ),
    (
        "perplexity prefix length",
        lambda m, t: m.perplexity(["a"], prefix=["b", "c"]),
        sl.InvalidArgumentError,
        "prefix has 2 entries but there are 1 texts",
    ),
    (
        "perplexity surrogate",
        lambda m, t: m.perplexity("\udc00"),
        sl.InvalidArgumentError,
        "texts contains a lone surrogate",
    ),
    # encode / decode
    (
        "encode surrogate",
        lambda m, t: m.encode("x\ud800"),
        sl.InvalidArgumentError,
        r"text contains a lone surrogate '\\ud800' at index 1",
    ),
    (
        "encode flag",
        lambda m, t: m.encode("x", add_special_tokens="no"),
        sl.InvalidTypeError,
        "add_special_tokens must be True or False, got str 'no'",
    ),
    (
        "encode None",
        lambda m, t: m.encode(None),
        sl.InvalidTypeError,
        "text must be a str, got NoneType",
    ),
    (
        "decode negative",
        lambda m, t: m.decode([1, -1]),
        sl.OutOfRangeError,
        r"ids\[1\] is -1; expected a token id >= 0",
    ),
    (
        "decode 2**40",
        lambda m, t: m.decode([2**40]),
        sl.OutOfRangeError,
        r"ids\[0\] is 1099511627776",
    ),
    (
        "decode huge",
        lambda m, t: m.decode(np.array([2**40], dtype=np.uint64)),
        sl.OutOfRangeError,
        r"ids\[0\] is 1099511627776",
    ),
    (
        "decode past vocab",
        lambda m, t: m.decode([m.vocab_size]),
        sl.OutOfRangeError,
        r"token id \d+ \(at position 0\) is out of range",
    ),
    (
        "decode float",
        lambda m, t: m.decode([1.0]),
        sl.InvalidTypeError,
        r"ids\[0\] must be an int, got float 1.0",
    ),
    (
        "decode bool",
        lambda m, t: m.decode([True]),
        sl.InvalidTypeError,
        r"ids\[0\] must be an int, got bool True",
    ),
    (
        "decode flag",
        lambda m, t: m.decode([1], skip_special_tokens=None),
        sl.InvalidTypeError,
        "skip_special_tokens must be True or False, got NoneType None",
    ),
    # chat_prompt / steering()
    ("chat messages", lambda m, t: m.chat_prompt("hi"), sl.InvalidTypeError, "messages must be"),
    (
        "chat flag",
        lambda m, t: m.chat_prompt(MESSAGES, add_generation_prompt="no"),
        sl.InvalidTypeError,
        "add_generation_prompt must be True or False",
    ),
    (
        "chat template type",
        lambda m, t: m.chat_prompt(MESSAGES, chat_template=5),
        sl.InvalidTypeError,
        "chat_template must be a str, got int 5",
    ),
    (
        "steering() float",
        lambda m, t: m.steering(3.0).__enter__(),
        sl.InvalidTypeError,
        "steering must be None, a steerlab.Steering",
    ),
    # Steering
    (
        "Steering str array",
        lambda m, t: sl.Steering({1: np.array(["1.0"])}),
        sl.InvalidTypeError,
        "the steering vector for layer 1 is not an array of numbers: got dtype <U3",
    ),
    (
        "Steering complex",
        lambda m, t: sl.Steering({1: np.array([1 + 2j])}),
        sl.InvalidTypeError,
        "the steering vector for layer 1 is not an array of numbers: got dtype complex128",
    ),
    (
        "Steering bool array",
        lambda m, t: sl.Steering({1: np.array([True])}),
        sl.InvalidTypeError,
        "the steering vector for layer 1 is not an array of numbers: got dtype bool",
    ),
    (
        "Steering float32 overflow",
        lambda m, t: sl.Steering({1: [1e39, 0.0]}),
        sl.InvalidArgumentError,
        r"the steering vector for layer 1 contains 1 NaN or inf value\(s\) \(first at index 0",
    ),
    (
        "Steering empty",
        lambda m, t: sl.Steering({1: np.zeros(0)}),
        sl.ShapeError,
        r"the steering vector for layer 1 must be 1-D \[d_model\] with at least one entry",
    ),
    (
        "Steering 2-D",
        lambda m, t: sl.Steering({1: np.zeros((2, 2))}),
        sl.ShapeError,
        r"must be 1-D \[d_model\], got shape \(2, 2\)",
    ),
    (
        "Steering ragged",
        lambda m, t: sl.Steering({1: [[1.0], [1.0, 2.0]]}),
        sl.InvalidTypeError,
        "the steering vector for layer 1 is not an array of numbers",
    ),
    (
        "Steering layer 2**70",
        lambda m, t: sl.Steering({BIG: V8}),
        sl.OutOfRangeError,
        f"a layer index {BIG} is out of range",
    ),
    (
        "Steering positions 2**70",
        lambda m, t: sl.Steering({1: V8}, positions=[BIG]),
        sl.OutOfRangeError,
        f"steering position {BIG} is out of range",
    ),
    (
        "Steering positions bytes",
        lambda m, t: sl.Steering({1: V8}, positions=b"\x01"),
        sl.InvalidTypeError,
        "steering positions must be one of",
    ),
    (
        "Steering positions dict",
        lambda m, t: sl.Steering({1: V8}, positions={0: 1}),
        sl.InvalidTypeError,
        "steering positions must be one of",
    ),
    (
        "Steering positions bool",
        lambda m, t: sl.Steering({1: V8}, positions=[np.bool_(True)]),
        sl.InvalidTypeError,
        "steering positions must be ints, got bool",
    ),
    (
        "Steering positions empty",
        lambda m, t: sl.Steering({1: V8}, positions=np.array([], int)),
        sl.InvalidArgumentError,
        "steering positions is an empty list",
    ),
    (
        "Steering * overflow",
        lambda m, t: sl.Steering({1: V8 * 1e30}) * 1e30,
        sl.InvalidArgumentError,
        "scaling by 1e.30 at layer 1 overflows float32",
    ),
    (
        "Steering * huge int",
        lambda m, t: sl.Steering({1: V8}) * HUGE,
        sl.InvalidArgumentError,
        "cannot scale a Steering by <16610-bit int>; expected a finite number",
    ),
    (
        "Steering + overflow",
        lambda m, t: sl.Steering({1: V8 * 3e38}) + sl.Steering({1: V8 * 3e38}),
        sl.InvalidArgumentError,
        "adding the steerings overflows float32 at layer 1",
    ),
    # SteeringVector
    (
        "vector empty",
        lambda m, t: sl.SteeringVector({}),
        sl.InvalidArgumentError,
        "a SteeringVector needs at least one layer",
    ),
    (
        "vector str",
        lambda m, t: sl.SteeringVector({1: "abc"}),
        sl.InvalidTypeError,
        "the direction for layer 1 is not an array of numbers",
    ),
    (
        "vector info",
        lambda m, t: sl.SteeringVector({1: V8}, info="x"),
        sl.InvalidTypeError,
        "info must be a VectorInfo or None, got str",
    ),
    (
        "vector layer 2**70",
        lambda m, t: sl.SteeringVector({BIG: V8}),
        sl.OutOfRangeError,
        f"layer {BIG} is out of range",
    ),
    (
        "vector positions",
        lambda m, t: sl.SteeringVector({1: V8}, positions=[1.5]),
        sl.InvalidTypeError,
        "steering positions must be ints, got float 1.5",
    ),
    (
        "vector dose nan",
        lambda m, t: sl.SteeringVector({1: V8}).dose(np.nan),
        sl.InvalidArgumentError,
        "cannot scale a SteeringVector by nan",
    ),
    (
        "vector dose str",
        lambda m, t: sl.SteeringVector({1: V8}).dose("1"),
        sl.InvalidTypeError,
        "a SteeringVector can be dosed by a real number only, got str '1'",
    ),
    (
        "vector * overflow",
        lambda m, t: sl.SteeringVector({1: V8 * 1e30}) * 1e30,
        sl.InvalidArgumentError,
        "overflows float32",
    ),
    (
        "vector at str",
        lambda m, t: sl.SteeringVector({1: V8}).at("1"),
        sl.InvalidTypeError,
        "layers must be an int or a list of ints, got str",
    ),
    (
        "vector at bool",
        lambda m, t: sl.SteeringVector({1: V8}).at([True]),
        sl.InvalidTypeError,
        "layer must be an int, got bool True",
    ),
    (
        "vector save path",
        lambda m, t: sl.SteeringVector({1: V8}).save(5),
        sl.InvalidTypeError,
        "path must be a str or a pathlib.Path, got int 5",
    ),
    (
        "vector to_gguf hint",
        lambda m, t: sl.SteeringVector({1: V8}).to_gguf(t / "v.gguf", 5),
        sl.InvalidTypeError,
        "model_hint must be a str, got int 5",
    ),
    (
        "vector load surrogate",
        lambda m, t: sl.SteeringVector.load("\ud800"),
        sl.InvalidArgumentError,
        "path '\\\\ud800' cannot be encoded",
    ),
    (
        "vector load flag",
        lambda m, t: sl.SteeringVector.load(t / "x", check_fingerprint="no"),
        sl.InvalidTypeError,
        "check_fingerprint must be True or False",
    ),
    (
        "vector load model",
        lambda m, t: sl.SteeringVector.load(t / "x", model="m"),
        sl.InvalidTypeError,
        "model must be a steerlab.Model or None, got str",
    ),
    (
        "vector from_gguf path",
        lambda m, t: sl.SteeringVector.from_gguf(None),
        sl.InvalidTypeError,
        "path must be a str or a pathlib.Path, got NoneType",
    ),
    (
        "vector from_gguf model",
        lambda m, t: sl.SteeringVector.from_gguf(t / "x", model=1),
        sl.InvalidTypeError,
        "model must be a steerlab.Model or None, got int",
    ),
]


@pytest.mark.parametrize(("what", "call", "error", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_arguments_raise_steerlab_errors(
    model: sl.Model,
    tmp_path: Path,
    what: str,
    call: Callable[[sl.Model, Path], Any],
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match) as info:
        result = call(model, tmp_path)
        if hasattr(result, "__next__"):
            next(result)
    assert type(info.value) is error, f"{what}: {type(info.value).__name__}: {info.value}"
    assert isinstance(info.value, sl.SteerlabError)


def _write_vector(path: Path, meta: str) -> None:
    _core.save_vector(str(path), {1: V8}, meta)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ('{"a":' * 100_000 + "1" + "}" * 100_000, r"not valid JSON \(recursion limit exceeded"),
        ("[1, 2]", "is not a JSON object"),
        ("{not json", "is not valid JSON"),
        ('{"d_model": "8", "residual_norms": {}, "scores": {}}', "d_model must be int"),
        ('{"d_model": 8, "method": 3}', "method must be str, got 3"),
        ('{"d_model": 8, "residual_norms": {"x": 1.0}}', "residual_norms has a key 'x'"),
        ('{"d_model": 8, "scores": {"1": "high"}}', r"scores\[1\] must be a finite number"),
        ('{"d_model": 8, "format_version": "1"}', "format_version must be an int"),
        ('{"d_model": 8, "positions": "first"}', "positions: unknown steering positions"),
        ('{"d_model": 8, "positions": [1e400]}', r"not valid JSON \(number out of range"),
        (
            '{"d_model": 8, "n_samples": ' + "9" * 5000 + "}",
            r"not valid JSON \(number out of range",
        ),
    ],
)
def test_corrupt_vector_metadata(tmp_path: Path, meta: str, match: str) -> None:
    path = tmp_path / "v.safetensors"
    _write_vector(path, meta)
    with pytest.raises(sl.ModelFormatError, match=match):
        sl.SteeringVector.load(path)


# ------------------------------------------------------------------ round trips


def _info() -> VectorInfo:
    return VectorInfo(
        d_model=8,
        fingerprint="f" * 64,
        arch="llama",
        n_layers=30,
        method="mean_diff",
        position="last",
        dataset="demo",
        dataset_hash="abc",
        n_samples=12,
        residual_norms={1: 2.5, 4: 3.0},
        scores={1: 0.9},
        created="2026-01-01T00:00:00+00:00",
    )


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "last", [0, -1], [3]])
def test_vector_round_trips_keep_everything(tmp_path: Path, positions: Any) -> None:
    rng = np.random.default_rng(0)
    vec = sl.SteeringVector(
        {1: rng.standard_normal(8), 4: rng.standard_normal(8)}, _info(), positions=positions
    )
    path = tmp_path / "v.safetensors"
    vec.save(path)
    loaded = sl.SteeringVector.load(path)
    copies = {
        "load": loaded,
        "pickle": pickle.loads(pickle.dumps(vec)),
        "deepcopy": copy.deepcopy(vec),
        "copy": copy.copy(vec),
    }
    for how, got in copies.items():
        assert got == vec, how
        assert got.positions == positions, how
        assert got.info == vec.info, how
        assert got.layers == vec.layers, how
        for layer, v in got.directions.items():
            np.testing.assert_array_equal(v, vec.directions[layer])
            assert v.dtype == np.float32 and not v.flags.writeable, how
            with pytest.raises(ValueError, match="read-only"):
                v[0] = 1.0
        assert got.to_steering() == vec.to_steering(), how
    gguf = tmp_path / "v.gguf"
    vec.to_gguf(gguf)
    back = sl.SteeringVector.from_gguf(gguf)
    assert back.layers == vec.layers


@pytest.mark.parametrize("positions", ["all", "last", [0, -1]])
def test_steering_round_trips_keep_read_only_arrays(positions: Any) -> None:
    source = np.arange(8, dtype=np.float32)
    s = sl.Steering({3: source, -1: np.ones(8)}, positions=positions) * 2.0
    source[:] = -5  # the steering holds a copy
    for how, got in {
        "pickle": pickle.loads(pickle.dumps(s)),
        "deepcopy": copy.deepcopy(s),
        "copy": copy.copy(s),
    }.items():
        assert got == s, how
        assert got.positions == positions, how
        for v in got.vectors.values():
            assert not v.flags.writeable, how
            with pytest.raises(ValueError, match="read-only"):
                v[0] = 1.0
        np.testing.assert_array_equal(got.vectors[3], np.arange(8) * 2.0)


def test_constructors_copy_their_inputs() -> None:
    a = np.ones(8, dtype=np.float32)
    v = sl.SteeringVector({1: a})
    s = sl.Steering({1: a})
    a[:] = 7
    assert v[1][0] == 1 and s.vectors[1][0] == 1
    assert not np.shares_memory(v[1], a) and not np.shares_memory(s.vectors[1], a)


# ------------------------------------------------------------------ messages


def test_messages_name_argument_value_and_expectation(model: sl.Model) -> None:
    with pytest.raises(sl.OutOfRangeError, match=rf"^position {BIG} is out of range: an index"):
        model.capture("hi", [0], position=BIG)
    with pytest.raises(
        sl.ShapeError,
        match=r"the direction for layer 0 has 0 values; expected a non-empty 1-D vector",
    ):
        _core.save_vector("unused.safetensors", {0: np.zeros(0, np.float32)}, "{}")
    with pytest.raises(sl.ShapeError, match=r"layer 2 has 3 values, expected 8 \(the width"):
        _core.save_vector("unused.safetensors", {0: V8, 2: np.zeros(3, np.float32)}, "{}")
    with pytest.raises(
        sl.InvalidArgumentError, match=r"vector layers must be ints in 0\.\.2\*\*63, got 'a'"
    ):
        _core.save_vector("unused.safetensors", {"a": V8}, "{}")
    with pytest.raises(sl.OutOfRangeError, match="vector layer -1 is negative; expected a layer"):
        _core.save_vector("unused.safetensors", {-1: V8}, "{}")
    with pytest.raises(
        sl.InvalidTypeError, match=r"messages\[0\] must be a mapping .*got \('user', 'x'\)"
    ):
        model.chat_prompt([("user", "x")])  # type: ignore[list-item]


# ------------------------------------------- every entry point x every odd value

ODD_VALUES: dict[str, Any] = {
    "2**64": 2**64,
    "2**63": 2**63,
    "-1": -1,
    "10**5000": HUGE,
    "True": True,
    "np.bool_": np.bool_(False),
    "np.int64": np.int64(2),
    "np.uint64 2**63": np.uint64(2**63),
    "np.float32": np.float32(1.5),
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": -float("inf"),
    "str": "x",
    "surrogate": "\ud800",
    "bytes": b"x",
    "None": None,
    "[]": [],
    "[None]": [None],
    "['x']": ["x"],
    "[1]": [1],
    "{}": {},
    "object()": object(),
    "2-D array": np.zeros((2, 2)),
    "str array": np.array(["a"]),
    "complex": 1j,
    "1.5": 1.5,
    "1e308": 1e308,
    "5e-324": 5e-324,
}

# entry point -> (arguments, call with one argument replaced, words that may name it)
ENTRY_POINTS: dict[str, tuple[str, Callable[..., Any]]] = {
    "generate": (
        "prompts steering max_new_tokens temperature top_k top_p seed stop return_ids "
        "batch_size progress ignore_eos",
        lambda m, t, **k: m.generate(**{"prompts": "hi", "max_new_tokens": 2, **k}),
    ),
    "generate_stream": (
        "prompt steering max_new_tokens temperature top_k top_p seed stop",
        lambda m, t, **k: list(m.generate_stream(**{"prompt": "hi", "max_new_tokens": 2, **k})),
    ),
    "capture": (
        "texts layers position batch_size steering progress",
        lambda m, t, **k: m.capture(**{"texts": "hi", "layers": [0], **k}),
    ),
    "logits": (
        "texts steering batch_size progress",
        lambda m, t, **k: m.logits(**{"texts": "hi", **k}),
    ),
    "token_logprobs": (
        "texts steering batch_size progress",
        lambda m, t, **k: m.token_logprobs(**{"texts": "hi", **k}),
    ),
    "perplexity": (
        "texts steering batch_size prefix progress",
        lambda m, t, **k: m.perplexity(**{"texts": "hi there", **k}),
    ),
    "encode": ("text add_special_tokens", lambda m, t, **k: m.encode(**{"text": "hi", **k})),
    "decode": ("ids skip_special_tokens", lambda m, t, **k: m.decode(**{"ids": [1], **k})),
    "chat_prompt": (
        "messages add_generation_prompt chat_template",
        lambda m, t, **k: m.chat_prompt(**{"messages": MESSAGES, **k}),
    ),
    "steering": ("steering", lambda m, t, **k: m.steering(**k).__enter__()),
    "Model.load": (
        "path dtype device",
        lambda m, t, **k: sl.Model.load(**{"path": t / "missing.gguf", **k}),
    ),
    "Steering": ("vectors positions", lambda m, t, **k: sl.Steering(**{"vectors": {3: V8}, **k})),
    "SteeringVector": (
        "directions info positions",
        lambda m, t, **k: sl.SteeringVector(**{"directions": {3: V8}, **k}),
    ),
    "SteeringVector.save": (
        "path",
        lambda m, t, **k: sl.SteeringVector({3: V8}).save(**{"path": t / "o.st", **k}),
    ),
    "SteeringVector.load": (
        "path model check_fingerprint",
        lambda m, t, **k: sl.SteeringVector.load(**{"path": t / "missing.st", **k}),
    ),
    "SteeringVector.from_gguf": (
        "path model",
        lambda m, t, **k: sl.SteeringVector.from_gguf(**{"path": t / "missing.gguf", **k}),
    ),
    "SteeringVector.to_gguf": (
        "path model_hint",
        lambda m, t, **k: sl.SteeringVector({3: V8}).to_gguf(**{"path": t / "o.gguf", **k}),
    ),
    "SteeringVector.dose": (
        "dose",
        lambda m, t, **k: sl.SteeringVector(
            {3: V8}, VectorInfo(d_model=8, residual_norms={3: 1.0})
        ).dose(**k),
    ),
    "SteeringVector.at": ("layers", lambda m, t, **k: sl.SteeringVector({3: V8}).at(**k)),
    "SteeringVector.with_positions": (
        "positions",
        lambda m, t, **k: sl.SteeringVector({3: V8}).with_positions(**k),
    ),
    "SteeringVector.cosine": ("other", lambda m, t, **k: sl.SteeringVector({3: V8}).cosine(**k)),
    "Steering *": ("factor", lambda m, t, factor: sl.Steering({3: V8}) * factor),
    "SteeringVector /": ("factor", lambda m, t, factor: sl.SteeringVector({3: V8}) / factor),
}

# How a message may name an argument besides its own name.
ALIASES = {
    "layers": ("layer",),
    "steering": ("layer index", "steering"),
    "vectors": ("layer index", "steering vector for layer"),
    "directions": ("layer", "direction for layer"),
    "positions": ("steering position",),
    "factor": ("Steering",),
    "dose": ("SteeringVector",),
    "other": ("cosine",),
    "path": ("missing", "o.st", "o.gguf"),
}


@pytest.mark.parametrize(
    ("entry", "arg"),
    [(e, a) for e, (args, _) in ENTRY_POINTS.items() for a in args.split()],
)
def test_every_argument_rejects_odd_values_with_a_steerlab_error(
    model: sl.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, arg: str
) -> None:
    """Each odd value is accepted or raises a SteerlabError naming the argument; never a
    bare OverflowError / UnicodeEncodeError / ValueError from deeper down."""
    monkeypatch.chdir(tmp_path)  # path="x" is a valid path: write it there
    call = ENTRY_POINTS[entry][1]
    names = (arg, *ALIASES.get(arg, ()))
    for what, value in ODD_VALUES.items():
        try:
            call(model, tmp_path, **{arg: value})
        except sl.SteerlabError as exc:
            if isinstance(exc, sl.ModelNotFoundError | sl.ModelFormatError) and (
                arg == "path" or "missing" in str(exc)
            ):
                continue  # the value was accepted; there is no file (or model) there
            assert any(n in str(exc) for n in names), f"{entry}({arg}={what}): {exc}"
        except BaseException as exc:
            pytest.fail(f"{entry}({arg}={what}) raised {type(exc).__name__}: {exc}")


# ---------------------------------------------------------- impossible vector metadata


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        (
            '{"d_model": 8, "residual_norms": {"1": -2.5}}',
            r"residual_norms\[1\] must be a finite number >= 0 \(a mean residual-stream "
            r"norm\), got -2\.5",
        ),
        ('{"d_model": 8, "n_layers": -1}', r"n_layers must be a layer count in 1\.\.4096, got -1"),
        ('{"d_model": 8, "n_layers": 0}', r"n_layers must be a layer count in 1\.\.4096, got 0"),
        (
            '{"d_model": 8, "n_layers": 1180591620717411303424}',
            r"n_layers must be a layer count in 1\.\.4096, got 1180591620717411303424",
        ),
        ('{"d_model": 8, "n_samples": -1}', r"n_samples must be a sample count >= 0, got -1"),
        (
            '{"d_model": 8, "fingerprint": ""}',
            r"fingerprint must be a non-empty model fingerprint, got ''",
        ),
        (
            '{"d_model": 8, "positions": 5}',
            r"positions must be a position name or a list of token indices, got int 5",
        ),
        (
            '{"d_model": 8, "positions": {"0": 1}}',
            r"positions must be a position name or a list of token indices, got dict "
            r"\{'0': 1\}",
        ),
    ],
)
def test_impossible_vector_metadata_is_refused(tmp_path: Path, meta: str, match: str) -> None:
    path = tmp_path / "v.safetensors"
    _write_vector(path, meta)
    with pytest.raises(
        sl.ModelFormatError,
        match=rf"^.*v\.safetensors: corrupt steering-vector metadata \({match}\)$",
    ) as info:
        sl.SteeringVector.load(path)
    assert type(info.value) is sl.ModelFormatError


def test_non_finite_residual_norm_is_refused() -> None:
    # The file loader's JSON parser refuses NaN itself; VectorInfo.from_json reads Python's.
    with pytest.raises(
        sl.ModelFormatError,
        match=r"^x: corrupt steering-vector metadata \(residual_norms\[3\] must be a finite "
        r"number, got nan\)$",
    ):
        VectorInfo.from_json('{"d_model": 8, "residual_norms": {"3": NaN}}', "x")


def test_possible_vector_metadata_still_loads(tmp_path: Path) -> None:
    # No format_version (files from before it was written), boundary values, positions
    # as a name or a list.
    path = tmp_path / "v.safetensors"
    _write_vector(
        path,
        '{"d_model": 8, "n_layers": 4096, "n_samples": 0, "fingerprint": "ab", '
        '"residual_norms": {"1": 0.0, "2": 3.5}, "positions": [5]}',
    )
    vec = sl.SteeringVector.load(path)
    assert vec.positions == [5]
    assert vec.info.n_layers == 4096 and vec.info.n_samples == 0
    assert vec.info.fingerprint == "ab"
    assert vec.info.residual_norms == {1: 0.0, 2: 3.5}
    _write_vector(path, '{"d_model": 8, "n_layers": 1, "positions": "last"}')
    vec = sl.SteeringVector.load(path)
    assert vec.positions == "last" and vec.info.n_layers == 1
