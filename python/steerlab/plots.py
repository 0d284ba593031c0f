"""Plot helpers for diagnostics and evaluations (matplotlib, imported when called).

Each function returns the matplotlib Figure; functions that draw one panel accept an
``ax`` to draw into.

This module imports nothing from `steerlab.diagnostics` or `steerlab.evaluate`: their
reports call these functions, and each function reads only the attributes named by the
protocol it takes (`DiagnosisData`, `SteerabilityData`, `PromptTypesData`,
`GenerationData`, `AnswerFlipsData`, `AxBenchData`...), so any object with those attributes plots.
`plot_scalars` takes a table (a pandas DataFrame, or any object whose ``to_pandas()``
returns one, such as `steerlab.ActivationScalars`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from steerlab._extras import require
from steerlab._stats import spearman
from steerlab.errors import InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "AnswerFlipsData",
    "AxBenchData",
    "ControllerData",
    "DiagnosisData",
    "GenerationData",
    "HyperSteerData",
    "LayerData",
    "PromptTypesData",
    "RefusalData",
    "SteerabilityData",
    "plot_answer_flips",
    "plot_axbench",
    "plot_beta_sweep",
    "plot_controller",
    "plot_correlation",
    "plot_cosine_histogram",
    "plot_diagnosis",
    "plot_generation_report",
    "plot_hypersteer",
    "plot_layer_sweep",
    "plot_loss",
    "plot_projections",
    "plot_prompt_types",
    "plot_refusal",
    "plot_scalars",
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


class AnswerFlipsData(Protocol):
    """Logit differences before / after steering (`steerlab.evaluate.AnswerFlips`)."""

    @property
    def logit_diff_before(self) -> npt.NDArray[np.float64]: ...
    @property
    def logit_diff_after(self) -> npt.NDArray[np.float64]: ...
    @property
    def flip_rate(self) -> float: ...
    @property
    def accuracy_before(self) -> float: ...
    @property
    def accuracy_after(self) -> float: ...
    @property
    def kl_other(self) -> float: ...
    @property
    def name(self) -> str | None: ...


def _plt() -> Any:
    return require("matplotlib.pyplot", "plot", "steerlab.plots")


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


# ------------------------------------------------------------- activation scaling


def plot_answer_flips(result: AnswerFlipsData, ax: Axes | None = None) -> Figure:
    """Steered against unsteered logit difference ``logit(target) - logit(foil)``, one
    point per record: flips (foil -> target) in blue, reverse flips (target -> foil) in
    red, the rest grey; the diagonal is "no change".

    Args:
        result: a `steerlab.evaluate.AnswerFlips` (or anything with its attributes).
        ax: draw into these axes (default: a new figure).

    Returns:
        The matplotlib Figure.
    """
    fig, ax = _axes(ax, (4.8, 4.5))
    before = np.asarray(result.logit_diff_before, dtype=np.float64)
    after = np.asarray(result.logit_diff_after, dtype=np.float64)
    flipped = (after > 0) & (before <= 0)
    broken = (after <= 0) & (before > 0)
    rest = ~(flipped | broken)
    ax.scatter(before[rest], after[rest], s=14, color="grey", alpha=0.6, label="unchanged")
    ax.scatter(before[flipped], after[flipped], s=18, color=POS_COLOR, label="flipped")
    ax.scatter(before[broken], after[broken], s=18, color=NEG_COLOR, label="reverse flip")
    both = np.concatenate([before, after])
    lo, hi = float(both.min()), float(both.max())
    pad = 0.05 * (hi - lo) or 1.0
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", lw=0.8, ls=":")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("logit diff, unsteered")
    ax.set_ylabel("logit diff, steered")
    rate = "n/a" if np.isnan(result.flip_rate) else f"{result.flip_rate:.0%}"
    ax.set_title(
        f"{result.name or 'answer flips'}: flip rate {rate}, KL {result.kl_other:.3g}",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    return fig


_SITE_ORDER = ("attn_out", "mlp_out")


def _frame(obj: Any, what: str) -> Any:
    """A pandas DataFrame from a frame or an object with ``to_pandas()``."""
    to_pandas = getattr(obj, "to_pandas", None)
    if callable(to_pandas):
        obj = to_pandas()
    if not (hasattr(obj, "columns") and hasattr(obj, "__getitem__") and hasattr(obj, "shape")):
        raise InvalidTypeError(
            f"{what} takes a pandas DataFrame or an object with to_pandas(), got "
            f"{type(obj).__name__}"
        )
    return obj


def _need_columns(frame: Any, columns: Sequence[str], what: str) -> None:
    have = [str(c) for c in frame.columns]
    missing = [c for c in columns if c not in have]
    if missing:
        raise InvalidArgumentError(
            f"{what} needs the columns {list(columns)}; the table has {have} (missing {missing})"
        )


def _int_column(frame: Any, name: str, what: str) -> npt.NDArray[np.int64]:
    raw = np.asarray(frame[name])
    try:
        vals = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise InvalidTypeError(
            f"{what}: column {name!r} must hold integers, got {raw.dtype}"
        ) from None
    if not np.isfinite(vals).all() or not (vals == np.round(vals)).all():
        raise InvalidArgumentError(
            f"{what}: column {name!r} must hold integers, got values such as "
            f"{vals[~(np.isfinite(vals) & (vals == np.round(vals)))][:3].tolist()}"
        )
    return vals.astype(np.int64)


def _float_column(frame: Any, name: str, what: str) -> npt.NDArray[np.float64]:
    raw = np.asarray(frame[name])
    if raw.dtype == np.bool_:
        return raw.astype(np.float64)
    try:
        return raw.astype(np.float64)
    except (TypeError, ValueError):
        raise InvalidTypeError(
            f"{what}: column {name!r} must hold numbers, got {raw.dtype}"
        ) from None


def _token_label(position: int, token: Any) -> str:
    if token is None or (isinstance(token, float) and np.isnan(token)):
        return str(position)
    return f"{position} {str(token)!r}"


def plot_scalars(
    table: Any,
    *,
    value: str = "alpha",
    ax: Axes | Sequence[Axes] | None = None,
    sites: Sequence[str] | None = None,
    cmap: str = "RdBu_r",
    vmax: float | None = None,
    annotate: bool = False,
    title: str | None = None,
) -> Figure:
    """Heatmap of learned scalars by layer (rows) and token position (columns), one
    panel per site: activation scaling's alpha (Stoehr et al. 2024) or any per-(site,
    layer, position) value.

    The colour scale is diverging and centred at 0 (white: no change), shared by every
    panel, from ``-vmax`` to ``vmax``; cells with no row in the table are grey. All
    panels share the same layers and positions.

    Args:
        table: a pandas DataFrame with columns ``site`` (str), ``layer`` (int),
            ``position`` (int), the column named by `value` (numbers) and optionally
            ``token`` (str: the token at that position, used for the column labels);
            or an object whose ``to_pandas()`` returns one (e.g.
            `steerlab.ActivationScalars`). At most one row per (site, layer, position).
        value: the column to draw (default ``"alpha"``).
        ax: an Axes (one site) or one Axes per panel to draw into (default: a new
            figure).
        sites: the sites to draw, one panel each, in this order (default: those in the
            table, ``attn_out`` then ``mlp_out`` then any other).
        cmap: a diverging matplotlib colormap.
        vmax: the end of the colour scale (default: the largest ``|value|``).
        annotate: write each value in its cell.
        title: the figure's title (default: ``"<value> by layer and position"``).

    Returns:
        The matplotlib Figure.

    Raises:
        InvalidTypeError: `table` is neither a frame nor has ``to_pandas()``; a column
            of the wrong type.
        InvalidArgumentError: a missing column, an empty table, a duplicated (site,
            layer, position), a site not in the table, a bad ``vmax`` or ``ax``.
    """
    what = "plot_scalars"
    frame = _frame(table, what)
    if not isinstance(value, str):
        raise InvalidTypeError(f"value must be a column name (str), got {type(value).__name__}")
    _need_columns(frame, ("site", "layer", "position", value), what)
    if len(frame) == 0:
        raise InvalidArgumentError(f"{what}: the table has no rows; nothing to draw")
    site_col = [str(s) for s in np.asarray(frame["site"])]
    layer_col = _int_column(frame, "layer", what)
    pos_col = _int_column(frame, "position", what)
    vals = _float_column(frame, value, what)
    has_token = "token" in [str(c) for c in frame.columns]
    tok_col = list(np.asarray(frame["token"], dtype=object)) if has_token else None

    present = list(dict.fromkeys(site_col))
    if sites is None:
        panels = [s for s in _SITE_ORDER if s in present] + [
            s for s in present if s not in _SITE_ORDER
        ]
    else:
        if isinstance(sites, str):
            sites = [sites]
        panels = list(sites)
        absent = [s for s in panels if s not in present]
        if not panels or absent:
            raise InvalidArgumentError(
                f"{what}: sites {panels} must be a non-empty list of sites in the table, "
                f"which has {present}"
            )
    layers = sorted(set(layer_col.tolist()))
    positions = sorted(set(pos_col.tolist()))
    row_of = {layer: i for i, layer in enumerate(layers)}
    col_of = {p: j for j, p in enumerate(positions)}
    grids = {s: np.full((len(layers), len(positions)), np.nan) for s in panels}
    seen: set[tuple[str, int, int]] = set()
    tokens: dict[int, Any] = {}
    for k, (site, layer, pos) in enumerate(zip(site_col, layer_col, pos_col, strict=True)):
        key = (site, int(layer), int(pos))
        if key in seen:
            raise InvalidArgumentError(
                f"{what}: the table has more than one row for site {site!r}, layer {layer}, "
                f"position {pos}; expected at most one"
            )
        seen.add(key)
        if tok_col is not None:
            tokens.setdefault(int(pos), tok_col[k])
        if site in grids:
            grids[site][row_of[int(layer)], col_of[int(pos)]] = vals[k]

    drawn = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    if vmax is None:
        top = float(np.abs(drawn).max()) if drawn.size else 0.0
        vmax = top if top > 0 else 1.0
    elif (
        isinstance(vmax, bool)
        or not isinstance(vmax, int | float | np.floating | np.integer)
        or not np.isfinite(vmax)
        or vmax <= 0
    ):
        raise InvalidArgumentError(f"vmax must be a finite number > 0, got {vmax!r}")

    plt = _plt()
    if ax is None:
        width = max(3.5, 0.38 * len(positions) + 2.0)
        height = max(2.5, 0.28 * len(layers) + 1.6)
        fig, axes_arr = plt.subplots(
            1,
            len(panels),
            figsize=(width * len(panels) + 1.0, height),
            squeeze=False,
            layout="constrained",
        )
        axes = list(axes_arr[0])
    else:
        axes = list(ax) if isinstance(ax, Sequence | np.ndarray) else [ax]
        if len(axes) != len(panels):
            raise InvalidArgumentError(
                f"{what}: ax has {len(axes)} Axes for {len(panels)} site panels {panels}; "
                f"pass one Axes per site"
            )
        fig = cast("Figure", axes[0].figure)

    colormap = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
    labels = [_token_label(p, tokens.get(p)) for p in positions]
    image = None
    for panel_ax, site in zip(axes, panels, strict=True):
        grid = np.ma.masked_invalid(grids[site])
        image = panel_ax.imshow(
            grid, cmap=colormap, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest"
        )
        panel_ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        panel_ax.set_xticks(
            range(len(positions)), labels, rotation=90 if has_token else 0, fontsize=8
        )
        panel_ax.set_ylabel("layer")
        panel_ax.set_xlabel("token" if has_token else "position")
        panel_ax.set_title(site)
        if annotate:
            for i in range(len(layers)):
                for j in range(len(positions)):
                    v = grids[site][i, j]
                    if np.isfinite(v):
                        panel_ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=axes, fraction=0.046, pad=0.02, label=value)
    fig.suptitle(title if title is not None else f"{value} by layer and position")
    return fig


def _sweep_rows(results: Any, betas: Sequence[float] | None) -> dict[str, npt.NDArray[np.float64]]:
    """beta, mean logit diff after, flip rate, accuracy after (and before), sorted by beta."""
    what = "plot_beta_sweep"
    cols: dict[str, list[float]] = {
        "beta": [],
        "mean_logit_diff_after": [],
        "flip_rate": [],
        "accuracy_after": [],
        "accuracy_before": [],
    }
    if hasattr(results, "columns"):
        if betas is not None:
            raise InvalidArgumentError(f"{what}: betas come from the table's 'beta' column")
        frame = results
        names = [str(c) for c in frame.columns]
        _need_columns(frame, ("beta",), what)
        beta = _float_column(frame, "beta", what)
        if "logit_diff_after" in names:  # one row per record and beta (AnswerFlips.to_pandas)
            _need_columns(frame, ("beta", "logit_diff_before", "logit_diff_after"), what)
            before = _float_column(frame, "logit_diff_before", what)
            after = _float_column(frame, "logit_diff_after", what)
            for b in np.unique(beta):
                m = beta == b
                wrong = before[m] <= 0
                cols["beta"].append(float(b))
                cols["mean_logit_diff_after"].append(float(after[m].mean()))
                n_wrong = int(wrong.sum())
                flips = int((wrong & (after[m] > 0)).sum())
                cols["flip_rate"].append(flips / n_wrong if n_wrong else float("nan"))
                cols["accuracy_after"].append(float((after[m] > 0).mean()))
                cols["accuracy_before"].append(float((before[m] > 0).mean()))
        else:  # one row per beta (AnswerFlips.metrics)
            _need_columns(frame, ("beta", "mean_logit_diff_after"), what)
            if len(np.unique(beta)) != len(beta):
                raise InvalidArgumentError(f"{what}: the table repeats a beta; one row per beta")
            cols["beta"] = beta.tolist()
            for name in ("mean_logit_diff_after", "flip_rate", "accuracy_after", "accuracy_before"):
                if name in names:
                    raw = np.asarray(frame[name], dtype=object)
                    cols[name] = [float("nan") if v is None else float(v) for v in raw]
                else:
                    cols[name] = [float("nan")] * len(beta)
    else:
        if isinstance(results, Mapping):
            if betas is not None:
                raise InvalidArgumentError(f"{what}: betas come from the mapping's keys")
            pairs = list(results.items())
        else:
            if isinstance(results, str) or not isinstance(results, Sequence):
                raise InvalidTypeError(
                    f"{what} takes {{beta: AnswerFlips}}, a list of AnswerFlips with betas=, "
                    f"or a pandas DataFrame; got {type(results).__name__}"
                )
            if betas is None or len(betas) != len(results):
                raise InvalidArgumentError(
                    f"{what}: a list of {len(results)} results needs betas= with one beta "
                    f"each, got {None if betas is None else len(betas)}"
                )
            pairs = list(zip(betas, results, strict=True))
        for b, r in pairs:
            if isinstance(b, bool) or not isinstance(b, int | float | np.floating | np.integer):
                raise InvalidTypeError(f"{what}: a beta must be a number, got {b!r}")
            for attr in ("logit_diff_after", "flip_rate", "accuracy_after", "accuracy_before"):
                if not hasattr(r, attr):
                    raise InvalidTypeError(
                        f"{what}: the result for beta {b} is a {type(r).__name__}, expected an "
                        f"AnswerFlips (missing {attr!r})"
                    )
            cols["beta"].append(float(b))
            cols["mean_logit_diff_after"].append(float(np.mean(r.logit_diff_after)))
            cols["flip_rate"].append(float(r.flip_rate))
            cols["accuracy_after"].append(float(r.accuracy_after))
            cols["accuracy_before"].append(float(r.accuracy_before))
    if not cols["beta"]:
        raise InvalidArgumentError(f"{what}: no results to draw")
    out = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}
    if not np.isfinite(out["beta"]).all():
        raise InvalidArgumentError(f"{what}: every beta must be finite, got {out['beta'].tolist()}")
    if len(np.unique(out["beta"])) != len(out["beta"]):
        raise InvalidArgumentError(f"{what}: a beta appears twice: {out['beta'].tolist()}")
    order = np.argsort(out["beta"])
    return {k: v[order] for k, v in out.items()}


def plot_beta_sweep(
    results: Any,
    betas: Sequence[float] | None = None,
    *,
    ax: Sequence[Axes] | None = None,
    label: str | None = None,
    title: str | None = None,
) -> Figure:
    """A strength sweep: the mean steered logit difference (left panel) and the flip
    rate and accuracy after steering (right panel) against the strength beta (e.g.
    ``sc * beta`` of `steerlab.ActivationScalars` from -1 to 1).

    Args:
        results: ``{beta: AnswerFlips}``; a list of `steerlab.evaluate.AnswerFlips`
            with `betas`; or a pandas DataFrame with a ``beta`` column and either one
            row per beta with ``mean_logit_diff_after`` (and optionally ``flip_rate``,
            ``accuracy_after``, ``accuracy_before``: the keys of `AnswerFlips.metrics`)
            or one row per record and beta with ``logit_diff_before`` and
            ``logit_diff_after`` (`AnswerFlips.to_pandas` plus a ``beta`` column).
        betas: the beta of each result when `results` is a list.
        ax: two Axes to draw into (call again with the same two to overlay methods).
        label: the legend label of this sweep (e.g. the method).
        title: the figure's title.

    Returns:
        The matplotlib Figure.

    Raises:
        InvalidTypeError: an input of another kind, a beta that is not a number.
        InvalidArgumentError: betas missing or of another length, a beta twice, a
            missing column, no results, ``ax`` not two Axes.
    """
    rows = _sweep_rows(results, betas)
    plt = _plt()
    if ax is None:
        fig, axes_arr = plt.subplots(1, 2, figsize=(10.0, 3.8))
        axes = list(axes_arr)
    else:
        axes = list(ax) if isinstance(ax, Sequence | np.ndarray) else [ax]
        if len(axes) != 2:
            raise InvalidArgumentError(
                f"plot_beta_sweep: ax must be two Axes (logit difference, rates), got {len(axes)}"
            )
        fig = cast("Figure", axes[0].figure)
    prefix = f"{label}: " if label else ""
    beta = rows["beta"]
    left, right = axes
    (line,) = left.plot(beta, rows["mean_logit_diff_after"], "o-", label=label or "steered")
    left.axhline(0, color="grey", lw=0.8, ls=":")
    left.axvline(0, color="grey", lw=0.8, ls=":")
    left.set_xlabel("beta (strength)")
    left.set_ylabel("mean logit(target) - logit(foil)")
    left.legend(loc="best", fontsize=8)
    color = line.get_color()
    if np.isfinite(rows["flip_rate"]).any():
        right.plot(beta, rows["flip_rate"], "o-", color=color, label=f"{prefix}flip rate")
    if np.isfinite(rows["accuracy_after"]).any():
        right.plot(
            beta, rows["accuracy_after"], "s--", color=color, label=f"{prefix}accuracy after"
        )
    before = rows["accuracy_before"][np.isfinite(rows["accuracy_before"])]
    if before.size:
        right.axhline(
            float(before[0]), color=color, lw=0.8, ls=":", label=f"{prefix}accuracy unsteered"
        )
    right.axvline(0, color="grey", lw=0.8, ls=":")
    right.set_ylim(-0.03, 1.03)
    right.set_xlabel("beta (strength)")
    right.set_ylabel("fraction of records")
    right.legend(loc="best", fontsize=8)
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class ControllerData(Protocol):
    """What `plot_controller` reads (a `steerlab.SteeringController`)."""

    layers: list[int]
    history: list[dict[str, float]]
    training: dict[str, Any]


def plot_controller(ctrl: ControllerData, ax: Any = None) -> Figure:
    """A steering controller's training and per-layer weights: left, the stage-1 train and
    validation BCE per epoch (and the validation accuracy), then the stage-2 loss per step
    when there was a stage 2; right, the mean layer weight ``w_l`` over the validation
    harmful and benign prompts (``training["layer_weights"]``), with the mean gates in the
    title.

    Args:
        ctrl: the controller.
        ax: None (a new figure with two panels) or a sequence of two Axes.

    Returns:
        The matplotlib Figure.
    """
    plt = _plt()
    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.5))
    else:
        axes = list(ax)
        if len(axes) != 2:
            raise InvalidArgumentError(f"ax must hold 2 Axes, got {len(axes)}")
        fig = axes[0].figure
    left, right = axes
    s1 = [h for h in ctrl.history if h.get("stage") == 1.0]
    s2 = [h for h in ctrl.history if h.get("stage") == 2.0]
    if s1:
        ep = [int(h["epoch"]) + 1 for h in s1]
        left.plot(ep, [h["bce"] for h in s1], "o-", color=POS_COLOR, label="train BCE")
        left.plot(ep, [h["val_bce"] for h in s1], "s--", color=NEG_COLOR, label="val BCE")
        left.plot(ep, [h["val_acc"] for h in s1], "^:", color="#555555", label="val accuracy")
        left.set_xlabel("stage-1 epoch")
    if s2:
        twin = left.twiny()
        steps = [int(h["step"]) + 1 for h in s2]
        twin.plot(steps, [h["loss"] for h in s2], color="#7a5195", alpha=0.7, label="stage-2 loss")
        val = [(st, h["val_loss"]) for st, h in zip(steps, s2, strict=True) if "val_loss" in h]
        if val:
            twin.plot(*zip(*val, strict=True), "D", color="#7a5195", label="stage-2 val loss")
        twin.set_xlabel("stage-2 step")
        twin.legend(loc="upper center", fontsize=7)
    left.set_title("training")
    left.legend(fontsize=7)
    lw = ctrl.training.get("layer_weights") or {}
    x = np.asarray(ctrl.layers)
    if lw:
        right.plot(x, lw.get("harmful", []), "o-", color=NEG_COLOR, label="harmful (validation)")
        right.plot(x, lw.get("benign", []), "s-", color=POS_COLOR, label="benign (validation)")
        right.set_ylim(-0.02, 1.02)
        right.legend(fontsize=7)
    gates = ctrl.training.get("validation_gate") or {}
    title = "per-layer weight w_l"
    if gates:
        title += f" (mean gate: harmful {gates['harmful']:.2f}, benign {gates['benign']:.2f})"
    right.set_title(title, fontsize=9)
    right.set_xlabel("steered layer")
    fig.tight_layout()
    return cast("Figure", fig)


class HyperSteerData(Protocol):
    """What `plot_hypersteer` reads (a `steerlab.HyperSteer`)."""

    history: list[dict[str, float]]
    training: dict[str, Any]


def plot_hypersteer(hs: HyperSteerData, ax: Any = None) -> Figure:
    """A HyperSteer run's loss curve: the training cross-entropy of each step's batch
    (faint), its running mean over ``max(1, steps // 20)`` steps, and the validation
    cross-entropy where it was measured, against the step.

    Args:
        hs: the hypernetwork.
        ax: None (a new figure) or a matplotlib Axes.

    Returns:
        The matplotlib Figure.
    """
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 3.5))
    elif not (hasattr(ax, "plot") and hasattr(ax, "figure")):
        raise InvalidTypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    else:
        fig = ax.figure
    steps = np.asarray([h["step"] + 1 for h in hs.history], dtype=np.float64)
    ce = np.asarray([h.get("ce", h["loss"]) for h in hs.history], dtype=np.float64)
    if len(ce):
        ax.plot(steps, ce, color=POS_COLOR, alpha=0.3, label="train CE (batch)")
        w = max(1, len(ce) // 20)
        run = np.convolve(ce, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], run, color=POS_COLOR, label=f"train CE (mean of {w})")
    val = [(h["step"] + 1, h["val_ce"]) for h in hs.history if "val_ce" in h]
    start = hs.training.get("val_ce_start")
    if val and start is not None:
        val.insert(0, (0, start))
    if val:
        ax.plot(*zip(*val, strict=True), "s--", color=NEG_COLOR, label="validation CE")
    t = hs.training
    ax.set_title(
        f"HyperSteer {t.get('variant', '')}, layer {t.get('layer', '?')}, "
        f"N={t.get('n_blocks', '?')}",
        fontsize=9,
    )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / target token)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return cast("Figure", fig)


class RefusalData(Protocol):
    """Per-prompt refusal verdicts and margins (`steerlab.evaluate.RefusalReport`)."""

    @property
    def margin(self) -> npt.NDArray[np.float64]: ...
    @property
    def matched(self) -> npt.NDArray[np.bool_]: ...
    @property
    def rate(self) -> float: ...
    @property
    def judge_rate(self) -> float: ...
    @property
    def agreement(self) -> float: ...
    @property
    def name(self) -> str | None: ...


def plot_refusal(report: RefusalData, ax: Axes | None = None) -> Figure:
    """The log-probability judge's margin (refusal minus compliance openings, nats) per
    prompt, coloured by the matcher's verdict (red: a refusal phrase in the reply, blue:
    none); a prompt where the two judges disagree (the margin's sign against the colour)
    is ringed in black.

    Args:
        report: a `steerlab.evaluate.RefusalReport` (or anything with its attributes).
        ax: draw into these axes (default: a new figure).

    Returns:
        The matplotlib Figure.
    """
    own = ax is None
    fig, ax = _axes(ax, (max(4.0, min(12.0, 0.12 * len(report.margin) + 3.0)), 3.5))
    margin = np.asarray(report.margin, dtype=np.float64)
    matched = np.asarray(report.matched, dtype=bool)
    x = np.arange(margin.size)
    ax.scatter(x[matched], margin[matched], s=22, color=NEG_COLOR, label="matcher: refusal")
    ax.scatter(x[~matched], margin[~matched], s=22, color=POS_COLOR, label="matcher: answer")
    differ = matched != (margin > 0)
    if differ.any():
        ax.scatter(
            x[differ],
            margin[differ],
            s=70,
            facecolors="none",
            edgecolors="black",
            linewidths=0.9,
            label="judges disagree",
        )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("prompt")
    ax.set_ylabel("log p(refusal) - log p(compliance), nats")
    ax.set_title(
        f"{report.name or 'refusals'}: matcher {report.rate:.0%}, judge "
        f"{report.judge_rate:.0%}, agreement {report.agreement:.0%}",
        fontsize=10,
    )
    ax.legend(loc="best", fontsize=8)
    if own:
        fig.tight_layout()
    return fig


class AxBenchData(Protocol):
    """Per-method scores and factor curves (`steerlab.evaluate.AxBenchReport`)."""

    @property
    def name(self) -> str | None: ...
    def summary_rows(self) -> list[dict[str, Any]]: ...
    def per_concept(self) -> list[dict[str, Any]]: ...
    def factor_curves(self) -> Mapping[str, tuple[Sequence[float], Sequence[float]]]: ...


def plot_axbench(report: AxBenchData) -> Figure:
    """Left: the mean aggregate score (report half) per method, a bar each, with the
    per-concept means as dots. Right (when a method has a factor): the mean aggregate on
    the selection half against the steering factor, one line per method.

    Args:
        report: a `steerlab.evaluate.AxBenchReport` (or anything with its methods).

    Returns:
        The matplotlib Figure.
    """
    plt = _plt()
    rows = report.summary_rows()
    curves = dict(report.factor_curves())
    n_panels = 2 if curves else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(5.0 * n_panels, 3.5), squeeze=False)
    ax = axes[0][0]
    names = [str(r["method"]) for r in rows]
    x = np.arange(len(names))
    ax.bar(x, [r["aggregate"] for r in rows], color=POS_COLOR, alpha=0.8)
    per = report.per_concept()
    for k, m in enumerate(names):
        vals = [r["aggregate"] for r in per if r["method"] == m]
        ax.scatter(np.full(len(vals), x[k]), vals, s=12, color="black", zorder=3)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0.0, 2.0)
    ax.set_ylabel("aggregate score (report half)")
    ax.set_title(f"{report.name or 'AxBench'}: mean over concepts", fontsize=10)
    if curves:
        right = axes[0][1]
        for m, (facs, means) in curves.items():
            right.plot(list(facs), list(means), "o-", label=m)
        facs = [f for _, (fs, _) in curves.items() for f in fs]
        if min(facs) > 0 and max(facs) >= 4 * min(facs):
            right.set_xscale("log", base=2)
        right.set_xlabel("factor")
        right.set_ylabel("aggregate score (selection half)")
        right.set_ylim(0.0, 2.0)
        right.set_title("factor search", fontsize=10)
        right.legend(fontsize=8)
    fig.tight_layout()
    return cast("Figure", fig)
