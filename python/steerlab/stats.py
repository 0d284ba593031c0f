"""Activation statistics that merge: count, mean and co-moment per layer.

`ActivationStats` summarises activations read at some layers (one ``[d_model]`` vector
per text and layer, as `steerlab.Model.capture` returns them) by their count, their mean
and their co-moment (the sum of outer products of deviations from the mean, from which
the covariance follows), all accumulated in float64. Two summaries of disjoint parts
merge into the summary of the whole with the parallel formula of Chan, Golub & LeVeque
(1979, "Updating formulae and a pairwise algorithm for computing sample variances"):

    n = n_a + n_b,  delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    M2   = M2_a + M2_b + outer(delta, delta) * n_a * n_b / n

so a steering vector can be computed from activations that never sit on one machine
(`steerlab.ray` computes partial statistics on Ray workers and merges them on the
driver). The vectors built here equal the single-process ones:

- `contrast_vector` from the statistics of the per-pair differences
  ``a(x, y+) - a(x, y-)``: ``"mean_diff"`` (CAA, Rimsky et al. 2024; Braun et al. 2025:
  the mean difference), ``"pca_diff"`` (first principal component of the centred
  differences, as repeng's) and ``"pca_center"`` (the uncentred differences, i.e. each
  pair centred on its midpoint), oriented and scaled as `steerlab.SteeringVector.train`
  does (unit direction u times ``mean_diff . u``);
- `mean_centring_vector` (Jorgensen et al. 2023): ``mean(target) - mean(background)``,
  as `steerlab.SteeringVector.mean_centring`.

The logistic-probe method of `SteeringVector.train` needs the activations themselves,
not these statistics.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _args
from steerlab.errors import InvalidArgumentError, InvalidTypeError, ShapeError

if TYPE_CHECKING:
    from steerlab.model import Model
    from steerlab.vectors import SteeringVector

__all__ = ["STATS_METHODS", "ActivationStats", "contrast_vector", "mean_centring_vector"]

F64 = npt.NDArray[np.float64]

#: Methods of `contrast_vector` (those of `SteeringVector.train` that statistics give).
STATS_METHODS = ("mean_diff", "pca_diff", "pca_center")

_FORMAT = 1
# The model a summary's activations came from and how they were read: two summaries
# merge only when these agree.
_SOURCE_TYPES = (str, int, float, bool, type(None))


def _check_source(source: Any) -> dict[str, Any]:
    if source is None:
        return {}
    if not isinstance(source, Mapping):
        raise InvalidTypeError(f"source must be a dict of str -> str/int/float, got {source!r}")
    out: dict[str, Any] = {}
    for k, v in source.items():
        if not isinstance(k, str) or not isinstance(v, _SOURCE_TYPES):
            raise InvalidTypeError(
                f"source must map str to str/int/float/bool/None, got {k!r}: {_args.show(v)}"
            )
        out[k] = v
    return out


def _check_layers(layers: Any, n: int | None) -> list[int]:
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise InvalidTypeError(f"layers must be a list of ints, got {_args.show(layers)}")
    out = []
    for layer in layers:
        if isinstance(layer, bool | np.bool_) or not isinstance(layer, numbers.Integral):
            raise InvalidTypeError(f"layers must be ints, got {_args.show(layer)}")
        out.append(int(layer))
    if not out:
        raise InvalidArgumentError("layers is empty; name at least one layer")
    if len(set(out)) != len(out):
        raise InvalidArgumentError(f"layers {out} has a repeated layer; expected distinct layers")
    if n is not None and len(out) != n:
        raise ShapeError(
            f"layers names {len(out)} layer(s) but the activations have {n} along axis 1"
        )
    return out


def _as_acts(acts: Any, name: str = "acts") -> F64:
    """Activations as float64 ``[n, n_layers, d]`` (a ``[n, d]`` array is one layer)."""
    if isinstance(acts, list | tuple) and not acts:
        raise ShapeError(f"{name} is an empty list; expected an array [n, n_layers, d_model]")
    try:
        a = np.asarray(acts)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"{name} is not a rectangular array: {exc}") from None
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise InvalidTypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, None, :]
    if a.ndim != 3:
        raise ShapeError(
            f"{name} must be [n, d_model] or [n, n_layers, d_model], got shape {a.shape}"
        )
    if a.shape[2] == 0 or a.shape[1] == 0:
        raise ShapeError(f"{name} has shape {a.shape}; expected non-zero layers and width")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise InvalidArgumentError(
            f"{name} has a NaN or inf at index {tuple(int(i) for i in bad)}; activations "
            "must be finite"
        )
    return a


class ActivationStats:
    """Count, mean and co-moment of activations at some layers, in float64; merges.

    Build it with `from_activations` (or `from_pairs` for the differences of contrast
    pairs); add data with `update`; combine two with `merge` (or ``a + b``); ship it
    with `to_dict` / `from_dict` (plain ints, lists and float64 arrays; it also
    pickles).

    Args:
        layers: the layer index of each entry (distinct ints; labels, as the capture
            that read them resolved them).
        d_model: the activation width.
        covariance: keep the co-moment (``[n_layers, d, d]`` float64, 8 d^2 bytes per
            layer) that `covariance` and the PCA methods need; False keeps means only.
        source: what the activations are (model fingerprint, read position, site...):
            str keys, scalar values; two summaries merge only when their sources agree.

    Raises:
        InvalidTypeError: layers that are not ints, a source that is not a flat dict.
        InvalidArgumentError: no or repeated layers, d_model < 1.
    """

    __slots__ = ("_comoment", "_count", "_d", "_layers", "_mean", "_source")

    def __init__(
        self,
        layers: Sequence[int],
        d_model: int,
        *,
        covariance: bool = True,
        source: Mapping[str, Any] | None = None,
    ) -> None:
        self._layers = _check_layers(layers, None)
        self._d = _args.integer(d_model, "d_model", minimum=1, maximum=2**31)
        covariance = _args.flag(covariance, "covariance")
        n_l = len(self._layers)
        self._count = 0
        self._mean: F64 = np.zeros((n_l, self._d))
        self._comoment: F64 | None = np.zeros((n_l, self._d, self._d)) if covariance else None
        self._source = _check_source(source)

    # -- construction --------------------------------------------------------------

    @classmethod
    def from_activations(
        cls,
        acts: npt.ArrayLike,
        layers: Sequence[int] | None = None,
        *,
        covariance: bool = True,
        source: Mapping[str, Any] | None = None,
    ) -> ActivationStats:
        """The statistics of some activations.

        Args:
            acts: ``[n, n_layers, d_model]`` (as `Model.capture` returns) or
                ``[n, d_model]`` (one layer); any real dtype, accumulated in float64;
                ``n`` may be 0.
            layers: the layer of each entry along axis 1 (default ``0..n_layers-1``).
            covariance, source: as in the constructor.

        Raises:
            ShapeError: not 2-D or 3-D, zero width, `layers` of another length.
            InvalidTypeError: not real numbers.
            InvalidArgumentError: a NaN or inf, or values so large (about 1e150) that
                the mean or co-moment overflows float64.
        """
        a = _as_acts(acts)
        names = list(range(a.shape[1])) if layers is None else layers
        out = cls(names, a.shape[2], covariance=covariance, source=source)
        _check_layers(names, a.shape[1])
        out._add(a)
        return out

    @classmethod
    def from_pairs(
        cls,
        positive: npt.ArrayLike,
        negative: npt.ArrayLike,
        layers: Sequence[int] | None = None,
        *,
        covariance: bool = True,
        source: Mapping[str, Any] | None = None,
    ) -> ActivationStats:
        """The statistics of the per-pair differences ``positive - negative`` (taken in
        float64), what `contrast_vector` reads.

        Args:
            positive, negative: activations of both sides of each pair, row i of one
                pairing with row i of the other: ``[n, n_layers, d]`` or ``[n, d]``.
            layers, covariance, source: as in `from_activations`.

        Raises:
            ShapeError: the two arrays differ in shape; as `from_activations`.
        """
        p = _as_acts(positive, "positive")
        q = _as_acts(negative, "negative")
        if p.shape != q.shape:
            raise ShapeError(
                f"positive and negative activations must pair up row by row: got shapes "
                f"{p.shape} and {q.shape}"
            )
        return cls.from_activations(p - q, layers, covariance=covariance, source=source)

    def _add(self, a: F64) -> None:
        """Merge a checked float64 block ``[n, n_layers, d]`` into self."""
        n = a.shape[0]
        if n == 0:
            return
        with np.errstate(over="ignore", invalid="ignore"):  # checked in _combine
            mean = a.mean(axis=0)  # [L, d]
            comoment = None
            if self._comoment is not None:
                centred = a - mean  # [n, L, d]
                comoment = np.einsum("nld,nle->lde", centred, centred)  # [L, d, d]
        self._combine(n, mean, comoment)

    def _combine(self, n_b: int, mean_b: F64, comoment_b: F64 | None) -> None:
        """Chan, Golub & LeVeque's pairwise update with a part (n_b, mean_b, M2_b)."""
        if n_b == 0:
            return
        n_a = self._count
        n = n_a + n_b
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            if n_a == 0:
                mean = np.array(mean_b, dtype=np.float64)
                comoment = None if comoment_b is None else np.array(comoment_b, np.float64)
            else:
                delta = mean_b - self._mean  # [L, d]
                mean = self._mean + delta * (n_b / n)
                comoment = None
                if self._comoment is not None and comoment_b is not None:
                    outer = np.einsum("ld,le->lde", delta, delta)
                    comoment = self._comoment + comoment_b + outer * (n_a * n_b / n)
        for name, value in (("mean", mean), ("co-moment", comoment)):
            if value is not None and not np.isfinite(value).all():
                raise InvalidArgumentError(
                    f"the statistics' {name} overflows float64; expected activations of "
                    f"magnitude below about 1e150"
                )
        self._mean = mean
        if self._comoment is not None and comoment is not None:
            self._comoment = comoment
        self._count = n

    def update(self, acts: npt.ArrayLike) -> ActivationStats:
        """Add activations to these statistics (in place).

        Args:
            acts: ``[n, n_layers, d_model]`` (or ``[n, d_model]`` with one layer), rows
                read as this summary's were.

        Returns:
            self.

        Raises:
            ShapeError: another number of layers or width; as `from_activations`.
        """
        a = _as_acts(acts)
        if a.shape[1:] != (len(self._layers), self._d):
            raise ShapeError(
                f"acts have {a.shape[1]} layer(s) of width {a.shape[2]} but these statistics "
                f"hold {len(self._layers)} layer(s) of width {self._d}"
            )
        self._add(a)
        return self

    def merge(self, other: ActivationStats) -> ActivationStats:
        """The statistics of both parts together (a new value; neither changes).

        Raises:
            InvalidTypeError: `other` is not an `ActivationStats`.
            InvalidArgumentError: other layers, a source that differs, one part with a
                co-moment and the other without, or a merged mean or co-moment that
                overflows float64.
            ShapeError: another width.
        """
        if not isinstance(other, ActivationStats):
            raise InvalidTypeError(
                f"only an ActivationStats merges with an ActivationStats, got "
                f"{type(other).__name__}"
            )
        if other._layers != self._layers:
            raise InvalidArgumentError(
                f"cannot merge statistics of layers {self._layers} with statistics of layers "
                f"{other._layers}"
            )
        if other._d != self._d:
            raise ShapeError(f"cannot merge statistics of widths {self._d} and {other._d}")
        if (other._comoment is None) != (self._comoment is None):
            raise InvalidArgumentError(
                "cannot merge statistics with a co-moment and statistics without one "
                "(build both with the same covariance= setting)"
            )
        if other._source != self._source:
            raise InvalidArgumentError(
                f"cannot merge statistics of different sources: {self._source} vs {other._source}"
            )
        out = self.copy()
        out._combine(other._count, other._mean, other._comoment)
        return out

    __add__ = merge

    @classmethod
    def merged(cls, parts: Iterable[ActivationStats]) -> ActivationStats:
        """All parts merged, in order.

        Raises:
            InvalidArgumentError: no parts; as `merge`.
        """
        items = list(parts)
        if not items:
            raise InvalidArgumentError("parts is empty; merge at least one ActivationStats")
        out = items[0]
        if not isinstance(out, ActivationStats):
            raise InvalidTypeError(
                f"parts must be ActivationStats, got {type(out).__name__} at index 0"
            )
        out = out.copy()
        for part in items[1:]:
            out = out.merge(part)
        return out

    def copy(self) -> ActivationStats:
        new = ActivationStats.__new__(ActivationStats)
        new._layers = list(self._layers)
        new._d = self._d
        new._count = self._count
        new._mean = self._mean.copy()
        new._comoment = None if self._comoment is None else self._comoment.copy()
        new._source = dict(self._source)
        return new

    # -- views --------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Number of rows (texts or pairs) summarised."""
        return self._count

    @property
    def layers(self) -> list[int]:
        return list(self._layers)

    @property
    def d_model(self) -> int:
        return self._d

    @property
    def has_covariance(self) -> bool:
        """Whether the co-moment is kept (``covariance=True``)."""
        return self._comoment is not None

    @property
    def source(self) -> dict[str, Any]:
        return dict(self._source)

    def __repr__(self) -> str:
        return (
            f"ActivationStats(count={self._count}, layers={self._layers}, d_model={self._d}, "
            f"covariance={self.has_covariance}, source={self._source})"
        )

    def _index(self, layer: Any) -> int:
        if isinstance(layer, bool | np.bool_) or not isinstance(layer, numbers.Integral):
            raise InvalidTypeError(f"layer must be an int, got {_args.show(layer)}")
        try:
            return self._layers.index(int(layer))
        except ValueError:
            raise InvalidArgumentError(
                f"these statistics have no layer {layer}; they have layers {self._layers}"
            ) from None

    def _require(self, minimum: int, what: str) -> None:
        if self._count < minimum:
            raise InvalidArgumentError(
                f"{what} needs at least {minimum} row(s); these statistics hold {self._count}"
            )

    def _require_comoment(self, what: str) -> F64:
        if self._comoment is None:
            raise InvalidArgumentError(
                f"{what} needs the co-moment; these statistics were built with covariance=False"
            )
        return self._comoment

    def mean(self, layer: int | None = None) -> F64:
        """The mean activation: float64 ``[d_model]`` at `layer`, or
        ``[n_layers, d_model]`` for all layers when None.

        Raises:
            InvalidArgumentError: no rows yet, or a layer these statistics lack.
        """
        self._require(1, "the mean")
        return self._mean.copy() if layer is None else self._mean[self._index(layer)].copy()

    def comoment(self, layer: int | None = None) -> F64:
        """The co-moment ``sum_i (x_i - mean)(x_i - mean)^T``: float64 ``[d, d]`` at
        `layer`, or ``[n_layers, d, d]`` when None.

        Raises:
            InvalidArgumentError: built with ``covariance=False``, or an unknown layer.
        """
        m2 = self._require_comoment("the co-moment")
        return m2.copy() if layer is None else m2[self._index(layer)].copy()

    def covariance(self, layer: int | None = None, ddof: int = 1) -> F64:
        """The covariance ``M2 / (count - ddof)`` (as ``np.cov(x, rowvar=False, ddof=...)``):
        float64 ``[d, d]`` at `layer`, or ``[n_layers, d, d]`` when None.

        Raises:
            InvalidArgumentError: ``count <= ddof``, built with ``covariance=False``, an
                unknown layer, a negative ddof.
        """
        ddof = _args.integer(ddof, "ddof", minimum=0, maximum=2**31)
        self._require(ddof + 1, f"the covariance with ddof={ddof}")
        return self.comoment(layer) / (self._count - ddof)

    def second_moment(self, layer: int) -> F64:
        """The uncentred sum of outer products ``sum_i x_i x_i^T`` (float64 ``[d, d]``)
        at `layer`: ``M2 + count * mean mean^T``.

        Raises:
            InvalidArgumentError: no rows, no co-moment, an unknown layer.
        """
        m2 = self.comoment(layer)
        mu = self.mean(layer)
        return m2 + self._count * np.outer(mu, mu)

    # -- transport ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"format", "layers", "d_model", "count", "mean" (float64
        [n_layers, d]), "comoment" (float64 [n_layers, d, d] or None), "source"}``.
        `from_dict` reads it back."""
        return {
            "format": _FORMAT,
            "layers": list(self._layers),
            "d_model": self._d,
            "count": self._count,
            "mean": self._mean.copy(),
            "comoment": None if self._comoment is None else self._comoment.copy(),
            "source": dict(self._source),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActivationStats:
        """Statistics written by `to_dict` (checked: it may come from elsewhere).

        Raises:
            InvalidTypeError: not a mapping, fields of the wrong type.
            InvalidArgumentError: a missing field, a negative count, another format,
                non-finite numbers, a non-zero mean or co-moment with count 0.
            ShapeError: arrays whose shapes do not match the layers and width.
        """
        if not isinstance(data, Mapping):
            raise InvalidTypeError(f"from_dict takes a dict, got {type(data).__name__}")
        missing = [k for k in ("layers", "d_model", "count", "mean", "comoment") if k not in data]
        if missing:
            raise InvalidArgumentError(f"the statistics dict lacks field(s) {missing}")
        fmt = data.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise InvalidArgumentError(
                f"statistics format {fmt!r} is not supported; expected {_FORMAT}"
            )
        has_m2 = data["comoment"] is not None
        out = cls(data["layers"], data["d_model"], covariance=has_m2, source=data.get("source"))
        count = _args.integer(data["count"], "count", minimum=0, maximum=2**63 - 1)
        n_l, d = len(out._layers), out._d
        mean = _float_array(data["mean"], "mean", (n_l, d))
        m2 = _float_array(data["comoment"], "comoment", (n_l, d, d)) if has_m2 else None
        if count == 0 and (mean.any() or (m2 is not None and m2.any())):
            raise InvalidArgumentError("count is 0 but the mean or co-moment is not zero")
        out._count = count
        out._mean = mean
        out._comoment = m2
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActivationStats):
            return NotImplemented
        return (
            self._layers == other._layers
            and self._d == other._d
            and self._count == other._count
            and self._source == other._source
            and np.array_equal(self._mean, other._mean)
            and (
                (self._comoment is None and other._comoment is None)
                or (
                    self._comoment is not None
                    and other._comoment is not None
                    and np.array_equal(self._comoment, other._comoment)
                )
            )
        )

    __hash__ = None  # type: ignore[assignment]


def _float_array(value: Any, name: str, shape: tuple[int, ...]) -> F64:
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"{name} is not a rectangular array: {exc}") from None
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise InvalidTypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    if a.shape != shape:
        raise ShapeError(f"{name} has shape {a.shape}; expected {shape}")
    a = np.array(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise InvalidArgumentError(f"{name} has a NaN or inf; expected finite numbers")
    return a


# ---------------------------------------------------------------------- vectors


def _top_component(matrix: F64) -> tuple[F64, float]:
    """Unit top eigenvector of a symmetric PSD matrix and its share of the trace."""
    total = float(np.trace(matrix))
    if total == 0.0 or not np.isfinite(total):
        raise InvalidArgumentError(
            "the data for PCA has no variance (all rows are identical after centring)"
        )
    values, vectors = np.linalg.eigh(matrix)
    return vectors[:, -1], min(max(float(values[-1]) / total, 0.0), 1.0)


def contrast_direction(
    differences: ActivationStats, layer: int, method: str
) -> tuple[F64, float | None]:
    """The float64 direction of one layer and its score (PCA: explained share), as
    `steerlab._core.fit_direction` computes it from the pairs themselves."""
    mean_diff = differences.mean(layer)
    if float(np.linalg.norm(mean_diff)) == 0.0:
        raise InvalidArgumentError(
            "positive and negative activations have identical means: there is no direction "
            "to find (are the two sides of every pair the same text?)"
        )
    if method == "mean_diff":
        return mean_diff, None
    differences._require(2, f"method {method!r}")
    # pca_diff: PCA of the centred differences (their co-moment); pca_center: of the
    # pairs centred on their midpoints, rows +-diff/2, whose axes are the uncentred
    # differences' (the factor 1/4 changes neither the axis nor the explained share).
    matrix = (
        differences.comoment(layer) if method == "pca_diff" else differences.second_moment(layer)
    )
    u, explained = _top_component(matrix)
    k = float(u @ mean_diff)
    if not np.isfinite(k):
        raise InvalidArgumentError("the fitted direction is not finite")
    if k < 0:
        u, k = -u, -k
    return u * k, explained


def _vector_info(
    stats: ActivationStats,
    method: str,
    model: Model | None,
    residual_norms: Mapping[int, float] | None,
    reference_texts: Iterable[str] | None,
    dataset: str | None,
    scores: dict[int, float],
) -> Any:
    from steerlab._vector_fit import residual_norms as measure_norms
    from steerlab._vector_meta import VectorInfo, _now

    src = stats.source
    if model is not None:
        fp = src.get("fingerprint")
        if fp is not None and fp != model.fingerprint:
            raise InvalidArgumentError(
                f"these statistics were read from a model with fingerprint {fp!r}, not this "
                f"model ({model.fingerprint!r})"
            )
        if stats.d_model != model.d_model:
            raise ShapeError(
                f"these statistics have width {stats.d_model} but the model's d_model is "
                f"{model.d_model}"
            )
        norms = (
            dict(residual_norms)
            if residual_norms is not None
            else measure_norms(model, stats.layers, reference_texts)
        )
        ident: dict[str, Any] = {
            "fingerprint": model.fingerprint,
            "arch": model.arch,
            "n_layers": model.n_layers,
        }
    else:
        norms = {} if residual_norms is None else dict(residual_norms)
        ident = {k: src.get(k) for k in ("fingerprint", "arch", "n_layers")}
    if any(layer < 0 for layer in stats.layers):
        raise InvalidArgumentError(
            f"a vector needs non-negative layers; these statistics have layers {stats.layers}"
        )
    return VectorInfo(
        d_model=stats.d_model,
        fingerprint=ident["fingerprint"],
        arch=ident["arch"],
        n_layers=ident["n_layers"],
        method=method,
        position=src.get("position"),
        dataset=dataset,
        n_samples=stats.count,
        residual_norms={int(k): float(v) for k, v in norms.items()},
        scores=scores,
        created=_now(),
    )


def contrast_vector(
    differences: ActivationStats,
    method: str = "mean_diff",
    *,
    model: Model | None = None,
    residual_norms: Mapping[int, float] | None = None,
    reference_texts: Iterable[str] | None = None,
    dataset: str | None = None,
) -> SteeringVector:
    """A contrastive steering vector from the statistics of per-pair differences
    (`ActivationStats.from_pairs`, or `steerlab.ray.pair_stats`), equal to
    `SteeringVector.train` with the same method on the same pairs.

    Args:
        differences: statistics of ``a(x, y+) - a(x, y-)``, one row per pair.
        method: ``"mean_diff"`` (needs only means), ``"pca_diff"`` or ``"pca_center"``
            (need ``covariance=True`` and at least 2 pairs).
        model: the model the activations came from: fills the metadata (fingerprint,
            architecture) and measures the residual norms behind ``dose``; without it
            they come from the statistics' source and `residual_norms`.
        residual_norms: ``{layer: mean residual norm}`` to store instead of measuring.
        reference_texts: texts for measuring the residual norms (default: as
            `SteeringVector.train`).
        dataset: a name stored in the metadata.

    Returns:
        A `SteeringVector` at the statistics' layers (float32 directions; metadata
        with the method, read position, pair count, PCA explained shares as scores).

    Raises:
        InvalidArgumentError: an unknown method (``"logistic"`` included: it needs the
            activations), no pairs, too few pairs for PCA, identical means, no
            co-moment for PCA, statistics of another model, negative layers.
        InvalidTypeError: `differences` is not an `ActivationStats`.
    """
    from steerlab.vectors import SteeringVector

    if not isinstance(differences, ActivationStats):
        raise InvalidTypeError(
            f"differences must be an ActivationStats, got {type(differences).__name__}"
        )
    if not isinstance(method, str) or method not in STATS_METHODS:
        extra = (
            " ('logistic' fits a probe to the activations themselves, which statistics do not keep)"
            if method == "logistic"
            else ""
        )
        raise InvalidArgumentError(
            f"unknown method {method!r}; expected one of {STATS_METHODS}{extra}"
        )
    differences._require(1, "a contrast vector")
    dirs: dict[int, F64] = {}
    scores: dict[int, float] = {}
    for layer in differences.layers:
        direction, score = contrast_direction(differences, layer, method)
        dirs[layer] = direction
        if score is not None:
            scores[layer] = score
    info = _vector_info(
        differences, method, model, residual_norms, reference_texts, dataset, scores
    )
    return SteeringVector({k: v.astype(np.float32) for k, v in dirs.items()}, info)


def mean_centring_vector(
    target: ActivationStats,
    background: ActivationStats,
    *,
    model: Model | None = None,
    residual_norms: Mapping[int, float] | None = None,
    dataset: str | None = None,
) -> SteeringVector:
    """Mean-centring (Jorgensen et al. 2023) from statistics: ``mean(target) -
    mean(background)`` per layer, equal to `SteeringVector.mean_centring` on the same
    texts.

    Args:
        target: statistics of the target texts' activations.
        background: statistics of the background corpus's, at the same layers, read the
            same way (same source).
        model, residual_norms, dataset: as in `contrast_vector` (the residual norms are
            measured on the default reference texts, as `mean_centring` does).

    Returns:
        A `SteeringVector` with method ``"mean_centring"``.

    Raises:
        InvalidTypeError: an argument that is not an `ActivationStats`.
        InvalidArgumentError: no rows on either side, other layers or sources.
        ShapeError: other widths.
    """
    from steerlab.vectors import SteeringVector

    for name, s in (("target", target), ("background", background)):
        if not isinstance(s, ActivationStats):
            raise InvalidTypeError(f"{name} must be an ActivationStats, got {type(s).__name__}")
    if target.layers != background.layers:
        raise InvalidArgumentError(
            f"target statistics have layers {target.layers} but background statistics have "
            f"layers {background.layers}"
        )
    if target.d_model != background.d_model:
        raise ShapeError(
            f"target activations have width {target.d_model} but background activations "
            f"have width {background.d_model}"
        )
    if target.source != background.source:
        raise InvalidArgumentError(
            f"target and background were read differently: {target.source} vs {background.source}"
        )
    target._require(1, "the target mean")
    background._require(1, "the background mean")
    dirs = {
        layer: (target.mean(layer) - background.mean(layer)).astype(np.float32)
        for layer in target.layers
    }
    info = _vector_info(target, "mean_centring", model, residual_norms, None, dataset, {})
    return SteeringVector(dirs, info)
