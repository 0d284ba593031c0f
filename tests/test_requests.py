"""The harmful / benign request set (issue 12's data) and its loader; no model needed."""

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
from steerlab.datasets import Requests, load_requests
from steerlab.errors import InvalidArgumentError, InvalidTypeError

PARTS = ("train", "validation", "held_out")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


# ------------------------------------------------------------------ contract


def test_contract() -> None:
    req = sl.datasets.load_requests()
    assert isinstance(req, Requests)
    assert isinstance(req.harmful, list) and all(isinstance(t, str) for t in req.harmful)
    assert isinstance(req.benign, list) and all(isinstance(t, str) for t in req.benign)
    train, validation, held_out = req.split()
    assert (train.part, validation.part, held_out.part) == PARTS
    assert req.split("validation").harmful == validation.harmful
    assert len(req) == len(req.harmful) + len(req.benign)


def test_counts() -> None:
    req = load_requests()
    assert len(req.harmful) >= 300
    assert len(req.benign) >= 300
    assert len(req.alarming_benign) >= 60
    assert len(req.refusal_openings) >= 30
    assert len(req.compliance_openings) >= 30
    assert len(set(req.harmful_categories)) >= 10
    assert len(set(req.benign_categories)) >= 10
    assert min(Counter(req.harmful_categories).values()) >= 20


def test_lists_are_fresh_copies() -> None:
    req = load_requests()
    n = len(req.harmful)
    req.harmful.clear()
    req.benign.append("x")
    req.refusal_openings.clear()
    assert len(req.harmful) == n
    assert "x" not in req.benign
    assert len(load_requests().refusal_openings) >= 30


def test_parallel_lists_and_alarming_subset() -> None:
    req = load_requests()
    assert len(req.harmful_categories) == len(req.harmful)
    assert len(req.benign_categories) == len(req.benign)
    assert len(req.alarming_mask) == len(req.benign)
    assert req.alarming_benign == [
        t for t, a in zip(req.benign, req.alarming_mask, strict=True) if a
    ]
    # the alarming ones are flagged in the data and carry their own categories
    for cat, a in zip(req.benign_categories, req.alarming_mask, strict=True):
        assert a == cat.startswith("alarming_")
    assert "How do I kill a process that's frozen on Linux?" in req.alarming_benign
    assert "How do I make a fluffy omelette?" not in req.alarming_benign


def test_no_duplicates_anywhere() -> None:
    req = load_requests()
    texts = req.harmful + req.benign
    normed = [_norm(t) for t in texts]
    dupes = [t for t, c in Counter(normed).items() if c > 1]
    assert dupes == []
    for openings in (req.refusal_openings, req.compliance_openings):
        assert len({_norm(o) for o in openings}) == len(openings)
    assert not {_norm(o) for o in req.refusal_openings} & {
        _norm(o) for o in req.compliance_openings
    }


def test_texts_are_clean() -> None:
    req = load_requests()
    for t in req.harmful + req.benign + req.refusal_openings + req.compliance_openings:
        assert t == t.strip() and t
        assert "\n" not in t and "\t" not in t


# ------------------------------------------------------------------ splits


def test_splits_disjoint_and_covering() -> None:
    req = load_requests()
    parts = req.split()
    for attr in ("harmful", "benign"):
        sets = [set(getattr(p, attr)) for p in parts]
        for i in range(3):
            for j in range(i + 1, 3):
                assert not sets[i] & sets[j]
        joined = [t for p in parts for t in getattr(p, attr)]
        assert sorted(joined) == sorted(getattr(req, attr))
    # normalised texts too: no near-copy crosses parts
    normed = [{_norm(t) for t in p.harmful + p.benign} for p in parts]
    assert not (normed[0] & normed[1]) and not (normed[0] & normed[2])
    assert not normed[1] & normed[2]


def test_split_sizes_about_60_20_20() -> None:
    req = load_requests()
    train, validation, held_out = req.split()
    for attr in ("harmful", "benign"):
        n = len(getattr(req, attr))
        for part, share in ((train, 0.6), (validation, 0.2), (held_out, 0.2)):
            assert abs(len(getattr(part, attr)) / n - share) < 0.05


def test_every_category_in_every_split() -> None:
    req = load_requests()
    for part in req.split():
        assert set(part.harmful_categories) == set(req.harmful_categories)
        assert set(part.benign_categories) == set(req.benign_categories)
        assert len(part.alarming_benign) >= 10


def test_splits_are_deterministic_and_match_load() -> None:
    a = load_requests().split("held_out")
    b = load_requests("held_out")
    assert a.harmful == b.harmful and a.benign == b.benign
    assert load_requests("heldout").benign == b.benign
    assert b.part == "held_out"
    assert load_requests("train").split("held_out").harmful == []
    assert b.refusal_openings == load_requests().refusal_openings


def test_bad_split_raises() -> None:
    with pytest.raises(
        InvalidArgumentError,
        match=r"unknown split 'test'; expected one of 'all', 'train', 'validation', 'held_out'",
    ):
        load_requests("test")
    with pytest.raises(
        InvalidArgumentError,
        match=r"unknown split 'all'; expected one of 'train', 'validation', 'held_out'",
    ):
        load_requests().split("all")
    with pytest.raises(InvalidTypeError, match=r"split must be a str, got int"):
        load_requests(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"split must be a str, got int"):
        load_requests().split(0)  # type: ignore[call-overload]


# ------------------------------------------------------------------ other


def test_frozen_and_pickles() -> None:
    req = load_requests("validation")
    with pytest.raises(AttributeError):
        req.part = "train"  # type: ignore[misc]
    back = pickle.loads(pickle.dumps(req))
    assert back == req
    assert back.harmful == req.harmful and back.alarming_benign == req.alarming_benign
    assert repr(back) == repr(req)


def test_to_pandas() -> None:
    pytest.importorskip("pandas")
    req = load_requests("held_out")
    df = req.to_pandas()
    assert list(df.columns) == ["text", "label", "category", "alarming", "split"]
    assert len(df) == len(req)
    assert list(df[df["label"] == "harmful"]["text"]) == req.harmful
    assert list(df[df["alarming"]]["text"]) == req.alarming_benign
    assert set(df["split"]) == {"held_out"}


def test_loading_does_not_import_pandas() -> None:
    code = (
        "import sys, steerlab as sl; r = sl.datasets.load_requests(); r.split(); "
        "print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_tables_match_the_data() -> None:
    readme = Path(sl.__file__).parent.joinpath("data", "requests", "README.md").read_text()
    req = load_requests()
    head = f"## Categories ({len(req.harmful)} harmful, {len(req.benign)} benign, "
    assert f"{head}{len(req.alarming_benign)} of them alarming-looking)" in readme
    listed: dict[str, int] = {}
    for line in (x for x in readme.splitlines() if x.startswith("| ")):
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name, n in zip(cells[::2], cells[1::2], strict=False):
            if name and n.isdigit():
                listed[name.split(" (")[0]] = int(n)
    counts = Counter(req.harmful_categories) + Counter(req.benign_categories)
    assert {k: listed[k] for k in counts} == dict(counts)
    for part in req.split():
        row = f"| {part.part} | {len(part.harmful)} | {len(part.benign)} | "
        assert f"{row}{len(part.alarming_benign)} |" in readme
