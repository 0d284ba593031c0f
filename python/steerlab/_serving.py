"""The engine side of `steerlab.server`: the steering library read from ``--vectors DIR``,
the per-request steering schema, and the scheduler thread that batches requests.

Nothing here imports fastapi or uvicorn (they are an optional extra); `steerlab.server`
wraps these pieces in HTTP.

The scheduler takes queued jobs (up to ``max_batch``, waiting up to ``batch_window`` for
more after the first), starts one engine generation with each row's own steering and
settings (`_core.Model.start_generation` with ``row_configs``), steps it (the engine
releases the GIL) and hands each row's text pieces to its job's ``emit`` callback. A job
that arrives while a batch runs waits for the next batch (no continuous batching).
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steerlab import _args, _core
from steerlab._layers import POSITION_NAMES, Row
from steerlab._sampling import RowText
from steerlab.errors import (
    InvalidArgumentError,
    ModelFormatError,
    ModelNotFoundError,
    SteerlabError,
)
from steerlab.steering import Steering, prepare

if TYPE_CHECKING:
    from steerlab.controller import SteeringController
    from steerlab.hypersteer import HyperSteer
    from steerlab.model import Model
    from steerlab.scalars import ActivationScalars
    from steerlab.vectors import SteeringVector

__all__ = [
    "Artifact",
    "Job",
    "QueueFullError",
    "Scheduler",
    "SteeringLibrary",
    "SteeringSpecError",
    "resolve_steering",
]

#: Names an artifact may have (its file name without the suffix).
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SUFFIXES = (".safetensors", ".gguf")
# Largest safetensors header read to find a file's kind (the header is JSON).
_MAX_HEADER = 100 * 2**20
_F32_MAX = float(np.finfo(np.float32).max)


class SteeringSpecError(InvalidArgumentError):
    """A request's ``steering`` field that does not follow the schema (HTTP 400)."""


class QueueFullError(SteerlabError):
    """The scheduler's queue holds ``max_queue`` waiting requests (HTTP 503)."""


# ------------------------------------------------------------------------ the library


@dataclass(frozen=True)
class Artifact:
    """One file of the ``--vectors`` folder, loaded for the served model.

    Attributes:
        name: the file name without its suffix (what requests use).
        kind: ``"vector"`` (a `SteeringVector`, safetensors or a llama.cpp GGUF control
            vector), ``"scalars"`` (`ActivationScalars`), ``"controller"``
            (`SteeringController`) or ``"hypersteer"`` (`HyperSteer`).
        obj: the loaded object.
        path: the file.
    """

    name: str
    kind: str
    obj: Any
    path: str

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (``GET /v1/steering``)."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "file": Path(self.path).name}
        o = self.obj
        if self.kind == "vector":
            out["layers"] = list(o.layers)
            out["method"] = o.info.method
            out["positions"] = o.positions
        elif self.kind == "scalars":
            out["layers"] = sorted({layer for _, layer in o.sites})
            out["beta"] = o.beta
        elif self.kind == "controller":
            out["layers"] = list(o.layers)
            out["strength"] = o.strength
        else:
            out["layers"] = [o.layer]
            out["variant"] = o.variant
        return out


def _file_kind(path: Path) -> str:
    """``"vector"`` or the learned module's kind, from the safetensors header."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ModelFormatError(f"{path}: too short for a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise ModelFormatError(f"{path}: a safetensors header of {n} bytes is too long")
            header = json.loads(f.read(n))
    except OSError as exc:
        raise ModelNotFoundError(f"{path}: cannot be read ({exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: not a safetensors file ({exc})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt == "steerlab.steering_vector":
        return "vector"
    if fmt == "steerlab.learned_module":
        meta_json, _ = _core.load_learned(str(path), None, 0)
        kind = json.loads(meta_json).get("kind")
        kinds = {
            "activation_scalars": "scalars",
            "steering_controller": "controller",
            "hypersteer": "hypersteer",
        }
        if kind not in kinds:
            raise ModelFormatError(
                f"{path}: a learned module of kind {_args.show(kind)}; the server serves "
                f"{', '.join(map(repr, kinds))}"
            )
        return kinds[kind]
    raise ModelFormatError(
        f"{path}: not a steerlab artifact (safetensors metadata format {_args.show(fmt)}; "
        f"expected a file saved by SteeringVector, ActivationScalars, SteeringController "
        f"or HyperSteer)"
    )


def _load(path: Path, kind: str, model: Model) -> Any:
    from steerlab.controller import SteeringController
    from steerlab.hypersteer import HyperSteer
    from steerlab.scalars import ActivationScalars
    from steerlab.vectors import SteeringVector

    if path.suffix == ".gguf":
        return SteeringVector.from_gguf(path, model)
    if kind == "vector":
        return SteeringVector.load(path, model)
    if kind == "scalars":
        return ActivationScalars.load(path, model)
    if kind == "controller":
        return SteeringController.load(path, model)
    return HyperSteer.load(path, model)


class SteeringLibrary:
    """The artifacts of a ``--vectors`` folder, by name, each loaded and checked against
    the served model once, at startup.

    Every ``*.safetensors`` (steerlab vectors and learned modules) and ``*.gguf``
    (llama.cpp control vectors) file directly in the folder is loaded; its name is the
    file name without the suffix. Other files (and sub-folders) are not artifacts and
    are listed in `skipped`.

    Raises:
        ModelNotFoundError: the folder does not exist.
        InvalidArgumentError: a file name that is not a valid artifact name, two files
            with the same name.
        ModelFormatError, InvalidArgumentError, ShapeError, OutOfRangeError: a file that
            cannot be loaded or was made for another model (the message names the file).
    """

    def __init__(self, folder: str | os.PathLike[str] | None, model: Model) -> None:
        self.items: dict[str, Artifact] = {}
        self.skipped: list[str] = []
        self.folder = None if folder is None else _args.path(folder, "vectors")
        if self.folder is None:
            return
        root = Path(self.folder)
        if not root.is_dir():
            raise ModelNotFoundError(
                f"--vectors {self.folder}: no such folder; expected a folder of saved "
                f"steering vectors and modules"
            )
        for path in sorted(root.iterdir()):
            if path.name.startswith("."):
                continue
            if path.suffix not in _SUFFIXES or not path.is_file():
                self.skipped.append(path.name)
                continue
            name = path.stem
            if not _NAME.match(name):
                raise InvalidArgumentError(
                    f"--vectors {self.folder}: the file {path.name!r} gives the name "
                    f"{name!r}; expected letters, digits, '_', '.' and '-' (at most 128)"
                )
            if name in self.items:
                raise InvalidArgumentError(
                    f"--vectors {self.folder}: two files are named {name!r} "
                    f"({Path(self.items[name].path).name} and {path.name}); rename one"
                )
            try:
                kind = "vector" if path.suffix == ".gguf" else _file_kind(path)
                obj = _load(path, kind, model)
            except SteerlabError as exc:
                raise type(exc)(f"--vectors {self.folder}: {path.name}: {exc}") from None
            self.items[name] = Artifact(name, kind, obj, str(path))

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def get(self, name: str, where: str) -> Artifact:
        """The artifact `name`.

        Raises:
            SteeringSpecError: no such name (the message lists the names served).
        """
        try:
            return self.items[name]
        except KeyError:
            served = (
                ", ".join(sorted(self.items)) or "none: the server was started without --vectors"
            )
            raise SteeringSpecError(
                f"{where}: no steering named {_args.show(name)}; the names served are: {served}"
            ) from None


# ------------------------------------------------------------------ the request schema


def _strength(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SteeringSpecError(f"{where} must be a number, got {_args.show(value)}")
    try:
        f = float(value)
    except OverflowError:  # an int too large for a float
        f = math.inf
    if not math.isfinite(f) or abs(f) > _F32_MAX:
        raise SteeringSpecError(f"{where} must be a finite number, got {_args.show(value)}")
    return f


def _keys(term: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    extra = sorted(set(term) - set(allowed))
    if extra:
        raise SteeringSpecError(
            f"{where} has unknown field(s) {', '.join(map(repr, extra))}; this kind of term "
            f"takes {', '.join(map(repr, allowed))}"
        )


def _named(art: Artifact, strength: float, where: str) -> Any:
    """The steering object of a stored artifact at `strength` (a multiplier: 1 = as
    saved)."""
    if art.kind == "vector":
        vec: SteeringVector = art.obj
        return vec * strength
    if art.kind == "scalars":
        sc: ActivationScalars = art.obj
        return sc * strength
    if art.kind == "controller":
        ctrl: SteeringController = art.obj
        return ctrl.with_strength(ctrl.strength * strength)
    raise SteeringSpecError(
        f"{where}: {art.name!r} is a HyperSteer, which writes a vector from an "
        f"instruction; send it as a term "
        f'{{"hypersteer": "{art.name}", "instruction": "...", "strength": 1.0}}'
    )


def _raw_vector(term: Mapping[str, Any], model: Model, where: str) -> Steering:
    _keys(term, ("vector", "layer", "strength", "positions"), where)
    if "layer" not in term:
        raise SteeringSpecError(f"{where}: a raw vector needs 'layer' (an int)")
    layer = term["layer"]
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise SteeringSpecError(f"{where}.layer must be an int, got {_args.show(layer)}")
    n = model.n_layers
    if not -n <= layer < n:
        raise SteeringSpecError(
            f"{where}.layer {layer} is outside the model's {n} layers (expected -{n}..{n - 1})"
        )
    values = term["vector"]
    if not isinstance(values, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in values
    ):
        raise SteeringSpecError(
            f"{where}.vector must be a list of {model.d_model} numbers, got {_args.show(values)}"
        )
    if len(values) != model.d_model:
        raise SteeringSpecError(
            f"{where}.vector has {len(values)} values; the model's d_model is {model.d_model}"
        )
    positions = term.get("positions", "all")
    if positions not in POSITION_NAMES:
        raise SteeringSpecError(
            f"{where}.positions must be one of {', '.join(map(repr, POSITION_NAMES))}, got "
            f"{_args.show(positions)}"
        )
    strength = _strength(term.get("strength", 1.0), f"{where}.strength")
    try:
        return Steering.add(layer, values, positions=positions) * strength
    except SteerlabError as exc:
        raise SteeringSpecError(f"{where}: {exc}") from None


def _hypersteer(
    term: Mapping[str, Any], library: SteeringLibrary, prompt: str, where: str
) -> Steering:
    _keys(term, ("hypersteer", "instruction", "strength"), where)
    name = term["hypersteer"]
    if not isinstance(name, str):
        raise SteeringSpecError(f"{where}.hypersteer must be a name (str), got {_args.show(name)}")
    art = library.get(name, f"{where}.hypersteer")
    if art.kind != "hypersteer":
        raise SteeringSpecError(
            f"{where}.hypersteer: {name!r} is a {art.kind}, not a HyperSteer; send it as "
            f'{{"name": "{name}", "strength": ...}}'
        )
    instruction = term.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise SteeringSpecError(
            f"{where}.instruction must be a non-empty str, got {_args.show(instruction)}"
        )
    strength = _strength(term.get("strength", 1.0), f"{where}.strength")
    hs: HyperSteer = art.obj
    try:
        return hs.steering([instruction], [prompt], factor=strength)[0]
    except SteerlabError as exc:
        raise SteeringSpecError(f"{where}: {exc}") from None


def resolve_steering(spec: Any, library: SteeringLibrary, model: Model, prompt: str) -> Row:
    """One request's ``steering`` field as one batch row of engine interventions.

    The schema (every form adds its terms; an empty or null field is no steering):

    - ``{"name": strength, ...}``: stored artifacts by name, each at a strength that
      multiplies it (1 = as saved): a vector's coefficient, activation scalars' beta, a
      controller's alpha.
    - ``[term, ...]``, each term one of
      ``{"name": str, "strength": float = 1}`` (as above),
      ``{"vector": [d_model floats], "layer": int, "strength": float = 1,
      "positions": "all"}`` (a raw vector added at ``resid_post`` of `layer`), or
      ``{"hypersteer": str, "instruction": str, "strength": float = 1}`` (the vector a
      stored HyperSteer writes for the instruction and this request's prompt).

    At most one controller per request (the engine runs one per row).

    Args:
        spec: the decoded JSON value.
        library: the served artifacts.
        model: the served model.
        prompt: the request's prompt text (a HyperSteer reads it).

    Returns:
        The row (``[]``: not steered).

    Raises:
        SteeringSpecError: anything outside the schema, naming the field.
    """
    terms: list[tuple[Any, str]] = []
    if spec is None:
        return []
    if isinstance(spec, dict):
        for name, value in spec.items():
            where = f"steering[{name!r}]"
            strength = _strength(value, where)
            terms.append((_named(library.get(name, "steering"), strength, where), where))
    elif isinstance(spec, list):
        for i, term in enumerate(spec):
            where = f"steering[{i}]"
            if not isinstance(term, dict):
                raise SteeringSpecError(f"{where} must be an object, got {_args.show(term)}")
            kinds = [k for k in ("name", "vector", "hypersteer") if k in term]
            if len(kinds) != 1:
                raise SteeringSpecError(
                    f"{where} must have exactly one of 'name', 'vector', 'hypersteer'; got "
                    f"fields {sorted(term)}"
                )
            if kinds[0] == "name":
                _keys(term, ("name", "strength"), where)
                name = term["name"]
                if not isinstance(name, str):
                    raise SteeringSpecError(f"{where}.name must be a str, got {_args.show(name)}")
                strength = _strength(term.get("strength", 1.0), f"{where}.strength")
                terms.append((_named(library.get(name, f"{where}.name"), strength, where), where))
            elif kinds[0] == "vector":
                terms.append((_raw_vector(term, model, where), where))
            else:
                terms.append((_hypersteer(term, library, prompt, where), where))
    else:
        raise SteeringSpecError(
            "steering must be an object {name: strength} or a list of terms, got "
            f"{_args.show(spec)}"
        )
    row: Row = []
    controllers = 0
    for obj, where in terms:
        try:
            prepared = prepare(obj)
            rows = None if prepared is None else prepared.rows(1)
        except SteerlabError as exc:
            raise SteeringSpecError(f"{where}: {exc}") from None
        part = [] if rows is None else rows[0]
        controllers += sum(isinstance(x, _core.Controller) for x in part)
        row.extend(part)
    if controllers > 1:
        raise SteeringSpecError(
            f"steering names {controllers} controllers; a request may use at most one"
        )
    return row


# ------------------------------------------------------------------------- scheduling

#: What a job's `emit` receives: ("text", piece), ("end", finish_reason, n_tokens) or
#: ("error", exception).
Event = tuple[Any, ...]


@dataclass(eq=False)
class Job:
    """One request's generation.

    Attributes:
        ids: the prompt's token ids.
        row: its steering (engine interventions; ``[]``: none).
        config: its settings (`_core.GenConfig`: limit, sampling, seed, stop).
        max_tokens: its token limit (for ``finish_reason``).
        stop: its stop strings (the text is cut before the first).
        emit: called from the scheduler thread with each event (must be thread-safe and
            quick: `steerlab.server` posts to the request's event loop).
        cancelled: set by the request's side when its client went away; the scheduler
            ends the row (`Generation.finish`) before the next step, or drops the job if
            it has not started.
    """

    ids: list[int]
    row: Row
    config: _core.GenConfig
    max_tokens: int
    stop: list[str] | None
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class Scheduler:
    """A thread that runs queued jobs in batches (see the module docstring).

    Args:
        core: the extension model.
        max_batch: most rows in one generation (>= 1).
        max_queue: most jobs waiting (not yet in a batch); `submit` refuses more.
        batch_window: seconds to wait for more jobs after the first of a batch.
    """

    def __init__(
        self, core: _core.Model, *, max_batch: int, max_queue: int, batch_window: float
    ) -> None:
        self._core = core
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._window = batch_window
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.running = 0
        #: Batches started, and rows ended early because their client went away.
        self.batches = 0
        self.cancelled = 0

    @property
    def waiting(self) -> int:
        """Jobs queued, not yet in a batch."""
        return self._queue.qsize()

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="steerlab-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the batch in progress (its rows are ended); jobs still queued get
        an error event."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit(("error", SteerlabError("the server is shutting down")))

    def submit(self, job: Job) -> None:
        """Queue `job`.

        Raises:
            QueueFullError: `max_queue` jobs are already waiting.
        """
        if self._stopping.is_set():
            raise QueueFullError("the server is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(
                f"the server is at capacity: {self.max_queue} requests are already waiting "
                f"(max_queue); retry shortly"
            ) from None

    def _take(self) -> list[Job]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [] if first is None else [first]
        deadline = time.monotonic() + self._window
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                batch.append(job)
        return [j for j in batch if not j.cancelled.is_set()]

    def _loop(self) -> None:
        while not self._stopping.is_set():
            jobs = self._take()
            if not jobs:
                continue
            with self._lock:
                self.running = len(jobs)
                self.batches += 1
            try:
                self._run(jobs)
            except Exception as exc:  # a bug here must not kill the thread
                for j in jobs:
                    j.emit(("error", exc))
            finally:
                with self._lock:
                    self.running = 0

    def _run(self, jobs: list[Job]) -> None:
        rows = [j.row for j in jobs]
        try:
            gen = self._core.start_generation(
                [j.ids for j in jobs],
                rows if any(rows) else None,
                None,
                [j.config for j in jobs],
            )
        except SteerlabError as exc:
            if len(jobs) == 1:
                jobs[0].emit(("error", exc))
                return
            # One request's input failed the batch: run each alone, so only it fails.
            for j in jobs:
                if not j.cancelled.is_set():
                    self._run([j])
            return
        texts = [RowText(self._core, j.stop) for j in jobs]
        live = [True] * len(jobs)
        counts = [0] * len(jobs)
        context = self._core.max_context

        def end(i: int) -> None:
            live[i] = False
            if piece := texts[i].flush():
                jobs[i].emit(("text", piece))
            n = counts[i]
            full = n >= jobs[i].max_tokens or len(jobs[i].ids) + n >= context
            reason = "length" if full and not texts[i].stopped else "stop"
            jobs[i].emit(("end", reason, n))

        while any(live):
            for i, j in enumerate(jobs):
                if live[i] and (j.cancelled.is_set() or self._stopping.is_set()):
                    gen.finish(i)
                    live[i] = False
                    if j.cancelled.is_set():
                        self.cancelled += 1
                    else:
                        j.emit(("error", SteerlabError("the server is shutting down")))
            if not any(live):
                break
            try:
                step = gen.step()
            except Exception as exc:
                for i in range(len(jobs)):
                    if live[i]:
                        live[i] = False
                        jobs[i].emit(("error", exc))
                return
            if step is None:
                for i in range(len(jobs)):
                    if live[i]:
                        end(i)
                break
            for i, tok in enumerate(step):
                if not live[i]:
                    continue
                if tok is None:
                    end(i)
                    continue
                counts[i] += 1
                if piece := texts[i].push(tok):
                    jobs[i].emit(("text", piece))
                if texts[i].stopped:
                    gen.finish(i)
                    end(i)
