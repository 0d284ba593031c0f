"""`steerlab.evaluate.axbench`: AxBench's protocol judged offline by the base model.

The scoring maps are checked on constructed numbers with exact expected values; one
tiny run on the default model (2 concepts, 4 prompts, 2 factors, 8 new tokens) checks
the protocol: the ranges, the halves, the factor choice, the HyperSteer and callable
paths, the report's views.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")

from steerlab import _axbench  # noqa: E402
from steerlab._axbench import (  # noqa: E402
    aggregate_score,
    concept_llr,
    concept_score,
    distinct_ratio,
    fluency_score,
    keyword_hits,
    relevance_score,
)
from steerlab.errors import InvalidArgumentError, InvalidTypeError  # noqa: E402

CONCEPTS = [
    ("Talk like a pirate.", ["arr", "matey", "aye", "ahoy", "pirate"]),
    "Mention the ocean in your answer.",
]
PROMPTS = [
    "What is a good name for a cat?",
    "How do I boil an egg?",
    "What should I cook for dinner?",
    "Give me a tip for staying productive.",
]
FACTORS = [1.0, 4.0]
MAX_NEW = 8


# ------------------------------------------------------------------------ the scores


def test_keyword_hits_counts_distinct_keywords_at_word_starts() -> None:
    assert keyword_hits("Oceans and the SEA, the sea again", ["ocean", "sea", "wave"]) == 2
    assert keyword_hits("bioocean", ["ocean"]) == 0
    assert keyword_hits("oceanic", ["ocean"]) == 1
    assert keyword_hits("a deep blue sea", ["blue sea", " ", ""]) == 1
    assert keyword_hits("nothing here", []) == 0
    assert keyword_hits("Great!", ["!", "?"]) == 1  # punctuation: anywhere


def test_distinct_ratio_exact() -> None:
    assert distinct_ratio("one two") == 1.0  # fewer than two trigrams
    assert distinct_ratio("\n\n\n\n \t\n") == 0.0  # no words at all
    assert distinct_ratio("a b c d") == 1.0  # (a b c), (b c d)
    # words: aye , aye , aye , aye -> 5 trigrams, 2 distinct
    assert distinct_ratio("aye, aye, aye, aye") == pytest.approx(2 / 5)
    assert distinct_ratio("A b A b A") == pytest.approx(2 / 3)  # case-folded


def test_concept_score_exact() -> None:
    half = 0.25 * math.atanh(0.5)  # L = 2 tanh(gain / 0.25) = 1
    assert concept_llr(half) == pytest.approx(1.0)
    assert concept_score(half, math.nan) == pytest.approx(1.0)  # no keywords: L
    assert concept_score(half, 1.0) == pytest.approx(1.0)  # (1 + 1) / 2
    assert concept_score(half, 0.0) == pytest.approx(0.5)
    assert concept_score(-0.3, 3.0) == pytest.approx(1.0)  # (0 + min(3, 2)) / 2
    assert concept_score(-0.3, 0.0) == 0.0
    assert concept_score(-0.3, math.nan) == 0.0
    assert concept_score(math.nan, 2.0) == 0.0  # nothing scored
    assert concept_score(100.0, 5.0) == pytest.approx(2.0)
    assert concept_score(0.5, math.nan, scale=0.5) == pytest.approx(2 * math.tanh(1.0))


def test_relevance_score_exact() -> None:
    assert relevance_score(-1.0, -1.0) == 2.0
    assert relevance_score(-0.5, -1.0) == 2.0  # more likely than the reference: capped
    assert relevance_score(-2.0, -1.0) == pytest.approx(1.0)  # r = -1: 2 (1 - 1/2)
    assert relevance_score(-3.0, -1.0) == 0.0  # r = -2
    assert relevance_score(-9.0, -1.0) == 0.0
    assert relevance_score(math.nan, -1.0) == 0.0
    assert relevance_score(-1.5, -1.0, zero=1.0) == pytest.approx(1.0)


def test_fluency_score_exact() -> None:
    assert fluency_score(1.5) == 2.0
    assert fluency_score(1.0) == 2.0
    assert fluency_score(2.75) == pytest.approx(1.0)  # halfway between 1.5 and 4.0
    assert fluency_score(4.0) == 0.0
    assert fluency_score(1.5, 0.9) == pytest.approx(2.0)
    assert fluency_score(1.5, 0.7) == pytest.approx(1.0)  # rho = (0.7 - 0.5) / 0.4
    assert fluency_score(2.75, 0.7) == pytest.approx(0.5)
    assert fluency_score(1.5, 0.5) == 0.0  # a loop
    assert fluency_score(math.nan, 1.0) == 0.0


def test_aggregate_is_harmonic_mean_and_zero_when_any_is_zero() -> None:
    assert aggregate_score(1.0, 1.0, 1.0) == pytest.approx(1.0)
    assert aggregate_score(2.0, 1.0, 1.0) == pytest.approx(3 / 2.5)
    assert aggregate_score(2.0, 1.0, 0.5) == pytest.approx(3 / 3.5)
    assert aggregate_score(2.0, 2.0, 2.0) == pytest.approx(2.0)
    assert aggregate_score(2.0, 2.0, 0.0) == 0.0
    assert aggregate_score(0.0, 2.0, 2.0) == 0.0
    assert aggregate_score(2.0, math.nan, 2.0) == 0.0


def test_best_factor_is_the_first_largest_mean() -> None:
    assert _axbench._best([0.2, 0.9, 0.5]) == 1
    assert _axbench._best([0.5, 0.5, 0.1]) == 0  # a tie: the first
    assert _axbench._best([math.nan, 0.1]) == 1
    assert _axbench._best([math.nan, math.nan]) == 0


# ------------------------------------------------------------------------ a tiny run


class FakeHyperSteer:
    """Stands in for `steerlab.HyperSteer`: records its calls, returns one row each."""

    def __init__(self, d_model: int, layer: int) -> None:
        self.layer = layer
        self.calls: list[tuple[list[str], list[str], float]] = []
        self._v = np.random.default_rng(0).standard_normal(d_model).astype(np.float32)

    def steering(
        self, steering_prompts: list[str], base_prompts: list[str], factor: float = 1.0
    ) -> list[Any]:
        self.calls.append((list(steering_prompts), list(base_prompts), factor))
        return [sl.Steering({self.layer: self._v * factor}) for _ in base_prompts]


@pytest.fixture(scope="module")
def run(model: Any) -> tuple[Any, FakeHyperSteer]:
    hs = FakeHyperSteer(model.d_model, 20)
    report = sl.evaluate.axbench(
        model,
        CONCEPTS,
        PROMPTS,
        methods={
            "none": None,
            "prompt": "prompt",
            "diffmean": "diffmean",
            "optimized": "optimized",
            "hypersteer": hs,
        },
        factors=FACTORS,
        max_new_tokens=MAX_NEW,
        optimize_steps=2,
        name="tiny",
        progress=False,
    )
    return report, hs


def test_scores_in_range_and_rows_per_half(run: Any) -> None:
    report, _ = run
    df = report.to_pandas()
    assert list(df.columns) == list(_axbench._COLUMNS)
    for col in ("aggregate", "concept_score", "concept_llr", "relevance", "fluency"):
        assert df[col].between(0.0, 2.0).all(), col
    assert report.methods == ("none", "prompt", "diffmean", "optimized", "hypersteer")
    assert report.concepts == ("Talk like a pirate.", "Mention the ocean in your answer.")
    for (m, c), g in df.groupby(["method", "concept"]):
        sel, rep = g[g.half == "selection"], g[g.half == "report"]
        assert sorted(rep.prompt_index) == [2, 3]
        if m in ("none", "prompt"):
            assert len(sel) == 2 and sel.factor.isna().all() and rep.factor.isna().all()
        else:
            # every factor on the selection half, the chosen one alone on the report half
            assert sorted(sel.factor) == [1.0, 1.0, 4.0, 4.0]
            assert (rep.factor == report.chosen[m][c]).all()
    # keywords: pirate has them, the ocean concept has none (NaN, not 0)
    assert df[df.concept == 0].keyword_hits.notna().all()
    assert df[df.concept == 1].keyword_hits.isna().all()
    assert report.settings["layer"] == 20  # the HyperSteer's layer
    # the unsteered reply is its own relevance reference
    none = df[df.method == "none"]
    assert (none.relevance == 2.0).all()
    assert np.allclose(none.logprob, none.logprob_ref)


def test_chosen_factor_is_best_on_selection_half(run: Any) -> None:
    report, _ = run
    df = report.to_pandas()
    sel = df[df.half == "selection"]
    for m in ("diffmean", "optimized", "hypersteer"):
        for c in range(2):
            g = sel[(sel.method == m) & (sel.concept == c)]
            means = [g[g.factor == f]["aggregate"].mean() for f in FACTORS]
            assert report.chosen[m][c] == FACTORS[int(np.argmax(means))]
    assert all(math.isnan(f) for f in report.chosen["none"] + report.chosen["prompt"])


def test_tie_keeps_the_first_factor_and_callables_are_called(model: Any) -> None:
    zero = np.zeros(model.d_model, np.float32)
    seen: list[tuple[str, list[str], float]] = []

    def zero_fn(instruction: str, prompts: list[str], factor: float) -> Any:
        seen.append((instruction, list(prompts), factor))
        return sl.Steering({12: zero * factor})

    report = sl.evaluate.axbench(
        model,
        ["Mention the ocean."],
        PROMPTS[:3],
        methods={"zero": sl.Steering({10: zero}), "zero_fn": zero_fn},
        factors=[2.0, 1.0],
        max_new_tokens=6,
        progress=False,
    )
    df = report.to_pandas()
    sel = df[df.half == "selection"]
    cols = ["text", "aggregate", "concept_score", "relevance", "fluency"]
    # a zero vector is the unsteered model at every factor: every score ties
    assert (
        sel[sel.factor == 1.0][cols].values.tolist() == sel[sel.factor == 2.0][cols].values.tolist()
    )
    assert report.chosen == {"zero": (2.0,), "zero_fn": (2.0,)}
    assert report.settings["layer"] == 12  # no HyperSteer: int(0.4 * 30)
    # one selection prompt (3 // 2), two report prompts
    assert seen == [
        ("Mention the ocean.", PROMPTS[:1], 2.0),
        ("Mention the ocean.", PROMPTS[:1], 1.0),
        ("Mention the ocean.", PROMPTS[1:3], 2.0),
    ]


def test_prompting_raises_the_concept_likelihood(run: Any) -> None:
    report, _ = run
    df = report.to_pandas()
    pirate = df[df.concept == 0]
    gain = pirate.groupby("method").gain.mean()
    assert gain["prompt"] > gain["none"] + 0.1
    assert (pirate[pirate.method == "none"].gain < 0.1).all()
    concept = df.groupby("method").concept_score.mean()
    assert concept["prompt"] > concept["none"]


def test_hypersteer_is_called_with_plain_prompts_per_row(run: Any) -> None:
    report, hs = run
    # per concept: each factor on the selection half, then the chosen factor on the report
    assert len(hs.calls) == 2 * (len(FACTORS) + 1)
    for k, (sps, bps, f) in enumerate(hs.calls):
        c = k // (len(FACTORS) + 1)
        assert sps == [report.concepts[c]] * len(bps)
        if k % (len(FACTORS) + 1) < len(FACTORS):
            assert bps == PROMPTS[:2] and f == FACTORS[k % (len(FACTORS) + 1)]
        else:
            assert bps == PROMPTS[2:] and f == report.chosen["hypersteer"][c]


def test_report_views(run: Any) -> None:
    report, _ = run
    rows = {r["method"]: r for r in report.summary_rows()}
    assert set(rows) == set(report.methods)
    assert rows["none"]["aggregate"] == pytest.approx(report.scores["none"])
    per = report.per_concept()
    assert len(per) == len(report.methods) * 2
    for r in per:
        assert r["n"] == 2
        assert (r["keyword_rate"] == r["keyword_rate"]) == (r["concept"] == 0)
    # the method's score: the mean over concepts of the per-concept means
    for m in report.methods:
        mine = [r["aggregate"] for r in per if r["method"] == m]
        assert rows[m]["aggregate"] == pytest.approx(np.mean(mine))
    table = report.table()
    assert list(table.index) == list(report.methods)
    text = report.summary()
    assert all(m in text for m in report.methods)
    assert "tiny" in repr(report)
    curves = report.factor_curves()
    assert set(curves) == {"diffmean", "optimized", "hypersteer"}
    assert curves["diffmean"][0] == tuple(FACTORS)
    again = _axbench.AxBenchReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.summary() == report.summary()
    assert again.chosen.keys() == report.chosen.keys()
    with pytest.raises(InvalidArgumentError, match="data has no 'chosen' entry"):
        _axbench.AxBenchReport.from_dict(
            {k: v for k, v in report.to_dict().items() if k != "chosen"}
        )
    with pytest.raises(InvalidTypeError, match="data must be a dict, got list"):
        _axbench.AxBenchReport.from_dict([])


def test_disagreements_follow_their_definition(run: Any) -> None:
    report, _ = run
    dis = report.disagreements(half=None)
    df = report.to_pandas()
    kw = df[df.keyword_hits.notna()]
    expected = ((kw.keyword_hits == 0) & (kw.concept_llr >= 1.0)) | (
        (kw.keyword_hits > 0) & (kw.concept_llr < 0.5)
    )
    assert len(dis) == int(expected.sum())
    for d in dis:
        assert d["kind"] in ("likelihood_only", "keywords_only")
        assert d["concept"] == 0  # the only concept with keywords
    n_report = len(report.disagreements())
    assert n_report == sum(r["disagreements"] for r in report.summary_rows())
    with pytest.raises(InvalidArgumentError, match="half must be 'report', 'selection' or None"):
        report.disagreements(half="all")


def test_plot(run: Any) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    fig = run[0].plot()
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


# ------------------------------------------------------------------------ errors


def test_bad_arguments(model: Any) -> None:
    ax = sl.evaluate.axbench
    with pytest.raises(InvalidArgumentError, match="unknown method 'sae'"):
        ax(model, ["x"], PROMPTS, methods={"s": "sae"})
    with pytest.raises(InvalidTypeError, match=r"methods\['s'\] is int 42, not a method"):
        ax(model, ["x"], PROMPTS, methods={"s": 42})
    with pytest.raises(InvalidArgumentError, match="methods is empty"):
        ax(model, ["x"], PROMPTS, methods={})
    with pytest.raises(InvalidArgumentError, match="concepts is empty"):
        ax(model, [], PROMPTS)
    with pytest.raises(InvalidTypeError, match=r"concepts\[0\] must be an instruction"):
        ax(model, [("a", ["k"], "extra")], PROMPTS)
    with pytest.raises(InvalidArgumentError, match="prompts is empty"):
        ax(model, ["x"], [])
    with pytest.raises(
        InvalidArgumentError, match=r"concept 0 has 1 base prompt\(s\); expected at least 2"
    ):
        ax(model, ["x"], ["only one"])
    with pytest.raises(InvalidArgumentError, match="prompts has 1 lists for 2 concepts"):
        ax(model, ["x", "y"], [PROMPTS])
    with pytest.raises(InvalidArgumentError, match="factors is empty"):
        ax(model, ["x"], PROMPTS, factors=[])
    with pytest.raises(
        InvalidArgumentError, match=r"factors\[1\] must be a finite number, got nan"
    ):
        ax(model, ["x"], PROMPTS, factors=[1.0, float("nan")])
    with pytest.raises(
        InvalidArgumentError, match=r"factors\[0\] must be a finite number, got inf"
    ):
        ax(model, ["x"], PROMPTS, factors=[float("inf")])
    with pytest.raises(InvalidArgumentError, match="factors must be distinct"):
        ax(model, ["x"], PROMPTS, factors=[1, 1])
    with pytest.raises(InvalidArgumentError, match="max_new_tokens must be >= 1, got 0"):
        ax(model, ["x"], PROMPTS, max_new_tokens=0)
    with pytest.raises(InvalidArgumentError, match="diffmean_position 'all' gives no single"):
        ax(model, ["x"], PROMPTS, diffmean_position="all")
    with pytest.raises(InvalidArgumentError, match="unknown position 'first'"):
        ax(model, ["x"], PROMPTS, diffmean_position="first")
    with pytest.raises(InvalidArgumentError, match="chat must be True, False or 'auto', got 'yes'"):
        ax(model, ["x"], PROMPTS, chat="yes")
    with pytest.raises(InvalidTypeError, match="progress must be True, False or None, got 1"):
        ax(model, ["x"], PROMPTS, progress=1)
    with pytest.raises(
        InvalidArgumentError, match=r"optimize_lr must be a finite number > 0\.0, got 0\.0"
    ):
        ax(model, ["x"], PROMPTS, optimize_lr=0)
    with pytest.raises(InvalidTypeError, match=r"model must be a steerlab\.Model, got str"):
        ax("model", ["x"], PROMPTS)


def test_concepts_from_a_dataset_like_object(model: Any) -> None:
    class Data:
        def __init__(self) -> None:
            self.instructions = ["Talk like a pirate.", "Mention the ocean."]
            self.keywords = [["arr"]]

    with pytest.raises(InvalidArgumentError, match="2 instructions but 1 keyword lists"):
        sl.evaluate.axbench(model, Data(), PROMPTS)
    assert _axbench._concepts(
        type("D", (), {"instructions": ["a", "b"], "keywords": [["k"], []]})()
    ) == [_axbench._Concept("a", ("k",)), _axbench._Concept("b", None)]


def test_callable_returning_the_wrong_number_of_steerings(model: Any) -> None:
    def bad(instruction: str, prompts: list[str], factor: float) -> list[Any]:
        return [None]

    with pytest.raises(InvalidArgumentError, match="returned 1 steerings for 2 prompts"):
        sl.evaluate.axbench(
            model, ["x"], PROMPTS, methods={"bad": bad}, max_new_tokens=2, progress=False
        )


def test_judge_log_probs_equal_continuation_logprobs(model: Any) -> None:
    from steerlab._chat import request_prompts

    contexts = request_prompts(model._core, PROMPTS[:3])
    texts = ["Arr, matey! A fine name", "", "\n\nBoil it for ten minutes."]
    judge = _axbench._Judge(model, "\n", batch_size=2)
    got = judge.mean_logprobs(contexts, texts)
    assert math.isnan(got[1])  # an empty reply has nothing to score
    keep = [0, 2]
    ref = model.continuation_logprobs([contexts[i] for i in keep], [texts[i] for i in keep])
    for i, lp in zip(keep, ref, strict=True):
        assert got[i] == pytest.approx(float(np.mean(lp.astype(np.float64))), abs=2e-3)
