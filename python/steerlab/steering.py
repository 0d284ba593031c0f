"""Steering as data: a list of operations, each at a site, a layer and positions.

`Steering` is the one "what to apply" type. An operation acts on the activation ``h``
at a site of a layer, on some positions of each row:

- ``add``: ``h + v`` (the classic steering vector; `Steering({layer: v})` is a list of
  these at ``resid_post``);
- ``scale``: ``h * (1 + alpha)``, ``alpha`` one number or one per position (activation
  scaling, Stoehr et al. 2024);
- ``project_out``: ``h - (h . u) u`` for a unit direction ``u`` (directional ablation,
  Arditi et al. 2024);
- ``clamp``: ``h + (c - h . u) u``: the projection on ``u`` set to ``c``.

Sites follow TransformerLens's hook names: ``resid_post`` (layer ``i`` = the output of
decoder block ``i``, Hugging Face ``hidden_states[i + 1]``), ``resid_mid`` (between the
attention and MLP sub-blocks), ``attn_out`` and ``mlp_out`` (what each sub-block adds to
the residual; Gemma: after its post-norms), and ``embed`` (the input of block 0).

A steering argument (``steering=`` of `Model.capture`, `Model.logits`, `Model.generate`,
`Model.generate_stream`, and `Model.steering`) may be

- ``None``: no steering;
- a `Steering`;
- a mapping ``{layer: vector}`` (vectors already scaled; added at all positions);
- any object with a ``to_steering()`` method returning one of the two above (e.g. a
  `SteeringVector`);
- a list or tuple with one of the above (or ``None``) per prompt: row ``i`` of the
  batch gets entry ``i``, so a coefficient sweep or several concepts run as one batch.

All of it is normalised into the extension's row format: one list of
``(site, layer, op, float32 array, value, positions)`` per batch row (see
``steerlab/_core.pyi``).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from steerlab import _args
from steerlab.errors import (
    DivisionByZeroError,
    InvalidArgumentError,
    InvalidTypeError,
    SteerlabError,
)

__all__ = ["OPERATIONS", "POSITION_NAMES", "SITES", "Operation", "Steering", "SteeringLike"]

from steerlab._layers import (
    LEARNED_OPERATIONS,
    OPERATIONS,
    POSITION_NAMES,
    SITES,
    Intervention,
    OpName,
    Positions,
    PositionsLike,
    Row,
    SiteName,
    check_positions,
    check_site,
    summed_arrays,
)

_check_positions = check_positions  # the name vectors.py and older code import


class _HasToSteering(Protocol):
    def to_steering(self) -> Steering | Mapping[int, npt.ArrayLike]: ...


SteeringLike: TypeAlias = "Steering | Mapping[int, npt.ArrayLike] | _HasToSteering | None"


def _check_layer(layer: Any) -> int:
    return _args.index(layer, "a layer index")


def _layer_at(layer: Any, site: Any) -> tuple[int, SiteName]:
    """The checked (layer, site) of an operation; ``embed`` (the input of block 0) has
    no layer and takes 0."""
    index = _check_layer(layer)
    name = check_site(site)
    if name == "embed" and index != 0:
        raise InvalidArgumentError(
            f"site 'embed' (the input of block 0) has no layer, got layer {index}; expected layer 0"
        )
    return index, name


def _unit(direction: Any, name: str) -> npt.NDArray[np.float32]:
    v = _args.vector(direction, name)
    n = float(np.linalg.norm(v.astype(np.float64)))
    if n == 0.0:
        raise InvalidArgumentError(f"{name} is zero; expected a nonzero direction")
    u = (v.astype(np.float64) / n).astype(np.float32)
    u.flags.writeable = False
    return u


@dataclass(frozen=True, eq=False)
class Operation:
    """One operation of a `Steering` (immutable; build it with the `Steering`
    constructors).

    Attributes:
        op: ``"add"``, ``"scale"``, ``"project_out"``, ``"clamp"``, or a learned
            module of activation scaling (`steerlab.ActivationScalars` makes them):
            ``"activation_scalar"`` (alpha [P], one per prompt position:
            ``h * (1 + value * alpha[p])``), ``"position_vectors"`` (v [P * d_model]
            row-major: ``h + value * v[p]``), ``"dynamic_scalar"`` (w then b,
            [d_model + 1]: ``h * (1 + value * (w . h + b))``).
        layer: the block index (negative from the end; ignored for ``site="embed"``).
        array: float32, read-only: the vector [d_model] (``add``), alpha [1] or [n]
            (``scale``), the unit direction [d_model] (``project_out``, ``clamp``).
        site: one of `SITES`.
        value: the clamp target; the strength beta of a learned module; 0.0 for the
            other operations.
        positions: a name from `POSITION_NAMES` or a list of indices.
    """

    op: OpName
    layer: int
    array: npt.NDArray[np.float32]
    site: SiteName = "resid_post"
    value: float = 0.0
    positions: Positions = "all"

    def key(self) -> tuple[str, str, int, str]:
        return (self.op, self.site, self.layer, repr(self.positions))

    def scaled(self, k: float) -> Operation:
        """This operation at strength ``k``: ``add`` scales v, ``scale`` scales alpha
        (``h * (1 + k alpha)``, the strength beta of activation scaling).

        Raises:
            InvalidArgumentError: ``project_out`` and ``clamp`` have no strength.
        """
        if self.op in LEARNED_OPERATIONS:
            beta = _args.real(self.value * k, f"beta scaled by {k}")
            return Operation(self.op, self.layer, self.array, self.site, beta, self.positions)
        if self.op in ("project_out", "clamp"):
            raise InvalidArgumentError(
                f"cannot scale a Steering that holds a {self.op} operation (at "
                f"{self.site}[{self.layer}]): it has no strength; scale the other "
                f"operations before joining them with +"
            )
        arr = _args.scaled({self.layer: self.array}, k, f"scaling by {k}")[self.layer]
        return Operation(self.op, self.layer, arr, self.site, self.value, self.positions)

    def to_row(self) -> Intervention:
        """The extension's tuple ``(site, layer, op, array, value, positions)``."""
        positions = self.positions if isinstance(self.positions, str) else list(self.positions)
        return (self.site, self.layer, self.op, self.array, self.value, positions)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Operation):
            return NotImplemented
        return (
            self.key() == other.key()
            and self.value == other.value
            and np.array_equal(self.array, other.array)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        norm = float(np.linalg.norm(self.array.astype(np.float64)))
        extra = (
            f", value={self.value}"
            if self.op == "clamp"
            else f", beta={self.value:g}"
            if self.op in LEARNED_OPERATIONS
            else ""
        )
        return (
            f"{self.op}({self.site}[{self.layer}], <{self.array.shape[0]} floats, norm "
            f"{norm:.4g}>{extra}, positions={self.positions!r})"
        )


class Steering:
    """What to apply to a model's activations: an ordered list of operations.

    ``Steering({layer: v}, positions)`` is the classic form: add each (already scaled)
    vector to the residual stream after block ``layer``, so ``Steering({12: v}) * 4.0``
    adds ``4 v``. The constructors `Steering.add`, `Steering.scale`,
    `Steering.project_out` and `Steering.clamp` make one operation at any site; ``+``
    joins steerings (operations applied in order; two ``add`` operations at the same
    site, layer and positions merge into their sum).

    Args:
        vectors: ``{layer: vector}``; layer ``i`` is the output of decoder block ``i``
            (negative counts from the end); each vector is 1-D with the model's
            ``d_model`` entries (converted to float32, copied).
        positions: where to apply: ``"all"`` (prompt and generated tokens, the
            default), ``"all_but_first"`` (every position except the first, a BOS
            token: HyperSteer's convention), ``"prompt"``, ``"generated"``, ``"last"``
            (the last prompt token and every generated token), or a list of indices into the unpadded prompt
            (negative from its end; decode step ``k`` is position ``len(prompt) + k``),
            as `Model.encode` numbers the tokens. Nothing is skipped silently: when the
            steering is used, an index outside a row (before its start, or past its
            prompt plus the ``max_new_tokens - 1`` generated tokens the model reads)
            raises `OutOfRangeError` naming the row, and ``"generated"`` in a call that
            reads no generated token (capture, logits, ``max_new_tokens=1``) raises
            `InvalidArgumentError`. For prompts of different lengths, use negative
            indices or give each row its own steering.
        site: where the vectors are added (default ``"resid_post"``; see `SITES`).

    Raises:
        InvalidTypeError: a layer that is not an int, a vector that is not real numbers
            (strings, bools, complex), positions that are not a name or ints.
        ShapeError: a vector that is not 1-D or is empty.
        InvalidArgumentError: a NaN/inf entry (or one beyond float32's range), unknown
            or empty positions, an unknown site.
        OutOfRangeError: a layer or position index beyond -2**63..2**63-1.

    Arithmetic: ``s * k``, ``k * s``, ``s / k``, ``-s`` scale every operation's strength
    (`Operation.scaled`); ``s + t`` joins, ``s - t`` is ``s + (-t)``. Widths, layers and
    positions are checked against the model when the steering is used.
    """

    __slots__ = ("_ops",)

    def __init__(
        self,
        vectors: Mapping[int, npt.ArrayLike] | None = None,
        positions: PositionsLike = "all",
        *,
        site: SiteName = "resid_post",
    ):
        if vectors is None:
            vectors = {}
        if not isinstance(vectors, Mapping):
            raise InvalidTypeError(
                f"vectors must be a mapping {{layer: vector}}, got {type(vectors).__name__}"
            )
        site = check_site(site)
        pos = check_positions(positions)
        ops: list[Operation] = []
        seen: set[int] = set()
        for layer, vector in vectors.items():
            index = _check_layer(layer)
            if index in seen:
                raise InvalidArgumentError(f"layer {index} appears twice in the steering")
            seen.add(index)
            vec = _args.vector(vector, f"the steering vector for layer {index}")
            ops.append(Operation("add", index, vec, site, 0.0, pos))
        self._ops: tuple[Operation, ...] = tuple(ops)

    @classmethod
    def from_operations(cls, ops: Iterable[Operation]) -> Steering:
        """A steering of these operations, in this order."""
        new = cls.__new__(cls)
        items = tuple(ops)
        for o in items:
            if not isinstance(o, Operation):
                raise InvalidTypeError(f"expected Operation values, got {type(o).__name__}")
        new._ops = items
        return new

    @classmethod
    def _trusted(
        cls, vectors: dict[int, npt.NDArray[np.float32]], positions: Positions
    ) -> Steering:
        ops = []
        for layer, v in vectors.items():
            v.flags.writeable = False
            ops.append(Operation("add", layer, v, "resid_post", 0.0, positions))
        return cls.from_operations(ops)

    @classmethod
    def add(
        cls,
        layer: int,
        vector: npt.ArrayLike,
        *,
        site: SiteName = "resid_post",
        positions: PositionsLike = "all",
    ) -> Steering:
        """Add ``vector`` [d_model] at ``site`` of block ``layer``: ``h + v``."""
        index, site = _layer_at(layer, site)
        vec = _args.vector(vector, f"the steering vector for {site}[{index}]")
        op = Operation("add", index, vec, site, 0.0, check_positions(positions))
        return cls.from_operations([op])

    @classmethod
    def scale(
        cls,
        layer: int,
        alpha: float | npt.ArrayLike,
        *,
        site: SiteName = "resid_post",
        positions: PositionsLike = "all",
    ) -> Steering:
        """Scale the activation: ``h * (1 + alpha)`` (``alpha = 0`` is the identity,
        ``-1`` zeroes it). Activation scaling, Stoehr et al. 2024, at the outputs of
        attention and MLP (``site="attn_out"`` / ``"mlp_out"``).

        Args:
            alpha: one number for every position, or a 1-D array with one value per
                position of the row (position ``p`` takes ``alpha[p]``; it must cover
                every position the row reads, prompt and generated).
        """
        index, site = _layer_at(layer, site)
        if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool | np.bool_):
            value = _args.real(alpha, f"scale alpha for {site}[{index}]")
            arr = np.array([value], dtype=np.float32)
            arr.flags.writeable = False
        else:
            arr = _args.vector(alpha, f"scale alpha for {site}[{index}]")
        op = Operation("scale", index, arr, site, 0.0, check_positions(positions))
        return cls.from_operations([op])

    @classmethod
    def project_out(
        cls,
        layer: int,
        direction: npt.ArrayLike,
        *,
        site: SiteName = "resid_post",
        positions: PositionsLike = "all",
    ) -> Steering:
        """Remove the component along ``direction``: ``h - (h . u) u`` with ``u`` the
        direction divided by its norm (directional ablation, Arditi et al. 2024).

        Raises:
            InvalidArgumentError: a zero direction (and see `Steering`).
        """
        index, site = _layer_at(layer, site)
        u = _unit(direction, f"the project_out direction for {site}[{index}]")
        op = Operation("project_out", index, u, site, 0.0, check_positions(positions))
        return cls.from_operations([op])

    @classmethod
    def clamp(
        cls,
        layer: int,
        direction: npt.ArrayLike,
        value: float,
        *,
        site: SiteName = "resid_post",
        positions: PositionsLike = "all",
    ) -> Steering:
        """Set the projection on ``direction`` to ``value``: ``h + (value - h . u) u`` with
        ``u`` the direction divided by its norm.

        Raises:
            InvalidArgumentError: a zero direction, a non-finite value (and see
                `Steering`).
        """
        index, site = _layer_at(layer, site)
        u = _unit(direction, f"the clamp direction for {site}[{index}]")
        c = _args.real(value, f"clamp value for {site}[{index}]")
        op = Operation("clamp", index, u, site, c, check_positions(positions))
        return cls.from_operations([op])

    # -- views ----------------------------------------------------------------------

    @property
    def ops(self) -> list[Operation]:
        """The operations, in the order they are applied."""
        return list(self._ops)

    @property
    def vectors(self) -> dict[int, npt.NDArray[np.float32]]:
        """``{layer: vector}`` of the ``add`` operations at ``resid_post`` (read-only
        float32 arrays; the other operations are in `ops`).

        Raises:
            InvalidArgumentError: a layer has several such operations (on different
                positions): read `ops` instead.
        """
        out: dict[int, npt.NDArray[np.float32]] = {}
        for o in self._ops:
            if o.op == "add" and o.site == "resid_post":
                if o.layer in out:
                    raise InvalidArgumentError(
                        f"layer {o.layer} has several add operations (on different "
                        f"positions); read Steering.ops instead of .vectors"
                    )
                out[o.layer] = o.array
        return out

    @property
    def positions(self) -> Positions:
        """The positions every operation applies to.

        Raises:
            InvalidArgumentError: the operations have different positions (see `ops`).
        """
        specs = {repr(o.positions) for o in self._ops}
        if len(specs) > 1:
            raise InvalidArgumentError(
                "the operations of this steering apply to different positions; read "
                "Steering.ops for each one's"
            )
        if not self._ops:
            return "all"
        p = self._ops[0].positions
        return p if isinstance(p, str) else list(p)

    @property
    def layers(self) -> list[int]:
        """The layers this steering touches, in order of first use."""
        return list(dict.fromkeys(o.layer for o in self._ops))

    def to_steering(self) -> Steering:
        """Return self (the protocol every steering-like object implements)."""
        return self

    def to_rows(self) -> Row:
        """This steering as one batch row of the extension's format.

        Returns:
            ``[(site, layer, op, float32 array, value, positions), ...]``.
        """
        return [o.to_row() for o in self._ops]

    def with_positions(self, positions: PositionsLike) -> Steering:
        """The same operations applied at other positions."""
        pos = check_positions(positions)
        return Steering.from_operations(
            Operation(o.op, o.layer, o.array, o.site, o.value, pos) for o in self._ops
        )

    # -- arithmetic -----------------------------------------------------------------

    def _scaled(self, k: float) -> Steering:
        return Steering.from_operations(o.scaled(k) for o in self._ops)

    def __mul__(self, k: float) -> Steering:
        return self._scaled(_args.factor(k, "Steering", "multiplied by"))

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> Steering:
        value = _args.factor(k, "Steering", "divided by")
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
        ops = list(self._ops)
        for o in other._ops:
            same = next(
                (i for i, p in enumerate(ops) if o.op == "add" and p.key() == o.key()), None
            )
            if same is None:
                ops.append(o)
                continue
            p = ops[same]
            total = summed_arrays({o.layer: p.array}, {o.layer: o.array}, "steerings")[o.layer]
            ops[same] = Operation("add", p.layer, total, p.site, 0.0, p.positions)
        return Steering.from_operations(ops)

    def __radd__(self, other: object) -> Steering:
        # sum([s, t]) starts from 0.
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self
        raise InvalidTypeError(
            f"only a Steering can be added to a Steering, got {type(other).__name__}"
        )

    def __sub__(self, other: Steering) -> Steering:
        if not isinstance(other, Steering):
            raise InvalidTypeError(
                f"only a Steering can be subtracted from a Steering, got {type(other).__name__}"
            )
        return self + (-other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Steering):
            return NotImplemented
        return len(self._ops) == len(other._ops) and all(
            a == b for a, b in zip(self._ops, other._ops, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    # Immutable: a copy is the same value. Pickling rebuilds through the constructors,
    # so arrays come back read-only and checked (numpy would unpickle them writeable).
    def __copy__(self) -> Steering:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Steering:
        return self

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_restore_ops, ([o.to_row() for o in self._ops],))

    def __repr__(self) -> str:
        plain = all(o.op == "add" and o.site == "resid_post" for o in self._ops)
        if plain and len({repr(o.positions) for o in self._ops}) <= 1:
            parts = ", ".join(
                f"{o.layer}: <{o.array.shape[0]} floats, norm {float(np.linalg.norm(o.array)):.4g}>"
                for o in self._ops
            )
            return f"Steering({{{parts}}}, positions={self.positions!r})"
        return f"Steering([{', '.join(repr(o) for o in self._ops)}])"


def _restore(vectors: dict[int, Any], positions: Positions) -> Steering:
    """Unpickle a `Steering` pickled by steerlab <= 0.x (a dict of vectors)."""
    return Steering(vectors, positions)


def _restore_ops(rows: list[Any]) -> Steering:
    """Unpickle a `Steering` (checked again: a pickle is data from outside)."""
    out = Steering()
    for site, layer, op, array, value, positions in rows:
        if op == "add":
            out = out + Steering.add(layer, array, site=site, positions=positions)
        elif op == "scale":
            out = out + Steering.scale(layer, array, site=site, positions=positions)
        elif op == "project_out":
            out = out + Steering.project_out(layer, array, site=site, positions=positions)
        elif op == "clamp":
            out = out + Steering.clamp(layer, array, value, site=site, positions=positions)
        elif op in LEARNED_OPERATIONS:
            index, name = _layer_at(layer, site)
            arr = _args.vector(array, f"the {op} parameters")
            beta = _args.real(value, f"the {op} strength")
            pos = check_positions(positions)
            out = out + Steering.from_operations([Operation(op, index, arr, name, beta, pos)])
        else:
            raise InvalidArgumentError(f"unknown operation {op!r} in a pickled Steering")
    return out


def _one_row(item: Any) -> Row:
    """Normalise one steering-like value (not a per-row list) into a row."""
    if item is None:
        return []
    if isinstance(item, Steering):
        return item.to_rows()
    row_item = getattr(item, "_row_item", None)
    if callable(row_item):
        # An engine module that is not a per-site operation (a steering controller).
        return [row_item()]
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
