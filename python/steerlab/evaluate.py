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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from steerlab import _core, plots
from steerlab._generations import GenerationReport, steered_generations
from steerlab._progress import progress_bar
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
from steerlab.steering import Steering
from steerlab.vectors import SteeringVector

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from steerlab.model import Model

__all__ = [
    "BehaviourReliability",
    "GenerationReport",
    "PromptTypeComparison",
    "ReliabilityTable",
    "SteerabilityResult",
    "compare_prompt_types",
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
