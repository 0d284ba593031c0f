"""`steerlab.evaluate.continuation_kl`: how far a steering moves the model's next-token
distributions along what the unsteered model would have said."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _active, _args, _batches
from steerlab._chat import request_prompts
from steerlab.errors import InvalidTypeError
from steerlab.steering import batch_rows

if TYPE_CHECKING:
    from steerlab.model import Model

__all__ = ["continuation_kl"]


def continuation_kl(
    model: Model,
    prompts: str | Sequence[str],
    steering: Any = None,
    *,
    max_new_tokens: int = 32,
    chat: Any = "auto",
    batch_size: int = 8,
    progress: bool | None = None,
) -> npt.NDArray[np.float64]:
    """Mean per-token ``KL(p_unsteered || p_steered)`` (nats) along the unsteered model's
    own greedy continuation of each prompt.

    The unsteered model first continues each prompt greedily (up to `max_new_tokens`
    tokens; a prompt it ends at once keeps its eos token as the continuation). Then both
    models read that same continuation token by token through the generation loop
    (teacher forcing with generation semantics, so steering positions and steering
    controllers act exactly as while generating), and at every position that predicts a
    continuation token the two next-token distributions are compared in float64. 0 means
    the steering leaves these answers exactly as they were (a quiet controller gives 0).

    Args:
        model: a loaded `Model`.
        prompts: requests or rendered prompts (`chat` as in
            `steerlab._chat.request_prompts`: ``"auto"`` renders plain requests with the
            chat template).
        steering: anything `Model.generate` accepts (a per-prompt list too), including a
            `steerlab.SteeringController`.
        max_new_tokens: length of the reference continuation (>= 1).
        batch_size: prompts per batch; progress: tqdm bars (None: automatic).

    Returns:
        float64 ``[n]``: each prompt's mean KL over its continuation's positions.

    Raises:
        InvalidTypeError: model not a `Model`, a prompt not a str.
        InvalidArgumentError: no prompts, max_new_tokens < 1, a bad steering.
        OutOfRangeError, ShapeError, ContextLengthError: as in `Model.generate`.
    """
    from steerlab.model import Model

    if not isinstance(model, Model):
        raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
    items, _ = _args.texts(prompts, "prompts")
    n_new = _args.integer(max_new_tokens, "max_new_tokens", minimum=1, maximum=1 << 20)
    size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
    core = model._core
    ps = request_prompts(core, items, chat)
    rows = _active.rows(model, steering, len(ps))
    ids = _batches.encode(core, ps, "prompts")
    conts = model.generate(
        ps, max_new_tokens=n_new, return_ids=True, batch_size=size, progress=progress
    )
    eos = model.eos_ids[:1]
    forced = [list(c) if c else list(eos) for c in conts]
    out = np.zeros(len(ps), dtype=np.float64)
    with _batches.Batches(len(ps), size, progress, "continuation KL", "prompt") as batches:
        for start, stop in batches:
            with batches.errors(start, stop):
                kls = core.forced_kl(
                    ids[start:stop], forced[start:stop], batch_rows(rows, start, stop)
                )
            for i, kl in enumerate(kls):
                out[start + i] = float(np.mean(kl.astype(np.float64))) if kl.size else 0.0
    return out
