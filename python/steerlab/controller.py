"""The weighted steering controller: steering that decides, per prompt and per decoding
step, whether and where to act.

Follows Hegazy et al. 2025, "Guiding Giants: Lightweight Controllers for Weighted
Activation Steering in LLMs" (arXiv 2505.20309). A small network reads the residual
stream after the last ``k`` blocks at the last position, concatenated ``[k * d_model]``
(standardised with the training set's mean and scale), and outputs ``1 + L`` numbers
through ``Linear(k*d -> hidden) -> ReLU -> Linear(hidden -> 1 + L)``: the gate
``g = sigmoid(o_0)`` and one weight per steered layer ``w_l = sigmoid(o_l)``. The patch
``alpha * g * w_l * d_l`` (``d_l`` a unit direction, by default the difference of mean
residuals of harmful and benign prompts at layer ``l``, the refusal direction of Arditi
et al. 2024) is added to the residual stream after each steered layer at every position
that predicts a token: the last prompt token, then each generated token, with ``g`` and
``w`` recomputed at every step from the previous step's states, so a generation that
drifts into harm can still be caught. The engine runs it inside the decode loop
(`steerlab._core.Controller`): no Python per step.

Where the authors' public code differs, this follows the method as stated: the patch
lands on every steered layer; the gate is ``sigmoid(logit)`` at inference (a quiet
controller, ``g = 0``, is exactly the unsteered model); the layer weights are trained end
to end in stage 2 (not only through a regulariser); the parameters kept are the best on
a validation split, not the last epoch's; and the activations are cached with the same
chat formatting as inference uses (`steerlab._chat.request_prompts`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from steerlab import _args, _batches, _core
from steerlab._chat import request_prompts
from steerlab._progress import progress_bar
from steerlab.errors import (
    InvalidArgumentError,
    InvalidTypeError,
    ModelFormatError,
    OutOfRangeError,
    ShapeError,
)
from steerlab.optimize import TrainingInterrupted

if TYPE_CHECKING:
    from steerlab.model import Model

__all__ = ["GateTrace", "SteeringController", "default_layers"]

FloatArray = npt.NDArray[np.float32]
_ARTIFACT_KIND = "steering_controller"
_TENSORS = ("mean", "scale", "w1", "b1", "w2", "b2", "directions")


def _readonly(a: npt.ArrayLike) -> FloatArray:
    out = np.array(a, dtype=np.float32)
    out.flags.writeable = False
    return out


def _data_hash(harmful: list[str], benign: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([harmful, benign]).encode())
    return h.hexdigest()


def default_layers(n_layers: int) -> list[int]:
    """The steered layers when none are given: the middle half of the blocks,
    ``n_layers // 4`` to ``3 * n_layers // 4 - 1`` (7..21 of SmolLM2's 30)."""
    lo, hi = n_layers // 4, max(n_layers // 4 + 1, (3 * n_layers) // 4)
    return list(range(lo, hi))


def _layer_list(model: Model, layers: Any, what: str) -> list[int]:
    if isinstance(layers, int | np.integer) and not isinstance(layers, bool):
        layers = [int(layers)]
    if isinstance(layers, str | bytes) or not isinstance(layers, Iterable):
        raise InvalidTypeError(
            f"{what} must be an int, a list of ints or None, got {type(layers).__name__}"
        )
    out = [model._resolve_layer(_args.index(x, f"a layer of {what}")) for x in layers]
    if not out:
        raise InvalidArgumentError(f"{what} is empty; expected at least one layer")
    if len(set(out)) != len(out):
        raise InvalidArgumentError(f"{what} {list(layers)} repeat a layer")
    return out


def _unit_rows(vectors: Mapping[int, Any], layers: list[int], d: int) -> FloatArray:
    rows = []
    for layer in layers:
        if layer not in vectors:
            raise InvalidArgumentError(
                f"direction has no vector for steered layer {layer} (it has layers "
                f"{sorted(vectors)}); pass layers= within them"
            )
        v = np.asarray(vectors[layer], dtype=np.float64)
        if v.shape != (d,):
            raise InvalidArgumentError(
                f"direction for layer {layer} has shape {v.shape}; expected ({d},)"
            )
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise InvalidArgumentError(
                f"direction for layer {layer} has norm {norm}; expected a finite, non-zero vector"
            )
        rows.append(v / norm)
    return np.asarray(rows, dtype=np.float32)


@dataclass(frozen=True)
class GateTrace:
    """One prompt's generation under a controller, with the gate of every step.

    Attributes:
        prompt: the prompt as the model read it (chat-formatted).
        ids: the new token ids (forced ones first, when given).
        text: their text (special tokens skipped).
        gates: float32 ``[len(ids)]`` in [0, 1]: the gate in force at the position that
            predicted each new token (``gates[0]`` at the prompt's last token, read from
            its unpatched state; ``gates[k]`` from the states of step ``k - 1``).
    """

    prompt: str
    ids: list[int]
    text: str
    gates: FloatArray


class SteeringController:
    """A trained weighted steering controller (see the module docs). Train with
    `SteeringController.fit`, read with `SteeringController.load`; pass it as
    ``steering=`` to `Model.generate`, `generate_stream`, `generate_monitored` or
    `Model.continuation_logprobs` (alone, or in a per-row list). Calls that read the prompt
    only (`capture`, `logits`, `token_logprobs`) refuse it: its gate on prompts is
    `gate`.

    Attributes:
        read_layers: the k layers read (``resid_post``), in input order.
        layers: the L steered layers.
        hidden: the MLP's hidden width.
        strength: alpha, the patch's size in residual-stream units.
        history: stage-1 records (one per epoch: ``stage=1, epoch, loss, bce, reg,
            val_bce, val_acc``) then stage-2 records (one per step: ``stage=2, step,
            loss, ce, kl, gate_harmful, gate_benign``, and ``val_loss`` where validated).
        training: the settings, data hash, timings and per-layer mean weights.
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        *,
        read_layers: Sequence[int],
        layers: Sequence[int],
        hidden: int,
        strength: float,
        d_model: int,
        n_layers: int,
        fingerprint: str,
        history: list[dict[str, float]] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(params, Mapping):
            raise InvalidTypeError(
                f"params must be a mapping of {list(_TENSORS)} to arrays, got "
                f"{type(params).__name__}"
            )
        if missing := [k for k in _TENSORS if k not in params]:
            raise InvalidArgumentError(f"params lacks {missing}; expected {list(_TENSORS)}")
        if extra := [k for k in params if k not in _TENSORS]:
            raise InvalidArgumentError(
                f"params has unknown entries {extra}; expected exactly {list(_TENSORS)}"
            )
        self.read_layers = [_args.index(x, "a read layer") for x in read_layers]
        self.layers = [_args.index(x, "a steered layer") for x in layers]
        self.hidden = _args.integer(hidden, "hidden", minimum=1, maximum=1 << 20)
        self.strength = _args.real(strength, "strength")
        self._d_model = _args.integer(d_model, "d_model", minimum=1, maximum=1 << 20)
        self._n_layers = _args.integer(n_layers, "n_layers", minimum=1, maximum=1 << 16)
        self._fingerprint = str(fingerprint)
        kd = len(self.read_layers) * self._d_model
        n_out = 1 + len(self.layers)
        shapes = {
            "mean": (kd,),
            "scale": (kd,),
            "w1": (kd, self.hidden),
            "b1": (self.hidden,),
            "w2": (self.hidden, n_out),
            "b2": (n_out,),
            "directions": (n_out - 1, self._d_model),
        }
        self._params = {}
        for name, shape in shapes.items():
            arr = _readonly(params[name])
            if arr.shape != shape:
                raise ShapeError(
                    f"params[{name!r}] has shape {arr.shape}; expected {shape} ({len(self.read_layers)} "
                    f"read layers x d_model {self._d_model}, hidden {self.hidden}, "
                    f"{len(self.layers)} steered layers)"
                )
            self._params[name] = arr
        if history is not None and not (
            isinstance(history, list) and all(isinstance(h, Mapping) for h in history)
        ):
            raise InvalidTypeError("history must be a list of records (dicts) or None")
        if training is not None and not isinstance(training, Mapping):
            raise InvalidTypeError(
                f"training must be a mapping or None, got {type(training).__name__}"
            )
        self.history = [dict(h) for h in history or []]
        self.training = dict(training or {})
        # Checked once here; the same object is every row's item (one engine module).
        self._core = _core.Controller(
            self.read_layers,
            self.layers,
            self.hidden,
            self._params["mean"],
            self._params["scale"],
            self._params["w1"],
            self._params["b1"],
            self._params["w2"],
            self._params["b2"],
            self._params["directions"],
            self.strength,
            d_model=self._d_model,
            n_layers=self._n_layers,
        )

    # -- training --------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        model: Model,
        harmful: Sequence[str],
        benign: Sequence[str],
        *,
        direction: Any = None,
        layers: Any = None,
        read_layers: int | Sequence[int] = 4,
        hidden: int = 1024,
        strength: float = 4.0,
        epochs: int = 10,
        lr: float = 5e-5,
        batch_size: int = 8,
        stage2_steps: int = 0,
        seed: int = 0,
        validation: float | tuple[Sequence[str], Sequence[str]] = 0.2,
        weight_reg: float = 0.01,
        weight_decay: float = 0.01,
        kl_weight: float = 1.0,
        stage2_lr: float | None = None,
        stage2_tokens: int = 16,
        chat: Any = "auto",
        progress: bool | None = None,
    ) -> SteeringController:
        """Train a controller to fire on harmful requests and stay quiet on benign ones.

        Stage 1 (the gate) runs on cached activations: one capture pass over every
        prompt, then ``epochs`` epochs of ``BCE(gate logit, harmful=1/benign=0) +
        weight_reg * mean((1 - w)^2)`` (the pull keeps the layer weights near 1: stage 1
        says nothing about which layers matter), AdamW (candle-nn), gradient clipping at
        1.0, seeded mini-batches of ``batch_size``; the parameters with the lowest
        validation BCE are kept. Stage 2 (``stage2_steps > 0``) trains the whole network
        end to end through the frozen model (quantized or f32) with the patch applied:
        cross-entropy of a refusal opening (`steerlab.datasets.load_requests`'s
        ``refusal_openings``, cycled) on harmful prompts plus ``kl_weight *
        KL(p_unsteered || p_steered)`` on the model's own ``stage2_tokens``-token greedy
        continuation of benign prompts; the gate of a training sequence is read at the
        prompt's last token; validated every ``max(1, stage2_steps // 10)`` steps and the
        best parameters kept.

        Args:
            model: a loaded `Model`.
            harmful, benign: requests (plain text, or prompts already rendered with the
                chat template; see `chat`). Each needs at least 2 (one to train, one to
                validate).
            direction: None (the unit difference of mean residuals of harmful and benign
                training prompts at each steered layer, at the last prompt token), a
                `SteeringVector`, or a ``{layer: vector}`` mapping (normalised per layer;
                it must cover the steered layers).
            layers: steered layers (negative from the end); None = the direction's layers
                when one is given, else `default_layers` (the middle half).
            read_layers: an int k (the last k layers, default 4) or a list of layers.
            hidden: the MLP's hidden width (default 1024).
            strength: alpha, in residual-stream units (default 4.0): an absolute size, so
                its effect depends on the model's residual norms (about 100-200 in
                SmolLM2-135M's middle layers, some 60 times more in Gemma-3-270M's);
                `with_strength` changes it after training.
            epochs, lr, batch_size: stage 1 (defaults 10, 5e-5, 8).
            stage2_steps: optimiser steps of stage 2 (default 0: stage 1 only).
            seed: fixes the initialisation, the validation split and the batch order.
            validation: the fraction of each class held out to pick the best epoch
                (default 0.2), or explicit ``(harmful, benign)`` validation requests.
            weight_reg: stage 1's pull of the layer weights towards 1.
            weight_decay: AdamW's decoupled weight decay (both stages).
            kl_weight: stage 2's weight of the benign KL.
            stage2_lr: stage 2's learning rate (None: `lr`).
            stage2_tokens: length of the benign continuations stage 2 keeps close.
            chat: how requests become prompts (`steerlab._chat.request_prompts`):
                ``"auto"`` (default) renders plain requests with the chat template and
                keeps rendered ones; True / False.
            progress: show tqdm bars (None: when stderr is a terminal or notebook).

        Returns:
            The trained controller, with ``history`` and ``training``.

        Raises:
            InvalidTypeError: model not a `Model`; a request not a str.
            InvalidArgumentError: too few requests, bad numbers (non-positive lr, hidden,
                epochs, batch_size; negative stage2_steps, weights; validation outside
                (0, 1)), repeated layers, a direction missing a steered layer or of
                another width.
            OutOfRangeError: a layer the model lacks.
            ContextLengthError: a prompt longer than the context.
        Ctrl-C stops between epochs / steps (and inside one at the next block): the
        result then holds the best parameters so far and a `TrainingInterrupted` warning
        is issued.
        """
        from steerlab.model import Model
        from steerlab.vectors import SteeringVector

        if not isinstance(model, Model):
            raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
        core = model._core
        hs = request_prompts(core, _args.texts(harmful, "harmful")[0], chat)
        bs = request_prompts(core, _args.texts(benign, "benign")[0], chat)
        n_hidden = _args.integer(hidden, "hidden", minimum=1, maximum=1 << 20)
        alpha = _args.real(strength, "strength")
        n_epochs = _args.integer(epochs, "epochs", minimum=1)
        rate = _args.real(lr, "lr", above=0.0)
        rate2 = rate if stage2_lr is None else _args.real(stage2_lr, "stage2_lr", above=0.0)
        size = _args.integer(batch_size, "batch_size", minimum=1, maximum=1 << 20)
        n2 = _args.integer(stage2_steps, "stage2_steps", minimum=0)
        seed_v = _args.integer(seed, "seed", minimum=0, maximum=_args.U64_MAX)
        w_reg = _args.real(weight_reg, "weight_reg", minimum=0.0)
        decay = _args.real(weight_decay, "weight_decay", minimum=0.0)
        w_kl = _args.real(kl_weight, "kl_weight", minimum=0.0)
        n_tok = _args.integer(stage2_tokens, "stage2_tokens", minimum=1, maximum=4096)
        n = model.n_layers
        if isinstance(read_layers, int | np.integer) and not isinstance(read_layers, bool):
            k = _args.integer(read_layers, "read_layers", minimum=1, maximum=n)
            reads = list(range(n - k, n))
        else:
            reads = _layer_list(model, read_layers, "read_layers")

        # Validation split (seeded, per class) or explicit requests.
        rng = np.random.default_rng(seed_v)
        if isinstance(validation, tuple):
            if len(validation) != 2:
                raise InvalidArgumentError(
                    "validation must be a fraction or a (harmful, benign) pair of request lists"
                )
            vh = request_prompts(core, _args.texts(validation[0], "validation harmful")[0], chat)
            vb = request_prompts(core, _args.texts(validation[1], "validation benign")[0], chat)
            th, tb = hs, bs
        else:
            frac = _args.real(validation, "validation", above=0.0)
            if frac >= 1.0:
                raise InvalidArgumentError(f"validation must be in (0, 1), got {frac}")

            def cut(items: list[str], what: str) -> tuple[list[str], list[str]]:
                if len(items) < 2:
                    raise InvalidArgumentError(
                        f"{what} has {len(items)} request(s); expected at least 2 (one to "
                        "train, one to validate)"
                    )
                order = rng.permutation(len(items))
                nv = min(len(items) - 1, max(1, round(frac * len(items))))
                return [items[i] for i in order[nv:]], [items[i] for i in order[:nv]]

            th, vh = cut(hs, "harmful")
            tb, vb = cut(bs, "benign")
        if not (vh and vb):
            raise InvalidArgumentError("the validation requests need harmful and benign ones")

        # Steered layers and directions.
        given: Mapping[int, Any] | None = None
        if direction is not None:
            if isinstance(direction, SteeringVector):
                direction.check_model(model)
                given = direction.vectors
            elif isinstance(direction, Mapping):
                given = {
                    model._resolve_layer(_args.index(k, "a direction layer")): v
                    for k, v in direction.items()
                }
            else:
                raise InvalidTypeError(
                    "direction must be None, a SteeringVector or a {layer: vector} mapping, "
                    f"got {type(direction).__name__}"
                )
        if layers is None:
            steered = sorted(given) if given is not None else default_layers(n)
        else:
            steered = _layer_list(model, layers, "layers")

        t0 = time.perf_counter()
        wanted = sorted(set(reads) | (set(steered) if given is None else set()))
        col = {layer: i for i, layer in enumerate(wanted)}
        kw: dict[str, Any] = {"position": "last", "batch_size": size, "progress": progress}
        # A reduced capture is one array [n, len(layers), d].
        ah = cast("FloatArray", model.capture(th, layers=wanted, **kw))
        ab = cast("FloatArray", model.capture(tb, layers=wanted, **kw))
        avh = cast("FloatArray", model.capture(vh, layers=reads, **kw))
        avb = cast("FloatArray", model.capture(vb, layers=reads, **kw))
        d = model.d_model
        if given is None:
            diff = {
                layer: ah[:, col[layer]].astype(np.float64).mean(0)
                - ab[:, col[layer]].astype(np.float64).mean(0)
                for layer in steered
            }
            dirs = _unit_rows(diff, steered, d)
        else:
            dirs = _unit_rows(given, steered, d)

        def states(a: FloatArray, cols: list[int]) -> FloatArray:
            return np.ascontiguousarray(a[:, cols].reshape(len(a), -1), dtype=np.float32)

        rc = [col[layer] for layer in reads]
        x = np.concatenate([states(ah, rc), states(ab, rc)])
        y = np.concatenate([np.ones(len(ah)), np.zeros(len(ab))]).astype(np.float32)
        xv = np.concatenate(
            [states(avh, list(range(len(reads)))), states(avb, list(range(len(reads))))]
        )
        yv = np.concatenate([np.ones(len(avh)), np.zeros(len(avb))]).astype(np.float32)
        trainer = _core.ControllerTrainer(
            core,
            x,
            y,
            xv,
            yv,
            reads,
            steered,
            dirs,
            hidden=n_hidden,
            strength=alpha,
            weight_reg=w_reg,
            lr=rate,
            weight_decay=decay,
            max_grad_norm=1.0,
            batch_size=size,
            seed=seed_v,
        )
        history: list[dict[str, float]] = []
        interrupted = False
        bar = progress_bar(progress, n_epochs, 1, "controller stage 1", "epoch")
        try:
            for _ in range(n_epochs):
                rec = trainer.epoch()
                history.append({"stage": 1.0} | {k: float(v) for k, v in rec.items()})
                bar.update(1)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(
                        {"val_bce": f"{rec['val_bce']:.4g}", "val_acc": f"{rec['val_acc']:.3f}"}
                    )
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        if not history:
            raise KeyboardInterrupt
        trainer.restore_best()
        t1 = time.perf_counter()

        best_val: float | None = None
        start_val: float | None = None
        best_step: int | None = None
        if n2 > 0 and not interrupted:
            refusals = _requests_openings()
            opening_ids = [core.encode(o, False) for o in refusals]
            order = rng.permutation(len(opening_ids))

            def harmful_examples(prompts: list[str], st: FloatArray) -> list[Any]:
                out = []
                for i, p in enumerate(prompts):
                    pid = core.encode(p)
                    cont = opening_ids[int(order[i % len(order)])]
                    out.append((pid + cont, len(pid), st[i]))
                return out

            def benign_examples(prompts: list[str], st: FloatArray) -> list[Any]:
                conts = model.generate(
                    prompts,
                    max_new_tokens=n_tok,
                    return_ids=True,
                    batch_size=size,
                    progress=progress,
                )
                out = []
                for i, (p, cont) in enumerate(zip(prompts, conts, strict=True)):
                    pid = core.encode(p)
                    if not cont:  # an immediate eos: keep it as the continuation
                        cont = [model.eos_ids[0]] if model.eos_ids else []
                    if cont:
                        out.append((pid + list(cont), len(pid), st[i]))
                return out

            k = len(reads)
            trainer.start_stage2(
                harmful_examples(th, states(ah, rc)),
                benign_examples(tb, states(ab, rc)),
                harmful_examples(vh, states(avh, list(range(k)))),
                benign_examples(vb, states(avb, list(range(k)))),
                kl_weight=w_kl,
                lr=rate2,
                weight_decay=decay,
                max_grad_norm=1.0,
            )
            every = max(1, n2 // 10)
            v0 = trainer.stage2_validate()
            best_val = start_val = float(v0["loss"])
            best_step = -1
            trainer.keep()
            bar = progress_bar(progress, n2, 1, "controller stage 2", "step")
            try:
                for s in range(n2):
                    rec = trainer.stage2_step()
                    entry = {"stage": 2.0} | {k2: float(v) for k2, v in rec.items()}
                    if (s + 1) % every == 0 or s + 1 == n2:
                        val = float(trainer.stage2_validate()["loss"])
                        entry["val_loss"] = val
                        if val < best_val:
                            best_val, best_step = val, s
                            trainer.keep()
                    history.append(entry)
                    bar.update(1)
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix({"loss": f"{rec['loss']:.4g}"})
            except KeyboardInterrupt:
                interrupted = True
            finally:
                bar.close()
            trainer.restore_kept()
        if interrupted:
            warnings.warn(
                "SteeringController.fit stopped by Ctrl-C; the controller holds the best "
                "parameters of the completed epochs/steps",
                TrainingInterrupted,
                stacklevel=2,
            )
        p = trainer.params()
        ctrl_params = {name: p[name] for name in _TENSORS}
        training: dict[str, Any] = {
            "method": "weighted steering controller (Hegazy et al. 2025)",
            "epochs": n_epochs,
            "lr": rate,
            "stage2_lr": rate2,
            "batch_size": size,
            "seed": seed_v,
            "weight_reg": w_reg,
            "weight_decay": decay,
            "kl_weight": w_kl,
            "stage2_steps": n2,
            "stage2_tokens": n_tok,
            "direction": "mean difference (harmful - benign)" if given is None else "given",
            "n_train": [len(th), len(tb)],
            "n_validation": [len(vh), len(vb)],
            "best_epoch": int(np.argmin([h["val_bce"] for h in history if h["stage"] == 1.0])),
            "best_stage2_val_loss": best_val,
            # The stage-2 validation loss before its first step, and the step whose
            # parameters were kept (-1: none beat the start, stage 1's are kept).
            "stage2_val_loss_start": start_val,
            "best_stage2_step": best_step,
            "interrupted": interrupted,
            "dataset_sha256": _data_hash(hs, bs),
            "model_dtype": model.dtype,
            "seconds_stage1": t1 - t0,
            "seconds": time.perf_counter() - t0,
        }
        ctrl = cls(
            ctrl_params,
            read_layers=reads,
            layers=steered,
            hidden=n_hidden,
            strength=alpha,
            d_model=d,
            n_layers=n,
            fingerprint=model.fingerprint,
            history=history,
            training=training,
        )
        out = ctrl._core.outputs(xv)
        nh = len(avh)
        training = ctrl.training
        training["layer_weights"] = {
            "harmful": out[:nh, 1:].mean(0).round(6).tolist(),
            "benign": out[nh:, 1:].mean(0).round(6).tolist(),
        }
        training["validation_gate"] = {
            "harmful": float(out[:nh, 0].mean()),
            "benign": float(out[nh:, 0].mean()),
        }
        return ctrl

    # -- use -------------------------------------------------------------------------

    def _row_item(self) -> _core.Controller:
        """The engine's module: the same object in every row of a call."""
        return self._core

    def check_model(self, model: Model) -> None:
        """Refuse a model other than the one this was trained on.

        Raises:
            InvalidArgumentError: another fingerprint.
            ShapeError / OutOfRangeError: another width or depth.
        """
        if model.d_model != self._d_model:
            raise ShapeError(
                f"this controller reads activations of width {self._d_model}, but the "
                f"model's d_model is {model.d_model}; it was trained on another model"
            )
        if model.n_layers != self._n_layers:
            raise OutOfRangeError(
                f"this controller was trained on a model with {self._n_layers} layers, this "
                f"one has {model.n_layers}"
            )
        if model.fingerprint != self._fingerprint:
            raise InvalidArgumentError(
                f"this controller was trained on model {self._fingerprint[:16]}..., not on "
                f"{model.fingerprint[:16]}... (another model or file)"
            )

    def _states(
        self,
        model: Model,
        prompts: str | Sequence[str],
        chat: Any,
        batch_size: int,
        progress: bool | None = None,
    ) -> FloatArray:
        from steerlab.model import Model

        if not isinstance(model, Model):
            raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
        self.check_model(model)
        items, _ = _args.texts(prompts, "prompts")
        ps = request_prompts(model._core, items, chat)
        a = cast(
            "FloatArray",
            model.capture(
                ps,
                layers=self.read_layers,
                position="last",
                batch_size=batch_size,
                progress=progress,
            ),
        )
        return np.ascontiguousarray(a.reshape(len(ps), -1), dtype=np.float32)

    def gate(
        self,
        model: Model,
        prompts: str | Sequence[str],
        *,
        chat: Any = "auto",
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> npt.NDArray[np.float32]:
        """The gate at each prompt's last token (what the first patched position uses).

        Args:
            model: the model it was trained on.
            prompts: requests or rendered prompts (`chat` as in `fit`).
            batch_size: prompts per capture batch; progress: tqdm bars (None: automatic).

        Returns:
            float32 ``[n]`` in [0, 1].

        Raises:
            InvalidArgumentError / ShapeError / OutOfRangeError: another model;
            InvalidTypeError: prompts not str.
        """
        return self._core.outputs(self._states(model, prompts, chat, batch_size, progress))[:, 0]

    def weights(
        self,
        model: Model,
        prompts: str | Sequence[str],
        *,
        chat: Any = "auto",
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> npt.NDArray[np.float32]:
        """The per-layer weights ``w_l`` at each prompt's last token: float32 ``[n, L]``
        in [0, 1] (columns in `layers` order). Errors as `gate`."""
        return self._core.outputs(self._states(model, prompts, chat, batch_size, progress))[:, 1:]

    def trace(
        self,
        model: Model,
        prompts: str | Sequence[str],
        *,
        continuations: str | Sequence[str] | None = None,
        max_new_tokens: int = 32,
        chat: Any = "auto",
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> list[GateTrace]:
        """Generate greedily with this controller and record the gate in force at every
        position that predicted a token (the prompt's last token, then each new token):
        the gate is recomputed at every step from the previous step's states.

        Args:
            model: the model it was trained on.
            prompts: requests or rendered prompts (`chat` as in `fit`).
            continuations: optional text per prompt fed as its first new tokens (teacher
                forcing, e.g. a conversation that turns harmful) before the generation
                goes on greedily; encoded without special tokens.
            max_new_tokens: new tokens per prompt after any continuation (>= 1).
            batch_size: prompts per batch; progress: tqdm bars (None: automatic).

        Returns:
            One `GateTrace` per prompt.

        Raises:
            InvalidArgumentError / ShapeError / OutOfRangeError: another model, no prompts,
                a count of continuations that is not the count of prompts.
            InvalidTypeError: prompts not str.
        """
        from steerlab.model import Model

        if not isinstance(model, Model):
            raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
        self.check_model(model)
        items, _ = _args.texts(prompts, "prompts")
        n_new = _args.integer(max_new_tokens, "max_new_tokens", minimum=1, maximum=1 << 20)
        size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
        core = model._core
        ps = request_prompts(core, items, chat)
        ids = _batches.encode(core, ps, "prompts")
        if continuations is None:
            forced = None
            total = n_new
        else:
            conts, _ = _args.texts(continuations, "continuations")
            if len(conts) != len(ps):
                raise InvalidArgumentError(
                    f"{len(conts)} continuations for {len(ps)} prompts; expected one per prompt"
                )
            forced = [core.encode(c, False) for c in conts]
            total = n_new + max(len(f) for f in forced)
        config = _core.GenConfig(max_new_tokens=total)
        rows: list[Any] = [[self._core]] * len(ps)
        new, gates, _ = _batches.traced(
            core, ids, rows, config, forced, False, size, progress, "trace", then_sample=True
        )
        out = []
        for i, p in enumerate(ps):
            row = new[i]
            if forced is not None:
                # The forced tokens, then at most max_new_tokens generated ones.
                row = row[: len(forced[i]) + n_new]
            g = np.asarray((gates or [[]] * len(ps))[i][: len(row)], dtype=np.float32)
            out.append(GateTrace(p, list(row), model.decode(row, True), _readonly(g)))
        return out

    def with_strength(self, strength: float) -> SteeringController:
        """The same controller with another alpha (0 is exactly the unsteered model)."""
        return SteeringController(
            self._params,
            read_layers=self.read_layers,
            layers=self.layers,
            hidden=self.hidden,
            strength=_args.real(strength, "strength"),
            d_model=self._d_model,
            n_layers=self._n_layers,
            fingerprint=self._fingerprint,
            history=self.history,
            training=self.training,
        )

    @property
    def params(self) -> dict[str, FloatArray]:
        """Read-only float32 arrays: ``mean``, ``scale`` ``[k*d]``, ``w1`` ``[k*d,
        hidden]``, ``b1`` ``[hidden]``, ``w2`` ``[hidden, 1 + L]``, ``b2`` ``[1 + L]``,
        ``directions`` ``[L, d]``."""
        return dict(self._params)

    @property
    def n_params(self) -> int:
        """Trained parameters (the MLP's weights and biases)."""
        return sum(self._params[k].size for k in ("w1", "b1", "w2", "b2"))

    # -- looking at it ---------------------------------------------------------------

    def plot(self, ax: Any = None) -> Any:
        """Loss curves (stage 1 per epoch, stage 2 per step) and the per-layer weights
        (mean over the validation prompts, harmful and benign). Needs matplotlib.

        Returns:
            The matplotlib Figure.
        """
        from steerlab.plots import plot_controller

        return plot_controller(self, ax=ax)

    def __repr__(self) -> str:
        return (
            f"SteeringController(read_layers={self.read_layers}, layers={self.layers[0]}.."
            f"{self.layers[-1]} ({len(self.layers)}), hidden={self.hidden}, "
            f"strength={self.strength:g})"
        )

    # -- files -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write safetensors with JSON metadata (layers, strength, the model's
        fingerprint, width and depth, training settings and history).

        Raises:
            ModelNotFoundError: the folder to write into does not exist.
            ModelFormatError: the file cannot be written (e.g. the path is a folder).
        """
        stage1 = [h for h in self.history if h.get("stage") == 1.0]
        meta = {
            "format_version": 1,
            "kind": _ARTIFACT_KIND,
            "fingerprint": self._fingerprint,
            "d_model": self._d_model,
            "n_layers": self._n_layers,
            "sites": [f"resid_post.{layer}" for layer in self.layers],
            "hyperparameters": {
                "read_layers": self.read_layers,
                "layers": self.layers,
                "hidden": self.hidden,
                "strength": self.strength,
                "training": self.training,
                "history": [
                    {k: (v if np.isfinite(v) else None) for k, v in h.items()} for h in self.history
                ],
            },
            "history": {
                "steps": len(stage1),
                "first_loss": stage1[0]["loss"] if stage1 else None,
                "final_loss": stage1[-1]["loss"] if stage1 else None,
                "best_loss": None,
                "best_step": None,
            },
            "records": [],
        }
        # The file holds 1-D tensors; the shapes follow from the layers and widths.
        tensors = [
            (name, [int(self._params[name].size)], np.ascontiguousarray(self._params[name]).ravel())
            for name in _TENSORS
        ]
        _core.save_learned(_args.path(path, "path"), json.dumps(meta), tensors)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Model) -> SteeringController:
        """Read a controller saved by `save`, for `model`.

        Raises:
            ModelNotFoundError: no file at the path.
            ModelFormatError: not a steerlab learned-module file, corrupt, another kind
                of module, or tensors or metadata that do not hold together.
            InvalidArgumentError: trained on another model (fingerprint differs).
            ShapeError: trained on a model of another width.
        """
        from steerlab.model import Model

        if not isinstance(model, Model):
            raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
        p = _args.path(path, "path")
        meta_json, tensors = _core.load_learned(p, model.fingerprint, model.d_model)
        meta = json.loads(meta_json)
        if meta.get("kind") != _ARTIFACT_KIND:
            raise ModelFormatError(
                f"{p}: holds a {meta.get('kind')!r} module, not a steering controller"
            )
        try:
            hyper = meta["hyperparameters"]
            if meta["n_layers"] != model.n_layers:
                raise ValueError(
                    f"n_layers is {meta['n_layers']}, but this model has {model.n_layers}"
                )
            flat = {name: arr for name, _shape, arr in tensors}
            if set(flat) != set(_TENSORS):
                raise ValueError(f"tensors {sorted(flat)}; expected {sorted(_TENSORS)}")
            kd = len(hyper["read_layers"]) * int(meta["d_model"])
            h, n_out = int(hyper["hidden"]), 1 + len(hyper["layers"])
            shapes = {
                "mean": (kd,),
                "scale": (kd,),
                "w1": (kd, h),
                "b1": (h,),
                "w2": (h, n_out),
                "b2": (n_out,),
                "directions": (n_out - 1, int(meta["d_model"])),
            }
            arrays = {}
            for name, shape in shapes.items():
                if flat[name].size != int(np.prod(shape)):
                    raise ValueError(
                        f"tensor {name!r} has {flat[name].size} values; expected {shape}"
                    )
                arrays[name] = flat[name].reshape(shape)
            stored = hyper.get("history", [])
            if not (isinstance(stored, list) and all(isinstance(h, dict) for h in stored)):
                raise ValueError("its history is not a list of records")
            history = [
                {k: (float("nan") if v is None else float(v)) for k, v in h.items()} for h in stored
            ]
            return cls(
                arrays,
                read_layers=hyper["read_layers"],
                layers=hyper["layers"],
                hidden=hyper["hidden"],
                strength=hyper["strength"],
                d_model=meta["d_model"],
                n_layers=meta["n_layers"],
                fingerprint=meta["fingerprint"],
                history=history,
                training=hyper.get("training", {}),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ModelFormatError(f"{p}: the controller metadata is invalid ({exc})") from None
        except (InvalidArgumentError, InvalidTypeError, ShapeError, OutOfRangeError) as exc:
            raise ModelFormatError(f"{p}: the controller does not hold together ({exc})") from None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (
            _restore,
            (
                {k: np.array(v) for k, v in self._params.items()},
                self.read_layers,
                self.layers,
                self.hidden,
                self.strength,
                self._d_model,
                self._n_layers,
                self._fingerprint,
                self.history,
                self.training,
            ),
        )


def _requests_openings() -> list[str]:
    from steerlab.datasets import load_requests

    return list(load_requests().refusal_openings)


def _restore(
    params: dict[str, Any],
    read_layers: list[int],
    layers: list[int],
    hidden: int,
    strength: float,
    d_model: int,
    n_layers: int,
    fingerprint: str,
    history: list[dict[str, float]],
    training: dict[str, Any],
) -> SteeringController:
    """Unpickle (checked again: a pickle is data from outside)."""
    return SteeringController(
        params,
        read_layers=read_layers,
        layers=layers,
        hidden=hidden,
        strength=strength,
        d_model=d_model,
        n_layers=n_layers,
        fingerprint=fingerprint,
        history=history,
        training=training,
    )
