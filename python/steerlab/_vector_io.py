"""The files of `steerlab.vectors.SteeringVector`: steerlab's safetensors (``layer.N``
tensors, metadata as JSON) and llama.cpp / repeng control vectors (GGUF). The reading
functions return ``(directions, VectorInfo[, positions])`` for the class to wrap; the
engine (`steerlab._core`) does the parsing. Data flows one way: `steerlab.vectors`
imports this module, never the reverse.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _args, _core
from steerlab._layers import Positions
from steerlab._vector_meta import VectorInfo, _meta_from_json, _now
from steerlab.errors import InvalidTypeError, ModelFormatError

if TYPE_CHECKING:
    from steerlab.model import Model

FloatArray = npt.NDArray[np.float32]


def save(
    path: str | os.PathLike[str],
    dirs: dict[int, FloatArray],
    info: VectorInfo,
    positions: Positions,
) -> None:
    """`SteeringVector.save` (see there)."""
    _core.save_vector(
        _args.path(path, "path"),
        {k: np.ascontiguousarray(v) for k, v in dirs.items()},
        info.to_json(positions),
    )


def load(
    path: str | os.PathLike[str], model: Model | None, check_fingerprint: bool
) -> tuple[dict[int, Any], VectorInfo, Positions]:
    """The directions, metadata and positions of a file written by `save`; without
    `check_fingerprint` the metadata adopts `model`'s fingerprint (the caller checks the
    vector against `model`)."""
    where = _args.path(path, "path")
    check_fingerprint = _args.flag(check_fingerprint, "check_fingerprint")
    _check_model_arg(model)
    dirs, meta = _core.load_vector(where)
    info, positions = _meta_from_json(meta, where)
    if model is not None and not check_fingerprint:
        info = replace(info, fingerprint=model.fingerprint)
    return dirs, info, positions


def to_gguf(
    path: str | os.PathLike[str],
    dirs: dict[int, FloatArray],
    info: VectorInfo,
    model_hint: str | None,
) -> None:
    """`SteeringVector.to_gguf` (see there)."""
    if model_hint is not None:
        _args.text(model_hint, "model_hint")
    hint = model_hint or info.arch or "unknown"
    _core.save_control_vector(
        _args.path(path, "path"),
        {k: np.ascontiguousarray(v) for k, v in dirs.items()},
        hint,
    )


def from_gguf(
    path: str | os.PathLike[str], model: Model | None
) -> tuple[dict[int, Any], VectorInfo]:
    """The directions and metadata of a llama.cpp / repeng control vector (the caller
    checks them against `model`)."""
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
    return dirs, info


def _check_model_arg(model: Any) -> None:
    from steerlab.model import Model

    if model is not None and not isinstance(model, Model):
        raise InvalidTypeError(
            f"model must be a steerlab.Model or None, got {type(model).__name__}"
        )
