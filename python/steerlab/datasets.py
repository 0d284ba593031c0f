"""Datasets shipped with steerlab, all written for the package.

- Behaviours (`load_behaviour`): A/B multiple-choice records for contrastive steering
  (Braun et al. 2025). Each record is a question with the answer that shows the
  behaviour (``matching``) and one that does not (``not_matching``); answers carry no
  ``(A)``/``(B)`` labels, `steerlab.ContrastPairs.from_records` assigns and balances the
  letters. Each behaviour also carries a system-style instruction asking for the
  behaviour and one asking for its opposite, for the prompt types with an instruction.
  Shipped: ``corrigibility``, ``formality``, ``optimism``, ``refusal``, ``sycophancy``.
- `background_corpus`: neutral everyday sentences, the general corpus that
  mean-centring (Jorgensen et al. 2023) subtracts.
- `sentiment_pairs`: ``(positive, negative)`` sentence pairs that differ in sentiment.
- Topic and genre sets (`load_topic`): texts on one topic or in one genre, with the
  keywords that `topic_score` looks for in steered generations.
- `open_prompts`: neutral open-ended beginnings for free generation.
- Style sets (`load_style`): user requests, each with a target completion written in a
  style and a neutral completion with the same content, split into train and held-out
  parts; the data for `steerlab.SteeringVector.optimize`. Shipped: ``pirate``.
- Answer-choice tasks (`load_task`): prompts with a target answer and a foil answer
  (country-capital conflicts and their reverse, indirect-object identification), split
  into train and held-out parts with disjoint entities, in a fixed token layout or in
  varied lengths; the data for activation scaling (Stoehr et al. 2024). See `Task`.
- Requests (`load_requests`): harmful and benign user requests (the benign ones include
  requests that only look alarming, "kill a process"), split into train, validation and
  held-out parts, with refusal and compliance openings; the data for the steering
  controller (Hegazy et al. 2025) and the refusal judge. See `Requests`.
- Steering prompts (`load_steering_prompts`): plain-language steering instructions
  ("Mention the ocean.", "Talk like a pirate.") in five categories, each with keywords
  that `keyword_hits` counts, split by concept into held-in and held-out parts, and
  neutral base prompts split into train, validation and held-out parts; the data for
  HyperSteer (Sun et al. 2025). See `SteeringPrompts`.

Files are parsed once and cached; functions that return lists return a fresh list on
every call, so callers may change them freely.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from steerlab._args import jsonl_records
from steerlab._requests import Requests, load_requests
from steerlab._steering_prompts import SteeringPrompts, keyword_hits, load_steering_prompts
from steerlab._tasks import Task, TaskRecord, load_task, task_names
from steerlab.errors import InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "ABRecord",
    "Behaviour",
    "Requests",
    "SteeringPrompts",
    "StyleSet",
    "Task",
    "TaskRecord",
    "TopicSet",
    "background_corpus",
    "behaviour_names",
    "keyword_hits",
    "load_behaviour",
    "load_requests",
    "load_steering_prompts",
    "load_style",
    "load_task",
    "load_topic",
    "open_prompts",
    "sentiment_pairs",
    "style_names",
    "task_names",
    "topic_names",
    "topic_score",
]

#: The values a topic set's ``kind`` may take.
TOPIC_KINDS = ("topic", "genre")

#: The splits `load_style` accepts.
STYLE_SPLITS = ("train", "heldout", "all")


@dataclass(frozen=True)
class ABRecord:
    """One A/B multiple-choice record.

    Attributes:
        question: the question put to the assistant.
        matching: the answer that shows the behaviour.
        not_matching: the answer that does not.
    """

    question: str
    matching: str
    not_matching: str


@dataclass(frozen=True)
class Behaviour:
    """A behaviour dataset: A/B records plus instructions for and against the behaviour.

    Attributes:
        name: the dataset's name, e.g. ``"sycophancy"``.
        description: one sentence saying what the matching behaviour is.
        instruction_matching: a system-style instruction asking for the behaviour.
        instruction_not_matching: the opposite instruction.
        records: the A/B records.
    """

    name: str
    description: str
    instruction_matching: str
    instruction_not_matching: str
    records: tuple[ABRecord, ...]

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class TopicSet:
    """Texts on one topic (or in one genre) and the keywords that identify it.

    Attributes:
        name: the set's name, e.g. ``"ocean"``.
        kind: ``"topic"`` (what a text is about) or ``"genre"`` (how it is written).
        keywords: words or phrases whose presence marks a text as on-topic.
        texts: example texts on the topic.
    """

    name: str
    kind: str
    keywords: tuple[str, ...]
    texts: tuple[str, ...]


# ------------------------------------------------------------------ file access


def _data() -> Traversable:
    return resources.files("steerlab") / "data"


def _read_text(relative: str, what: str) -> str:
    path = _data().joinpath(*relative.split("/"))
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidArgumentError(
            f"the {what} file steerlab/data/{relative} is missing from the installed "
            f"package; reinstall steerlab"
        ) from None


def _json_names(folder: str) -> tuple[str, ...]:
    root = _data() / folder
    if not root.is_dir():
        return ()
    return tuple(
        sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json"))
    )


def _check_name(name: Any, available: tuple[str, ...], what: str) -> str:
    if not isinstance(name, str):
        raise InvalidTypeError(f"{what} name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in available:
        raise InvalidArgumentError(
            f"unknown {what} {name!r}; available: {', '.join(available) or '(none)'}"
        )
    return key


def _text_field(obj: Any, key: str, where: str) -> str:
    if not isinstance(obj, dict) or key not in obj:
        raise InvalidArgumentError(f"{where}: missing the key {key!r}")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _text_list(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    if key not in obj:
        raise InvalidArgumentError(f"{where}: missing the key {key!r}")
    values = obj[key]
    if not isinstance(values, list) or not values:
        raise InvalidArgumentError(f"{where}: {key!r} must be a non-empty list of strings")
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgumentError(
                f"{where}: {key}[{i}] must be a non-empty string, got {value!r}"
            )
        out.append(value.strip())
    return tuple(out)


def _load_json(relative: str, what: str) -> dict[str, Any]:
    where = relative
    try:
        obj = json.loads(_read_text(relative, what))
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"{where}: expected a JSON object at the top level")
    return obj


def _lines(relative: str, what: str) -> tuple[str, ...]:
    """Non-empty, non-comment lines of a text file, stripped."""
    out = []
    for line in _read_text(relative, what).splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(text)
    return tuple(out)


# ------------------------------------------------------------------ behaviours


def behaviour_names() -> list[str]:
    """Names of the shipped behaviour datasets, sorted.

    Returns:
        e.g. ``["corrigibility", "formality", "optimism", "refusal", "sycophancy"]``.
    """
    return list(_json_names("behaviours"))


@cache
def _behaviour(name: str) -> Behaviour:
    where = f"behaviours/{name}.json"
    obj = _load_json(where, "behaviour")
    fields = {
        key: _text_field(obj, key, where)
        for key in ("name", "description", "instruction_matching", "instruction_not_matching")
    }
    if fields["instruction_matching"] == fields["instruction_not_matching"]:
        raise InvalidArgumentError(f"{where}: the two instructions are the same text")
    raw = obj.get("records")
    if not isinstance(raw, list) or not raw:
        raise InvalidArgumentError(f"{where}: 'records' must be a non-empty list")
    records = []
    for i, item in enumerate(raw):
        at = f"{where}, record {i}"
        if not isinstance(item, dict):
            raise InvalidArgumentError(f"{at}: expected an object, got {type(item).__name__}")
        rec = ABRecord(
            question=_text_field(item, "question", at),
            matching=_text_field(item, "matching", at),
            not_matching=_text_field(item, "not_matching", at),
        )
        if rec.matching == rec.not_matching:
            raise InvalidArgumentError(f"{at}: 'matching' and 'not_matching' are the same text")
        records.append(rec)
    return Behaviour(records=tuple(records), **fields)


def load_behaviour(name: str) -> Behaviour:
    """Load a shipped behaviour dataset.

    Args:
        name: one of `behaviour_names` (case-insensitive; ``-`` and ``_`` are the same).

    Returns:
        The `Behaviour`, with its records in file order.

    Raises:
        InvalidArgumentError: an unknown name, or a malformed data file.
        InvalidTypeError: a name that is not a str.
    """
    return _behaviour(_check_name(name, _json_names("behaviours"), "behaviour"))


# ------------------------------------------------------------------ corpora


@cache
def _background() -> tuple[str, ...]:
    return _lines("background.txt", "background corpus")


def background_corpus() -> list[str]:
    """The background corpus: neutral everyday sentences, one per line of
    ``steerlab/data/background.txt`` (blank lines and ``#`` comments skipped).

    Returns:
        A fresh list of sentences, in file order.

    Raises:
        InvalidArgumentError: the file is missing or has no sentences.
    """
    out = _background()
    if not out:
        raise InvalidArgumentError("background.txt holds no sentences")
    return list(out)


@cache
def _sentiment() -> tuple[tuple[str, str], ...]:
    out = []
    text = _read_text("sentiment_pairs.jsonl", "sentiment pairs")
    for where, obj in jsonl_records(text, "sentiment_pairs.jsonl"):
        pos = _text_field(obj, "positive", where)
        neg = _text_field(obj, "negative", where)
        if pos == neg:
            raise InvalidArgumentError(f"{where}: 'positive' and 'negative' are the same text")
        out.append((pos, neg))
    if not out:
        raise InvalidArgumentError("sentiment_pairs.jsonl holds no pairs")
    return tuple(out)


def sentiment_pairs() -> list[tuple[str, str]]:
    """Sentence pairs that differ in sentiment, from ``steerlab/data/sentiment_pairs.jsonl``.

    Returns:
        A fresh list of ``(positive, negative)`` tuples, in file order.

    Raises:
        InvalidArgumentError: the file is missing or malformed.
    """
    return list(_sentiment())


@cache
def _prompts() -> tuple[str, ...]:
    return _lines("open_prompts.txt", "open prompts")


def open_prompts() -> list[str]:
    """Neutral open-ended prompt beginnings, one per line of ``steerlab/data/open_prompts.txt``
    (blank lines and ``#`` comments skipped).

    Returns:
        A fresh list of prompts, in file order.

    Raises:
        InvalidArgumentError: the file is missing or has no prompts.
    """
    out = _prompts()
    if not out:
        raise InvalidArgumentError("open_prompts.txt holds no prompts")
    return list(out)


# ------------------------------------------------------------------ topics


def topic_names() -> list[str]:
    """Names of the shipped topic and genre sets, sorted.

    Returns:
        e.g. ``["cooking", "fairy_tale", "legal", "ocean", "space", "sports"]``.
    """
    return list(_json_names("topics"))


@cache
def _topic(name: str) -> TopicSet:
    where = f"topics/{name}.json"
    obj = _load_json(where, "topic")
    kind = _text_field(obj, "kind", where)
    if kind not in TOPIC_KINDS:
        raise InvalidArgumentError(f"{where}: 'kind' must be one of {TOPIC_KINDS}, got {kind!r}")
    return TopicSet(
        name=_text_field(obj, "name", where),
        kind=kind,
        keywords=_text_list(obj, "keywords", where),
        texts=_text_list(obj, "texts", where),
    )


def load_topic(name: str) -> TopicSet:
    """Load a shipped topic or genre set.

    Args:
        name: one of `topic_names` (case-insensitive; ``-`` and ``_`` are the same).

    Returns:
        The `TopicSet`.

    Raises:
        InvalidArgumentError: an unknown name, or a malformed data file.
        InvalidTypeError: a name that is not a str.
    """
    return _topic(_check_name(name, _json_names("topics"), "topic"))


@lru_cache(maxsize=256)
def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = []
    for kw in sorted(set(keywords), key=len, reverse=True):
        words = kw.split()
        if words:
            alternatives.append(r"\s+".join(re.escape(w) for w in words))
    if not alternatives:
        raise InvalidArgumentError("a topic needs at least one non-empty keyword")
    # (?<!\w) / (?!\w) rather than \b, so keywords that start or end with punctuation
    # still need a word boundary on the outside.
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def topic_score(text: str, topic: TopicSet | str) -> bool:
    """Whether `text` mentions any of a topic's keywords.

    Matching is case-insensitive and on whole words: ``"sea"`` matches ``"the Sea."``
    but not ``"season"``; a multiword keyword matches across any whitespace.

    Args:
        text: the text to check, e.g. a steered continuation.
        topic: a `TopicSet` or the name of a shipped one.

    Returns:
        True when at least one keyword occurs in the text.

    Raises:
        InvalidArgumentError: an unknown topic name, or a topic without keywords.
        InvalidTypeError: a text that is not a str, or a topic of another type.
    """
    if not isinstance(text, str):
        raise InvalidTypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(topic, str):
        topic = load_topic(topic)
    elif not isinstance(topic, TopicSet):
        raise InvalidTypeError(
            f"topic must be a TopicSet or a topic name, got {type(topic).__name__}"
        )
    return _keyword_pattern(tuple(topic.keywords)).search(text) is not None


# ------------------------------------------------------------------ styles


@dataclass(frozen=True)
class StyleSet:
    """Prompts with a completion in a style and a neutral completion of the same content.

    ``prompts[i]``, ``completions[i]`` and ``negatives[i]`` belong together; the prompts
    are plain user requests (format them with `steerlab.Model.chat_prompt` for a chat
    model).

    Attributes:
        name: the set's name, e.g. ``"pirate"``.
        description: one sentence saying what the style is.
        split: ``"train"``, ``"heldout"`` or ``"all"``.
        prompts: the user requests.
        completions: one answer in the style per prompt.
        negatives: one neutral answer (same content, no style) per prompt.
    """

    name: str
    description: str
    split: str
    prompts: tuple[str, ...]
    completions: tuple[str, ...]
    negatives: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)


def style_names() -> list[str]:
    """Names of the shipped style sets, sorted.

    Returns:
        e.g. ``["pirate"]``.
    """
    return list(_json_names("styles"))


@cache
def _style(name: str) -> tuple[str, str, tuple[tuple[str, str, str], ...]]:
    where = f"styles/{name}.json"
    obj = _load_json(where, "style")
    title = _text_field(obj, "name", where)
    description = _text_field(obj, "description", where)
    raw = obj.get("items")
    if not isinstance(raw, list) or not raw:
        raise InvalidArgumentError(f"{where}: 'items' must be a non-empty list")
    items = []
    for i, item in enumerate(raw):
        at = f"{where}, item {i}"
        prompt = _text_field(item, "prompt", at)
        completion = _text_field(item, "completion", at)
        negative = _text_field(item, "negative", at)
        if completion == negative:
            raise InvalidArgumentError(f"{at}: 'completion' and 'negative' are the same text")
        items.append((prompt, completion, negative))
    return title, description, tuple(items)


def load_style(name: str, split: str = "all") -> StyleSet:
    """Load a shipped style set, or one of its two fixed splits.

    Shipped: ``pirate``, 48 short user requests on everyday topics (cooking, science,
    travel, health, language...), each with an answer in pirate speech ("Arr, ...
    matey!") and a neutral answer with the same content; written for steerlab (same
    license as the package). The split is fixed: every fourth item (indices 3, 7, 11, ...)
    is held out, so ``"train"`` has 36 items and ``"heldout"`` 12.

    Args:
        name: one of `style_names` (case-insensitive; ``-`` and ``_`` are the same).
        split: ``"train"`` (3 of every 4 items), ``"heldout"`` (the 4th of every 4) or
            ``"all"``.

    Returns:
        The `StyleSet`, items in file order.

    Raises:
        InvalidArgumentError: an unknown name or split, or a malformed data file.
        InvalidTypeError: a name or split that is not a str.
    """
    key = _check_name(name, _json_names("styles"), "style")
    if not isinstance(split, str):
        raise InvalidTypeError(f"split must be a str, got {type(split).__name__}")
    if split not in STYLE_SPLITS:
        raise InvalidArgumentError(f"unknown split {split!r}; expected one of {STYLE_SPLITS}")
    title, description, items = _style(key)
    if split == "train":
        items = tuple(t for i, t in enumerate(items) if i % 4 != 3)
    elif split == "heldout":
        items = tuple(t for i, t in enumerate(items) if i % 4 == 3)
    return StyleSet(
        name=title,
        description=description,
        split=split,
        prompts=tuple(t[0] for t in items),
        completions=tuple(t[1] for t in items),
        negatives=tuple(t[2] for t in items),
    )
