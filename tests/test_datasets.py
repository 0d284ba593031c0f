"""The shipped datasets: behaviour A/B records, corpora, topic sets, and their loader."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

pytest.importorskip("steerlab._core")

from steerlab import datasets
from steerlab.contrast import as_records
from steerlab.errors import InvalidArgumentError, InvalidTypeError

BEHAVIOURS = ("corrigibility", "formality", "optimism", "refusal", "sycophancy")
DATA = resources.files("steerlab") / "data"


def _needs(name: str) -> pytest.MarkDecorator:
    """Skip while a data file that another part of the project writes is not there yet."""
    return pytest.mark.skipif(
        not (DATA / name).is_file() and not (DATA / name).is_dir(),
        reason=f"steerlab/data/{name} has not been written yet",
    )


@pytest.fixture
def fake_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the loader at an empty data folder, with its caches cleared around the test."""
    caches = [datasets._behaviour, datasets._topic, datasets._background, datasets._sentiment]
    for c in caches:
        c.cache_clear()
    monkeypatch.setattr(datasets, "_data", lambda: tmp_path)
    yield tmp_path
    for c in caches:
        c.cache_clear()


# ------------------------------------------------------------------ behaviours


def test_behaviour_names() -> None:
    assert set(BEHAVIOURS) <= set(datasets.behaviour_names())
    assert datasets.behaviour_names() == sorted(datasets.behaviour_names())


@pytest.mark.parametrize("name", BEHAVIOURS)
def test_behaviour_contents(name: str) -> None:
    b = datasets.load_behaviour(name)
    assert b.name == name
    assert len(b) == len(b.records) >= 100
    for text in (b.description, b.instruction_matching, b.instruction_not_matching):
        assert isinstance(text, str) and len(text.split()) >= 5
    assert b.instruction_matching != b.instruction_not_matching
    questions = [r.question for r in b.records]
    assert len(set(questions)) == len(questions), "duplicate questions"
    for r in b.records:
        assert r.question.strip() and r.matching.strip() and r.not_matching.strip()
        assert r.matching != r.not_matching
        for answer in (r.matching, r.not_matching):
            assert not answer.lstrip().startswith(("(A)", "(B)", "A)", "B)")), answer
            assert 3 <= len(answer.split()) <= 25, answer


@pytest.mark.parametrize("name", BEHAVIOURS)
def test_behaviour_answer_lengths_balanced(name: str) -> None:
    """Answer length must not give the behaviour away."""
    records = datasets.load_behaviour(name).records
    m = statistics.mean(len(r.matching) for r in records)
    n = statistics.mean(len(r.not_matching) for r in records)
    assert 1 / 1.5 <= m / n <= 1.5, (m, n)


@pytest.mark.parametrize("name", BEHAVIOURS)
def test_behaviour_questions_varied(name: str) -> None:
    """No template with swapped nouns: few questions share their first five words."""
    openings: dict[str, int] = {}
    for r in datasets.load_behaviour(name).records:
        key = " ".join(r.question.lower().split()[:5])
        openings[key] = openings.get(key, 0) + 1
    assert max(openings.values()) <= 5, max(openings.items(), key=lambda kv: kv[1])


@pytest.mark.parametrize("name", BEHAVIOURS)
def test_behaviour_feeds_contrast_pairs(name: str) -> None:
    b = datasets.load_behaviour(name)
    records = as_records(b)
    assert len(records) == len(b.records)
    assert records[0].matching == b.records[0].matching


def test_load_behaviour_is_lenient_about_case_and_dashes() -> None:
    assert datasets.load_behaviour(" Refusal ") is datasets.load_behaviour("refusal")


def test_unknown_behaviour_lists_names() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        datasets.load_behaviour("honesty")
    message = str(info.value)
    assert "honesty" in message
    for name in BEHAVIOURS:
        assert name in message


def test_behaviour_name_must_be_str() -> None:
    with pytest.raises(InvalidTypeError, match="str"):
        datasets.load_behaviour(3)  # type: ignore[arg-type]


def test_behaviour_file_validation(fake_data: Path) -> None:
    folder = fake_data / "behaviours"
    folder.mkdir()
    good = {
        "name": "toy",
        "description": "A toy behaviour.",
        "instruction_matching": "Do it.",
        "instruction_not_matching": "Do not do it.",
        "records": [{"question": "Q?", "matching": "yes", "not_matching": "no"}],
    }
    (folder / "toy.json").write_text(json.dumps(good))
    assert datasets.behaviour_names() == ["toy"]
    assert datasets.load_behaviour("toy").records[0] == datasets.ABRecord("Q?", "yes", "no")

    cases = [
        ({"records": [{"question": "Q?", "matching": "same", "not_matching": "same"}]}, "same"),
        ({"records": [{"question": "Q?", "matching": "yes"}]}, "not_matching"),
        ({"records": [{"question": " ", "matching": "a", "not_matching": "b"}]}, "question"),
        ({"records": []}, "records"),
        ({"description": ""}, "description"),
        ({"instruction_not_matching": "Do it."}, "instructions"),
    ]
    for change, fragment in cases:
        datasets._behaviour.cache_clear()
        (folder / "toy.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(InvalidArgumentError, match=fragment):
            datasets.load_behaviour("toy")
    datasets._behaviour.cache_clear()
    (folder / "toy.json").write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="JSON"):
        datasets.load_behaviour("toy")


def test_missing_file_is_reported(fake_data: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"background\.txt"):
        datasets.background_corpus()


# ------------------------------------------------------------------ corpora


@_needs("background.txt")
def test_background_corpus() -> None:
    corpus = datasets.background_corpus()
    assert len(set(corpus)) >= 300
    assert all(s.strip() == s and s and not s.startswith("#") for s in corpus)
    corpus.clear()  # callers get their own list
    assert datasets.background_corpus()


@_needs("sentiment_pairs.jsonl")
def test_sentiment_pairs() -> None:
    pairs = datasets.sentiment_pairs()
    assert len(pairs) >= 100
    for pos, neg in pairs:
        assert pos.strip() and neg.strip() and pos != neg
    assert len(set(pairs)) == len(pairs)
    pairs.pop()
    assert len(datasets.sentiment_pairs()) == len(pairs) + 1


@_needs("open_prompts.txt")
def test_open_prompts() -> None:
    prompts = datasets.open_prompts()
    assert len(prompts) >= 40
    assert all(p and not p.startswith("#") for p in prompts)
    assert len(set(prompts)) == len(prompts)


# ------------------------------------------------------------------ topics


@_needs("topics")
def test_topic_sets() -> None:
    names = datasets.topic_names()
    assert len(names) >= 5
    for name in names:
        topic = datasets.load_topic(name)
        assert topic.name == name
        assert topic.kind in ("topic", "genre")
        assert len(topic.keywords) >= 5
        assert len(topic.texts) >= 40
        assert len(set(topic.texts)) == len(topic.texts)
        hits = sum(datasets.topic_score(t, topic) for t in topic.texts)
        assert hits >= 0.7 * len(topic.texts), (name, hits, len(topic.texts))


@_needs("topics")
def test_topic_score_by_name_and_unknown_topic() -> None:
    name = datasets.topic_names()[0]
    topic = datasets.load_topic(name)
    assert datasets.topic_score(topic.texts[0], name) == datasets.topic_score(topic.texts[0], topic)
    with pytest.raises(InvalidArgumentError) as info:
        datasets.load_topic("no_such_topic")
    assert name in str(info.value)


def test_topic_score_matching_rules() -> None:
    topic = datasets.TopicSet("toy", "topic", ("sea", "coral reef", "C++"), ())
    assert datasets.topic_score("The SEA was calm.", topic)
    assert datasets.topic_score("a coral\n reef bleached", topic)
    assert datasets.topic_score("written in C++ today", topic)
    assert not datasets.topic_score("This season is long.", topic)
    assert not datasets.topic_score("overseas", topic)
    assert not datasets.topic_score("coral alone", topic)
    with pytest.raises(InvalidTypeError):
        datasets.topic_score(None, topic)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError):
        datasets.topic_score("sea", 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="keyword"):
        datasets.topic_score("sea", datasets.TopicSet("empty", "topic", (), ()))


def test_topic_file_validation(fake_data: Path) -> None:
    folder = fake_data / "topics"
    folder.mkdir()
    topic = {"name": "toy", "kind": "mood", "keywords": ["a"], "texts": ["a b"]}
    (folder / "toy.json").write_text(json.dumps(topic))
    with pytest.raises(InvalidArgumentError, match="kind"):
        datasets.load_topic("toy")
    datasets._topic.cache_clear()
    (folder / "toy.json").write_text(json.dumps({**topic, "kind": "topic", "keywords": []}))
    with pytest.raises(InvalidArgumentError, match="keywords"):
        datasets.load_topic("toy")
