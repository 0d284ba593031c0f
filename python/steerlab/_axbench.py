"""`steerlab.evaluate.axbench`: AxBench's protocol (Wu et al. 2025, "AxBench: Steering
LLMs? Even Simple Baselines Outperform Sparse Autoencoders", arXiv 2501.17148) with the
base model itself as the judge.

AxBench asks a large LLM to rate each steered reply 0, 1 or 2 for the concept, the
instruction and fluency. Here every judgement is a log-likelihood the steered model's own
unsteered self computes (batched through `Model.continuation_logprobs`), turned into a
number in [0, 2] by a fixed, documented map (`concept_score`, `relevance_score`,
`fluency_score`); the keyword check of each concept is kept beside it, and where the two
disagree is reported (`AxBenchReport.disagreements`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from steerlab import _args, _batches, _core, plots
from steerlab._chat import request_prompts
from steerlab._checks import check_position
from steerlab._progress import progress_bar
from steerlab.errors import ContextLengthError, InvalidArgumentError, InvalidTypeError
from steerlab.steering import Steering
from steerlab.vectors import SteeringVector

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from steerlab.model import Model

__all__ = [
    "CONCEPT_SCALE",
    "FLUENCY_NLL",
    "RELEVANCE_ZERO",
    "REPETITION",
    "AxBenchReport",
    "aggregate_score",
    "axbench",
    "concept_score",
    "distinct_ratio",
    "fluency_score",
    "keyword_hits",
    "relevance_score",
    "with_instruction",
]

#: Log-likelihood gain (nats per token) at which the likelihood half of the concept
#: score reaches 2 tanh(1) ~ 1.52: ``L = 2 tanh(max(gain, 0) / CONCEPT_SCALE)``.
CONCEPT_SCALE = 0.25
#: Drop in log-likelihood per token (nats) below the unsteered reply's at which the
#: instruction-relevance score reaches 0: ``I = 2 clip(1 + r / RELEVANCE_ZERO, 0, 1)``.
RELEVANCE_ZERO = 2.0
#: Mean negative log-likelihood per token (nats) of a reply with no request for which
#: fluency is 2 (at or below the first) and 0 (at or above the second).
FLUENCY_NLL = (1.5, 4.0)
#: Share of distinct word trigrams (`distinct_ratio`) at or below which fluency is 0,
#: and at or above which repetition costs nothing: ``rho = clip((d - lo) / (hi - lo), 0, 1)``.
REPETITION = (0.5, 0.9)
#: n of the word n-grams whose repetition lowers fluency (`distinct_ratio`).
_NGRAM = 3

_KINDS = ("none", "prompt", "diffmean", "optimized")
_COLUMNS = (
    "method",
    "concept",
    "instruction",
    "factor",
    "prompt_index",
    "prompt",
    "half",
    "aggregate",
    "concept_score",
    "concept_llr",
    "relevance",
    "fluency",
    "gain",
    "keyword_hits",
    "logprob",
    "logprob_ref",
    "nll_free",
    "distinct",
    "text",
)


# ------------------------------------------------------------------------ the scores


def keyword_hits(text: str, keywords: Iterable[str]) -> int:
    """How many of the keywords occur in ``text``: case-insensitive, each keyword
    that starts with a letter, digit or underscore matched at the start of a word
    (``"ocean"`` matches "Oceans" and "oceanic", not "bioocean"), any other anywhere
    (``"!"``); a keyword found several times counts once."""
    low = text.lower()
    hits = 0
    for kw in keywords:
        k = kw.strip().lower()
        anchor = r"(?<!\w)" if k[:1].isalnum() or k[:1] == "_" else ""
        if k and re.search(anchor + re.escape(k), low):
            hits += 1
    return hits


def distinct_ratio(text: str, n: int = _NGRAM) -> float:
    """Distinct word n-grams over all word n-grams of ``text`` (words and punctuation
    marks are tokens, case-folded); 1.0 when the text has 1 to ``n`` tokens, 0.0 when it
    has none (only whitespace: a reply of 128 newlines is not fluent). A reply stuck in a
    loop ("aye, aye, aye, ...") scores near 0."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    if not words:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 1.0
    return len(set(grams)) / len(grams)


def concept_score(gain: float, hits: float, *, scale: float = CONCEPT_SCALE) -> float:
    """The concept score in [0, 2].

    ``L = 2 tanh(max(gain, 0) / scale)`` (the likelihood half: ``gain`` is the mean
    log-likelihood per token of the reply given "instruction + prompt" minus given
    "prompt", in nats); ``K = min(hits, 2)`` (the keyword half: distinct keywords in the
    reply). With keywords the score is ``(L + K) / 2``; without (``hits`` NaN) it is
    ``L``. NaN ``gain`` (nothing to score) gives 0.
    """
    if not math.isfinite(gain):
        return 0.0
    llr = 2.0 * math.tanh(max(gain, 0.0) / scale)
    if math.isnan(hits):
        return llr
    return (llr + min(max(hits, 0.0), 2.0)) / 2.0


def concept_llr(gain: float, *, scale: float = CONCEPT_SCALE) -> float:
    """The likelihood half of `concept_score` alone: ``2 tanh(max(gain, 0) / scale)``."""
    if not math.isfinite(gain):
        return 0.0
    return 2.0 * math.tanh(max(gain, 0.0) / scale)


def relevance_score(logprob: float, logprob_ref: float, *, zero: float = RELEVANCE_ZERO) -> float:
    """The instruction-relevance score in [0, 2]: ``r = logprob - logprob_ref`` (mean
    log-likelihood per token of the reply given the base prompt, minus the same for the
    unsteered reply to that prompt, nats) and ``2 clip(1 + r / zero, 0, 1)``: 2 for a
    reply at least as likely as the unsteered one, 0 for one ``zero`` nats per token
    less likely. NaN in either gives 0."""
    r = logprob - logprob_ref
    if not math.isfinite(r):
        return 0.0
    return 2.0 * min(max(1.0 + r / zero, 0.0), 1.0)


def fluency_score(
    nll: float,
    distinct: float = 1.0,
    *,
    bounds: tuple[float, float] = FLUENCY_NLL,
    repetition: tuple[float, float] = REPETITION,
) -> float:
    """The fluency score in [0, 2]: ``2 clip((hi - nll) / (hi - lo), 0, 1) * rho`` with
    ``(lo, hi) = bounds`` and ``rho = clip((distinct - a) / (b - a), 0, 1)`` with
    ``(a, b) = repetition``. ``nll`` is the reply's mean negative log-likelihood per
    token (nats) under the unsteered model given an empty request; ``distinct`` its
    `distinct_ratio`, so a loop, which perplexity rewards, scores 0. NaN gives 0."""
    lo, hi = bounds
    a, b = repetition
    if not (math.isfinite(nll) and math.isfinite(distinct)):
        return 0.0
    rho = min(max((distinct - a) / (b - a), 0.0), 1.0)
    return 2.0 * min(max((hi - nll) / (hi - lo), 0.0), 1.0) * rho


def aggregate_score(concept: float, relevance: float, fluency: float) -> float:
    """AxBench's aggregate: the harmonic mean ``3 / (1/c + 1/i + 1/f)`` of the three
    scores, 0 when any of them is 0 (or negative, or NaN)."""
    parts = (concept, relevance, fluency)
    if any(not (p > 0.0) for p in parts):
        return 0.0
    return 3.0 / sum(1.0 / p for p in parts)


def with_instruction(instruction: str, prompt: str) -> str:
    """The user message of the "prompt" method and of the concept judge's context: the
    instruction, a blank line, then the request."""
    return f"{instruction}\n\n{prompt}"


# ------------------------------------------------------------------------ the report


def _mean(values: Iterable[float]) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


@dataclass(frozen=True)
class AxBenchReport:
    """The result of `axbench`.

    Attributes:
        records: one dict per scored reply (the columns of `to_pandas`).
        methods: the method names, in the order given.
        concepts: the instructions, in order.
        factors: the factors searched.
        chosen: per method, the factor chosen for each concept on the selection half
            (NaN for methods without a factor: None and "prompt").
        settings: the run's settings (max_new_tokens, layer, the score constants...).
        name: a label for plots.
    """

    records: tuple[dict[str, Any], ...] = field(repr=False)
    methods: tuple[str, ...]
    concepts: tuple[str, ...]
    factors: tuple[float, ...]
    chosen: dict[str, tuple[float, ...]]
    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    name: str | None = None

    # -- views ---------------------------------------------------------------------

    def _report_rows(self, method: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if r["half"] == "report" and (method is None or r["method"] == method)
        ]

    def per_concept(self) -> list[dict[str, Any]]:
        """One dict per (method, concept): the mean scores on the report half, the chosen
        factor and the keyword hit rate (share of replies with at least one hit; NaN for a
        concept without keywords)."""
        out = []
        for m in self.methods:
            rows = self._report_rows(m)
            for c, inst in enumerate(self.concepts):
                mine = [r for r in rows if r["concept"] == c]
                hits = [r["keyword_hits"] for r in mine]
                out.append(
                    {
                        "method": m,
                        "concept": c,
                        "instruction": inst,
                        "factor": self.chosen[m][c],
                        "aggregate": _mean(r["aggregate"] for r in mine),
                        "concept_score": _mean(r["concept_score"] for r in mine),
                        "relevance": _mean(r["relevance"] for r in mine),
                        "fluency": _mean(r["fluency"] for r in mine),
                        "keyword_rate": _mean(float(h > 0) if h == h else math.nan for h in hits),
                        "n": len(mine),
                    }
                )
        return out

    def summary_rows(self) -> list[dict[str, Any]]:
        """One dict per method: the means over concepts of the per-concept means on the
        report half (``aggregate``, ``concept_score``, ``relevance``, ``fluency``,
        ``keyword_rate``), the median chosen ``factor`` (NaN without one), and the number
        of report-half ``disagreements``."""
        per = self.per_concept()
        dis = self.disagreements()
        out = []
        for m in self.methods:
            mine = [r for r in per if r["method"] == m]
            factors = [f for f in self.chosen[m] if f == f]
            row: dict[str, Any] = {"method": m}
            for key in ("aggregate", "concept_score", "relevance", "fluency", "keyword_rate"):
                row[key] = _mean(r[key] for r in mine)
            row["factor"] = float(np.median(factors)) if factors else math.nan
            row["disagreements"] = sum(1 for d in dis if d["method"] == m)
            row["n"] = sum(r["n"] for r in mine)
            out.append(row)
        return out

    @property
    def scores(self) -> dict[str, float]:
        """``{method: mean aggregate score on the report half}``."""
        return {r["method"]: r["aggregate"] for r in self.summary_rows()}

    def factor_curves(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        """Per method with a factor: the factors and the mean aggregate score at each on
        the selection half (mean over concepts of the per-concept means)."""
        out: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
        for m in self.methods:
            rows = [r for r in self.records if r["method"] == m and r["half"] == "selection"]
            if not rows or all(r["factor"] != r["factor"] for r in rows):
                continue
            means = []
            for f in self.factors:
                per_c = [
                    _mean(r["aggregate"] for r in rows if r["factor"] == f and r["concept"] == c)
                    for c in range(len(self.concepts))
                ]
                means.append(_mean(per_c))
            out[m] = (self.factors, tuple(means))
        return out

    def disagreements(self, half: str | None = "report") -> list[dict[str, Any]]:
        """Replies where the likelihood judge and the keyword check disagree: the
        likelihood half of the concept score (``concept_llr``) >= 1 with no keyword in
        the reply (``kind="likelihood_only"``), or a keyword in the reply with
        ``concept_llr`` < 0.5 (``kind="keywords_only"``). Only replies of concepts with
        keywords, and (``half="report"``, the default) the report-half replies;
        ``half="selection"`` the selection half at every factor, None both.

        Raises:
            InvalidArgumentError: another ``half``.
        """
        if half not in ("report", "selection", None):
            raise InvalidArgumentError(
                f"half must be 'report', 'selection' or None, got {_args.show(half)}"
            )
        out = []
        for r in self.records:
            if half is not None and r["half"] != half:
                continue
            hits = r["keyword_hits"]
            if hits != hits:
                continue
            if hits == 0 and r["concept_llr"] >= 1.0:
                kind = "likelihood_only"
            elif hits > 0 and r["concept_llr"] < 0.5:
                kind = "keywords_only"
            else:
                continue
            out.append(
                {
                    "kind": kind,
                    **{k: r[k] for k in ("method", "concept", "instruction", "factor")},
                    **{k: r[k] for k in ("prompt_index", "half", "concept_llr", "keyword_hits")},
                    "text": r["text"],
                }
            )
        return out

    def to_pandas(self) -> pd.DataFrame:
        """Long form, one row per scored reply (read the score column as
        ``df["aggregate"]``: ``df.aggregate`` is pandas' own method): method, concept (index), instruction,
        factor (NaN for None / "prompt"), prompt_index, prompt, half ("selection": every
        factor; "report": the chosen factor only), aggregate, concept_score, concept_llr,
        relevance, fluency, gain, keyword_hits (NaN without keywords), logprob,
        logprob_ref, nll_free, distinct, text (needs pandas)."""
        pd = _pandas()
        return pd.DataFrame(list(self.records), columns=list(_COLUMNS))

    def table(self) -> pd.DataFrame:
        """`summary_rows` as a DataFrame indexed by method (needs pandas)."""
        return _pandas().DataFrame(self.summary_rows()).set_index("method")

    def summary(self) -> str:
        """The per-method table as text."""
        head = f"{'method':<14} {'aggregate':>9} {'concept':>8} {'relev.':>7} {'fluency':>8} "
        head += f"{'kw rate':>8} {'factor':>7} {'disagree':>8}"
        lines = [head]
        for r in self.summary_rows():
            lines.append(
                f"{r['method'][:14]:<14} {r['aggregate']:>9.3f} {r['concept_score']:>8.3f} "
                f"{r['relevance']:>7.3f} {r['fluency']:>8.3f} {r['keyword_rate']:>8.2f} "
                f"{r['factor']:>7.3g} {r['disagreements']:>8d}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        label = f" {self.name}" if self.name else ""
        best = ", ".join(f"{m} {s:.3f}" for m, s in self.scores.items())
        return f"<AxBenchReport{label}: {len(self.concepts)} concepts; aggregate: {best}>"

    def to_dict(self) -> dict[str, Any]:
        """A dict of plain values for ``json.dump`` (NaN stays a float NaN, which Python's
        json writes as ``NaN``); `from_dict` reads it back."""
        return {
            "records": [dict(r) for r in self.records],
            "methods": list(self.methods),
            "concepts": list(self.concepts),
            "factors": list(self.factors),
            "chosen": {m: list(v) for m, v in self.chosen.items()},
            "settings": dict(self.settings),
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: Any) -> AxBenchReport:
        """The report `to_dict` wrote.

        Raises:
            InvalidTypeError: data is not a dict.
            InvalidArgumentError: an entry is missing.
        """
        if not isinstance(data, dict):
            raise InvalidTypeError(f"data must be a dict, got {type(data).__name__}")
        try:
            return cls(
                records=tuple(dict(r) for r in data["records"]),
                methods=tuple(data["methods"]),
                concepts=tuple(data["concepts"]),
                factors=tuple(float(f) for f in data["factors"]),
                chosen={m: tuple(float(f) for f in v) for m, v in data["chosen"].items()},
                settings=dict(data.get("settings", {})),
                name=data.get("name"),
            )
        except KeyError as exc:
            raise InvalidArgumentError(
                f"data has no {exc.args[0]!r} entry; expected what AxBenchReport.to_dict() writes"
            ) from None

    def plot(self) -> Figure:
        """The mean aggregate score per method (bars) and, per method with a factor, the
        selection-half aggregate against the factor (`steerlab.plots.plot_axbench`)."""
        return plots.plot_axbench(self)


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("this needs pandas: pip install pandas") from None
    return pd


# ------------------------------------------------------------------------ arguments


@dataclass(frozen=True)
class _Concept:
    instruction: str
    keywords: tuple[str, ...] | None


def _keywords(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidTypeError(f"{name} must be a list of str or None, got {_args._show(value)}")
    kws = tuple(_args.text(k, f"{name}[{j}]") for j, k in enumerate(value))
    return kws if any(k.strip() for k in kws) else None


def _concepts(concepts: Any) -> list[_Concept]:
    if hasattr(concepts, "instructions") and hasattr(concepts, "keywords"):
        insts = list(concepts.instructions)
        kws = list(concepts.keywords)
        if len(kws) != len(insts):
            raise InvalidArgumentError(
                f"concepts has {len(insts)} instructions but {len(kws)} keyword lists; "
                f"expected one list per instruction"
            )
        items: list[Any] = list(zip(insts, kws, strict=True))
    elif isinstance(concepts, str | bytes | Mapping) or not isinstance(concepts, Iterable):
        raise InvalidTypeError(
            "concepts must be a list of instructions (str), a list of (instruction, "
            f"keywords) pairs, or an object with .instructions and .keywords, got "
            f"{type(concepts).__name__}"
        )
    else:
        items = list(concepts)
    if not items:
        raise InvalidArgumentError("concepts is empty; pass at least one steering instruction")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(_Concept(_args.text(item, f"concepts[{i}]"), None))
        elif isinstance(item, tuple | list) and len(item) == 2:
            inst = _args.text(item[0], f"concepts[{i}][0]")
            out.append(_Concept(inst, _keywords(item[1], f"concepts[{i}][1]")))
        else:
            raise InvalidTypeError(
                f"concepts[{i}] must be an instruction (str) or an (instruction, keywords) "
                f"pair, got {_args._show(item)}"
            )
        if not out[-1].instruction.strip():
            raise InvalidArgumentError(f"concepts[{i}] is an empty instruction")
    return out


def _prompt_lists(prompts: Any, n_concepts: int) -> list[list[str]]:
    if isinstance(prompts, str | bytes | Mapping) or not isinstance(prompts, Iterable):
        raise InvalidTypeError(
            f"prompts must be a list of str (shared by every concept) or one list of str "
            f"per concept, got {type(prompts).__name__}"
        )
    items = list(prompts)
    if not items:
        raise InvalidArgumentError("prompts is empty; pass at least 2 base prompts")
    if all(isinstance(p, str) for p in items):
        lists = [items] * n_concepts
    elif all(isinstance(p, list | tuple) for p in items):
        if len(items) != n_concepts:
            raise InvalidArgumentError(
                f"prompts has {len(items)} lists for {n_concepts} concepts; expected one "
                f"list of base prompts per concept (or one list shared by all)"
            )
        lists = [list(p) for p in items]
    else:
        raise InvalidTypeError(
            "prompts must be a list of str, or a list of lists of str (one per concept), "
            "not a mixture"
        )
    for c, lst in enumerate(lists):
        if len(lst) < 2:
            raise InvalidArgumentError(
                f"concept {c} has {len(lst)} base prompt(s); expected at least 2, to split "
                f"them into a selection half and a report half"
            )
        for j, p in enumerate(lst):
            _args.text(p, f"prompts[{j}]" if lists[0] is items else f"prompts[{c}][{j}]")
    return lists


def _factors(factors: Any) -> tuple[float, ...]:
    if isinstance(factors, str | bytes) or not isinstance(factors, Iterable):
        raise InvalidTypeError(f"factors must be a list of numbers, got {_args._show(factors)}")
    out = tuple(
        _args.real(f, f"factors[{i}]", expected="a finite number") for i, f in enumerate(factors)
    )
    if not out:
        raise InvalidArgumentError("factors is empty; pass at least one steering factor")
    if len(set(out)) != len(out):
        raise InvalidArgumentError(f"factors must be distinct, got {out}")
    return out


@dataclass(frozen=True)
class _Method:
    name: str
    kind: str  # none, prompt, diffmean, optimized, hypersteer, fixed, callable
    spec: Any = None

    @property
    def has_factor(self) -> bool:
        return self.kind not in ("none", "prompt")


def _methods(methods: Any, model: Model) -> list[_Method]:
    if not isinstance(methods, Mapping):
        raise InvalidTypeError(
            f"methods must be a dict {{name: spec}}, got {type(methods).__name__}"
        )
    if not methods:
        raise InvalidArgumentError("methods is empty; name at least one method")
    out = []
    for name, spec in methods.items():
        if not isinstance(name, str) or not name:
            raise InvalidTypeError(f"method names must be non-empty str, got {_args.show(name)}")
        if spec is None:
            out.append(_Method(name, "none"))
        elif isinstance(spec, str):
            if spec not in _KINDS:
                raise InvalidArgumentError(
                    f"methods[{name!r}] is the unknown method {spec!r}; expected None, one of "
                    f"{list(_KINDS)}, a HyperSteer (an object with .steering), a "
                    f"SteeringVector or Steering, or a callable (instruction, prompts, "
                    f"factor) -> Steering | list[Steering]"
                )
            out.append(_Method(name, spec))
        elif isinstance(spec, SteeringVector):
            spec.check_model(model)
            out.append(_Method(name, "fixed", spec.to_steering()))
        elif isinstance(spec, Steering):
            out.append(_Method(name, "fixed", spec))
        elif isinstance(spec, type):
            raise InvalidTypeError(
                f"methods[{name!r}] is the class {spec.__name__}, not a fitted method; expected "
                f"an instance (e.g. sl.HyperSteer.fit(...) or sl.HyperSteer.load(...))"
            )
        elif callable(getattr(spec, "steering", None)) and not hasattr(spec, "_core"):
            check = getattr(spec, "check_model", None)
            if callable(check):
                check(model)  # a hypernetwork trained for another model is refused here
            out.append(_Method(name, "hypersteer", spec))
        elif callable(spec):
            out.append(_Method(name, "callable", spec))
        else:
            raise InvalidTypeError(
                f"methods[{name!r}] is {_args._show(spec)}, not a method; expected None, one "
                f"of {list(_KINDS)}, a HyperSteer (an object with .steering), a "
                f"SteeringVector or Steering, or a callable (instruction, prompts, factor) "
                f"-> Steering | list[Steering]"
            )
    return out


# ------------------------------------------------------------------------ the run


@dataclass
class _Row:
    method: str
    concept: int
    factor: float
    index: int
    half: str
    #: the prompt the reply is generated from
    rendered: str
    #: the rendered request without the instruction (the judge's context)
    base: str
    steering: Any
    text: str = ""


@dataclass
class _Judge:
    """Scores replies with the unsteered model in as few batched calls as possible."""

    model: Model
    empty: str
    batch_size: int
    ref: dict[str, float] = field(default_factory=dict)  # rendered prompt -> lp of y0
    #: (context, text) -> mean log-prob, so a pair met twice is scored once (the
    #: unsteered replies recur in every concept, a reply often recurs across factors)
    memo: dict[tuple[str, str], float] = field(default_factory=dict)

    def mean_logprobs(self, contexts: list[str], texts: list[str]) -> list[float]:
        """Mean log p per token of each text after its context under the unsteered
        model (NaN for a text with no token), in batched forward passes.

        The same numbers as `Model.continuation_logprobs` without steering (the text
        encoded without special tokens, after the context's own tokens), computed by
        one full forward per row (`Model.token_logprobs` on the joined ids) instead of a
        decoding step per token.
        """
        core = self.model._core
        limit = core.max_context
        ctx_ids: dict[str, list[int]] = {}
        ids: list[list[int]] = []
        starts: list[int] = []
        keep: list[int] = []
        queued: set[tuple[str, str]] = set()
        for i, (ctx, text) in enumerate(zip(contexts, texts, strict=True)):
            if (ctx, text) in self.memo or (ctx, text) in queued:
                continue
            cont = core.encode(text, False) if text else []
            if not cont:
                continue
            queued.add((ctx, text))
            if ctx not in ctx_ids:
                ctx_ids[ctx] = core.encode(ctx, True)
            row = ctx_ids[ctx] + cont
            if len(row) > limit:
                raise ContextLengthError(
                    f"a prompt and its reply are {len(row)} tokens long but the model's "
                    f"context is {limit} tokens; expected shorter prompts or max_new_tokens"
                )
            ids.append(row)
            starts.append(len(ctx_ids[ctx]) - 1)
            keep.append(i)
        if ids:
            lps = _batches.token_logprobs(core, ids, None, self.batch_size, False)
            for i, start, lp in zip(keep, starts, lps, strict=True):
                scored = lp[start:].astype(np.float64)
                self.memo[(contexts[i], texts[i])] = (
                    float(scored.mean()) if scored.size else math.nan
                )
        return [self.memo.get(pair, math.nan) for pair in zip(contexts, texts, strict=True)]

    def score(
        self, rows: list[_Row], concept: _Concept, prompted: list[str]
    ) -> list[dict[str, Any]]:
        """Score `rows` of one concept; ``prompted[i]``: the rendered "instruction +
        prompt i" context."""
        n = len(rows)
        texts = [r.text for r in rows]
        ctx = [r.base for r in rows] + [prompted[r.index] for r in rows] + [self.empty] * n
        lps = self.mean_logprobs(ctx, texts * 3)
        out = []
        for k, r in enumerate(rows):
            lp, lp_s, lp_e = lps[k], lps[n + k], lps[2 * n + k]
            gain = lp_s - lp
            hits = (
                float(keyword_hits(r.text, concept.keywords))
                if concept.keywords is not None
                else math.nan
            )
            ref = self.ref[r.base]
            dist = distinct_ratio(r.text)
            c = concept_score(gain, hits)
            i = relevance_score(lp, ref)
            f = fluency_score(-lp_e, dist)
            if not r.text.strip():
                c = i = f = 0.0  # nothing but whitespace: scored as an empty reply
            out.append(
                {
                    "gain": gain,
                    "keyword_hits": hits,
                    "logprob": lp,
                    "logprob_ref": ref,
                    "nll_free": -lp_e,
                    "distinct": dist,
                    "concept_score": c,
                    "concept_llr": concept_llr(gain),
                    "relevance": i,
                    "fluency": f,
                    "aggregate": aggregate_score(c, i, f),
                }
            )
        return out


def _as_rows(value: Any, n: int, who: str) -> list[Any]:
    """A method's steering for n rows: one Steering (shared) or a list of n."""
    if value is None or isinstance(value, Steering | SteeringVector | Mapping):
        return [value] * n
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise InvalidArgumentError(
                f"{who} returned {len(value)} steerings for {n} prompts; expected one per "
                f"prompt (or a single Steering)"
            )
        return list(value)
    raise InvalidTypeError(
        f"{who} returned {_args._show(value)}; expected a Steering or a list of Steering"
    )


def axbench(
    model: Model,
    concepts: Any,
    prompts: Any,
    methods: Mapping[str, Any] | None = None,
    factors: Iterable[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
    *,
    max_new_tokens: int = 128,
    layer: int | None = None,
    train_prompts: Sequence[str] | None = None,
    diffmean_position: str | int = "last",
    optimize_steps: int = 30,
    optimize_lr: float = 0.05,
    chat: Any = "auto",
    temperature: float = 0.0,
    seed: int | None = None,
    batch_size: int = 16,
    name: str | None = None,
    progress: bool | None = None,
) -> AxBenchReport:
    """Evaluate steering methods on concepts with AxBench's protocol (Wu et al. 2025),
    judged offline by the base model itself.

    **Protocol.** For each concept (a steering instruction such as "Mention the ocean in
    your answer.") and each method, the model answers each base prompt (a user request,
    rendered with the chat template as `steerlab._chat.request_prompts` does) with at
    most `max_new_tokens` new tokens, greedily by default. The base prompts of a concept
    are split in two: the first ``n // 2`` are the **selection half**, the rest the
    **report half**. A method with a factor (all but None and "prompt") is run on the
    selection half at every factor; the factor with the highest mean aggregate score
    there (the first in `factors` order on a tie) is chosen for that concept and method,
    and only then is the report half generated, at that factor alone. Reported figures
    are report-half means: per concept, then averaged over concepts. All rows of one
    stage of one concept (every method, factor and prompt) run in one batched
    `Model.generate` call (per-row steering), and each stage's scoring in one batched
    pass of forward calls (the log-probabilities `Model.continuation_logprobs` gives
    without steering, computed with one forward per reply).

    **Methods** (``methods``: ``{name: spec}``; default None, "prompt" and "diffmean"):

    - ``None`` (or ``"none"``): the unsteered model.
    - ``"prompt"``: no steering; the user message is the instruction, a blank line and
      the request (`with_instruction`).
    - ``"diffmean"``: per concept, `SteeringVector.mean_centring` at `layer` of the
      rendered "instruction + request" prompts (target) against the rendered requests
      (background), read at `diffmean_position` (default ``"last"``: the last prompt
      token, where the model plans its reply; ``"mean_skip_first"`` averages over the
      tokens), over the concept's selection prompts (or `train_prompts`); the factor
      multiplies that difference of means, added at every position at ``resid_post``.
    - ``"optimized"``: per concept, `SteeringVector.optimize` at `layer` trained for
      `optimize_steps` steps (lr `optimize_lr`, batches of up to 8) on self-distilled
      targets: the replies the model writes (decoded like every reply, up to
      `max_new_tokens`) when the instruction is in its prompt (the "prompt" method's
      replies when it runs too), after the rendered requests without it, on the
      selection prompts (or `train_prompts`); factor 1 is what training saw.
    - a HyperSteer (any object with a callable ``.steering(steering_prompts,
      base_prompts, factor=...)`` returning one `Steering` per row): called with the
      instruction repeated and the plain (unrendered) base prompts.
    - a `SteeringVector` or `Steering`: the same steering for every concept, times the
      factor.
    - a callable ``(instruction, prompts, factor) -> Steering | list[Steering]`` (plain
      prompts; a list has one steering per prompt).

    **Scores** (each in [0, 2], computed by `model` unsteered; "per token" means the
    mean over the reply's tokens, encoded without special tokens; ``R(x)`` is request x
    rendered with the chat template, ``R(s + x)`` the same with the instruction in the
    user message as in the "prompt" method, ``R("")`` an empty request):

    - concept: ``gain = lp(y | R(s + x)) - lp(y | R(x))`` (nats per token),
      ``L = 2 tanh(max(gain, 0) / CONCEPT_SCALE)`` with ``CONCEPT_SCALE = 0.25``, and
      with keywords ``K = min(hits, 2)`` (`keyword_hits`: distinct keywords found)
      and the score ``(L + K) / 2``; without keywords the score is ``L`` and hits are
      NaN (`concept_score`).
    - instruction relevance: ``r = lp(y | R(x)) - lp(y0 | R(x))`` with ``y0`` the
      unsteered reply to x, and ``2 clip(1 + r / RELEVANCE_ZERO, 0, 1)`` with
      ``RELEVANCE_ZERO = 2`` nats per token (`relevance_score`).
    - fluency: ``nll = -lp(y | R(""))`` (the reply's perplexity is ``exp(nll)``, under
      the unsteered model with no request, so answering the request earns nothing
      here), times a repetition factor ``rho = clip((d - 0.5) / (0.9 - 0.5), 0, 1)``
      with ``d = distinct_ratio(y)`` the share of distinct word trigrams (so the loops
      that perplexity rewards score 0): ``2 clip((4.0 - nll) / (4.0 - 1.5), 0, 1) * rho``
      (`fluency_score`, `FLUENCY_NLL`, `REPETITION`).
    - aggregate: the harmonic mean ``3 / (1/c + 1/i + 1/f)``, 0 when any is 0
      (`aggregate_score`).

    The unsteered replies are generated once per distinct request whatever the methods
    (they are the relevance reference). An empty reply (eos at once, or only whitespace)
    scores 0 on all
    three. The "prompt" method is judged by
    the very likelihood it maximises (its reply is greedy under ``R(s + x)``), so read its
    concept score as an upper reference, not a rival; keyword hits are the independent
    check, and `AxBenchReport.disagreements` lists where they part.

    Args:
        model: the model (steered and judge).
        concepts: a list of instructions (str), a list of ``(instruction, keywords)``
            pairs (keywords: a list of str, or None), or an object with
            ``.instructions`` and ``.keywords`` (one list per instruction, e.g.
            ``steerlab.datasets.load_steering_prompts()``). Without keywords (None or an
            empty list) the keyword check of that concept is skipped (hits NaN).
        prompts: base prompts (plain user requests): one list shared by every concept,
            or one list per concept; each with at least 2 (AxBench uses 10).
        methods: ``{name: spec}`` as above.
        factors: the steering factors searched on the selection half (finite, distinct).
        max_new_tokens: reply length, >= 1 (AxBench: 128).
        layer: the layer of "diffmean" and "optimized" (negative from the end). Default:
            the ``.layer`` of the first HyperSteer among the methods, so the vectors
            compete at its site; without one ``int(0.4 * n_layers)`` (AxBench's lower
            layer: 10 of Gemma-2-2B's 26). On SmolLM2-135M (30 layers; 4 held-out
            concepts, bench/RESULTS.md "Issue 13") DiffMean and optimised vectors scored
            a mean aggregate of 0.14 and 0.11 at layer 12 and 0.12 and 0.27 at layer 22
            (0.75 L; prompting: 0.39, unsteered: 0.00).
        train_prompts: plain requests to build "diffmean" / train "optimized" from
            (default: each concept's selection half).
        diffmean_position: read position of "diffmean" (see `Model.capture`).
        optimize_steps: optimiser steps of each "optimized" vector (the size knob).
        optimize_lr: its AdamW learning rate.
        chat: ``"auto"``, True or False, as in ``request_prompts``.
        temperature: 0 decodes greedily; above 0 samples (with `seed`).
        seed: sampling seed (`Model.generate`); the optimiser's seed is 0.
        batch_size: rows per forward pass of generation and scoring.
        name: a label for the report.
        progress: a tqdm bar over concepts (None: when there is more than one concept).

    Returns:
        An `AxBenchReport` (``to_pandas()``, ``table()``, ``summary()``,
        ``per_concept()``, ``disagreements()``, ``to_dict()``, ``plot()``).

    Raises:
        InvalidTypeError: model not a `Model`; concepts, prompts, methods or factors of
            the wrong type (a method spec that is none of the above); a method's callable
            returning something else than steerings.
        InvalidArgumentError: no concepts, no prompts, fewer than 2 prompts for a
            concept, an unknown method spec, no or duplicate or non-finite factors,
            max_new_tokens < 1, batch_size < 1, optimize_steps < 1, a negative
            temperature, a steering list of the wrong length.
        OutOfRangeError: a layer outside the model.
        ShapeError, ContextLengthError: as in `Model.generate`.
    """
    from steerlab.model import Model

    if not isinstance(model, Model):
        raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
    items = _concepts(concepts)
    lists = _prompt_lists(prompts, len(items))
    specs = _methods(
        {"none": None, "prompt": "prompt", "diffmean": "diffmean"} if methods is None else methods,
        model,
    )
    facs = _factors(factors)
    max_new = _args.integer(max_new_tokens, "max_new_tokens", minimum=1, maximum=1 << 20)
    size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
    steps = _args.integer(optimize_steps, "optimize_steps", minimum=1, maximum=1 << 30)
    lr = _args.real(optimize_lr, "optimize_lr", above=0.0)
    temp = _args.real(temperature, "temperature", minimum=0.0)
    if layer is None:
        at = _default_layer(model, specs)
    else:
        at = model._resolve_layer(_args.index(layer, "layer"))
    position = check_position(diffmean_position)
    if position == "all":
        raise InvalidArgumentError(
            "diffmean_position 'all' gives no single vector per prompt; expected 'last', "
            "'mean', 'mean_skip_first' or a token index"
        )
    train = None
    if train_prompts is not None:
        train, _ = _args.texts(train_prompts, "train_prompts")
    if name is not None and not isinstance(name, str):
        raise InvalidTypeError(f"name must be a str or None, got {type(name).__name__}")
    core: _core.Model = model._core
    request_prompts(core, [], chat)  # checks `chat` before any work
    bar = progress_bar(progress, len(items), 1, "axbench", "concept")
    try:
        empty = request_prompts(core, [""], chat)[0] or "\n"
        judge = _Judge(model, empty, size)

        def generate(rendered: list[str], steering: list[Any] | None = None) -> list[str]:
            if not rendered:
                return []
            out = model.generate(
                rendered,
                steering=steering,
                max_new_tokens=max_new,
                temperature=temp,
                seed=seed,
                batch_size=size,
                progress=False,
            )
            return list(out)

        # The unsteered reply to every distinct request: the relevance reference.
        distinct = list(dict.fromkeys(p for lst in lists for p in lst))
        base_rendered = dict(zip(distinct, request_prompts(core, distinct, chat), strict=True))
        unsteered = dict(zip(distinct, generate([base_rendered[p] for p in distinct]), strict=True))
        refs = judge.mean_logprobs(
            [base_rendered[p] for p in distinct], [unsteered[p] for p in distinct]
        )
        judge.ref = {base_rendered[p]: lp for p, lp in zip(distinct, refs, strict=True)}

        setup = _Setup(
            model=model,
            chat=chat,
            specs=specs,
            factors=facs,
            layer=at,
            train=train,
            position=position,
            steps=steps,
            lr=lr,
            batch_size=size,
            judge=judge,
            generate=generate,
            base_rendered=base_rendered,
            unsteered=unsteered,
        )
        records: list[dict[str, Any]] = []
        chosen: dict[str, list[float]] = {m.name: [] for m in specs}
        for c, concept in enumerate(items):
            recs, picks = _run_concept(setup, c, concept, lists[c])
            records.extend(recs)
            for m, f in picks.items():
                chosen[m].append(f)
            bar.update(1)
    finally:
        bar.close()
    order = {m.name: k for k, m in enumerate(specs)}
    records.sort(key=lambda r: (r["concept"], order[r["method"]], r["half"] != "selection"))
    return AxBenchReport(
        records=tuple({k: r[k] for k in _COLUMNS} for r in records),
        methods=tuple(m.name for m in specs),
        concepts=tuple(x.instruction for x in items),
        factors=facs,
        chosen={m: tuple(v) for m, v in chosen.items()},
        settings={
            "max_new_tokens": max_new,
            "layer": at,
            "diffmean_position": position,
            "optimize_steps": steps,
            "optimize_lr": lr,
            "temperature": temp,
            "seed": seed,
            "concept_scale": CONCEPT_SCALE,
            "relevance_zero": RELEVANCE_ZERO,
            "fluency_nll": list(FLUENCY_NLL),
            "repetition": list(REPETITION),
            "ngram": _NGRAM,
            "n_prompts": [len(lst) for lst in lists],
        },
        name=name,
    )


@dataclass
class _Setup:
    """What every concept of one `axbench` run shares."""

    model: Model
    chat: Any
    specs: list[_Method]
    factors: tuple[float, ...]
    layer: int
    train: list[str] | None
    position: str | int
    steps: int
    lr: float
    batch_size: int
    judge: _Judge
    generate: Callable[..., list[str]]
    #: plain request -> rendered prompt, and -> its unsteered reply
    base_rendered: dict[str, str]
    unsteered: dict[str, str]


def _run_concept(
    s: _Setup, c: int, concept: _Concept, plist: list[str]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One concept of `axbench`: its records and each method's chosen factor."""
    core = s.model._core
    n_sel = len(plist) // 2
    halves = ["selection"] * n_sel + ["report"] * (len(plist) - n_sel)
    rendered = [s.base_rendered[p] for p in plist]
    prompted = request_prompts(
        core, [with_instruction(concept.instruction, p) for p in plist], s.chat
    )
    fit_plain = s.train if s.train is not None else plist[:n_sel]
    fit_base = request_prompts(core, fit_plain, s.chat)
    fit_prompted = request_prompts(
        core, [with_instruction(concept.instruction, p) for p in fit_plain], s.chat
    )
    prompt_replies = s.generate(prompted) if any(m.kind == "prompt" for m in s.specs) else []
    # The "prompt" replies on the selection half are the "optimized" targets already.
    targets = prompt_replies[:n_sel] if prompt_replies and s.train is None else None
    makers = {
        m.name: _maker(m, s, concept, plist, fit_base, fit_prompted, targets) for m in s.specs
    }

    def rows_for(m: _Method, idx: list[int], f: float) -> list[_Row]:
        steer = makers[m.name](idx, f)
        return [
            _Row(m.name, c, f, i, halves[i], rendered[i], rendered[i], steer[k])
            for k, i in enumerate(idx)
        ]

    # Stage 1: methods without a factor on every prompt (no generation left to do), the
    # others on the selection half at every factor (one generate call).
    fixed: list[_Row] = []
    stage: list[_Row] = []
    for m in s.specs:
        if m.kind in ("none", "prompt"):
            for i in range(len(plist)):
                if m.kind == "none":
                    row = _Row(m.name, c, math.nan, i, halves[i], rendered[i], rendered[i], None)
                    row.text = s.unsteered[plist[i]]
                else:
                    row = _Row(m.name, c, math.nan, i, halves[i], prompted[i], rendered[i], None)
                    row.text = prompt_replies[i]
                fixed.append(row)
        else:
            for f in s.factors:
                stage.extend(rows_for(m, list(range(n_sel)), f))
    _fill(stage, s.generate)
    done = list(zip(fixed + stage, s.judge.score(fixed + stage, concept, prompted), strict=True))

    # Each method's factor: the best mean aggregate on the selection half (the first
    # on a tie); then the report half at that factor (one generate call).
    picks: dict[str, float] = {}
    report: list[_Row] = []
    for m in s.specs:
        if not m.has_factor:
            picks[m.name] = math.nan
            continue
        means = [
            _mean(sc["aggregate"] for r, sc in done if r.method == m.name and r.factor == f)
            for f in s.factors
        ]
        picks[m.name] = s.factors[_best(means)]
        report.extend(rows_for(m, list(range(n_sel, len(plist))), picks[m.name]))
    _fill(report, s.generate)
    done += list(zip(report, s.judge.score(report, concept, prompted), strict=True))
    records = [
        {
            "method": r.method,
            "concept": c,
            "instruction": concept.instruction,
            "factor": r.factor,
            "prompt_index": r.index,
            "prompt": plist[r.index],
            "half": r.half,
            **sc,
            "text": r.text,
        }
        for r, sc in done
    ]
    return records, picks


def _best(means: Sequence[float]) -> int:
    """Index of the largest mean (NaN counts as -inf; the first on a tie)."""
    best, best_value = 0, -math.inf
    for k, v in enumerate(means):
        if v == v and v > best_value:
            best, best_value = k, v
    return best


def _default_layer(model: Model, specs: list[_Method]) -> int:
    """The first HyperSteer's layer, else ``int(0.4 * n_layers)``."""
    for m in specs:
        layer = getattr(m.spec, "layer", None) if m.kind == "hypersteer" else None
        if isinstance(layer, int) and not isinstance(layer, bool):
            return model._resolve_layer(layer)
    return int(0.4 * model.n_layers)


def _fill(rows: list[_Row], generate: Callable[..., list[str]]) -> None:
    """Generate every row's reply in one batched call."""
    texts = generate([r.rendered for r in rows], [r.steering for r in rows])
    for r, t in zip(rows, texts, strict=True):
        r.text = t


def _maker(
    m: _Method,
    s: _Setup,
    concept: _Concept,
    plist: list[str],
    fit_base: list[str],
    fit_prompted: list[str],
    targets: list[str] | None,
) -> Callable[[list[int], float], list[Any]]:
    """``make(prompt_indices, factor) -> one steering per prompt`` for method m on this
    concept (building its vector once, on first use)."""
    cache: dict[str, Steering | None] = {}
    who = f"method {m.name!r}"

    def vector() -> Steering | None:
        if "v" not in cache:
            if m.kind == "diffmean":
                vec = SteeringVector.mean_centring(
                    s.model,
                    fit_prompted,
                    fit_base,
                    layers=[s.layer],
                    position=s.position,
                    batch_size=s.batch_size,
                    progress=False,
                )
                cache["v"] = vec.to_steering()
            else:  # optimized
                wanted = s.generate(fit_prompted) if targets is None else targets
                keep = [i for i, t in enumerate(wanted) if t and s.model._core.encode(t, False)]
                if not keep:
                    cache["v"] = None  # the model wrote nothing to learn from
                else:
                    vec = SteeringVector.optimize(
                        s.model,
                        [fit_base[i] for i in keep],
                        [wanted[i] for i in keep],
                        layers=[s.layer],
                        steps=s.steps,
                        lr=s.lr,
                        batch_size=min(8, len(keep)),
                        progress=False,
                    )
                    cache["v"] = vec.to_steering()
        return cache["v"]

    def make(idx: list[int], factor: float) -> list[Any]:
        if m.kind in ("diffmean", "optimized"):
            v = vector()
            return [None if v is None else v * factor] * len(idx)
        if m.kind == "fixed":
            return [m.spec * factor] * len(idx)
        texts = [plist[i] for i in idx]
        if m.kind == "hypersteer":
            out = m.spec.steering([concept.instruction] * len(idx), texts, factor=factor)
        else:
            out = m.spec(concept.instruction, texts, factor)
        return _as_rows(out, len(idx), who)

    return make
