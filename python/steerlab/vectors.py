"""`SteeringVector`: per-layer directions plus what they were made from.

A steering vector is ``{layer: float32 [d_model]}`` with metadata (model fingerprint,
width, method, read position, dataset hash, mean residual norms per layer). It can be
passed wherever steerlab takes steering, scaled by an absolute coefficient
(``vec * 4.0``) or to a *relative dose* (``vec.dose(0.1)``: at each layer
``||coef * v|| = 0.1 * mean ||h||``, the mean residual-stream norm measured on reference
texts, the first token's attention-sink norm excluded). Using a vector on a model with
another fingerprint or width raises `InvalidArgumentError` / `ShapeError`.

Layer ``i`` is the residual stream after decoder block ``i`` (Hugging Face
``hidden_states[i + 1]``). llama.cpp control vectors use the same numbering:
``direction.N`` is added to the output of block N, so steerlab layer N is written as
``direction.N`` unchanged. llama.cpp has no slot for block 0's output: a vector that
steers layer 0 cannot be exported to it.
"""

from __future__ import annotations

import datetime as _dt
import json
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _args, _core
from steerlab._layers import Positions, summed_arrays
from steerlab._layers import check_positions as _check_positions
from steerlab.errors import (
    DivisionByZeroError,
    InvalidArgumentError,
    InvalidTypeError,
    ModelFormatError,
    OutOfRangeError,
    ShapeError,
    SteerlabError,
)
from steerlab.steering import Steering

if TYPE_CHECKING:
    from steerlab.contrast import ContrastPairs
    from steerlab.model import Model

__all__ = ["METHODS", "SteeringVector", "VectorInfo", "capture_pairs", "residual_norms"]

#: Methods of `SteeringVector.train`.
METHODS = ("mean_diff", "pca_diff", "pca_center", "logistic")

FloatArray = npt.NDArray[np.float32]

_STRENGTH = (
    "absolute: the stored directions are added as they are (times the coefficient); "
    "coefficient 1 moves the mean negative activation onto the mean positive one along "
    "the direction (mean-centring: onto the target mean)"
)
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class VectorInfo:
    """What a steering vector was made from (saved with it)."""

    d_model: int
    fingerprint: str | None = None
    arch: str | None = None
    n_layers: int | None = None
    method: str = "custom"
    position: str | int | None = None
    dataset: str | None = None
    dataset_hash: str | None = None
    n_samples: int | None = None
    #: Mean residual norm per layer on reference texts (first token excluded).
    residual_norms: dict[int, float] = field(default_factory=dict)
    #: Per layer: PCA explained-variance share, probe accuracy, ... (method dependent).
    scores: dict[int, float] = field(default_factory=dict)
    strength: str = _STRENGTH
    created: str | None = None
    steerlab_version: str = _core.__version__
    #: Trained vectors: one record per optimiser step (``loss``, ``grad_norm``, ``lr``,
    #: and method-dependent terms), in order.
    history: list[dict[str, float]] = field(default_factory=list)
    #: Trained vectors: the objective and hyperparameters of the run.
    training: dict[str, Any] = field(default_factory=dict)

    def to_json(self, positions: Positions | None = None) -> str:
        """The metadata as JSON; with `positions`, the steering positions of the vector
        it describes are stored too (under ``"positions"``)."""
        d: dict[str, Any] = asdict(self)
        d["residual_norms"] = {str(k): v for k, v in self.residual_norms.items()}
        d["scores"] = {str(k): v for k, v in self.scores.items()}
        if not self.history:
            d.pop("history")
        if not self.training:
            d.pop("training")
        d["format_version"] = _FORMAT_VERSION
        if positions is not None:
            d["positions"] = positions
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> VectorInfo:
        """Metadata written by `to_json`.

        Raises:
            ModelFormatError: not JSON, not an object, fields of the wrong type or of
                impossible values (a negative or non-finite residual norm, n_layers
                outside 1..4096, a negative n_samples, an empty fingerprint, positions
                that are not a name or a list), too deeply nested, or a newer format
                version.
        """
        return _meta_from_json(text, where)[0]


# Field -> (accepted types, may be None). Checked on load: a file is data from outside.
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "d_model": ((int,), False),
    "fingerprint": ((str,), True),
    "arch": ((str,), True),
    "n_layers": ((int,), True),
    "method": ((str,), False),
    "position": ((str, int), True),
    "dataset": ((str,), True),
    "dataset_hash": ((str,), True),
    "n_samples": ((int,), True),
    "strength": ((str,), False),
    "created": ((str,), True),
    "steerlab_version": ((str,), False),
}

# Step records kept in a vector file at most (a run of more steps keeps its first ones).
_MAX_HISTORY = 1_000_000

# The engine loads models of at most this many layers (MAX_LAYERS in src/model/config.rs).
_MAX_LAYERS = 4096

# Field -> (accepted, expected): what a value of the right type must also be. A field
# outside it cannot describe a real vector (a count of -1, an empty fingerprint).
_LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "fingerprint": (lambda v: v != "", "a non-empty model fingerprint"),
    "n_layers": (lambda v: 1 <= v <= _MAX_LAYERS, f"a layer count in 1..{_MAX_LAYERS}"),
    "n_samples": (lambda v: v >= 0, "a sample count >= 0"),
}


def _meta_from_json(text: str, where: str) -> tuple[VectorInfo, Positions]:
    """(metadata, steering positions) from a vector file's JSON; positions default to
    ``"all"`` (files written before positions were stored)."""

    def bad(why: str) -> ModelFormatError:
        return ModelFormatError(f"{where}: corrupt steering-vector metadata ({why})")

    try:
        d = json.loads(text)
    except RecursionError:
        raise bad("nested too deeply") from None
    except ValueError as exc:
        raise bad(f"not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise bad(f"expected a JSON object, got {type(d).__name__}")
    # Files written before the format was versioned carry no format_version: they are
    # version 1 and keep loading.
    version = d.pop("format_version", _FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise bad(f"format_version must be an int, got {version!r:.40}")
    if version > _FORMAT_VERSION:
        raise ModelFormatError(
            f"{where}: vector format version {version} is newer than this steerlab "
            f"reads ({_FORMAT_VERSION}); upgrade steerlab"
        )
    fields: dict[str, Any] = {}
    for key, (types, nullable) in _FIELDS.items():
        if key not in d:
            continue
        value = d[key]
        if value is None and nullable:
            fields[key] = None
        elif isinstance(value, bool) or not isinstance(value, types):
            raise bad(f"{key} must be {' or '.join(t.__name__ for t in types)}, got {value!r:.40}")
        elif key in _LIMITS and not _LIMITS[key][0](value):
            raise bad(f"{key} must be {_LIMITS[key][1]}, got {_args.show(value)}")
        else:
            fields[key] = value
    if "d_model" not in fields or fields["d_model"] < 1:
        raise bad(f"d_model must be a positive int, got {d.get('d_model')!r:.40}")
    for key in ("residual_norms", "scores"):
        table = d.get(key, {})
        if not isinstance(table, dict):
            raise bad(f"{key} must be an object, got {type(table).__name__}")
        out: dict[int, float] = {}
        for k, v in table.items():
            if not (k.isdigit() and len(k) < 10):
                raise bad(f"{key} has a key {k!r:.40}; expected a layer index")
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                raise bad(f"{key}[{k}] must be a finite number, got {v!r:.40}")
            if key == "residual_norms" and v < 0:
                raise bad(
                    f"residual_norms[{k}] must be a finite number >= 0 (a mean "
                    f"residual-stream norm), got {v!r:.40}"
                )
            out[int(k)] = float(v)
        fields[key] = out
    history = d.get("history", [])
    if not isinstance(history, list) or len(history) > _MAX_HISTORY:
        raise bad(f"history must be a list of at most {_MAX_HISTORY} step records")
    for i, rec in enumerate(history):
        if not isinstance(rec, dict) or not all(
            isinstance(k, str)
            and not isinstance(v, bool)
            and isinstance(v, int | float)
            and np.isfinite(v)
            for k, v in rec.items()
        ):
            raise bad(f"history[{i}] must map names to finite numbers, got {rec!r:.60}")
    fields["history"] = [{k: float(v) for k, v in rec.items()} for rec in history]
    training = d.get("training", {})
    if not isinstance(training, dict) or not all(
        isinstance(v, str | int | float | bool | None) for v in training.values()
    ):
        raise bad(f"training must map names to plain values, got {training!r:.60}")
    fields["training"] = training
    raw = d.get("positions", "all")
    if not isinstance(raw, str | list):  # `save` writes a name or a list, never a bare int
        raise bad(
            f"positions must be a position name or a list of token indices, got "
            f"{type(raw).__name__} {_args.show(raw)}"
        )
    try:
        positions = _check_positions(raw)
    except SteerlabError as exc:
        raise bad(f"positions: {exc}") from None
    return VectorInfo(**fields), positions


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _check_scalar(k: Any, op: str) -> float:
    return _args.factor(k, "SteeringVector", op)


def _check_direction(v: Any, layer: int) -> FloatArray:
    return _args.vector(v, f"the direction for layer {layer}")


# Mean residual norms per (model fingerprint, dtype, reference texts) and layer.
_NORM_CACHE: dict[tuple[str, str, int], dict[int, float]] = {}


def residual_norms(
    model: Model,
    layers: Iterable[int],
    texts: Iterable[str] | None = None,
    *,
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[int, float]:
    """Mean norm of the residual stream after each layer, over reference texts.

    The first token of each text is excluded (its norm is the attention sink's, often
    tens of times larger). Results are cached per model and reference set.

    Args:
        model: the model.
        layers: layer indices (negative: from the end).
        texts: reference texts (default: 64 sentences of the shipped background corpus).
        batch_size: texts per forward pass.
        progress: progress bar (None: when there is more than one batch).

    Returns:
        ``{layer: mean norm}`` with non-negative layer indices.
    """
    if texts is None:
        from steerlab.datasets import background_corpus

        texts = background_corpus()[:64]
    texts = _text_list(texts, "texts")
    wanted = _layer_list(model, layers)
    key = (model.fingerprint, model.dtype, hash(tuple(texts)))
    cached = _NORM_CACHE.setdefault(key, {})
    missing = [layer for layer in wanted if layer not in cached]
    if missing:
        sums = np.zeros(len(missing))
        count = 0
        acts = model.capture(texts, missing, "all", batch_size, progress=progress)
        for a in acts:  # [layers, t, d]
            if a.shape[1] < 2:
                continue
            norms = np.linalg.norm(a[:, 1:, :].astype(np.float64), axis=-1)  # [layers, t-1]
            sums += norms.sum(axis=1)
            count += norms.shape[1]
        if count == 0:
            raise InvalidArgumentError(
                "the reference texts have no token after the first; pass longer texts"
            )
        for layer, s in zip(missing, sums, strict=True):
            cached[layer] = float(s / count)
    return {layer: cached[layer] for layer in wanted}


class SteeringVector:
    """Per-layer steering directions with metadata; arithmetic like a vector.

    Args:
        directions: ``{layer: vector}`` (non-negative layers; vectors 1-D, equal width).
        info: metadata; default: only the width.
        positions: where the vector is added when used for steering (``"all"``,
            ``"prompt"``, ``"generated"``, ``"last"`` or a list of indices).

    Raises:
        InvalidTypeError: a layer that is not an int, a vector that is not real numbers,
            `info` that is not a `VectorInfo`.
        InvalidArgumentError: no layers, NaN/inf entries, a negative layer.
        ShapeError: vectors of different widths, or not 1-D.

    The value is immutable (read-only float32 copies of the inputs); copies, pickles and
    `save`/`load` keep every attribute.

    Arithmetic: ``v * k``, ``k * v``, ``v / k``, ``-v`` scale; ``v + w`` and ``v - w``
    combine two vectors of the same model (layers of either; shared layers added).
    """

    __slots__ = ("_dirs", "_info", "_positions")

    def __init__(
        self,
        directions: Mapping[int, npt.ArrayLike],
        info: VectorInfo | None = None,
        *,
        positions: str | int | Iterable[int] = "all",
    ) -> None:
        if not isinstance(directions, Mapping):
            raise InvalidTypeError(
                f"directions must be a mapping {{layer: vector}}, got {type(directions).__name__}"
            )
        if not directions:
            raise InvalidArgumentError(
                "directions is empty: a SteeringVector needs at least one layer"
            )
        if info is not None and not isinstance(info, VectorInfo):
            raise InvalidTypeError(f"info must be a VectorInfo or None, got {type(info).__name__}")
        dirs: dict[int, FloatArray] = {}
        for layer, v in directions.items():
            if isinstance(layer, bool | np.bool_) or not isinstance(layer, numbers.Integral):
                raise InvalidTypeError(f"layers must be ints, got {type(layer).__name__} {layer!r}")
            layer = _args.index(layer, "layer")
            if layer < 0:
                raise InvalidArgumentError(
                    f"layer {layer}: a SteeringVector stores non-negative layer indices "
                    f"(resolve negative ones with the model first)"
                )
            dirs[int(layer)] = _check_direction(v, int(layer))
        widths = {v.shape[0] for v in dirs.values()}
        if len(widths) != 1:
            raise ShapeError(f"all directions must have the same width, got {sorted(widths)}")
        width = widths.pop()
        if info is None:
            info = VectorInfo(d_model=width)
        elif info.d_model != width:
            raise ShapeError(
                f"the directions have width {width} but the metadata says d_model {info.d_model}"
            )
        self._dirs = dict(sorted(dirs.items()))
        self._info = info
        self._positions: Positions = _check_positions(positions)

    @classmethod
    def _make(
        cls, dirs: dict[int, FloatArray], info: VectorInfo, positions: Positions
    ) -> SteeringVector:
        new = cls.__new__(cls)
        for v in dirs.values():
            v.flags.writeable = False
        new._dirs = dict(sorted(dirs.items()))
        new._info = info
        new._positions = positions
        return new

    # -- views ----------------------------------------------------------------------

    @property
    def vectors(self) -> dict[int, FloatArray]:
        """``{layer: read-only float32 vector}`` (the same name as `Steering.vectors`)."""
        return dict(self._dirs)

    @property
    def directions(self) -> dict[int, FloatArray]:
        """The same as `vectors` (the name earlier releases used)."""
        return dict(self._dirs)

    @property
    def info(self) -> VectorInfo:
        return self._info

    @property
    def layers(self) -> list[int]:
        return list(self._dirs)

    @property
    def d_model(self) -> int:
        return self._info.d_model

    @property
    def positions(self) -> Positions:
        return self._positions if isinstance(self._positions, str) else list(self._positions)

    def __getitem__(self, layer: int) -> FloatArray:
        try:
            return self._dirs[layer]
        except KeyError:
            raise OutOfRangeError(
                f"this vector has no layer {layer}; it has layers {self.layers}"
            ) from None

    def __repr__(self) -> str:
        norms = ", ".join(f"{k}: {v:.3g}" for k, v in self.norms().items())
        return (
            f"SteeringVector(method={self._info.method!r}, d_model={self.d_model}, "
            f"norms={{{norms}}}, positions={self._positions!r})"
        )

    def norms(self) -> dict[int, float]:
        """L2 norm of each layer's direction."""
        return {k: float(np.linalg.norm(v.astype(np.float64))) for k, v in self._dirs.items()}

    def doses(self) -> dict[int, float]:
        """Relative dose per layer: ``||v|| / mean ||h||`` (needs stored residual norms).

        Raises:
            InvalidArgumentError: the vector carries no residual norm for a layer.
        """
        ref = self._require_norms()
        return {k: n / ref[k] for k, n in self.norms().items()}

    def _require_norms(self) -> dict[int, float]:
        ref = self._info.residual_norms
        missing = [k for k in self._dirs if k not in ref or not ref[k] > 0]
        if missing:
            raise InvalidArgumentError(
                f"no residual-stream norm stored for layer(s) {missing}: measure them with "
                f"vec.with_residual_norms(model) (train() and mean_centring() do it)"
            )
        return ref

    # -- arithmetic -----------------------------------------------------------------

    def _scaled(self, k: float) -> SteeringVector:
        dirs = _args.scaled(self._dirs, k, f"scaling by {k}")
        return SteeringVector._make(dirs, self._info, self._positions)

    def __mul__(self, k: float) -> SteeringVector:
        return self._scaled(_check_scalar(k, "multiplied by"))

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> SteeringVector:
        value = _check_scalar(k, "divided by")
        if value == 0.0:
            raise DivisionByZeroError(f"cannot divide a SteeringVector by zero (divided by {k!r})")
        return self._scaled(1.0 / value)

    def __neg__(self) -> SteeringVector:
        return self._scaled(-1.0)

    def __pos__(self) -> SteeringVector:
        return self

    def _check_same_model(self, other: SteeringVector, op: str) -> None:
        a, b = self._info, other._info
        if a.d_model != b.d_model:
            raise ShapeError(f"cannot {op} vectors of widths {a.d_model} and {b.d_model}")
        if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
            raise InvalidArgumentError(
                f"cannot {op} vectors made for different models (fingerprints "
                f"{a.fingerprint[:12]}... and {b.fingerprint[:12]}...)"
            )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            raise InvalidTypeError(
                f"only a SteeringVector can be added to a SteeringVector, got {type(other).__name__}"
            )
        self._check_same_model(other, "add")
        dirs = summed_arrays(self._dirs, other._dirs, "vectors")
        norms = {**other._info.residual_norms, **self._info.residual_norms}
        info = replace(
            self._info,
            fingerprint=self._info.fingerprint or other._info.fingerprint,
            method="combination",
            dataset=None,
            dataset_hash=None,
            residual_norms=norms,
            scores={},
        )
        return SteeringVector._make(dirs, info, self._positions)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            raise InvalidTypeError(
                f"only a SteeringVector can be subtracted from a SteeringVector, got {type(other).__name__}"
            )
        return self + (-other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return (
            self._dirs.keys() == other._dirs.keys()
            and all(np.array_equal(v, other._dirs[k]) for k, v in self._dirs.items())
            and self._positions == other._positions
            and self._info.fingerprint == other._info.fingerprint
        )

    __hash__ = None  # type: ignore[assignment]

    # Immutable: a copy is the same value. Pickling rebuilds through the constructor, so
    # the arrays come back read-only and checked (numpy unpickles them writeable).
    def __copy__(self) -> SteeringVector:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SteeringVector:
        return self

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_restore, (dict(self._dirs), self._info, self.positions))

    # -- derived vectors --------------------------------------------------------------

    def normalized(self) -> SteeringVector:
        """Every layer's direction scaled to unit norm.

        Raises:
            InvalidArgumentError: a layer whose direction is zero.
        """
        dirs = {}
        for layer, v in self._dirs.items():
            n = float(np.linalg.norm(v.astype(np.float64)))
            if n == 0.0:
                raise InvalidArgumentError(f"cannot normalise: layer {layer}'s direction is zero")
            dirs[layer] = (v / np.float32(n)).astype(np.float32)
        return SteeringVector._make(dirs, self._info, self._positions)

    def at(self, layers: int | Iterable[int]) -> SteeringVector:
        """The same vector restricted to some layers.

        Raises:
            OutOfRangeError: a layer the vector does not have.
        """
        items: list[Any] = (
            [layers] if isinstance(layers, numbers.Integral) else _iterable(layers, "layers")
        )
        if not items:
            raise InvalidArgumentError("layers is empty; at() needs at least one layer")
        wanted = [_args.index(layer, "layer") for layer in items]
        missing = [layer for layer in wanted if layer not in self._dirs]
        if missing:
            raise OutOfRangeError(
                f"this vector has no layer(s) {missing}; it has layers {self.layers}"
            )
        return SteeringVector._make(
            {int(k): self._dirs[int(k)] for k in wanted}, self._info, self._positions
        )

    def with_positions(self, positions: str | int | Iterable[int]) -> SteeringVector:
        """The same vector added at other positions (see `steerlab.steering`)."""
        return SteeringVector._make(dict(self._dirs), self._info, _check_positions(positions))

    def dose(self, dose: float) -> SteeringVector:
        """Scale each layer so that ``||coef * v|| = dose * mean ||h||`` at that layer.

        A dose transfers across layers and models where a raw coefficient does not;
        0.05-0.3 is a gentle-to-strong range on most models. The sign is kept: a
        negative dose steers away.

        Raises:
            InvalidArgumentError: no stored residual norm, or a zero direction.
        """
        d = _check_scalar(dose, "dosed by")
        ref = self._require_norms()
        dirs = {}
        for layer, v in self._dirs.items():
            n = float(np.linalg.norm(v.astype(np.float64)))
            if n == 0.0:
                raise InvalidArgumentError(f"cannot dose: layer {layer}'s direction is zero")
            dirs.update(_args.scaled({layer: v}, d * ref[layer] / n, f"dose {d}"))
        return SteeringVector._make(dirs, self._info, self._positions)

    def with_residual_norms(
        self, model: Model, texts: Iterable[str] | None = None
    ) -> SteeringVector:
        """Measure and store the mean residual norm at this vector's layers (see
        `residual_norms`), so that `dose` works."""
        self.check_model(model)
        norms = residual_norms(model, self.layers, texts)
        info = replace(self._info, residual_norms={**self._info.residual_norms, **norms})
        return SteeringVector._make(dict(self._dirs), info, self._positions)

    def cosine(self, other: SteeringVector) -> dict[int, float]:
        """Cosine similarity with `other` at each layer both have.

        Raises:
            InvalidArgumentError: no shared layer, or a zero direction.
            ShapeError: different widths.
        """
        if not isinstance(other, SteeringVector):
            raise InvalidTypeError(f"cosine() takes a SteeringVector, got {type(other).__name__}")
        self._check_same_model(other, "compare")
        shared = [k for k in self._dirs if k in other._dirs]
        if not shared:
            raise InvalidArgumentError(
                f"the vectors share no layer ({self.layers} vs {other.layers})"
            )
        out = {}
        for k in shared:
            a = self._dirs[k].astype(np.float64)
            b = other._dirs[k].astype(np.float64)
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na == 0 or nb == 0:
                raise InvalidArgumentError(f"layer {k}: cosine with a zero direction")
            out[k] = float(a @ b / (na * nb))
        return out

    # -- use ------------------------------------------------------------------------

    def to_steering(self) -> Steering:
        """The vector as a `Steering` (the protocol every ``steering=`` accepts)."""
        return Steering._trusted(dict(self._dirs), self._positions)

    def check_model(self, model: Model) -> None:
        """Raise unless this vector fits `model` (fingerprint, width, layers).

        Raises:
            InvalidArgumentError: made for another model (fingerprint differs).
            ShapeError: another hidden size.
            OutOfRangeError: a layer the model does not have.
        """
        if self.d_model != model.d_model:
            raise ShapeError(
                f"this steering vector has width {self.d_model} but the model's d_model is "
                f"{model.d_model}: it was made for another model"
            )
        fp = self._info.fingerprint
        if fp is not None and fp != model.fingerprint:
            raise InvalidArgumentError(
                f"this steering vector was made for another model (fingerprint "
                f"{fp[:12]}..., model {model.fingerprint[:12]}...); load it with the model it "
                f"was trained on, or pass check_fingerprint=False when loading to adopt it"
            )
        bad = [layer for layer in self._dirs if layer >= model.n_layers]
        if bad:
            raise OutOfRangeError(
                f"this vector steers layer(s) {bad} but the model has {model.n_layers} layers "
                f"(0..{model.n_layers - 1})"
            )

    # -- files ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write safetensors (``layer.N`` tensors) with the metadata as JSON.

        Everything round-trips through `load`: directions, `info` and `positions`.

        Raises:
            InvalidTypeError, InvalidArgumentError: a bad `path`.
            ModelNotFoundError, ModelFormatError: the file cannot be written.
        """
        _core.save_vector(
            _args.path(path, "path"),
            {k: np.ascontiguousarray(v) for k, v in self._dirs.items()},
            self._info.to_json(self.positions),
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: Model | None = None,
        *,
        check_fingerprint: bool = True,
    ) -> SteeringVector:
        """Read a vector written by `save`.

        Args:
            path: the file.
            model: when given, the vector is checked against it (see `check_model`).
            check_fingerprint: False adopts a vector made for another model of the same
                width (the fingerprint is replaced by the model's).

        Raises:
            ModelNotFoundError: no such file.
            ModelFormatError: not a steerlab vector, or corrupt.
            InvalidArgumentError, ShapeError, OutOfRangeError: see `check_model`.
        """
        where = _args.path(path, "path")
        check_fingerprint = _args.flag(check_fingerprint, "check_fingerprint")
        _check_model_arg(model)
        dirs, meta = _core.load_vector(where)
        info, positions = _meta_from_json(meta, where)
        vec = cls(dirs, info, positions=positions)
        if model is not None:
            if not check_fingerprint:
                vec = SteeringVector._make(
                    vec._dirs, replace(info, fingerprint=model.fingerprint), vec._positions
                )
            vec.check_model(model)
        return vec

    def to_gguf(self, path: str | os.PathLike[str], model_hint: str | None = None) -> None:
        """Write a llama.cpp control vector (GGUF) that llama.cpp and repeng read.

        ``direction.N`` = steerlab layer N = output of block N. Directions are written as
        they are (scale with ``vec * k`` first, or use llama.cpp's ``--control-vector-scaled``).

        Raises:
            InvalidArgumentError: the vector has layer 0, which llama.cpp cannot steer.
        """
        if model_hint is not None:
            _args.text(model_hint, "model_hint")
        hint = model_hint or self._info.arch or "unknown"
        _core.save_control_vector(
            _args.path(path, "path"),
            {k: np.ascontiguousarray(v) for k, v in self._dirs.items()},
            hint,
        )

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str], model: Model | None = None) -> SteeringVector:
        """Read a llama.cpp / repeng control vector (GGUF).

        The file carries no fingerprint; with `model` given the vector adopts the model's
        and is checked for width and layers.

        Raises:
            ModelNotFoundError, ModelFormatError: a missing, corrupt or non-control-vector
                file.
            ShapeError, OutOfRangeError: it does not fit `model`.
        """
        where = _args.path(path, "path")
        _check_model_arg(model)
        dirs, hint, _count = _core.load_control_vector(where)
        if not dirs:
            raise ModelFormatError(f"{where}: the control vector has no direction tensors")
        width = next(iter(dirs.values())).shape[0]
        info = VectorInfo(
            d_model=width,
            arch=hint,
            method="control_vector",
            dataset=os.path.basename(where),
            created=_now(),
            fingerprint=model.fingerprint if model is not None else None,
            n_layers=model.n_layers if model is not None else None,
        )
        vec = cls(dirs, info)
        if model is not None:
            vec.check_model(model)
        return vec

    # -- construction from data ----------------------------------------------------------

    @classmethod
    def train(
        cls,
        model: Model,
        pairs: ContrastPairs,
        layers: int | Iterable[int],
        method: str = "mean_diff",
        position: str | int | None = None,
        *,
        batch_size: int = 16,
        reference_texts: Iterable[str] | None = None,
        progress: bool | None = None,
    ) -> SteeringVector:
        """Build a vector from contrast pairs.

        Args:
            model: the model to read.
            pairs: a `ContrastPairs`.
            layers: layer index or indices (negative: from the end).
            method: ``"mean_diff"`` (CAA), ``"pca_diff"``, ``"pca_center"`` or
                ``"logistic"`` (see `steerlab._core.fit_direction`).
            position: read position; default the pairs' own (``"last"``, ``"mean"``, int).
            batch_size: texts per forward pass.
            reference_texts: texts for the residual norms behind `dose` (default: 64
                sentences of the shipped background corpus).
            progress: progress bars (None: automatic).

        Returns:
            The vector, with metadata (fingerprint, method, dataset hash, norms, scores).

        Raises:
            InvalidArgumentError: an unknown method, too few pairs for the method (PCA
                and logistic need 2), identical sides.
            OutOfRangeError: a layer outside the model.
        """
        from steerlab.contrast import ContrastPairs

        if not isinstance(pairs, ContrastPairs):
            raise InvalidTypeError(
                f"pairs must be a steerlab.ContrastPairs, got {type(pairs).__name__}"
            )
        if method not in METHODS:
            raise InvalidArgumentError(f"unknown method {method!r}; expected one of {METHODS}")
        wanted = _layer_list(model, layers)
        pos_acts, neg_acts = capture_pairs(
            model, pairs, wanted, position, batch_size=batch_size, progress=progress
        )
        dirs: dict[int, FloatArray] = {}
        scores: dict[int, float] = {}
        for j, layer in enumerate(wanted):
            direction, score = _core.fit_direction(
                np.ascontiguousarray(pos_acts[:, j]), np.ascontiguousarray(neg_acts[:, j]), method
            )
            dirs[layer] = direction
            if score is not None:
                scores[layer] = float(score)
        info = VectorInfo(
            d_model=model.d_model,
            fingerprint=model.fingerprint,
            arch=model.arch,
            n_layers=model.n_layers,
            method=method,
            position=pairs.position if position is None else position,
            dataset=pairs.name,
            dataset_hash=pairs.dataset_hash(),
            n_samples=len(pairs),
            residual_norms=residual_norms(model, wanted, reference_texts, progress=progress),
            scores=scores,
            created=_now(),
        )
        return cls(dirs, info)

    @classmethod
    def optimize(
        cls,
        model: Model,
        prompts: Sequence[str],
        completions: Sequence[str],
        *,
        layers: int | Iterable[int],
        negatives: Sequence[str] | None = None,
        steps: int = 100,
        lr: float = 1e-2,
        batch_size: int = 8,
        seed: int = 0,
        positions: str | int | Iterable[int] = "all",
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        init: SteeringVector | None = None,
        progress: bool | None = None,
    ) -> SteeringVector:
        """Train an additive vector per layer so that the steered model gives
        ``completions`` high likelihood after ``prompts`` (method ``"optimized"``).

        The trained-vector baseline of AxBench (Wu et al. 2025; ReFT-r1 / RePS family)
        and the SteerVec baseline of activation scaling (Stoehr et al. 2024). The loss is
        the cross-entropy of the completion tokens (each token weighs the same); with
        ``negatives``, ``softplus(-(lp+ - lp-))`` per example, ``lp±`` the mean
        log-probability per token of the completion and of the negative: log p(completion)
        - log p(negative) is maximised, bounded so the negative is not pushed to zero
        probability for its own sake. AdamW (candle-nn) with gradient clipping; the
        blocks below the first layer run once per example (frozen prefix). Trains through
        the model as loaded: on the default quantized GGUF the weights stay quantized and
        frozen.

        Args:
            model: the model to steer (its weights are not changed).
            prompts: prompt texts, encoded as `Model.encode` does (format chat prompts
                with `Model.chat_prompt` first if you want them).
            completions: one target continuation per prompt (encoded without special
                tokens).
            layers: layer index or indices (resid_post; negative from the end).
            negatives: optional, one unwanted continuation per prompt.
            steps: optimiser steps (one mini-batch each; batches are drawn in a seeded
                order, epoch after epoch).
            lr: AdamW learning rate.
            batch_size: examples per step.
            seed: the batch order (training is deterministic for a seed).
            positions: where the vector is added while training (as `Steering`;
                default every prompt and completion token).
            weight_decay: AdamW's decoupled weight decay.
            max_grad_norm: clip the gradient to this L2 norm (None: no clipping).
            init: start from this vector (its layers must cover ``layers``); default 0.
            progress: a tqdm bar with the running loss (None: automatic).

        Returns:
            The vector at the step of lowest batch loss, with ``.history`` (one dict per
            step: ``loss``, ``grad_norm``, ``lr``, ``ce``, and ``margin`` with negatives)
            and the run's settings in ``info.training``. Ctrl-C stops between (or within)
            steps and returns the best vector so far with a `TrainingInterrupted`
            warning.

        Raises:
            InvalidTypeError, InvalidArgumentError: bad arguments (empty or unequal
                lists, a prompt or completion with no token, a non-positive lr...).
            OutOfRangeError: a layer outside the model.
            ContextLengthError: a prompt plus completion longer than the context.
            KeyboardInterrupt: Ctrl-C before the first step finished.
        """
        from steerlab.optimize import optimize_vector

        wanted = _layer_list(model, layers)
        start = None
        if init is not None:
            if not isinstance(init, SteeringVector):
                raise InvalidTypeError(
                    f"init must be a SteeringVector or None, got {type(init).__name__}"
                )
            init.check_model(model)
            missing = [layer for layer in wanted if layer not in init.vectors]
            if missing:
                raise InvalidArgumentError(
                    f"init has no vector for layer(s) {missing}; it has layers {init.layers}"
                )
            start = [init.vectors[layer] for layer in wanted]
        run = optimize_vector(
            model,
            prompts,
            completions,
            layers=wanted,
            negatives=negatives,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            positions=positions,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            init=start,
            progress=progress,
        )
        texts = [*prompts, *completions, *(negatives or [])]
        info = VectorInfo(
            d_model=model.d_model,
            fingerprint=model.fingerprint,
            arch=model.arch,
            n_layers=model.n_layers,
            method="optimized",
            dataset_hash=_hash_texts([str(t) for t in texts]),
            n_samples=run.n_samples,
            created=_now(),
            history=run.history,
            training=run.training,
        )
        return cls(run.vectors, info, positions=positions)

    @property
    def history(self) -> list[dict[str, float]]:
        """Trained vectors: one dict per optimiser step (at least ``loss``); else []."""
        return [dict(r) for r in self._info.history]

    def plot_history(self, ax: Any = None) -> Any:
        """The loss curve of a trained vector (matplotlib Figure; needs matplotlib).

        Raises:
            InvalidArgumentError: the vector has no training history.
        """
        from steerlab.plots import plot_loss

        if not self._info.history:
            raise InvalidArgumentError(
                f"this vector (method {self._info.method!r}) has no training history"
            )
        return plot_loss(self._info.history, ax=ax, title=f"{self._info.method} vector")

    @classmethod
    def mean_centring(
        cls,
        model: Model,
        target_texts: Iterable[str],
        background: Iterable[str] | None = None,
        layers: int | Iterable[int] = -1,
        position: str | int = "mean_skip_first",
        *,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> SteeringVector:
        """Mean-centring (Jorgensen et al. 2023): mean activation on the target texts
        minus the mean over a background corpus.

        Args:
            model: the model.
            target_texts: texts that show what to steer toward (a topic, a genre...).
            background: a general corpus (default: the ~330 neutral sentences shipped in
                ``steerlab/data/background.txt``).
            layers: layer index or indices.
            position: ``"mean_skip_first"`` (default: mean over the tokens after the
                first, the attention sink), ``"mean"``, ``"last"``, or an index.
            batch_size: texts per forward pass.
            progress: progress bars.

        Raises:
            InvalidArgumentError: no target or background texts.
        """
        from steerlab.datasets import background_corpus

        targets = _text_list(target_texts, "target_texts")
        back = _text_list(background_corpus() if background is None else background, "background")
        wanted = _layer_list(model, layers)
        t = _capture(model, targets, wanted, position, batch_size, progress)
        b = _capture(model, back, wanted, position, batch_size, progress)
        dirs = {
            layer: _core.mean_centring(np.ascontiguousarray(t[:, j]), np.ascontiguousarray(b[:, j]))
            for j, layer in enumerate(wanted)
        }
        info = VectorInfo(
            d_model=model.d_model,
            fingerprint=model.fingerprint,
            arch=model.arch,
            n_layers=model.n_layers,
            method="mean_centring",
            position=position,
            dataset_hash=_hash_texts([*targets, "\x00background\x00", *back]),
            n_samples=len(targets),
            residual_norms=residual_norms(model, wanted, progress=progress),
            created=_now(),
        )
        return cls(dirs, info)

    @classmethod
    def mean_of(
        cls,
        model: Model,
        texts: Iterable[str],
        layers: int | Iterable[int] = -1,
        position: str | int = "mean_skip_first",
        *,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> SteeringVector:
        """The plain mean activation over `texts` (the baseline mean-centring improves on)."""
        items = _text_list(texts, "texts")
        wanted = _layer_list(model, layers)
        a = _capture(model, items, wanted, position, batch_size, progress)
        dirs = {layer: a[:, j].astype(np.float64).mean(axis=0) for j, layer in enumerate(wanted)}
        info = VectorInfo(
            d_model=model.d_model,
            fingerprint=model.fingerprint,
            arch=model.arch,
            n_layers=model.n_layers,
            method="mean",
            position=position,
            dataset_hash=_hash_texts(items),
            n_samples=len(items),
            residual_norms=residual_norms(model, wanted, progress=progress),
            created=_now(),
        )
        return cls(dirs, info)


def _restore(dirs: dict[int, Any], info: VectorInfo, positions: Positions) -> SteeringVector:
    """Unpickle a `SteeringVector` (through the constructor: a pickle is outside data)."""
    return SteeringVector(dirs, info, positions=positions)


def _check_model_arg(model: Any) -> None:
    from steerlab.model import Model

    if model is not None and not isinstance(model, Model):
        raise InvalidTypeError(
            f"model must be a steerlab.Model or None, got {type(model).__name__}"
        )


def _iterable(value: Any, name: str) -> list[Any]:
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise InvalidTypeError(
            f"{name} must be an int or a list of ints, got {type(value).__name__}"
        )
    return list(value)


def _text_list(texts: Any, name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise InvalidTypeError(f"{name} must be a list of str")
    out = list(texts)
    if not out:
        raise InvalidArgumentError(f"{name} is empty; pass at least one text")
    for i, t in enumerate(out):
        _args.text(t, f"{name}[{i}]")
    return out


def _hash_texts(texts: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        h.update(len(t.encode()).to_bytes(8, "little"))
        h.update(t.encode())
    return h.hexdigest()[:16]


def _layer_list(model: Model, layers: int | Iterable[int]) -> list[int]:
    from steerlab.model import Model

    if not isinstance(model, Model):  # the first use of `model` in every constructor
        raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
    items: list[Any] = (
        [layers] if isinstance(layers, numbers.Integral) else _iterable(layers, "layers")
    )
    if not items:
        raise InvalidArgumentError("layers is empty; name at least one layer")
    out = []
    for layer in items:
        if isinstance(layer, bool | np.bool_) or not isinstance(layer, numbers.Integral):
            raise InvalidTypeError(f"layers must be ints, got {type(layer).__name__} {layer!r}")
        resolved = model._resolve_layer(_args.index(layer, "layer"))
        if resolved not in out:
            out.append(resolved)
    return out


def _capture(
    model: Model,
    texts: list[str],
    layers: list[int],
    position: str | int,
    batch_size: int,
    progress: bool | None,
) -> FloatArray:
    """`Model.capture` for one-vector-per-text positions (never 'all')."""
    from steerlab.model import _check_position

    position = _check_position(position)
    if position == "all":
        raise InvalidArgumentError("read position 'all' does not give one vector per text")
    acts = model.capture(texts, layers, position, batch_size, progress=progress)
    if not isinstance(acts, np.ndarray):
        raise InvalidArgumentError(f"read position {position!r} gives no array")
    return acts


def capture_pairs(
    model: Model,
    pairs: ContrastPairs,
    layers: list[int],
    position: str | int | None = None,
    *,
    batch_size: int = 16,
    progress: bool | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Activations of both sides of every pair: two float32 ``[n, len(layers), d]``."""
    pos = pairs.position if position is None else position
    acts = _capture(model, pairs.positives + pairs.negatives, layers, pos, batch_size, progress)
    n = len(pairs)
    return acts[:n], acts[n:]
