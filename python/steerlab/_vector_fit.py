"""What `steerlab.vectors.SteeringVector`'s builders compute: activations read from a
model, the directions fitted to them and the metadata that goes with them, returned as
``(directions, VectorInfo)`` for the class to wrap; plus the residual-stream norms behind
``dose``. Data flows one way: `steerlab.vectors` imports this module, never the reverse.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _args, _core
from steerlab._vector_meta import VectorInfo, _now
from steerlab.errors import InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    from steerlab.contrast import ContrastPairs
    from steerlab.model import Model

__all__ = ["METHODS", "capture_pairs", "residual_norms"]

#: Methods of `SteeringVector.train`.
METHODS = ("mean_diff", "pca_diff", "pca_center", "logistic")

FloatArray = npt.NDArray[np.float32]
Directions = dict[int, FloatArray]


# Mean residual norms per (model fingerprint, dtype, reference texts) and layer.
_NORM_CACHE: dict[tuple[str, str, int], dict[int, float]] = {}


def residual_norms(
    model: Model,
    layers: Iterable[int],
    texts: Iterable[str] | None = None,
    *,
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[int, float]:
    """Mean norm of the residual stream after each layer, over reference texts.

    The first token of each text is excluded (its norm is the attention sink's, often
    tens of times larger). Results are cached per model and reference set.

    Args:
        model: the model.
        layers: layer indices (negative: from the end).
        texts: reference texts (default: 64 sentences of the shipped background corpus).
        batch_size: texts per forward pass.
        progress: progress bar (None: when there is more than one batch).

    Returns:
        ``{layer: mean norm}`` with non-negative layer indices.
    """
    if texts is None:
        from steerlab.datasets import background_corpus

        texts = background_corpus()[:64]
    texts = _text_list(texts, "texts")
    wanted = _layer_list(model, layers)
    key = (model.fingerprint, model.dtype, hash(tuple(texts)))
    cached = _NORM_CACHE.setdefault(key, {})
    missing = [layer for layer in wanted if layer not in cached]
    if missing:
        sums = np.zeros(len(missing))
        count = 0
        acts = model.capture(texts, missing, "all", batch_size, progress=progress)
        for a in acts:  # [layers, t, d]
            if a.shape[1] < 2:
                continue
            norms = np.linalg.norm(a[:, 1:, :].astype(np.float64), axis=-1)  # [layers, t-1]
            sums += norms.sum(axis=1)
            count += norms.shape[1]
        if count == 0:
            raise InvalidArgumentError(
                "the reference texts have no token after the first; pass longer texts"
            )
        for layer, s in zip(missing, sums, strict=True):
            cached[layer] = float(s / count)
    return {layer: cached[layer] for layer in wanted}


def train(
    model: Model,
    pairs: ContrastPairs,
    layers: int | Iterable[int],
    method: str,
    position: str | int | None,
    batch_size: int,
    reference_texts: Iterable[str] | None,
    progress: bool | None,
) -> tuple[Directions, VectorInfo]:
    """`SteeringVector.train` (see there): the directions and their metadata."""
    from steerlab.contrast import ContrastPairs

    if not isinstance(pairs, ContrastPairs):
        raise InvalidTypeError(
            f"pairs must be a steerlab.ContrastPairs, got {type(pairs).__name__}"
        )
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; expected one of {METHODS}")
    wanted = _layer_list(model, layers)
    pos_acts, neg_acts = capture_pairs(
        model, pairs, wanted, position, batch_size=batch_size, progress=progress
    )
    dirs: dict[int, FloatArray] = {}
    scores: dict[int, float] = {}
    for j, layer in enumerate(wanted):
        direction, score = _core.fit_direction(
            np.ascontiguousarray(pos_acts[:, j]), np.ascontiguousarray(neg_acts[:, j]), method
        )
        dirs[layer] = direction
        if score is not None:
            scores[layer] = float(score)
    info = VectorInfo(
        d_model=model.d_model,
        fingerprint=model.fingerprint,
        arch=model.arch,
        n_layers=model.n_layers,
        method=method,
        position=pairs.position if position is None else position,
        dataset=pairs.name,
        dataset_hash=pairs.dataset_hash(),
        n_samples=len(pairs),
        residual_norms=residual_norms(model, wanted, reference_texts, progress=progress),
        scores=scores,
        created=_now(),
    )
    return dirs, info


def optimize(
    model: Model,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    wanted: list[int],
    negatives: Sequence[str] | None,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    positions: str | int | Iterable[int],
    weight_decay: float,
    max_grad_norm: float | None,
    start: list[FloatArray] | None,
    keep: str,
    progress: bool | None,
) -> tuple[Directions, VectorInfo]:
    """`SteeringVector.optimize` (see there) once its layers (`wanted`, resolved) and its
    starting vectors (`start`, one per layer, or None) are known."""
    from steerlab.optimize import optimize_vector

    run = optimize_vector(
        model,
        prompts,
        completions,
        layers=wanted,
        negatives=negatives,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        positions=positions,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        init=start,
        keep=keep,
        progress=progress,
    )
    texts = [*prompts, *completions, *(negatives or [])]
    info = VectorInfo(
        d_model=model.d_model,
        fingerprint=model.fingerprint,
        arch=model.arch,
        n_layers=model.n_layers,
        method="optimized",
        dataset_hash=_hash_texts([str(t) for t in texts]),
        n_samples=run.n_samples,
        created=_now(),
        history=run.history,
        training=run.training,
    )
    return run.vectors, info


def mean_centring(
    model: Model,
    target_texts: Iterable[str],
    background: Iterable[str] | None,
    layers: int | Iterable[int],
    position: str | int,
    batch_size: int,
    progress: bool | None,
) -> tuple[Directions, VectorInfo]:
    """`SteeringVector.mean_centring` (see there)."""
    from steerlab.datasets import background_corpus

    targets = _text_list(target_texts, "target_texts")
    back = _text_list(background_corpus() if background is None else background, "background")
    wanted = _layer_list(model, layers)
    t = _capture(model, targets, wanted, position, batch_size, progress)
    b = _capture(model, back, wanted, position, batch_size, progress)
    dirs = {
        layer: _core.mean_centring(np.ascontiguousarray(t[:, j]), np.ascontiguousarray(b[:, j]))
        for j, layer in enumerate(wanted)
    }
    info = VectorInfo(
        d_model=model.d_model,
        fingerprint=model.fingerprint,
        arch=model.arch,
        n_layers=model.n_layers,
        method="mean_centring",
        position=position,
        dataset_hash=_hash_texts([*targets, "\x00background\x00", *back]),
        n_samples=len(targets),
        residual_norms=residual_norms(model, wanted, progress=progress),
        created=_now(),
    )
    return dirs, info


def mean_of(
    model: Model,
    texts: Iterable[str],
    layers: int | Iterable[int],
    position: str | int,
    batch_size: int,
    progress: bool | None,
) -> tuple[Directions, VectorInfo]:
    """`SteeringVector.mean_of` (see there)."""
    items = _text_list(texts, "texts")
    wanted = _layer_list(model, layers)
    a = _capture(model, items, wanted, position, batch_size, progress)
    dirs = {layer: a[:, j].astype(np.float64).mean(axis=0) for j, layer in enumerate(wanted)}
    info = VectorInfo(
        d_model=model.d_model,
        fingerprint=model.fingerprint,
        arch=model.arch,
        n_layers=model.n_layers,
        method="mean",
        position=position,
        dataset_hash=_hash_texts(items),
        n_samples=len(items),
        residual_norms=residual_norms(model, wanted, progress=progress),
        created=_now(),
    )
    return dirs, info


def _iterable(value: Any, name: str) -> list[Any]:
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise InvalidTypeError(
            f"{name} must be an int or a list of ints, got {type(value).__name__}"
        )
    return list(value)


def _text_list(texts: Any, name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise InvalidTypeError(f"{name} must be a list of str")
    out = list(texts)
    if not out:
        raise InvalidArgumentError(f"{name} is empty; pass at least one text")
    for i, t in enumerate(out):
        _args.text(t, f"{name}[{i}]")
    return out


def _hash_texts(texts: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        h.update(len(t.encode()).to_bytes(8, "little"))
        h.update(t.encode())
    return h.hexdigest()[:16]


def _layer_list(model: Model, layers: int | Iterable[int]) -> list[int]:
    from steerlab.model import Model

    if not isinstance(model, Model):  # the first use of `model` in every constructor
        raise InvalidTypeError(f"model must be a steerlab.Model, got {type(model).__name__}")
    items: list[Any] = (
        [layers] if isinstance(layers, numbers.Integral) else _iterable(layers, "layers")
    )
    if not items:
        raise InvalidArgumentError("layers is empty; name at least one layer")
    out = []
    for layer in items:
        if isinstance(layer, bool | np.bool_) or not isinstance(layer, numbers.Integral):
            raise InvalidTypeError(f"layers must be ints, got {type(layer).__name__} {layer!r}")
        resolved = model._resolve_layer(_args.index(layer, "layer"))
        if resolved not in out:
            out.append(resolved)
    return out


def _capture(
    model: Model,
    texts: list[str],
    layers: list[int],
    position: str | int,
    batch_size: int,
    progress: bool | None,
) -> FloatArray:
    """`Model.capture` for one-vector-per-text positions (never 'all')."""
    from steerlab.model import _check_position

    position = _check_position(position)
    if position == "all":
        raise InvalidArgumentError("read position 'all' does not give one vector per text")
    acts = model.capture(texts, layers, position, batch_size, progress=progress)
    if not isinstance(acts, np.ndarray):
        raise InvalidArgumentError(f"read position {position!r} gives no array")
    return acts


def capture_pairs(
    model: Model,
    pairs: ContrastPairs,
    layers: list[int],
    position: str | int | None = None,
    *,
    batch_size: int = 16,
    progress: bool | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Activations of both sides of every pair: two float32 ``[n, len(layers), d]``."""
    pos = pairs.position if position is None else position
    acts = _capture(model, pairs.positives + pairs.negatives, layers, pos, batch_size, progress)
    n = len(pairs)
    return acts[:n], acts[n:]
