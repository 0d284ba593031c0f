"""Plot helpers for diagnostics and evaluations (matplotlib, imported when called).

Each function returns the matplotlib Figure; functions that draw one panel accept an
``ax`` to draw into.

This module imports nothing from `steerlab.diagnostics` or `steerlab.evaluate`: their
reports call these functions, and each function reads only the attributes named by the
protocol it takes (`DiagnosisData`, `SteerabilityData`, `PromptTypesData`,
`GenerationData`), so any object with those attributes plots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from steerlab._stats import spearman

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DiagnosisData",
    "GenerationData",
    "LayerData",
    "PromptTypesData",
    "SteerabilityData",
    "plot_correlation",
    "plot_cosine_histogram",
    "plot_diagnosis",
    "plot_generation_report",
    "plot_layer_sweep",
    "plot_loss",
    "plot_projections",
    "plot_prompt_types",
    "plot_steerability",
]

POS_COLOR = "#2a7ab9"
NEG_COLOR = "#d1495b"


# What each plot reads (`steerlab.diagnostics.DiagnosisReport` and the result types of
# `steerlab.evaluate` have these attributes).


class _Named(Protocol):
    @property
    def name(self) -> str | None: ...


class LayerData(Protocol):
    """One layer's diagnostics (`steerlab.diagnostics.LayerDiagnosis`)."""

    @property
    def cosines(self) -> npt.NDArray[np.float64]: ...
    @property
    def mean_cosine(self) -> float: ...
    @property
    def proj_pos(self) -> npt.NDArray[np.float64]: ...
    @property
    def proj_neg(self) -> npt.NDArray[np.float64]: ...
    @property
    def d_prime(self) -> float: ...


class DiagnosisData(Protocol):
    """Per-layer diagnostics (`steerlab.diagnostics.DiagnosisReport`)."""

    @property
    def recommended_layer(self) -> int: ...
    @property
    def pairs(self) -> _Named: ...
    def records(self) -> list[dict[str, Any]]: ...
    def __getitem__(self, layer: int, /) -> LayerData: ...


class SteerabilityData(Protocol):
    """Margins under steering (`steerlab.evaluate.SteerabilityResult`)."""

    @property
    def multipliers(self) -> Sequence[float]: ...
    @property
    def margins(self) -> npt.NDArray[np.float64]: ...
    @property
    def effect(self) -> npt.NDArray[np.float64]: ...
    @property
    def n_samples(self) -> int: ...
    @property
    def mean_effect(self) -> float: ...
    @property
    def anti_steerable(self) -> float: ...
    @property
    def name(self) -> str | None: ...


class PromptTypesData(Protocol):
    """Vectors per prompt type (`steerlab.evaluate.PromptTypeComparison`)."""

    @property
    def layer(self) -> int: ...
    @property
    def prompt_types(self) -> Sequence[str]: ...
    @property
    def cosines(self) -> npt.NDArray[np.float64]: ...
    def records(self) -> list[dict[str, Any]]: ...


class GenerationData(Protocol):
    """Scored generations (`steerlab.evaluate.GenerationReport`)."""

    @property
    def on_topic(self) -> Mapping[str, Sequence[bool]] | None: ...
    @property
    def topic(self) -> str | None: ...
    def records(self) -> list[dict[str, Any]]: ...


def _plt() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("steerlab's plots need matplotlib: pip install matplotlib") from None
    return plt


def _axes(ax: Axes | None, figsize: tuple[float, float] = (5.0, 3.5)) -> tuple[Figure, Axes]:
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return cast("Figure", ax.figure), ax


def plot_layer_sweep(report: DiagnosisData, ax: Axes | None = None) -> Figure:
    """Mean cosine (left axis) and d' (right axis) per layer; the recommended layer marked."""
    fig, ax = _axes(ax, (6.0, 3.5))
    rows = report.records()
    layers = [r["layer"] for r in rows]
    ax.plot(layers, [r["mean_cosine"] for r in rows], "o-", color=POS_COLOR, label="mean cos")
    ax.set_xlabel("layer (output of block)")
    ax.set_ylabel("mean cos(diff, mean diff)", color=POS_COLOR)
    twin = ax.twinx()
    twin.plot(layers, [r["d_prime"] for r in rows], "s--", color=NEG_COLOR, label="d'")
    twin.set_ylabel("d'", color=NEG_COLOR)
    ax.axvline(report.recommended_layer, color="grey", lw=1, ls=":")
    ax.set_title(f"{report.pairs.name or 'contrast pairs'}: layer sweep")
    return fig


def plot_cosine_histogram(
    report: DiagnosisData, layer: int | None = None, ax: Axes | None = None
) -> Figure:
    """Histogram of the per-pair cosines with the mean difference at one layer."""
    layer = report.recommended_layer if layer is None else layer
    d = report[layer]
    fig, ax = _axes(ax)
    ax.hist(d.cosines, bins=min(30, max(5, d.cosines.size // 3)), color=POS_COLOR, alpha=0.8)
    ax.axvline(d.mean_cosine, color="black", lw=1.5, label=f"mean {d.mean_cosine:.2f}")
    ax.axvline(0, color="grey", lw=1, ls=":")
    ax.set_xlim(-1, 1)
    ax.set_xlabel("cos(pair difference, mean difference)")
    ax.set_ylabel("pairs")
    ax.set_title(f"directional agreement, layer {layer}")
    ax.legend(loc="upper left")
    return fig


def plot_projections(
    report: DiagnosisData, layer: int | None = None, ax: Axes | None = None
) -> Figure:
    """Positives and negatives projected on the difference-of-means line (+1 / -1)."""
    layer = report.recommended_layer if layer is None else layer
    d = report[layer]
    fig, ax = _axes(ax)
    lo = float(min(d.proj_pos.min(), d.proj_neg.min()))
    hi = float(max(d.proj_pos.max(), d.proj_neg.max()))
    bins = np.linspace(lo, hi, 30).tolist()
    ax.hist(d.proj_pos, bins=bins, color=POS_COLOR, alpha=0.6, label="positive")
    ax.hist(d.proj_neg, bins=bins, color=NEG_COLOR, alpha=0.6, label="negative")
    for x in (-1, 1):
        ax.axvline(x, color="grey", lw=1, ls=":")
    ax.set_xlabel("projection (mu- -> -1, mu+ -> +1)")
    ax.set_ylabel("texts")
    ax.set_title(f"separability, layer {layer}: d' = {d.d_prime:.2f}")
    ax.legend()
    return fig


def plot_diagnosis(report: DiagnosisData, layer: int | None = None) -> Figure:
    """Layer sweep, cosine histogram and projections in one figure."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    plot_layer_sweep(report, axes[0])
    plot_cosine_histogram(report, layer, axes[1])
    plot_projections(report, layer, axes[2])
    fig.tight_layout()
    return fig


def plot_steerability(result: SteerabilityData, ax: Axes | None = None) -> Figure:
    """m = logit(y+) - logit(y-) against the multiplier, one line per sample;
    anti-steerable samples (negative effect) in red, the mean in black."""
    fig, ax = _axes(ax, (5.5, 4.0))
    x = np.asarray(result.multipliers)
    order = np.argsort(x)
    for i in range(result.n_samples):
        anti = result.effect[i] < 0
        ax.plot(
            x[order],
            result.margins[i, order],
            color=NEG_COLOR if anti else POS_COLOR,
            alpha=0.6 if anti else 0.25,
            lw=1.2 if anti else 0.8,
        )
    ax.plot(x[order], result.margins.mean(axis=0)[order], color="black", lw=2.5, label="mean")
    ax.axhline(0, color="grey", lw=1, ls=":")
    ax.set_xlabel("multiplier")
    ax.set_ylabel("logit(y+) - logit(y-)")
    ax.set_title(
        f"{result.name or 'steerability'}: effect {result.mean_effect:+.2f}, "
        f"anti-steerable {result.anti_steerable:.0%}"
    )
    ax.legend(loc="upper left")
    return fig


def plot_prompt_types(comparison: PromptTypesData) -> Figure:
    """Cosine heatmap between the prompt types' vectors and their mean effects."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    types = comparison.prompt_types
    im = axes[0].imshow(comparison.cosines, vmin=-1, vmax=1, cmap="RdBu_r")
    axes[0].set_xticks(range(len(types)), types, rotation=45, ha="right")
    axes[0].set_yticks(range(len(types)), types)
    for i in range(len(types)):
        for j in range(len(types)):
            axes[0].text(j, i, f"{comparison.cosines[i, j]:.2f}", ha="center", va="center")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    axes[0].set_title(f"cosine between vectors, layer {comparison.layer}")
    rows = comparison.records()
    effects = [r["mean_effect"] for r in rows]
    anti = [r["anti_steerable"] for r in rows]
    axes[1].bar(range(len(types)), effects, color=POS_COLOR)
    for i, a in enumerate(anti):
        axes[1].text(i, effects[i], f"{a:.0%}", ha="center", va="bottom", fontsize=8)
    axes[1].set_xticks(range(len(types)), types, rotation=45, ha="right")
    axes[1].set_ylabel("mean effect (labels: anti-steerable share)")
    axes[1].axhline(0, color="grey", lw=1)
    axes[1].set_title("steerability per prompt type")
    fig.tight_layout()
    return fig


def plot_correlation(
    x: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    ax: Axes | None = None,
) -> Figure:
    """Scatter of two per-item quantities with labels and Spearman's rho in the title."""
    fig, ax = _axes(ax)
    ax.scatter(x, y, color=POS_COLOR)
    for xi, yi, label in zip(x, y, labels, strict=True):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    rho = spearman(x, y) if len(x) >= 3 else float("nan")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Spearman rho = {rho:.2f} (n = {len(x)})")
    return fig


def plot_generation_report(report: GenerationData) -> Figure:
    """On-topic rate and median perplexity per steering condition."""
    plt = _plt()
    rows = report.records()
    names = [r["condition"] for r in rows]
    n_panels = 2 if report.on_topic is not None else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 3.8))
    axes = np.atleast_1d(axes)
    k = 0
    if report.on_topic is not None:
        axes[0].bar(names, [r["on_topic"] for r in rows], color=POS_COLOR)
        axes[0].set_ylim(0, 1)
        axes[0].set_ylabel(f"on topic ({report.topic})")
        k = 1
    axes[k].bar(names, [r["median_perplexity"] for r in rows], color=NEG_COLOR)
    axes[k].set_ylabel("median perplexity (unsteered model)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def plot_loss(
    history: Sequence[Mapping[str, float]],
    ax: Axes | None = None,
    title: str | None = None,
    smooth: int = 0,
) -> Figure:
    """The loss per optimiser step of a training run (e.g. `SteeringVector.history`).

    Args:
        history: one mapping per step with at least ``"loss"``.
        ax: draw into these axes (default: a new figure).
        title: the axes title.
        smooth: also draw a running mean over this many steps (0: none).

    Returns:
        The matplotlib Figure.
    """
    fig, ax = _axes(ax)
    steps = [int(r.get("step", i)) for i, r in enumerate(history)]
    loss = [float(r["loss"]) for r in history]
    ax.plot(steps, loss, lw=1, alpha=0.6 if smooth > 1 else 1.0, label="batch loss")
    if smooth > 1 and len(loss) >= smooth:
        kernel = [1.0 / smooth] * smooth
        import numpy as np

        run = np.convolve(np.asarray(loss), np.asarray(kernel), mode="valid")
        ax.plot(steps[smooth - 1 :], run, lw=2, label=f"mean of {smooth}")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
