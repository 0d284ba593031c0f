"""HyperSteer: a hypernetwork that writes a steering vector from a plain-language
instruction (Sun et al. 2025, "HyperSteer: Activation Steering at Scale with
Hypernetworks").

The hypernetwork is a trainable copy of the base model's first N blocks, run over the
steering prompt ("Mention the ocean."). In the ``cross_attention`` variant (the paper's
best) each block also cross-attends from the steering-prompt stream to the base model's
residual states at the steered layer on the base prompt, so the vector depends on the
instruction and on the prompt it steers; ``no_context`` reads the instruction only. A
Linear(d → d) head on the last token's final state writes Δ, which is added at
``resid_post[layer]`` at every position except a BOS token. Training maximises the
log-likelihood of target continuations under the steered, frozen base model (quantized or
f32); the targets are written by the base model itself with the instruction in its
prompt (self-distillation of steering-by-prompting, greedy), or passed by the user.

Everything that runs per token is the Rust engine (`steerlab._core.HyperNet`,
`steerlab._core.HyperTrainer`): the hypernetwork forward of a batch of instructions is
one call with the GIL released, and generation applies the vectors as per-row steering.

Reference implementation consulted for the method (not copied): the paper's description;
the engine's docs (``src/learn/hyper.rs``, ``src/model/cross.rs``) give the
initialisation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _args, _core
from steerlab._chat import request_prompts
from steerlab._progress import progress_bar
from steerlab.errors import (
    InvalidArgumentError,
    InvalidTypeError,
    ModelFormatError,
    ModelNotFoundError,
    OutOfRangeError,
)
from steerlab.optimize import TrainingInterrupted

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from steerlab._layers import PositionName
    from steerlab.model import Model
    from steerlab.steering import Steering
    from steerlab.vectors import SteeringVector

__all__ = ["POOLS", "VARIANTS", "HyperSteer", "default_layer", "default_lr", "distill_targets"]

#: The architectures `HyperSteer.fit` builds.
VARIANTS = ("cross_attention", "no_context")
#: What the head can read (`HyperSteer.fit`'s `pool`).
POOLS = ("last", "mean")

_KIND = "hypersteer"


def default_layer(n_layers: int) -> int:
    """The steered layer when none is given: ``int(0.75 * n_layers)`` (22 of SmolLM2's
    30, 13 of Gemma 3 270M's 18), the depth AxBench and HyperSteer steer at."""
    return min(n_layers - 1, int(0.75 * n_layers))


def default_lr(n_blocks: int) -> float:
    """HyperSteer's learning rate for an N-block hypernetwork: ``8e-5 * sqrt(20 / N)``."""
    return 8e-5 * math.sqrt(20.0 / n_blocks)


def _model(model: Any) -> Model:
    from steerlab.model import Model

    if not isinstance(model, Model):
        raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
    return model


def _pairs(steering_prompts: Any, base_prompts: Any) -> tuple[list[str], list[str]]:
    steer, _ = _args.texts(steering_prompts, "steering_prompts")
    base, _ = _args.texts(base_prompts, "base_prompts")
    if len(steer) != len(base):
        raise InvalidArgumentError(
            f"{len(steer)} steering_prompts and {len(base)} base_prompts; they pair up "
            f"element-wise (one example or output row per pair), expected equal lengths"
        )
    return steer, base


def _bos_id(model: Model) -> int | None:
    bos = model._core.bos_token
    if not bos:
        return None
    ids = model.encode(bos, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


_F32_MAX = float(np.finfo(np.float32).max)


def _factor(factor: Any) -> float:
    f = _args.number(factor, "factor", "a finite number")
    if not math.isfinite(f) or abs(f) > _F32_MAX:
        raise InvalidArgumentError(
            f"factor must be a finite number within float32's range (|factor| <= 3.4e38), "
            f"got {_args.show(factor)}"
        )
    return f


def _scaled(v: npt.NDArray[np.float32], f: float) -> npt.NDArray[np.float32]:
    """factor * vector in float32, refusing an overflow (naming the factor)."""
    with np.errstate(over="raise", invalid="raise"):
        try:
            return np.asarray(v * np.float32(f), dtype=np.float32)
        except FloatingPointError:
            raise InvalidArgumentError(
                f"factor {f:g} times a vector of norm {float(np.linalg.norm(v)):.4g} overflows "
                f"float32; expected a smaller factor"
            ) from None


def _writable(path: Any, name: str) -> str:
    """A path whose folder exists (checked before any work is done)."""
    p = _args.path(path, name)
    parent = Path(p).parent
    if not parent.is_dir():
        raise ModelNotFoundError(
            f"{name}={p!r}: the folder {str(parent)!r} does not exist; expected a path in an "
            f"existing folder"
        )
    return p


def _chat_arg(chat: Any) -> Any:
    if not (chat is True or chat is False or chat == "auto"):
        raise InvalidArgumentError(f"chat must be True, False or 'auto', got {_args.show(chat)}")
    return chat


class HyperSteer:
    """A trained HyperSteer hypernetwork for one model: steering vectors from
    instructions, including instructions it never saw.

    Build one with `HyperSteer.fit` or `HyperSteer.load`.

    Attributes:
        variant: ``"cross_attention"`` or ``"no_context"``.
        layer: the steered layer (``resid_post``, non-negative).
        n_blocks: the number of copied base blocks.
        n_params: trained values.
        chat: how base prompts were rendered (see `fit`), reused by `steering`.
        history: one dict per optimiser step (``step``, ``loss`` = ``ce``, ``grad_norm``,
            ``lr``; ``val_ce`` on the steps where validation ran).
        training: the settings and figures of the run (data sizes, seconds, targets).
    """

    def __init__(
        self,
        net: _core.HyperNet,
        model: Model,
        *,
        history: list[dict[str, float]],
        training: dict[str, Any],
        chat: Any,
    ) -> None:
        self._net = net
        self._model = model
        self.history = history
        self.training = training
        self.chat = chat

    # -- training -------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        model: Model,
        steering_prompts: Sequence[str],
        base_prompts: Sequence[str],
        *,
        targets: Sequence[str] | None = None,
        variant: str = "cross_attention",
        layer: int | None = None,
        n_blocks: int = 4,
        epochs: int = 1,
        lr: float | None = None,
        batch_size: int = 8,
        max_target_tokens: int = 48,
        seed: int = 0,
        validation: tuple[Sequence[str], Sequence[str]] | None = None,
        validate_every: int | None = None,
        weight_decay: float = 0.0,
        chat: Any = "auto",
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 0,
        resume: str | os.PathLike[str] | None = None,
        pool: str = "last",
        progress: bool | None = None,
    ) -> HyperSteer:
        """Train a hypernetwork on (steering prompt, base prompt) pairs.

        Each pair is one example: the steered base model (frozen, as loaded: the
        quantized GGUF or f32) should continue the base prompt with the target; only the
        target tokens count (token-weighted cross-entropy). AdamW (candle-nn), gradients
        clipped to norm 1.0, seeded batches, ``epochs`` passes over the pairs.

        Args:
            model: the base model.
            steering_prompts: instructions, e.g. ``"Mention the ocean."`` (str each).
            base_prompts: the user prompts they steer, paired element-wise with
                `steering_prompts` (equal lengths). With ``chat="auto"`` a plain request
                is rendered as one user turn of the model's chat template (an already
                rendered prompt is kept); `prompts` returns the texts as rendered, which
                is what to pass to `Model.generate`.
            targets: the continuation for each pair (str); None: the base model writes
                them itself, greedily, up to `max_target_tokens` tokens, from the
                request with the instruction in context (the user turn
                ``f"{instruction}\\n\\n{request}"``): self-distillation of
                steering-by-prompting. Targets are cut to `max_target_tokens` tokens;
                pairs whose target is empty are dropped (counted in
                ``training["dropped"]``).
            variant: ``"cross_attention"`` (Δ depends on instruction and base prompt)
                or ``"no_context"`` (on the instruction only).
            layer: the steered layer (negative from the end); None: `default_layer`.
            n_blocks: copied base blocks (1..n_layers; 4 in the paper).
            epochs: passes over the pairs (>= 1).
            lr: AdamW's learning rate; None: `default_lr` (``8e-5 * sqrt(20 / N)``).
            batch_size: pairs per step.
            max_target_tokens: longest target, in tokens.
            seed: batch order (the hypernetwork's initialisation is deterministic).
            validation: optional ``(steering_prompts, base_prompts)`` held out from
                training (targets self-distilled the same way), or ``(steering_prompts,
                base_prompts, targets)`` with given targets; their cross-entropy is
                recorded as ``val_ce`` every `validate_every` steps (default: 10 times
                per run) and at the end, and before the first step as
                ``training["val_ce_start"]`` (the unsteered model's: Δ starts at 0).
            validate_every: steps between validations (needs `validation`).
            weight_decay: AdamW's decoupled weight decay.
            chat: True, False or ``"auto"`` (see `base_prompts`).
            checkpoint: a path to save the hypernetwork to every `checkpoint_every`
                steps and at the end (a `save` file with the step count); None: none.
            checkpoint_every: steps between checkpoints (0: only at the end; > 0 needs
                `checkpoint`).
            resume: a checkpoint written by an earlier run with the same data (pairs,
                targets, validation: compared by hash) and settings: its parameters and
                history are restored and training continues at its next batch (AdamW's
                moments start afresh).
            pool: what the head reads: ``"last"`` (the last token's final state, the
                paper's head) or ``"mean"`` (the mean over the instruction's tokens: in a
                shallow copy the last token, often ".", may carry little of the
                instruction).
            progress: tqdm bars for target writing and training (None: when long).

        Returns:
            The trained `HyperSteer` (the parameters after the last step).

        Raises:
            InvalidTypeError: a prompt or target that is not a str, a non-int count.
            InvalidArgumentError: lists of different lengths, empty lists, an unknown
                variant, a count out of range, a non-finite or non-positive lr, an already
                rendered base prompt without `targets`, a `resume` file from another
                run; every pair dropped for an empty target.
            OutOfRangeError: a layer or `n_blocks` the model lacks.
            ModelNotFoundError: `checkpoint` in a folder that does not exist (checked
                before any work).
            ContextLengthError: a base prompt + target longer than the context.

        Warns:
            TrainingInterrupted: Ctrl-C stopped training (the result holds the completed
                steps).
        """
        model = _model(model)
        steer, base = _pairs(steering_prompts, base_prompts)
        if variant not in VARIANTS:
            raise InvalidArgumentError(
                f"variant must be one of {', '.join(map(repr, VARIANTS))}, got "
                f"{_args.show(variant)}"
            )
        n = model.n_layers
        if layer is None:
            layer = default_layer(n)
        layer_i = model._resolve_layer(_args.index(layer, "layer"))
        n_blocks = _args.integer(n_blocks, "n_blocks", minimum=1)
        if n_blocks > n:
            raise OutOfRangeError(
                f"n_blocks {n_blocks} is out of range: the hypernetwork copies the model's first "
                f"n_blocks blocks and this model has {n}; expected 1..{n}"
            )
        epochs = _args.integer(epochs, "epochs", minimum=1)
        batch_size = _args.integer(batch_size, "batch_size", minimum=1)
        max_target_tokens = _args.integer(
            max_target_tokens, "max_target_tokens", minimum=1, maximum=model.max_context
        )
        seed = _args.integer(seed, "seed", minimum=0, maximum=2**64 - 1)
        checkpoint_every = _args.integer(checkpoint_every, "checkpoint_every", minimum=0)
        if lr is None:
            lr = default_lr(n_blocks)
        lr = _args.number(lr, "lr", "a finite number > 0")
        if not (math.isfinite(lr) and lr > 0):
            raise InvalidArgumentError(f"lr must be a finite number > 0, got {_args.show(lr)}")
        weight_decay = _args.number(weight_decay, "weight_decay", "a finite number >= 0")
        chat = _chat_arg(chat)
        if checkpoint is not None:
            checkpoint = _writable(checkpoint, "checkpoint")
        elif checkpoint_every:
            raise InvalidArgumentError(
                f"checkpoint_every={checkpoint_every} needs checkpoint= (a path to write to); "
                f"expected checkpoint= or checkpoint_every=0"
            )
        if validate_every is not None and validation is None:
            raise InvalidArgumentError(
                f"validate_every={_args.show(validate_every)} needs validation= (held-out "
                f"pairs); expected validation= or validate_every=None"
            )
        if pool not in POOLS:
            raise InvalidArgumentError(
                f"pool must be one of {', '.join(map(repr, POOLS))}, got {_args.show(pool)}"
            )
        t0 = time.perf_counter()
        examples, dropped, target_texts = _examples(
            model, steer, base, targets, max_target_tokens, chat, progress, "targets"
        )
        val_examples: list[tuple[list[int], list[int], int]] = []
        if validation is not None:
            if not isinstance(validation, tuple | list) or len(validation) not in (2, 3):
                raise InvalidTypeError(
                    "validation must be (steering_prompts, base_prompts) or (steering_prompts, "
                    f"base_prompts, targets), got {_args.show(validation)}"
                )
            vs, vb = _pairs(validation[0], validation[1])
            vt = validation[2] if len(validation) == 3 else None
            val_examples, _, _ = _examples(
                model, vs, vb, vt, max_target_tokens, chat, progress, "validation targets"
            )
        t_targets = time.perf_counter() - t0
        trainer = _core.HyperTrainer(
            model._core,
            examples,
            val_examples,
            variant,
            layer_i,
            n_blocks,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            seed=seed,
            pool=pool,
        )
        total = epochs * trainer.steps_per_epoch
        settings = {
            "variant": variant,
            "pool": pool,
            "layer": layer_i,
            "n_blocks": n_blocks,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "max_target_tokens": max_target_tokens,
            "seed": seed,
            "weight_decay": weight_decay,
            "chat": chat,
            "targets": "given" if targets is not None else "self-distilled (greedy)",
            "n_examples": len(examples),
            "n_validation": len(val_examples),
            "dropped": dropped,
            "steps": total,
            "n_params": trainer.n_params,
            "data_sha256": _data_hash(examples, val_examples),
        }
        history: list[dict[str, float]] = []
        done = 0
        if resume is not None:
            done, history = _resume(resume, model, trainer, settings)
        every = validate_every if validate_every is not None else max(1, total // 10)
        every = _args.integer(every, "validate_every", minimum=1)
        t1 = time.perf_counter()
        # The validation loss before any step (Δ = 0: the unsteered model's), the
        # baseline the curve is read against.
        val_start = trainer.validate() if val_examples and done == 0 else None
        bar = progress_bar(progress, total, 1, "HyperSteer", "step")
        bar.update(done)
        interrupted = False
        try:
            for step in range(done, total):
                rec = {k: float(v) for k, v in trainer.step().items()}
                rec["step"] = float(step)
                if val_examples and ((step + 1) % every == 0 or step + 1 == total):
                    v = trainer.validate()
                    if v is not None:
                        rec["val_ce"] = float(v)
                history.append(rec)
                bar.update(1)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix({"ce": f"{rec['ce']:.3f}"})
                if (
                    checkpoint is not None
                    and checkpoint_every
                    and (step + 1) % checkpoint_every == 0
                ):
                    _checkpoint(trainer, model, settings, history, chat, checkpoint, step + 1)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        if interrupted:
            # Ctrl-C lands after the engine finished a step whose record Python did not
            # keep (the signal is raised when the call returns): take the engine's.
            engine = trainer.history
            for r in engine[len(history) - done :]:
                rec = {k: float(v) for k, v in r.items()}
                rec["step"] = float(done + int(r["step"]))
                history.append(rec)
            if len(history) == done:
                raise KeyboardInterrupt
            warnings.warn(
                f"HyperSteer training stopped by Ctrl-C after {len(history)} of {total} "
                f"steps; the hypernetwork holds the parameters after the last completed step",
                TrainingInterrupted,
                stacklevel=2,
            )
        training = dict(settings)
        training.update(
            {
                "steps_done": len(history),
                "interrupted": interrupted,
                "seconds_targets": round(t_targets, 3),
                "seconds_training": round(time.perf_counter() - t1, 3),
                "val_ce_start": val_start,
                "example_targets": target_texts,
            }
        )
        params = trainer.params()
        net = _core.HyperNet(
            model._core,
            variant,
            layer_i,
            n_blocks,
            [(k, list(v.shape), np.ascontiguousarray(v).ravel()) for k, v in params.items()],
            pool,
        )
        hs = cls(net, model, history=history, training=training, chat=chat)
        if checkpoint is not None:
            hs.save(checkpoint)
        return hs

    # -- properties -----------------------------------------------------------------

    @property
    def variant(self) -> str:
        return str(self._net.variant)

    @property
    def layer(self) -> int:
        return int(self._net.layer)

    @property
    def pool(self) -> str:
        return str(self._net.pool)

    @property
    def n_blocks(self) -> int:
        return int(self._net.n_blocks)

    @property
    def n_params(self) -> int:
        return int(self._net.n_params)

    @property
    def model(self) -> Model:
        return self._model

    def __repr__(self) -> str:
        return (
            f"HyperSteer(variant={self.variant!r}, layer={self.layer}, "
            f"n_blocks={self.n_blocks}, n_params={self.n_params}, steps={len(self.history)})"
        )

    # -- vectors --------------------------------------------------------------------

    def prompts(self, base_prompts: Sequence[str]) -> list[str]:
        """The base prompts as the hypernetwork reads them (rendered as `fit` did, per
        `chat`): pass these to `Model.generate` with the rows of `steering`.

        Raises:
            InvalidTypeError: not a list of str.
        """
        base, _ = _args.texts(base_prompts, "base_prompts")
        return request_prompts(self._model._core, base, self.chat)

    def vectors(
        self, steering_prompts: Sequence[str], base_prompts: Sequence[str] | None = None
    ) -> npt.NDArray[np.float32]:
        """Δ for each steering prompt: float32 ``[n, d_model]`` (factor 1, unnormalised).

        One batched engine call (GIL released, Ctrl-C between rows); each row runs alone,
        so its vector does not depend on the batch.

        Args:
            steering_prompts: instructions (str each).
            base_prompts: the paired base prompts; required by ``cross_attention``,
                refused by ``no_context``.

        Raises:
            InvalidArgumentError: base prompts missing (cross_attention) or given
                (no_context), lists of different lengths, empty lists.
            InvalidTypeError: not lists of str.
        """
        steer, _ = _args.texts(steering_prompts, "steering_prompts")
        steer_ids = [self._model.encode(s) for s in steer]
        base_ids = None
        if base_prompts is not None:
            if self.variant == "no_context":
                raise InvalidArgumentError(
                    "this no_context hypernetwork reads only the steering prompt; pass no "
                    "base_prompts (or use steering(), which pairs rows with prompts)"
                )
            _, base = _pairs(steer, base_prompts)
            base_ids = [self._model.encode(p) for p in self.prompts(base)]
        elif self.variant == "cross_attention":
            raise InvalidArgumentError(
                "this cross_attention hypernetwork writes a vector for an instruction and a "
                "base prompt together; pass base_prompts"
            )
        return np.asarray(self._net.vectors(steer_ids, base_ids), dtype=np.float32)

    def vector(
        self, instruction: str, base_prompt: str | None = None, *, factor: float = 1.0
    ) -> SteeringVector:
        """One instruction's vector as a `SteeringVector` at `layer` (times `factor`),
        applied at every position except a BOS token (``positions="all_but_first"``
        when the model's tokenizer adds one, else ``"all"``).

        ``no_context``: the vector of the instruction alone. ``cross_attention``: the
        vector for `base_prompt` (required); use it on that prompt.

        Raises:
            InvalidArgumentError: as `vectors`; a non-finite factor.
            InvalidTypeError: a non-str instruction.
        """
        from steerlab._vector_meta import VectorInfo
        from steerlab.vectors import SteeringVector

        instruction = _args.text(instruction, "instruction")
        f = _factor(factor)
        bp = None if base_prompt is None else [_args.text(base_prompt, "base_prompt")]
        vec = _scaled(self.vectors([instruction], bp)[0], f)
        info = VectorInfo(
            d_model=self._model.d_model,
            fingerprint=self._model.fingerprint,
            arch=self._model.arch,
            n_layers=self._model.n_layers,
            method="hypersteer",
            dataset=instruction,
            training={"variant": self.variant, "n_blocks": self.n_blocks, "factor": f},
        )
        positions = "all_but_first" if _bos_id(self._model) is not None else "all"
        return SteeringVector({self.layer: vec}, info, positions=positions)

    def steering(
        self,
        steering_prompts: Sequence[str],
        base_prompts: Sequence[str],
        factor: float = 1.0,
    ) -> list[Steering]:
        """One `Steering` per row: Δ(steering_prompts[i], base_prompts[i]) · factor added
        at ``resid_post[layer]`` on every position of the row except a BOS token (the
        prompt and every generated token), for ``model.generate(prompts, steering=rows)``
        (many instructions in one batched call).

        The vectors come from one batched engine call. Factor 0 is exactly the unsteered
        model; factor 1 is what training saw. ``no_context`` ignores the base prompts
        for the vector (each row's vector is its instruction's) and uses them only to
        find the BOS.

        Raises:
            InvalidArgumentError: lists of different lengths, empty lists, a non-finite
                factor.
            InvalidTypeError: not lists of str, a non-number factor.
        """
        from steerlab.steering import Steering

        steer, base = _pairs(steering_prompts, base_prompts)
        f = _factor(factor)
        # Each base prompt is rendered and encoded once: for the vectors and the BOS.
        base_ids = [self._model.encode(p) for p in self.prompts(base)]
        steer_ids = [self._model.encode(s) for s in steer]
        context = base_ids if self.variant == "cross_attention" else None
        vecs = np.asarray(self._net.vectors(steer_ids, context), dtype=np.float32)
        bos = _bos_id(self._model)
        rows = []
        for ids, v in zip(base_ids, vecs, strict=True):
            positions: PositionName = (
                "all_but_first" if bos is not None and ids[:1] == [bos] else "all"
            )
            rows.append(Steering.add(self.layer, _scaled(v, f), positions=positions))
        return rows

    # -- looking at it --------------------------------------------------------------

    def plot(self, ax: Any = None) -> Figure:
        """The training loss per step (and its running mean) with the validation
        cross-entropy; see `steerlab.plots.plot_hypersteer`."""
        from steerlab.plots import plot_hypersteer

        return plot_hypersteer(self, ax=ax)

    # -- files ----------------------------------------------------------------------

    def check_model(self, model: Model) -> None:
        """Raise `InvalidArgumentError` unless `model` is the model this hypernetwork was
        trained for (same fingerprint)."""
        model = _model(model)
        if model.fingerprint != self._model.fingerprint:
            raise InvalidArgumentError(
                f"this HyperSteer was trained for model {self._model.fingerprint}; "
                f"{model.fingerprint} is another model"
            )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the hypernetwork (safetensors) with JSON metadata: variant, layer,
        n_blocks, chat, the model's fingerprint, width and depth, the training settings
        and the per-step history.

        Raises:
            ModelNotFoundError: the folder to write into does not exist (named).
            ModelFormatError: the file cannot be written.
        """
        arch = (self.variant, self.layer, self.n_blocks, self.pool)
        params = dict(self._net.params())
        p = _writable(path, "path")
        _save(params, arch, self._model, self.training, self.history, self.chat, p, None)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Model) -> HyperSteer:
        """Read a hypernetwork saved by `save` (or a `fit` checkpoint) for `model`.

        Raises:
            ModelNotFoundError: no file at the path.
            ModelFormatError: not a steerlab learned-module file, corrupt, another kind
                of module, or tensors that do not fit the architecture it states.
            InvalidArgumentError: trained on another model (fingerprint differs).
            ShapeError: trained on a model of another width.
        """
        model = _model(model)
        meta, tensors = _read(path, model)
        a = _arch(path, meta, model)
        try:
            net = _core.HyperNet(
                model._core, a["variant"], a["layer"], a["n_blocks"], tensors, a["pool"]
            )
        except Exception as e:
            raise ModelFormatError(f"{path}: the tensors do not fit the hypernetwork: {e}") from e
        return cls(net, model, history=a["history"], training=a["training"], chat=a["chat"])

    # -- pickling (forked workers, copies) -------------------------------------------

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        params = {k: np.array(v) for k, v in self._net.params().items()}
        arch = (self.variant, self.layer, self.n_blocks, self.pool)
        return (_rebuild, (self._model, arch, params, self.history, self.training, self.chat))


def _rebuild(
    model: Model,
    arch: tuple[str, int, int, str],
    params: dict[str, npt.NDArray[np.float32]],
    history: list[dict[str, float]],
    training: dict[str, Any],
    chat: Any,
) -> HyperSteer:
    """A `HyperSteer` from its pickled parts (see `HyperSteer.__reduce__`)."""
    variant, layer, n_blocks, pool = arch
    tensors = [
        (k, list(v.shape), np.ascontiguousarray(v, dtype=np.float32).ravel())
        for k, v in params.items()
    ]
    net = _core.HyperNet(model._core, variant, layer, n_blocks, tensors, pool)
    return HyperSteer(net, model, history=history, training=training, chat=chat)


def _arch(path: Any, meta: dict[str, Any], model: Model) -> dict[str, Any]:
    """The checked architecture and records of a HyperSteer file's metadata.

    Raises:
        ModelFormatError: an entry of the wrong type or value, naming it.
    """
    hp = meta["hyperparameters"]

    def bad(key: str, expected: str) -> ModelFormatError:
        return ModelFormatError(
            f"{path}: the metadata's {key} is {_args.show(hp.get(key))}; expected {expected}"
        )

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    n = model.n_layers
    if hp.get("variant") not in VARIANTS:
        raise bad("variant", f"one of {', '.join(map(repr, VARIANTS))}")
    layer = hp.get("layer")
    if not is_int(layer) or not 0 <= layer < n:
        raise bad("layer", f"an int in 0..{n - 1}")
    blocks = hp.get("n_blocks")
    if not is_int(blocks) or not 1 <= blocks <= n:
        raise bad("n_blocks", f"an int in 1..{n}")
    pool = hp.get("pool", "last")
    if pool not in POOLS:
        raise bad("pool", f"one of {', '.join(map(repr, POOLS))}")
    chat = hp.get("chat", "auto")
    if not (chat is True or chat is False or chat == "auto"):
        raise bad("chat", "true, false or 'auto'")
    history = hp.get("history", [])
    ok = isinstance(history, list) and all(
        isinstance(h, Mapping)
        and all(
            isinstance(k, str)
            and (v is None or (isinstance(v, int | float) and not isinstance(v, bool)))
            for k, v in h.items()
        )
        for h in history
    )
    if not ok:
        raise bad("history", "a list of {name: number} records")
    training = hp.get("training", {})
    if not isinstance(training, Mapping):
        raise bad("training", "a mapping of settings")
    sites = meta.get("sites")
    if sites != [f"resid_post.{layer}"]:
        raise ModelFormatError(
            f"{path}: the header's sites are {_args.show(sites)} but the metadata's layer is "
            f"{layer}; expected ['resid_post.{layer}']"
        )
    return {
        "variant": hp["variant"],
        "layer": layer,
        "n_blocks": blocks,
        "pool": pool,
        "chat": chat,
        "history": [{k: float(v) for k, v in h.items() if v is not None} for h in history],
        "training": dict(training),
    }


def _data_hash(*sets: list[tuple[list[int], list[int], int]]) -> str:
    """A hash of training (and validation) examples: resume compares it."""
    h = hashlib.sha256()
    for examples in sets:
        h.update(json.dumps(examples).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def distill_targets(
    model: Model,
    steering_prompts: Sequence[str],
    base_prompts: Sequence[str],
    *,
    max_target_tokens: int = 48,
    chat: Any = "auto",
    temperature: float = 0.0,
    seed: int | None = None,
    progress: bool | None = None,
) -> list[str]:
    """The targets `HyperSteer.fit` writes when it is given none: the model's greedy reply
    (at most `max_target_tokens` tokens) to each request with the instruction in its user
    turn (``f"{instruction}\\n\\n{request}"``, rendered per `chat`). One batched
    generation. Pass the result as ``fit(..., targets=...)`` to reuse it across runs
    (it is re-encoded there, which may differ from the generated ids at a token boundary).
    ``temperature > 0`` samples instead (seeded by `seed`), e.g. to draw several
    candidates and keep those that follow the instruction (scripts/train_hypersteer.py's
    ``--keyword-filter``).

    Raises:
        InvalidArgumentError, InvalidTypeError: as `HyperSteer.fit`.
    """
    model = _model(model)
    steer, base = _pairs(steering_prompts, base_prompts)
    n = _args.integer(max_target_tokens, "max_target_tokens", minimum=1)
    ids = _distilled_ids(model, steer, base, n, _chat_arg(chat), progress, temperature, seed)
    return [model.decode(t) for t in ids]


def _distilled_ids(
    model: Model,
    steer: list[str],
    base: list[str],
    max_target_tokens: int,
    chat: Any,
    progress: bool | None,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[list[int]]:
    core = model._core
    prompts = request_prompts(core, base, chat)
    if chat is not False and bool(core.chat_template):
        for i, (b, p) in enumerate(zip(base, prompts, strict=True)):
            if b == p:
                raise InvalidArgumentError(
                    f"base_prompts[{i}] is already a rendered chat prompt; self-distilled "
                    f"targets need the plain request (to put the instruction in it): pass "
                    f"plain requests, or targets="
                )
    teacher = request_prompts(core, [f"{s}\n\n{b}" for s, b in zip(steer, base, strict=True)], chat)
    ids = model.generate(
        teacher,
        max_new_tokens=max_target_tokens,
        temperature=temperature,
        seed=seed,
        return_ids=True,
        progress=progress,
    )
    return [list(t) for t in ids]


def _examples(
    model: Model,
    steer: list[str],
    base: list[str],
    targets: Sequence[str] | None,
    max_target_tokens: int,
    chat: Any,
    progress: bool | None,
    what: str,
) -> tuple[list[tuple[list[int], list[int], int]], int, list[str]]:
    """Training examples ``(steering ids, prompt ids + target ids, len(prompt ids))``,
    the number dropped for an empty target, and the first three target texts."""
    prompts = request_prompts(model._core, base, chat)
    if targets is None:
        target_ids = _distilled_ids(model, steer, base, max_target_tokens, chat, progress)
    else:
        tt, _ = _args.texts(targets, "targets")
        if len(tt) != len(steer):
            raise InvalidArgumentError(
                f"{len(tt)} targets for {len(steer)} pairs; expected one target per pair"
            )
        target_ids = [model.encode(t, add_special_tokens=False)[:max_target_tokens] for t in tt]
    out = []
    dropped = 0
    texts: list[str] = []  # the first few, for the record
    for s, p, t in zip(steer, prompts, target_ids, strict=True):
        if not t:
            dropped += 1
            continue
        pi = model.encode(p)
        out.append((model.encode(s), pi + t, len(pi)))
        if len(texts) < 3:
            texts.append(model.decode(t))
    if not out:
        raise InvalidArgumentError(
            f"every {what[:-1]} is empty (the model ended at once, or the texts encode to no "
            f"token); expected some continuation to train on"
        )
    return out, dropped, texts


def _save(
    params: dict[str, Any],
    arch: tuple[str, int, int, str],
    model: Model,
    training: dict[str, Any],
    history: list[dict[str, float]],
    chat: Any,
    path: str | os.PathLike[str],
    steps_done: int | None,
) -> None:
    """Write `params` of a hypernetwork ``arch = (variant, layer, n_blocks, pool)``."""
    variant, layer, n_blocks, pool = arch
    losses = [h["loss"] for h in history]
    best = int(np.argmin(losses)) if losses else None
    meta = {
        "format_version": 1,
        "kind": _KIND,
        "fingerprint": model.fingerprint,
        "d_model": model.d_model,
        "n_layers": model.n_layers,
        "sites": [f"resid_post.{layer}"],
        "hyperparameters": {
            "variant": variant,
            "layer": layer,
            "n_blocks": n_blocks,
            "pool": pool,
            "chat": chat,
            "training": training,
            "steps_done": steps_done if steps_done is not None else len(history),
            "history": [
                {k: (v if np.isfinite(v) else None) for k, v in h.items()} for h in history
            ],
        },
        "history": {
            "steps": len(history),
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "best_loss": losses[best] if best is not None else None,
            "best_step": best,
        },
        "records": [],
    }
    tensors = [
        (name, list(arr.shape), np.ascontiguousarray(arr, dtype=np.float32).ravel())
        for name, arr in params.items()
    ]
    _core.save_learned(_args.path(path, "path"), json.dumps(meta), tensors)


def _read(
    path: str | os.PathLike[str], model: Model
) -> tuple[dict[str, Any], list[tuple[str, list[int], Any]]]:
    p = _args.path(path, "path")
    meta_json, tensors = _core.load_learned(p, model.fingerprint, model.d_model)
    meta = json.loads(meta_json)
    if meta.get("kind") != _KIND:
        raise ModelFormatError(f"{p}: holds a {meta.get('kind')!r} module, not a HyperSteer")
    if meta.get("n_layers") != model.n_layers:
        raise ModelFormatError(
            f"{p}: trained on a model with {meta.get('n_layers')} layers; this one has "
            f"{model.n_layers}"
        )
    if not isinstance(meta.get("hyperparameters"), dict):
        raise ModelFormatError(f"{p}: the metadata has no hyperparameters")
    return meta, [(name, list(shape), arr) for name, shape, arr in tensors]


def _checkpoint(
    trainer: Any,
    model: Model,
    settings: dict[str, Any],
    history: list[dict[str, float]],
    chat: Any,
    path: str | os.PathLike[str],
    steps: int,
) -> None:
    arch = (settings["variant"], settings["layer"], settings["n_blocks"], settings["pool"])
    _save(dict(trainer.params()), arch, model, settings, history, chat, path, steps)


_RESUME_KEYS = (
    "data_sha256",
    "lr",
    "weight_decay",
    "n_validation",
    "variant",
    "pool",
    "layer",
    "n_blocks",
    "epochs",
    "batch_size",
    "max_target_tokens",
    "seed",
    "n_examples",
)


def _resume(
    path: str | os.PathLike[str], model: Model, trainer: Any, settings: dict[str, Any]
) -> tuple[int, list[dict[str, float]]]:
    meta, tensors = _read(path, model)
    hp = meta["hyperparameters"]
    old = hp.get("training", {})
    diff = [k for k in _RESUME_KEYS if old.get(k) != settings.get(k)]
    if diff:
        raise InvalidArgumentError(
            f"resume={os.fspath(path)!r} is a checkpoint of another run: "
            + ", ".join(f"{k} was {old.get(k)!r}, now {settings.get(k)!r}" for k in diff)
        )
    done = int(hp.get("steps_done", 0))
    trainer.set_params(tensors)
    trainer.set_step_offset(done)
    history = [{k: float(v) for k, v in h.items() if v is not None} for h in hp.get("history", [])]
    return done, history[:done]
