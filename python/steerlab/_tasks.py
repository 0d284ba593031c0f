"""Answer-choice tasks: prompts whose next token is a target answer or a foil answer.

The data sits in ``steerlab/data/tasks/*.json``, written (and checked with the default
model) by ``bench/reference/make_tasks.py``; ``steerlab/data/tasks/README.md`` states
the criteria and the measured figures. `steerlab.datasets` re-exports the public names.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from steerlab.errors import InvalidArgumentError, InvalidTypeError, OutOfRangeError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    import pandas as pd

__all__ = ["TASK_LENGTHS", "TASK_SPLITS", "Task", "TaskRecord", "load_task", "task_names"]

#: Task name -> (data file stem, whether targets and foils are swapped).
_TASKS: dict[str, tuple[str, bool]] = {
    "country_capital": ("country_capital", False),
    "country_capital_context": ("country_capital", True),
    "ioi": ("ioi", False),
}
#: What `Task.reversed` names the reversed task (otherwise ``name + "_reversed"``).
_REVERSED_NAME = {
    "country_capital": "country_capital_context",
    "country_capital_context": "country_capital",
}
_REVERSED_NOTE = "Reversed (every target and foil swapped): "
#: The splits `load_task` accepts (``"heldout"`` is also accepted, as in `load_style`).
TASK_SPLITS = ("all", "train", "held_out")
#: The token layouts `load_task` accepts.
TASK_LENGTHS = ("fixed", "varied", "all")
_PARTS = ("train", "held_out")
_LAYOUTS = ("fixed", "varied")


@dataclass(frozen=True)
class TaskRecord:
    """One prompt with the answer to prefer and the answer to avoid.

    Attributes:
        prompt: the text the model continues.
        target: the answer wanted, with the leading space the model sees after the prompt
            (e.g. ``" Madrid"``); its first token is the answer token.
        foil: the competing answer, same convention; its first token differs from the
            target's.
        template: the id of the template the prompt was written from (e.g. ``"cc0"``).
        split: ``"train"`` or ``"held_out"``.
        lengths: ``"fixed"`` (the task's common token layout) or ``"varied"``.
        entities: what was filled in: for the country tasks ``country``, ``capital`` (the
            true one), ``context_capital`` (the one the context states) and
            ``context_country`` (whose capital that is); for IOI ``io_name`` (the
            indirect object), ``subject_name``, ``place``, ``object`` and ``order``
            (``"ABBA"`` or ``"BABA"``). Read-only.
        n_tokens: tokens of the prompt for the default model (``Model.load()``,
            ``model.encode(prompt)`` with special tokens); 0 in a record made by hand.
        unsteered_logit_diff: logit(target) - logit(foil) at the last position, for the
            unsteered default model when the data was generated (positive: the model
            prefers the target); 0.0 in a record made by hand.
    """

    prompt: str
    target: str
    foil: str
    template: str
    split: str
    lengths: str
    entities: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    n_tokens: int = 0
    unsteered_logit_diff: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.entities, MappingProxyType):
            object.__setattr__(self, "entities", MappingProxyType(dict(self.entities)))

    def __hash__(self) -> int:
        fields = (self.prompt, self.target, self.foil, self.template, self.split, self.lengths)
        return hash((*fields, tuple(sorted(self.entities.items()))))

    # A mappingproxy does not pickle: the state carries the entities as a dict.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "entities": dict(self.entities)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "entities", MappingProxyType(dict(state["entities"])))

    def reversed(self) -> TaskRecord:
        """The same record with target and foil swapped (and the logit difference negated)."""
        return replace(
            self,
            target=self.foil,
            foil=self.target,
            unsteered_logit_diff=-self.unsteered_logit_diff,
        )

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (entities as a nested dict)."""
        return {
            "prompt": self.prompt,
            "target": self.target,
            "foil": self.foil,
            "template": self.template,
            "split": self.split,
            "lengths": self.lengths,
            "entities": dict(self.entities),
            "n_tokens": self.n_tokens,
            "unsteered_logit_diff": self.unsteered_logit_diff,
        }


@dataclass(frozen=True)
class Task:
    """Records of one answer-choice task: ``prompts[i]`` should be continued with the
    first token of ``targets[i]`` rather than that of ``foils[i]``.

    Get one with `load_task`. ``len(task)``, iteration and ``task[i]`` give records
    (`TaskRecord`); ``task[a:b]`` gives a `Task`.

    Attributes:
        name: the task's name (``"country_capital"``, ``"country_capital_context"``,
            ``"ioi"``; reversed tasks get another name, see `reversed`).
        description: one paragraph saying what the task is.
        records: the records, in file order.
        part: ``"all"``, ``"train"`` or ``"held_out"``: which records were selected.
        lengths: ``"fixed"``, ``"varied"`` or ``"all"``: which token layouts were selected.
    """

    name: str
    description: str
    records: tuple[TaskRecord, ...]
    part: str = "all"
    lengths: str = "fixed"

    def __repr__(self) -> str:
        return (
            f"Task(name={self.name!r}, part={self.part!r}, lengths={self.lengths!r}, "
            f"n_records={len(self.records)}, n_tokens={self.n_tokens})"
        )

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[TaskRecord]:
        return iter(self.records)

    @overload
    def __getitem__(self, index: int) -> TaskRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Task: ...
    def __getitem__(self, index: int | slice) -> TaskRecord | Task:
        if isinstance(index, slice):
            return replace(self, records=self.records[index])
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise InvalidTypeError(
                f"a Task index must be an int or a slice, got {type(index).__name__}"
            )
        n = len(self.records)
        if not -n <= index < n:
            raise OutOfRangeError(f"record index {index} is out of range for {n} records")
        return self.records[int(index)]

    # -- columns -------------------------------------------------------------------

    @property
    def prompts(self) -> list[str]:
        """The prompts (a fresh list)."""
        return [r.prompt for r in self.records]

    @property
    def targets(self) -> list[str]:
        """The target answers, each starting with the space the model sees (a fresh list)."""
        return [r.target for r in self.records]

    @property
    def foils(self) -> list[str]:
        """The foil answers (a fresh list)."""
        return [r.foil for r in self.records]

    @property
    def n_tokens(self) -> int | None:
        """The prompts' common token length for the default model, or None when they
        differ (``lengths="varied"``) or there are no records."""
        lengths = {r.n_tokens for r in self.records}
        return lengths.pop() if len(lengths) == 1 else None

    @property
    def unsteered_logit_diffs(self) -> np.ndarray:
        """float64 ``[n_records]``: logit(target) - logit(foil) of the unsteered default
        model, as measured when the data was generated."""
        return np.array([r.unsteered_logit_diff for r in self.records], dtype=np.float64)

    # -- derived tasks -------------------------------------------------------------

    @overload
    def split(self, name: None = None) -> tuple[Task, Task]: ...
    @overload
    def split(self, name: str) -> Task: ...
    def split(self, name: str | None = None) -> Task | tuple[Task, Task]:
        """The training or held-out part.

        Held-out records use entities that no training record uses: countries (asked or
        stated in the context) for the country tasks, names for IOI.

        Args:
            name: ``"train"`` or ``"held_out"``; None for both.

        Returns:
            That part as a `Task`, or ``(train, held_out)``.

        Raises:
            InvalidArgumentError: another name, or a part with no records in this task
                (e.g. ``split("train")`` of a held-out task).
            InvalidTypeError: a name that is not a str.
        """
        if name is None:
            return self.split("train"), self.split("held_out")
        key = _split_name(name, _PARTS)
        records = tuple(r for r in self.records if r.split == key)
        if not records:
            raise InvalidArgumentError(
                f"task {self.name!r} (part {self.part!r}, {len(self)} records) has no "
                f"{key!r} records"
            )
        return replace(self, records=records, part=key)

    def reversed(self) -> Task:
        """The task with every target and foil swapped.

        ``country_capital`` and ``country_capital_context`` are each other's reverse;
        another task ``x`` becomes ``x_reversed`` (and back).

        Returns:
            A new `Task`.
        """
        if self.name in _REVERSED_NAME:
            name = _REVERSED_NAME[self.name]
        elif self.name.endswith("_reversed"):
            name = self.name[: -len("_reversed")]
        else:
            name = self.name + "_reversed"
        if self.description.startswith(_REVERSED_NOTE):
            description = self.description[len(_REVERSED_NOTE) :]
        else:
            description = _REVERSED_NOTE + self.description
        return replace(
            self,
            name=name,
            description=description,
            records=tuple(r.reversed() for r in self.records),
        )

    def subset(self, n: int, seed: int = 0) -> Task:
        """`n` records drawn at random without replacement, kept in file order.

        Args:
            n: how many, 1 to ``len(self)``.
            seed: the draw's seed (the same seed gives the same records).

        Returns:
            A new `Task`.

        Raises:
            InvalidTypeError: `n` or `seed` not an int.
            InvalidArgumentError: `n` outside 1 .. ``len(self)``.
        """
        for arg, value in (("n", n), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidTypeError(f"{arg} must be an int, got {type(value).__name__}")
        if not 1 <= n <= len(self.records):
            raise InvalidArgumentError(
                f"n must be between 1 and the task's {len(self.records)} records, got {n}"
            )
        keep = sorted(random.Random(seed).sample(range(len(self.records)), n))
        return replace(self, records=tuple(self.records[i] for i in keep))

    def to_pandas(self) -> pd.DataFrame:
        """One row per record: prompt, target, foil, template, split, lengths, n_tokens,
        unsteered_logit_diff, and one column per entity (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        rows = []
        for r in self.records:
            row = r.to_dict()
            row.update(row.pop("entities"))
            rows.append(row)
        return pd.DataFrame(rows)


# ------------------------------------------------------------------ loading


def task_names() -> list[str]:
    """Names of the shipped tasks.

    Returns:
        ``["country_capital", "country_capital_context", "ioi"]``.
    """
    return list(_TASKS)


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str):
        raise InvalidTypeError(f"{what} must be a str, got {type(value).__name__}")
    key = value.strip().lower().replace("-", "_")
    if key not in allowed:
        raise InvalidArgumentError(f"unknown {what} {value!r}; expected one of {allowed}")
    return key


def _split_name(value: Any, allowed: tuple[str, ...]) -> str:
    if isinstance(value, str) and value.strip().lower() == "heldout":
        return "held_out"
    return _choice(value, allowed, "split")


def load_task(name: str, split: str = "all", *, lengths: str = "fixed") -> Task:
    """Load a shipped answer-choice task.

    Tasks:
        - ``country_capital``: a context states a wrong capital for a country, then asks
          for the country's capital ("Claim: the capital of Spain is Rome. Q: What is the
          capital of Spain? A:"); target = the true capital (``" Madrid"``), foil = the
          stated one (``" Rome"``). 64 countries whose capital the default model names
          on a neutral prompt; 320 fixed-layout records (240 train, 80 held-out).
        - ``country_capital_context``: the same records reversed (target = the capital
          stated in the context).
        - ``ioi``: indirect-object identification ("When Mary and John went to the
          store, John gave a drink to"; target ``" Mary"``, foil ``" John"``), orders
          ABBA and BABA; 240 fixed-layout records (180 train, 60 held-out).

    Every target and foil is a string whose first token is the answer, with the
    leading space; the two first tokens differ. Held-out records use countries (asked
    or stated) or names that no training record uses.

    Args:
        name: one of `task_names` (case-insensitive; ``-`` and ``_`` are the same).
        split: ``"all"``, ``"train"`` or ``"held_out"`` (``"heldout"`` also accepted).
        lengths: ``"fixed"``: every record (all templates, both splits) has the same
            number of tokens for the default model (21 for the country tasks, 14 for
            IOI) and the filled-in entities at the same token positions, as static
            activation scalars, tied to token positions, need;
            ``"varied"``: records from other templates, each of a token length other
            than the fixed one (13 to 39 tokens for the country tasks, 13 to 24 for
            IOI), for modules that transfer across lengths; ``"all"``: both.

    Returns:
        The `Task`, records in file order.

    Raises:
        InvalidArgumentError: an unknown name, split or lengths (the message lists the
            choices), or a malformed data file.
        InvalidTypeError: an argument that is not a str.
    """
    key = _choice(name, tuple(_TASKS), "task")
    part = _split_name(split, TASK_SPLITS)
    layout = _choice(lengths, TASK_LENGTHS, "lengths")
    stem, swap = _TASKS[key]
    description, records = _read(stem)
    chosen = tuple(r for r in records if part in ("all", r.split) and layout in ("all", r.lengths))
    task = Task(name=stem, description=description, records=chosen, part=part, lengths=layout)
    return task.reversed() if swap else task


# ------------------------------------------------------------------ file parsing


def _str_field(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _tasks_dir() -> Traversable:
    return resources.files("steerlab") / "data" / "tasks"


@cache
def _read(stem: str) -> tuple[str, tuple[TaskRecord, ...]]:
    where = f"steerlab/data/tasks/{stem}.json"
    path = _tasks_dir() / f"{stem}.json"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgumentError(
            f"the task file {where} is missing from the installed package; reinstall steerlab"
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("records"), list):
        raise InvalidArgumentError(f"{where}: expected an object with a 'records' list")
    description = _str_field(obj, "description", where)
    records = []
    for i, item in enumerate(obj["records"]):
        at = f"{where}, record {i}"
        if not isinstance(item, dict):
            raise InvalidArgumentError(f"{at}: expected an object, got {type(item).__name__}")
        entities = item.get("entities")
        if not isinstance(entities, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in entities.items()
        ):
            raise InvalidArgumentError(f"{at}: 'entities' must map strings to strings")
        n_tokens = item.get("n_tokens")
        diff = item.get("unsteered_logit_diff")
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
            raise InvalidArgumentError(f"{at}: 'n_tokens' must be a positive int")
        if isinstance(diff, bool) or not isinstance(diff, int | float) or not np.isfinite(diff):
            raise InvalidArgumentError(f"{at}: 'unsteered_logit_diff' must be a finite number")
        rec = TaskRecord(
            prompt=_str_field(item, "prompt", at),
            target=_str_field(item, "target", at),
            foil=_str_field(item, "foil", at),
            template=_str_field(item, "template", at),
            split=_str_field(item, "split", at),
            lengths=_str_field(item, "lengths", at),
            entities=MappingProxyType(dict(entities)),
            n_tokens=n_tokens,
            unsteered_logit_diff=float(diff),
        )
        if rec.split not in _PARTS or rec.lengths not in _LAYOUTS:
            raise InvalidArgumentError(
                f"{at}: split {rec.split!r} / lengths {rec.lengths!r} not in {_PARTS} / {_LAYOUTS}"
            )
        if rec.target == rec.foil:
            raise InvalidArgumentError(f"{at}: target and foil are the same text")
        records.append(rec)
    if not records:
        raise InvalidArgumentError(f"{where}: no records")
    return description, tuple(records)
