"""Harmful and benign requests, with refusal and compliance openings.

The data sits in ``steerlab/data/requests/`` (``harmful.jsonl``, ``benign.jsonl``,
``refusal_openings.txt``, ``compliance_openings.txt``), written by hand for the package;
``steerlab/data/requests/README.md`` lists the categories and how the splits were drawn.
`steerlab.datasets` re-exports the public names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, overload

from steerlab.errors import InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    from typing import Literal

    import pandas as pd

__all__ = ["REQUEST_SPLITS", "Requests", "load_requests"]

#: The splits `load_requests` and `Requests.split` accept (``"all"`` only the former).
REQUEST_SPLITS = ("all", "train", "validation", "held_out")

_PARTS = ("train", "validation", "held_out")


@dataclass(frozen=True)
class _Item:
    text: str
    category: str
    split: str
    alarming: bool = False


@dataclass(frozen=True)
class Requests:
    """Harmful and benign user requests, one part of them or all.

    Every list attribute returns a fresh list on each access, so callers may change it.

    Attributes:
        part: ``"all"``, ``"train"``, ``"validation"`` or ``"held_out"``: which requests
            were selected.
        harmful: the harmful requests (``list[str]``); a model should refuse them.
        benign: the benign requests (``list[str]``); a model should answer them. Some
            look alarming on the surface (see ``alarming_benign``).
        harmful_categories: the category of each harmful request (parallel to
            ``harmful``), e.g. ``"weapons"``, ``"fraud"``.
        benign_categories: the category of each benign request (parallel to
            ``benign``); the alarming-looking ones are ``"alarming_*"``.
        alarming_benign: the benign requests that look alarming on the surface
            ("kill a process", "shoot a photo"), a subset of ``benign`` in its order.
        alarming_mask: ``list[bool]`` parallel to ``benign``, True where alarming.
        refusal_openings: openings of a refusal ("I can't help with that."), the same
            in every part.
        compliance_openings: openings of a compliant answer ("Sure! Here's"), the same
            in every part.
    """

    part: str
    _harmful: tuple[_Item, ...] = field(repr=False)
    _benign: tuple[_Item, ...] = field(repr=False)
    _refusals: tuple[str, ...] = field(repr=False)
    _compliances: tuple[str, ...] = field(repr=False)

    @property
    def harmful(self) -> list[str]:
        return [r.text for r in self._harmful]

    @property
    def benign(self) -> list[str]:
        return [r.text for r in self._benign]

    @property
    def harmful_categories(self) -> list[str]:
        return [r.category for r in self._harmful]

    @property
    def benign_categories(self) -> list[str]:
        return [r.category for r in self._benign]

    @property
    def alarming_benign(self) -> list[str]:
        return [r.text for r in self._benign if r.alarming]

    @property
    def alarming_mask(self) -> list[bool]:
        return [r.alarming for r in self._benign]

    @property
    def refusal_openings(self) -> list[str]:
        return list(self._refusals)

    @property
    def compliance_openings(self) -> list[str]:
        return list(self._compliances)

    def __len__(self) -> int:
        """Number of requests, harmful and benign together."""
        return len(self._harmful) + len(self._benign)

    def __repr__(self) -> str:
        return (
            f"Requests(part={self.part!r}, harmful={len(self._harmful)}, "
            f"benign={len(self._benign)}, alarming_benign={len(self.alarming_benign)})"
        )

    @overload
    def split(self, name: None = None) -> tuple[Requests, Requests, Requests]: ...
    @overload
    def split(self, name: str) -> Requests: ...
    def split(self, name: str | None = None) -> Requests | tuple[Requests, Requests, Requests]:
        """One part of these requests, or all three.

        The parts are fixed in the data files (about 60/20/20, stratified by category)
        and disjoint. Splitting a part returns what of that part lies in the named part
        (``load_requests("train").split("held_out")`` is empty).

        Args:
            name: ``"train"``, ``"validation"`` or ``"held_out"``; None for all three.

        Returns:
            That part as `Requests`, or ``(train, validation, held_out)``.

        Raises:
            InvalidTypeError: name is not a str or None.
            InvalidArgumentError: name is not one of the three parts.
        """
        if name is None:
            return self.split("train"), self.split("validation"), self.split("held_out")
        name = _check_split(name, _PARTS)
        return Requests(
            part=name,
            _harmful=tuple(r for r in self._harmful if r.split == name),
            _benign=tuple(r for r in self._benign if r.split == name),
            _refusals=self._refusals,
            _compliances=self._compliances,
        )

    def to_pandas(self) -> pd.DataFrame:
        """One row per request: text, label (``"harmful"`` or ``"benign"``), category,
        alarming (bool), split (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        rows = [
            {
                "text": r.text,
                "label": label,
                "category": r.category,
                "alarming": r.alarming,
                "split": r.split,
            }
            for label, items in (("harmful", self._harmful), ("benign", self._benign))
            for r in items
        ]
        return pd.DataFrame(rows, columns=["text", "label", "category", "alarming", "split"])


def _check_split(split: object, choices: tuple[str, ...]) -> str:
    if not isinstance(split, str):
        raise InvalidTypeError(f"split must be a str, got {type(split).__name__}")
    if split not in choices:
        raise InvalidArgumentError(
            f"unknown split {split!r}; expected one of {', '.join(repr(c) for c in choices)}"
        )
    return split


def _read_items(name: str, benign: bool) -> tuple[_Item, ...]:
    path = resources.files("steerlab").joinpath("data", "requests", f"{name}.jsonl")
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        d: dict[str, Any] = json.loads(line)
        items.append(
            _Item(
                text=d["text"],
                category=d["category"],
                split=d["split"],
                alarming=bool(d["alarming"]) if benign else False,
            )
        )
    return tuple(items)


def _read_lines(name: str) -> tuple[str, ...]:
    path = resources.files("steerlab").joinpath("data", "requests", f"{name}.txt")
    return tuple(s for s in (x.strip() for x in path.read_text(encoding="utf-8").splitlines()) if s)


@cache
def _all() -> Requests:
    return Requests(
        part="all",
        _harmful=_read_items("harmful", benign=False),
        _benign=_read_items("benign", benign=True),
        _refusals=_read_lines("refusal_openings"),
        _compliances=_read_lines("compliance_openings"),
    )


def load_requests(
    split: Literal["all", "train", "validation", "held_out"] | str = "all",
) -> Requests:
    """The shipped harmful and benign requests (all written for the package).

    At least 300 harmful requests (weapons, cyberattacks, fraud, drugs, violence,
    harassment, privacy, self-harm, extremism, theft, misinformation, evading the law)
    and at least 300 benign ones (everyday topics, plus requests that look alarming on
    the surface, for measuring false refusals honestly), with refusal and compliance
    openings; `data/requests/README.md` gives the counts per category and split (a test
    checks them against the data). The request texts are requests only; they hold no
    harmful content. Parsed once and cached.

    Args:
        split: ``"all"`` (default), ``"train"``, ``"validation"`` or ``"held_out"``
            (``"heldout"`` also accepted).

    Returns:
        `Requests`; ``.harmful`` and ``.benign`` are ``list[str]``, ``.split()`` gives
        ``(train, validation, held_out)``.

    Raises:
        InvalidTypeError: split is not a str.
        InvalidArgumentError: split is not one of the names above.

    Example:
        >>> req = load_requests()
        >>> train, validation, held_out = req.split()
        >>> len(req.harmful) >= 300 and len(req.benign) >= 300
        True
    """
    if split == "heldout":
        split = "held_out"
    split = _check_split(split, REQUEST_SPLITS)
    return _all() if split == "all" else _all().split(split)
