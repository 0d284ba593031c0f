"""`SteeringVector`: per-layer directions plus what they were made from.

A steering vector is ``{layer: float32 [d_model]}`` with metadata (model fingerprint,
width, method, read position, dataset hash, mean residual norms per layer). It can be
passed wherever steerlab takes steering, scaled by an absolute coefficient
(``vec * 4.0``) or to a *relative dose* (``vec.dose(0.1)``: at each layer
``||coef * v|| = 0.1 * mean ||h||``, the mean residual-stream norm measured on reference
texts, the first token's attention-sink norm excluded). Using a vector on a model with
another fingerprint or width raises `InvalidArgumentError` / `ShapeError`.

Layer ``i`` is the residual stream after decoder block ``i`` (Hugging Face
``hidden_states[i + 1]``). llama.cpp control vectors use the same numbering:
``direction.N`` is added to the output of block N, so steerlab layer N is written as
``direction.N`` unchanged. llama.cpp has no slot for block 0's output: a vector that
steers layer 0 cannot be exported to it.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from steerlab import _args, _vector_fit, _vector_io, _vector_meta
from steerlab._layers import Positions, summed_arrays
from steerlab._layers import check_positions as _check_positions

# Names that lived here before the metadata and the builders moved to their own modules:
# importers (steerlab.diagnostics, pickles naming steerlab.vectors.VectorInfo) find them
# here still.
from steerlab._vector_fit import METHODS as METHODS
from steerlab._vector_fit import _iterable as _iterable
from steerlab._vector_fit import _layer_list as _layer_list
from steerlab._vector_fit import capture_pairs as capture_pairs
from steerlab._vector_fit import residual_norms as residual_norms
from steerlab._vector_meta import VectorInfo as VectorInfo
from steerlab._vector_meta import _now as _now
from steerlab.errors import (
    DivisionByZeroError,
    InvalidArgumentError,
    InvalidTypeError,
    OutOfRangeError,
)
from steerlab.steering import Steering

if TYPE_CHECKING:
    from steerlab.contrast import ContrastPairs
    from steerlab.model import Model

__all__ = ["METHODS", "SteeringVector", "VectorInfo", "capture_pairs", "residual_norms"]

FloatArray = npt.NDArray[np.float32]


def _check_scalar(k: Any, op: str) -> float:
    return _args.factor(k, "SteeringVector", op)


class SteeringVector:
    """Per-layer steering directions with metadata; arithmetic like a vector.

    Args:
        directions: ``{layer: vector}`` (non-negative layers; vectors 1-D, equal width).
        info: metadata; default: only the width.
        positions: where the vector is added when used for steering (``"all"``,
            ``"prompt"``, ``"generated"``, ``"last"`` or a list of indices).

    Raises:
        InvalidTypeError: a layer that is not an int, a vector that is not real numbers,
            `info` that is not a `VectorInfo`.
        InvalidArgumentError: no layers, NaN/inf entries, a negative layer.
        ShapeError: vectors of different widths, or not 1-D.

    The value is immutable (read-only float32 copies of the inputs); copies, pickles and
    `save`/`load` keep every attribute.

    Arithmetic: ``v * k``, ``k * v``, ``v / k``, ``-v`` scale; ``v + w`` and ``v - w``
    combine two vectors of the same model (layers of either; shared layers added).
    """

    __slots__ = ("_dirs", "_info", "_positions")

    def __init__(
        self,
        directions: Mapping[int, npt.ArrayLike],
        info: VectorInfo | None = None,
        *,
        positions: str | int | Iterable[int] = "all",
    ) -> None:
        dirs, info = _vector_meta.check_directions(directions, info)
        self._dirs = dict(sorted(dirs.items()))
        self._info = info
        self._positions: Positions = _check_positions(positions)

    @classmethod
    def _make(
        cls, dirs: dict[int, FloatArray], info: VectorInfo, positions: Positions
    ) -> SteeringVector:
        new = cls.__new__(cls)
        for v in dirs.values():
            v.flags.writeable = False
        new._dirs = dict(sorted(dirs.items()))
        new._info = info
        new._positions = positions
        return new

    # -- views ----------------------------------------------------------------------

    @property
    def vectors(self) -> dict[int, FloatArray]:
        """``{layer: read-only float32 vector}`` (the same name as `Steering.vectors`)."""
        return dict(self._dirs)

    @property
    def directions(self) -> dict[int, FloatArray]:
        """The same as `vectors` (the name earlier releases used)."""
        return dict(self._dirs)

    @property
    def info(self) -> VectorInfo:
        return self._info

    @property
    def layers(self) -> list[int]:
        return list(self._dirs)

    @property
    def d_model(self) -> int:
        return self._info.d_model

    @property
    def positions(self) -> Positions:
        return self._positions if isinstance(self._positions, str) else list(self._positions)

    def __getitem__(self, layer: int) -> FloatArray:
        try:
            return self._dirs[layer]
        except KeyError:
            raise OutOfRangeError(
                f"this vector has no layer {layer}; it has layers {self.layers}"
            ) from None

    def __repr__(self) -> str:
        norms = ", ".join(f"{k}: {v:.3g}" for k, v in self.norms().items())
        return (
            f"SteeringVector(method={self._info.method!r}, d_model={self.d_model}, "
            f"norms={{{norms}}}, positions={self._positions!r})"
        )

    def norms(self) -> dict[int, float]:
        """L2 norm of each layer's direction."""
        return {k: float(np.linalg.norm(v.astype(np.float64))) for k, v in self._dirs.items()}

    def doses(self) -> dict[int, float]:
        """Relative dose per layer: ``||v|| / mean ||h||`` (needs stored residual norms).

        Raises:
            InvalidArgumentError: the vector carries no residual norm for a layer.
        """
        ref = self._require_norms()
        return {k: n / ref[k] for k, n in self.norms().items()}

    def _require_norms(self) -> dict[int, float]:
        return _vector_meta.required_norms(self._info, self.layers)

    # -- arithmetic -----------------------------------------------------------------

    def _scaled(self, k: float) -> SteeringVector:
        dirs = _args.scaled(self._dirs, k, f"scaling by {k}")
        return SteeringVector._make(dirs, self._info, self._positions)

    def __mul__(self, k: float) -> SteeringVector:
        return self._scaled(_check_scalar(k, "multiplied by"))

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> SteeringVector:
        value = _check_scalar(k, "divided by")
        if value == 0.0:
            raise DivisionByZeroError(f"cannot divide a SteeringVector by zero (divided by {k!r})")
        return self._scaled(1.0 / value)

    def __neg__(self) -> SteeringVector:
        return self._scaled(-1.0)

    def __pos__(self) -> SteeringVector:
        return self

    def _check_same_model(self, other: SteeringVector, op: str) -> None:
        _vector_meta.check_same_model(self._info, other._info, op)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            raise InvalidTypeError(
                f"only a SteeringVector can be added to a SteeringVector, got {type(other).__name__}"
            )
        self._check_same_model(other, "add")
        dirs = summed_arrays(self._dirs, other._dirs, "vectors")
        info = _vector_meta.combined(self._info, other._info)
        return SteeringVector._make(dirs, info, self._positions)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            raise InvalidTypeError(
                f"only a SteeringVector can be subtracted from a SteeringVector, got {type(other).__name__}"
            )
        return self + (-other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return (
            self._dirs.keys() == other._dirs.keys()
            and all(np.array_equal(v, other._dirs[k]) for k, v in self._dirs.items())
            and self._positions == other._positions
            and self._info.fingerprint == other._info.fingerprint
        )

    __hash__ = None  # type: ignore[assignment]

    # Immutable: a copy is the same value. Pickling rebuilds through the constructor, so
    # the arrays come back read-only and checked (numpy unpickles them writeable).
    def __copy__(self) -> SteeringVector:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SteeringVector:
        return self

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_restore, (dict(self._dirs), self._info, self.positions))

    # -- derived vectors --------------------------------------------------------------

    def normalized(self) -> SteeringVector:
        """Every layer's direction scaled to unit norm.

        Raises:
            InvalidArgumentError: a layer whose direction is zero.
        """
        dirs = {}
        for layer, v in self._dirs.items():
            n = float(np.linalg.norm(v.astype(np.float64)))
            if n == 0.0:
                raise InvalidArgumentError(f"cannot normalise: layer {layer}'s direction is zero")
            dirs[layer] = (v / np.float32(n)).astype(np.float32)
        return SteeringVector._make(dirs, self._info, self._positions)

    def at(self, layers: int | Iterable[int]) -> SteeringVector:
        """The same vector restricted to some layers.

        Raises:
            OutOfRangeError: a layer the vector does not have.
        """
        items: list[Any] = (
            [layers] if isinstance(layers, numbers.Integral) else _iterable(layers, "layers")
        )
        if not items:
            raise InvalidArgumentError("layers is empty; at() needs at least one layer")
        wanted = [_args.index(layer, "layer") for layer in items]
        missing = [layer for layer in wanted if layer not in self._dirs]
        if missing:
            raise OutOfRangeError(
                f"this vector has no layer(s) {missing}; it has layers {self.layers}"
            )
        return SteeringVector._make(
            {int(k): self._dirs[int(k)] for k in wanted}, self._info, self._positions
        )

    def with_positions(self, positions: str | int | Iterable[int]) -> SteeringVector:
        """The same vector added at other positions (see `steerlab.steering`)."""
        return SteeringVector._make(dict(self._dirs), self._info, _check_positions(positions))

    def dose(self, dose: float) -> SteeringVector:
        """Scale each layer so that ``||coef * v|| = dose * mean ||h||`` at that layer.

        A dose transfers across layers and models where a raw coefficient does not;
        0.05-0.3 is a gentle-to-strong range on most models. The sign is kept: a
        negative dose steers away.

        Raises:
            InvalidArgumentError: no stored residual norm, or a zero direction.
        """
        d = _check_scalar(dose, "dosed by")
        ref = self._require_norms()
        dirs = {}
        for layer, v in self._dirs.items():
            n = float(np.linalg.norm(v.astype(np.float64)))
            if n == 0.0:
                raise InvalidArgumentError(f"cannot dose: layer {layer}'s direction is zero")
            dirs.update(_args.scaled({layer: v}, d * ref[layer] / n, f"dose {d}"))
        return SteeringVector._make(dirs, self._info, self._positions)

    def with_residual_norms(
        self, model: Model, texts: Iterable[str] | None = None
    ) -> SteeringVector:
        """Measure and store the mean residual norm at this vector's layers (see
        `residual_norms`), so that `dose` works."""
        self.check_model(model)
        norms = residual_norms(model, self.layers, texts)
        info = replace(self._info, residual_norms={**self._info.residual_norms, **norms})
        return SteeringVector._make(dict(self._dirs), info, self._positions)

    def cosine(self, other: SteeringVector) -> dict[int, float]:
        """Cosine similarity with `other` at each layer both have.

        Raises:
            InvalidArgumentError: no shared layer, or a zero direction.
            ShapeError: different widths.
        """
        if not isinstance(other, SteeringVector):
            raise InvalidTypeError(f"cosine() takes a SteeringVector, got {type(other).__name__}")
        self._check_same_model(other, "compare")
        shared = [k for k in self._dirs if k in other._dirs]
        if not shared:
            raise InvalidArgumentError(
                f"the vectors share no layer ({self.layers} vs {other.layers})"
            )
        out = {}
        for k in shared:
            a = self._dirs[k].astype(np.float64)
            b = other._dirs[k].astype(np.float64)
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na == 0 or nb == 0:
                raise InvalidArgumentError(f"layer {k}: cosine with a zero direction")
            out[k] = float(a @ b / (na * nb))
        return out

    # -- use ------------------------------------------------------------------------

    def to_steering(self) -> Steering:
        """The vector as a `Steering` (the protocol every ``steering=`` accepts)."""
        return Steering._trusted(dict(self._dirs), self._positions)

    def check_model(self, model: Model) -> None:
        """Raise unless this vector fits `model` (fingerprint, width, layers).

        Raises:
            InvalidArgumentError: made for another model (fingerprint differs).
            ShapeError: another hidden size.
            OutOfRangeError: a layer the model does not have.
        """
        _vector_meta.check_fits(self._info, self.layers, model)

    # -- files ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write safetensors (``layer.N`` tensors) with the metadata as JSON.

        Everything round-trips through `load`: directions, `info` and `positions`.

        Raises:
            InvalidTypeError, InvalidArgumentError: a bad `path`.
            ModelNotFoundError, ModelFormatError: the file cannot be written.
        """
        _vector_io.save(path, self._dirs, self._info, self.positions)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: Model | None = None,
        *,
        check_fingerprint: bool = True,
    ) -> SteeringVector:
        """Read a vector written by `save`.

        Args:
            path: the file.
            model: when given, the vector is checked against it (see `check_model`).
            check_fingerprint: False adopts a vector made for another model of the same
                width (the fingerprint is replaced by the model's).

        Raises:
            ModelNotFoundError: no such file.
            ModelFormatError: not a steerlab vector, or corrupt.
            InvalidArgumentError, ShapeError, OutOfRangeError: see `check_model`.
        """
        dirs, info, positions = _vector_io.load(path, model, check_fingerprint)
        vec = cls(dirs, info, positions=positions)
        if model is not None:
            vec.check_model(model)
        return vec

    def to_gguf(self, path: str | os.PathLike[str], model_hint: str | None = None) -> None:
        """Write a llama.cpp control vector (GGUF) that llama.cpp and repeng read.

        ``direction.N`` = steerlab layer N = output of block N. Directions are written as
        they are (scale with ``vec * k`` first, or use llama.cpp's ``--control-vector-scaled``).

        Raises:
            InvalidArgumentError: the vector has layer 0, which llama.cpp cannot steer.
        """
        _vector_io.to_gguf(path, self._dirs, self._info, model_hint)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str], model: Model | None = None) -> SteeringVector:
        """Read a llama.cpp / repeng control vector (GGUF).

        The file carries no fingerprint; with `model` given the vector adopts the model's
        and is checked for width and layers.

        Raises:
            ModelNotFoundError, ModelFormatError: a missing, corrupt or non-control-vector
                file.
            ShapeError, OutOfRangeError: it does not fit `model`.
        """
        dirs, info = _vector_io.from_gguf(path, model)
        vec = cls(dirs, info)
        if model is not None:
            vec.check_model(model)
        return vec

    # -- construction from data ----------------------------------------------------------

    @classmethod
    def train(
        cls,
        model: Model,
        pairs: ContrastPairs,
        layers: int | Iterable[int],
        method: str = "mean_diff",
        position: str | int | None = None,
        *,
        batch_size: int = 16,
        reference_texts: Iterable[str] | None = None,
        progress: bool | None = None,
    ) -> SteeringVector:
        """Build a vector from contrast pairs.

        Args:
            model: the model to read.
            pairs: a `ContrastPairs`.
            layers: layer index or indices (negative: from the end).
            method: ``"mean_diff"`` (CAA), ``"pca_diff"``, ``"pca_center"`` or
                ``"logistic"`` (see `steerlab._core.fit_direction`).
            position: read position; default the pairs' own (``"last"``, ``"mean"``, int).
            batch_size: texts per forward pass.
            reference_texts: texts for the residual norms behind `dose` (default: 64
                sentences of the shipped background corpus).
            progress: progress bars (None: automatic).

        Returns:
            The vector, with metadata (fingerprint, method, dataset hash, norms, scores).

        Raises:
            InvalidArgumentError: an unknown method, too few pairs for the method (PCA
                and logistic need 2), identical sides.
            OutOfRangeError: a layer outside the model.
        """
        dirs, info = _vector_fit.train(
            model, pairs, layers, method, position, batch_size, reference_texts, progress
        )
        return cls(dirs, info)

    @classmethod
    def optimize(
        cls,
        model: Model,
        prompts: Sequence[str],
        completions: Sequence[str],
        *,
        layers: int | Iterable[int],
        negatives: Sequence[str] | None = None,
        steps: int = 100,
        lr: float = 1e-2,
        batch_size: int = 8,
        seed: int = 0,
        positions: str | int | Iterable[int] = "all",
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        init: SteeringVector | None = None,
        keep: Literal["last", "best"] = "last",
        progress: bool | None = None,
    ) -> SteeringVector:
        """Train an additive vector per layer so that the steered model gives
        ``completions`` high likelihood after ``prompts`` (method ``"optimized"``).

        The trained-vector baseline of AxBench (Wu et al. 2025; ReFT-r1 / RePS family)
        and the SteerVec baseline of activation scaling (Stoehr et al. 2024). The loss is
        the cross-entropy of the completion tokens (each token weighs the same); with
        ``negatives``, ``softplus(-(lp+ - lp-))`` per example, ``lp±`` the mean
        log-probability per token of the completion and of the negative: log p(completion)
        - log p(negative) is maximised, bounded so the negative is not pushed to zero
        probability for its own sake. AdamW (candle-nn) with gradient clipping; the
        blocks below the first layer run once per example (frozen prefix). Trains through
        the model as loaded: on the default quantized GGUF the weights stay quantized and
        frozen.

        Args:
            model: the model to steer (its weights are not changed).
            prompts: prompt texts, encoded as `Model.encode` does (format chat prompts
                with `Model.chat_prompt` first if you want them).
            completions: one target continuation per prompt (encoded without special
                tokens).
            layers: layer index or indices (resid_post; negative from the end).
            negatives: optional, one unwanted continuation per prompt.
            steps: optimiser steps (one mini-batch each; batches are drawn in a seeded
                order, epoch after epoch).
            lr: AdamW learning rate.
            batch_size: examples per step.
            seed: the batch order (training is deterministic for a seed).
            positions: where the vector is added while training (as `Steering`;
                default every prompt and completion token).
            weight_decay: AdamW's decoupled weight decay.
            max_grad_norm: clip the gradient to this L2 norm (None: no clipping).
            init: start from this vector (its layers must cover ``layers``); default 0.
            keep: which vector to return: ``"last"`` (after the last completed step)
                or ``"best"`` (the one that gave the lowest mini-batch loss; with small
                batches that is partly the luck of the batch). Both are kept while
                training; ``info.training`` records the best step and loss either way.
            progress: a tqdm bar with the running loss (None: automatic).

        Returns:
            The vector (see ``keep``), with ``.history`` (one dict per step: ``loss``,
            ``grad_norm``, ``lr``, ``ce``, and ``margin`` with negatives) and the run's
            settings in ``info.training``. Ctrl-C stops between (or within) steps and
            returns the vector chosen by ``keep`` among the completed steps, with a
            `TrainingInterrupted` warning (``info.training["interrupted"]`` is True).

        Raises:
            InvalidTypeError, InvalidArgumentError: bad arguments (empty or unequal
                lists, a prompt or completion with no token, a non-positive lr...).
            OutOfRangeError: a layer outside the model.
            ContextLengthError: a prompt plus completion longer than the context.
            KeyboardInterrupt: Ctrl-C before the first step finished.
        """
        wanted = _layer_list(model, layers)
        start = None
        if init is not None:
            if not isinstance(init, SteeringVector):
                raise InvalidTypeError(
                    f"init must be a SteeringVector or None, got {type(init).__name__}"
                )
            init.check_model(model)
            missing = [layer for layer in wanted if layer not in init.vectors]
            if missing:
                raise InvalidArgumentError(
                    f"init has no vector for layer(s) {missing}; it has layers {init.layers}"
                )
            start = [init.vectors[layer] for layer in wanted]
        dirs, info = _vector_fit.optimize(
            model,
            prompts,
            completions,
            wanted=wanted,
            negatives=negatives,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            positions=positions,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            start=start,
            keep=keep,
            progress=progress,
        )
        return cls(dirs, info, positions=positions)

    @property
    def history(self) -> list[dict[str, float]]:
        """Trained vectors: one dict per optimiser step (at least ``loss``); else []."""
        return [dict(r) for r in self._info.history]

    def plot_history(self, ax: Any = None) -> Any:
        """The loss curve of a trained vector (matplotlib Figure; needs matplotlib).

        Raises:
            InvalidArgumentError: the vector has no training history.
        """
        from steerlab.plots import plot_loss

        if not self._info.history:
            raise InvalidArgumentError(
                f"this vector (method {self._info.method!r}) has no training history"
            )
        return plot_loss(self._info.history, ax=ax, title=f"{self._info.method} vector")

    @classmethod
    def mean_centring(
        cls,
        model: Model,
        target_texts: Iterable[str],
        background: Iterable[str] | None = None,
        layers: int | Iterable[int] = -1,
        position: str | int = "mean_skip_first",
        *,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> SteeringVector:
        """Mean-centring (Jorgensen et al. 2023): mean activation on the target texts
        minus the mean over a background corpus.

        Args:
            model: the model.
            target_texts: texts that show what to steer toward (a topic, a genre...).
            background: a general corpus (default: the ~330 neutral sentences shipped in
                ``steerlab/data/background.txt``).
            layers: layer index or indices.
            position: ``"mean_skip_first"`` (default: mean over the tokens after the
                first, the attention sink), ``"mean"``, ``"last"``, or an index.
            batch_size: texts per forward pass.
            progress: progress bars.

        Raises:
            InvalidArgumentError: no target or background texts.
        """
        dirs, info = _vector_fit.mean_centring(
            model, target_texts, background, layers, position, batch_size, progress
        )
        return cls(dirs, info)

    @classmethod
    def mean_of(
        cls,
        model: Model,
        texts: Iterable[str],
        layers: int | Iterable[int] = -1,
        position: str | int = "mean_skip_first",
        *,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> SteeringVector:
        """The plain mean activation over `texts` (the baseline mean-centring improves on)."""
        dirs, info = _vector_fit.mean_of(model, texts, layers, position, batch_size, progress)
        return cls(dirs, info)


def _restore(dirs: dict[int, Any], info: VectorInfo, positions: Positions) -> SteeringVector:
    """Unpickle a `SteeringVector` (through the constructor: a pickle is outside data)."""
    return SteeringVector(dirs, info, positions=positions)
