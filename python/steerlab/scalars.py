"""Activation scaling: a few learned numbers at (site, layer, position) that flip a
model's choice between two answers while leaving the rest of its output alone.

Follows Stoehr et al. 2024, "Activation Scaling for Steering and Interpreting Language
Models" (arXiv 2410.04962). Three kinds of module act on the output of a sub-block
(``attn_out`` / ``mlp_out`` of a layer) at each prompt position ``p``:

- ``"scalar"`` (ActivScalar): ``h <- h * (1 + beta * alpha[p])``, one alpha per (site,
  layer, position), 0 at initialisation (the identity);
- ``"vector"`` (SteerVec, the additive baseline): ``h <- h + beta * v[p]``, one vector
  per (site, layer, position);
- ``"dynamic"`` (DynScalar): ``h <- h * (1 + beta * (w . h + b))``, one probe ``(w, b)``
  per (site, layer) shared over positions, so it applies to prompts of any length.

``beta`` is a strength chosen at use time (``sc * beta``; 1 is what training saw, 0 is
exactly the unsteered model, negative reverses the effect). The modules are data that
the engine's forward runs (no Python inside the loop): an `ActivationScalars` is
accepted wherever a steering is (`Model.logits`, `Model.generate`, per-row lists).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _args, _batches, _core
from steerlab._layers import Positions, check_positions
from steerlab.errors import (
    DivisionByZeroError,
    InvalidArgumentError,
    InvalidTypeError,
    ModelFormatError,
)
from steerlab.evaluate import _answer_inputs
from steerlab.optimize import run_steps
from steerlab.steering import Operation, Steering

if TYPE_CHECKING:
    from steerlab.model import Model

__all__ = ["KINDS", "ActivationScalars"]

#: The module kinds: ActivScalar, SteerVec, DynScalar.
KINDS = ("scalar", "vector", "dynamic")
_OP = {"scalar": "activation_scalar", "vector": "position_vectors", "dynamic": "dynamic_scalar"}
_PAPER_NAME = {"scalar": "ActivScalar", "vector": "SteerVec", "dynamic": "DynScalar"}
#: The sites a module may act on (the paper uses attn_out and mlp_out).
_SITES = ("attn_out", "mlp_out", "resid_mid", "resid_post")
_ARTIFACT_KIND = "activation_scalars"
#: The largest strength the engine can apply (beta is a float32 there).
_BETA_MAX = float(np.finfo(np.float32).max)

FloatArray = npt.NDArray[np.float32]
SiteKey = tuple[str, int]


def _readonly(a: npt.ArrayLike) -> FloatArray:
    out = np.array(a, dtype=np.float32)
    out.flags.writeable = False
    return out


def _data_hash(prompts: list[str], targets: list[str], foils: list[str]) -> str:
    h = hashlib.sha256()
    for row in zip(prompts, targets, foils, strict=True):
        h.update(json.dumps(row).encode())
    return h.hexdigest()


class ActivationScalars:
    """Learned activation-scaling modules (ActivScalar, SteerVec or DynScalar) at some
    (site, layer) pairs, with a use-time strength ``beta``. Train with
    `ActivationScalars.fit`, read from disk with `ActivationScalars.load`.

    Attributes:
        kind: ``"scalar"``, ``"vector"`` or ``"dynamic"``.
        sites: the ``(site, layer)`` pairs, in training order.
        beta: the strength (``sc * k`` multiplies it).
        layout: the number of prompt tokens the static kinds are tied to (None for
            ``"dynamic"``).
        tokens: the training prompt's tokens (labels for plots; static kinds only).
        positions: where the modules act (as at training).
        history: one dict per training step: ``step``, ``loss`` (the weighted total),
            ``grad_norm``, ``lr``, and the unweighted terms ``effectiveness`` (mean
            ``-log sigmoid(LD)``), ``faithfulness`` (mean KL, nats), ``minimality`` (the
            L1 sum) and ``logit_diff`` (mean LD of the batch, before the step).
        training: the training settings and figures (steps, weights, time in seconds,
            dataset hash, the model's fingerprint).

    Use: ``model.logits(prompts, steering=sc)``, ``model.generate(prompts,
    steering=sc * 0.5)``, per-row lists ``[sc, -sc, None]``. A static module applied to
    a prompt of another token length raises `ShapeError` (naming DynScalar); generated
    tokens (positions past the layout) are left alone by the static kinds.
    """

    __slots__ = (
        "_beta",
        "_d_model",
        "_fingerprint",
        "_n_layers",
        "_params",
        "_steering",
        "history",
        "kind",
        "layout",
        "positions",
        "tokens",
        "training",
    )

    def __init__(
        self,
        kind: str,
        params: Mapping[SiteKey, npt.ArrayLike],
        *,
        d_model: int,
        n_layers: int,
        fingerprint: str,
        beta: float = 1.0,
        layout: int | None = None,
        positions: Any = "all",
        tokens: Sequence[str] | None = None,
        history: Sequence[dict[str, float]] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        """Wrap trained parameters (normally `fit` or `load` do this).

        Args:
            kind: one of `KINDS`.
            params: ``{(site, layer): flat float32}``: alpha ``[P]``; v ``[P * d_model]``
                (row-major ``[P, d_model]``); w then b ``[d_model + 1]``.
            d_model, n_layers, fingerprint: the model the modules were trained on.
            beta: strength; layout: P (static kinds); positions: where they act.

        Raises:
            InvalidArgumentError: an unknown kind or site, a non-finite beta.
            ShapeError: parameters whose size does not fit the kind, layout and width.
        """
        if kind not in KINDS:
            raise InvalidArgumentError(
                f"kind must be one of {KINDS} (ActivScalar, SteerVec, DynScalar), got "
                f"{_args.show(kind)}"
            )
        self.kind = kind
        self._d_model = _args.integer(d_model, "d_model", minimum=1)
        self._n_layers = _args.integer(n_layers, "n_layers", minimum=1)
        self._fingerprint = str(fingerprint)
        self._beta = _args.real(beta, "beta", minimum=-_BETA_MAX, maximum=_BETA_MAX)
        if kind == "dynamic" and layout is not None:
            raise InvalidArgumentError(
                f"a 'dynamic' module has no token layout, got layout={layout!r}; expected None"
            )
        if kind != "dynamic" and (
            not isinstance(layout, int) or isinstance(layout, bool) or layout < 1
        ):
            raise InvalidArgumentError(
                f"a {kind!r} module needs its token layout (a positive int), got {layout!r}"
            )
        self.layout = layout
        per_site = {
            "scalar": self.layout,
            "vector": None if self.layout is None else self.layout * self._d_model,
            "dynamic": self._d_model + 1,
        }[kind]
        checked: dict[SiteKey, FloatArray] = {}
        for (site, layer), arr in params.items():
            if site not in _SITES:
                raise InvalidArgumentError(f"unknown site {site!r}; expected one of {_SITES}")
            a = _args.vector(np.asarray(arr, dtype=np.float32).reshape(-1), f"{site}[{layer}]")
            if a.shape[0] != per_site:
                from steerlab.errors import ShapeError

                raise ShapeError(
                    f"the {kind} parameters at {site}[{layer}] hold {a.shape[0]} values; "
                    f"expected {per_site}"
                )
            checked[(site, int(layer))] = a
        if not checked:
            raise InvalidArgumentError("no sites: expected at least one (site, layer)")
        self._params = checked
        self.positions: Positions = check_positions(positions)
        if self.layout is not None:
            outside = ~self._position_mask()
            for (site, layer), a in checked.items():
                rows = a.reshape(self.layout, -1)[outside]
                if np.any(rows != 0):
                    raise InvalidArgumentError(
                        f"the {kind} parameters at {site}[{layer}] are non-zero at positions "
                        f"outside positions={self.positions!r} (which the module does not "
                        f"touch); expected zeros there"
                    )
        if tokens is not None and (
            self.layout is None
            or isinstance(tokens, str)
            or not isinstance(tokens, Sequence)
            or len(tokens) != self.layout
            or not all(isinstance(t, str) for t in tokens)
        ):
            raise InvalidArgumentError(
                f"tokens must be None or a list of {self.layout} str (one per position of "
                f"the layout; None for a dynamic module), got {tokens!r:.80}"
            )
        self.tokens = None if tokens is None else list(tokens)
        self.history = [dict(r) for r in (history or [])]
        self.training = dict(training or {})
        self._steering: Steering | None = None

    # -- training ------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        model: Model,
        prompts: Sequence[str],
        targets: Sequence[str],
        foils: Sequence[str],
        *,
        kind: str = "scalar",
        sites: Sequence[str] = ("attn_out", "mlp_out"),
        layers: int | Sequence[int] | None = None,
        effectiveness: float = 1.0,
        faithfulness: float = 1.0,
        sparsity: float = 1e-3,
        steps: int = 300,
        lr: float = 1e-2,
        batch_size: int = 16,
        seed: int = 0,
        positions: Any = "all",
        weight_decay: float = 0.0,
        max_grad_norm: float | None = None,
        keep: str = "last",
        progress: bool | None = None,
    ) -> ActivationScalars:
        """Train modules that make the model prefer each target over its foil at the
        last prompt position (Stoehr et al. 2024).

        The loss on a mini-batch is ``effectiveness * mean softplus(-LD)`` with ``LD =
        logit(target) - logit(foil)`` at the last prompt position (``-log sigmoid``,
        bounded below: a flipped record stops pulling), ``+ faithfulness * mean KL(p ||
        q)`` where p and q are the unsteered and steered next-token distributions with
        the two answer tokens removed and renormalised (nats), ``+ sparsity * L1`` of
        the parameters (the sum of ``|alpha|``, of every ``|v|`` entry, or of ``|w|``
        and ``|b|``: a sum, so SteerVec's penalty covers d_model times more entries).
        AdamW from candle-nn steps on the L1 pseudo-gradient of OWL-QN (Andrew & Gao
        2007) and no step carries a parameter across 0, so a parameter the data pulls
        less than ``sparsity`` stays exactly 0 (`n_nonzero` counts the others). The
        variables are preconditioned per site (v and w scaled by the site's mean
        activation norm) so one ``lr`` moves the activations alike for the three kinds.
        The base model is frozen and trained through as loaded (quantized or f32), with
        the blocks below the first site run once per record.

        Args:
            model: a loaded `Model`.
            prompts: texts (tokenized as `Model.encode` does). The static kinds need
                every prompt to have the same number of tokens.
            targets, foils: one per prompt; strings whose first token (without special
                tokens) is the answer, e.g. ``" Paris"``; target and foil must differ in
                that token.
            kind: ``"scalar"`` (ActivScalar, default), ``"vector"`` (SteerVec) or
                ``"dynamic"`` (DynScalar).
            sites: sub-block outputs to act on (default ``("attn_out", "mlp_out")``;
                ``"resid_mid"`` / ``"resid_post"`` also work).
            layers: block indices (negative from the end); None = every layer.
            effectiveness, faithfulness, sparsity: the loss weights (>= 0; defaults
                1.0, 1.0, 1e-3).
            steps: optimiser steps (>= 1); lr: AdamW learning rate (> 0, finite);
                batch_size: records per step; seed: fixes the batch order.
            positions: where the modules act: ``"all"`` (default: every prompt
                position), ``"prompt"`` (the same here), ``"last"`` (the last prompt
                position), or distinct prompt indices (an int or a list; negative from
                the end). A static module restricted to some positions still holds (and
                needs) the whole token layout.
            weight_decay: AdamW's decoupled decay (default 0); max_grad_norm: clip the
                global gradient norm (None: no clipping).
            keep: ``"last"`` (default) or ``"best"`` (the parameters before the step
                with the lowest batch loss).
            progress: show a tqdm bar (None: when stderr is a terminal or notebook).

        Returns:
            The trained `ActivationScalars` (``beta = 1``), with ``history`` and
            ``training`` (including ``seconds``).

        Raises:
            InvalidTypeError: model not a `Model`; texts not str.
            InvalidArgumentError: empty or mismatched prompts/targets/foils, a target
                or foil that tokenizes to nothing, a target equal to its foil, an
                unknown kind or site, repeated layers or positions, ``steps < 1``, a
                non-finite or non-positive lr, negative weights, bad ``keep``.
            ShapeError: a static kind on prompts of several token lengths.
            OutOfRangeError: a layer the model lacks, a position outside a prompt.
            ContextLengthError: a prompt longer than the context.
        Ctrl-C stops between steps (and inside a step at the next block): with steps
        done the result holds them and a `TrainingInterrupted` warning is issued.
        """
        from steerlab.model import Model

        if not isinstance(model, Model):
            raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
        if kind not in KINDS:
            raise InvalidArgumentError(
                f"kind must be one of {KINDS} ('scalar' = ActivScalar, 'vector' = SteerVec, "
                f"'dynamic' = DynScalar), got {_args.show(kind)}"
            )
        # The same checks and answer tokens as sl.evaluate.answer_flips.
        ps, ts, fs, good_ids, bad_ids = _answer_inputs(model, prompts, targets, foils)
        site_names = [sites] if isinstance(sites, str) else list(sites)
        if not site_names:
            raise InvalidArgumentError(f"sites is empty; expected some of {_SITES}")
        for s in site_names:
            if s not in _SITES:
                raise InvalidArgumentError(f"unknown site {s!r}; expected some of {_SITES}")
        if len(set(site_names)) != len(site_names):
            raise InvalidArgumentError(f"sites {site_names} repeat a site")
        if layers is None:
            layer_ids = list(range(model.n_layers))
        else:
            if isinstance(layers, int | np.integer) and not isinstance(layers, bool):
                layers = [int(layers)]
            if isinstance(layers, str | bytes) or not isinstance(layers, Iterable):
                raise InvalidTypeError(
                    f"layers must be an int, a list of ints or None, got {type(layers).__name__}"
                )
            layer_ids = [model._resolve_layer(_args.index(x, "a layer")) for x in layers]
            if not layer_ids:
                raise InvalidArgumentError("layers is empty; expected at least one layer")
            if len(set(layer_ids)) != len(layer_ids):
                raise InvalidArgumentError(f"layers {list(layers)} repeat a layer")
        n_steps = _args.integer(steps, "steps", minimum=1)
        rate = _args.real(lr, "lr", above=0.0)
        size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
        seed_v = _args.integer(seed, "seed", minimum=0, maximum=_args.U64_MAX)
        w_eff = _args.real(effectiveness, "effectiveness", minimum=0.0)
        w_faith = _args.real(faithfulness, "faithfulness", minimum=0.0)
        w_sparse = _args.real(sparsity, "sparsity", minimum=0.0)
        decay = _args.real(weight_decay, "weight_decay", minimum=0.0)
        clip = (
            None if max_grad_norm is None else _args.real(max_grad_norm, "max_grad_norm", above=0.0)
        )
        if keep not in ("last", "best"):
            raise InvalidArgumentError(f"keep must be 'last' or 'best', got {_args.show(keep)}")
        pos = check_positions(positions)
        ids = _batches.encode(model._core, ps, "prompts")
        if isinstance(pos, list):
            for n in sorted({len(i) for i in ids}):
                resolved = [p + n if p < 0 else p for p in pos]
                seen = [p for i, p in enumerate(resolved) if p in resolved[:i]]
                if seen:
                    raise InvalidArgumentError(
                        f"positions {pos} name position {seen[0]} twice on a prompt of {n} "
                        f"tokens; expected distinct positions"
                    )
        good, bad = good_ids.tolist(), bad_ids.tolist()
        site_list = [(s, layer) for layer in layer_ids for s in site_names]
        records = list(zip(ids, good, bad, strict=True))
        t0 = time.perf_counter()
        trainer = _core.ScalarTrainer(
            model._core,
            records,
            site_list,
            kind,
            positions=pos,
            effectiveness=w_eff,
            faithfulness=w_faith,
            sparsity=w_sparse,
            lr=rate,
            weight_decay=decay,
            max_grad_norm=clip,
            batch_size=size,
            seed=seed_v,
        )
        history, interrupted = run_steps(
            trainer,
            n_steps,
            progress,
            f"fit {_PAPER_NAME[kind]}",
            f"the modules are the {keep}",
            (("loss", "loss"), ("ld", "logit_diff")),
            stacklevel=3,
        )
        seconds = time.perf_counter() - t0
        params = {
            (site, layer): np.concatenate(arrays)
            for site, layer, arrays in trainer.params(best=keep == "best")
        }
        layout = trainer.layout
        tokens = None if layout is None else [model.decode([t]) for t in ids[0]]
        best = trainer.best
        training: dict[str, Any] = {
            "method": _PAPER_NAME[kind],
            "steps": n_steps,
            "steps_done": len(history),
            "lr": rate,
            "batch_size": min(size, len(records)),
            "seed": seed_v,
            "effectiveness": w_eff,
            "faithfulness": w_faith,
            "sparsity": w_sparse,
            "weight_decay": decay,
            "max_grad_norm": clip,
            "keep": keep,
            "best_step": None if best is None else best[0],
            "best_loss": None if best is None else best[1],
            "interrupted": interrupted,
            "n_records": len(records),
            "dataset_sha256": _data_hash(ps, ts, fs),
            "model_dtype": model.dtype,
            "seconds": seconds,
        }
        return cls(
            kind,
            params,
            d_model=model.d_model,
            n_layers=model.n_layers,
            fingerprint=model.fingerprint,
            layout=layout,
            positions=pos,
            tokens=tokens,
            history=history,
            training=training,
        )

    # -- what it holds ---------------------------------------------------------------

    @property
    def beta(self) -> float:
        return self._beta

    @property
    def sites(self) -> list[SiteKey]:
        return list(self._params)

    @property
    def params(self) -> dict[SiteKey, FloatArray]:
        """``{(site, layer): float32}``: alpha ``[P]`` (``"scalar"``), v ``[P, d_model]``
        (``"vector"``), or ``[d_model + 1]`` = w then b (``"dynamic"``); read-only, beta
        not applied."""
        if self.kind == "vector":
            return {k: v.reshape(-1, self._d_model) for k, v in self._params.items()}
        return dict(self._params)

    def _position_mask(self) -> npt.NDArray[np.bool_]:
        """Which positions of the layout the module touches (static kinds)."""
        p = self.layout or 0
        pos = self.positions
        mask = np.zeros(p, dtype=bool)
        if pos in ("all", "prompt"):
            mask[:] = True
        elif pos == "last":
            mask[p - 1 :] = True
        elif isinstance(pos, list):
            for i in pos:
                q = int(i) + p if int(i) < 0 else int(i)
                if 0 <= q < p:
                    mask[q] = True
        return mask

    def _trained_positions(self) -> int:
        """How many positions per site hold a trained entry (static kinds)."""
        return int(self._position_mask().sum())

    @property
    def n_params(self) -> int:
        """The number of trained parameters: P' per site (``"scalar"``, P' the trained
        positions), P' * d_model (``"vector"``), d_model + 1 (``"dynamic"``)."""
        per = {
            "scalar": self._trained_positions(),
            "vector": self._trained_positions() * self._d_model,
            "dynamic": self._d_model + 1,
        }[self.kind]
        return per * len(self._params)

    def n_nonzero(self, tol: float = 0.0) -> int:
        """The number of parameters whose magnitude exceeds `tol` (beta not applied).
        Training leaves the parameters the data does not need at exactly 0 (the L1 term
        is applied as in OWL-QN), so the default counts exact non-zeros."""
        t = _args.real(tol, "tol", minimum=0.0)
        return int(sum(int(np.count_nonzero(np.abs(a) > t)) for a in self._params.values()))

    # -- use -------------------------------------------------------------------------

    def check_model(self, model: Model) -> None:
        """Raise unless these modules fit `model` (called by every steered call).

        Raises:
            InvalidArgumentError: trained on another model (fingerprint differs).
            ShapeError: another hidden size.
            OutOfRangeError: a layer the model does not have.
        """
        from steerlab.errors import OutOfRangeError, ShapeError

        if model.d_model != self._d_model:
            raise ShapeError(
                f"these ActivationScalars were trained on a model with d_model "
                f"{self._d_model}; this model has d_model {model.d_model}"
            )
        if model.fingerprint != self._fingerprint:
            raise InvalidArgumentError(
                f"these ActivationScalars were trained on the model with fingerprint "
                f"{self._fingerprint[:16]}..., not on this one ({model.fingerprint[:16]}...); "
                f"use them with the model they were trained on"
            )
        for _, layer in self._params:
            if not 0 <= layer < model.n_layers:
                raise OutOfRangeError(
                    f"these ActivationScalars act on layer {layer}; this model has "
                    f"{model.n_layers} layers"
                )

    def to_steering(self) -> Steering:
        """The modules as a `Steering` (one learned operation per site, strength beta)."""
        if self._steering is None:
            op = _OP[self.kind]
            self._steering = Steering.from_operations(
                Operation(op, layer, arr, site, self._beta, self.positions)  # type: ignore[arg-type]
                for (site, layer), arr in self._params.items()
            )
        return self._steering

    def with_beta(self, beta: float) -> ActivationScalars:
        """The same modules at strength `beta`."""
        b = _args.real(beta, "beta", minimum=-_BETA_MAX, maximum=_BETA_MAX)
        new = ActivationScalars.__new__(ActivationScalars)
        for name in self.__slots__:
            setattr(new, name, getattr(self, name))
        new._beta = b
        new._steering = None
        return new

    def __mul__(self, k: float) -> ActivationScalars:
        return self.with_beta(self._beta * _args.factor(k, "ActivationScalars", "multiplied by"))

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> ActivationScalars:
        value = _args.factor(k, "ActivationScalars", "divided by")
        if value == 0.0:
            raise DivisionByZeroError(f"cannot divide ActivationScalars by zero ({k!r})")
        return self.with_beta(self._beta / value)

    def __neg__(self) -> ActivationScalars:
        return self.with_beta(-self._beta)

    def __add__(self, other: object) -> Any:
        raise InvalidTypeError(
            f"ActivationScalars cannot be added to {type(other).__name__}: join steerings "
            f"with sc.to_steering() + other.to_steering() (the operations run in order), or "
            f"pass one per row as a list"
        )

    __radd__ = __add__

    # -- inspection ------------------------------------------------------------------

    def to_pandas(self) -> Any:
        """One row per (site, layer, position) (static kinds) or per (site, layer)
        (``"dynamic"``), beta not applied. Needs pandas.

        Columns: ``site``, ``layer``, ``position``, ``token``, and ``alpha``
        (``"scalar"``), ``norm`` = ||v[p]|| (``"vector"``), or ``w_norm`` = ||w||,
        ``bias`` = b with ``position`` 0 and ``token`` ``"probe"`` (``"dynamic"``).
        """
        import pandas as pd

        rows: list[dict[str, Any]] = []
        for (site, layer), a in self._params.items():
            if self.kind == "dynamic":
                w, b = a[:-1], float(a[-1])
                rows.append(
                    {
                        "site": site,
                        "layer": layer,
                        "position": 0,
                        "token": "probe",
                        "w_norm": float(np.linalg.norm(w.astype(np.float64))),
                        "bias": b,
                    }
                )
                continue
            values = (
                a.astype(np.float64)
                if self.kind == "scalar"
                else np.linalg.norm(a.reshape(-1, self._d_model).astype(np.float64), axis=1)
            )
            col = "alpha" if self.kind == "scalar" else "norm"
            for p, v in enumerate(values):
                token = self.tokens[p] if self.tokens and p < len(self.tokens) else str(p)
                rows.append(
                    {"site": site, "layer": layer, "position": p, "token": token, col: float(v)}
                )
        return pd.DataFrame(rows)

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Heatmap of the parameters by layer x position, one panel per site
        (`steerlab.plots.plot_scalars`): alpha (``"scalar"``), ||v[p]|| (``"vector"``),
        ||w|| (``"dynamic"``). Needs matplotlib and pandas. Returns the Figure."""
        from steerlab.plots import plot_scalars

        value = {"scalar": "alpha", "vector": "norm", "dynamic": "w_norm"}[self.kind]
        return plot_scalars(self.to_pandas(), value=value, ax=ax, **kwargs)

    def plot_history(self, ax: Any = None) -> Any:
        """The loss per training step (matplotlib Figure).

        Raises:
            InvalidArgumentError: no training history (a module built by hand).
        """
        from steerlab.plots import plot_loss

        if not self.history:
            raise InvalidArgumentError("these ActivationScalars have no training history")
        return plot_loss(self.history, ax=ax, title=f"{_PAPER_NAME[self.kind]} training")

    def __repr__(self) -> str:
        layers = sorted({layer for _, layer in self._params})
        span = f"{layers[0]}..{layers[-1]}" if len(layers) > 1 else str(layers[0])
        sites = sorted({s for s, _ in self._params})
        lay = "" if self.layout is None else f", layout={self.layout} tokens"
        return (
            f"ActivationScalars({self.kind!r} / {_PAPER_NAME[self.kind]}, sites={sites}, "
            f"layers {span}{lay}, n_params={self.n_params}, beta={self._beta:g})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActivationScalars):
            return NotImplemented
        return (
            self.kind == other.kind
            and self._beta == other._beta
            and self.layout == other.layout
            and self.positions == other.positions
            and self._fingerprint == other._fingerprint
            and self._params.keys() == other._params.keys()
            and all(np.array_equal(a, other._params[k]) for k, a in self._params.items())
        )

    __hash__ = None  # type: ignore[assignment]

    # -- files -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write safetensors with JSON metadata (kind, beta, layout, the model's
        fingerprint and width, training settings and history).

        Raises:
            IoError: the file cannot be written.
        """
        hyper = {
            "kind": self.kind,
            "beta": self._beta,
            "layout": self.layout,
            "positions": self.positions,
            "tokens": self.tokens,
            "training": self.training,
        }
        losses = [r["loss"] for r in self.history]
        best = int(np.argmin(losses)) if losses else None
        meta = {
            "format_version": 1,
            "kind": _ARTIFACT_KIND,
            "fingerprint": self._fingerprint,
            "d_model": self._d_model,
            "n_layers": self._n_layers,
            "sites": [f"{s}.{layer}" for s, layer in self._params],
            "hyperparameters": hyper,
            "history": {
                "steps": len(losses),
                "first_loss": losses[0] if losses else None,
                "final_loss": losses[-1] if losses else None,
                "best_loss": None if best is None else losses[best],
                "best_step": None if best is None else int(self.history[best].get("step", best)),
            },
            "records": [
                {
                    "step": int(r.get("step", i)),
                    "loss": r["loss"],
                    "grad_norm": r.get("grad_norm", 0.0),
                    "lr": r.get("lr", 0.0),
                    "extra": [
                        [k, v if np.isfinite(v) else None]
                        for k, v in r.items()
                        if k not in ("step", "loss", "grad_norm", "lr")
                    ],
                }
                for i, r in enumerate(self.history)
            ],
        }
        tensors = [
            (f"{s}.{layer}", [int(a.shape[0])], np.ascontiguousarray(a))
            for (s, layer), a in self._params.items()
        ]
        _core.save_learned(_args.path(path, "path"), json.dumps(meta), tensors)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Model) -> ActivationScalars:
        """Read modules saved by `save`, for `model`.

        Raises:
            NotFoundError / IoError: the file cannot be read.
            ModelFormatError: not a steerlab learned-module file, corrupt, or another
                kind of module.
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
                f"{p}: holds a {meta.get('kind')!r} module, not activation scalars"
            )
        hyper = meta.get("hyperparameters", {})
        try:
            params: dict[SiteKey, FloatArray] = {}
            for name, _shape, arr in tensors:
                site, index = name.rsplit(".", 1)
                params[(site, int(index))] = _readonly(arr)
            ordered: dict[SiteKey, FloatArray] = {}
            for entry in meta.get("sites", []):
                site, index = str(entry).rsplit(".", 1)
                ordered[(site, int(index))] = params[(site, int(index))]
            if ordered.keys() != params.keys():
                raise ValueError("the sites listed do not match the tensors")
            if meta["n_layers"] != model.n_layers:
                raise ValueError(
                    f"n_layers is {meta['n_layers']}, but the model it names has "
                    f"{model.n_layers} layers"
                )
            for _, layer in ordered:
                if not 0 <= layer < model.n_layers:
                    raise ValueError(f"layer {layer} is outside this model's {model.n_layers}")
            records = [
                {"step": r["step"], "loss": r["loss"], "grad_norm": r["grad_norm"], "lr": r["lr"]}
                | {k: (float("nan") if v is None else v) for k, v in r.get("extra", [])}
                for r in meta.get("records", [])
            ]
            return cls(
                hyper["kind"],
                ordered,
                d_model=meta["d_model"],
                n_layers=meta["n_layers"],
                fingerprint=meta["fingerprint"],
                beta=hyper.get("beta", 1.0),
                layout=hyper.get("layout"),
                positions=hyper.get("positions", "all"),
                tokens=hyper.get("tokens"),
                history=records,
                training=hyper.get("training", {}),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelFormatError(
                f"{p}: the activation-scalars metadata is invalid ({exc})"
            ) from None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (
            _restore,
            (
                self.kind,
                {k: np.array(v) for k, v in self._params.items()},
                self._d_model,
                self._n_layers,
                self._fingerprint,
                self._beta,
                self.layout,
                self.positions,
                self.tokens,
                self.history,
                self.training,
            ),
        )


def _restore(
    kind: str,
    params: dict[SiteKey, Any],
    d_model: int,
    n_layers: int,
    fingerprint: str,
    beta: float,
    layout: int | None,
    positions: Any,
    tokens: list[str] | None,
    history: list[dict[str, float]],
    training: dict[str, Any],
) -> ActivationScalars:
    """Unpickle (checked again: a pickle is data from outside)."""
    return ActivationScalars(
        kind,
        params,
        d_model=d_model,
        n_layers=n_layers,
        fingerprint=fingerprint,
        beta=beta,
        layout=layout,
        positions=positions,
        tokens=tokens,
        history=history,
        training=training,
    )
