"""Will a contrastive steering vector work? Diagnostics before deployment (Braun et al. 2025).

`diagnose` reads the activations of every contrast pair at each layer and reports:

- **directional agreement**: the cosine of each pair's difference with the mean
  difference; its mean is the strongest predictor of steerability Braun et al. found;
- **separability** ``d'``: positives and negatives projected on the difference-of-means
  line, normalised so the positive mean sits at +1 and the negative at -1;
  ``d' = |mu+ - mu-| / sqrt((var+ + var-) / 2)``;
- the mean difference's norm relative to the mean residual norm at that layer;
- the recommended layer: the highest mean cosine (ties broken by d').
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _core, plots
from steerlab.contrast import ContrastPairs
from steerlab.errors import InvalidArgumentError, InvalidTypeError, OutOfRangeError
from steerlab.vectors import (
    METHODS,
    SteeringVector,
    VectorInfo,
    _layer_list,
    _now,
    capture_pairs,
    residual_norms,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from steerlab.model import Model

__all__ = ["DiagnosisReport", "LayerDiagnosis", "diagnose"]


@dataclass(frozen=True)
class LayerDiagnosis:
    """Diagnostics of one layer."""

    layer: int
    #: cos(pos_i - neg_i, mean difference) per pair.
    cosines: npt.NDArray[np.float64]
    #: Projections on the normalised difference-of-means line (mu+ -> +1, mu- -> -1).
    proj_pos: npt.NDArray[np.float64]
    proj_neg: npt.NDArray[np.float64]
    d_prime: float
    #: Norm of the mean difference, and of the activations on average.
    diff_norm: float
    mean_norm: float

    @property
    def mean_cosine(self) -> float:
        return float(self.cosines.mean())

    @property
    def relative_norm(self) -> float:
        """||mean difference|| / mean ||activation||."""
        return self.diff_norm / self.mean_norm if self.mean_norm > 0 else float("nan")

    @property
    def separation_accuracy(self) -> float:
        """Share of texts on the right side of the midpoint (projection sign)."""
        right = np.count_nonzero(self.proj_pos > 0) + np.count_nonzero(self.proj_neg < 0)
        return right / (self.proj_pos.size + self.proj_neg.size)


class DiagnosisReport:
    """Per-layer diagnostics of a contrast set, with the activations they came from.

    Attributes:
        layers: the layers, in order.
        by_layer: ``{layer: LayerDiagnosis}``.
        pairs: the contrast pairs.
        recommended_layer: highest mean cosine (ties broken by d').
    """

    def __init__(
        self,
        model: Model,
        pairs: ContrastPairs,
        layers: list[int],
        stats: list[LayerDiagnosis],
        pos_acts: npt.NDArray[np.float32],
        neg_acts: npt.NDArray[np.float32],
    ) -> None:
        self.model = model
        self.pairs = pairs
        self.layers = layers
        self.by_layer = {s.layer: s for s in stats}
        self._pos = pos_acts
        self._neg = neg_acts

    @property
    def recommended_layer(self) -> int:
        return max(
            self.layers,
            key=lambda layer: (
                round(self.by_layer[layer].mean_cosine, 6),
                self.by_layer[layer].d_prime,
            ),
        )

    def __getitem__(self, layer: int) -> LayerDiagnosis:
        try:
            return self.by_layer[layer]
        except KeyError:
            raise OutOfRangeError(
                f"layer {layer} was not diagnosed; the report has layers {self.layers}"
            ) from None

    def records(self) -> list[dict[str, Any]]:
        """One dict per layer: layer, mean_cosine, cosine_std, d_prime, diff_norm,
        mean_norm, relative_norm, separation_accuracy."""
        return [
            {
                "layer": s.layer,
                "mean_cosine": s.mean_cosine,
                "cosine_std": float(s.cosines.std()),
                "d_prime": s.d_prime,
                "diff_norm": s.diff_norm,
                "mean_norm": s.mean_norm,
                "relative_norm": s.relative_norm,
                "separation_accuracy": s.separation_accuracy,
            }
            for s in (self.by_layer[layer] for layer in self.layers)
        ]

    def to_pandas(self) -> pd.DataFrame:
        """The per-layer table as a DataFrame indexed by layer (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.records()).set_index("layer")

    def summary(self) -> str:
        rows = [
            f"{'layer':>5} {'mean cos':>9} {'d_prime':>8} {'|s|/|h|':>8} {'acc':>6}",
        ]
        for r in self.records():
            mark = " <- recommended" if r["layer"] == self.recommended_layer else ""
            rows.append(
                f"{r['layer']:>5} {r['mean_cosine']:>9.3f} {r['d_prime']:>8.2f} "
                f"{r['relative_norm']:>8.3f} {r['separation_accuracy']:>6.2f}{mark}"
            )
        return "\n".join(rows)

    def __repr__(self) -> str:
        best = self.by_layer[self.recommended_layer]
        return (
            f"<DiagnosisReport {self.pairs.name or ''}: {len(self.pairs)} pairs, layers "
            f"{self.layers[0]}..{self.layers[-1]}; recommended layer {best.layer} "
            f"(mean cos {best.mean_cosine:.3f}, d' {best.d_prime:.2f})>"
        )

    def activations(self, layer: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The positive and negative activations ``[n, d]`` read at `layer`."""
        j = self.layers.index(self[layer].layer)
        return self._pos[:, j], self._neg[:, j]

    def vector(
        self, layers: int | Iterable[int] | None = None, method: str = "mean_diff"
    ) -> SteeringVector:
        """A steering vector from the activations already read (no new forward pass).

        Args:
            layers: layer(s); default the recommended layer.
            method: as in `SteeringVector.train`.
        """
        if method not in METHODS:
            raise InvalidArgumentError(f"unknown method {method!r}; expected one of {METHODS}")
        wanted = [self.recommended_layer] if layers is None else _layer_list(self.model, layers)
        dirs = {}
        scores = {}
        for layer in wanted:
            pos, neg = self.activations(layer)
            d, score = _core.fit_direction(
                np.ascontiguousarray(pos), np.ascontiguousarray(neg), method
            )
            dirs[layer] = d
            if score is not None:
                scores[layer] = float(score)
        info = VectorInfo(
            d_model=self.model.d_model,
            fingerprint=self.model.fingerprint,
            arch=self.model.arch,
            n_layers=self.model.n_layers,
            method=method,
            position=self.pairs.position,
            dataset=self.pairs.name,
            dataset_hash=self.pairs.dataset_hash(),
            n_samples=len(self.pairs),
            residual_norms=residual_norms(self.model, wanted),
            scores=scores,
            created=_now(),
        )
        return SteeringVector(dirs, info)

    def plot(self, layer: int | None = None) -> Figure:
        """Layer sweep of mean cosine and d', the per-pair cosine histogram and the
        projections at `layer` (default: the recommended one). Needs matplotlib."""
        return plots.plot_diagnosis(self, layer)


def diagnose(
    model: Model,
    pairs: ContrastPairs,
    layers: int | Iterable[int] | None = None,
    *,
    position: str | int | None = None,
    batch_size: int = 16,
    progress: bool | None = None,
) -> DiagnosisReport:
    """Directional agreement and separability of `pairs` at each layer.

    Args:
        model: the model.
        pairs: a `ContrastPairs` with at least two pairs.
        layers: layer(s) to diagnose (default: all).
        position: read position (default: the pairs' own).
        batch_size: texts per forward pass.
        progress: progress bar (None: automatic).

    Returns:
        A `DiagnosisReport` (``.to_pandas()``, ``.plot()``, ``.recommended_layer``).

    Raises:
        InvalidArgumentError: fewer than two pairs (a distribution needs two), sides with
            identical activations.
        OutOfRangeError: a layer outside the model.
    """
    if not isinstance(pairs, ContrastPairs):
        raise InvalidTypeError(
            f"pairs must be a steerlab.ContrastPairs, got {type(pairs).__name__}"
        )
    if len(pairs) < 2:
        raise InvalidArgumentError(
            f"diagnose needs at least 2 contrast pairs (it measures a distribution over "
            f"pairs), got {len(pairs)}"
        )
    wanted = list(range(model.n_layers)) if layers is None else _layer_list(model, layers)
    pos, neg = capture_pairs(
        model, pairs, wanted, position, batch_size=batch_size, progress=progress
    )
    stats = []
    for j, layer in enumerate(wanted):
        try:
            st = _core.pair_stats(np.ascontiguousarray(pos[:, j]), np.ascontiguousarray(neg[:, j]))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"layer {layer}: {exc}") from None
        stats.append(
            LayerDiagnosis(
                layer=layer,
                cosines=np.asarray(st["cosines"]),
                proj_pos=np.asarray(st["proj_pos"]),
                proj_neg=np.asarray(st["proj_neg"]),
                d_prime=float(st["d_prime"]),
                diff_norm=float(st["diff_norm"]),
                mean_norm=float(st["mean_norm"]),
            )
        )
    return DiagnosisReport(model, pairs, wanted, stats, pos, neg)
