"""Contrast pairs and the seven prompt types, diagnose() against numpy, steerability
against hand-computed logit differences, prompt-type comparison, plots, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")

from steerlab.contrast import (  # noqa: E402
    PROMPT_TYPES,
    ContrastPairs,
    Record,
    matching_letter,
    parse_prompt_type,
    render_ab,
)

RECORDS = [
    Record(
        f"Question number {i}: is the plan for day {i} a good one?",
        f"Yes, day {i} works.",
        f"No, day {i} fails.",
    )
    for i in range(12)
]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path) -> Any:
    return sl.Model.load(str(tiny_llama_dir))


# ------------------------------------------------------------------------ contrast pairs


def test_seven_prompt_types() -> None:
    assert len(PROMPT_TYPES) == 7 and len(set(PROMPT_TYPES)) == 7
    assert parse_prompt_type("instruction+prefilled") == {"prefilled", "instruction"}
    with pytest.raises(sl.InvalidArgumentError, match="unknown prompt type"):
        parse_prompt_type("zero_shot")
    with pytest.raises(sl.InvalidArgumentError, match="unknown prompt type"):
        parse_prompt_type("")


def test_prefilled_pairs_differ_only_in_the_answer_letter() -> None:
    pairs = ContrastPairs.from_records(RECORDS, prompt_type="prefilled")
    assert len(pairs) == len(RECORDS) and pairs.prompt_type == "prefilled"
    letters = []
    for i, p in enumerate(pairs):
        assert p.positive[:-1] == p.negative[:-1]
        assert p.positive.endswith("Answer: (" + matching_letter(i))
        letters.append(p.positive[-1])
        # the matching answer text sits under the letter the positive prefills
        assert f"({p.positive[-1]}) {RECORDS[i].matching}" in p.positive
    assert letters.count("A") == letters.count("B")  # balanced: the letter carries nothing


def test_instruction_and_few_shot_prompt_types() -> None:
    beh = {
        "instruction_matching": "Always agree.",
        "instruction_not_matching": "Never agree.",
    }
    pairs = ContrastPairs.from_records(
        RECORDS, prompt_type="instruction+few_shot", n_shots=3, seed=1, **beh
    )
    for i, p in enumerate(pairs):
        assert p.positive.startswith("Always agree.") and p.negative.startswith("Never agree.")
        assert p.positive.endswith("Answer: (") and p.negative.endswith("Answer: (")
        assert p.positive.count("Answer: (") == 4  # three answered examples and the question
        assert p.positive.count(RECORDS[i].question) == 1
        # examples answered the matching way for positives, the other way for negatives
        assert p.positive.split("Answer: (")[1][0] != p.negative.split("Answer: (")[1][0]
    # few-shot examples never contain the record itself
    pairs = ContrastPairs.from_records(RECORDS, prompt_type="few_shot", n_shots=5)
    for i, p in enumerate(pairs):
        assert p.positive.count(RECORDS[i].question) == 1
    with pytest.raises(sl.InvalidArgumentError, match="instruction_matching"):
        ContrastPairs.from_records(RECORDS, prompt_type="instruction")
    with pytest.raises(sl.InvalidArgumentError, match="at least 6 records"):
        ContrastPairs.from_records(RECORDS[:5], prompt_type="few_shot", n_shots=5)


def test_chat_rendering_uses_the_template(model: Any) -> None:
    text = render_ab(RECORDS[0], 0, answer="matching", instruction="Be kind.", model=model)
    assert text.startswith("<|im_start|>system\nBe kind.")
    assert text.endswith("<|im_start|>assistant\n(A")


def test_contrast_pair_errors() -> None:
    with pytest.raises(sl.InvalidArgumentError, match="no contrast pairs"):
        ContrastPairs.from_texts([])
    with pytest.raises(sl.InvalidTypeError, match="pair 0"):
        ContrastPairs.from_texts([("only positive",)])  # type: ignore[list-item]
    with pytest.raises(sl.InvalidArgumentError, match="same text"):
        ContrastPairs.from_texts([("same", "same")])
    with pytest.raises(sl.InvalidArgumentError, match="no records"):
        ContrastPairs.from_records([])
    with pytest.raises(sl.InvalidArgumentError, match="not_matching"):
        ContrastPairs.from_records([{"question": "q", "matching": "a"}])
    with pytest.raises(sl.InvalidArgumentError, match="read position"):
        ContrastPairs.from_texts([("a", "b")], position="middle")


def test_split_and_hash() -> None:
    pairs = ContrastPairs.from_records(RECORDS)
    a, b = pairs.split(0.75, seed=3)
    assert len(a) == 9 and len(b) == 3
    assert set(a.positives).isdisjoint(b.positives)
    assert pairs.dataset_hash() == ContrastPairs.from_records(RECORDS).dataset_hash()
    assert pairs.dataset_hash() != a.dataset_hash()
    with pytest.raises(sl.InvalidArgumentError, match="cannot split"):
        pairs.split(12)


# ------------------------------------------------------------------------------ diagnose


def test_diagnose_matches_numpy_on_captures(tiny: Any) -> None:
    pairs = ContrastPairs.from_records(RECORDS, prompt_type="prefilled")
    rep = sl.diagnose(tiny, pairs)
    assert rep.layers == list(range(tiny.n_layers))
    acts_p = tiny.capture(pairs.positives, rep.layers, "last").astype(np.float64)
    acts_n = tiny.capture(pairs.negatives, rep.layers, "last").astype(np.float64)
    for j, layer in enumerate(rep.layers):
        d = acts_p[:, j] - acts_n[:, j]
        s = d.mean(0)
        cos = d @ s / (np.linalg.norm(d, axis=1) * np.linalg.norm(s))
        np.testing.assert_allclose(rep[layer].cosines, cos, rtol=1e-4, atol=1e-5)
        mid = (acts_p[:, j].mean(0) + acts_n[:, j].mean(0)) / 2
        pp = 2 * (acts_p[:, j] - mid) @ s / (s @ s)
        pn = 2 * (acts_n[:, j] - mid) @ s / (s @ s)
        want = abs(pp.mean() - pn.mean()) / np.sqrt((pp.var() + pn.var()) / 2)
        assert rep[layer].d_prime == pytest.approx(want, rel=1e-3)
    best = max(rep.layers, key=lambda layer: rep[layer].mean_cosine)
    assert rep.recommended_layer == best
    v = rep.vector()
    assert v.layers == [best]
    np.testing.assert_allclose(
        v[best], (acts_p[:, best] - acts_n[:, best]).mean(0), rtol=1e-4, atol=1e-5
    )
    assert "recommended" in rep.summary()
    df = rep.to_pandas()
    assert list(df.index) == rep.layers
    assert {"mean_cosine", "d_prime", "relative_norm"} <= set(df.columns)


def test_diagnose_errors(tiny: Any) -> None:
    one = ContrastPairs.from_texts([("good day", "bad day")])
    with pytest.raises(sl.InvalidArgumentError, match="at least 2 contrast pairs"):
        sl.diagnose(tiny, one)
    pairs = ContrastPairs.from_records(RECORDS[:4])
    with pytest.raises(sl.OutOfRangeError):
        sl.diagnose(tiny, pairs, layers=[tiny.n_layers])
    rep = sl.diagnose(tiny, pairs, layers=[1])
    with pytest.raises(sl.OutOfRangeError, match="was not diagnosed"):
        rep[0]


# -------------------------------------------------------------------------- steerability


def test_steerability_equals_hand_computed_logit_differences(tiny: Any) -> None:
    pairs = ContrastPairs.from_records(RECORDS, prompt_type="prefilled")
    v = sl.SteeringVector.train(tiny, pairs, layers=[1], reference_texts=["a b c d"])
    recs = RECORDS[:5]
    mults = (-2.0, 0.0, 2.0)
    res = sl.evaluate.steerability(tiny, recs, v, mults, batch_size=4)
    assert res.margins.shape == (5, 3)
    id_a = tiny.encode("Answer: (A")[-1]
    id_b = tiny.encode("Answer: (B")[-1]
    for i, rec in enumerate(recs):
        prompt = render_ab(rec, i, answer=None)
        for j, m in enumerate(mults):
            logits = tiny.logits([prompt], steering=None if m == 0 else v * m)[0]
            pos, neg = (id_a, id_b) if matching_letter(i) == "A" else (id_b, id_a)
            assert res.margins[i, j] == pytest.approx(logits[pos] - logits[neg], abs=1e-4)
    assert np.allclose(res.effect, res.margins[:, 2] - res.margins[:, 1])
    assert res.anti_steerable == pytest.approx(float((res.effect < 0).mean()))
    df = res.to_pandas()
    assert list(df.columns[:3]) == ["unsteered", "effect", "slope"]
    with pytest.raises(sl.InvalidArgumentError, match="include 0"):
        sl.evaluate.steerability(tiny, recs, v, (1.0, 2.0))


def test_compare_prompt_types(tiny: Any) -> None:
    # the tiny model's 256-token context is too short for few-shot prompts; notebook 02
    # compares all seven types on the real model
    beh = sl.datasets.load_behaviour("formality")
    types = [t for t in PROMPT_TYPES if "few_shot" not in t]
    cmp = sl.evaluate.compare_prompt_types(
        tiny, beh, layer=1, prompt_types=types, n_train=8, n_eval=4, progress=False
    )
    assert cmp.prompt_types == types
    assert cmp.cosines.shape == (3, 3)
    np.testing.assert_allclose(np.diag(cmp.cosines), 1.0)
    np.testing.assert_allclose(cmp.cosines, cmp.cosines.T)
    df = cmp.to_pandas()
    assert len(df) == 3 and "anti_steerable" in df.columns


def test_steered_generations_report(tiny: Any) -> None:
    topic = sl.datasets.load_topic("space")
    v = sl.SteeringVector.mean_centring(
        tiny, list(topic.texts[:6]), ["a plain line", "another one"], layers=[1]
    )
    rep = sl.evaluate.steered_generations(
        tiny,
        ["Today I", "My friend"],
        {"none": None, "space": v * 2.0},
        topic=topic,
        max_new_tokens=5,
    )
    assert rep.conditions == ["none", "space"]
    assert len(rep.texts["space"]) == 2 and rep.on_topic is not None
    assert np.all(rep.perplexity["none"] > 0)
    df = rep.to_pandas()
    assert "on_topic" in df.columns and "median_perplexity" in df.columns


def test_plots_return_figures(tiny: Any) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    pairs = ContrastPairs.from_records(RECORDS)
    rep = sl.diagnose(tiny, pairs)
    res = sl.evaluate.steerability(tiny, RECORDS[:4], rep.vector(), (-1.0, 0.0, 1.0))
    figs = [
        rep.plot(),
        res.plot(),
        sl.plots.plot_correlation(
            [0.1, 0.2, 0.3], [1, 3, 2], ["a", "b", "c"], xlabel="x", ylabel="y"
        ),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    plt.close("all")
