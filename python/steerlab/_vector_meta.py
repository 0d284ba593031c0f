"""`VectorInfo`, the metadata a `steerlab.vectors.SteeringVector` carries; the checks
that read it back from a vector file's JSON (a file is data from outside: every field is
checked for its type and for values no real vector has); and the checks on what a vector
is made of (its directions, the metadata of two vectors combined).

Pickles of `VectorInfo` name this module: keep the class here, under this name (pickles
written before it moved name ``steerlab.vectors.VectorInfo``, which is re-exported
there).
"""

from __future__ import annotations

import datetime as _dt
import json
import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _args, _core
from steerlab._layers import Positions
from steerlab._layers import check_positions as _check_positions
from steerlab.errors import (
    InvalidArgumentError,
    InvalidTypeError,
    ModelFormatError,
    OutOfRangeError,
    ShapeError,
    SteerlabError,
)

if TYPE_CHECKING:
    from steerlab.model import Model

__all__ = ["VectorInfo"]

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


def check_directions(
    directions: Mapping[int, npt.ArrayLike], info: VectorInfo | None
) -> tuple[dict[int, FloatArray], VectorInfo]:
    """The checks of `SteeringVector`'s constructor (see there): float32 copies of the
    directions by layer, and the metadata (default: only the width)."""
    if not isinstance(directions, Mapping):
        raise InvalidTypeError(
            f"directions must be a mapping {{layer: vector}}, got {type(directions).__name__}"
        )
    if not directions:
        raise InvalidArgumentError("directions is empty: a SteeringVector needs at least one layer")
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
    return dirs, info


def _check_direction(v: Any, layer: int) -> FloatArray:
    return _args.vector(v, f"the direction for layer {layer}")


def check_same_model(a: VectorInfo, b: VectorInfo, op: str) -> None:
    """Raise unless vectors with metadata `a` and `b` can be combined by `op`."""
    if a.d_model != b.d_model:
        raise ShapeError(f"cannot {op} vectors of widths {a.d_model} and {b.d_model}")
    if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
        raise InvalidArgumentError(
            f"cannot {op} vectors made for different models (fingerprints "
            f"{a.fingerprint[:12]}... and {b.fingerprint[:12]}...)"
        )


def required_norms(info: VectorInfo, layers: list[int]) -> dict[int, float]:
    """`info`'s residual norms, which must cover `layers` (see `SteeringVector.dose`)."""
    ref = info.residual_norms
    missing = [k for k in layers if k not in ref or not ref[k] > 0]
    if missing:
        raise InvalidArgumentError(
            f"no residual-stream norm stored for layer(s) {missing}: measure them with "
            f"vec.with_residual_norms(model) (train() and mean_centring() do it)"
        )
    return ref


def combined(a: VectorInfo, b: VectorInfo) -> VectorInfo:
    """The metadata of the sum of vectors with metadata `a` and `b`."""
    norms = {**b.residual_norms, **a.residual_norms}
    return replace(
        a,
        fingerprint=a.fingerprint or b.fingerprint,
        method="combination",
        dataset=None,
        dataset_hash=None,
        residual_norms=norms,
        scores={},
    )


def check_fits(info: VectorInfo, layers: list[int], model: Model) -> None:
    """`SteeringVector.check_model` (see there) for a vector with metadata `info` that
    steers `layers`."""
    if info.d_model != model.d_model:
        raise ShapeError(
            f"this steering vector has width {info.d_model} but the model's d_model is "
            f"{model.d_model}: it was made for another model"
        )
    fp = info.fingerprint
    if fp is not None and fp != model.fingerprint:
        raise InvalidArgumentError(
            f"this steering vector was made for another model (fingerprint "
            f"{fp[:12]}..., model {model.fingerprint[:12]}...); load it with the model it "
            f"was trained on, or pass check_fingerprint=False when loading to adopt it"
        )
    bad = [layer for layer in layers if layer >= model.n_layers]
    if bad:
        raise OutOfRangeError(
            f"this vector steers layer(s) {bad} but the model has {model.n_layers} layers "
            f"(0..{model.n_layers - 1})"
        )
