"""Values of `token_logprobs` / `perplexity` and the generation length promised by
`ignore_eos`, on the default model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")

# Long enough that token_logprobs takes its [positions, vocab] logits in several chunks
# (128 positions each).
LONG = " ".join(
    f"Step {i}: the river carried {i % 7} boats past the mill, and the miller counted them."
    for i in range(20)
)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def test_token_logprobs_match_next_token_logits_across_chunks(model: Any) -> None:
    ids = model.encode(LONG)
    assert len(ids) > 300
    lp = model.token_logprobs(LONG)[0]
    assert lp.shape == (len(ids) - 1,) and lp.dtype == np.float32
    checked = 0
    # Prefixes at and around the chunk edges; a prefix counts only where its text
    # encodes back to the same ids (so `logits` sees exactly those tokens).
    for j in (1, 2, 127, 128, 129, 255, 256, 257, len(ids) - 1):
        prefix = model.decode(ids[:j])
        if model.encode(prefix) != ids[:j]:
            continue
        want = _log_softmax(model.logits(prefix)[0])[ids[j]]
        assert lp[j - 1] == pytest.approx(want, abs=2e-3), j
        checked += 1
    assert checked >= 5
    # perplexity is exp of the mean negative log-probability of those same values.
    assert model.perplexity(LONG)[0] == pytest.approx(float(np.exp(-lp.mean())), rel=1e-4)


def test_ignore_eos_refuses_a_length_that_does_not_fit_the_context(model: Any) -> None:
    n = len(model.encode("Hello"))
    room = model.max_context - n
    with pytest.raises(
        sl.ContextLengthError,
        match=rf"ignore_eos=True asks for exactly max_new_tokens={room + 1} new tokens, but "
        rf"prompt 0 has {n} tokens and the model's context holds {model.max_context}: at most "
        rf"{room} new tokens fit",
    ):
        model.generate("Hello", max_new_tokens=room + 1, ignore_eos=True)
    # A length that fits is generated in full.
    out = model.generate("Hello", max_new_tokens=4, ignore_eos=True, return_ids=True)
    assert len(out) == 4


def test_decode_names_the_last_valid_id(model: Any) -> None:
    v = model.vocab_size
    with pytest.raises(
        sl.OutOfRangeError,
        match=rf"token id {v} \(at position 1\) is out of range: the vocabulary has {v} "
        rf"tokens \(ids 0 to {v - 1}\)",
    ):
        model.decode([0, v])
