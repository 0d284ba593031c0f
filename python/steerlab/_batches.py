"""The batch loops behind `Model.capture`, `logits`, `token_logprobs` and `generate`,
and the tokenization of their inputs.

Each loop takes inputs already checked and tokenized (`encode`), runs the engine one batch at a time
(the engine releases the GIL for the whole batch), shows a progress bar, and makes the
engine's errors say which inputs the failing batch held.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from steerlab import _core
from steerlab._progress import progress_bar
from steerlab._sampling import Sampling
from steerlab.errors import BackendError, ContextLengthError, InvalidArgumentError, SteerlabError
from steerlab.steering import Row, batch_rows

__all__ = [
    "Batches",
    "MonitoredGeneration",
    "batch_errors",
    "capture",
    "encode",
    "generate",
    "generate_monitored",
    "logits",
    "token_logprobs",
]

FloatArray: TypeAlias = npt.NDArray[np.float32]


def encode(core: _core.Model, texts: list[str], name: str) -> list[list[int]]:
    """Ids per text with special tokens, exactly as `Model.encode` gives them (one path:
    an index taken from `encode` is the position the model sees); checks emptiness
    and context length.
    """
    out = []
    limit = core.max_context
    for i, text in enumerate(texts):
        ids = core.encode(text, True)
        if not ids:
            raise InvalidArgumentError(f"{name}[{i}] is empty after tokenization")
        if len(ids) > limit:
            raise ContextLengthError(
                f"{name}[{i}] is {len(ids)} tokens long but the model's context is {limit} tokens"
            )
        out.append(ids)
    return out


@contextlib.contextmanager
def batch_errors(start: int, stop: int, total: int) -> Iterator[None]:
    """The engine numbers rows within a batch: say which prompts the batch holds."""
    try:
        yield
    except SteerlabError as exc:
        if stop - start == total:
            raise
        raise type(exc)(
            f"in the batch of inputs {start}..{stop - 1} (its row r is input {start} + r): {exc}"
        ) from None


class Batches:
    """``(start, stop)`` of each batch of `total` inputs, with a progress bar.

    Use as a context manager (the bar closes on exit); the bar advances once a batch's
    loop body has finished.
    """

    def __init__(
        self, total: int, batch_size: int, progress: bool | None, desc: str, unit: str
    ) -> None:
        self.total = total
        self.batch_size = batch_size
        self._bar = progress_bar(progress, total, batch_size, desc, unit)

    def __enter__(self) -> Batches:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.close()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for start in range(0, self.total, self.batch_size):
            stop = min(start + self.batch_size, self.total)
            yield start, stop
            self._bar.update(stop - start)

    def errors(self, start: int, stop: int) -> contextlib.AbstractContextManager[None]:
        """`batch_errors` for the batch ``start..stop``."""
        return batch_errors(start, stop, self.total)


def capture(
    core: _core.Model,
    ids: list[list[int]],
    layers: list[int | str],
    reduce: str | int,
    rows: list[Row] | None,
    batch_size: int,
    progress: bool | None,
    site: str = "resid_post",
) -> FloatArray | list[FloatArray]:
    """`Model.capture` over checked ids: ``[n, len(layers), d]``, or a list for ``"all"``."""
    parts: list[Any] = []
    with Batches(len(ids), batch_size, progress, "capture", "text") as batches:
        for start, stop in batches:
            with batches.errors(start, stop):
                captures, _ = core.forward(
                    ids[start:stop], layers, reduce, batch_rows(rows, start, stop), False, site
                )
            if captures is None:
                raise BackendError("the forward pass returned no captures")
            if reduce == "all":
                parts.extend(np.asarray(a, dtype=np.float32) for a in captures)
            else:
                parts.append(np.asarray(captures, dtype=np.float32))
    if reduce == "all":
        return parts
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def logits(
    core: _core.Model,
    ids: list[list[int]],
    rows: list[Row] | None,
    batch_size: int,
    progress: bool | None,
) -> FloatArray:
    """`Model.logits` over checked ids: ``[n, vocab_size]``."""
    parts = []
    with Batches(len(ids), batch_size, progress, "logits", "text") as batches:
        for start, stop in batches:
            with batches.errors(start, stop):
                _, out = core.forward(
                    ids[start:stop], [], "last", batch_rows(rows, start, stop), True
                )
            if out is None:
                raise BackendError("the forward pass returned no logits")
            parts.append(np.asarray(out, dtype=np.float32))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def token_logprobs(
    core: _core.Model,
    ids: list[list[int]],
    rows: list[Row] | None,
    batch_size: int,
    progress: bool | None,
) -> list[FloatArray]:
    """`Model.token_logprobs` over checked ids: one ``[len(ids[i]) - 1]`` array per input."""
    out: list[FloatArray] = []
    with Batches(len(ids), batch_size, progress, "score", "text") as batches:
        for start, stop in batches:
            with batches.errors(start, stop):
                part = core.token_logprobs(ids[start:stop], batch_rows(rows, start, stop))
            out.extend(np.asarray(a, dtype=np.float32) for a in part)
    return out


def generate(
    core: _core.Model,
    ids: list[list[int]],
    rows: list[Row] | None,
    sampling: Sampling,
    batch_size: int,
    progress: bool | None,
    ignore_eos: bool,
) -> list[list[int]]:
    """`Model.generate` over checked ids: the new token ids of each input."""
    new_ids: list[list[int]] = []
    with Batches(len(ids), batch_size, progress, "generate", "prompt") as batches:
        for start, stop in batches:
            with batches.errors(start, stop):
                out = core.generate(
                    ids[start:stop],
                    batch_rows(rows, start, stop),
                    sampling.config(seed_offset=start, ignore_eos=ignore_eos),
                )
            new_ids.extend(list(row) for row in out)
    return new_ids


def traced(
    core: _core.Model,
    ids: list[list[int]],
    rows: list[Row] | None,
    config: _core.GenConfig,
    forced: list[list[int]] | None,
    logprobs: bool,
    batch_size: int,
    progress: bool | None,
    desc: str = "generate",
    then_sample: bool = False,
) -> tuple[list[list[int]], list[list[float]] | None, list[list[float]] | None]:
    """`_core.Model.generate_traced` over checked ids in batches: new ids, controller
    gates (None when no batch ran a controller) and new-token log-probabilities."""
    new_ids: list[list[int]] = []
    gates: list[list[float]] = []
    lps: list[list[float]] = []
    any_gate = False
    with Batches(len(ids), batch_size, progress, desc, "prompt") as batches:
        for start, stop in batches:
            with batches.errors(start, stop):
                out, g, lp = core.generate_traced(
                    ids[start:stop],
                    batch_rows(rows, start, stop),
                    config,
                    None if forced is None else forced[start:stop],
                    logprobs,
                    then_sample,
                )
            new_ids.extend(list(r) for r in out)
            any_gate = any_gate or g is not None
            gates.extend([list(x) for x in g] if g is not None else [[] for _ in out])
            if lp is not None:
                lps.extend(list(x) for x in lp)
    return new_ids, (gates if any_gate else None), (lps if logprobs else None)


@dataclass(frozen=True)
class MonitoredGeneration:
    """One prompt's generation with the activations that produced it.

    Attributes:
        text: the new text (special tokens skipped, cut before a stop string).
        ids: the new token ids (not cut: a row that hit a stop string ends with the
            token that completed it).
        activations: float32 ``[len(layers), len(ids), d_model]``: at each requested
            layer (and site), the activation whose output predicted each new token (the
            last prompt position for the first, then the position of the token before).
    """

    text: str
    ids: list[int]
    activations: FloatArray


def generate_monitored(
    core: _core.Model,
    ids: list[list[int]],
    layers: list[int | str],
    site: str,
    rows: list[Row] | None,
    sampling: Sampling,
    batch_size: int,
    progress: bool | None,
) -> list[tuple[list[int], FloatArray]]:
    """`Model.generate_monitored` over checked ids: (new ids, activations) per input."""
    out: list[tuple[list[int], FloatArray]] = []
    with Batches(len(ids), batch_size, progress, "generate", "prompt") as batches:
        for start, stop in batches:
            with batches.errors(start, stop):
                new, acts = core.generate_monitored(
                    ids[start:stop],
                    layers,
                    site,
                    batch_rows(rows, start, stop),
                    sampling.config(seed_offset=start),
                )
            out.extend(
                (list(r), np.asarray(a, dtype=np.float32)) for r, a in zip(new, acts, strict=True)
            )
    return out
