"""Assertions for steering evaluations: test that steering does what it should.

Each helper measures with steerlab's own evaluation code, returns a small result object
(a frozen dataclass with the numbers, ``.record()`` for logging) when every bound holds,
and raises `AssertionError` whose message is a readable multi-line report (the measured
values against their bounds, the counts, the worst examples) when one does not:

- `assert_steers`: a vector moves a behaviour's A/B margin ``m = logit(y+) - logit(y-)``
  on held-out records (the steerability of Braun et al. 2025, via
  `steerlab.evaluate.steerability`), with at most a given anti-steerable fraction;
- `assert_on_topic`: steered generations mention a topic at a given rate (the keyword
  rule of `steerlab.datasets.topic_score`) within a perplexity budget (the perplexity
  of the generations under the unsteered model, as in mean-centring's evaluation,
  Jorgensen et al. 2023; via `steerlab.evaluate.steered_generations`);
- `assert_false_refusal_rate`: a steering controller (Hegazy et al. 2025) refuses few
  benign requests (the refusal matcher of `steerlab.evaluate.refusal_rate`).

The module imports neither pytest nor anything heavy beyond steerlab itself, so it works
in plain scripts and notebooks. Under pytest with steerlab's plugin
(`steerlab.pytest_plugin`, loaded automatically once steerlab is installed) every call,
passing or failing, is also recorded for the run's JSON file (``--steerlab-json``) and
its terminal summary.

Bad arguments raise `steerlab.SteerlabError` subclasses (`InvalidArgumentError`,
`InvalidTypeError`), never `AssertionError`, so a broken test is not mistaken for a
failed evaluation.

Example::

    import steerlab as sl
    from steerlab.testing import assert_on_topic

    model = sl.Model.load()
    ocean = sl.datasets.load_topic("ocean")
    vec = sl.SteeringVector.mean_centring(model, ocean.texts, sl.datasets.background_corpus(),
                                          layers=[12])
    res = assert_on_topic(model, vec.dose(0.3), sl.datasets.open_prompts()[:8], ocean,
                          min_rate=0.3, max_perplexity_ratio=4.0)
    print(res.rate, res.median_perplexity)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from steerlab import _args
from steerlab.datasets import TopicSet, load_topic, topic_score
from steerlab.errors import InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    from steerlab._generations import GenerationReport
    from steerlab._refusal import RefusalReport
    from steerlab.evaluate import SteerabilityResult
    from steerlab.model import Model

__all__ = [
    "Condition",
    "FalseRefusalResult",
    "OnTopicResult",
    "SteersResult",
    "assert_false_refusal_rate",
    "assert_on_topic",
    "assert_steers",
]

#: How many examples a failure report lists.
N_EXAMPLES = 3
_SNIPPET = 90


# ------------------------------------------------------------------ result objects


@dataclass(frozen=True)
class Condition:
    """One bound of a check: ``value op bound`` (``op`` is ``">="`` or ``"<="``)."""

    metric: str
    value: float
    op: str
    bound: float

    @property
    def passed(self) -> bool:
        """Whether the bound holds (NaN never passes)."""
        if math.isnan(self.value):
            return False
        return self.value >= self.bound if self.op == ">=" else self.value <= self.bound

    def line(self) -> str:
        """``metric value op bound``, e.g. ``anti_steerable 0.200 <= 0.400``."""
        return f"{self.metric} {_num(self.value)} {self.op} {_num(self.bound)}"

    def record(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": _json_float(self.value),
            "op": self.op,
            "bound": _json_float(self.bound),
            "passed": self.passed,
        }


@dataclass(frozen=True)
class _Result:
    conditions: tuple[Condition, ...]

    #: The helper's name (``"assert_steers"``...), set by each subclass.
    check = ""

    @property
    def passed(self) -> bool:
        """True when every bound holds."""
        return all(c.passed for c in self.conditions)

    def measured(self) -> dict[str, Any]:
        """The measured numbers and counts (plain Python values)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """``check``, ``passed``, ``measured`` and ``conditions``: plain Python values
        ready for ``json.dumps`` (NaN becomes None); what the plugin writes per call."""
        return {
            "check": self.check,
            "passed": self.passed,
            "measured": {k: _json_value(v) for k, v in self.measured().items()},
            "conditions": [c.record() for c in self.conditions],
        }

    def summary(self) -> str:
        """One line: every bound with its value."""
        return ", ".join(c.line() for c in self.conditions) or "no bounds"


@dataclass(frozen=True)
class SteersResult(_Result):
    """What `assert_steers` measured (Braun et al. 2025's steerability at one
    coefficient).

    Attributes:
        coefficient: the multiplier of the vector.
        n: number of records.
        mean_margin_shift: mean over records of ``m(coefficient) - m(0)``, in logits,
            ``m = logit(matching letter) - logit(other letter)``.
        anti_steerable: fraction of records whose shift is negative.
        n_anti_steerable: their count.
        unsteered_margin, steered_margin: the mean margins, in logits.
        conditions: the bounds checked.
        steerability: the full `steerlab.evaluate.SteerabilityResult` (per-record margins).
    """

    coefficient: float = 0.0
    n: int = 0
    mean_margin_shift: float = 0.0
    anti_steerable: float = 0.0
    n_anti_steerable: int = 0
    unsteered_margin: float = 0.0
    steered_margin: float = 0.0
    steerability: SteerabilityResult | None = field(default=None, repr=False, compare=False)

    check = "assert_steers"

    def measured(self) -> dict[str, Any]:
        return {
            "coefficient": self.coefficient,
            "n": self.n,
            "mean_margin_shift": self.mean_margin_shift,
            "anti_steerable": self.anti_steerable,
            "n_anti_steerable": self.n_anti_steerable,
            "unsteered_margin": self.unsteered_margin,
            "steered_margin": self.steered_margin,
        }


@dataclass(frozen=True)
class OnTopicResult(_Result):
    """What `assert_on_topic` measured.

    Attributes:
        n: number of prompts.
        n_on_topic: steered generations with at least one keyword.
        rate: ``n_on_topic / n``.
        median_perplexity: median perplexity of the steered generations under the
            unsteered model, each given its prompt (exp of the mean negative
            log-probability per token; 1 is perfectly predictable).
        unsteered_median_perplexity: the same for the unsteered generations (NaN when
            no ratio was asked for: they were not generated).
        perplexity_ratio: ``median_perplexity / unsteered_median_perplexity`` (NaN
            likewise).
        conditions: the bounds checked.
        report: the full `steerlab.evaluate.GenerationReport` (texts, per-text scores).
    """

    n: int = 0
    n_on_topic: int = 0
    rate: float = 0.0
    median_perplexity: float = math.nan
    unsteered_median_perplexity: float = math.nan
    perplexity_ratio: float = math.nan
    report: GenerationReport | None = field(default=None, repr=False, compare=False)

    check = "assert_on_topic"

    def measured(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_on_topic": self.n_on_topic,
            "rate": self.rate,
            "median_perplexity": self.median_perplexity,
            "unsteered_median_perplexity": self.unsteered_median_perplexity,
            "perplexity_ratio": self.perplexity_ratio,
        }


@dataclass(frozen=True)
class FalseRefusalResult(_Result):
    """What `assert_false_refusal_rate` measured.

    Attributes:
        n: number of benign prompts.
        n_refused: replies the refusal matcher flags.
        rate: ``n_refused / n``: the false-refusal rate.
        judge_rate: the log-probability judge's refusal rate on the same prompts (for
            context; not checked).
        conditions: the bound checked.
        report: the full `steerlab.evaluate.RefusalReport`.
    """

    n: int = 0
    n_refused: int = 0
    rate: float = 0.0
    judge_rate: float = 0.0
    report: RefusalReport | None = field(default=None, repr=False, compare=False)

    check = "assert_false_refusal_rate"

    def measured(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_refused": self.n_refused,
            "rate": self.rate,
            "judge_rate": self.judge_rate,
        }


# ------------------------------------------------------------------ the helpers


def assert_steers(
    model: Model,
    vector: Any,
    records: Any,
    *,
    coefficient: float,
    min_margin_shift: float,
    max_anti_steerable: float | None = None,
    layer: int | None = None,
    chat: bool = False,
    seed: int = 0,
    batch_size: int = 16,
) -> SteersResult:
    """Assert that ``vector * coefficient`` moves a behaviour's A/B margin.

    For each record ``i`` the A/B prompt is rendered as `steerlab.evaluate.steerability`
    does (letters balanced by `seed`), and the margin ``m_i = logit(y+) - logit(y-)``
    (the letter of the matching answer minus the other, at the next-token position) is
    read unsteered and steered. The shift is ``Δm_i = m_i(coefficient) - m_i(0)``; the
    check is ``mean(Δm) >= min_margin_shift`` and, when given, the anti-steerable
    fraction ``P(Δm < 0) <= max_anti_steerable`` (Braun et al. 2025, "Understanding
    (Un)Reliability of Steering Vectors in Language Models"). Use
    records the vector was not trained on.

    Args:
        model: a loaded `steerlab.Model`.
        vector: a `SteeringVector`, `Steering` or ``{layer: vector}`` (each ``[d_model]``
            float32).
        records: A/B records (a `steerlab.datasets.Behaviour` or a list; see
            `steerlab.contrast.as_records`).
        coefficient: the multiplier, a finite number > 0 (negate the vector to steer
            the other way).
        min_margin_shift: lower bound on the mean shift, in logits (finite).
        max_anti_steerable: upper bound on the anti-steerable fraction, in [0, 1];
            None: not checked.
        layer: steer only this layer of a multi-layer vector.
        chat: render the A/B prompts with the model's chat template.
        seed: letter assignment (as in `steerlab.ContrastPairs.from_records`), an int
            >= 0.
        batch_size: rows per forward pass (>= 1).

    Returns:
        A `SteersResult` (``mean_margin_shift``, ``anti_steerable``, counts, the full
        `SteerabilityResult`).

    Raises:
        AssertionError: a bound fails; the message lists the measured values, the
            bounds and the records with the most negative shift.
        InvalidArgumentError, InvalidTypeError: a bad coefficient, bound, record or
            vector; ShapeError / OutOfRangeError: a vector for another model.
    """
    __tracebackhide__ = True  # pytest shows the report, not this frame
    from steerlab.evaluate import steerability

    coef = _args.real(coefficient, "coefficient", above=0.0)
    shift_bound = _args.real(min_margin_shift, "min_margin_shift")
    anti_bound = (
        None
        if max_anti_steerable is None
        else _args.real(max_anti_steerable, "max_anti_steerable", minimum=0.0, maximum=1.0)
    )
    size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
    seed_v = _args.integer(seed, "seed", minimum=0, maximum=_args.U64_MAX)
    res = steerability(
        model,
        records,
        vector,
        (0.0, coef),
        layer,
        chat=_args.flag(chat, "chat"),
        seed=seed_v,
        batch_size=size,
        progress=False,
    )
    effect = np.asarray(res.effect, dtype=np.float64)
    conditions = [Condition("mean_margin_shift", res.mean_effect, ">=", shift_bound)]
    if anti_bound is not None:
        conditions.append(Condition("anti_steerable", res.anti_steerable, "<=", anti_bound))
    result = SteersResult(
        conditions=tuple(conditions),
        coefficient=coef,
        n=res.n_samples,
        mean_margin_shift=res.mean_effect,
        anti_steerable=res.anti_steerable,
        n_anti_steerable=int(np.count_nonzero(effect < 0)),
        unsteered_margin=float(np.mean(res.margins[:, 0])),
        steered_margin=float(np.mean(res.margins[:, 1])),
        steerability=res,
    )
    if result.passed:
        return _done(result)
    from steerlab.contrast import as_records

    recs = as_records(records)
    worst = np.argsort(effect, kind="stable")[:N_EXAMPLES]
    lines = [
        f"records: {result.n}, coefficient {_num(coef)}",
        f"mean margin shift: {_num(result.mean_margin_shift)} logits "
        f"(unsteered {_num(result.unsteered_margin)} -> steered {_num(result.steered_margin)})",
        f"anti-steerable: {result.n_anti_steerable}/{result.n} = {result.anti_steerable:.1%}",
        "records with the smallest shift (m = logit(y+) - logit(y-)):",
    ]
    for i in worst:
        q = _snippet(recs[int(i)].question)
        lines.append(
            f"  [{int(i)}] Δm {_num(effect[i])}: m {_num(res.margins[i, 0])} -> "
            f"{_num(res.margins[i, 1])}  {q}"
        )
    _fail(result, lines)


def assert_on_topic(
    model: Model,
    steering: Any,
    prompts: Sequence[str],
    keywords: TopicSet | str | Sequence[str],
    *,
    min_rate: float,
    max_perplexity: float | None = None,
    max_perplexity_ratio: float | None = None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
) -> OnTopicResult:
    """Assert that steered generations land on a topic within a perplexity budget.

    Each prompt is continued under `steering` (`steerlab.evaluate.steered_generations`:
    greedy by default, ``max_new_tokens`` tokens); a continuation is on topic when it
    contains a keyword under `steerlab.datasets.topic_score`'s rule (case-insensitive,
    whole words, a multiword keyword across any whitespace). Fluency is the perplexity
    of each continuation under the *unsteered* model given its prompt, summarised by the
    median over prompts (the yardstick of Jorgensen et al. 2023, "Improving Activation
    Steering in Language Models with Mean-Centring"). Checks:
    ``rate >= min_rate``; ``median perplexity <= max_perplexity``;
    ``median perplexity / median perplexity of the unsteered continuations <=
    max_perplexity_ratio`` (the unsteered continuations then run in the same batch).

    Args:
        model: a loaded `steerlab.Model`.
        steering: anything `Model.generate` takes as ``steering=`` (a `Steering`,
            `SteeringVector` times a coefficient, a `SteeringController`...).
        prompts: the prompts, a non-empty list of str.
        keywords: a `steerlab.datasets.TopicSet`, the name of a shipped topic
            (`steerlab.datasets.topic_names`) or a non-empty list of keywords.
        min_rate: lower bound on the on-topic rate, in [0, 1].
        max_perplexity: upper bound on the median perplexity (> 0); None: not checked.
        max_perplexity_ratio: upper bound on the steered / unsteered median perplexity
            (> 0); None: not checked.
        max_new_tokens: continuation length (>= 1).
        temperature: 0 greedy; above 0 samples (seeded by `seed`).
        seed: sampling seed.
        batch_size: rows per forward pass (>= 1).

    Returns:
        An `OnTopicResult` (``rate``, counts, perplexities, the `GenerationReport`).

    Raises:
        AssertionError: a bound fails; the message lists the values, the bounds, the
            off-topic and the least fluent continuations.
        InvalidArgumentError, InvalidTypeError: bad bounds, prompts or keywords; as
            `Model.generate` for a bad steering.
    """
    __tracebackhide__ = True
    from steerlab.evaluate import steered_generations

    items, single = _args.texts(prompts, "prompts")
    if single:
        raise InvalidTypeError("prompts must be a list of str, got a single str")
    topic = _topic(keywords)
    rate_bound = _args.real(min_rate, "min_rate", minimum=0.0, maximum=1.0)
    ppl_bound = (
        None if max_perplexity is None else _args.real(max_perplexity, "max_perplexity", above=0.0)
    )
    ratio_bound = (
        None
        if max_perplexity_ratio is None
        else _args.real(max_perplexity_ratio, "max_perplexity_ratio", above=0.0)
    )
    max_new = _args.integer(max_new_tokens, "max_new_tokens", minimum=1, maximum=_args.I64_MAX)
    temp = _args.real(temperature, "temperature", minimum=0.0)
    size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
    if steering is None:
        raise InvalidArgumentError(
            "steering is None; assert_on_topic checks a steering, pass the vector or "
            "controller to test"
        )
    steerings: dict[str, Any] = {"steered": steering}
    if ratio_bound is not None:
        steerings["unsteered"] = None
    rep = steered_generations(
        model,
        items,
        steerings,
        topic=topic,
        max_new_tokens=max_new,
        temperature=temp,
        seed=seed,
        batch_size=size,
        progress=False,
    )
    on = np.asarray(rep.on_topic["steered"] if rep.on_topic else [], dtype=bool)
    ppl = np.asarray(rep.perplexity["steered"], dtype=np.float64)
    median = float(np.nanmedian(ppl)) if np.any(np.isfinite(ppl)) else math.nan
    base = math.nan
    if "unsteered" in rep.perplexity:
        bp = np.asarray(rep.perplexity["unsteered"], dtype=np.float64)
        base = float(np.nanmedian(bp)) if np.any(np.isfinite(bp)) else math.nan
    ratio = median / base if base > 0 else math.nan
    n_on = int(np.count_nonzero(on))
    rate = n_on / len(items)
    conditions = [Condition("on_topic_rate", rate, ">=", rate_bound)]
    if ppl_bound is not None:
        conditions.append(Condition("median_perplexity", median, "<=", ppl_bound))
    if ratio_bound is not None:
        conditions.append(Condition("perplexity_ratio", ratio, "<=", ratio_bound))
    result = OnTopicResult(
        conditions=tuple(conditions),
        n=len(items),
        n_on_topic=n_on,
        rate=rate,
        median_perplexity=median,
        unsteered_median_perplexity=base,
        perplexity_ratio=ratio,
        report=rep,
    )
    if result.passed:
        return _done(result)
    texts = rep.texts["steered"]
    lines = [
        f"prompts: {len(items)}, topic {topic.name!r} ({len(topic.keywords)} keywords: "
        f"{_snippet(', '.join(topic.keywords), 60)})",
        f"on topic: {n_on}/{len(items)} = {rate:.1%}",
        f"median perplexity under the unsteered model: {_num(median)}"
        + (
            f" (unsteered generations {_num(base)}, ratio {_num(ratio)})"
            if "unsteered" in rep.perplexity
            else ""
        ),
    ]
    off = [i for i in range(len(items)) if not on[i]][:N_EXAMPLES]
    if off:
        lines.append("off-topic generations:")
        lines += [f"  [{i}] {_snippet(items[i] + texts[i])}" for i in off]
    order = np.argsort(np.where(np.isnan(ppl), -np.inf, ppl), kind="stable")[::-1]
    lines.append("least fluent generations (perplexity):")
    lines += [
        f"  [{int(i)}] {_num(ppl[i])}  {_snippet(items[int(i)] + texts[int(i)])}"
        for i in order[:N_EXAMPLES]
    ]
    _fail(result, lines)


def assert_false_refusal_rate(
    model: Model,
    controller: Any,
    benign_prompts: Sequence[str],
    *,
    max_rate: float,
    max_new_tokens: int = 48,
    judge_openings: int = 8,
    batch_size: int = 8,
    chat: Any = "auto",
) -> FalseRefusalResult:
    """Assert that a steering controller refuses few benign requests.

    The prompts are answered greedily under `controller` and each reply is checked by
    steerlab's refusal matcher (`steerlab.evaluate.refusal_rate`: anchored refusal
    phrases, after the refusal-substring evaluation of Zou et al. 2023 and Arditi et al.
    2024). The false-refusal rate is the fraction of benign prompts refused; the check
    is ``rate <= max_rate`` (the benign side of Hegazy et al. 2025, "Guiding Giants:
    Lightweight Controllers for Weighted Activation Steering in LLMs", arXiv
    2505.20309). The log-probability judge's rate is reported alongside.

    Args:
        model: a loaded `steerlab.Model`.
        controller: a `steerlab.SteeringController` (or any steering `Model.generate`
            takes; None tests the unsteered model).
        benign_prompts: benign requests (plain text or rendered prompts), a non-empty
            list of str.
        max_rate: upper bound on the false-refusal rate, in [0, 1].
        max_new_tokens: reply length (>= 1).
        judge_openings: openings per kind the log-probability judge scores (1 to 32).
        batch_size: prompts per forward pass (>= 1).
        chat: ``"auto"``, True or False, as in `steerlab.evaluate.refusal_rate`.

    Returns:
        A `FalseRefusalResult` (``rate``, ``n_refused``, ``judge_rate``, the
        `RefusalReport`).

    Raises:
        AssertionError: the bound fails; the message lists the rate, the bound and the
            refused prompts with their replies and the matched pattern.
        InvalidArgumentError, InvalidTypeError: a bad bound, prompt list or setting.
    """
    __tracebackhide__ = True
    from steerlab.evaluate import refusal_rate

    items, single = _args.texts(benign_prompts, "benign_prompts")
    if single:
        raise InvalidTypeError("benign_prompts must be a list of str, got a single str")
    bound = _args.real(max_rate, "max_rate", minimum=0.0, maximum=1.0)
    rep = refusal_rate(
        model,
        items,
        controller,
        max_new_tokens,
        batch_size=batch_size,
        chat=chat,
        judge_openings=judge_openings,
        progress=False,
    )
    matched = rep.matched
    result = FalseRefusalResult(
        conditions=(Condition("false_refusal_rate", rep.rate, "<=", bound),),
        n=rep.n,
        n_refused=int(np.count_nonzero(matched)),
        rate=rep.rate,
        judge_rate=rep.judge_rate,
        report=rep,
    )
    if result.passed:
        return _done(result)
    lines = [
        f"benign prompts: {rep.n}, refused {result.n_refused}/{rep.n} = {rep.rate:.1%} "
        f"(log-probability judge: {rep.judge_rate:.1%})",
        "refused benign prompts (pattern: prompt -> reply):",
    ]
    for i in np.flatnonzero(matched)[:N_EXAMPLES]:
        lines.append(
            f"  [{int(i)}] {rep.pattern[i]}: {_snippet(items[i], 50)} -> "
            f"{_snippet(rep.texts[i], 70)}"
        )
    _fail(result, lines)


# ------------------------------------------------------------------ plumbing


def _topic(keywords: Any) -> TopicSet:
    if isinstance(keywords, TopicSet):
        return keywords
    if isinstance(keywords, str):
        return load_topic(keywords)
    if not isinstance(keywords, Sequence):
        raise InvalidTypeError(
            f"keywords must be a TopicSet, a topic name or a list of str, got "
            f"{type(keywords).__name__}"
        )
    words = list(keywords)
    if not words:
        raise InvalidArgumentError("keywords is empty; give at least one keyword")
    for i, w in enumerate(words):
        if not isinstance(w, str):
            raise InvalidTypeError(f"keywords[{i}] must be a str, got {type(w).__name__}")
        if not w.strip():
            raise InvalidArgumentError(f"keywords[{i}] is blank ({w!r}); expected a word")
    topic = TopicSet(name="keywords", kind="topic", keywords=tuple(words), texts=())
    topic_score("", topic)  # the datasets module's own check of the keyword list
    return topic


def _done(result: Any) -> Any:
    _publish(result)
    return result


def _fail(result: _Result, lines: list[str]) -> NoReturn:
    __tracebackhide__ = True
    _publish(result)
    failed = [c for c in result.conditions if not c.passed]
    head = f"{result.check} failed: " + "; ".join(c.line() for c in failed)
    body = ["bounds:"] + [
        f"  {'ok  ' if c.passed else 'FAIL'} {c.line()}" for c in result.conditions
    ]
    raise AssertionError("\n".join([head, *body, *lines]))


def _publish(result: _Result) -> None:
    """Hand the record to steerlab's pytest plugin when it is running (looked up in
    ``sys.modules``, so this module never imports pytest)."""
    plugin = sys.modules.get("steerlab.pytest_plugin")
    record = getattr(plugin, "_record_check", None)
    if record is not None:
        record(result.record())


def _num(x: Any) -> str:
    v = float(x)
    if math.isnan(v):
        return "nan"
    return f"{v:+.3f}" if v < 0 else f"{v:.3f}"


def _snippet(text: str, width: int = _SNIPPET) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 3] + "...")


def _json_float(x: float) -> float | str | None:
    """A float as JSON holds it: NaN as null, +/-inf as the strings "inf" / "-inf"."""
    v = float(x)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _json_value(v: Any) -> Any:
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, float | np.floating):
        return _json_float(float(v))
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, Mapping):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()]
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return str(v)
