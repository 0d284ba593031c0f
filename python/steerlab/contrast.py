"""Contrast data: pairs of texts that differ in the behaviour a steering vector should carry.

Three ways in:

- `ContrastPairs.from_texts`: ``(positive, negative)`` texts as they are;
- `ContrastPairs.from_completions`: ``(prompt, positive completion, negative completion)``;
- `ContrastPairs.from_records`: A/B multiple-choice records (a question, the answer that
  shows the behaviour, the answer that does not), rendered in any of the seven prompt
  types of Braun et al. (2025): the non-empty subsets of {prefilled answer, instruction,
  few-shot examples}.

A/B rendering. Record ``i`` puts the matching answer under letter ``A`` when
``(i + seed)`` is even and under ``B`` otherwise, so the letter itself never carries the
behaviour. The prompt is::

    [instruction]            (prompt types with "instruction"; a system turn in chat form)
    [k answered examples]    (prompt types with "few_shot")
    {question}

    Choices:
    (A) ...
    (B) ...

    Answer: ({letter}        (the letter only for prompt types with "prefilled")

Positives get the matching instruction / examples answered in the matching way / the
matching letter; negatives the opposite. Activations are read at the last token: the
prefilled answer letter when there is one, else the ``(`` that precedes the answer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from steerlab.errors import InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    from steerlab.model import Model

__all__ = [
    "PROMPT_PARTS",
    "PROMPT_TYPES",
    "ContrastPair",
    "ContrastPairs",
    "Record",
    "as_records",
    "parse_prompt_type",
    "render_ab",
]

#: The three ingredients of a prompt type.
PROMPT_PARTS = ("prefilled", "instruction", "few_shot")
#: The seven prompt types of Braun et al. (2025): every non-empty subset of the parts.
PROMPT_TYPES: tuple[str, ...] = tuple(
    "+".join(c) for r in (1, 2, 3) for c in itertools.combinations(PROMPT_PARTS, r)
)

LETTERS = ("A", "B")


@dataclass(frozen=True)
class Record:
    """One A/B multiple-choice record."""

    question: str
    matching: str
    not_matching: str


def _record(item: Any, i: int) -> Record:
    if isinstance(item, Record):
        return item
    if isinstance(item, Mapping):
        try:
            q, m, n = item["question"], item["matching"], item["not_matching"]
        except KeyError as exc:
            raise InvalidArgumentError(
                f"record {i} lacks the key {exc.args[0]!r}; expected 'question', 'matching' "
                f"and 'not_matching'"
            ) from None
    elif all(hasattr(item, a) for a in ("question", "matching", "not_matching")):
        q, m, n = item.question, item.matching, item.not_matching
    elif isinstance(item, tuple | list) and len(item) == 3:
        q, m, n = item
    else:
        raise InvalidTypeError(
            f"record {i} must have question / matching / not_matching (a mapping, an object "
            f"or a 3-tuple), got {type(item).__name__}"
        )
    for name, value in (("question", q), ("matching", m), ("not_matching", n)):
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgumentError(f"record {i}: {name} must be a non-empty str")
    if m == n:
        raise InvalidArgumentError(f"record {i}: the two answers are the same text")
    return Record(q, m, n)


def as_records(records: Any) -> list[Record]:
    """Normalise records: a `steerlab.datasets.Behaviour`, or a list of records as
    mappings, objects with ``question`` / ``matching`` / ``not_matching``, or 3-tuples.

    Raises:
        InvalidArgumentError: no records, a missing field, identical answers.
        InvalidTypeError: an item of another kind.
    """
    items = getattr(records, "records", records)
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise InvalidTypeError(f"records must be a list of records, got {type(items).__name__}")
    out = [_record(item, i) for i, item in enumerate(items)]
    if not out:
        raise InvalidArgumentError("no records given; pass at least one")
    return out


def parse_prompt_type(prompt_type: str | Iterable[str]) -> frozenset[str]:
    """``"prefilled+instruction"`` or ``("prefilled", "instruction")`` -> parts.

    Raises:
        InvalidArgumentError: an empty type or an unknown part.
    """
    parts = prompt_type.split("+") if isinstance(prompt_type, str) else list(prompt_type)
    out = frozenset(p.strip() for p in parts if p.strip())
    unknown = out - set(PROMPT_PARTS)
    if not out or unknown:
        raise InvalidArgumentError(
            f"unknown prompt type {prompt_type!r}; use a '+'-joined non-empty subset of "
            f"{PROMPT_PARTS}, e.g. one of {PROMPT_TYPES}"
        )
    return out


def _canonical(parts: frozenset[str]) -> str:
    return "+".join(p for p in PROMPT_PARTS if p in parts)


def matching_letter(index: int, seed: int = 0) -> str:
    """The letter under which record `index` shows its matching answer."""
    return LETTERS[(index + seed) % 2]


def _question_block(record: Record, matching_first: bool) -> str:
    a, b = (
        (record.matching, record.not_matching)
        if matching_first
        else (record.not_matching, record.matching)
    )
    return f"{record.question}\n\nChoices:\n(A) {a}\n(B) {b}"


def render_ab(
    record: Record,
    index: int,
    *,
    answer: str | None,
    instruction: str | None = None,
    shots: Sequence[tuple[Record, int, bool]] = (),
    model: Model | None = None,
    seed: int = 0,
) -> str:
    """One A/B prompt (see the module docs).

    Args:
        record: the record to ask.
        index: its index, which decides the letter of its matching answer.
        answer: ``"matching"``, ``"not_matching"`` (prefill that answer's letter) or None
            (end at ``Answer: (``).
        instruction: text put before everything (a system turn in chat form).
        shots: examples ``(record, index, answer_matching)`` shown answered before it.
        model: render with this model's chat template (None: plain text).
        seed: shifts the letter assignment.

    Returns:
        The prompt text.
    """
    letter = matching_letter(index, seed)
    matching_first = letter == "A"
    body = _question_block(record, matching_first)
    tail = "("
    if answer is not None:
        if answer == "matching":
            tail += letter
        elif answer == "not_matching":
            tail += LETTERS[1 - LETTERS.index(letter)]
        else:
            raise InvalidArgumentError("answer must be 'matching', 'not_matching' or None")
    if model is None:
        parts = []
        if instruction:
            parts.append(instruction)
        for rec, j, shot_matching in shots:
            shot_letter = matching_letter(j, seed)
            if not shot_matching:
                shot_letter = LETTERS[1 - LETTERS.index(shot_letter)]
            parts.append(
                f"{_question_block(rec, matching_letter(j, seed) == 'A')}\n\nAnswer: ({shot_letter})"
            )
        parts.append(f"{body}\n\nAnswer: {tail}")
        return "\n\n".join(parts)
    messages: list[dict[str, str]] = []
    if instruction:
        messages.append({"role": "system", "content": instruction})
    for rec, j, shot_matching in shots:
        shot_letter = matching_letter(j, seed)
        if not shot_matching:
            shot_letter = LETTERS[1 - LETTERS.index(shot_letter)]
        messages.append(
            {"role": "user", "content": _question_block(rec, matching_letter(j, seed) == "A")}
        )
        messages.append({"role": "assistant", "content": f"({shot_letter})"})
    messages.append({"role": "user", "content": body})
    return model.chat_prompt(messages, add_generation_prompt=True) + tail


@dataclass(frozen=True)
class ContrastPair:
    """A positive text (shows the behaviour) and its negative counterpart."""

    positive: str
    negative: str


def _check_position(position: Any) -> str | int:
    if isinstance(position, str):
        if position not in ("last", "mean", "mean_skip_first"):
            raise InvalidArgumentError(
                f"unknown read position {position!r}; expected 'last', 'mean', "
                f"'mean_skip_first' or a token index"
            )
        return position
    if isinstance(position, bool) or not isinstance(position, numbers.Integral):
        raise InvalidTypeError(
            f"position must be 'last', 'mean', 'mean_skip_first' or an int, got {position!r}"
        )
    return int(position)


class ContrastPairs(Sequence[ContrastPair]):
    """Paired positive / negative texts and where to read their activations.

    Args:
        pairs: ``(positive, negative)`` tuples or `ContrastPair` objects.
        position: read position: ``"last"`` token, ``"mean"`` over tokens,
            ``"mean_skip_first"`` (mean without the first token, the attention sink), or a
            token index (negative from the end).
        name: a label used in reports and vector metadata.
        records: the A/B records the pairs were rendered from, if any.
        prompt_type: their prompt type, if any.

    Raises:
        InvalidArgumentError: no pairs, an empty text, a pair whose two sides are equal.
        InvalidTypeError: a pair that is not two strings.
    """

    __slots__ = ("_pairs", "name", "position", "prompt_type", "records")

    def __init__(
        self,
        pairs: Iterable[tuple[str, str] | ContrastPair],
        *,
        position: str | int = "last",
        name: str | None = None,
        records: Sequence[Record] | None = None,
        prompt_type: str | None = None,
    ) -> None:
        if isinstance(pairs, str | bytes | Mapping) or not isinstance(pairs, Iterable):
            raise InvalidTypeError(f"pairs must be a list of pairs, got {type(pairs).__name__}")
        out: list[ContrastPair] = []
        for i, p in enumerate(pairs):
            if isinstance(p, ContrastPair):
                pos, neg = p.positive, p.negative
            elif isinstance(p, tuple | list) and len(p) == 2:
                pos, neg = p
            else:
                raise InvalidTypeError(
                    f"pair {i} must be a (positive, negative) tuple of str, got {p!r:.80}"
                )
            if not isinstance(pos, str) or not isinstance(neg, str):
                raise InvalidTypeError(f"pair {i} must hold two str")
            if not pos or not neg:
                raise InvalidArgumentError(f"pair {i} has an empty text")
            if pos == neg:
                raise InvalidArgumentError(
                    f"pair {i} has the same text on both sides; a contrast pair needs a difference"
                )
            out.append(ContrastPair(pos, neg))
        if not out:
            raise InvalidArgumentError(
                "no contrast pairs given; pass at least one (positive, negative) pair"
            )
        self._pairs = tuple(out)
        self.position = _check_position(position)
        self.name = name
        self.records = tuple(records) if records is not None else None
        self.prompt_type = prompt_type

    # -- constructors -----------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        pairs: Iterable[tuple[str, str]],
        *,
        position: str | int = "last",
        name: str | None = None,
    ) -> ContrastPairs:
        """Pairs of finished texts (e.g. a joyful and a gloomy version of a sentence)."""
        return cls(pairs, position=position, name=name)

    @classmethod
    def from_completions(
        cls,
        items: Iterable[tuple[str, str, str]],
        *,
        position: str | int = "last",
        name: str | None = None,
        model: Model | None = None,
    ) -> ContrastPairs:
        """``(prompt, positive completion, negative completion)`` triples.

        Args:
            items: the triples; texts are ``prompt + completion``.
            position: read position (default the last token of the completion).
            name: label for reports.
            model: wrap the prompt in this model's chat template as a user turn and the
                completion as the start of the assistant's turn.
        """
        pairs = []
        for i, item in enumerate(items):
            if not (isinstance(item, tuple | list) and len(item) == 3):
                raise InvalidTypeError(f"item {i} must be (prompt, positive, negative)")
            prompt, pos, neg = item
            if not all(isinstance(t, str) for t in item):
                raise InvalidTypeError(f"item {i} must hold three str")
            if model is not None:
                prompt = model.chat_prompt([{"role": "user", "content": prompt}])
            pairs.append((prompt + pos, prompt + neg))
        return cls(pairs, position=position, name=name)

    @classmethod
    def from_records(
        cls,
        records: Any,
        *,
        prompt_type: str | Iterable[str] = "prefilled",
        instruction_matching: str | None = None,
        instruction_not_matching: str | None = None,
        n_shots: int = 5,
        shot_pool: Any = None,
        model: Model | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> ContrastPairs:
        """A/B records rendered in one of the seven prompt types.

        Args:
            records: a `steerlab.datasets.Behaviour` or a list of records.
            prompt_type: ``"prefilled"``, ``"instruction"``, ``"few_shot"`` or a
                ``+``-joined combination (see `PROMPT_TYPES`).
            instruction_matching / instruction_not_matching: the instructions for
                prompt types with ``instruction`` (taken from a `Behaviour` when omitted).
            n_shots: examples per prompt for prompt types with ``few_shot``.
            shot_pool: records to draw the examples from (default: the other records;
                a record is never its own example).
            model: render with this model's chat template (None: plain text).
            seed: letter assignment and example choice.
            name: label (default the behaviour's name and the prompt type).

        Raises:
            InvalidArgumentError: an unknown prompt type, missing instructions, fewer
                records than shots need, or a bad record.
        """
        recs = as_records(records)
        parts = parse_prompt_type(prompt_type)
        if "instruction" in parts:
            instruction_matching = instruction_matching or getattr(
                records, "instruction_matching", None
            )
            instruction_not_matching = instruction_not_matching or getattr(
                records, "instruction_not_matching", None
            )
            if not instruction_matching or not instruction_not_matching:
                raise InvalidArgumentError(
                    "prompt types with 'instruction' need instruction_matching and "
                    "instruction_not_matching (or a Behaviour that carries them)"
                )
        pool = as_records(shot_pool) if shot_pool is not None else recs
        if "few_shot" in parts:
            if isinstance(n_shots, bool) or not isinstance(n_shots, int) or n_shots < 1:
                raise InvalidArgumentError(f"n_shots must be an int >= 1, got {n_shots!r}")
            if len(pool) < n_shots + 1:
                raise InvalidArgumentError(
                    f"few-shot prompts need at least {n_shots + 1} records to draw "
                    f"{n_shots} examples from, got {len(pool)}"
                )
        rng = np.random.default_rng(seed)
        pairs = []
        for i, rec in enumerate(recs):
            shots_pos: list[tuple[Record, int, bool]] = []
            shots_neg: list[tuple[Record, int, bool]] = []
            if "few_shot" in parts:
                candidates = [j for j in range(len(pool)) if pool[j] != rec]
                chosen = rng.choice(len(candidates), size=n_shots, replace=False)
                for c in chosen:
                    j = candidates[int(c)]
                    shots_pos.append((pool[j], j, True))
                    shots_neg.append((pool[j], j, False))
            prefilled = "prefilled" in parts
            common = {"model": model, "seed": seed}
            pos = render_ab(
                rec,
                i,
                answer="matching" if prefilled else None,
                instruction=instruction_matching if "instruction" in parts else None,
                shots=shots_pos,
                **common,  # type: ignore[arg-type]
            )
            neg = render_ab(
                rec,
                i,
                answer="not_matching" if prefilled else None,
                instruction=instruction_not_matching if "instruction" in parts else None,
                shots=shots_neg,
                **common,  # type: ignore[arg-type]
            )
            pairs.append((pos, neg))
        canonical = _canonical(parts)
        label = name or "/".join(
            x for x in (getattr(records, "name", None), canonical) if isinstance(x, str)
        )
        return cls(pairs, position="last", name=label, records=recs, prompt_type=canonical)

    # -- sequence protocol -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pairs)

    @overload
    def __getitem__(self, index: int) -> ContrastPair: ...
    @overload
    def __getitem__(self, index: slice) -> ContrastPairs: ...
    def __getitem__(self, index: int | slice) -> ContrastPair | ContrastPairs:
        if isinstance(index, slice):
            return ContrastPairs(
                self._pairs[index],
                position=self.position,
                name=self.name,
                records=self.records[index] if self.records is not None else None,
                prompt_type=self.prompt_type,
            )
        return self._pairs[index]

    def __iter__(self) -> Iterator[ContrastPair]:
        return iter(self._pairs)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<ContrastPairs{label}: {len(self)} pairs, read at {self.position!r}>"

    @property
    def positives(self) -> list[str]:
        return [p.positive for p in self._pairs]

    @property
    def negatives(self) -> list[str]:
        return [p.negative for p in self._pairs]

    def dataset_hash(self) -> str:
        """SHA-256 (hex, first 16 chars) of the texts and the read position."""
        h = hashlib.sha256()
        h.update(json.dumps(self.position).encode())
        for p in self._pairs:
            for t in (p.positive, p.negative):
                h.update(len(t.encode()).to_bytes(8, "little"))
                h.update(t.encode())
        return h.hexdigest()[:16]

    def split(self, n_first: int | float, seed: int = 0) -> tuple[ContrastPairs, ContrastPairs]:
        """Shuffle (with `seed`) and split into two sets, e.g. train / test.

        Args:
            n_first: size of the first set, or its share when a float in (0, 1).
        """
        n = len(self)
        k = round(n_first * n) if isinstance(n_first, float) else int(n_first)
        if not 0 < k < n:
            raise InvalidArgumentError(
                f"cannot split {n} pairs into {k} and {n - k}; both parts need a pair"
            )
        order = np.random.default_rng(seed).permutation(n)
        return self._take(order[:k]), self._take(order[k:])

    def _take(self, idx: Iterable[int]) -> ContrastPairs:
        idx = [int(i) for i in idx]
        return ContrastPairs(
            [self._pairs[i] for i in idx],
            position=self.position,
            name=self.name,
            records=[self.records[i] for i in idx] if self.records is not None else None,
            prompt_type=self.prompt_type,
        )
