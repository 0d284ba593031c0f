"""Checks of the arguments that describe how and where a `Model` runs and what it reads.

`Model.load` / `Model.from_pretrained` take a dtype and a device; `Model.capture` (and
the steering-vector trainers built on it) take layers and a capture position. Each
checker returns the value the extension takes or raises a `SteerlabError` subclass whose
message names the argument, the value and what was expected (the generic checkers they
build on are in `steerlab._args`).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from steerlab import _args
from steerlab.errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "CAPTURE_POSITIONS",
    "DTYPES",
    "check_device",
    "check_dtype",
    "check_layers",
    "check_position",
]

DTYPES = ("auto", "f32")
CAPTURE_POSITIONS = ("last", "mean", "mean_skip_first", "all")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_dtype(dtype: Any) -> str:
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidArgumentError(
            f"dtype must be 'auto' (GGUF weights stay quantized) or 'f32', got {_args.show(dtype)}"
        )
    return dtype


def check_device(device: Any) -> str:
    if not isinstance(device, str) or _DEVICE.fullmatch(device) is None:
        raise InvalidArgumentError(
            f"device must be 'cpu', 'cuda' or 'cuda:N', got {_args.show(device)}"
        )
    return device


def check_layers(layers: Any) -> list[int | str]:
    """Layer indices (negative: from the end), or ``"embed"`` for the embedding output."""
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        items = [layers]
    elif isinstance(layers, Mapping):
        raise InvalidTypeError(
            f"layers must be an int, 'embed', or a list of those, got {type(layers).__name__}"
        )
    else:
        items = list(layers)
    out: list[int | str] = []
    for layer in items:
        if isinstance(layer, str) and layer == "embed":
            out.append("embed")
            continue
        if isinstance(layer, bool | np.bool_) or not isinstance(layer, numbers.Integral):
            raise InvalidTypeError(
                f"layers must be an int, 'embed', or a list of those, got {type(layer).__name__} {_args.show(layer)}"
            )
        out.append(_args.index(layer, "layer"))
    if not out:
        raise InvalidArgumentError("layers is empty; name at least one layer")
    return out


def check_position(position: Any) -> str | int:
    """A capture position: one of `CAPTURE_POSITIONS` or a token index."""
    if isinstance(position, str):
        if position not in CAPTURE_POSITIONS:
            raise InvalidArgumentError(
                f"unknown position {position!r}; expected 'last', 'mean', 'mean_skip_first', "
                f"'all' or an int"
            )
        return position
    if isinstance(position, bool | np.bool_) or not isinstance(position, numbers.Integral):
        raise InvalidTypeError(
            f"position must be 'last', 'mean', 'mean_skip_first', 'all' or an int, got "
            f"{type(position).__name__} {_args.show(position)}"
        )
    return _args.index(position, "position")
