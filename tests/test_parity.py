"""Parity with Hugging Face transformers on the same weights.

The golden files under ``tests/goldens/`` come from ``bench/reference/make_goldens.py``
(torch + transformers, never needed here). For each model they hold the reference token
ids, hidden states at every site, last-position logits (top 20 and logsumexp), greedy
continuations, and the same under a fixed steering vector added after one block.

Tolerances (the issue's contract):

- f32 hidden states: max |ours - ref| / RMS(ref) <= 1e-3 at every site, per layer.
- logits: the top-20 ids in the same order (swaps only between near-ties), values and
  logsumexp within 1e-3 of the logit scale (the standard deviation of the full logit
  vector over the vocabulary, the analogue of a layer's RMS: a constant shift does not
  change a softmax).
- greedy tokens: identical (our generation stops at an eos token; the goldens never
  stop, so ours must be a prefix of the golden ending right before an eos token).
- quantized weights (``dtype="auto"`` on the GGUF models): next-token argmax equal to
  the f32 reference on at least 2/3 of the prompts, top-20 logits within 0.25 x std of
  the logits, and for SmolLM2 the first 8 greedy tokens equal to the reference up to a
  near-tie (a step where the reference's top-1/top-2 gap is below 0.25 x std).
- batches: a prompt in a left-padded batch gives what it gives alone (captures within
  1e-4 of the layer's RMS, logits within 1e-4 of the logit scale, greedy ids equal),
  also when every row carries its own steering.

Each model is loaded once per module; a missing golden file skips that model's tests
with the file named, never a failure.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("steerlab._core")

import steerlab
from steerlab import models

HERE = Path(__file__).parent
GOLDENS = HERE / "goldens"
FIXTURES = HERE / "fixtures"

GGUF_MODELS = ["smollm2", "gemma3"]
TINY_MODELS = ["tiny_llama", "tiny_qwen2", "tiny_gemma3"]
ALL_MODELS = GGUF_MODELS + TINY_MODELS

HIDDEN_TOL = 1e-3  # max abs error / RMS of the reference, per site
LOGIT_TOL = 1e-3  # max abs error / std of the full logit vector
BATCH_TOL = 1e-4  # batched vs alone, same measures
QUANT_MIN_SHARE = 2 / 3  # quantized vs f32: share of prompts that must agree
QUANT_GREEDY_PREFIX = 8
QUANT_LOGIT_TOL = 0.25  # quantized logits vs f32: max abs error / std of the logits
QUANT_TIE = 0.25  # quantized greedy may part from f32 where the gap is < this x std


# ----------------------------------------------------------------------------- loading


def _model_path(name: str) -> str:
    if name == "smollm2":
        return models.smollm2_135m_path()
    if name == "gemma3":
        return models.gemma3_270m_path()
    return str(FIXTURES / name)


class Golden:
    """One model's golden files: the JSON record and the arrays."""

    def __init__(self, name: str) -> None:
        self.name = name
        with open(GOLDENS / f"{name}.json", encoding="utf-8") as f:
            self.meta: dict[str, Any] = json.load(f)
        with np.load(GOLDENS / f"{name}.npz") as npz:
            self.arrays = {key: npz[key] for key in npz.files}
        self.prompts: list[str] = self.meta["prompts"]

    def array(self, key: str) -> np.ndarray:
        if key not in self.arrays:
            raise KeyError(f"{self.name}.npz has no array {key!r} (has {sorted(self.arrays)})")
        return self.arrays[key]

    @property
    def steer_layer(self) -> int:
        return int(self.meta["steer"]["layer"])

    @property
    def steer_coef(self) -> float:
        return float(self.meta["steer"]["coef"])

    def steering(self, sign: float = 1.0) -> dict[int, np.ndarray]:
        """The golden steering, ``{layer: coef * vector}``, applied at all positions."""
        vec = self.array("steer_vector").astype(np.float32)
        return {self.steer_layer: (sign * self.steer_coef * vec).astype(np.float32)}


def _load_golden(name: str) -> Golden:
    missing = [
        p.name for p in (GOLDENS / f"{name}.json", GOLDENS / f"{name}.npz") if not p.exists()
    ]
    if missing:
        pytest.skip(
            f"golden file(s) {', '.join(missing)} not in tests/goldens/; write them with "
            f"bench/reference/make_goldens.py"
        )
    return Golden(name)


class Subject:
    """A loaded model with its goldens, caching the results several tests compare."""

    def __init__(self, name: str, model: steerlab.Model, golden: Golden) -> None:
        self.name = name
        self.model = model
        self.golden = golden

    @functools.cache  # noqa: B019 (one Subject per model and module)
    def greedy(self, index: int, steered: bool = False) -> list[int]:
        """New ids for one prompt alone, as many as the golden holds."""
        key = "steered_greedy" if steered else "greedy"
        n = len(self.golden.meta[key][index])
        steering = self.golden.steering() if steered else None
        out = self.model.generate(
            [self.golden.prompts[index]],
            steering=steering,
            max_new_tokens=n,
            return_ids=True,
            progress=False,
        )
        return list(out[0])

    @functools.cache  # noqa: B019
    def logits(self, index: int, sign: float = 0.0) -> np.ndarray:
        """Last-position logits of one prompt alone (sign 0: unsteered)."""
        steering = self.golden.steering(sign) if sign else None
        return self.model.logits([self.golden.prompts[index]], steering=steering)[0]

    @functools.cache  # noqa: B019
    def hidden(self, index: int) -> np.ndarray:
        """``[n_layers + 1, seq, d]``: the embedding output, then every block's output."""
        layers: list[Any] = ["embed", *range(self.model.n_layers)]
        out = self.model.capture(
            [self.golden.prompts[index]], layers=layers, position="all", progress=False
        )
        return out[0]


def _subject(name: str, dtype: str) -> Subject:
    golden = _load_golden(name)
    path = _model_path(name)
    model = steerlab.Model.load(path, dtype=dtype)
    return Subject(name, model, golden)


@pytest.fixture(scope="module", params=ALL_MODELS)
def f32(request: pytest.FixtureRequest) -> Subject:
    """Each model with dense f32 weights (the exact path), loaded once per module."""
    return _subject(request.param, "f32")


@pytest.fixture(scope="module", params=GGUF_MODELS)
def quantized(request: pytest.FixtureRequest) -> Subject:
    """The GGUF models with their weights kept quantized (``dtype="auto"``)."""
    return _subject(request.param, "auto")


# ----------------------------------------------------------------------------- measures


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / RMS(ref)."""
    ref = ref.astype(np.float64)
    rms = float(np.sqrt(np.mean(ref**2)))
    return float(np.max(np.abs(ours.astype(np.float64) - ref))) / max(rms, 1e-30)


def _per_layer(ours: np.ndarray, ref: np.ndarray) -> list[float]:
    return [_rel_err(ours[i], ref[i]) for i in range(ref.shape[0])]


def _site_name(i: int) -> str:
    return "embed" if i == 0 else f"layer {i - 1}"


def _logsumexp(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    m = float(np.max(x))
    return m + float(np.log(np.sum(np.exp(x - m))))


def _check_top(
    ours: np.ndarray, ref_ids: np.ndarray, ref_vals: np.ndarray, what: str
) -> tuple[float, int]:
    """Compare our full logit vector with the reference top-k; return (error, swaps).

    The error is max |ours[ref_ids] - ref_vals| / std(ours). Our top-k ids must equal
    the reference's rank by rank, except where the two ids at a rank are a near-tie
    under our logits (they differ by less than the value tolerance).
    """
    k = len(ref_ids)
    scale = float(np.std(ours.astype(np.float64)))
    tol = LOGIT_TOL * scale
    err = float(np.max(np.abs(ours[ref_ids].astype(np.float64) - ref_vals)))
    assert err <= tol, (
        f"{what}: top-{k} logits differ from transformers by {err:.3g} "
        f"= {err / scale:.3g} x std(logits) (tolerance {LOGIT_TOL:g})"
    )
    our_ids = np.argsort(-ours, kind="stable")[:k]
    swaps = 0
    for rank, (a, b) in enumerate(zip(our_ids, ref_ids, strict=True)):
        if a == b:
            continue
        gap = abs(float(ours[a]) - float(ours[b]))
        assert gap <= tol, (
            f"{what}: rank {rank} is token {a} for us but {b} in transformers, "
            f"and their logits differ by {gap:.3g} (not a near-tie; tolerance {tol:.3g})"
        )
        swaps += 1
    return err / scale, swaps


def _check_greedy(
    ours: list[int], ref: list[int], margins: list[float], tie: float, eos: list[int], what: str
) -> bool:
    """Greedy ids must equal transformers' (ours may stop early, right before an eos).

    The one allowed difference is a near-tie: at the first step where the two differ,
    transformers' own top-1/top-2 gap (``margins``) must be within ``tie``, i.e. inside
    what the logit tolerance cannot order; the rest is not compared (the texts then
    follow different tokens). Returns whether such a near-tie was met.
    """
    n = min(len(ours), len(ref))
    first_diff = next((i for i in range(n) if ours[i] != ref[i]), None)
    if first_diff is None and len(ours) < len(ref) and ref[len(ours)] not in eos:
        first_diff = len(ours)  # we stopped at an eos token where transformers did not
    if first_diff is None:
        assert len(ours) <= len(ref), f"{what}: {len(ours)} tokens for {len(ref)} asked"
        return False
    gap = margins[first_diff]
    assert gap <= tie, (
        f"{what}: greedy ids differ from transformers at step {first_diff}, where its "
        f"top-1/top-2 gap is {gap:.3g} (a near-tie would be <= {tie:.3g}); "
        f"ours {ours}, transformers {ref}"
    )
    return True


# ------------------------------------------------------------------------------ tokens


def test_prompt_ids(f32: Subject) -> None:
    g = f32.golden
    for prompt, ids in zip(g.prompts, g.meta["input_ids"], strict=True):
        assert f32.model.encode(prompt) == ids, f"{f32.name}: ids of {prompt!r}"


def test_encode_cases(f32: Subject) -> None:
    cases = f32.golden.meta.get("encode_cases") or []
    if not cases:
        pytest.skip(f"{f32.name}.json has no encode_cases")
    special = f32.golden.meta["special"]
    for case in cases:
        text = case["text"]
        want = case["ids"]
        if special.get("adds_bos") and text.startswith(special["bos_token"]):
            # Deliberate difference: transformers adds a second BOS before a text that
            # starts with one; steerlab's encode (= what the model is fed) does not.
            assert want[:2] == [special["bos_token_id"]] * 2
            want = want[1:]
        assert f32.model.encode(text) == want, f"{f32.name}: encode({text!r})"
        assert f32.model.encode(text, add_special_tokens=False) == case["ids_no_special"], (
            f"{f32.name}: encode({text!r}, add_special_tokens=False)"
        )


def test_decode_cases(f32: Subject) -> None:
    cases = f32.golden.meta.get("decode_cases") or []
    if not cases:
        pytest.skip(f"{f32.name}.json has no decode_cases")
    for case in cases:
        ids = case["ids"]
        for skip, key in ((False, "text"), (True, "text_skip_special")):
            if key in case:
                got = f32.model.decode(ids, skip_special_tokens=skip)
                assert got == case[key], f"{f32.name}: decode({ids}, skip_special_tokens={skip})"


def test_chat_prompt(f32: Subject) -> None:
    chat = f32.golden.meta.get("chat")
    if not chat:
        pytest.skip(f"{f32.name}.json has no chat case")
    template = None
    if f32.model.chat_template is None:
        # The Gemma GGUF carries no template; the golden records the standard Gemma turn
        # format it used, so the rendering (jinja as transformers sets it up) is still
        # compared.
        template = f32.golden.meta.get("chat_template")
        if not template:
            pytest.fail(f"{f32.name}: the model has no chat template and the golden gives none")
    text = f32.model.chat_prompt(chat["messages"], chat_template=template)
    assert text == chat["text"], f"{f32.name}: chat_prompt"
    if "ids" in chat:
        # As apply_chat_template(tokenize=True): the rendered text carries its special
        # tokens, so it is tokenized without adding any.
        ids = f32.model.encode(text, add_special_tokens=False)
        assert ids == chat["ids"], f"{f32.name}: ids of the chat prompt"


# ------------------------------------------------------------------------- f32 numbers


def test_hidden_states(f32: Subject) -> None:
    """Every site, every prompt: max |ours - ref| / RMS(ref) <= 1e-3, per layer."""
    g = f32.golden
    worst = (0.0, "", "")
    for p, prompt in enumerate(g.prompts):
        ref = g.array(f"hidden_{p}")
        ours = f32.hidden(p)
        assert ours.shape == ref.shape, f"{f32.name} prompt {p}: shape {ours.shape} vs {ref.shape}"
        for i, err in enumerate(_per_layer(ours, ref)):
            if err > worst[0]:
                worst = (err, _site_name(i), prompt)
    err, site, prompt = worst
    print(f"[parity] {f32.name} f32 hidden states: worst max|err|/RMS = {err:.3g} ({site})")
    assert err <= HIDDEN_TOL, (
        f"{f32.name}: hidden state at {site} of {prompt!r} differs from transformers by "
        f"{err:.3g} x RMS (tolerance {HIDDEN_TOL:g})"
    )


def test_logits(f32: Subject) -> None:
    g = f32.golden
    worst_err, worst_lse = 0.0, 0.0
    for p in range(len(g.prompts)):
        ours = f32.logits(p)
        assert ours.shape == (f32.model.vocab_size,) and ours.dtype == np.float32
        err, _ = _check_top(
            ours,
            g.array(f"logits_top_ids_{p}"),
            g.array(f"logits_top_vals_{p}").astype(np.float64),
            f"{f32.name} prompt {p}",
        )
        lse_err = abs(_logsumexp(ours) - float(g.array(f"logits_lse_{p}"))) / float(np.std(ours))
        assert lse_err <= LOGIT_TOL, (
            f"{f32.name} prompt {p}: logsumexp differs by {lse_err:.3g} x std(logits)"
        )
        worst_err, worst_lse = max(worst_err, err), max(worst_lse, lse_err)
    print(
        f"[parity] {f32.name} f32 logits: worst top-20 err/std = {worst_err:.3g}, "
        f"logsumexp err/std = {worst_lse:.3g}"
    )


def _tie(subject: Subject, index: int) -> float:
    """Logit gap below which two tokens count as tied for one prompt: twice the logit
    tolerance (each of the two logits may be off by the tolerance)."""
    return 2 * LOGIT_TOL * float(np.std(subject.logits(index)))


def test_greedy(f32: Subject) -> None:
    g = f32.golden
    ties = 0
    for p in range(len(g.prompts)):
        ties += _check_greedy(
            f32.greedy(p),
            g.meta["greedy"][p],
            g.meta["greedy_margins"][p],
            _tie(f32, p),
            f32.model.eos_ids,
            f"{f32.name} prompt {p}",
        )
    print(f"[parity] {f32.name} f32 greedy: equal on all prompts ({ties} near-tie divergences)")


# ---------------------------------------------------------------------------- steering


def test_steered_logits(f32: Subject) -> None:
    g = f32.golden
    worst = 0.0
    for p in range(len(g.prompts)):
        err, _ = _check_top(
            f32.logits(p, 1.0),
            g.array(f"steered_logits_top_ids_{p}"),
            g.array(f"steered_logits_top_vals_{p}").astype(np.float64),
            f"{f32.name} prompt {p} steered at layer {g.steer_layer}",
        )
        worst = max(worst, err)
    print(f"[parity] {f32.name} f32 steered logits: worst top-20 err/std = {worst:.3g}")


def test_steered_greedy(f32: Subject) -> None:
    g = f32.golden
    ties = 0
    for p in range(len(g.prompts)):
        ties += _check_greedy(
            f32.greedy(p, steered=True),
            g.meta["steered_greedy"][p],
            g.meta["steered_greedy_margins"][p],
            _tie(f32, p),
            f32.model.eos_ids,
            f"{f32.name} prompt {p} steered",
        )
    print(f"[parity] {f32.name} f32 steered greedy: equal ({ties} near-tie divergences)")
    # The vector must matter, or this test proves nothing.
    assert any(g.meta["steered_greedy"][p] != g.meta["greedy"][p] for p in range(len(g.prompts))), (
        f"{f32.name}: the golden steering does not change any greedy continuation"
    )


def test_steered_hidden(f32: Subject) -> None:
    g = f32.golden
    last = f32.model.n_layers - 1
    worst = 0.0
    for p, prompt in enumerate(g.prompts):
        ours = f32.model.capture(
            [prompt], layers=[last], position="all", steering=g.steering(), progress=False
        )[0][0]
        ref = g.array(f"steered_hidden_last_{p}")
        assert ours.shape == ref.shape, f"{f32.name} prompt {p}: {ours.shape} vs {ref.shape}"
        err = _rel_err(ours, ref)
        assert err <= HIDDEN_TOL, (
            f"{f32.name} prompt {p}: steered output of block {last} differs from "
            f"transformers by {err:.3g} x RMS (tolerance {HIDDEN_TOL:g})"
        )
        worst = max(worst, err)
    print(f"[parity] {f32.name} f32 steered last block: worst max|err|/RMS = {worst:.3g}")


# --------------------------------------------------------------------------- quantized


def test_quantized_argmax(quantized: Subject) -> None:
    """Quantized next-token argmax equals the f32 reference on >= 2/3 of the prompts."""
    g = quantized.golden
    n = len(g.prompts)
    logits = quantized.model.logits(g.prompts, progress=False)
    agree = sum(
        int(np.argmax(logits[p])) == int(g.array(f"logits_top_ids_{p}")[0]) for p in range(n)
    )
    print(f"[parity] {quantized.name} quantized: next-token argmax agrees on {agree}/{n}")
    assert agree >= QUANT_MIN_SHARE * n, (
        f"{quantized.name} ({quantized.model.dtype}): next-token argmax agrees with the f32 "
        f"reference on {agree}/{n} prompts; tolerance: at least {QUANT_MIN_SHARE:.2f} of them"
    )


def test_quantized_logits(quantized: Subject) -> None:
    """Quantized top-20 logits stay within 0.25 x std(logits) of the f32 reference.

    Q4 weights are dequantized exactly by the f32 path, so this measures what the
    quantized kernels add: activations are quantized to 8 bits per block of 32 before
    each matmul (as llama.cpp does). Measured: 0.11 on SmolLM2 Q4_1, 0.07 on Gemma-3
    Q4_K_M. A wrong scale or block layout gives errors of order 1 x std and more.
    """
    g = quantized.golden
    worst = 0.0
    for p in range(len(g.prompts)):
        ours = quantized.logits(p)
        ref_ids = g.array(f"logits_top_ids_{p}")
        ref_vals = g.array(f"logits_top_vals_{p}").astype(np.float64)
        err = float(np.max(np.abs(ours[ref_ids] - ref_vals))) / float(np.std(ours))
        worst = max(worst, err)
    print(f"[parity] {quantized.name} quantized: top-20 logits err/std = {worst:.3g}")
    assert worst <= QUANT_LOGIT_TOL, (
        f"{quantized.name} ({quantized.model.dtype}): top-20 logits differ from the f32 "
        f"reference by {worst:.3g} x std(logits); tolerance {QUANT_LOGIT_TOL:g}"
    )


def test_quantized_greedy(quantized: Subject) -> None:
    """SmolLM2 Q4_1: the first 8 greedy tokens follow the f32 reference up to near-ties.

    Tolerance: on every prompt, the quantized greedy ids equal transformers' f32 ids
    until the first step where transformers' own top-1/top-2 gap is below
    0.25 x std(logits) (~0.9 logits for SmolLM2): there 8-bit activations may pick the
    other token. Exact agreement of all 8 tokens is reported, not asserted: measured on
    SmolLM2, 1/3 golden prompts (the others part at gaps of 0.22 and 0.08 logits, at
    step 5) and 9/15 on a wider prompt set, with next-token argmax agreeing on 15/15.
    """
    if quantized.name != "smollm2":
        pytest.skip("greedy agreement of quantized weights is checked on SmolLM2 only")
    g = quantized.golden
    n = len(g.prompts)
    k = QUANT_GREEDY_PREFIX
    outs = quantized.model.generate(g.prompts, max_new_tokens=k, return_ids=True, progress=False)
    exact = 0
    for p, ours in enumerate(outs):
        ref = g.meta["greedy"][p][:k]
        tie = QUANT_TIE * float(np.std(quantized.logits(p)))
        exact += not _check_greedy(
            list(ours),
            ref,
            g.meta["greedy_margins"][p],
            tie,
            quantized.model.eos_ids,
            f"{quantized.name} ({quantized.model.dtype}) prompt {p}",
        )
    print(f"[parity] {quantized.name} quantized: first {k} greedy tokens exact on {exact}/{n}")


# ----------------------------------------------------------------------------- batches


def test_batched_captures_equal_alone(f32: Subject) -> None:
    """All prompts in one left-padded batch: each row's captures equal its capture alone."""
    g = f32.golden
    layers: list[Any] = ["embed", *range(f32.model.n_layers)]
    batched = f32.model.capture(
        g.prompts, layers=layers, position="all", batch_size=len(g.prompts), progress=False
    )
    worst = 0.0
    for p in range(len(g.prompts)):
        alone = f32.hidden(p)
        assert batched[p].shape == alone.shape
        err = max(_per_layer(batched[p], alone))
        assert err <= BATCH_TOL, (
            f"{f32.name} prompt {p}: batched capture differs from alone by {err:.3g} x RMS "
            f"(tolerance {BATCH_TOL:g})"
        )
        worst = max(worst, err)
    print(f"[parity] {f32.name} batched vs alone captures: worst max|err|/RMS = {worst:.3g}")


def test_batched_greedy_equal_alone(f32: Subject) -> None:
    g = f32.golden
    n = max(len(x) for x in g.meta["greedy"])
    batched = f32.model.generate(
        g.prompts, max_new_tokens=n, return_ids=True, batch_size=len(g.prompts), progress=False
    )
    for p, ours in enumerate(batched):
        assert list(ours) == f32.greedy(p), f"{f32.name} prompt {p}: batched greedy != alone"


def test_per_row_steering_equals_alone(f32: Subject) -> None:
    """Rows carrying [vec, None, -vec] give each row exactly what it gives alone."""
    g = f32.golden
    prompts = g.prompts[:3]
    signs = [1.0, 0.0, -1.0][: len(prompts)]
    rows = [g.steering(s) if s else None for s in signs]

    batched_logits = f32.model.logits(prompts, steering=rows, batch_size=len(prompts))
    for p, sign in enumerate(signs):
        alone = f32.logits(p, sign)
        scale = float(np.std(alone))
        err = float(np.max(np.abs(batched_logits[p] - alone))) / scale
        assert err <= BATCH_TOL, (
            f"{f32.name} row {p} (steering sign {sign:+g}): batched logits differ from alone "
            f"by {err:.3g} x std(logits) (tolerance {BATCH_TOL:g})"
        )

    n = 12
    batched = f32.model.generate(
        prompts,
        steering=rows,
        max_new_tokens=n,
        return_ids=True,
        batch_size=len(prompts),
        progress=False,
    )
    for p, sign in enumerate(signs):
        alone = f32.model.generate(
            [prompts[p]],
            steering=rows[p],
            max_new_tokens=n,
            return_ids=True,
            progress=False,
        )[0]
        assert list(batched[p]) == list(alone), (
            f"{f32.name} row {p} (steering sign {sign:+g}): batched greedy {batched[p]} "
            f"!= alone {alone}"
        )
