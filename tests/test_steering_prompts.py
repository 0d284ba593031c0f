"""The HyperSteer steering instructions and base prompts (issue 13's data), their loader
and the keyword check; no model needed."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl
from steerlab.datasets import SteeringPrompts, keyword_hits, load_steering_prompts
from steerlab.errors import InvalidArgumentError, InvalidTypeError

CATEGORIES = ("topic", "tone", "format", "style", "persona")
BASE_PARTS = ("train", "validation", "held_out")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold().rstrip(".!")


# ------------------------------------------------------------------ contract


def test_contract() -> None:
    data = sl.datasets.load_steering_prompts()
    assert isinstance(data, SteeringPrompts)
    assert isinstance(data.instructions, list)
    assert all(isinstance(t, str) for t in data.instructions)
    assert isinstance(data.keywords, list) and len(data.keywords) == len(data.instructions)
    assert all(isinstance(k, list) and all(isinstance(w, str) for w in k) for k in data.keywords)
    assert isinstance(data.base_prompts, list)
    assert all(isinstance(t, str) for t in data.base_prompts)
    part = data.split(instructions="held_in", base_prompts="train")
    assert (part.instruction_part, part.base_prompt_part) == ("held_in", "train")
    assert (data.instruction_part, data.base_prompt_part) == ("all", "all")
    assert len(data) == len(data.instructions)
    assert "Mention the ocean." in data.instructions
    assert "Talk like a pirate." in data.instructions
    assert sl.datasets.keyword_hits is keyword_hits


def test_counts() -> None:
    data = load_steering_prompts()
    assert len(data.instructions) >= 320
    assert len(data.base_prompts) >= 220
    counts = Counter(data.categories)
    assert set(counts) == set(CATEGORIES)
    assert counts["topic"] >= 120
    assert min(counts.values()) >= 40
    # several phrasings per concept
    per_concept = Counter(data.concepts)
    assert len(per_concept) >= 150
    assert min(per_concept.values()) >= 2


def test_parallel_lists_are_fresh_copies() -> None:
    data = load_steering_prompts()
    n = len(data.instructions)
    for name in (
        "instructions",
        "keywords",
        "keywords_reliable",
        "concepts",
        "categories",
        "instruction_splits",
    ):
        assert len(getattr(data, name)) == n, name
    assert len(data.base_prompt_splits) == len(data.base_prompts)
    data.instructions.clear()
    data.base_prompts.append("x")
    data.keywords[0].append("zzz")
    assert len(data.instructions) == n
    assert "x" not in data.base_prompts
    assert "zzz" not in data.keywords[0]


def test_no_duplicates_and_clean_texts() -> None:
    data = load_steering_prompts()
    for texts in (data.instructions, data.base_prompts):
        dupes = [t for t, c in Counter(_norm(t) for t in texts).items() if c > 1]
        assert dupes == []
        for t in texts:
            assert t == t.strip() and t and "\n" not in t and "\t" not in t
            assert t[0].isupper() and t[-1] in ".?", t
    assert not {_norm(t) for t in data.instructions} & {_norm(t) for t in data.base_prompts}


def test_keywords_are_well_formed() -> None:
    data = load_steering_prompts()
    for ins, kws, reliable, cat in zip(
        data.instructions, data.keywords, data.keywords_reliable, data.categories, strict=True
    ):
        assert 1 <= len(kws) <= 12, ins
        assert len(set(kws)) == len(kws), ins
        for kw in kws:
            assert kw == kw.lower() == kw.strip() and kw.rstrip("*"), (ins, kw)
            assert " " not in kw, (ins, kw)
        if cat != "format" and reliable:
            assert len(kws) >= 5, ins
    # a concept has one keyword list and one category, whatever the phrasing
    by_concept: dict[str, tuple[tuple[str, ...], str, bool]] = {}
    for c, kws, cat, rel in zip(
        data.concepts, data.keywords, data.categories, data.keywords_reliable, strict=True
    ):
        assert by_concept.setdefault(c, (tuple(kws), cat, rel)) == (tuple(kws), cat, rel), c
    assert 0 < Counter(data.keywords_reliable)[False] <= len(data.instructions) // 10
    assert data.keywords_for("Mention the ocean.")[:3] == ["ocean*", "sea", "seas"]


def test_keywords_fire_on_text_that_follows_the_instruction() -> None:
    data = load_steering_prompts()
    written = {
        "Mention the ocean.": "We walked down to the beach and watched the waves roll in.",
        "Talk like a pirate.": "Arr, matey, ye'll find the treasure if ye listen to yer captain!",
        "Use lots of cooking metaphors.": "Let the idea simmer, add a pinch of patience, then stir.",
        "Answer as a numbered list.": "1. Wake up early.\n2. Stretch.\n3. Eat breakfast.",
        "Answer in Shakespearean English.": "Prithee, good friend, thou hast asked well; 'tis so.",
        "Use text-message slang.": "omg idk tbh, brb lol",
        "Sound gloomy.": "Alas, the grey morning is bleak and I am weary.",
        "End every sentence with an exclamation mark.": "It is great! I love it!",
        "Answer like a TV news anchor.": "Breaking news tonight: sources say the story is developing.",
    }
    for ins, text in written.items():
        kws = data.keywords_for(ins)
        assert keyword_hits(text, kws) >= 1, ins
    neutral = "I usually get up, make the bed and check my messages before work."
    assert keyword_hits(neutral, data.keywords_for("Talk like a pirate.")) == 0
    assert keyword_hits(neutral, data.keywords_for("Mention the ocean.")) == 0


def test_base_prompts_avoid_the_topic_concepts() -> None:
    data = load_steering_prompts().one_per_concept()
    for c, kws, cat in zip(data.concepts, data.keywords, data.categories, strict=True):
        if cat == "topic":
            hits = [p for p in data.base_prompts if keyword_hits(p, kws)]
            assert len(hits) <= 4, (c, hits)


# ------------------------------------------------------------------ splits


def test_instruction_split_is_by_concept() -> None:
    data = load_steering_prompts()
    held_in = data.split(instructions="held_in")
    held_out = data.split(instructions="held_out")
    assert set(held_in.instruction_splits) == {"held_in"}
    assert set(held_out.instruction_splits) == {"held_out"}
    assert not set(held_in.concepts) & set(held_out.concepts)
    assert sorted(held_in.instructions + held_out.instructions) == sorted(data.instructions)
    # closely related concepts stay on one side
    for group in (("space", "the moon", "alien"), ("cooking", "tv chef"), ("calm", "zen monk")):
        sides = {
            s for c, s in zip(data.concepts, data.instruction_splits, strict=True) if c in group
        }
        assert len(sides) == 1, group


def test_every_category_in_both_instruction_splits_about_80_20() -> None:
    data = load_steering_prompts()
    total = Counter(data.categories)
    out = Counter(data.split("held_out").categories)
    assert set(out) == set(CATEGORIES)
    assert set(data.split("held_in").categories) == set(CATEGORIES)
    for cat in CATEGORIES:
        assert 0.15 <= out[cat] / total[cat] <= 0.25, cat
    assert 0.15 <= len(data.split("held_out")) / len(data) <= 0.25
    # at least two held-out concepts per category
    held = data.split("held_out")
    for cat in CATEGORIES:
        assert (
            len({c for c, k in zip(held.concepts, held.categories, strict=True) if k == cat}) >= 2
        )


def test_base_prompt_split_about_70_10_20() -> None:
    data = load_steering_prompts()
    parts = [data.split(base_prompts=p) for p in BASE_PARTS]
    n = len(data.base_prompts)
    for part, share in zip(parts, (0.7, 0.1, 0.2), strict=True):
        assert abs(len(part.base_prompts) / n - share) < 0.03
        assert set(part.base_prompt_splits) == {part.base_prompt_part}
        assert part.instructions == data.instructions
    sets = [set(p.base_prompts) for p in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sorted(t for p in parts for t in p.base_prompts) == sorted(data.base_prompts)


def test_splits_are_deterministic_and_compose() -> None:
    a = load_steering_prompts("held_out", "validation")
    b = load_steering_prompts().split(instructions="held_out").split(base_prompts="validation")
    assert a == b
    assert a.instructions == b.instructions and a.base_prompts == b.base_prompts
    assert load_steering_prompts("heldout", "heldout") == load_steering_prompts(
        "held_out", "held_out"
    )
    empty = load_steering_prompts("held_in").split("held_out")
    assert empty.instructions == [] and empty.instruction_part == "held_out"
    assert load_steering_prompts().split() == load_steering_prompts()
    assert repr(a) == (
        f"SteeringPrompts(instructions='held_out' ({len(a)}), "
        f"base_prompts='validation' ({len(a.base_prompts)}))"
    )
    # the split is fixed in the file: a few known rows
    data = load_steering_prompts()
    side = dict(zip(data.concepts, data.instruction_splits, strict=True))
    assert side["ocean"] == "held_in" and side["pirate"] == "held_in"
    assert side["volcanoes"] == "held_out" and side["vampire"] == "held_out"


def test_bad_split_names_raise() -> None:
    with pytest.raises(
        InvalidArgumentError,
        match=r"unknown instructions split 'test'; expected one of 'all', 'held_in', 'held_out'",
    ):
        load_steering_prompts("test")
    with pytest.raises(
        InvalidArgumentError,
        match=(
            r"unknown base_prompts split 'held_in'; "
            r"expected one of 'all', 'train', 'validation', 'held_out'"
        ),
    ):
        load_steering_prompts().split(base_prompts="held_in")
    with pytest.raises(
        InvalidArgumentError, match=r"unknown instructions split 'train'; expected one of"
    ):
        load_steering_prompts().split("train")
    with pytest.raises(InvalidTypeError, match=r"instructions split must be a str, got int"):
        load_steering_prompts(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"base_prompts split must be a str, got NoneType"):
        load_steering_prompts().split(base_prompts=None)  # type: ignore[arg-type]


# ------------------------------------------------------------------ pairs and sampling


def test_pairs_one_per_instruction_and_seeded() -> None:
    data = load_steering_prompts("held_in", "train")
    steer, base = data.pairs(seed=0)
    assert len(steer) == len(base) == len(data)
    assert sorted(steer) == sorted(data.instructions)
    assert set(base) <= set(data.base_prompts)
    assert data.pairs(seed=0) == (steer, base)
    assert data.pairs(seed=1) != (steer, base)
    assert steer != data.instructions  # shuffled


def test_pairs_n_deals_evenly() -> None:
    data = load_steering_prompts("held_in", "validation")
    n = 2 * len(data) + 5
    steer, base = data.pairs(n, seed=3)
    assert len(steer) == len(base) == n
    assert set(Counter(steer).values()) <= {2, 3}
    m = len(data.base_prompts)
    assert set(Counter(base).values()) <= {n // m, n // m + 1}
    assert data.pairs(7, seed=3) == data.pairs(7, seed=3)
    few = data.pairs(7, seed=3)
    assert len(set(few[0])) == 7


def test_pairs_errors() -> None:
    data = load_steering_prompts()
    with pytest.raises(InvalidArgumentError, match=r"n must be at least 1, got 0"):
        data.pairs(0)
    with pytest.raises(InvalidTypeError, match=r"n must be an int or None, got float"):
        data.pairs(2.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"n must be an int or None, got bool"):
        data.pairs(True)
    with pytest.raises(InvalidTypeError, match=r"seed must be an int, got str"):
        data.pairs(seed="0")  # type: ignore[arg-type]
    empty = data.split("held_in").split("held_out")
    with pytest.raises(
        InvalidArgumentError,
        match=r"pairs\(\) needs at least one instruction and one base prompt; .* has 0 "
        r"instructions and \d+ base prompts",
    ):
        empty.pairs()


def test_sample_and_one_per_concept() -> None:
    data = load_steering_prompts("held_out")
    s = data.sample(5, seed=2)
    assert len(s) == 5 and s == data.sample(5, seed=2)
    assert s.base_prompts == data.base_prompts
    order = [data.instructions.index(t) for t in s.instructions]
    assert order == sorted(order)
    assert data.sample(len(data)).instructions == data.instructions
    with pytest.raises(
        InvalidArgumentError, match=rf"n must be between 1 and {len(data)} .*, got {len(data) + 1}"
    ):
        data.sample(len(data) + 1)
    with pytest.raises(InvalidArgumentError, match=r"n must be between 1 and \d+ .*, got 0"):
        data.sample(0)
    with pytest.raises(InvalidTypeError, match=r"n must be an int, got float"):
        data.sample(1.5)  # type: ignore[arg-type]
    one = load_steering_prompts().one_per_concept()
    assert len(one) == len(set(one.concepts)) == len(set(load_steering_prompts().concepts))
    assert "Mention the ocean." in one.instructions
    assert "Bring up the sea somewhere in your answer." not in one.instructions


def test_keywords_for() -> None:
    data = load_steering_prompts()
    ocean = data.keywords_for("Mention the ocean.")
    assert data.keywords_for("  mention THE   ocean ") == ocean
    assert data.keywords_for("Mention the ocean!") == ocean
    ocean.append("zzz")
    assert "zzz" not in data.keywords_for("Mention the ocean.")
    with pytest.raises(
        InvalidArgumentError, match=r"unknown instruction 'Mention the sky': not one of the \d+"
    ):
        data.keywords_for("Mention the sky")
    with pytest.raises(InvalidArgumentError, match=r"unknown instruction 'Mention the ocean.'"):
        data.split("held_out").keywords_for("Mention the ocean.")
    with pytest.raises(InvalidTypeError, match=r"instruction must be a str, got int"):
        data.keywords_for(3)  # type: ignore[arg-type]


# ------------------------------------------------------------------ keyword_hits


def test_keyword_hits_whole_words_and_stems() -> None:
    kws = ["sea", "wave*", "coral"]
    assert keyword_hits("Waves broke on the beach by the Sea.", kws) == 2
    assert keyword_hits("This season I will search for seashells.", ["sea"]) == 0
    assert keyword_hits("seas", ["sea"]) == 0
    assert keyword_hits("Cooking, cooks and a cookbook.", ["cook*"]) == 1
    assert keyword_hits("Cooking, cooks and a cookbook.", ["cook*"], distinct=False) == 3
    assert keyword_hits("precooked", ["cook*"]) == 0
    assert keyword_hits("", kws) == 0
    assert keyword_hits("SEA sea Sea", ["sea"], distinct=False) == 3
    assert keyword_hits("sea sea sea", ["sea", "SEA"]) == 1  # duplicates count once
    assert keyword_hits("ice  cream", ["ice cream"]) == 1  # inner spaces: any whitespace


def test_keyword_hits_punctuation_edges() -> None:
    assert keyword_hits("1. Pack a bag\n2. Leave", ["1.", "2.", "3."]) == 2
    assert keyword_hits("It costs 21.5 dollars", ["1."]) == 0
    assert keyword_hits("Really?", ["?"]) == 1
    assert keyword_hits("a (quiet) aside", ["(", ")"]) == 2
    assert keyword_hits("so fun 🎉🎉", ["🎉", "🔥"], distinct=False) == 2
    assert keyword_hits("Q: why? A: because", ["q:", "a:"]) == 2
    assert keyword_hits("data: none", ["a:"]) == 0
    assert keyword_hits("I reckon y\u2019all ain\u2019t ready", ["y'all", "ain't"]) == 2
    assert keyword_hits("tl;dr: rest", ["tl;dr"]) == 1


def test_keyword_hits_errors() -> None:
    with pytest.raises(InvalidTypeError, match=r"text must be a str, got bytes"):
        keyword_hits(b"sea", ["sea"])  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"keywords must be a list of str, got str"):
        keyword_hits("sea", "sea")
    with pytest.raises(InvalidTypeError, match=r"keywords must be a list of str, got set"):
        keyword_hits("sea", {"sea"})  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"keywords\[1\] must be a str, got int"):
        keyword_hits("sea", ["sea", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match=r"keywords must hold at least one keyword"):
        keyword_hits("sea", [])
    with pytest.raises(
        InvalidArgumentError, match=r"keywords\[0\] must be a word or stem, got '\*'"
    ):
        keyword_hits("sea", ["*"])
    with pytest.raises(
        InvalidArgumentError, match=r"keywords\[1\] must be a word or stem, got ' '"
    ):
        keyword_hits("sea", ["sea", " "])


# ------------------------------------------------------------------ other


def test_frozen_and_pickles() -> None:
    data = load_steering_prompts("held_out", "train")
    with pytest.raises(AttributeError):
        data.instruction_part = "held_in"  # type: ignore[misc]
    back = pickle.loads(pickle.dumps(data))
    assert back == data and repr(back) == repr(data)
    assert back.keywords == data.keywords and back.pairs(seed=4) == data.pairs(seed=4)


def test_to_pandas() -> None:
    pytest.importorskip("pandas")
    data = load_steering_prompts("held_out", "validation")
    df = data.to_pandas()
    assert list(df.columns) == [
        "instruction",
        "category",
        "concept",
        "keywords",
        "keywords_reliable",
        "split",
    ]
    assert list(df["instruction"]) == data.instructions
    assert [list(k) for k in df["keywords"]] == data.keywords
    assert set(df["split"]) == {"held_out"}
    bp = data.to_pandas("base_prompts")
    assert list(bp.columns) == ["prompt", "split"]
    assert list(bp["prompt"]) == data.base_prompts
    with pytest.raises(InvalidArgumentError, match=r"unknown what 'prompts'; expected"):
        data.to_pandas("prompts")
    with pytest.raises(InvalidTypeError, match=r"what must be a str, got int"):
        data.to_pandas(1)  # type: ignore[arg-type]


def test_loading_does_not_import_pandas() -> None:
    code = (
        "import sys, steerlab as sl; d = sl.datasets.load_steering_prompts(); "
        "d.split('held_in', 'train').pairs(); print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_tables_match_the_data() -> None:
    readme = Path(sl.__file__).parent.joinpath("data", "steering_prompts", "README.md").read_text()
    data = load_steering_prompts()
    head = (
        f"## Categories ({len(data)} instructions, {len(set(data.concepts))} concepts; "
        f"{len(data.base_prompts)} base prompts)"
    )
    assert head in readme
    for cat in CATEGORIES:
        n = data.categories.count(cat)
        k = len({c for c, g in zip(data.concepts, data.categories, strict=True) if g == cat})
        assert re.search(rf"^\| {cat} \| [^|]+ \| {k} \| {n} \|$", readme, re.M), cat
        row = [cat]
        for part in ("held_in", "held_out"):
            p = data.split(part)
            idx = [i for i, g in enumerate(p.categories) if g == cat]
            row += [str(len({p.concepts[i] for i in idx})), str(len(idx))]
        assert "| " + " | ".join(row) + " |" in readme, cat
    for part in BASE_PARTS:
        assert f"| {part} | {len(data.split(base_prompts=part).base_prompts)} |" in readme
    held = data.split("held_out").one_per_concept()
    for c in held.concepts:
        assert c in readme
    unreliable = {c for c, r in zip(data.concepts, data.keywords_reliable, strict=True) if not r}
    n_unreliable = data.keywords_reliable.count(False)
    assert f"({len(unreliable)} concepts, {n_unreliable} instructions:" in readme
