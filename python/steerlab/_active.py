"""Which steering a `Model` call applies: its own ``steering=`` argument, or else the one
set by the innermost ``with model.steering(...)`` block of the current thread or task.

The blocks are kept in a `ContextVar` holding ``{id(model): prepared steering}``; the
mapping is never mutated: entering a block sets a copy with one entry changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from steerlab.errors import SteerlabError
from steerlab.steering import PreparedSteering, Row, prepare

__all__ = ["check_compatible", "rows", "steering"]

_ACTIVE: ContextVar[Mapping[int, PreparedSteering | None] | None] = ContextVar(
    "steerlab_active_steering", default=None
)


@contextlib.contextmanager
def steering(model: object, steering: Any) -> Iterator[None]:
    """The body of `Model.steering`: make `steering` the active one for `model`."""
    if steering is not None:
        check_compatible(model, steering)
    prepared = prepare(steering)
    active = dict(_ACTIVE.get() or {})
    active[id(model)] = prepared
    token = _ACTIVE.set(active)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def rows(model: object, steering: Any, n_rows: int) -> list[Row] | None:
    """Per-row steering of a call on `model` with `n_rows` inputs (None: unsteered)."""
    if steering is None:
        prepared = (_ACTIVE.get() or {}).get(id(model))
    else:
        check_compatible(model, steering)
        prepared = prepare(steering)
    return None if prepared is None else prepared.rows(n_rows)


def check_compatible(model: object, steering: Any) -> None:
    """Let vectors that know their model (e.g. `SteeringVector`) check `model`."""
    items = steering if isinstance(steering, list | tuple) else [steering]
    for i, item in enumerate(items):
        check = getattr(item, "check_model", None)
        if callable(check):
            try:
                check(model)
            except SteerlabError as exc:
                if len(items) > 1 or isinstance(steering, list | tuple):
                    raise type(exc)(f"steering[{i}]: {exc}") from None
                raise
