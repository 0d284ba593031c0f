"""The answer-choice tasks (`steerlab.datasets.load_task`) and their data files."""

from __future__ import annotations

import copy
import json
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl
from steerlab import _tasks
from steerlab.datasets import Task, TaskRecord, load_task, task_names
from steerlab.errors import InvalidArgumentError, InvalidTypeError, OutOfRangeError

NAMES = ("country_capital", "country_capital_context", "ioi")
FIXED_TOKENS = {"country_capital": 21, "country_capital_context": 21, "ioi": 14}


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def _entities(task: Task, keys: tuple[str, ...]) -> set[str]:
    return {r.entities[k] for r in task for k in keys}


# ------------------------------------------------------------------ contract


def test_names_and_contract() -> None:
    assert task_names() == list(NAMES)
    for name in NAMES:
        task = sl.datasets.load_task(name)
        assert isinstance(task, Task)
        assert task.name == name and task.part == "all" and task.lengths == "fixed"
        assert isinstance(task.prompts, list) and isinstance(task.targets, list)
        assert len(task.prompts) == len(task.targets) == len(task.foils) == len(task) >= 150
        assert all(isinstance(r, TaskRecord) for r in task)
        assert task[0].prompt == task.prompts[0] and task[-1].foil == task.foils[-1]
        # the lists are fresh copies
        task.prompts.clear()
        assert len(task.prompts) == len(task)


def test_country_capital_thresholds_and_records() -> None:
    task = load_task("country_capital")
    countries = _entities(task, ("country",))
    assert len(countries) >= 60
    assert {r.template for r in task} == {"cc0", "cc1", "cc2", "cc3", "cc4"}
    for r in task:
        e = r.entities
        assert set(e) == {"country", "capital", "context_capital", "context_country"}
        assert r.target == " " + e["capital"] and r.foil == " " + e["context_capital"]
        assert e["context_country"] != e["country"]
        assert e["context_country"] in countries  # the foil is a shipped country's capital
        assert r.prompt.count(" " + e["country"]) == 2
        assert " " + e["context_capital"] in r.prompt
        assert not _has_word(r.prompt, e["capital"])


def test_country_capital_matches_the_file_checks() -> None:
    obj = json.loads((_tasks._tasks_dir() / "country_capital.json").read_text("utf-8"))
    shipped = {c["country"]: c for c in obj["countries"]}
    assert obj["checks"]["shipped"] == len(shipped) >= 60
    assert all(c["known"] and c["country_one_token"] for c in shipped.values())
    assert all("rejected" in c for c in obj["rejected"])
    task = load_task("country_capital", lengths="all")
    assert _entities(task, ("country",)) == set(shipped)
    for r in task:
        assert shipped[r.entities["country"]]["capital"] == r.entities["capital"]


def test_ioi_records() -> None:
    task = load_task("ioi")
    names = _entities(task, ("io_name", "subject_name"))
    assert len(names) >= 40
    assert {r.entities["order"] for r in task} == {"ABBA", "BABA"}
    assert len(_entities(task, ("place",))) >= 10 and len(_entities(task, ("object",))) >= 10
    for r in task:
        e = r.entities
        a, b = e["io_name"], e["subject_name"]
        assert r.target == " " + a and r.foil == " " + b and a != b
        assert r.prompt.count(" " + b) == 2 and r.prompt.count(" " + a) == 1
        first = a if e["order"] == "ABBA" else b
        assert r.prompt.index(" " + first) < r.prompt.index(" " + (b if first == a else a))
        assert f" {e['place']}" in r.prompt and f" {e['object']}" in r.prompt


def test_reverse_task() -> None:
    forward = load_task("country_capital")
    context = load_task("country_capital_context")
    assert context.targets == forward.foils and context.foils == forward.targets
    assert forward.reversed() == context and context.reversed() == forward
    assert context.description.startswith("Reversed (every target and foil swapped): ")
    np.testing.assert_array_equal(context.unsteered_logit_diffs, -forward.unsteered_logit_diffs)
    ioi = load_task("ioi")
    rev = ioi.reversed()
    assert rev.name == "ioi_reversed" and rev.targets == ioi.foils
    assert rev.reversed() == ioi
    assert ioi[0].reversed().reversed() == ioi[0]


# ------------------------------------------------------------------ splits and layouts


@pytest.mark.parametrize("name", NAMES)
def test_splits_partition_the_records(name: str) -> None:
    task = load_task(name)
    train, held = task.split()
    assert (train.part, held.part) == ("train", "held_out")
    assert len(train) + len(held) == len(task) and len(held) >= 30 and len(train) >= 100
    assert {r.split for r in train} == {"train"} and {r.split for r in held} == {"held_out"}
    assert task.split("train") == train == load_task(name, "train")
    assert load_task(name, "held_out") == held == load_task(name, "heldout")
    assert load_task(name, "HELD-OUT") == held


@pytest.mark.parametrize("lengths", ["fixed", "varied", "all"])
def test_held_out_entities_never_occur_in_training(lengths: str) -> None:
    train, held = load_task("country_capital", lengths=lengths).split()
    keys = ("country", "context_country")
    assert not _entities(train, keys) & _entities(held, keys)
    # nor as text: no held-out country or capital string in any training prompt
    held_words = _entities(held, ("country", "capital", "context_capital"))
    assert not any(_has_word(p, w) for p in train.prompts for w in held_words)
    train, held = load_task("ioi", lengths=lengths).split()
    keys = ("io_name", "subject_name")
    assert not _entities(train, keys) & _entities(held, keys)


@pytest.mark.parametrize("name", NAMES)
def test_layouts(name: str) -> None:
    fixed = load_task(name)
    varied = load_task(name, lengths="varied")
    both = load_task(name, lengths="all")
    assert fixed.n_tokens == FIXED_TOKENS[name]
    assert {r.lengths for r in fixed} == {"fixed"} and {r.lengths for r in varied} == {"varied"}
    assert varied.n_tokens is None and len({r.n_tokens for r in varied}) >= 3
    assert FIXED_TOKENS[name] not in {r.n_tokens for r in varied}
    assert len(both) == len(fixed) + len(varied)
    assert not {r.template for r in fixed} & {r.template for r in varied}


def test_derived_tasks() -> None:
    task = load_task("ioi")
    sub = task.subset(10, seed=3)
    assert len(sub) == 10 and sub == task.subset(10, seed=3) and sub != task.subset(10, seed=4)
    positions = [task.records.index(r) for r in sub]
    assert positions == sorted(positions)
    head = task[:5]
    assert isinstance(head, Task) and head.records == task.records[:5] and head.name == "ioi"
    assert len(task.subset(len(task))) == len(task)
    assert "n_records=240" in repr(task) and "n_tokens=14" in repr(task)


def test_copy_and_pickle() -> None:
    task = load_task("country_capital")[:20]
    for other in (pickle.loads(pickle.dumps(task)), copy.deepcopy(task), copy.copy(task)):
        assert other == task
        assert other[0].entities["country"] == task[0].entities["country"]
    assert len({*task.records, *task.records}) == len(task)
    with pytest.raises(TypeError):
        task[0].entities["country"] = "Atlantis"  # type: ignore[index]


def test_to_pandas() -> None:
    pytest.importorskip("pandas")
    df = load_task("ioi")[:7].to_pandas()
    assert len(df) == 7
    assert {"prompt", "target", "foil", "template", "split", "io_name", "order"} <= set(df)
    assert list(df["target"]) == load_task("ioi")[:7].targets


def test_loading_does_not_import_pandas() -> None:
    code = (
        "import sys, steerlab as sl; t = sl.datasets.load_task('ioi'); t.split(); "
        "print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ bad input


def test_bad_arguments_raise() -> None:
    with pytest.raises(InvalidArgumentError, match=r"unknown task 'capitals'.*'country_capital'"):
        load_task("capitals")
    with pytest.raises(InvalidArgumentError, match=r"unknown split 'test'.*'held_out'"):
        load_task("ioi", "test")
    with pytest.raises(InvalidArgumentError, match=r"unknown lengths 'short'.*'varied'"):
        load_task("ioi", lengths="short")
    with pytest.raises(InvalidTypeError, match="task must be a str, got int"):
        load_task(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="split must be a str, got NoneType"):
        load_task("ioi", None)  # type: ignore[arg-type]
    task = load_task("ioi")
    with pytest.raises(InvalidArgumentError, match=r"unknown split 'all'.*\('train', 'held_out'\)"):
        task.split("all")
    with pytest.raises(InvalidArgumentError, match=r"task 'ioi' \(part 'train'.*no 'held_out'"):
        load_task("ioi", "train").split("held_out")
    with pytest.raises(InvalidArgumentError, match=r"n must be between 1 and the task's 240"):
        task.subset(0)
    with pytest.raises(
        InvalidArgumentError, match=r"between 1 and the task's 240 records, got 241"
    ):
        task.subset(241)
    with pytest.raises(InvalidTypeError, match="n must be an int, got float"):
        task.subset(2.0)  # type: ignore[arg-type]
    with pytest.raises(OutOfRangeError, match="record index 240 is out of range for 240"):
        task[240]
    with pytest.raises(InvalidTypeError, match="index must be an int or a slice, got str"):
        task["0"]  # type: ignore[call-overload]


@pytest.fixture
def fake_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the loader at an empty folder, with its cache cleared around the test."""
    _tasks._read.cache_clear()
    monkeypatch.setattr(_tasks, "_tasks_dir", lambda: tmp_path)
    yield tmp_path
    _tasks._read.cache_clear()


def _record(**changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "prompt": "When A and B met, B gave a cup to",
        "target": " A",
        "foil": " B",
        "template": "t",
        "split": "train",
        "lengths": "fixed",
        "entities": {"io_name": "A"},
        "n_tokens": 10,
        "unsteered_logit_diff": 1.5,
    }
    rec.update(changes)
    return rec


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_record(foil=" A"), "record 0: target and foil are the same text"),
        (_record(target=""), "record 0: 'target' must be a non-empty string"),
        (_record(split="dev"), "record 0: split 'dev' / lengths 'fixed' not in"),
        (_record(n_tokens=0), "record 0: 'n_tokens' must be a positive int"),
        (
            _record(unsteered_logit_diff="x"),
            "record 0: 'unsteered_logit_diff' must be a finite number",
        ),
        (_record(entities={"a": 1}), "record 0: 'entities' must map strings to strings"),
    ],
)
def test_malformed_files_raise(fake_tasks: Path, record: dict[str, Any], message: str) -> None:
    (fake_tasks / "ioi.json").write_text(
        json.dumps({"description": "d", "records": [record]}), encoding="utf-8"
    )
    with pytest.raises(InvalidArgumentError, match=rf"tasks/ioi\.json, {message}"):
        load_task("ioi")


def test_missing_and_broken_files_raise(fake_tasks: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"tasks/ioi\.json is missing.*reinstall"):
        load_task("ioi")
    (fake_tasks / "ioi.json").write_text("{", encoding="utf-8")
    _tasks._read.cache_clear()
    with pytest.raises(InvalidArgumentError, match=r"ioi\.json: not valid JSON"):
        load_task("ioi")
    (fake_tasks / "ioi.json").write_text('{"description": "d", "records": []}', "utf-8")
    _tasks._read.cache_clear()
    with pytest.raises(InvalidArgumentError, match=r"ioi\.json: no records"):
        load_task("ioi")


def test_a_good_fake_file_loads(fake_tasks: Path) -> None:
    recs = [_record(), _record(split="held_out", lengths="varied", n_tokens=12)]
    (fake_tasks / "ioi.json").write_text(
        json.dumps({"description": "d", "records": recs}), encoding="utf-8"
    )
    assert load_task("ioi").prompts == [recs[0]["prompt"]]
    task = load_task("ioi", lengths="all")
    assert [r.n_tokens for r in task] == [10, 12] and task.n_tokens is None


# ------------------------------------------------------------------ with the default model


def _first(model: Any, text: str) -> list[int]:
    return model.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("name", ["country_capital", "ioi"])
def test_token_lengths_with_the_default_model(model: Any, name: str) -> None:
    task = load_task(name, lengths="all")
    for r in task:
        assert len(model.encode(r.prompt)) == r.n_tokens, r.prompt
    assert {len(model.encode(p)) for p in load_task(name).prompts} == {FIXED_TOKENS[name]}


def test_entity_positions_with_the_default_model(model: Any) -> None:
    """Fixed records put every entity at the positions the file states, the same for all
    templates (IOI: per order), so a position means one role across the records."""
    expected = {
        "country_capital": {"all": {"country": [6, 17], "context_capital": [8]}},
        "ioi": {
            "ABBA": {"io_name": [1], "subject_name": [3, 9], "place": [7], "object": [12]},
            "BABA": {"io_name": [3], "subject_name": [1, 9], "place": [7], "object": [12]},
        },
    }
    for name, groups in expected.items():
        obj = json.loads((_tasks._tasks_dir() / f"{name}.json").read_text("utf-8"))
        stated = obj["positions_fixed"]
        assert (stated if name == "ioi" else {"all": stated}) == groups
        for r in load_task(name):
            ids = model.encode(r.prompt)
            for role, where in groups[r.entities.get("order", "all")].items():
                token = _first(model, " " + r.entities[role])
                assert len(token) == 1
                assert [i for i, t in enumerate(ids) if t == token[0]] == where, r


@pytest.mark.parametrize("name", ["country_capital", "ioi"])
def test_answers_with_the_default_model(model: Any, name: str) -> None:
    task = load_task(name, lengths="all")
    for r in task:
        target, foil = _first(model, r.target), _first(model, r.foil)
        assert target and foil and target[0] != foil[0], r
        # entities filled into the prompt are one token, so the layout is fixed
        assert len(foil) == 1, r.foil
        if name == "ioi":
            assert len(target) == 1, r.target
            for key in ("place", "object"):
                assert len(_first(model, " " + r.entities[key])) == 1
        else:
            assert len(_first(model, " " + r.entities["country"])) == 1
        # the answer token is the prompt's continuation, not glued to its last token
        assert model.encode(r.prompt + r.target)[: r.n_tokens] == model.encode(r.prompt)


def test_shipped_logit_diffs_match_the_default_model(model: Any) -> None:
    for name in ("country_capital", "ioi"):
        task = load_task(name, lengths="all").subset(12, seed=1)
        logits = model.logits(task.prompts, progress=False)
        for r, row in zip(task, logits, strict=True):
            t, f = _first(model, r.target)[0], _first(model, r.foil)[0]
            assert float(row[t] - row[f]) == pytest.approx(r.unsteered_logit_diff, abs=0.05)
