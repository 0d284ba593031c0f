"""Steering as data: which vector to add at which layer and positions, per batch row.

A steering argument (``steering=`` of `Model.capture`, `Model.logits`, `Model.generate`,
`Model.generate_stream`, and `Model.steering`) may be

- ``None``: no steering;
- a `Steering`: vectors per layer plus the positions they apply to;
- a mapping ``{layer: vector}`` (vectors already scaled; applied at all positions);
- any object with a ``to_steering()`` method returning one of the two above (e.g. a
  trained steering vector);
- a list or tuple with one of the above (or ``None``) per prompt: row ``i`` of the
  batch gets entry ``i``, so a coefficient sweep or several concepts run as one batch.

All of it is normalised into the extension's row format: one list of
``(layer, float32 vector, positions)`` per batch row (see ``steerlab/_core.pyi``).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from steerlab import _args
from steerlab.errors import (
    DivisionByZeroError,
    InvalidArgumentError,
    InvalidTypeError,
    ShapeError,
    SteerlabError,
)

__all__ = ["POSITION_NAMES", "Steering", "SteeringLike"]

#: Named position sets a `Steering` can apply to (or pass a list of indices).
POSITION_NAMES = ("all", "prompt", "generated", "last")

PositionName: TypeAlias = Literal["all", "prompt", "generated", "last"]
PositionsLike: TypeAlias = PositionName | int | Iterable[int]
Positions: TypeAlias = PositionName | list[int]
Intervention: TypeAlias = tuple[int, npt.NDArray[np.float32], Positions]
Row: TypeAlias = list[Intervention]


class _HasToSteering(Protocol):
    def to_steering(self) -> Steering | Mapping[int, npt.ArrayLike]: ...


SteeringLike: TypeAlias = "Steering | Mapping[int, npt.ArrayLike] | _HasToSteering | None"


def _check_layer(layer: Any) -> int:
    return _args.index(layer, "a layer index")


def _check_vector(vector: Any, layer: int) -> npt.NDArray[np.float32]:
    return _args.vector(vector, f"the steering vector for layer {layer}")


def _check_positions(positions: Any) -> Positions:
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


def _check_scalar(k: Any, op: str) -> float:
    return _args.factor(k, "Steering", op)


class Steering:
    """Vectors to add to the residual stream, per layer, at a set of positions.

    The vectors are already scaled: `Steering({12: v}) * 4.0` adds ``4 v`` after block 12.

    Args:
        vectors: ``{layer: vector}``; layer ``i`` is the output of decoder block ``i``
            (negative counts from the end); each vector is 1-D with the model's
            ``d_model`` entries (converted to float32, copied).
        positions: where to add: ``"all"`` (prompt and generated tokens, the default),
            ``"prompt"``, ``"generated"``, ``"last"`` (the last prompt token and every
            generated token), or a list of indices into the unpadded prompt (negative
            from its end; decode step ``k`` is position ``len(prompt) + k``), as
            `Model.encode` numbers the tokens. Nothing is skipped silently: when the
            steering is used, an index outside a row (before its start, or past its
            prompt plus the ``max_new_tokens - 1`` generated tokens the model reads)
            raises `OutOfRangeError` naming the row, and ``"generated"`` in a call that
            reads no generated token (capture, logits, ``max_new_tokens=1``) raises
            `InvalidArgumentError`. For prompts of different lengths, use negative
            indices or give each row its own steering.

    Raises:
        InvalidTypeError: a layer that is not an int, a vector that is not real numbers
            (strings, bools, complex), positions that are not a name or ints.
        ShapeError: a vector that is not 1-D or is empty.
        InvalidArgumentError: a NaN/inf entry (or one beyond float32's range), unknown
            or empty positions.
        OutOfRangeError: a layer or position index beyond -2**63..2**63-1.

    Arithmetic: ``s * k``, ``k * s``, ``s / k``, ``-s`` scale every vector; ``s + t``
    (and ``s - t``) join two steerings with the same positions, adding vectors on shared
    layers. The vector width is checked against the model when the steering is used.
    """

    __slots__ = ("_positions", "_vectors")

    def __init__(self, vectors: Mapping[int, npt.ArrayLike], positions: PositionsLike = "all"):
        if not isinstance(vectors, Mapping):
            raise InvalidTypeError(
                f"vectors must be a mapping {{layer: vector}}, got {type(vectors).__name__}"
            )
        checked: dict[int, npt.NDArray[np.float32]] = {}
        for layer, vector in vectors.items():
            index = _check_layer(layer)
            if index in checked:
                raise InvalidArgumentError(f"layer {index} appears twice in the steering")
            checked[index] = _check_vector(vector, index)
        self._vectors = checked
        self._positions = _check_positions(positions)

    @classmethod
    def _trusted(
        cls, vectors: dict[int, npt.NDArray[np.float32]], positions: Positions
    ) -> Steering:
        new = cls.__new__(cls)
        for v in vectors.values():
            v.flags.writeable = False
        new._vectors = vectors
        new._positions = positions
        return new

    @property
    def vectors(self) -> dict[int, npt.NDArray[np.float32]]:
        """``{layer: vector}`` (read-only float32 arrays)."""
        return dict(self._vectors)

    @property
    def positions(self) -> Positions:
        """The positions spec: a name from `POSITION_NAMES` or a list of indices."""
        return self._positions if isinstance(self._positions, str) else list(self._positions)

    @property
    def layers(self) -> list[int]:
        """The layers this steering touches, in insertion order."""
        return list(self._vectors)

    def to_steering(self) -> Steering:
        """Return self (the protocol every steering-like object implements)."""
        return self

    def to_rows(self) -> Row:
        """This steering as one batch row of the extension's format.

        Returns:
            ``[(layer, float32 contiguous vector, positions), ...]``.
        """
        return [(layer, vec, self.positions) for layer, vec in self._vectors.items()]

    def with_positions(self, positions: PositionsLike) -> Steering:
        """The same vectors applied at other positions."""
        return Steering._trusted(dict(self._vectors), _check_positions(positions))

    def _scaled(self, k: float) -> Steering:
        return Steering._trusted(_args.scaled(self._vectors, k, f"scaling by {k}"), self._positions)

    def __mul__(self, k: float) -> Steering:
        return self._scaled(_check_scalar(k, "multiplied by"))

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> Steering:
        value = _check_scalar(k, "divided by")
        if value == 0.0:
            raise DivisionByZeroError(f"cannot divide a Steering by zero (divided by {k!r})")
        return self._scaled(1.0 / value)

    def __neg__(self) -> Steering:
        return self._scaled(-1.0)

    def __pos__(self) -> Steering:
        return self

    def __add__(self, other: Steering) -> Steering:
        if not isinstance(other, Steering):
            raise InvalidTypeError(
                f"only a Steering can be added to a Steering, got {type(other).__name__}"
            )
        if self._positions != other._positions:
            raise InvalidArgumentError(
                f"cannot add steerings with different positions ({self._positions!r} and "
                f"{other._positions!r}); pass them as separate rows or give them the same "
                f"positions with .with_positions()"
            )
        vectors = dict(self._vectors)
        for layer, v in other._vectors.items():
            if layer in vectors:
                if vectors[layer].shape != v.shape:
                    raise ShapeError(
                        f"cannot add vectors of widths {vectors[layer].shape[0]} and "
                        f"{v.shape[0]} at layer {layer}"
                    )
                with np.errstate(over="ignore", invalid="ignore"):
                    total = vectors[layer] + v
                if not np.isfinite(total).all():
                    raise InvalidArgumentError(
                        f"adding the steerings overflows float32 at layer {layer} (max 3.4e38)"
                    )
                vectors[layer] = total
            else:
                vectors[layer] = v
        return Steering._trusted(vectors, self._positions)

    def __sub__(self, other: Steering) -> Steering:
        if not isinstance(other, Steering):
            raise InvalidTypeError(
                f"only a Steering can be subtracted from a Steering, got {type(other).__name__}"
            )
        return self + (-other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Steering):
            return NotImplemented
        return (
            self._positions == other._positions
            and self._vectors.keys() == other._vectors.keys()
            and all(np.array_equal(v, other._vectors[k]) for k, v in self._vectors.items())
        )

    __hash__ = None  # type: ignore[assignment]

    # Immutable: a copy is the same value. Pickling rebuilds read-only arrays (numpy
    # would otherwise unpickle them writeable, and editing one would change what is
    # steered).
    def __copy__(self) -> Steering:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Steering:
        return self

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        positions = self._positions if isinstance(self._positions, str) else list(self._positions)
        return (_restore, (dict(self._vectors), positions))

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{layer}: <{v.shape[0]} floats, norm {float(np.linalg.norm(v)):.4g}>"
            for layer, v in self._vectors.items()
        )
        return f"Steering({{{parts}}}, positions={self._positions!r})"


def _restore(vectors: dict[int, Any], positions: Positions) -> Steering:
    """Unpickle a `Steering` (checked again: a pickle is data from outside)."""
    return Steering(vectors, positions)


def _one_row(item: Any) -> Row:
    """Normalise one steering-like value (not a per-row list) into a row."""
    if item is None:
        return []
    if isinstance(item, Steering):
        return item.to_rows()
    to_steering = getattr(item, "to_steering", None)
    if callable(to_steering):
        item = to_steering()
        if isinstance(item, Steering):
            return item.to_rows()
        if not isinstance(item, Mapping):
            raise InvalidTypeError(
                f"to_steering() must return a Steering or a {{layer: vector}} mapping, "
                f"got {type(item).__name__}"
            )
    if isinstance(item, Mapping):
        return Steering(item).to_rows()
    if isinstance(item, np.ndarray):
        raise InvalidTypeError(
            f"steering is a bare array of shape {item.shape}, but a bare array has no layer: "
            "pass {layer: vector} or steerlab.Steering({layer: vector})"
        )
    raise InvalidTypeError(
        f"steering must be None, a steerlab.Steering, a {{layer: vector}} mapping, an object "
        f"with to_steering(), or a list of those (one per prompt); got {type(item).__name__}"
    )


class PreparedSteering:
    """A validated steering argument, ready to expand to any number of batch rows."""

    __slots__ = ("_per_row", "_single")

    def __init__(self, steering: Any):
        self._single: Row | None = None
        self._per_row: list[Row] | None = None
        if isinstance(steering, list | tuple):
            rows = []
            for i, item in enumerate(steering):
                try:
                    rows.append(_one_row(item))
                except SteerlabError as exc:
                    raise type(exc)(f"steering[{i}]: {exc}") from None
            self._per_row = rows
        else:
            self._single = _one_row(steering)

    def rows(self, n_rows: int) -> list[Row] | None:
        """The rows for a call with `n_rows` prompts, or None when nothing is steered.

        Raises:
            InvalidArgumentError: a per-row list whose length is not `n_rows`.
        """
        if self._per_row is not None:
            if len(self._per_row) != n_rows:
                raise InvalidArgumentError(
                    f"the steering list has {len(self._per_row)} entries but there are "
                    f"{n_rows} prompts; pass one steering (or None) per prompt, or a single "
                    f"steering for all of them"
                )
            return self._per_row if any(self._per_row) else None
        if not self._single:
            return None
        return [self._single] * n_rows


def prepare(steering: Any) -> PreparedSteering | None:
    """Validate a steering argument (see the module docstring); None when it is None."""
    return None if steering is None else PreparedSteering(steering)


def batch_rows(rows: list[Row] | None, start: int, stop: int) -> list[Row] | None:
    """The rows of one batch ``[start, stop)``, or None when none of them is steered."""
    if rows is None:
        return None
    part = rows[start:stop]
    return part if any(part) else None
