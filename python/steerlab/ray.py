"""steerlab on Ray: capture, steered generation, sweeps and steering vectors over a
Ray Dataset (``pip install 'steerlab[ray]'``).

Every transform is a callable class for `ray.data.Dataset.map_batches`, which Ray runs
as a pool of actors: each actor loads the model once (by path, so every worker needs the
file) and then processes batches of rows. Steering travels to the workers as data (the
`steerlab.SteeringVector` / `steerlab.Steering` values pickle), never as Python code run
inside the forward.

- `Capture` / `capture`: an ``activations`` column, float32 ``[n_layers, d_model]`` per
  row (``[n_layers, n_tokens, d_model]`` for ``position="all"``), as `Model.capture`
  gives for the same text.
- `Generate` / `generate`: a ``generation`` column; each row may name its own vector
  and coefficient (per-row steering in one engine batch) and its own sampling seed;
  optional scores ``on_topic`` (`steerlab.datasets.topic_score`) and ``perplexity``
  (of the continuation given the prompt, under the unsteered model, as
  `steerlab.evaluate.steered_generations` scores it).
- `sweep`: prompts x vectors x coefficients as one Dataset of scored generations.
- `stats`, `pair_stats`: `steerlab.ActivationStats` computed per batch on the actors
  and merged on the driver (Chan, Golub & LeVeque 1979), so the activations never
  leave the workers; `train_vector` and `mean_centring` turn them into the vector
  `SteeringVector.train` / `SteeringVector.mean_centring` give on one machine.

Row order: Ray Data does not keep it unless
``ray.data.DataContext.get_current().execution_options.preserve_order = True``; every
input column is kept, so carry an id column to join results back.

Errors: arguments are checked on the driver when the transform is built; a problem only a
worker can see (a text longer than the context, a vector for another model) is raised
there and reaches the driver wrapped by Ray (``ray.exceptions.RayTaskError``). The
functions that run at once (`stats`, `pair_stats`, `train_vector`, `mean_centring`)
first load the model in one Ray task to check the layers, so those errors arrive as
the steerlab exception itself (Ray makes them instances of both).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import _active, _args, _batches, _checks
from steerlab._extras import require
from steerlab._layers import check_site
from steerlab._sampling import Sampling, cut_at_stop
from steerlab.datasets import TopicSet, background_corpus, load_topic, topic_score
from steerlab.errors import InvalidArgumentError, InvalidTypeError, SteerlabError
from steerlab.stats import (
    STATS_METHODS,
    ActivationStats,
    contrast_vector,
    mean_centring_vector,
)
from steerlab.steering import Steering, prepare
from steerlab.vectors import SteeringVector

# The optional extra: without it, importing this module raises MissingExtraError.
require("ray.data", "ray", "steerlab.ray")
import ray  # noqa: E402
import ray.data  # noqa: E402

if TYPE_CHECKING:
    from steerlab.contrast import ContrastPairs
    from steerlab.model import Model

__all__ = [
    "Capture",
    "Generate",
    "capture",
    "from_pairs",
    "generate",
    "mean_centring",
    "pair_stats",
    "stats",
    "sweep",
    "train_vector",
]

ModelSpec = tuple[str | None, str, str]
Batch = dict[str, npt.NDArray[Any]]


# ------------------------------------------------------------------ shared checks


def _spec(model: Any, dtype: Any, device: Any) -> ModelSpec:
    """(path or None for the default model, dtype, device): what a worker loads."""
    from steerlab.model import Model

    dtype = _checks.check_dtype(dtype)
    device = _checks.check_device(device)
    if isinstance(model, Model):
        path, model_dtype, model_device = model._load_args
        if (dtype, device) not in ((model_dtype, model_device), ("auto", "cpu")):
            raise InvalidArgumentError(
                f"model is a Model loaded with dtype={model_dtype!r}, device={model_device!r} "
                f"but dtype={dtype!r}, device={device!r} were given; pass the model's path "
                "to load it another way"
            )
        return (path, model_dtype, model_device)
    if model is None:
        return (None, dtype, device)
    return (_args.path(model, "model"), dtype, device)


def _load(spec: ModelSpec) -> Model:
    from steerlab.model import Model

    path, dtype, device = spec
    return Model.load(path, dtype=dtype, device=device)


def _column(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidTypeError(f"{what} must be a non-empty column name (str), got {name!r}")
    return name


def _optional_column(name: Any, what: str) -> str | None:
    return None if name is None else _column(name, what)


def _check_dataset(
    ds: Any,
    columns: Iterable[str | None],
    name: str = "ds",
    outputs: Iterable[str] = (),
) -> None:
    """`ds` is a Ray Dataset holding `columns` and none of the `outputs` it would get (an
    input column is never overwritten), when its schema is known without running it."""
    if not isinstance(ds, ray.data.Dataset):
        raise InvalidTypeError(f"{name} must be a ray.data.Dataset, got {type(ds).__name__}")
    schema = ds.schema(fetch_if_missing=False)
    if schema is None:
        return
    names = list(schema.names)
    missing = [c for c in columns if c is not None and c not in names]
    if missing:
        raise InvalidArgumentError(f"{name} has no column(s) {missing}; its columns are {names}")
    clash = [c for c in outputs if c in names]
    if clash:
        raise InvalidArgumentError(
            f"{name} already has column(s) {clash}, which this step writes; rename them "
            f"(or choose another output_column) so that no input column is overwritten"
        )


def _batch_column(batch: Batch, name: str) -> npt.NDArray[Any]:
    try:
        return batch[name]
    except KeyError:
        raise InvalidArgumentError(
            f"the batch has no column {name!r}; its columns are {sorted(batch)}"
        ) from None


def _texts(batch: Batch, name: str) -> list[str]:
    return [_args.text(t, f"{name}[{i}]") for i, t in enumerate(_batch_column(batch, name))]


def _compute(concurrency: Any) -> Any:
    """An actor pool of `concurrency` actors (an int, or ``(min, max)`` to autoscale)."""
    if isinstance(concurrency, tuple):
        if len(concurrency) != 2:
            raise InvalidArgumentError(
                f"concurrency must be an int or a (min, max) pair, got {concurrency!r}"
            )
        lo = _args.integer(concurrency[0], "concurrency[0]", minimum=1, maximum=2**31)
        hi = _args.integer(concurrency[1], "concurrency[1]", minimum=lo, maximum=2**31)
        return ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)
    size = _args.integer(concurrency, "concurrency", minimum=1, maximum=2**31)
    return ray.data.ActorPoolStrategy(size=size)


def _num_cpus(num_cpus: Any) -> float:
    return _args.real(num_cpus, "num_cpus", above=0.0)


def _batch_size(batch_size: Any) -> int:
    return _args.integer(batch_size, "batch_size", minimum=1, maximum=2**31)


def _map(
    ds: Any, cls: type, kwargs: dict[str, Any], batch_size: int, concurrency: Any, num_cpus: Any
) -> Any:
    return ds.map_batches(
        cls,
        fn_constructor_kwargs=kwargs,
        compute=_compute(concurrency),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=_num_cpus(num_cpus),
    )


# ------------------------------------------------------------------ capture


class Capture:
    """A `map_batches` transform: read activations of a text column (one model per actor).

    Use it as ``ds.map_batches(Capture, fn_constructor_kwargs={...},
    compute=ray.data.ActorPoolStrategy(size=N), batch_size=..., batch_format="numpy")``,
    or call `capture`, which does exactly that.

    Args:
        model: a model path (GGUF file or Hugging Face folder, present on every worker),
            a `steerlab.Model` (reloaded from its path on the worker), or None for the
            embedded default model.
        layers, position, site, steering: as in `steerlab.Model.capture` (layer i is the
            residual stream after block i; negative from the end; ``"embed"``).
        dtype, device: as in `steerlab.Model.load`.
        text_column: the column of texts.
        output_column: the column written: float32 ``[len(layers), d_model]`` per row,
            or ``[len(layers), n_tokens, d_model]`` for ``position="all"``.
        batch_size: texts per forward pass.

    Raises:
        As `steerlab.Model.load` and `steerlab.Model.capture`; a missing column is an
        `InvalidArgumentError`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Model | None = None,
        *,
        layers: int | Iterable[int],
        position: str | int = "last",
        site: str = "resid_post",
        steering: Any = None,
        dtype: str = "auto",
        device: str = "cpu",
        text_column: str = "text",
        output_column: str = "activations",
        batch_size: int = 8,
    ) -> None:
        spec = _spec(model, dtype, device)
        self._layers = _checks.check_layers(layers)
        self._position = _checks.check_position(position)
        self._site = check_site(site)
        self._steering = _checked_steering(steering)
        self._text_column = _column(text_column, "text_column")
        self._output_column = _column(output_column, "output_column")
        self._batch_size = _batch_size(batch_size)
        self._model = _load(spec)

    def __call__(self, batch: Batch) -> Batch:
        texts = _texts(batch, self._text_column)
        out = dict(batch)
        if not texts:
            return out
        layers: Any = self._layers
        position: Any = self._position
        acts = self._model.capture(
            texts,
            layers,
            position,
            self._batch_size,
            steering=self._steering,
            progress=False,
            site=self._site,
        )
        if isinstance(acts, list):  # "all": one [layers, tokens, d] array per row
            column = np.empty(len(acts), dtype=object)
            for i, a in enumerate(acts):
                column[i] = a
            out[self._output_column] = column
        else:
            out[self._output_column] = acts
        return out


def capture(
    ds: ray.data.Dataset,
    model: str | os.PathLike[str] | Model | None = None,
    *,
    layers: int | Iterable[int],
    position: str | int = "last",
    site: str = "resid_post",
    steering: Any = None,
    dtype: str = "auto",
    device: str = "cpu",
    text_column: str = "text",
    output_column: str = "activations",
    batch_size: int = 8,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
) -> ray.data.Dataset:
    """`ds` with an activations column added by `Capture` (lazy, as Ray datasets are).

    Args:
        ds: a Ray Dataset with a text column.
        model, layers, position, site, steering, dtype, device, text_column,
            output_column, batch_size: as in `Capture`.
        concurrency: the number of actors (each loads the model), or ``(min, max)``.
        num_cpus: CPUs Ray reserves per actor.

    Returns:
        The Dataset with every input column and `output_column` (float32 tensors).

    Raises:
        InvalidTypeError, InvalidArgumentError, OutOfRangeError: bad arguments, a
            missing column, or an input column named like `output_column` (checked when
            the schema is known without running `ds`).
    """
    _check_dataset(
        ds,
        [_column(text_column, "text_column")],
        outputs=[_column(output_column, "output_column")],
    )
    _spec(model, dtype, device)
    kwargs = {
        "model": model,
        "layers": _checks.check_layers(layers),
        "position": _checks.check_position(position),
        "site": check_site(site),
        "steering": _checked_steering(steering),
        "dtype": dtype,
        "device": device,
        "text_column": text_column,
        "output_column": _column(output_column, "output_column"),
        "batch_size": _batch_size(batch_size),
    }
    return _map(ds, Capture, kwargs, kwargs["batch_size"], concurrency, num_cpus)


def _checked_steering(steering: Any) -> Any:
    prepare(steering)  # validates; the value itself travels (it pickles)
    return steering


# ------------------------------------------------------------------ generation


def _as_scalable(value: Any, name: str) -> SteeringVector | Steering:
    """A named vector as something ``* coefficient`` scales: a `SteeringVector` or a
    `Steering` (a ``{layer: vector}`` mapping or a ``to_steering()`` object becomes one)."""
    if isinstance(value, SteeringVector | Steering):
        return value
    if callable(getattr(value, "to_steering", None)):
        value = value.to_steering()
        if isinstance(value, Steering):
            return value
    if isinstance(value, Mapping):
        return Steering(value)
    raise InvalidTypeError(
        f"vectors[{name!r}] must be a SteeringVector, a Steering or a {{layer: vector}} "
        f"mapping, got {type(value).__name__}"
    )


def _check_vectors(vectors: Any) -> dict[str, SteeringVector | Steering]:
    if vectors is None:
        return {}
    if isinstance(vectors, SteeringVector | Steering):
        return {"vector": vectors}
    if not isinstance(vectors, Mapping):
        raise InvalidTypeError(
            f"vectors must be a {{name: vector}} mapping, got {type(vectors).__name__}"
        )
    out = {}
    for name, v in vectors.items():
        if not isinstance(name, str) or not name:
            raise InvalidTypeError(f"vector names must be non-empty str, got {name!r}")
        out[name] = _as_scalable(v, name)
    return out


def _topic(topic: Any) -> TopicSet | None:
    if topic is None or isinstance(topic, TopicSet):
        return topic
    if isinstance(topic, str):
        return load_topic(topic)
    raise InvalidTypeError(
        f"topic must be a TopicSet, a topic name or None, got {type(topic).__name__}"
    )


class Generate:
    """A `map_batches` transform: continue a prompt column with steering (one model per
    actor), optionally scoring each continuation.

    A row's steering is, in order: the vector its `vector_column` names (from
    `vectors`; None or ``""`` there: unsteered), else the fixed `steering`; then
    multiplied by its `coefficient_column` value when that column is given. All rows of a
    batch run together in one engine batch, each with its own steering. Each row gives
    what `steerlab.Model.generate` gives for that prompt alone with that steering (with
    sampling: with ``seed=`` the row's `seed_column` value, else `seed`).

    Args:
        model, dtype, device: as in `Capture`.
        vectors: ``{name: SteeringVector | Steering | {layer: vector}}`` (a single vector
            is named ``"vector"``), shipped to the workers as data.
        steering: steering for rows without a vector name (any ``steering=`` value of
            `steerlab.Model.generate` except a per-row list).
        prompt_column: the column of prompts (used as given, as `generate` does).
        vector_column: a column of vector names (str or None); None: not used.
        coefficient_column: a column of coefficients (finite numbers); None: not used.
        seed_column: a column of per-row sampling seeds (ints >= 0); None: not used.
        output_column: the column written (the new text, cut before a stop string).
        max_new_tokens, temperature, top_k, top_p, seed, stop, ignore_eos: as in
            `steerlab.Model.generate`, except that `seed` seeds every row alike.
        topic: a `steerlab.datasets.TopicSet` or a shipped topic's name: adds a bool
            column ``on_topic`` (`steerlab.datasets.topic_score` of the continuation).
        perplexity: add a float64 column ``perplexity``: of the continuation given the
            prompt, under the unsteered model (an empty continuation is scored as
            ``" "``, as `steerlab.evaluate.steered_generations` does).
        batch_size: rows per engine batch.

    Raises:
        InvalidTypeError, InvalidArgumentError: bad arguments or vectors; on a worker:
            an unknown vector name, a coefficient or seed of the wrong type or value, a
            missing column; plus what `steerlab.Model.generate` raises.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Model | None = None,
        *,
        vectors: Mapping[str, Any] | SteeringVector | Steering | None = None,
        steering: Any = None,
        prompt_column: str = "prompt",
        vector_column: str | None = None,
        coefficient_column: str | None = None,
        seed_column: str | None = None,
        output_column: str = "generation",
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        ignore_eos: bool = False,
        topic: TopicSet | str | None = None,
        perplexity: bool = False,
        dtype: str = "auto",
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        spec = _spec(model, dtype, device)
        self._vectors = _check_vectors(vectors)
        if isinstance(steering, list | tuple):
            raise InvalidTypeError(
                "steering must be one steering for all rows; give rows their own with "
                "vectors= and vector_column="
            )
        self._steering = _checked_steering(steering)
        self._prompt_column = _column(prompt_column, "prompt_column")
        self._vector_column = _optional_column(vector_column, "vector_column")
        self._coefficient_column = _optional_column(coefficient_column, "coefficient_column")
        self._seed_column = _optional_column(seed_column, "seed_column")
        self._output_column = _column(output_column, "output_column")
        self._sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed, stop)
        self._ignore_eos = _args.flag(ignore_eos, "ignore_eos")
        self._topic = _topic(topic)
        self._perplexity = _args.flag(perplexity, "perplexity")
        self._batch_size = _batch_size(batch_size)
        self._model = _load(spec)
        for name, v in self._vectors.items():
            if isinstance(v, SteeringVector):
                try:
                    v.check_model(self._model)
                except SteerlabError as exc:
                    raise type(exc)(f"vectors[{name!r}]: {exc}") from None

    def _row_steering(self, batch: Batch, n: int) -> list[Any]:
        rows: list[Any] = [self._steering] * n
        if self._vector_column is not None:
            names = _batch_column(batch, self._vector_column)
            for i, name in enumerate(names):
                if name is None or name == "":
                    rows[i] = None
                    continue
                if not isinstance(name, str):
                    raise InvalidTypeError(
                        f"{self._vector_column}[{i}] must be a vector name (str) or None, "
                        f"got {_args.show(name)}"
                    )
                if name not in self._vectors:
                    raise InvalidArgumentError(
                        f"{self._vector_column}[{i}] names vector {name!r}, which is not in "
                        f"vectors (it has {sorted(self._vectors)})"
                    )
                rows[i] = self._vectors[name]
        if self._coefficient_column is not None:
            coefs = _batch_column(batch, self._coefficient_column)
            for i, c in enumerate(coefs):
                k = _args.real(c, f"{self._coefficient_column}[{i}]")
                if rows[i] is not None:
                    rows[i] = rows[i] * k
        return rows

    def _seeds(self, batch: Batch, n: int) -> list[int | None] | None:
        """Per-row seeds when sampling is seeded (None: greedy or unseeded)."""
        if self._sampling.temperature == 0.0:
            return None
        if self._seed_column is not None:
            return [
                _args.integer(s, f"{self._seed_column}[{i}]", minimum=0, maximum=_args.U64_MAX)
                for i, s in enumerate(_batch_column(batch, self._seed_column))
            ]
        if self._sampling.seed is None:
            return None
        return [self._sampling.seed] * n

    def _generate(
        self, prompts: list[str], steering: list[Any], seeds: list[Any] | None
    ) -> list[str]:
        model = self._model
        s = self._sampling
        if seeds is None:
            return model.generate(
                prompts,
                steering=steering,
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                stop=s.stop,
                batch_size=self._batch_size,
                progress=False,
                ignore_eos=self._ignore_eos,
            )
        # Each row with its own seed, as `generate(prompt, seed=...)` alone would sample.
        core = model._core
        rows = _active.rows(model, steering, len(prompts))
        ids = _batches.encode(core, prompts, self._prompt_column)
        configs = [
            Sampling(s.max_new_tokens, s.temperature, s.top_k, s.top_p, seed, s.stop).config(
                ignore_eos=self._ignore_eos
            )
            for seed in seeds
        ]
        new: list[list[int]] = [[] for _ in prompts]
        if s.max_new_tokens > 0:
            eos = set(core.eos_ids)
            done = [False] * len(prompts)
            generation = core.start_generation(ids, rows, None, row_configs=configs)
            while (step := generation.step()) is not None:
                for r, tok in enumerate(step):
                    if tok is None or done[r]:
                        continue
                    if tok in eos and not self._ignore_eos:
                        done[r] = True
                        continue
                    new[r].append(tok)
        return [cut_at_stop(core.decode(r, True), s.stop)[0] for r in new]

    def __call__(self, batch: Batch) -> Batch:
        prompts = _texts(batch, self._prompt_column)
        n = len(prompts)
        out = dict(batch)
        steering = self._row_steering(batch, n)
        seeds = self._seeds(batch, n)
        texts = self._generate(prompts, steering, seeds) if n else []
        out[self._output_column] = np.array(texts, dtype=object)
        if self._topic is not None:
            out["on_topic"] = np.array([topic_score(t, self._topic) for t in texts], dtype=bool)
        if self._perplexity:
            ppl = (
                self._model.perplexity(
                    [t if t else " " for t in texts],
                    prefix=prompts,
                    batch_size=self._batch_size,
                    progress=False,
                )
                if n
                else np.empty(0)
            )
            out["perplexity"] = np.asarray(ppl, dtype=np.float64)
        return out


def _generate_kwargs(model: Any, dtype: Any, device: Any, **kwargs: Any) -> dict[str, Any]:
    """Constructor arguments for `Generate`, checked on the driver by building the parts
    that need no model."""
    _spec(model, dtype, device)
    _check_vectors(kwargs["vectors"])
    if isinstance(kwargs["steering"], list | tuple):
        raise InvalidTypeError(
            "steering must be one steering for all rows; give rows their own with "
            "vectors= and vector_column="
        )
    _checked_steering(kwargs["steering"])
    for key in ("prompt_column", "output_column"):
        _column(kwargs[key], key)
    for key in ("vector_column", "coefficient_column", "seed_column"):
        _optional_column(kwargs[key], key)
    Sampling(
        kwargs["max_new_tokens"],
        kwargs["temperature"],
        kwargs["top_k"],
        kwargs["top_p"],
        kwargs["seed"],
        kwargs["stop"],
    )
    _args.flag(kwargs["ignore_eos"], "ignore_eos")
    _args.flag(kwargs["perplexity"], "perplexity")
    kwargs["topic"] = _topic(kwargs["topic"])
    _batch_size(kwargs["batch_size"])
    return {"model": model, "dtype": dtype, "device": device, **kwargs}


def generate(
    ds: ray.data.Dataset,
    model: str | os.PathLike[str] | Model | None = None,
    *,
    vectors: Mapping[str, Any] | SteeringVector | Steering | None = None,
    steering: Any = None,
    prompt_column: str = "prompt",
    vector_column: str | None = None,
    coefficient_column: str | None = None,
    seed_column: str | None = None,
    output_column: str = "generation",
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    ignore_eos: bool = False,
    topic: TopicSet | str | None = None,
    perplexity: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    batch_size: int = 8,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
) -> ray.data.Dataset:
    """`ds` with a generation column added by `Generate` (lazy).

    Args:
        ds: a Ray Dataset with a prompt column (and the optional per-row columns).
        concurrency, num_cpus: as in `capture`.
        everything else: as in `Generate`.

    Returns:
        The Dataset with every input column, `output_column` (str) and the score
        columns asked for (``on_topic`` bool, ``perplexity`` float64).

    Raises:
        InvalidTypeError, InvalidArgumentError: bad arguments, missing columns, or an
            input column named like an output column (checked when the schema is known
            without running `ds`).
    """
    _check_dataset(
        ds,
        [prompt_column, vector_column, coefficient_column, seed_column],
        outputs=[
            _column(output_column, "output_column"),
            *(["on_topic"] if topic is not None else []),
            *(["perplexity"] if perplexity else []),
        ],
    )
    kwargs = _generate_kwargs(
        model,
        dtype,
        device,
        vectors=vectors,
        steering=steering,
        prompt_column=prompt_column,
        vector_column=vector_column,
        coefficient_column=coefficient_column,
        seed_column=seed_column,
        output_column=output_column,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop,
        ignore_eos=ignore_eos,
        topic=topic,
        perplexity=perplexity,
        batch_size=batch_size,
    )
    return _map(ds, Generate, kwargs, kwargs["batch_size"], concurrency, num_cpus)


def _coefficients(coefficients: Any) -> list[float]:
    if isinstance(coefficients, str) or not isinstance(coefficients, Iterable):
        raise InvalidTypeError(
            f"coefficients must be a list of numbers, got {type(coefficients).__name__}"
        )
    out = [_args.real(c, f"coefficients[{i}]") for i, c in enumerate(coefficients)]
    if not out:
        raise InvalidArgumentError("coefficients is empty; give at least one")
    return out


def sweep(
    prompts: Sequence[str],
    vectors: Mapping[str, Any] | SteeringVector | Steering,
    coefficients: Iterable[float],
    model: str | os.PathLike[str] | Model | None = None,
    *,
    topic: TopicSet | str | None = None,
    perplexity: bool = True,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop: str | Sequence[str] | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    batch_size: int = 8,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
) -> ray.data.Dataset:
    """Every prompt under every vector at every coefficient, generated and scored on
    the workers: an evaluation sweep as one Dataset (lazy).

    The grid is ordered vector, then coefficient, then prompt; row ``k`` of it samples
    (when ``temperature > 0``) with seed ``seed + k``, so the generations equal
    `steerlab.evaluate.steered_generations` with the conditions
    ``{(name, coefficient): vectors[name] * coefficient}`` in that order.

    Args:
        prompts: the prompts (a list of str).
        vectors: ``{name: vector}`` or one vector (named ``"vector"``), as in `Generate`.
        coefficients: the coefficients (finite numbers; 0 adds a zero vector, the
            unsteered model).
        model, dtype, device: as in `Capture`.
        topic, perplexity: the scores, as in `Generate` (perplexity on by default).
        max_new_tokens, temperature, top_k, top_p, seed, stop: as in `Generate`.
        batch_size, concurrency, num_cpus: as in `generate`.

    Returns:
        A Dataset with columns ``prompt``, ``prompt_index`` (int), ``vector`` (name),
        ``coefficient`` (float), ``seed`` (int), ``generation`` (str), and the scores
        ``on_topic`` (bool, with a topic) and ``perplexity`` (float64). Summarise with
        e.g. ``.to_pandas().groupby(["vector", "coefficient"]).mean(numeric_only=True)``.

    Raises:
        InvalidTypeError, InvalidArgumentError: bad prompts, vectors, coefficients or
            settings.
    """
    items, single = _args.texts(prompts, "prompts")
    if single:
        items = [items[0]]
    named = _check_vectors(vectors)
    if not named:
        raise InvalidArgumentError("vectors is empty; give at least one vector")
    coefs = _coefficients(coefficients)
    seed = _args.integer(seed, "seed", minimum=0, maximum=_args.U64_MAX)
    rows = []
    k = 0
    for name in named:
        for c in coefs:
            for i, p in enumerate(items):
                rows.append(
                    {
                        "prompt": p,
                        "prompt_index": i,
                        "vector": name,
                        "coefficient": c,
                        "seed": (seed + k) % 2**64,
                    }
                )
                k += 1
    ds = ray.data.from_items(rows)
    return generate(
        ds,
        model,
        vectors=named,
        vector_column="vector",
        coefficient_column="coefficient",
        seed_column="seed",
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop=stop,
        topic=topic,
        perplexity=perplexity,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        concurrency=concurrency,
        num_cpus=num_cpus,
    )


# ------------------------------------------------------------------ statistics


def _model_facts(
    spec: ModelSpec, layers: list[int], norms: bool, reference_texts: list[str] | None
) -> dict[str, Any]:
    """On a worker: load the model, resolve the layers, measure residual norms."""
    from steerlab._vector_fit import residual_norms

    model = _load(spec)
    resolved: list[int] = []
    for layer in layers:
        r = model._resolve_layer(layer)
        if r not in resolved:
            resolved.append(r)
    return {
        "fingerprint": model.fingerprint,
        "arch": model.arch,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "layers": resolved,
        "residual_norms": (
            residual_norms(model, resolved, reference_texts, progress=False) if norms else None
        ),
    }


def _facts(
    spec: ModelSpec, layers: list[int], norms: bool, reference_texts: list[str] | None
) -> dict[str, Any]:
    task = ray.remote(num_cpus=1)(_model_facts)
    facts: dict[str, Any] = ray.get(task.remote(spec, layers, norms, reference_texts))
    return facts


def _int_layers(layers: Any) -> list[int]:
    items = _checks.check_layers(layers)
    if "embed" in items:
        raise InvalidArgumentError(
            "statistics and vectors are read at decoder layers; 'embed' is not one"
        )
    return [int(x) for x in items]


def _vector_position(position: Any) -> str | int:
    pos = _checks.check_position(position)
    if pos == "all":
        raise InvalidArgumentError("read position 'all' does not give one vector per text")
    return pos


class _PartialStats:
    """A `map_batches` transform: one row of partial `ActivationStats` per batch (and
    group); the activations stay on the worker."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layers: list[int],
        position: str | int,
        site: str,
        source: dict[str, Any],
        covariance: bool,
        batch_size: int,
        text_column: str | None = None,
        group_column: str | None = None,
        positive_column: str | None = None,
        negative_column: str | None = None,
    ) -> None:
        self._model = _load(spec)
        if self._model.fingerprint != source["fingerprint"]:
            raise InvalidArgumentError(
                f"the model at {spec[0]!r} on this worker has fingerprint "
                f"{self._model.fingerprint!r}, the driver's check saw {source['fingerprint']!r}"
            )
        self._layers = layers
        self._position = position
        self._site = site
        self._source = source
        self._covariance = covariance
        self._batch_size = batch_size
        self._text_column = text_column
        self._group_column = group_column
        self._positive_column = positive_column
        self._negative_column = negative_column

    def _capture(self, texts: list[str]) -> npt.NDArray[np.float32]:
        position: Any = self._position
        site: Any = self._site
        acts = self._model.capture(
            texts, self._layers, position, self._batch_size, progress=False, site=site
        )
        if not isinstance(acts, np.ndarray):
            raise InvalidArgumentError(f"read position {self._position!r} gives no array")
        return acts

    def __call__(self, batch: Batch) -> Batch:
        parts: list[tuple[Any, ActivationStats]] = []
        if self._positive_column is not None and self._negative_column is not None:
            pos = _texts(batch, self._positive_column)
            neg = _texts(batch, self._negative_column)
            if pos:
                acts = self._capture(pos + neg)
                n = len(pos)
                parts.append(
                    (
                        "",
                        ActivationStats.from_pairs(
                            acts[:n],
                            acts[n:],
                            self._layers,
                            covariance=self._covariance,
                            source=self._source,
                        ),
                    )
                )
        elif self._text_column is not None:
            texts = _texts(batch, self._text_column)
            if texts:
                acts = self._capture(texts)
                if self._group_column is None:
                    groups: list[Any] = [""] * len(texts)
                else:
                    groups = [
                        _group(g, self._group_column, i)
                        for i, g in enumerate(_batch_column(batch, self._group_column))
                    ]
                for g in dict.fromkeys(groups):
                    mask = np.array([x == g for x in groups])
                    parts.append(
                        (
                            g,
                            ActivationStats.from_activations(
                                acts[mask],
                                self._layers,
                                covariance=self._covariance,
                                source=self._source,
                            ),
                        )
                    )
        n_l, d = len(self._layers), int(self._source["d_model"])
        out: Batch = {
            "group": np.array([g for g, _ in parts], dtype=object),
            "count": np.array([s.count for _, s in parts], dtype=np.int64),
            "mean": np.stack([s.mean() for _, s in parts]) if parts else np.empty((0, n_l, d)),
        }
        if self._covariance:
            out["comoment"] = (
                np.stack([s.comoment() for _, s in parts]) if parts else np.empty((0, n_l, d, d))
            )
        return out


def _group(value: Any, column: str, i: int) -> str | int:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, str | numbers.Integral):
        raise InvalidTypeError(
            f"{column}[{i}] must be a group label (str or int), got {_args.show(value)}"
        )
    return value if isinstance(value, str) else int(value)


def _collect(
    ds: Any, kwargs: dict[str, Any], batch_size: int, concurrency: Any, num_cpus: Any
) -> dict[Any, ActivationStats]:
    """Run `_PartialStats` over `ds` and merge the partial rows per group, on the driver."""
    parts = _map(ds, _PartialStats, kwargs, batch_size, concurrency, num_cpus)
    layers = kwargs["layers"]
    source = kwargs["source"]
    d = int(source["d_model"])
    merged: dict[Any, ActivationStats] = {}
    for batch in parts.iter_batches(batch_format="numpy", batch_size=None):
        n_rows = len(batch["count"])
        for r in range(n_rows):
            group = batch["group"][r]
            group = group.item() if isinstance(group, np.generic) else group
            part = ActivationStats.from_dict(
                {
                    "layers": layers,
                    "d_model": d,
                    "count": int(batch["count"][r]),
                    "mean": batch["mean"][r],
                    "comoment": batch["comoment"][r] if kwargs["covariance"] else None,
                    "source": source,
                }
            )
            merged[group] = merged[group].merge(part) if group in merged else part
    return merged


def _stats_setup(
    model: Any,
    dtype: Any,
    device: Any,
    layers: Any,
    position: Any,
    site: Any,
    what: str,
    norms: bool = False,
    reference_texts: Iterable[str] | None = None,
) -> tuple[ModelSpec, dict[str, Any], dict[str, Any]]:
    """Check the arguments, then load the model once in a Ray task: its facts and the
    source every partial statistic carries."""
    spec = _spec(model, dtype, device)
    wanted = _int_layers(layers)
    pos = _vector_position(position)
    site = check_site(site)
    refs = None
    if reference_texts is not None:
        refs, _ = _args.texts(list(reference_texts), "reference_texts")
    facts = _facts(spec, wanted, norms, refs)
    source = {
        "fingerprint": facts["fingerprint"],
        "arch": facts["arch"],
        "n_layers": facts["n_layers"],
        "d_model": facts["d_model"],
        "position": pos,
        "site": site,
        "data": what,
    }
    return spec, facts, source


def stats(
    ds: ray.data.Dataset,
    model: str | os.PathLike[str] | Model | None = None,
    *,
    layers: int | Iterable[int],
    position: str | int = "last",
    site: str = "resid_post",
    text_column: str = "text",
    group_column: str | None = None,
    covariance: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    batch_size: int = 16,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
) -> ActivationStats | dict[Any, ActivationStats]:
    """Statistics of the activations of a text column, computed on the actors (one
    partial `ActivationStats` per batch and group) and merged on the driver. Runs now.

    Args:
        ds: a Ray Dataset with a text column.
        model, dtype, device: as in `Capture`.
        layers: decoder layers (negative from the end; resolved, so the statistics'
            layers are non-negative).
        position: ``"last"``, ``"mean"``, ``"mean_skip_first"`` or a token index (one
            vector per text).
        site: as in `steerlab.Model.capture`.
        text_column: the column of texts.
        group_column: a column of group labels (str or int), e.g. class or
            target/background: one `ActivationStats` per label.
        covariance: keep co-moments (float64 ``[n_layers, d, d]`` per partial).
        batch_size, concurrency, num_cpus: as in `capture`.

    Returns:
        An `ActivationStats` (without `group_column`) or ``{label: ActivationStats}``.

    Raises:
        InvalidTypeError, InvalidArgumentError: bad arguments, a missing column, an
            empty dataset, position ``"all"``.
        OutOfRangeError: a layer outside the model (raised by the checking task).
    """
    text_column = _column(text_column, "text_column")
    group_column = _optional_column(group_column, "group_column")
    _check_dataset(ds, [text_column, group_column])
    covariance = _args.flag(covariance, "covariance")
    size = _batch_size(batch_size)
    spec, facts, source = _stats_setup(model, dtype, device, layers, position, site, "texts")
    kwargs = {
        "spec": spec,
        "layers": facts["layers"],
        "position": source["position"],
        "site": source["site"],
        "source": source,
        "covariance": covariance,
        "batch_size": size,
        "text_column": text_column,
        "group_column": group_column,
    }
    merged = _collect(ds, kwargs, size, concurrency, num_cpus)
    if not merged:
        raise InvalidArgumentError("ds has no rows; statistics need at least one text")
    return merged if group_column is not None else merged[""]


def pair_stats(
    ds: ray.data.Dataset,
    model: str | os.PathLike[str] | Model | None = None,
    *,
    layers: int | Iterable[int],
    position: str | int = "last",
    site: str = "resid_post",
    positive_column: str = "positive",
    negative_column: str = "negative",
    covariance: bool = True,
    dtype: str = "auto",
    device: str = "cpu",
    batch_size: int = 16,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
) -> ActivationStats:
    """Statistics of the per-pair differences ``a(positive) - a(negative)`` of a
    Dataset of contrast pairs (one pair per row), computed on the actors and merged on
    the driver (what `steerlab.stats.contrast_vector` reads). Runs now.

    Args:
        ds: a Ray Dataset with a positive and a negative text column (see `from_pairs`).
        positive_column, negative_column: the two columns.
        covariance: keep the co-moment (needed by the PCA methods).
        everything else: as in `stats`.

    Returns:
        An `ActivationStats` of the differences (source ``data="differences"``).

    Raises:
        As `stats`.
    """
    positive_column = _column(positive_column, "positive_column")
    negative_column = _column(negative_column, "negative_column")
    _check_dataset(ds, [positive_column, negative_column])
    covariance = _args.flag(covariance, "covariance")
    size = _batch_size(batch_size)
    spec, facts, source = _stats_setup(model, dtype, device, layers, position, site, "differences")
    return _pair_stats(
        ds,
        spec,
        facts,
        source,
        positive_column,
        negative_column,
        covariance,
        size,
        concurrency,
        num_cpus,
    )


def _pair_stats(
    ds: Any,
    spec: ModelSpec,
    facts: dict[str, Any],
    source: dict[str, Any],
    positive_column: str,
    negative_column: str,
    covariance: bool,
    size: int,
    concurrency: Any,
    num_cpus: Any,
) -> ActivationStats:
    kwargs = {
        "spec": spec,
        "layers": facts["layers"],
        "position": source["position"],
        "site": source["site"],
        "source": source,
        "covariance": covariance,
        "batch_size": size,
        "positive_column": positive_column,
        "negative_column": negative_column,
    }
    merged = _collect(ds, kwargs, size, concurrency, num_cpus)
    if "" not in merged:
        raise InvalidArgumentError("ds has no rows; a vector needs at least one pair")
    return merged[""]


def train_vector(
    ds: ray.data.Dataset,
    model: str | os.PathLike[str] | Model | None = None,
    *,
    layers: int | Iterable[int],
    method: str = "mean_diff",
    position: str | int = "last",
    positive_column: str = "positive",
    negative_column: str = "negative",
    reference_texts: Iterable[str] | None = None,
    dataset: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    batch_size: int = 16,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
) -> SteeringVector:
    """A contrastive steering vector from a Dataset of pairs too large for one machine:
    statistics of the differences on the actors, merged on the driver, then the same
    direction `steerlab.SteeringVector.train` computes from all the pairs at once.

    Args:
        ds: one pair per row (see `from_pairs`).
        layers: decoder layers (negative from the end).
        method: ``"mean_diff"`` (CAA), ``"pca_diff"`` or ``"pca_center"``
            (see `steerlab.stats.contrast_vector`; ``"logistic"`` needs the
            activations and is not available here).
        position: the read position (`ContrastPairs` default: ``"last"``).
        reference_texts: texts for the residual norms behind ``dose`` (measured in the
            checking task; default as `SteeringVector.train`).
        dataset: a name stored in the vector's metadata.
        everything else: as in `pair_stats`.

    Returns:
        A `SteeringVector` equal (to float32 rounding) to ``SteeringVector.train(model,
        pairs, layers, method, position)`` on the same pairs.

    Raises:
        InvalidArgumentError: an unknown method, too few pairs, identical sides; as
            `pair_stats`.
    """
    if not isinstance(method, str) or method not in STATS_METHODS:
        raise InvalidArgumentError(
            f"unknown method {method!r}; expected one of {STATS_METHODS} (a logistic "
            "probe needs the activations themselves)"
        )
    positive_column = _column(positive_column, "positive_column")
    negative_column = _column(negative_column, "negative_column")
    _check_dataset(ds, [positive_column, negative_column])
    size = _batch_size(batch_size)
    spec, facts, source = _stats_setup(
        model, dtype, device, layers, position, "resid_post", "differences", True, reference_texts
    )
    diffs = _pair_stats(
        ds,
        spec,
        facts,
        source,
        positive_column,
        negative_column,
        method != "mean_diff",
        size,
        concurrency,
        num_cpus,
    )
    return contrast_vector(diffs, method, residual_norms=facts["residual_norms"], dataset=dataset)


def mean_centring(
    target: ray.data.Dataset | Sequence[str],
    background: ray.data.Dataset | Sequence[str] | None = None,
    model: str | os.PathLike[str] | Model | None = None,
    *,
    layers: int | Iterable[int] = -1,
    position: str | int = "mean_skip_first",
    text_column: str = "text",
    dataset: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    batch_size: int = 16,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
) -> SteeringVector:
    """Mean-centring (Jorgensen et al. 2023) over Datasets: the mean activation of the
    target texts minus that of a background corpus, each mean merged from partial
    statistics computed on the actors.

    Args:
        target: a Ray Dataset with a text column (or a list of texts).
        background: the same for the background (default: the shipped background
            corpus, as `SteeringVector.mean_centring`).
        layers, position: as in `SteeringVector.mean_centring`.
        text_column: the text column of both datasets.
        everything else: as in `train_vector`.

    Returns:
        A `SteeringVector` equal (to float32 rounding) to
        ``SteeringVector.mean_centring(model, target, background, layers, position)``.

    Raises:
        As `stats`.
    """
    text_column = _column(text_column, "text_column")
    tds = _texts_dataset(target, text_column, "target")
    bds = _texts_dataset(
        background_corpus() if background is None else background, text_column, "background"
    )
    size = _batch_size(batch_size)
    spec, facts, source = _stats_setup(
        model, dtype, device, layers, position, "resid_post", "texts", True
    )
    kwargs = {
        "spec": spec,
        "layers": facts["layers"],
        "position": source["position"],
        "site": source["site"],
        "source": source,
        "covariance": False,
        "batch_size": size,
        "text_column": text_column,
    }
    parts = []
    for name, d in (("target", tds), ("background", bds)):
        merged = _collect(d, kwargs, size, concurrency, num_cpus)
        if "" not in merged:
            raise InvalidArgumentError(f"{name} has no rows; pass at least one text")
        parts.append(merged[""])
    return mean_centring_vector(
        parts[0], parts[1], residual_norms=facts["residual_norms"], dataset=dataset
    )


def _texts_dataset(value: Any, column: str, name: str) -> Any:
    if isinstance(value, ray.data.Dataset):
        _check_dataset(value, [column], name)
        return value
    items, _ = _args.texts(value, name)
    return ray.data.from_items([{column: t} for t in items])


def from_pairs(pairs: ContrastPairs) -> ray.data.Dataset:
    """A Dataset of contrast pairs, one per row: columns ``positive``, ``negative``
    (the texts `SteeringVector.train` reads) and ``index``.

    Raises:
        InvalidTypeError: `pairs` is not a `steerlab.ContrastPairs`.
    """
    from steerlab.contrast import ContrastPairs

    if not isinstance(pairs, ContrastPairs):
        raise InvalidTypeError(
            f"pairs must be a steerlab.ContrastPairs, got {type(pairs).__name__}"
        )
    return ray.data.from_items(
        [
            {"index": i, "positive": p, "negative": n}
            for i, (p, n) in enumerate(zip(pairs.positives, pairs.negatives, strict=True))
        ]
    )
