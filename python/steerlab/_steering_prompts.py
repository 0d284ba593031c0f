"""Steering instructions and base prompts for HyperSteer (Sun et al. 2025).

The data sits in ``steerlab/data/steering_prompts/`` (``instructions.jsonl``,
``base_prompts.jsonl``), written by hand for the package;
``steerlab/data/steering_prompts/README.md`` lists the categories, the keyword rule and
how the splits were drawn. `steerlab.datasets` re-exports the public names.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from steerlab._args import jsonl_records
from steerlab.errors import InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    from typing import Literal

    import pandas as pd

__all__ = [
    "BASE_PROMPT_SPLITS",
    "INSTRUCTION_SPLITS",
    "STEERING_CATEGORIES",
    "SteeringPrompts",
    "keyword_hits",
    "load_steering_prompts",
]

#: The instruction splits `load_steering_prompts` and `SteeringPrompts.split` accept.
INSTRUCTION_SPLITS = ("all", "held_in", "held_out")

#: The base-prompt splits `load_steering_prompts` and `SteeringPrompts.split` accept.
BASE_PROMPT_SPLITS = ("all", "train", "validation", "held_out")

#: The instruction categories, in file order.
STEERING_CATEGORIES = ("topic", "tone", "format", "style", "persona")

_FOLDER = "steering_prompts"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


@dataclass(frozen=True)
class _Instruction:
    text: str
    category: str
    concept: str
    keywords: tuple[str, ...]
    reliable: bool
    split: str


@dataclass(frozen=True)
class _BasePrompt:
    text: str
    split: str


@dataclass(frozen=True)
class SteeringPrompts:
    """Steering instructions (with keywords) and base prompts, all or one part of them.

    The two sides are independent: an instruction is a steering prompt ("Mention the
    ocean."), a base prompt is a user request to answer while steered ("Describe your
    morning routine."). HyperSteer trains on pairs of the two (`pairs`). Every list
    attribute returns a fresh list on each access, so callers may change it.

    Attributes:
        instruction_part: ``"all"``, ``"held_in"`` or ``"held_out"``: which
            instructions were selected.
        base_prompt_part: ``"all"``, ``"train"``, ``"validation"`` or ``"held_out"``:
            which base prompts were selected.
        instructions: the steering instructions (``list[str]``), in file order.
        keywords: ``list[list[str]]`` parallel to ``instructions``: the words a text
            that follows the instruction is likely to contain, for `keyword_hits`.
        keywords_reliable: ``list[bool]`` parallel to ``instructions``; False where the
            instruction is about form more than words ("Use exactly one sentence.") and
            its keywords are only a weak lexical hint.
        concepts: ``list[str]`` parallel to ``instructions``: the concept each one asks
            for (``"ocean"``, ``"pirate"``); several phrasings share a concept.
        categories: ``list[str]`` parallel to ``instructions``: one of
            `STEERING_CATEGORIES`.
        instruction_splits: ``list[str]`` parallel to ``instructions``: ``"held_in"``
            or ``"held_out"``.
        base_prompts: the base prompts (``list[str]``), in file order.
        base_prompt_splits: ``list[str]`` parallel to ``base_prompts``: ``"train"``,
            ``"validation"`` or ``"held_out"``.
    """

    instruction_part: str
    base_prompt_part: str
    _instructions: tuple[_Instruction, ...] = field(repr=False)
    _base: tuple[_BasePrompt, ...] = field(repr=False)

    @property
    def instructions(self) -> list[str]:
        return [r.text for r in self._instructions]

    @property
    def keywords(self) -> list[list[str]]:
        return [list(r.keywords) for r in self._instructions]

    @property
    def keywords_reliable(self) -> list[bool]:
        return [r.reliable for r in self._instructions]

    @property
    def concepts(self) -> list[str]:
        return [r.concept for r in self._instructions]

    @property
    def categories(self) -> list[str]:
        return [r.category for r in self._instructions]

    @property
    def instruction_splits(self) -> list[str]:
        return [r.split for r in self._instructions]

    @property
    def base_prompts(self) -> list[str]:
        return [b.text for b in self._base]

    @property
    def base_prompt_splits(self) -> list[str]:
        return [b.split for b in self._base]

    def __len__(self) -> int:
        """Number of instructions (``len(data.base_prompts)`` counts the base prompts)."""
        return len(self._instructions)

    def __repr__(self) -> str:
        return (
            f"SteeringPrompts(instructions={self.instruction_part!r} "
            f"({len(self._instructions)}), base_prompts={self.base_prompt_part!r} "
            f"({len(self._base)}))"
        )

    def split(
        self,
        instructions: Literal["all", "held_in", "held_out"] | str = "all",
        base_prompts: Literal["all", "train", "validation", "held_out"] | str = "all",
    ) -> SteeringPrompts:
        """These prompts restricted to one instruction split and one base-prompt split.

        The splits are fixed in the data files. Instructions are split by concept
        (about 80% held-in, 20% held-out, stratified by category): no held-out concept
        has a held-in phrasing. Base prompts are split about 70/10/20 into train,
        validation and held-out. ``"all"`` leaves that side as it is, so
        ``data.split(instructions="held_out")`` keeps every base prompt of ``data``.
        Splitting a part returns what of it lies in the named part
        (``data.split("held_in").split("held_out")`` has no instructions).

        Args:
            instructions: ``"all"`` (default), ``"held_in"`` or ``"held_out"``
                (``"heldout"`` also accepted).
            base_prompts: ``"all"`` (default), ``"train"``, ``"validation"`` or
                ``"held_out"`` (``"heldout"`` also accepted).

        Returns:
            A new `SteeringPrompts`.

        Raises:
            InvalidTypeError: a split name that is not a str.
            InvalidArgumentError: a split name not listed above.

        Example:
            >>> train = load_steering_prompts().split("held_in", base_prompts="train")
            >>> (train.instruction_part, train.base_prompt_part)
            ('held_in', 'train')
        """
        ins = _check_split("instructions", instructions, INSTRUCTION_SPLITS)
        base = _check_split("base_prompts", base_prompts, BASE_PROMPT_SPLITS)
        return SteeringPrompts(
            instruction_part=self.instruction_part if ins == "all" else ins,
            base_prompt_part=self.base_prompt_part if base == "all" else base,
            _instructions=self._instructions
            if ins == "all"
            else tuple(r for r in self._instructions if r.split == ins),
            _base=self._base if base == "all" else tuple(b for b in self._base if b.split == base),
        )

    def one_per_concept(self) -> SteeringPrompts:
        """The first instruction (in file order) of each concept; base prompts unchanged.

        For evaluations that score each concept once (AxBench's protocol).

        Returns:
            A new `SteeringPrompts` with ``len(set(self.concepts))`` instructions.
        """
        seen: set[str] = set()
        keep = []
        for r in self._instructions:
            if r.concept not in seen:
                seen.add(r.concept)
                keep.append(r)
        return SteeringPrompts(
            self.instruction_part, self.base_prompt_part, tuple(keep), self._base
        )

    def sample(self, n: int, *, seed: int = 0) -> SteeringPrompts:
        """``n`` instructions drawn at random without replacement; base prompts unchanged.

        The drawn instructions keep their file order; the same seed draws the same ones.

        Args:
            n: how many instructions, 1 to ``len(self)``.
            seed: seed of the draw.

        Returns:
            A new `SteeringPrompts` with ``n`` instructions (parts unchanged).

        Raises:
            InvalidTypeError: n or seed is not an int.
            InvalidArgumentError: n is below 1 or above ``len(self)``.
        """
        n = _check_int("n", n)
        seed = _check_int("seed", seed)
        if not 1 <= n <= len(self._instructions):
            raise InvalidArgumentError(
                f"n must be between 1 and {len(self._instructions)} (the instructions in "
                f"this set), got {n}"
            )
        picked = sorted(random.Random(seed).sample(range(len(self._instructions)), n))
        return SteeringPrompts(
            self.instruction_part,
            self.base_prompt_part,
            tuple(self._instructions[i] for i in picked),
            self._base,
        )

    def pairs(self, n: int | None = None, *, seed: int = 0) -> tuple[list[str], list[str]]:
        """Element-wise paired steering prompts and base prompts, for training.

        Instructions are dealt out in passes over a seeded shuffle, so each appears
        ``n // len(self)`` or one more times; each is paired with a base prompt dealt
        out the same way from the base prompts. The same seed gives the same pairs.

        Args:
            n: how many pairs (at least 1); None (default) for one per instruction.
            seed: seed of the shuffles.

        Returns:
            ``(steering_prompts, base_prompts)``, two ``list[str]`` of length ``n``;
            ``steering_prompts[i]`` goes with ``base_prompts[i]``.

        Raises:
            InvalidTypeError: n is not an int or None, or seed is not an int.
            InvalidArgumentError: n is below 1, or this set has no instructions or no
                base prompts.

        Example:
            >>> steer, base = load_steering_prompts().split("held_in", "train").pairs(seed=0)
            >>> len(steer) == len(base)
            True
        """
        seed = _check_int("seed", seed)
        if n is not None:
            n = _check_int("n", n, "an int or None")
            if n < 1:
                raise InvalidArgumentError(f"n must be at least 1, got {n}")
        if not self._instructions or not self._base:
            raise InvalidArgumentError(
                f"pairs() needs at least one instruction and one base prompt; {self!r} has "
                f"{len(self._instructions)} instructions and {len(self._base)} base prompts"
            )
        count = len(self._instructions) if n is None else n
        rng = random.Random(seed)
        return (
            _deal(rng, [r.text for r in self._instructions], count),
            _deal(rng, [b.text for b in self._base], count),
        )

    def keywords_for(self, instruction: str) -> list[str]:
        """The keywords of one of these instructions.

        Matching ignores case, runs of whitespace and a final ``.`` or ``!``, so
        ``keywords_for("mention the ocean")`` finds "Mention the ocean.".

        Args:
            instruction: one of ``self.instructions``.

        Returns:
            A fresh ``list[str]`` of keywords, for `keyword_hits`.

        Raises:
            InvalidTypeError: instruction is not a str.
            InvalidArgumentError: instruction is not among these instructions.
        """
        if not isinstance(instruction, str):
            raise InvalidTypeError(f"instruction must be a str, got {type(instruction).__name__}")
        key = _instruction_key(instruction)
        for r in self._instructions:
            if _instruction_key(r.text) == key:
                return list(r.keywords)
        raise InvalidArgumentError(
            f"unknown instruction {instruction!r}: not one of the {len(self._instructions)} "
            f"instructions of {self!r} (matching ignores case, spaces and a final '.' or '!')"
        )

    def to_pandas(
        self, what: Literal["instructions", "base_prompts"] | str = "instructions"
    ) -> pd.DataFrame:
        """One row per instruction or per base prompt (needs pandas).

        Args:
            what: ``"instructions"`` (columns instruction, category, concept, keywords,
                keywords_reliable, split) or ``"base_prompts"`` (columns prompt, split).

        Returns:
            A `pandas.DataFrame` in file order.

        Raises:
            InvalidTypeError: what is not a str.
            InvalidArgumentError: what is neither name.
            ImportError: pandas is not installed.
        """
        if not isinstance(what, str):
            raise InvalidTypeError(f"what must be a str, got {type(what).__name__}")
        if what not in ("instructions", "base_prompts"):
            raise InvalidArgumentError(
                f"unknown what {what!r}; expected 'instructions' or 'base_prompts'"
            )
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        if what == "base_prompts":
            return pd.DataFrame(
                [{"prompt": b.text, "split": b.split} for b in self._base],
                columns=["prompt", "split"],
            )
        columns = ["instruction", "category", "concept", "keywords", "keywords_reliable", "split"]
        rows = [
            {
                "instruction": r.text,
                "category": r.category,
                "concept": r.concept,
                "keywords": list(r.keywords),
                "keywords_reliable": r.reliable,
                "split": r.split,
            }
            for r in self._instructions
        ]
        return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------ keyword matching


@lru_cache(maxsize=4096)
def _keyword_regex(keyword: str) -> re.Pattern[str]:
    stem = len(keyword) > 1 and keyword.endswith("*")
    body = keyword[:-1] if stem else keyword
    core = r"\s+".join(re.escape(w) for w in body.split())
    left = r"(?<!\w)" if re.match(r"\w", body) else ""
    if stem:  # a stem runs on to the end of its word
        return re.compile(left + core + r"\w*", re.IGNORECASE)
    right = r"(?!\w)" if re.search(r"\w$", body) else ""
    return re.compile(left + core + right, re.IGNORECASE)


def keyword_hits(text: str, keywords: Sequence[str], *, distinct: bool = True) -> int:
    """How many of the keywords occur in a text (the keyword check of AxBench-style scores).

    The rule, the same for every keyword list steerlab ships:

    - case is ignored, and curly apostrophes in the text count as ``'``;
    - a keyword ending in ``*`` is a stem and matches any word that begins with it
      (``"cook*"`` matches cook, cooks, cooking, cookbook);
    - any other keyword matches whole words only (``"sea"`` matches "the Sea." but not
      "season" or "seas");
    - word boundaries apply only at a keyword's edges that are letters, digits or ``_``:
      ``"1."`` must start a word (it matches "1. Pack" but not "21."), while ``"?"``,
      ``"("`` and emoji match anywhere;
    - a keyword with inner spaces matches across any run of whitespace.

    Args:
        text: the text to check, e.g. a steered continuation.
        keywords: the keywords (``list[str]``), e.g. one entry of
            `SteeringPrompts.keywords`.
        distinct: True (default) counts each distinct keyword once if it occurs at all;
            False counts every occurrence of every distinct keyword (non-overlapping
            matches per keyword, summed; a stem and a word it covers both count).

    Returns:
        The count, 0 when no keyword occurs.

    Raises:
        InvalidTypeError: text is not a str, keywords is a str or not a sequence of str.
        InvalidArgumentError: keywords is empty, or one keyword is blank or only ``*``.

    Example:
        >>> keyword_hits("Waves broke on the beach by the sea.", ["sea", "wave*", "coral"])
        2
    """
    if not isinstance(text, str):
        raise InvalidTypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(keywords, str) or not isinstance(keywords, Sequence):
        raise InvalidTypeError(f"keywords must be a list of str, got {type(keywords).__name__}")
    if not keywords:
        raise InvalidArgumentError("keywords must hold at least one keyword, got an empty list")
    unique: list[str] = []
    for i, kw in enumerate(keywords):
        if not isinstance(kw, str):
            raise InvalidTypeError(f"keywords[{i}] must be a str, got {type(kw).__name__}")
        if not kw.strip() or not kw.strip().rstrip("*"):
            raise InvalidArgumentError(f"keywords[{i}] must be a word or stem, got {kw!r}")
        key = kw.strip().lower()
        if key not in unique:
            unique.append(key)
    text = text.translate(_APOSTROPHES)
    if distinct:
        return sum(1 for kw in unique if _keyword_regex(kw).search(text) is not None)
    return sum(len(_keyword_regex(kw).findall(text)) for kw in unique)


# ------------------------------------------------------------------ loading


def _check_split(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise InvalidTypeError(f"{name} split must be a str, got {type(value).__name__}")
    if value == "heldout":
        value = "held_out"
    if value not in choices:
        raise InvalidArgumentError(
            f"unknown {name} split {value!r}; expected one of {', '.join(repr(c) for c in choices)}"
        )
    return value


def _check_int(name: str, value: object, expected: str = "an int") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return value


def _deal(rng: random.Random, items: list[str], n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        batch = items[:]
        rng.shuffle(batch)
        out.extend(batch[: n - len(out)])
    return out


def _instruction_key(text: str) -> str:
    return " ".join(text.split()).casefold().rstrip(".!").rstrip()


def _records(name: str) -> list[tuple[str, dict[str, Any]]]:
    path = resources.files("steerlab").joinpath("data", _FOLDER, name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidArgumentError(
            f"the file steerlab/data/{_FOLDER}/{name} is missing from the installed package; "
            f"reinstall steerlab"
        ) from None
    return jsonl_records(text, f"{_FOLDER}/{name}")


def _field(obj: dict[str, Any], key: str, where: str, choices: tuple[str, ...] = ()) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise InvalidArgumentError(f"{where}: {key!r} must be a non-empty, stripped string")
    if choices and value not in choices:
        raise InvalidArgumentError(f"{where}: {key!r} must be one of {choices}, got {value!r}")
    return value


def _read_instructions() -> tuple[_Instruction, ...]:
    items = []
    for where, obj in _records("instructions.jsonl"):
        raw = obj.get("keywords")
        if not isinstance(raw, list) or not 1 <= len(raw) <= 12:
            raise InvalidArgumentError(f"{where}: 'keywords' must be a list of 1 to 12 strings")
        for kw in raw:
            if not isinstance(kw, str) or not kw or kw != kw.lower() or kw != kw.strip():
                raise InvalidArgumentError(
                    f"{where}: every keyword must be a non-empty lowercase string, got {kw!r}"
                )
        reliable = obj.get("keywords_reliable")
        if not isinstance(reliable, bool):
            raise InvalidArgumentError(f"{where}: 'keywords_reliable' must be true or false")
        items.append(
            _Instruction(
                text=_field(obj, "instruction", where),
                category=_field(obj, "category", where, STEERING_CATEGORIES),
                concept=_field(obj, "concept", where),
                keywords=tuple(raw),
                reliable=reliable,
                split=_field(obj, "split", where, INSTRUCTION_SPLITS[1:]),
            )
        )
    split_of: dict[str, str] = {}
    for r in items:
        if split_of.setdefault(r.concept, r.split) != r.split:
            raise InvalidArgumentError(
                f"{_FOLDER}/instructions.jsonl: the concept {r.concept!r} is in both splits"
            )
    return tuple(items)


def _read_base_prompts() -> tuple[_BasePrompt, ...]:
    return tuple(
        _BasePrompt(
            text=_field(obj, "prompt", where),
            split=_field(obj, "split", where, BASE_PROMPT_SPLITS[1:]),
        )
        for where, obj in _records("base_prompts.jsonl")
    )


@cache
def _all() -> SteeringPrompts:
    return SteeringPrompts("all", "all", _read_instructions(), _read_base_prompts())


def load_steering_prompts(
    instructions: Literal["all", "held_in", "held_out"] | str = "all",
    base_prompts: Literal["all", "train", "validation", "held_out"] | str = "all",
) -> SteeringPrompts:
    """The shipped steering instructions and base prompts (all written for the package).

    At least 320 plain-language steering instructions in five categories (topics,
    tones, formats, personas, styles of language), several phrasings per concept,
    each with keywords for `keyword_hits`; and at least 220 short, neutral base
    prompts. `data/steering_prompts/README.md` gives the counts per category and split
    (a test checks them against the data). Parsed once and cached. With no arguments,
    everything; otherwise the same as ``load_steering_prompts().split(instructions,
    base_prompts)``.

    Args:
        instructions: ``"all"`` (default), ``"held_in"`` or ``"held_out"``.
        base_prompts: ``"all"`` (default), ``"train"``, ``"validation"`` or
            ``"held_out"``.

    Returns:
        `SteeringPrompts`: ``.instructions`` (``list[str]``), ``.keywords`` (one
        ``list[str]`` per instruction), ``.base_prompts`` (``list[str]``),
        ``.split(...)``, ``.pairs(...)``.

    Raises:
        InvalidTypeError: a split name that is not a str.
        InvalidArgumentError: a split name not listed above.

    Example:
        >>> data = load_steering_prompts()
        >>> len(data.instructions) >= 320 and len(data.base_prompts) >= 220
        True
        >>> len(data.keywords) == len(data.instructions)
        True
    """
    return _all().split(instructions, base_prompts)
