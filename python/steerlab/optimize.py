"""Optimised steering vectors: an additive vector per layer trained by gradient descent
through the frozen model (`SteeringVector.optimize`).

The objective follows AxBench's trained-vector baseline (Wu et al. 2025, the ReFT-r1 /
RePS family) and activation scaling's SteerVec baseline (Stoehr et al. 2024): maximise
the steered model's log-likelihood of target completions given their prompts; with
negatives, prefer the target over the negative completion (``softplus(-(lp+ - lp-))``
on the mean log-probability per token, the bounded preference form of RePS / BiPO).
The engine trains through the model as loaded, so the default quantized GGUF works
(frozen quantized weights, trainable vector). See `steerlab._core.VectorTrainer`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _args, _core
from steerlab._layers import check_positions
from steerlab._progress import progress_bar
from steerlab.errors import InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    from steerlab.model import Model

__all__ = [
    "TrainedVectors",
    "TrainingInterrupted",
    "optimize_vector",
    "run_steps",
    "tokenize_pairs",
]


class TrainingInterrupted(UserWarning):
    """Ctrl-C stopped a training loop; the result holds the parameters of the completed
    steps (the last or the best, as asked)."""


def tokenize_pairs(
    model: Model, prompts: Sequence[str], completions: Sequence[str], what: str
) -> list[tuple[list[int], int]]:
    """``(prompt ids + completion ids, len(prompt ids))`` per pair: the prompt encoded
    as `Model.encode` does (special tokens added as the model's tokenizer adds them), the
    completion without special tokens.

    Raises:
        InvalidTypeError: not lists of str.
        InvalidArgumentError: lists of different lengths, an empty list, a prompt or
            completion that encodes to no token.
    """
    ps, _ = _args.texts(prompts, "prompts")
    cs, _ = _args.texts(completions, what)
    if len(ps) != len(cs):
        raise InvalidArgumentError(
            f"{len(ps)} prompts but {len(cs)} {what}; expected one per prompt"
        )
    if not ps:
        raise InvalidArgumentError("prompts is empty; expected at least one training pair")
    out = []
    for i, (p, c) in enumerate(zip(ps, cs, strict=True)):
        pi = model.encode(p)
        ci = model.encode(c, add_special_tokens=False)
        if not pi or not ci:
            side = "prompt" if not pi else f"{what[:-1]}"
            raise InvalidArgumentError(
                f"pair {i}: the {side} encodes to no token; expected some text"
            )
        out.append((pi + ci, len(pi)))
    return out


def run_steps(
    trainer: Any,
    n_steps: int,
    progress: bool | None,
    desc: str,
    kept: str,
    postfix: Sequence[tuple[str, str]] = (("loss", "loss"),),
    stacklevel: int = 4,
) -> tuple[list[dict[str, float]], bool]:
    """Step an engine trainer (`_core.VectorTrainer`, `_core.ScalarTrainer`) `n_steps`
    times under a tqdm bar (`postfix`: (label, record key) pairs shown after each
    step; `stacklevel` points the warning at the user's call). Ctrl-C stops between steps (and inside a step at the next block): with steps
    done it warns `TrainingInterrupted` (saying what `kept` holds) and returns them.

    Returns:
        (one dict of floats per completed step, whether Ctrl-C stopped the run).

    Raises:
        KeyboardInterrupt: Ctrl-C before the first step completed.
    """
    bar = progress_bar(progress, n_steps, 1, desc, "step")
    interrupted = False
    try:
        for _ in range(n_steps):
            rec = trainer.step()
            bar.update(1)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix({label: f"{rec[key]:.4g}" for label, key in postfix})
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    history = [{k: float(v) for k, v in r.items()} for r in trainer.history]
    if interrupted:
        if not history:
            raise KeyboardInterrupt
        warnings.warn(
            f"{desc} stopped by Ctrl-C after {len(history)} of {n_steps} steps; {kept} of "
            f"the completed steps",
            TrainingInterrupted,
            stacklevel=stacklevel,
        )
    return history, interrupted


@dataclass
class TrainedVectors:
    """What a vector-training run produced (`SteeringVector.optimize` wraps it)."""

    vectors: dict[int, npt.NDArray[np.float32]]
    history: list[dict[str, float]]
    training: dict[str, Any]
    n_samples: int


def optimize_vector(
    model: Model,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    layers: list[int],
    negatives: Sequence[str] | None = None,
    steps: int = 100,
    lr: float = 1e-2,
    batch_size: int = 8,
    seed: int = 0,
    positions: Any = "all",
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    init: list[npt.NDArray[np.float32]] | None = None,
    keep: str = "last",
    progress: bool | None = None,
) -> TrainedVectors:
    """The body of `SteeringVector.optimize` (its docstring documents the arguments);
    `layers` are resolved, `init` holds one vector per layer or is None."""
    from steerlab.model import Model

    if not isinstance(model, Model):
        raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
    n_steps = _args.integer(steps, "steps", minimum=1)
    size = _args.integer(batch_size, "batch_size", minimum=1)
    rate = _args.real(lr, "lr", above=0.0)
    decay = _args.real(weight_decay, "weight_decay", minimum=0.0)
    clip = None if max_grad_norm is None else _args.real(max_grad_norm, "max_grad_norm", above=0.0)
    seed_v = _args.integer(seed, "seed", minimum=0, maximum=_args.U64_MAX)
    pos = check_positions(positions)
    if keep not in ("last", "best"):
        raise InvalidArgumentError(f"keep must be 'last' or 'best', got {_args.show(keep)}")
    examples = tokenize_pairs(model, prompts, completions, "completions")
    negs = None
    if negatives is not None:
        negs = tokenize_pairs(model, prompts, negatives, "negatives")
    trainer = _core.VectorTrainer(
        model._core,
        examples,
        layers,
        negatives=negs,
        positions=pos,
        lr=rate,
        weight_decay=decay,
        max_grad_norm=clip,
        batch_size=size,
        seed=seed_v,
        init=None if init is None else [np.asarray(v, np.float32).tolist() for v in init],
    )
    history, interrupted = run_steps(
        trainer, n_steps, progress, "optimize", f"the vector is the {keep}"
    )
    best = trainer.best
    training: dict[str, Any] = {
        "objective": "preference" if negs else "likelihood",
        "steps": n_steps,
        "steps_done": len(history),
        "lr": rate,
        "batch_size": size,
        "seed": seed_v,
        "weight_decay": decay,
        "max_grad_norm": clip,
        "best_step": None if best is None else best[0],
        "best_loss": None if best is None else best[1],
        "interrupted": interrupted,
        "keep": keep,
        "positions": pos if isinstance(pos, str) else json.dumps(pos),
    }
    return TrainedVectors(
        vectors=dict(trainer.vectors(best=keep == "best")),
        history=history,
        training=training,
        n_samples=len(examples),
    )
