"""What does a steering vector actually do? Measurements after the fact.

- `steerability`: on A/B records, the logit difference ``m = logit(y+) - logit(y-)``
  between the answer letter that shows the behaviour and the other one, unsteered and
  steered at several multipliers; per sample the effect ``Δm`` (largest multiplier minus
  unsteered) and the least-squares slope of ``m`` against the multiplier; the mean effect
  and the anti-steerable fraction ``P(Δm < 0)`` (Braun et al. 2025). All multipliers of
  one sample run in one batch, one row per multiplier.
- `compare_prompt_types`: a vector per prompt type (Braun et al.'s seven), their pairwise
  cosines, separability and steerability side by side.
- `steered_generations`: free generation under several steerings at once (one batch,
  one row per prompt and steering), scored for landing on a topic and for fluency
  (perplexity of the continuation under the unsteered model); defined in
  ``steerlab._generations``, re-exported here.
- `reliability_table`: per behaviour, the diagnostics of its vector at the recommended
  layer next to its steerability, and how well the first predict the second.
- `answer_flips`: on records with a target and a foil answer token, whether a steering
  flips the model's choice from the foil to the target, how far it moves the logit
  difference, and how little it disturbs the other tokens (the KL divergence on the
  next-token distribution without the two answers): the effectiveness and faithfulness
  measures of activation scaling (Stoehr et al. 2024). `answer_flips_sweep` does it
  at several strengths sharing one unsteered pass; `answer_logit_diff` is the logit
  difference alone.
- `refusal_rate`: does the (steered) model refuse? A phrase matcher over the replies and
  the model's own log-probability of refusal against compliance openings, with where they
  disagree; defined in ``steerlab._refusal``, re-exported here.
- `axbench`: AxBench's protocol (Wu et al. 2025) judged offline by the base model:
  methods (unsteered, prompting, DiffMean, optimised vectors, HyperSteer...) over
  concepts, the factor chosen on half the prompts and reported on the other half, with
  concept, instruction-relevance and fluency scores in [0, 2] and their harmonic mean;
  defined in ``steerlab._axbench``, re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from steerlab import _args, _core, plots
from steerlab._axbench import AxBenchReport, axbench
from steerlab._continuation import continuation_kl
from steerlab._generations import GenerationReport, steered_generations
from steerlab._progress import progress_bar
from steerlab._refusal import RefusalReport, refusal_rate
from steerlab._stats import spearman
from steerlab.contrast import (
    PROMPT_TYPES,
    ContrastPairs,
    Record,
    as_records,
    matching_letter,
    render_ab,
)
from steerlab.datasets import behaviour_names, load_behaviour
from steerlab.diagnostics import DiagnosisReport, diagnose
from steerlab.errors import InvalidArgumentError, InvalidTypeError, TokenizerError
from steerlab.steering import Steering, prepare
from steerlab.vectors import SteeringVector

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from steerlab.model import Model

__all__ = [
    "AnswerFlips",
    "AxBenchReport",
    "BehaviourReliability",
    "GenerationReport",
    "PromptTypeComparison",
    "RefusalReport",
    "ReliabilityTable",
    "SteerabilityResult",
    "answer_flips",
    "answer_flips_sweep",
    "answer_logit_diff",
    "axbench",
    "compare_prompt_types",
    "continuation_kl",
    "refusal_rate",
    "reliability_table",
    "spearman",
    "steerability",
    "steered_generations",
]


def _letter_ids(model: Model, prompt: str) -> tuple[int, int]:
    """Token ids of the letters A and B right after `prompt` (which ends with ``(``)."""
    base = model.encode(prompt)
    out = []
    for letter in ("A", "B"):
        ids = model.encode(prompt + letter)
        if ids[: len(base)] != base or len(ids) != len(base) + 1:
            raise TokenizerError(
                f"the letter {letter!r} after '(' is not a single token for this tokenizer; "
                f"steerability needs one token per answer letter"
            )
        out.append(ids[-1])
    return out[0], out[1]


@dataclass(frozen=True)
class SteerabilityResult:
    """Logit differences of A/B samples under steering, and their summaries."""

    multipliers: tuple[float, ...]
    #: m = logit(matching letter) - logit(other letter), [n_samples, n_multipliers].
    margins: npt.NDArray[np.float64]
    unsteered: npt.NDArray[np.float64]
    #: m at the largest multiplier minus m unsteered.
    effect: npt.NDArray[np.float64]
    #: least-squares slope of m against the multiplier.
    slope: npt.NDArray[np.float64]
    mean_effect: float
    mean_slope: float
    anti_steerable: float
    name: str | None = None

    @property
    def n_samples(self) -> int:
        return int(self.margins.shape[0])

    def to_pandas(self) -> pd.DataFrame:
        """One row per sample: unsteered, effect, slope and m at each multiplier."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        df = pd.DataFrame({"unsteered": self.unsteered, "effect": self.effect, "slope": self.slope})
        for j, m in enumerate(self.multipliers):
            df[f"m@{m:g}"] = self.margins[:, j]
        return df

    def __repr__(self) -> str:
        label = f" {self.name}" if self.name else ""
        return (
            f"<SteerabilityResult{label}: {self.n_samples} samples, mean effect "
            f"{self.mean_effect:+.3f}, mean slope {self.mean_slope:+.3f}, anti-steerable "
            f"{self.anti_steerable:.0%}>"
        )

    def plot(self, ax: Any = None) -> Figure:
        """m against the multiplier per sample, anti-steerable samples highlighted."""
        return plots.plot_steerability(self, ax=ax)


def _check_multipliers(multipliers: Iterable[float]) -> tuple[float, ...]:
    try:
        mults = tuple(float(m) for m in multipliers)
    except (TypeError, ValueError):
        raise InvalidTypeError("multipliers must be numbers") from None
    if len(mults) < 2 or 0.0 not in mults or not any(m > 0 for m in mults):
        raise InvalidArgumentError(
            f"multipliers must include 0 (unsteered) and at least one value > 0, got {mults}"
        )
    if not all(np.isfinite(mults)) or len(set(mults)) != len(mults):
        raise InvalidArgumentError(f"multipliers must be finite and distinct, got {mults}")
    return mults


def _as_steering(vector: Any, layer: int | None, model: Model) -> Steering:
    if isinstance(vector, SteeringVector):
        vector.check_model(model)
        if layer is not None:
            vector = vector.at(model._resolve_layer(layer))
        return vector.to_steering()
    if isinstance(vector, Steering):
        if layer is not None:
            return Steering({layer: vector.vectors[layer]}, vector.positions)
        return vector
    if isinstance(vector, Mapping):
        return Steering(vector)
    raise InvalidTypeError(
        f"vector must be a SteeringVector, a Steering or {{layer: vector}}, got "
        f"{type(vector).__name__}"
    )


def steerability(
    model: Model,
    records: Any,
    vector: Any,
    multipliers: Iterable[float] = (-1.0, -0.5, 0.0, 0.5, 1.0),
    layer: int | None = None,
    *,
    positions: str | Iterable[int] | None = None,
    chat: bool = False,
    seed: int = 0,
    batch_size: int = 16,
    name: str | None = None,
    progress: bool | None = None,
) -> SteerabilityResult:
    """Measure how steering moves the A/B preference of each sample.

    Args:
        model: the model.
        records: A/B records (a `steerlab.datasets.Behaviour` or a list; see
            `steerlab.contrast.as_records`). Record ``i`` shows its matching answer
            under A or B as `steerlab.contrast.matching_letter` says.
        vector: a `SteeringVector` (or `Steering` / ``{layer: vector}``), multiplied by
            each multiplier.
        multipliers: coefficients to evaluate; must include 0 and a positive value.
        layer: steer only this layer of a multi-layer vector.
        positions: where to add the vector (default: the vector's own, usually all).
        chat: render the prompts with the model's chat template.
        seed: letter assignment (as in `ContrastPairs.from_records`).
        batch_size: rows per forward pass (a sample's multipliers stay together).
        name: label for reports.
        progress: progress bar (None: automatic).

    Returns:
        A `SteerabilityResult`.

    Raises:
        InvalidArgumentError: multipliers without 0 or a positive value; bad records.
        InvalidArgumentError, ShapeError, OutOfRangeError: a vector for another model.
    """
    recs = as_records(records)
    mults = _check_multipliers(multipliers)
    steer = _as_steering(vector, layer, model)
    if positions is not None:
        steer = steer.with_positions(cast(Any, positions))
    prompts = [
        render_ab(r, i, answer=None, model=model if chat else None, seed=seed)
        for i, r in enumerate(recs)
    ]
    id_a, id_b = _letter_ids(model, prompts[0])
    rows_per_sample = len(mults)
    per_batch = max(1, batch_size // rows_per_sample)
    row_steering = [None if m == 0.0 else steer * m for m in mults]
    margins = np.empty((len(recs), rows_per_sample), dtype=np.float64)
    bar = progress_bar(progress, len(recs), per_batch, "steerability", "sample")
    try:
        for start in range(0, len(recs), per_batch):
            stop = min(start + per_batch, len(recs))
            texts = [p for p in prompts[start:stop] for _ in mults]
            logits = model.logits(texts, row_steering * (stop - start), batch_size=len(texts))
            logits = logits.reshape(stop - start, rows_per_sample, -1)
            for k, i in enumerate(range(start, stop)):
                match_a = render_letter(i, seed) == "A"
                pos_id, neg_id = (id_a, id_b) if match_a else (id_b, id_a)
                margins[i] = logits[k, :, pos_id].astype(np.float64) - logits[k, :, neg_id]
            bar.update(stop - start)
    finally:
        bar.close()
    st = _core.steerability(margins, list(mults))
    return SteerabilityResult(
        multipliers=mults,
        margins=margins,
        unsteered=np.asarray(st["unsteered"]),
        effect=np.asarray(st["effect"]),
        slope=np.asarray(st["slope"]),
        mean_effect=float(st["mean_effect"]),
        mean_slope=float(st["mean_slope"]),
        anti_steerable=float(st["anti_steerable"]),
        name=name or getattr(records, "name", None),
    )


def render_letter(index: int, seed: int) -> str:
    return matching_letter(index, seed)


@dataclass
class PromptTypeComparison:
    """Vectors from the seven prompt types of the same records, side by side."""

    layer: int
    prompt_types: list[str]
    vectors: dict[str, SteeringVector]
    diagnoses: dict[str, DiagnosisReport]
    steerability: dict[str, SteerabilityResult]
    cosines: npt.NDArray[np.float64] = field(repr=False)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for t in self.prompt_types:
            d = self.diagnoses[t][self.layer]
            s = self.steerability[t]
            out.append(
                {
                    "prompt_type": t,
                    "mean_cosine": d.mean_cosine,
                    "d_prime": d.d_prime,
                    "vector_norm": self.vectors[t].norms()[self.layer],
                    "mean_effect": s.mean_effect,
                    "mean_slope": s.mean_slope,
                    "anti_steerable": s.anti_steerable,
                }
            )
        return out

    def to_pandas(self) -> pd.DataFrame:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.records()).set_index("prompt_type")

    def plot(self) -> Figure:
        """Cosine heatmap of the vectors and their steerability per prompt type."""
        return plots.plot_prompt_types(self)


def compare_prompt_types(
    model: Model,
    records: Any,
    layer: int,
    *,
    prompt_types: Iterable[str] = PROMPT_TYPES,
    n_train: int = 40,
    n_eval: int = 40,
    multipliers: Iterable[float] = (-1.0, 0.0, 1.0),
    method: str = "mean_diff",
    n_shots: int = 5,
    chat: bool = False,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool | None = None,
) -> PromptTypeComparison:
    """Train a vector per prompt type on the same records and compare them.

    Args:
        model: the model.
        records: a `steerlab.datasets.Behaviour` (carries the instructions) or records
            (then types with ``instruction`` need a Behaviour).
        layer: the layer to read and steer.
        prompt_types: which of `steerlab.contrast.PROMPT_TYPES` to compare.
        n_train: records to build each vector from (examples for few-shot prompts are
            drawn from these too).
        n_eval: other records to measure steerability on.
        multipliers: as in `steerability`.
        method: as in `SteeringVector.train`.
        n_shots: examples per few-shot prompt.
        chat: use the model's chat template.
        seed: shuffling, letters and example choice.
        batch_size: rows per forward pass.
        progress: progress bars.

    Returns:
        A `PromptTypeComparison`.

    Raises:
        InvalidArgumentError: fewer records than ``n_train + n_eval``, a bad prompt type.
    """
    recs = as_records(records)
    types = list(prompt_types)
    if not types:
        raise InvalidArgumentError("prompt_types is empty")
    if n_train < 2 or n_eval < 1 or n_train + n_eval > len(recs):
        raise InvalidArgumentError(
            f"need n_train >= 2 and n_eval >= 1 with n_train + n_eval <= {len(recs)} records, "
            f"got {n_train} and {n_eval}"
        )
    layer = model._resolve_layer(layer)
    order = np.random.default_rng(seed).permutation(len(recs))
    train: list[Record] = [recs[int(i)] for i in order[:n_train]]
    test: list[Record] = [recs[int(i)] for i in order[n_train : n_train + n_eval]]
    vectors: dict[str, SteeringVector] = {}
    diagnoses: dict[str, DiagnosisReport] = {}
    results: dict[str, SteerabilityResult] = {}
    bar = progress_bar(
        progress if progress is not None else True, len(types), 1, "prompt types", "type"
    )
    try:
        for t in types:
            pairs = ContrastPairs.from_records(
                train,
                prompt_type=t,
                instruction_matching=getattr(records, "instruction_matching", None),
                instruction_not_matching=getattr(records, "instruction_not_matching", None),
                n_shots=n_shots,
                model=model if chat else None,
                seed=seed,
                name=t,
            )
            diagnoses[t] = diagnose(model, pairs, [layer], batch_size=batch_size, progress=False)
            vectors[t] = diagnoses[t].vector(layer, method)
            results[t] = steerability(
                model,
                test,
                vectors[t],
                multipliers,
                chat=chat,
                seed=seed,
                batch_size=batch_size,
                name=t,
                progress=False,
            )
            bar.update(1)
    finally:
        bar.close()
    n = len(types)
    cos = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            cos[i, j] = cos[j, i] = vectors[types[i]].cosine(vectors[types[j]])[layer]
    return PromptTypeComparison(layer, types, vectors, diagnoses, results, cos)


@dataclass
class BehaviourReliability:
    """Diagnostics and steerability of one behaviour's CAA vector at its best layer."""

    name: str
    layer: int
    diagnosis: DiagnosisReport
    vector: SteeringVector
    steerability: SteerabilityResult

    def record(self) -> dict[str, Any]:
        d = self.diagnosis[self.layer]
        s = self.steerability
        return {
            "behaviour": self.name,
            "best_layer": self.layer,
            "mean_cosine": d.mean_cosine,
            "d_prime": d.d_prime,
            "relative_norm": d.relative_norm,
            "mean_effect": s.mean_effect,
            "mean_slope": s.mean_slope,
            "anti_steerable": s.anti_steerable,
            "n_train": len(self.diagnosis.pairs),
            "n_eval": s.n_samples,
        }


@dataclass
class ReliabilityTable:
    """`BehaviourReliability` per behaviour, and how diagnostics predict steerability."""

    rows: list[BehaviourReliability]

    def records(self) -> list[dict[str, Any]]:
        return [r.record() for r in self.rows]

    def to_pandas(self) -> pd.DataFrame:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.records()).set_index("behaviour")

    def correlation(self, predictor: str = "mean_cosine", outcome: str = "mean_slope") -> float:
        """Spearman's rho across behaviours between a diagnostic and a steerability
        measure (columns of `records`)."""
        recs = self.records()
        return spearman([r[predictor] for r in recs], [r[outcome] for r in recs])

    def markdown(self) -> str:
        head = (
            "| behaviour | best layer | mean cos | d' | mean effect | mean slope | "
            "anti-steerable | train / eval |\n|---|---|---|---|---|---|---|---|"
        )
        lines = [head]
        for r in self.records():
            lines.append(
                f"| {r['behaviour']} | {r['best_layer']} | {r['mean_cosine']:.3f} | "
                f"{r['d_prime']:.2f} | {r['mean_effect']:+.3f} | {r['mean_slope']:+.3f} | "
                f"{r['anti_steerable']:.0%} | {r['n_train']} / {r['n_eval']} |"
            )
        if len(self.rows) >= 3:
            lines.append("")
            for pred in ("mean_cosine", "d_prime"):
                for out in ("mean_slope", "mean_effect"):
                    lines.append(
                        f"- Spearman rho({pred}, {out}) = {self.correlation(pred, out):+.2f} "
                        f"over {len(self.rows)} behaviours"
                    )
        return "\n".join(lines)


def reliability_table(
    model: Model,
    behaviours: Iterable[Any] | None = None,
    *,
    layers: Iterable[int] | None = None,
    n_train: int = 60,
    n_eval: int = 40,
    multipliers: Iterable[float] = (-1.0, 0.0, 1.0),
    prompt_type: str = "prefilled",
    dose: float | None = 0.2,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool | None = None,
) -> ReliabilityTable:
    """Per behaviour: diagnose a CAA vector over layers on ``n_train`` records, take the
    recommended layer, and measure its steerability on ``n_eval`` held-out records.

    Args:
        model: the model.
        behaviours: `steerlab.datasets.Behaviour` objects or shipped names (default:
            every shipped behaviour).
        layers: layers to diagnose (default: all).
        n_train, n_eval: records to build / evaluate each vector (disjoint; taken after
            a seeded shuffle; capped by the records available).
        multipliers: as in `steerability`.
        prompt_type: how the contrast pairs are rendered (`PROMPT_TYPES`).
        dose: scale each vector to this relative dose before applying the multipliers
            (``||v|| = dose * mean ||h||``), so behaviours compare at equal strength;
            None keeps the raw mean difference (whose norm is often ~3% of ||h|| on
            small models, too weak to move the answer).
        seed: shuffling and letter assignment.
        batch_size: rows per forward pass.
        progress: progress bar over behaviours.

    Returns:
        A `ReliabilityTable` (``.to_pandas()``, ``.markdown()``, ``.correlation()``).
    """
    items = list(behaviour_names() if behaviours is None else behaviours)
    if not items:
        raise InvalidArgumentError("no behaviours to evaluate")
    rows: list[BehaviourReliability] = []
    bar = progress_bar(
        progress if progress is not None else True, len(items), 1, "behaviours", "behaviour"
    )
    try:
        for item in items:
            beh = load_behaviour(item) if isinstance(item, str) else item
            recs = as_records(beh)
            order = np.random.default_rng(seed).permutation(len(recs))
            k_train = min(n_train, len(recs) - 1)
            k_eval = min(n_eval, len(recs) - k_train)
            train = [recs[int(i)] for i in order[:k_train]]
            test = [recs[int(i)] for i in order[k_train : k_train + k_eval]]
            name = getattr(beh, "name", f"behaviour {len(rows)}")
            pairs = ContrastPairs.from_records(
                train,
                prompt_type=prompt_type,
                instruction_matching=getattr(beh, "instruction_matching", None),
                instruction_not_matching=getattr(beh, "instruction_not_matching", None),
                seed=seed,
                name=name,
            )
            diag = diagnose(model, pairs, layers, batch_size=batch_size, progress=False)
            layer = diag.recommended_layer
            vec = diag.vector(layer)
            if dose is not None:
                vec = vec.dose(dose)
            steer = steerability(
                model,
                test,
                vec,
                multipliers,
                seed=seed,
                batch_size=batch_size,
                name=name,
                progress=False,
            )
            rows.append(BehaviourReliability(name, layer, diag, vec, steer))
            bar.update(1)
    finally:
        bar.close()
    return ReliabilityTable(rows)


# ---------------------------------------------------------------------- answer flips


def _nan_to_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _frozen(a: npt.ArrayLike, dtype: Any) -> Any:
    arr = np.array(a, dtype=dtype, copy=True)
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class AnswerFlips:
    """How a steering moves a model's choice between a target and a foil answer token.

    Made by `answer_flips`. Per record ``i`` (a prompt, the first token ``t`` of its
    target and the first token ``f`` of its foil), with logits taken at the prompt's
    last position:

    - the logit difference ``LD = logit(t) - logit(f)`` unsteered (`logit_diff_before`)
      and steered (`logit_diff_after`); the model "answers correctly" (prefers the
      target) when ``LD > 0`` (a tie counts as not preferring it);
    - `flipped`: the steered model prefers the target while the unsteered one did not
      (``LD_after > 0 and LD_before <= 0``);
    - `kl`: ``KL(p_unsteered || p_steered)`` in nats over the next-token distribution
      with ``t`` and ``f`` removed and the rest renormalised: how much the steering
      changes everything except the two answers (the faithfulness measure of Stoehr et
      al. 2024, "Activation Scaling for Steering and Interpreting Language Models",
      arXiv 2410.04962; 0 means the other tokens keep their relative probabilities).

    Summaries (floats): `flip_rate` (flipped among the records the unsteered model got
    wrong; NaN when it got none wrong), `reverse_flip_rate` (records it got right that
    the steered model gets wrong, among those it got right; NaN when none),
    `accuracy_before` / `accuracy_after` (fraction with ``LD > 0``),
    `logit_diff_change` (mean of ``LD_after - LD_before``), `kl_other` (mean `kl`),
    `mean_logit_diff_before` / `mean_logit_diff_after`.

    Attributes:
        prompts, targets, foils: the inputs, one per record.
        target_tokens, foil_tokens: the decoded first tokens that were scored.
        target_ids, foil_ids: their token ids, int64 ``[n]``.
        logit_diff_before, logit_diff_after: float64 ``[n]`` (logits, not log-probs).
        kl: float64 ``[n]``, nats, >= 0 (exactly 0 when the steered logits equal the
            unsteered ones).
        name: a label for reports and plots.
    """

    prompts: tuple[str, ...]
    targets: tuple[str, ...]
    foils: tuple[str, ...]
    target_tokens: tuple[str, ...]
    foil_tokens: tuple[str, ...]
    target_ids: npt.NDArray[np.int64] = field(repr=False)
    foil_ids: npt.NDArray[np.int64] = field(repr=False)
    logit_diff_before: npt.NDArray[np.float64] = field(repr=False)
    logit_diff_after: npt.NDArray[np.float64] = field(repr=False)
    kl: npt.NDArray[np.float64] = field(repr=False)
    name: str | None = None

    def __post_init__(self) -> None:
        n = len(self.prompts)
        for attr, dtype in (
            ("target_ids", np.int64),
            ("foil_ids", np.int64),
            ("logit_diff_before", np.float64),
            ("logit_diff_after", np.float64),
            ("kl", np.float64),
        ):
            arr = _frozen(getattr(self, attr), dtype)
            if arr.shape != (n,):
                raise InvalidArgumentError(
                    f"AnswerFlips.{attr} has shape {arr.shape}; expected ({n},), one entry "
                    f"per prompt"
                )
            object.__setattr__(self, attr, arr)
        for attr in ("prompts", "targets", "foils", "target_tokens", "foil_tokens"):
            items = tuple(getattr(self, attr))
            if len(items) != n:
                raise InvalidArgumentError(
                    f"AnswerFlips.{attr} has {len(items)} entries; expected {n}, one per prompt"
                )
            object.__setattr__(self, attr, items)

    # -- per record ------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of records."""
        return len(self.prompts)

    @property
    def flipped(self) -> npt.NDArray[np.bool_]:
        """bool ``[n]``: ``LD_after > 0 and LD_before <= 0``."""
        return (self.logit_diff_after > 0) & (self.logit_diff_before <= 0)

    @property
    def correct_before(self) -> npt.NDArray[np.bool_]:
        """bool ``[n]``: the unsteered model prefers the target (``LD_before > 0``)."""
        return self.logit_diff_before > 0

    @property
    def correct_after(self) -> npt.NDArray[np.bool_]:
        """bool ``[n]``: the steered model prefers the target (``LD_after > 0``)."""
        return self.logit_diff_after > 0

    # -- summaries -------------------------------------------------------------------

    @property
    def n_wrong_before(self) -> int:
        """Records the unsteered model got wrong (``LD_before <= 0``): those a flip is
        counted among."""
        return int(np.count_nonzero(~self.correct_before))

    @property
    def n_flipped(self) -> int:
        """Records flipped from the foil to the target."""
        return int(np.count_nonzero(self.flipped))

    @property
    def flip_rate(self) -> float:
        """``n_flipped / n_wrong_before``; NaN when the unsteered model got every record
        right (nothing to flip)."""
        wrong = self.n_wrong_before
        return self.n_flipped / wrong if wrong else float("nan")

    @property
    def reverse_flip_rate(self) -> float:
        """Among the records the unsteered model got right, the fraction the steered model
        gets wrong (``LD_after <= 0``); NaN when it got none right."""
        right = self.correct_before
        n_right = int(np.count_nonzero(right))
        if not n_right:
            return float("nan")
        return int(np.count_nonzero(right & ~self.correct_after)) / n_right

    @property
    def accuracy_before(self) -> float:
        """Fraction of records with ``LD_before > 0``."""
        return float(np.mean(self.correct_before))

    @property
    def accuracy_after(self) -> float:
        """Fraction of records with ``LD_after > 0``."""
        return float(np.mean(self.correct_after))

    @property
    def mean_logit_diff_before(self) -> float:
        return float(np.mean(self.logit_diff_before))

    @property
    def mean_logit_diff_after(self) -> float:
        return float(np.mean(self.logit_diff_after))

    @property
    def logit_diff_change(self) -> float:
        """Mean of ``LD_after - LD_before`` (logits)."""
        return float(np.mean(self.logit_diff_after - self.logit_diff_before))

    @property
    def kl_other(self) -> float:
        """Mean KL divergence on the other tokens (nats)."""
        return float(np.mean(self.kl))

    def metrics(self) -> dict[str, Any]:
        """The summaries as a flat dict (NaN rates as None, so it is valid JSON)."""
        return {
            "name": self.name,
            "n": self.n,
            "n_wrong_before": self.n_wrong_before,
            "n_flipped": self.n_flipped,
            "flip_rate": _nan_to_none(self.flip_rate),
            "reverse_flip_rate": _nan_to_none(self.reverse_flip_rate),
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "mean_logit_diff_before": self.mean_logit_diff_before,
            "mean_logit_diff_after": self.mean_logit_diff_after,
            "logit_diff_change": self.logit_diff_change,
            "kl_other": self.kl_other,
        }

    def records(self) -> list[dict[str, Any]]:
        """One dict per record (the rows of `to_pandas`)."""
        flipped = self.flipped
        return [
            {
                "prompt": self.prompts[i],
                "target": self.targets[i],
                "foil": self.foils[i],
                "target_token": self.target_tokens[i],
                "foil_token": self.foil_tokens[i],
                "target_id": int(self.target_ids[i]),
                "foil_id": int(self.foil_ids[i]),
                "logit_diff_before": float(self.logit_diff_before[i]),
                "logit_diff_after": float(self.logit_diff_after[i]),
                "logit_diff_change": float(self.logit_diff_after[i] - self.logit_diff_before[i]),
                "kl": float(self.kl[i]),
                "flipped": bool(flipped[i]),
            }
            for i in range(self.n)
        ]

    def to_dict(self) -> dict[str, Any]:
        """`metrics` plus ``"records"`` (`records`): plain Python values, ready for
        ``json.dumps`` (a NaN rate is None)."""
        return {**self.metrics(), "records": self.records()}

    def to_pandas(self) -> pd.DataFrame:
        """One row per record: prompt, target, foil, the scored tokens and their ids,
        ``logit_diff_before``, ``logit_diff_after``, ``logit_diff_change``, ``kl``,
        ``flipped``."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.records(), columns=list(_RECORD_COLUMNS))

    def summary(self) -> str:
        """One line: flips, accuracy before -> after, logit-difference change, KL."""
        rate = "n/a" if np.isnan(self.flip_rate) else f"{self.flip_rate:.0%}"
        return (
            f"{self.n_flipped}/{self.n_wrong_before} wrong answers flipped ({rate}), accuracy "
            f"{self.accuracy_before:.0%} -> {self.accuracy_after:.0%}, mean logit diff "
            f"{self.mean_logit_diff_before:+.3f} -> {self.mean_logit_diff_after:+.3f} "
            f"(change {self.logit_diff_change:+.3f}), KL on other tokens "
            f"{self.kl_other:.4g} nats, n={self.n}"
        )

    def __repr__(self) -> str:
        label = f" {self.name}" if self.name else ""
        return f"<AnswerFlips{label}: {self.summary()}>"

    def plot(self, ax: Any = None) -> Figure:
        """Steered against unsteered logit difference per record, flips highlighted
        (`steerlab.plots.plot_answer_flips`)."""
        return plots.plot_answer_flips(self, ax=ax)


_RECORD_COLUMNS = (
    "prompt",
    "target",
    "foil",
    "target_token",
    "foil_token",
    "target_id",
    "foil_id",
    "logit_diff_before",
    "logit_diff_after",
    "logit_diff_change",
    "kl",
    "flipped",
)


def _answer_inputs(
    model: Model, prompts: Any, targets: Any, foils: Any
) -> tuple[list[str], list[str], list[str], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Checked prompts, targets and foils, and the first token id of each answer."""
    prompt_list, _ = _args.texts(prompts, "prompts")
    target_list, _ = _args.texts(targets, "targets")
    foil_list, _ = _args.texts(foils, "foils")
    n = len(prompt_list)
    for name, items in (("targets", target_list), ("foils", foil_list)):
        if len(items) != n:
            raise InvalidArgumentError(
                f"{name} has {len(items)} entries but prompts has {n}; expected one target "
                f"and one foil per prompt"
            )
    ids: dict[str, list[int]] = {"targets": [], "foils": []}
    for name, items in (("targets", target_list), ("foils", foil_list)):
        for i, s in enumerate(items):
            tokens = model.encode(s, add_special_tokens=False)
            if not tokens:
                raise InvalidArgumentError(
                    f"{name}[{i}] is {_args.show(s)}, which tokenizes to no token; expected a "
                    f"string whose first token is the answer (e.g. ' Paris')"
                )
            ids[name].append(tokens[0])
    for i, (t, f) in enumerate(zip(ids["targets"], ids["foils"], strict=True)):
        if t == f:
            raise InvalidArgumentError(
                f"targets[{i}] {_args.show(target_list[i])} and foils[{i}] "
                f"{_args.show(foil_list[i])} start with the same token {t} "
                f"({_args.show(model.decode([t]))}); a target and its foil must differ in "
                f"their first token"
            )
    return (
        prompt_list,
        target_list,
        foil_list,
        np.asarray(ids["targets"], dtype=np.int64),
        np.asarray(ids["foils"], dtype=np.int64),
    )


def _check_steering_rows(steering: Any, n: int) -> None:
    """Validate a steering argument for `n` prompts up front (types, list length)."""
    prepared = prepare(steering)
    if prepared is not None:
        prepared.rows(n)


def _logits64(
    model: Model, prompts: list[str], start: int, steering: Any, batch_size: int
) -> npt.NDArray[np.float64]:
    """Next-token logits of ``prompts`` (the chunk starting at prompt ``start``) as
    float64 ``[k, vocab]``: unsteered when `steering` is None (ignoring any active
    ``with model.steering(...)`` block), else steered with the chunk's part of it.

    Raises:
        InvalidArgumentError: non-finite logits.
    """
    stop = start + len(prompts)
    if steering is None:
        with model.steering(None):
            raw = model.logits(prompts, batch_size=batch_size, progress=False)
    else:
        rows = list(steering[start:stop]) if isinstance(steering, list | tuple) else steering
        raw = model.logits(prompts, rows, batch_size=batch_size, progress=False)
    out = raw.astype(np.float64)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        i = start + int(np.argmin(finite))
        which = "unsteered" if steering is None else "steered"
        hint = (
            "; the steering drives the activations beyond float32's range, expected a "
            "weaker steering"
            if steering is not None
            else ""
        )
        raise InvalidArgumentError(
            f"the {which} next-token logits of prompts[{i}] are not finite{hint}"
        )
    return out


def _chunks(n: int, batch_size: int, progress: bool | None, desc: str) -> Iterator[range]:
    """Ranges of at most `batch_size` prompts, with a progress bar over prompts."""
    bar = progress_bar(progress, n, batch_size, desc, "prompt")
    try:
        for start in range(0, n, batch_size):
            chunk = range(start, min(start + batch_size, n))
            yield chunk
            bar.update(len(chunk))
    finally:
        bar.close()


def _log_softmax_without(
    logits: npt.NDArray[np.float64], keep: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Row-wise log-softmax over the entries where `keep` is True (log-sum-exp, float64);
    -inf elsewhere."""
    x = np.where(keep, logits, -np.inf)
    top = x.max(axis=1, keepdims=True)
    lse = top + np.log(np.exp(x - top).sum(axis=1, keepdims=True))
    return cast("npt.NDArray[np.float64]", x - lse)


def _kl_other(
    before: npt.NDArray[np.float64],
    after: npt.NDArray[np.float64],
    target_ids: npt.NDArray[np.int64],
    foil_ids: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64]:
    """``KL(softmax(before) || softmax(after))`` per row over the vocabulary without the
    row's target and foil token, both renormalised; float64 ``[k]``, clipped at 0."""
    rows = np.arange(before.shape[0])
    keep = np.ones(before.shape, dtype=bool)
    keep[rows, target_ids] = False
    keep[rows, foil_ids] = False
    # 0 (not -inf) at the removed entries, so they add 0 * 0 instead of 0 * nan.
    lp = np.where(keep, _log_softmax_without(before, keep), 0.0)
    lq = np.where(keep, _log_softmax_without(after, keep), 0.0)
    terms = np.where(keep, np.exp(lp), 0.0) * (lp - lq)
    return cast("npt.NDArray[np.float64]", np.maximum(terms.sum(axis=1), 0.0))


def _common_args(batch_size: Any, name: Any) -> int:
    size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
    if name is not None and not isinstance(name, str):
        raise InvalidTypeError(f"name must be a str or None, got {type(name).__name__}")
    return size


def answer_logit_diff(
    model: Model,
    prompts: str | Iterable[str],
    targets: str | Iterable[str],
    foils: str | Iterable[str],
    steering: Any = None,
    *,
    batch_size: int = 8,
    progress: bool | None = None,
) -> npt.NDArray[np.float64]:
    """The logit difference ``logit(target) - logit(foil)`` at each prompt's next token.

    Args:
        model: the model.
        prompts: a str or a list of str (a single str is one prompt).
        targets, foils: one str per prompt whose first token
            (``model.encode(s, add_special_tokens=False)[0]``) is the answer scored;
            mind the leading space most tokenizers fold into a word (``" Paris"``).
        steering: anything ``model.logits`` takes as ``steering=``, a per-prompt list
            included; None: the unsteered model (any active ``with model.steering(...)``
            block is ignored).
        batch_size: prompts per forward pass.
        progress: progress bar (None: when there is more than one batch).

    Returns:
        float64 ``[n_prompts]``, in logits.

    Raises:
        As `answer_flips`.
    """
    prompt_list, _, _, t_ids, f_ids = _answer_inputs(model, prompts, targets, foils)
    size = _common_args(batch_size, None)
    _check_steering_rows(steering, len(prompt_list))
    out = np.empty(len(prompt_list), dtype=np.float64)
    for chunk in _chunks(len(prompt_list), size, progress, "logit difference"):
        i = slice(chunk.start, chunk.stop)
        logits = _logits64(model, prompt_list[i], chunk.start, steering, size)
        rows = np.arange(len(chunk))
        out[i] = logits[rows, t_ids[i]] - logits[rows, f_ids[i]]
    return out


def answer_flips(
    model: Model,
    prompts: str | Iterable[str],
    targets: str | Iterable[str],
    foils: str | Iterable[str],
    steering: Any = None,
    *,
    batch_size: int = 8,
    name: str | None = None,
    progress: bool | None = None,
) -> AnswerFlips:
    """Does a steering flip the model's answer from the foil to the target, and what
    else does it change?

    For each prompt, the next-token logits at its last position are computed unsteered
    and steered, and compared on the record's two answer tokens ``t`` (first token of
    the target) and ``f`` (first token of the foil):

    - logit difference ``LD = logit(t) - logit(f)`` before and after steering; the model
      prefers the target when ``LD > 0``;
    - flipped: ``LD_after > 0`` while ``LD_before <= 0``. The flip rate counts flips
      among the records the unsteered model got wrong only (records it already got
      right cannot flip; `AnswerFlips.reverse_flip_rate` counts those the steering
      breaks), and the accuracies before and after cover every record;
    - faithfulness: ``KL(p_unsteered || p_steered)`` over the next-token distribution
      with ``t`` and ``f`` removed and the remaining probabilities renormalised,
      computed in float64 with log-sum-exp, in nats (Stoehr et al. 2024, "Activation
      Scaling for Steering and Interpreting Language Models", arXiv 2410.04962).

    Args:
        model: the model.
        prompts: a str or a list of str (a single str is one prompt); the answer is the
            token after the prompt's last token.
        targets: one str per prompt: the answer the steering should produce. Only its
            first token (``model.encode(s, add_special_tokens=False)[0]``) is scored;
            mind the leading space most tokenizers fold into a word (``" Paris"``, not
            ``"Paris"``).
        foils: one str per prompt: the competing answer, likewise.
        steering: what to evaluate: anything ``model.logits`` takes as ``steering=`` (a
            `Steering`, ``{layer: vector}``, an object with ``to_steering()`` such as
            `steerlab.ActivationScalars` or `SteeringVector`, or a list with one of those
            or None per prompt). None: the steered model is the unsteered one (every
            change is exactly 0). The unsteered baseline never has steering, whatever
            ``with model.steering(...)`` block is active.
        batch_size: prompts per forward pass (each chunk runs once unsteered and once
            steered).
        name: a label for reports and plots.
        progress: progress bar over prompts (None: when there is more than one batch).

    Returns:
        An `AnswerFlips`: per record (``[n]`` arrays) ``logit_diff_before``,
        ``logit_diff_after``, ``kl``, ``flipped``; summaries ``flip_rate`` (NaN when the
        unsteered model got every record right), ``accuracy_before``, ``accuracy_after``,
        ``logit_diff_change`` (mean of ``LD_after - LD_before``), ``kl_other`` (mean KL,
        nats), ``n``; ``to_pandas()``, ``to_dict()``, ``summary()``, ``plot()``.

    Raises:
        InvalidTypeError: prompts, targets or foils that are not str or lists of str; a
            steering of the wrong type; a non-int batch_size; a non-str name.
        InvalidArgumentError: empty lists; targets or foils whose number differs from
            the prompts'; a target or foil that tokenizes to no token; a target whose
            first token is its foil's; a per-prompt steering list of another length; a
            bad batch_size; a steering that makes the logits non-finite.
        OutOfRangeError, ShapeError, ContextLengthError: as `Model.logits` (a steering
            for another model or another prompt layout, a prompt too long).
    """
    prompt_list, target_list, foil_list, t_ids, f_ids = _answer_inputs(
        model, prompts, targets, foils
    )
    size = _common_args(batch_size, name)
    _check_steering_rows(steering, len(prompt_list))
    before, afters, kls = _flip_measures(
        model, prompt_list, t_ids, f_ids, [steering], size, progress, "answer flips"
    )
    return _flips_result(
        model, prompt_list, target_list, foil_list, t_ids, f_ids, before, afters[0], kls[0], name
    )


def _flip_measures(
    model: Model,
    prompts: list[str],
    t_ids: npt.NDArray[np.int64],
    f_ids: npt.NDArray[np.int64],
    steerings: list[Any],
    batch_size: int,
    progress: bool | None,
    desc: str,
) -> tuple[npt.NDArray[np.float64], list[npt.NDArray[np.float64]], list[npt.NDArray[np.float64]]]:
    """The unsteered logit differences, and per steering the steered ones and the KL on
    other tokens (the unsteered pass runs once per chunk, shared by every steering)."""
    n = len(prompts)
    before = np.empty(n, dtype=np.float64)
    afters = [np.empty(n, dtype=np.float64) for _ in steerings]
    kls = [np.empty(n, dtype=np.float64) for _ in steerings]
    for chunk in _chunks(n, batch_size, progress, desc):
        i = slice(chunk.start, chunk.stop)
        t, f = t_ids[i], f_ids[i]
        rows = np.arange(len(chunk))
        base = _logits64(model, prompts[i], chunk.start, None, batch_size)
        before[i] = base[rows, t] - base[rows, f]
        for steering, after, kl in zip(steerings, afters, kls, strict=True):
            if steering is None:
                after[i] = before[i]
                kl[i] = 0.0
                continue
            steered = _logits64(model, prompts[i], chunk.start, steering, batch_size)
            after[i] = steered[rows, t] - steered[rows, f]
            kl[i] = _kl_other(base, steered, t, f)
    return before, afters, kls


def _flips_result(
    model: Model,
    prompts: list[str],
    targets: list[str],
    foils: list[str],
    t_ids: npt.NDArray[np.int64],
    f_ids: npt.NDArray[np.int64],
    before: npt.NDArray[np.float64],
    after: npt.NDArray[np.float64],
    kl: npt.NDArray[np.float64],
    name: str | None,
) -> AnswerFlips:
    return AnswerFlips(
        prompts=tuple(prompts),
        targets=tuple(targets),
        foils=tuple(foils),
        target_tokens=tuple(model.decode([int(i)]) for i in t_ids),
        foil_tokens=tuple(model.decode([int(i)]) for i in f_ids),
        target_ids=t_ids,
        foil_ids=f_ids,
        logit_diff_before=before,
        logit_diff_after=after,
        kl=kl,
        name=name,
    )


def _at_strength(steering: Any, beta: float, where: str) -> Any:
    """``steering * beta`` for one steering value (not a per-row list); None stays None.

    Raises:
        InvalidTypeError: a value that cannot be scaled.
    """
    if steering is None:
        return None
    if isinstance(steering, Mapping):
        steering = Steering(steering)
    if not isinstance(steering, str | bytes | list | tuple | np.ndarray):
        mul = getattr(type(steering), "__mul__", None)
        if mul is not None:
            out = mul(steering, beta)
            if out is not NotImplemented:
                return out
        to_steering = getattr(steering, "to_steering", None)
        if callable(to_steering):
            inner = to_steering()
            if isinstance(inner, Steering | Mapping):
                return _at_strength(inner, beta, where)
    raise InvalidTypeError(
        f"{where} cannot be scaled by beta: expected a Steering, a {{layer: vector}} mapping "
        f"or an object that supports `* beta` or has to_steering(), got "
        f"{type(steering).__name__}"
    )


def answer_flips_sweep(
    model: Model,
    prompts: str | Iterable[str],
    targets: str | Iterable[str],
    foils: str | Iterable[str],
    steering: Any,
    betas: Iterable[float] = (-1.0, -0.5, 0.0, 0.5, 1.0),
    *,
    batch_size: int = 8,
    name: str | None = None,
    progress: bool | None = None,
) -> dict[float, AnswerFlips]:
    """`answer_flips` at several strengths ``steering * beta`` in one pass over the
    prompts: the unsteered logits are computed once per batch and shared, so a sweep of
    ``k`` strengths costs ``k + 1`` forward passes per prompt instead of ``2 k``.

    ``beta`` is the strength of activation scaling (Stoehr et al. 2024): for
    `steerlab.ActivationScalars` ``h * (1 + beta * alpha)``, for an additive steering
    ``h + beta * v``; a negative beta reverses the effect and 0 is the unsteered model
    (computed, not assumed, so the sweep also checks that identity).

    Args:
        model, prompts, targets, foils, batch_size, progress: as in `answer_flips`.
        steering: a `Steering`, ``{layer: vector}``, an object that supports
            ``* beta`` (`steerlab.ActivationScalars`, `SteeringVector`) or has
            ``to_steering()``, or a per-prompt list of those (or None).
        betas: the strengths, finite and distinct.
        name: a label; each result is named ``"<name> beta=<beta>"`` (or
            ``"beta=<beta>"``).

    Returns:
        ``{beta: AnswerFlips}`` in the order of `betas`; pass it to
        `steerlab.plots.plot_beta_sweep`.

    Raises:
        As `answer_flips`; InvalidArgumentError for no betas, a repeated or non-finite
        beta; InvalidTypeError for a beta that is not a number or a steering that cannot
        be scaled.
    """
    prompt_list, target_list, foil_list, t_ids, f_ids = _answer_inputs(
        model, prompts, targets, foils
    )
    size = _common_args(batch_size, name)
    if isinstance(betas, str) or not isinstance(betas, Iterable):
        raise InvalidTypeError(f"betas must be a list of numbers, got {type(betas).__name__}")
    beta_list = [_args.real(b, f"betas[{k}]") for k, b in enumerate(betas)]
    if not beta_list:
        raise InvalidArgumentError("betas is empty; pass at least one strength")
    if len(set(beta_list)) != len(beta_list):
        raise InvalidArgumentError(f"betas must be distinct, got {beta_list}")
    if steering is None:
        raise InvalidArgumentError("steering is None; a sweep needs a steering to scale")
    _check_steering_rows(steering, len(prompt_list))
    scaled: list[Any] = []
    for b in beta_list:
        if isinstance(steering, list | tuple):
            scaled.append([_at_strength(s, b, f"steering[{k}]") for k, s in enumerate(steering)])
        else:
            scaled.append(_at_strength(steering, b, "steering"))
    before, afters, kls = _flip_measures(
        model, prompt_list, t_ids, f_ids, scaled, size, progress, "answer flips sweep"
    )
    return {
        b: _flips_result(
            model,
            prompt_list,
            target_list,
            foil_list,
            t_ids,
            f_ids,
            before,
            after,
            kl,
            f"{name} beta={b:g}" if name else f"beta={b:g}",
        )
        for b, after, kl in zip(beta_list, afters, kls, strict=True)
    }
