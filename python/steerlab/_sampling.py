"""Generation settings and stop strings: what `Model.generate` and `Model.generate_stream`
check before the engine runs, and how their text is cut and streamed afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from steerlab import _args, _core
from steerlab.errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "MAX_NEW_TOKENS",
    "RowText",
    "Sampling",
    "check_stop",
    "cut_at_stop",
    "partial_stop",
    "stream",
]

# Longest generation the engine takes (it stores counts in i64; a generation also ends at
# the model's context length).
MAX_NEW_TOKENS = _args.I64_MAX


class Sampling:
    """Generation settings: their types checked here, their values by the engine
    (`steerlab._core.GenConfig`, made at once so a bad value fails before any work)."""

    def __init__(
        self,
        max_new_tokens: Any,
        temperature: Any,
        top_k: Any,
        top_p: Any,
        seed: Any,
        stop: Any,
    ) -> None:
        # Types, and the integer widths the engine stores them in (i64, u64).
        self.max_new_tokens = _args.integer(
            max_new_tokens, "max_new_tokens", maximum=MAX_NEW_TOKENS
        )
        self.temperature = _args.number(
            temperature, "temperature", "a finite number >= 0 (0 = greedy)"
        )
        self.top_k = None if top_k is None else _args.integer(top_k, "top_k", maximum=_args.I64_MAX)
        self.top_p = None if top_p is None else _args.number(top_p, "top_p", "in (0, 1]")
        self.seed = (
            None if seed is None else _args.integer(seed, "seed", minimum=0, maximum=_args.U64_MAX)
        )
        if self.top_k is not None and self.top_k < _args.I64_MIN:
            raise InvalidArgumentError(f"top_k must be >= 1, got {_args.show(self.top_k)}")
        if self.max_new_tokens < _args.I64_MIN:
            raise InvalidArgumentError(
                f"max_new_tokens must be >= 0, got {_args.show(self.max_new_tokens)}"
            )
        self.stop = check_stop(stop)
        self.config()  # the engine checks the values now, before any work

    def config(self, seed_offset: int = 0, ignore_eos: bool = False) -> _core.GenConfig:
        """The engine's settings (values checked there). The engine seeds row r of a call
        with seed + r; offsetting by the batch's first row gives prompt i the seed
        ``seed + i`` whatever the batch size."""
        seed = None if self.seed is None else (self.seed + seed_offset) % 2**64
        return _core.GenConfig(
            self.max_new_tokens,
            self.temperature,
            self.top_k,
            self.top_p,
            seed,
            self.stop,
            ignore_eos,
        )


def check_stop(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    items = [stop] if isinstance(stop, str) else stop
    if isinstance(items, bytes | bytearray | Mapping) or not isinstance(items, Iterable):
        raise InvalidTypeError(f"stop must be a str or a list of str, got {type(stop).__name__}")
    out = []
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise InvalidTypeError(
                f"stop strings must be str, got {type(s).__name__} {_args.show(s)}"
            )
        out.append(_args.text(s, f"stop[{i}]"))
    return out or None


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    if not stop:
        return text, False
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def partial_stop(text: str, stop: list[str] | None) -> int:
    """Length of the longest end of `text` that could begin a stop string."""
    best = 0
    for s in stop or ():
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class RowText:
    """The text of one generated row, fed one token at a time: the pieces `stream` yields.

    `push` takes each new token and returns the text that is now safe to show (possibly
    ``""``): a piece never splits a multi-byte character nor shows part of a stop string,
    and all pieces plus `flush` join to the whole text cut at the first stop string (as
    `Model.generate` returns it). A server runs one per batch row.

    Attributes:
        ids: the tokens pushed so far (eos tokens are not pushed: the engine ends a row
            at its eos without yielding it).
        stopped: a stop string was found; the row's text is complete (push no more).
    """

    __slots__ = ("_core", "_emitted", "_stop", "_text", "ids", "stopped")

    def __init__(self, core: _core.Model, stop: list[str] | None) -> None:
        self._core = core
        self._stop = stop
        self.ids: list[int] = []
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def push(self, token: int) -> str:
        """Add the row's next token; return the text now ready (``""`` when none is)."""
        self.ids.append(token)
        text = self._text = self._core.decode(self.ids, True)
        cut, hit = cut_at_stop(text, self._stop)
        if hit:
            self.stopped = True
            self._text = cut
            return self.flush()
        if text.endswith("\ufffd"):
            return ""  # an incomplete multi-byte character: wait for the next token
        ready = len(text) - partial_stop(text, self._stop)
        if ready > self._emitted:
            piece = text[self._emitted : ready]
            self._emitted = ready
            return piece
        return ""

    def flush(self) -> str:
        """The text not yet returned (call once the row has ended)."""
        piece = self._text[self._emitted :]
        self._emitted = len(self._text)
        return piece

    @property
    def text(self) -> str:
        """The row's text so far (cut at a stop string once one is found)."""
        return self._text


def stream(
    core: _core.Model, generation: _core.Generation, stop: list[str] | None
) -> Iterator[str]:
    """The text of `generation` (one row) in pieces, as its tokens come.

    A piece never splits a multi-byte character nor shows part of a stop string, and the
    pieces join to the whole text cut at the first stop string (as `Model.generate`
    returns it). See `RowText`, which does this for one row of any batch.
    """
    eos = set(core.eos_ids)
    row = RowText(core, stop)
    while True:
        step = generation.step()
        if step is None or step[0] is None or step[0] in eos:
            break
        piece = row.push(step[0])
        if piece:
            yield piece
        if row.stopped:
            return
    if piece := row.flush():
        yield piece
