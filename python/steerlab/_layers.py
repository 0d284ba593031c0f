"""Shared pieces of the per-layer value types (`Steering`, `SteeringVector`): the names
of sites, operations and positions, the positions check, and the one place per-layer
arrays are added together (scaling lives in `steerlab._args.scaled`)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeAlias, cast, get_args

import numpy as np
import numpy.typing as npt

from steerlab import _args, _core
from steerlab.errors import InvalidArgumentError, InvalidTypeError, ShapeError

#: Named position sets an operation can apply to (or pass a list of indices).
POSITION_NAMES = ("all", "all_but_first", "prompt", "generated", "last")
#: The sites an operation or a capture can name.
SITES = ("resid_post", "resid_mid", "attn_out", "mlp_out", "embed")
PositionName: TypeAlias = Literal["all", "all_but_first", "prompt", "generated", "last"]
PositionsLike: TypeAlias = PositionName | int | Iterable[int]
Positions: TypeAlias = PositionName | list[int]
SiteName: TypeAlias = Literal["resid_post", "resid_mid", "attn_out", "mlp_out", "embed"]
OpName: TypeAlias = Literal[
    "add",
    "scale",
    "project_out",
    "clamp",
    "activation_scalar",
    "position_vectors",
    "dynamic_scalar",
]
#: The operations a `Steering` holds: the four fixed ones, then the learned modules of
#: activation scaling (`steerlab.ActivationScalars`), whose strength beta is ``value``.
OPERATIONS: tuple[str, ...] = get_args(OpName)
#: The learned operations: their ``value`` is a strength beta that `*` scales.
LEARNED_OPERATIONS = OPERATIONS[4:]
Intervention: TypeAlias = tuple[str, int, str, npt.NDArray[np.float32], float, Positions]
#: One batch row: operations, or the engine's steering controller (generation only).
Row: TypeAlias = list["Intervention | _core.Controller"]


def check_positions(positions: Any) -> Positions:
    """A positions spec: a name from `POSITION_NAMES` or a non-empty list of indices.

    Raises:
        InvalidTypeError, InvalidArgumentError, OutOfRangeError: see `Steering`.
    """
    if isinstance(positions, str):
        if positions not in POSITION_NAMES:
            raise InvalidArgumentError(
                f"unknown steering positions {positions!r}; expected one of "
                f"{', '.join(repr(p) for p in POSITION_NAMES)} or a list of indices"
            )
        return cast(PositionName, positions)
    if isinstance(positions, bool | np.bool_):
        raise InvalidTypeError(f"steering positions must be a name or indices, got {positions!r}")
    if isinstance(positions, numbers.Integral):
        return [_args.index(positions, "steering position")]
    if isinstance(positions, Iterable) and not isinstance(positions, bytes | bytearray | Mapping):
        out: list[int] = []
        for p in positions:
            if isinstance(p, bool | np.bool_) or not isinstance(p, numbers.Integral):
                raise InvalidTypeError(
                    f"steering positions must be ints, got {type(p).__name__} {p!r}"
                )
            out.append(_args.index(p, "steering position"))
        if not out:
            raise InvalidArgumentError("steering positions is an empty list; name at least one")
        return out
    raise InvalidTypeError(
        f"steering positions must be one of {POSITION_NAMES} or a list of ints, "
        f"got {type(positions).__name__}"
    )


def summed_arrays(
    a: Mapping[int, npt.NDArray[np.float32]], b: Mapping[int, npt.NDArray[np.float32]], what: str
) -> dict[int, npt.NDArray[np.float32]]:
    """``a + b`` layer by layer (layers of either; shared layers added), read-only.

    Raises:
        ShapeError: vectors of different widths at a shared layer.
        InvalidArgumentError: the sum overflows float32.
    """
    out = dict(a)
    for layer, v in b.items():
        if layer not in out:
            out[layer] = v
            continue
        if out[layer].shape != v.shape:
            raise ShapeError(
                f"cannot add vectors of widths {out[layer].shape[0]} and {v.shape[0]} at "
                f"layer {layer}"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            total = (out[layer] + v).astype(np.float32)
        if not np.isfinite(total).all():
            raise InvalidArgumentError(
                f"adding the {what} overflows float32 at layer {layer} (max 3.4e38)"
            )
        total.flags.writeable = False
        out[layer] = total
    return out


def check_site(site: Any) -> SiteName:
    """A site name from `SITES`.

    Raises:
        InvalidTypeError: not a str.
        InvalidArgumentError: an unknown name.
    """
    if not isinstance(site, str):
        raise InvalidTypeError(f"site must be a str, got {_args.show(site)}")
    if site not in SITES:
        raise InvalidArgumentError(
            f"unknown site {site!r}; expected one of {', '.join(repr(s) for s in SITES)}"
        )
    return cast(SiteName, site)
