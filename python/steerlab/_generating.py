"""`Model`'s generation methods (`generate`, `generate_monitored`, `generate_stream`), as
a base class `Model` inherits, so model.py holds loading and reading and this file the
decoding loop's front end. The engine checks the settings' values (`_core.GenConfig`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from steerlab import _active, _args, _batches, _core
from steerlab._batches import MonitoredGeneration
from steerlab._checks import check_layers
from steerlab._layers import SiteName, check_site
from steerlab._sampling import Sampling, cut_at_stop, stream
from steerlab.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["Generating"]


class Generating:
    """Generation, for `steerlab.Model` (which sets ``_core``)."""

    _core: _core.Model

    @overload
    def generate(  # type: ignore[overload-overlap]
        self,
        prompts: str,
        *,
        steering: Any = ...,
        max_new_tokens: int = ...,
        temperature: float = ...,
        top_k: int | None = ...,
        top_p: float | None = ...,
        seed: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        return_ids: Literal[False] = ...,
        batch_size: int = ...,
        progress: bool | None = ...,
        ignore_eos: bool = ...,
    ) -> str: ...
    @overload
    def generate(  # type: ignore[overload-overlap]
        self,
        prompts: str,
        *,
        steering: Any = ...,
        max_new_tokens: int = ...,
        temperature: float = ...,
        top_k: int | None = ...,
        top_p: float | None = ...,
        seed: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        return_ids: Literal[True],
        batch_size: int = ...,
        progress: bool | None = ...,
        ignore_eos: bool = ...,
    ) -> list[int]: ...
    @overload
    def generate(
        self,
        prompts: Sequence[str],
        *,
        steering: Any = ...,
        max_new_tokens: int = ...,
        temperature: float = ...,
        top_k: int | None = ...,
        top_p: float | None = ...,
        seed: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        return_ids: Literal[False] = ...,
        batch_size: int = ...,
        progress: bool | None = ...,
        ignore_eos: bool = ...,
    ) -> list[str]: ...
    @overload
    def generate(
        self,
        prompts: Sequence[str],
        *,
        steering: Any = ...,
        max_new_tokens: int = ...,
        temperature: float = ...,
        top_k: int | None = ...,
        top_p: float | None = ...,
        seed: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        return_ids: Literal[True],
        batch_size: int = ...,
        progress: bool | None = ...,
        ignore_eos: bool = ...,
    ) -> list[list[int]]: ...
    @overload
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        steering: Any = ...,
        max_new_tokens: int = ...,
        temperature: float = ...,
        top_k: int | None = ...,
        top_p: float | None = ...,
        seed: int | None = ...,
        stop: str | Sequence[str] | None = ...,
        return_ids: bool = ...,
        batch_size: int = ...,
        progress: bool | None = ...,
        ignore_eos: bool = ...,
    ) -> list[str] | list[list[int]] | str | list[int]: ...
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        steering: Any = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        return_ids: bool = False,
        batch_size: int = 8,
        progress: bool | None = None,
        ignore_eos: bool = False,
    ) -> list[str] | list[list[int]] | str | list[int]:
        """Continue each prompt.

        Args:
            prompts: a list of str, or a single str (then a single result is returned).
                Prompts are used as given; use `chat_prompt` for chat models.
            steering: as in `capture`; a list gives each prompt its own steering.
            max_new_tokens: at most this many new tokens per prompt (an eos token ends
                a prompt earlier).
            temperature: 0 is greedy decoding; above 0 samples.
            top_k: sample among the k most likely tokens only.
            top_p: sample from the smallest set of tokens whose probability reaches p.
            seed: makes sampling reproducible: prompt ``i`` samples with its own
                generator seeded ``seed + i``, whatever the batch size.
            stop: a string or strings that end a prompt's generation; the returned text
                stops before the first of them.
            return_ids: return the new token ids instead of text (no stop truncation:
                a row that hit a stop string ends with the token that completed it).
            batch_size: prompts per batch.
            progress: show a progress bar (None: when there is more than one batch).
            ignore_eos: keep generating through eos tokens, so every row gets exactly
                `max_new_tokens` (benchmarks, fixed-length comparisons).

        Returns:
            The new text of each prompt (special tokens skipped), or its new ids with
            ``return_ids=True``; for a single str prompt, just that one result.

        Raises:
            InvalidTypeError: a prompt that is not a str, an argument of the wrong type.
            InvalidArgumentError: no prompts, negative max_new_tokens or temperature,
                top_k < 1, top_p outside (0, 1], batch_size < 1, a steering list whose
                length is not the number of prompts, a NaN in a vector.
            OutOfRangeError, ShapeError, ContextLengthError: as in `capture`.
        """
        items, single = _args.texts(prompts, "prompts")
        return_ids = _args.flag(return_ids, "return_ids")
        ignore_eos = _args.flag(ignore_eos, "ignore_eos")
        sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed, stop)
        batch_size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
        rows = _active.rows(self, steering, len(items))
        ids = _batches.encode(self._core, items, "prompts")
        if sampling.max_new_tokens == 0:
            new_ids: list[list[int]] = [[] for _ in ids]
        else:
            new_ids = _batches.generate(
                self._core, ids, rows, sampling, batch_size, progress, ignore_eos
            )
        results: list[Any]
        if return_ids:
            results = new_ids
        else:
            results = [
                cut_at_stop(self._core.decode(row, True), sampling.stop)[0] for row in new_ids
            ]
        return results[0] if single else results

    def continuation_logprobs(
        self,
        prompts: str | Sequence[str],
        continuations: str | Sequence[str],
        steering: Any = None,
        *,
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> list[npt.NDArray[np.float32]]:
        """Log-probability of each token of a given continuation of each prompt, computed
        by the generation loop with the continuation forced (teacher forcing with
        generation semantics): steering positions ('last', 'generated', indices past the
        prompt) and steering controllers (whose gate is recomputed at every step) act
        exactly as they would while generating that continuation.

        Args:
            prompts: a str or a list of str (used as given).
            continuations: one str per prompt, encoded without special tokens and fed
                after the prompt; each must encode to at least one token.
            steering: as in `generate` (a list gives each prompt its own).
            batch_size: prompts per batch.
            progress: show a progress bar (None: when there is more than one batch).

        Returns:
            One float32 array ``[n_i]`` per prompt: ``log p(c_j | prompt, c_<j)`` in nats
            for each token ``c_j`` of continuation i.

        Raises:
            InvalidTypeError: a prompt or continuation that is not a str.
            InvalidArgumentError: no prompts, a count of continuations that is not the
                count of prompts, a continuation that encodes to no token, a bad steering.
            OutOfRangeError, ShapeError, ContextLengthError: as in `generate`.
        """
        items, _ = _args.texts(prompts, "prompts")
        conts, _ = _args.texts(continuations, "continuations")
        if len(conts) != len(items):
            raise InvalidArgumentError(
                f"{len(conts)} continuations for {len(items)} prompts; expected one per prompt"
            )
        batch_size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
        rows = _active.rows(self, steering, len(items))
        ids = _batches.encode(self._core, items, "prompts")
        forced = [self._core.encode(t, False) for t in conts]
        if empty := [i for i, f in enumerate(forced) if not f]:
            raise InvalidArgumentError(
                f"continuation {empty[0]} ({conts[empty[0]]!r}) encodes to no token; expected "
                "a non-empty continuation"
            )
        config = _core.GenConfig(max_new_tokens=max(len(f) for f in forced), ignore_eos=True)
        _, _, lps = _batches.traced(
            self._core, ids, rows, config, forced, True, batch_size, progress, "score"
        )
        return [np.asarray(lp, dtype=np.float32) for lp in (lps or [])]

    def generate_monitored(
        self,
        prompts: str | Sequence[str],
        layers: int | Iterable[int],
        *,
        site: SiteName = "resid_post",
        steering: Any = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> list[MonitoredGeneration]:
        """`generate`, also reading the activations at generated positions (monitoring
        a generation, e.g. with a probe).

        Args:
            prompts: a str or a list of str.
            layers: a layer index or several (negative: from the end; ``"embed"``).
            site: as in `capture` (the value after any steering at that site).
            steering, max_new_tokens, temperature, top_k, top_p, seed, stop, batch_size,
                progress: as in `generate`.

        Returns:
            One `MonitoredGeneration` per prompt: ``text``, ``ids`` and ``activations``
            float32 ``[len(layers), len(ids), d_model]``, where entry k is the activation
            whose output predicted new token k (the last prompt position for k = 0, then
            the position of token k - 1), as the same steered forward computed it.

        Raises:
            As `generate` and `capture`.
        """
        items, _ = _args.texts(prompts, "prompts")
        layer_list = check_layers(layers)
        site = check_site(site)
        sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed, stop)
        batch_size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
        rows = _active.rows(self, steering, len(items))
        ids = _batches.encode(self._core, items, "prompts")
        runs = _batches.generate_monitored(
            self._core, ids, layer_list, site, rows, sampling, batch_size, progress
        )
        return [
            MonitoredGeneration(
                cut_at_stop(self._core.decode(new, True), sampling.stop)[0], new, acts
            )
            for new, acts in runs
        ]

    def generate_stream(
        self,
        prompt: str,
        *,
        steering: Any = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
    ) -> Iterator[str]:
        """Continue one prompt, yielding text as it is generated.

        Arguments are checked, and the prompt processed, when this is called; the
        pieces come as the iterator is consumed. A piece never splits a multi-byte
        character, never shows part of a stop string, and the pieces join to what
        `generate` returns for the same arguments.

        Args:
            prompt: a str.
            steering, max_new_tokens, temperature, top_k, top_p, seed, stop: as in
                `generate` (a steering list must have exactly one entry).

        Returns:
            An iterator of str pieces.

        Raises:
            As `generate`.
        """
        if not isinstance(prompt, str):
            raise InvalidTypeError(
                f"generate_stream takes one prompt str, got {type(prompt).__name__}"
            )
        _args.text(prompt, "prompt")
        sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed, stop)
        rows = _active.rows(self, steering, 1)
        ids = _batches.encode(self._core, [prompt], "prompts")
        if sampling.max_new_tokens == 0:
            return iter(())
        generation = self._core.start_generation(ids, rows, sampling.config())
        return stream(self._core, generation, sampling.stop)
