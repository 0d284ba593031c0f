"""Generate and check the answer-choice tasks that `steerlab.datasets.load_task` loads.

Writes ``python/steerlab/data/tasks/{country_capital,ioi}.json`` from the templates and
entity lists below, with the default model (``sl.Model.load()``: SmolLM2-135M-Instruct,
Q4_1) checking every entity and measuring the unsteered model on every record::

    .venv/bin/python bench/reference/make_tasks.py            # regenerate the files
    .venv/bin/python bench/reference/make_tasks.py --check    # regenerate in memory and
                                                              # fail unless the files match

Generation is deterministic (``SEED``); the model's numbers are rounded to 1e-4 so a
rerun on the same build writes the same bytes, and ``--check`` compares everything
exactly except the unsteered logit differences (within ``--tol``, default 0.05). It takes
about a minute on two CPU cores. Everything here was written for steerlab
(templates, name, place and object lists); the country/capital pairs are plain facts.

What is checked (a check that fails stops the script, nothing is dropped silently
except the entities the criteria below reject, which the files list with the reason):

Country-capital conflicts
    * Candidates: the ``COUNTRIES`` pairs (sovereign states with one uncontested capital).
    * Fixed token layout: the country is one token after a space (``" Spain"``), since it
      appears twice in every prompt; the capital *stated in the context* (the foil of
      ``country_capital``) is one token after a space, so only countries with a one-token
      capital serve as foils. The true capital may be longer: only its first token is the
      answer.
    * Known: on the neutral two-shot prompt ``KNOWN_PROMPT`` (no conflicting context; the
      two examples never include the country checked) the model's greedy top-1 next token
      is the first token of ``" " + capital``. Whether greedy decoding then spells the whole
      capital is recorded (``full_name``) but not required.
    * Split: the shipped countries are shuffled with ``SEED`` and a quarter (of the
      one-token-capital countries and of the others, separately) is held out; a record's
      asked country and foil country come from the same part, so no held-out country
      occurs in a training record at all.
IOI
    * Names, places and objects are each one token after a space; names are split
      train / held-out (no held-out name in any training record); places and objects are
      shared.
Both
    * ``lengths="fixed"`` templates all give the same number of tokens (with special
      tokens, as ``model.encode(prompt)``) for every record, with every entity at the
      same token positions (``positions_fixed``; for IOI per order ABBA / BABA);
      ``"varied"`` templates give other lengths, each different from the fixed one.
    * Target and foil first tokens differ, and each is a single token
      (``model.encode(" X", add_special_tokens=False)[0]``).
    * ``unsteered_logit_diff``: logit(target first token) - logit(foil first token) at the
      prompt's last position, unsteered. ``summary`` gives, per split and layout, the
      fraction with a positive difference (the model's accuracy; the rest is the room
      steering has).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import steerlab as sl

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "python" / "steerlab" / "data" / "tasks"
SEED = 20241
HELD_OUT_FRACTION = 0.25

# ------------------------------------------------------------------ country-capital data

# (country, capital); the English names in common use.
COUNTRIES: tuple[tuple[str, str], ...] = (
    ("Afghanistan", "Kabul"),
    ("Albania", "Tirana"),
    ("Algeria", "Algiers"),
    ("Angola", "Luanda"),
    ("Argentina", "Buenos Aires"),
    ("Armenia", "Yerevan"),
    ("Australia", "Canberra"),
    ("Austria", "Vienna"),
    ("Azerbaijan", "Baku"),
    ("Bahamas", "Nassau"),
    ("Bahrain", "Manama"),
    ("Bangladesh", "Dhaka"),
    ("Barbados", "Bridgetown"),
    ("Belarus", "Minsk"),
    ("Belgium", "Brussels"),
    ("Belize", "Belmopan"),
    ("Bhutan", "Thimphu"),
    ("Botswana", "Gaborone"),
    ("Brazil", "Brasília"),
    ("Bulgaria", "Sofia"),
    ("Cambodia", "Phnom Penh"),
    ("Cameroon", "Yaoundé"),
    ("Canada", "Ottawa"),
    ("Chad", "N'Djamena"),
    ("Chile", "Santiago"),
    ("China", "Beijing"),
    ("Colombia", "Bogotá"),
    ("Croatia", "Zagreb"),
    ("Cuba", "Havana"),
    ("Cyprus", "Nicosia"),
    ("Denmark", "Copenhagen"),
    ("Djibouti", "Djibouti"),
    ("Ecuador", "Quito"),
    ("Egypt", "Cairo"),
    ("Eritrea", "Asmara"),
    ("Estonia", "Tallinn"),
    ("Ethiopia", "Addis Ababa"),
    ("Fiji", "Suva"),
    ("Finland", "Helsinki"),
    ("France", "Paris"),
    ("Gabon", "Libreville"),
    ("Gambia", "Banjul"),
    ("Georgia", "Tbilisi"),
    ("Germany", "Berlin"),
    ("Ghana", "Accra"),
    ("Greece", "Athens"),
    ("Guatemala", "Guatemala City"),
    ("Guinea", "Conakry"),
    ("Guyana", "Georgetown"),
    ("Haiti", "Port-au-Prince"),
    ("Honduras", "Tegucigalpa"),
    ("Hungary", "Budapest"),
    ("Iceland", "Reykjavík"),
    ("India", "New Delhi"),
    ("Indonesia", "Jakarta"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Ireland", "Dublin"),
    ("Italy", "Rome"),
    ("Jamaica", "Kingston"),
    ("Japan", "Tokyo"),
    ("Jordan", "Amman"),
    ("Kazakhstan", "Astana"),
    ("Kenya", "Nairobi"),
    ("Kuwait", "Kuwait City"),
    ("Kyrgyzstan", "Bishkek"),
    ("Laos", "Vientiane"),
    ("Latvia", "Riga"),
    ("Lebanon", "Beirut"),
    ("Lesotho", "Maseru"),
    ("Liberia", "Monrovia"),
    ("Libya", "Tripoli"),
    ("Liechtenstein", "Vaduz"),
    ("Lithuania", "Vilnius"),
    ("Madagascar", "Antananarivo"),
    ("Malawi", "Lilongwe"),
    ("Malaysia", "Kuala Lumpur"),
    ("Mali", "Bamako"),
    ("Malta", "Valletta"),
    ("Mauritania", "Nouakchott"),
    ("Mauritius", "Port Louis"),
    ("Mexico", "Mexico City"),
    ("Moldova", "Chișinău"),
    ("Mongolia", "Ulaanbaatar"),
    ("Montenegro", "Podgorica"),
    ("Morocco", "Rabat"),
    ("Mozambique", "Maputo"),
    ("Namibia", "Windhoek"),
    ("Nepal", "Kathmandu"),
    ("Netherlands", "Amsterdam"),
    ("Nicaragua", "Managua"),
    ("Niger", "Niamey"),
    ("Nigeria", "Abuja"),
    ("Norway", "Oslo"),
    ("Oman", "Muscat"),
    ("Pakistan", "Islamabad"),
    ("Panama", "Panama City"),
    ("Paraguay", "Asunción"),
    ("Peru", "Lima"),
    ("Philippines", "Manila"),
    ("Poland", "Warsaw"),
    ("Portugal", "Lisbon"),
    ("Qatar", "Doha"),
    ("Romania", "Bucharest"),
    ("Russia", "Moscow"),
    ("Rwanda", "Kigali"),
    ("Samoa", "Apia"),
    ("Senegal", "Dakar"),
    ("Serbia", "Belgrade"),
    ("Slovakia", "Bratislava"),
    ("Slovenia", "Ljubljana"),
    ("Somalia", "Mogadishu"),
    ("Spain", "Madrid"),
    ("Sudan", "Khartoum"),
    ("Sweden", "Stockholm"),
    ("Switzerland", "Bern"),
    ("Syria", "Damascus"),
    ("Thailand", "Bangkok"),
    ("Tunisia", "Tunis"),
    ("Turkey", "Ankara"),
    ("Uganda", "Kampala"),
    ("Uruguay", "Montevideo"),
    ("Uzbekistan", "Tashkent"),
    ("Venezuela", "Caracas"),
    ("Vietnam", "Hanoi"),
    ("Yemen", "Sanaa"),
    ("Zambia", "Lusaka"),
    ("Zimbabwe", "Harare"),
    # Names of more than one token: checked and reported, never shipped (the fixed
    # layout needs one-token countries).
    ("Czech Republic", "Prague"),
    ("South Korea", "Seoul"),
    ("United Kingdom", "London"),
    ("New Zealand", "Wellington"),
    ("North Korea", "Pyongyang"),
    ("Saudi Arabia", "Riyadh"),
    ("United Arab Emirates", "Abu Dhabi"),
    ("United States", "Washington"),
)

# Two-shot neutral prompt for the knowledge check; the shots are the first two pairs of
# KNOWN_SHOTS whose country is not the one checked.
KNOWN_SHOTS = (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Canada", "Ottawa"))
KNOWN_PROMPT = "The capital of {a1} is {b1}.\nThe capital of {a2} is {b2}.\nThe capital of {c} is"

# {c}: the asked country; {x}: the capital stated in the context (another country's).
# All fixed templates put the entities at the same token positions (checked): the asked
# country at 6 and 17, the stated capital at 8, the answer predicted at the last (20).
CC_FIXED = {
    "cc0": "Claim: the capital of {c} is {x}. Q: What is the capital of {c}? A:",
    "cc1": "I read that the capital of {c} is {x}. So which city is the capital of {c}? It is",
    "cc2": "A text: the capital of {c} is {x}. Question: what is the capital of {c}? Answer:",
    "cc3": "In this story the capital of {c} is {x}. Now, what is the capital of {c}? A:",
    "cc4": "My notes: the capital of {c} is {x}. Q: What is the capital of {c}? Answer:",
}
CC_VARIED = {
    "ccv0": "So {x} is the capital of {c}. The capital of {c} is",
    "ccv1": "Reading: {c} has {x} as its capital city. Now answer: the capital of {c} is",
    "ccv2": "Text: {x} is the capital of {c}.\nQ: What is the capital of {c}?\nA:",
    "ccv3": (
        "A travel blog I read last week said that {x} is the capital of {c}. "
        "Question: what is the capital of {c}? Answer:"
    ),
    "ccv4": (
        "Here is a sentence from a school quiz sheet that a student filled in: the capital "
        "of {c} is {x}. The teacher asked the class again: what is the capital of {c}? "
        "The answer is"
    ),
}

# ------------------------------------------------------------------ IOI data

NAMES = [
    "Mary",
    "John",
    "Anna",
    "James",
    "Sarah",
    "David",
    "Emma",
    "Michael",
    "Laura",
    "Robert",
    "Lisa",
    "Daniel",
    "Kate",
    "Paul",
    "Alice",
    "Peter",
    "Susan",
    "Helen",
    "George",
    "Linda",
    "Thomas",
    "Rachel",
    "Steven",
    "Karen",
    "Brian",
    "Nancy",
    "Kevin",
    "Julia",
    "Eric",
    "Amy",
    "Jason",
    "Ruth",
    "Henry",
    "Jane",
    "Jack",
    "Emily",
    "Tom",
    "Lucy",
    "Sam",
    "Clara",
    "Ben",
    "Diana",
    "Carl",
    "Nina",
    "Oscar",
    "Sophie",
    "Victor",
    "Olivia",
    "Ryan",
    "Anne",
    "Luke",
    "Maria",
    "Simon",
    "Claire",
    "Martin",
    "Ellen",
    "Chris",
    "Jacob",
    "Hannah",
    "Ivan",
    "Leo",
    "Eva",
    "Noah",
    "Adrian",
    "Owen",
    "Mia",
    "Felix",
]
PLACES = [
    "store",
    "park",
    "beach",
    "market",
    "library",
    "office",
    "garden",
    "museum",
    "station",
    "school",
    "river",
    "zoo",
    "bakery",
    "restaurant",
    "hospital",
    "gym",
    "mall",
    "cinema",
    "farm",
    "church",
    "hotel",
    "bank",
    "lake",
    "kitchen",
    "theater",
    "airport",
    "stadium",
]
OBJECTS = [
    "drink",
    "book",
    "ball",
    "gift",
    "ring",
    "letter",
    "key",
    "bag",
    "cake",
    "pen",
    "flower",
    "hat",
    "card",
    "map",
    "toy",
    "coin",
    "cup",
    "phone",
    "bottle",
    "basket",
    "box",
    "camera",
    "candle",
    "ticket",
    "sandwich",
    "watch",
    "note",
    "bowl",
    "shirt",
]

# All fixed templates put the entities at the same token positions (checked): names at
# 1 and 3, place at 7, the subject again at 9, object at 12, the answer predicted at 13.
# {n1} {n2}: the two names in the order of the record (ABBA: indirect object first, BABA:
# subject first); {b}: the subject, named again; {p}: a place; {o}: an object.
IOI_FIXED = {
    "ioi0": "When {n1} and {n2} went to the {p}, {b} gave a {o} to",
    "ioi1": "After {n1} and {n2} arrived at the {p}, {b} handed a {o} to",
    "ioi2": "While {n1} and {n2} were at the {p}, {b} passed a {o} to",
    "ioi3": "Then {n1} and {n2} walked into the {p}, {b} offered a {o} to",
    "ioi4": "Once {n1} and {n2} had reached the {p}, {b} tossed a {o} to",
}
IOI_VARIED = {
    "ioiv0": "Once {n1} and {n2} reached the {p}, {b} tossed a {o} to",
    "ioiv1": "Yesterday {n1} and {n2} were in the {p}, and {b} lent a {o} to",
    "ioiv2": "When {n1} and {n2} went to the {p} on a sunny morning, {b} decided to give a {o} to",
    "ioiv3": (
        "During the long afternoon, {n1} and {n2} sat together at the {p}, and after a "
        "while {b} quietly handed the {o} to"
    ),
}
IOI_RECORDS = {("train", "fixed"): 180, ("held_out", "fixed"): 60}
IOI_RECORDS |= {("train", "varied"): 80, ("held_out", "varied"): 40}


# ------------------------------------------------------------------ helpers


class CheckFailed(RuntimeError):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


def one_token(model: sl.Model, word: str) -> int | None:
    ids = model.encode(" " + word, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def first_token(model: sl.Model, answer: str) -> int:
    ids = model.encode(answer, add_special_tokens=False)
    check(len(ids) >= 1, f"answer {answer!r} tokenizes to nothing")
    return ids[0]


def logit_diffs(model: sl.Model, records: list[dict[str, Any]]) -> None:
    """Fill each record's unsteered_logit_diff and n_tokens."""
    prompts = [r["prompt"] for r in records]
    logits = model.logits(prompts, batch_size=16, progress=False)
    for r, row in zip(records, logits, strict=True):
        t = first_token(model, r["target"])
        f = first_token(model, r["foil"])
        check(t != f, f"target and foil share their first token: {r}")
        r["unsteered_logit_diff"] = round(float(row[t] - row[f]), 4)
        r["n_tokens"] = len(model.encode(r["prompt"]))


def check_lengths(records: list[dict[str, Any]], task: str) -> int:
    fixed = {r["n_tokens"] for r in records if r["lengths"] == "fixed"}
    check(len(fixed) == 1, f"{task}: fixed records have token lengths {sorted(fixed)}")
    (n,) = fixed
    for r in records:
        if r["lengths"] == "varied":
            check(r["n_tokens"] != n, f"{task}: a varied record has the fixed length {n}: {r}")
    return n


def entity_positions(
    model: sl.Model, records: list[dict[str, Any]], roles: dict[str, str], task: str
) -> dict[str, dict[str, list[int]]]:
    """Token positions of each role's entity in the fixed records, per group (IOI: per
    order); every record of a group must agree."""
    out: dict[str, dict[str, list[int]]] = {}
    for r in records:
        if r["lengths"] != "fixed":
            continue
        ids = model.encode(r["prompt"])
        found = {}
        for role, key in roles.items():
            token = one_token(model, r["entities"][key])
            check(token is not None, f"{task}: {key} of {r} is not one token")
            found[role] = [i for i, t in enumerate(ids) if t == token]
        group = r["entities"].get("order", "all")
        seen = out.setdefault(group, found)
        check(seen == found, f"{task}: entity positions {found} differ from {seen}: {r}")
    return out


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lengths in ("fixed", "varied"):
        for split in ("train", "held_out", "all"):
            rows = [
                r["unsteered_logit_diff"]
                for r in records
                if r["lengths"] == lengths and split in ("all", r["split"])
            ]
            d = np.asarray(rows, dtype=np.float64)
            out[f"{lengths}/{split}"] = {
                "n": len(rows),
                "accuracy": round(float((d > 0).mean()), 4),
                "mean_logit_diff": round(float(d.mean()), 4),
                "median_logit_diff": round(float(np.median(d)), 4),
            }
    return out


def split_off(items: Sequence[str], rng: random.Random) -> tuple[list[str], list[str]]:
    """(train, held_out): a seeded shuffle, HELD_OUT_FRACTION held out (at least one)."""
    items = list(items)
    rng.shuffle(items)
    k = max(1, round(len(items) * HELD_OUT_FRACTION))
    return sorted(items[k:]), sorted(items[:k])


# ------------------------------------------------------------------ country-capital


def known_prompt(country: str) -> str:
    shots = [s for s in KNOWN_SHOTS if s[0] != country][:2]
    return KNOWN_PROMPT.format(
        a1=shots[0][0], b1=shots[0][1], a2=shots[1][0], b2=shots[1][1], c=country
    )


def check_countries(model: sl.Model) -> list[dict[str, Any]]:
    """One row per candidate: the token checks and the knowledge check."""
    prompts = [known_prompt(c) for c, _ in COUNTRIES]
    logits = model.logits(prompts, batch_size=16, progress=False)
    greedy = model.generate(prompts, max_new_tokens=8, return_ids=True, progress=False)
    rows = []
    for (country, capital), row, ids in zip(COUNTRIES, logits, greedy, strict=True):
        cap_ids = model.encode(" " + capital, add_special_tokens=False)
        top = int(np.argmax(row))
        rows.append(
            {
                "country": country,
                "capital": capital,
                "country_one_token": one_token(model, country) is not None,
                "capital_one_token": len(cap_ids) == 1,
                "known": top == cap_ids[0],
                "full_name": list(ids[: len(cap_ids)]) == cap_ids,
                "neutral_top1": model.decode([top]),
            }
        )
    return rows


def country_records(
    model: sl.Model, shipped: list[dict[str, Any]], rng: random.Random
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    by_name = {r["country"]: r for r in shipped}
    singles = [r["country"] for r in shipped if r["capital_one_token"]]
    others = [r["country"] for r in shipped if not r["capital_one_token"]]
    s_train, s_held = split_off(singles, rng)
    o_train, o_held = split_off(others, rng)
    parts = {"train": sorted(s_train + o_train), "held_out": sorted(s_held + o_held)}
    foils = {"train": s_train, "held_out": s_held}
    records = []
    for split, countries in parts.items():
        for lengths, templates in (("fixed", CC_FIXED), ("varied", CC_VARIED)):
            for country in countries:
                true = by_name[country]["capital"]
                t_first = first_token(model, " " + true)
                for tid, template in templates.items():
                    options = [
                        c
                        for c in foils[split]
                        if c != country
                        and first_token(model, " " + by_name[c]["capital"]) != t_first
                    ]
                    check(len(options) >= 1, f"no foil for {country} in {split}")
                    foil_country = rng.choice(options)
                    stated = by_name[foil_country]["capital"]
                    records.append(
                        {
                            "prompt": template.format(c=country, x=stated),
                            "target": " " + true,
                            "foil": " " + stated,
                            "template": tid,
                            "split": split,
                            "lengths": lengths,
                            "entities": {
                                "country": country,
                                "capital": true,
                                "context_capital": stated,
                                "context_country": foil_country,
                            },
                        }
                    )
    return records, parts


def make_country_capital(model: sl.Model) -> dict[str, Any]:
    rng = random.Random(SEED)
    rows = check_countries(model)
    for r in rows:
        if not r["country_one_token"]:
            r["rejected"] = "country name is more than one token"
        elif not r["known"]:
            r["rejected"] = "greedy top-1 on the neutral prompt is not the capital's first token"
    shipped = [r for r in rows if "rejected" not in r]
    rejected = [r for r in rows if "rejected" in r]
    check(len(shipped) >= 60, f"only {len(shipped)} countries pass (need 60)")
    records, parts = country_records(model, shipped, rng)
    logit_diffs(model, records)
    n_tokens = check_lengths(records, "country_capital")
    roles = {"country": "country", "context_capital": "context_capital"}
    positions = entity_positions(model, records, roles, "country_capital")["all"]
    n_fixed = sum(r["lengths"] == "fixed" for r in records)
    check(n_fixed >= 150, f"only {n_fixed} fixed records")
    for r in records:
        check(
            r["entities"]["context_country"] in parts[r["split"]],
            f"foil country from the other split: {r}",
        )
    return {
        "name": "country_capital",
        "description": (
            "A context states a wrong capital for a country, then asks for the capital. "
            "target = the true capital, foil = the capital stated in the context (another "
            "shipped country's). The reverse task, country_capital_context, swaps them."
        ),
        "model": "SmolLM2-135M-Instruct Q4_1 (steerlab.Model.load())",
        "generator": "bench/reference/make_tasks.py",
        "seed": SEED,
        "known_criterion": (
            "greedy top-1 next token on the neutral two-shot prompt "
            + json.dumps(KNOWN_PROMPT)
            + " (shots from "
            + json.dumps([list(s) for s in KNOWN_SHOTS])
            + ", never the country checked) is the first token of ' ' + capital"
        ),
        "n_tokens_fixed": n_tokens,
        "positions_fixed": positions,
        "templates": {"fixed": CC_FIXED, "varied": CC_VARIED},
        "checks": {
            "candidates": len(rows),
            "one_token_country": sum(r["country_one_token"] for r in rows),
            "known_any_length": sum(r["known"] for r in rows),
            "shipped": len(shipped),
            "shipped_full_name_greedy": sum(r["full_name"] for r in shipped),
            "shipped_one_token_capital": sum(r["capital_one_token"] for r in shipped),
        },
        "splits": parts,
        "countries": shipped,
        "rejected": rejected,
        "summary": summary(records),
        "records": records,
    }


# ------------------------------------------------------------------ IOI


def make_ioi(model: sl.Model) -> dict[str, Any]:
    rng = random.Random(SEED + 1)
    for kind, words in (("name", NAMES), ("place", PLACES), ("object", OBJECTS)):
        check(len(set(words)) == len(words), f"duplicate {kind}s")
        for w in words:
            check(one_token(model, w) is not None, f"{kind} {w!r} is not one token")
    train_names, held_names = split_off(NAMES, rng)
    parts = {"train": train_names, "held_out": held_names}
    records = []
    for (split, lengths), n in IOI_RECORDS.items():
        templates = IOI_FIXED if lengths == "fixed" else IOI_VARIED
        tids = sorted(templates)
        seen: set[tuple[str, ...]] = set()
        i = 0
        while i < n:
            a, b = rng.sample(parts[split], 2)
            place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
            tid = tids[i % len(tids)]
            order = "ABBA" if (i // len(tids)) % 2 == 0 else "BABA"
            key = (tid, a, b, place, obj)
            if key in seen:
                continue
            seen.add(key)
            n1, n2 = (a, b) if order == "ABBA" else (b, a)
            records.append(
                {
                    "prompt": templates[tid].format(n1=n1, n2=n2, b=b, p=place, o=obj),
                    "target": " " + a,
                    "foil": " " + b,
                    "template": tid,
                    "split": split,
                    "lengths": lengths,
                    "entities": {
                        "io_name": a,
                        "subject_name": b,
                        "place": place,
                        "object": obj,
                        "order": order,
                    },
                }
            )
            i += 1
    logit_diffs(model, records)
    n_tokens = check_lengths(records, "ioi")
    roles = {"io_name": "io_name", "subject_name": "subject_name", "place": "place"}
    positions = entity_positions(model, records, roles | {"object": "object"}, "ioi")
    return {
        "name": "ioi",
        "description": (
            "Indirect-object identification: two people go somewhere, then one of them (the "
            "subject, named again) gives an object to ... ; target = the other person (the "
            "indirect object), foil = the subject. The orders ABBA (indirect object named "
            "first) and BABA alternate."
        ),
        "model": "SmolLM2-135M-Instruct Q4_1 (steerlab.Model.load())",
        "generator": "bench/reference/make_tasks.py",
        "seed": SEED + 1,
        "n_tokens_fixed": n_tokens,
        "positions_fixed": positions,
        "templates": {"fixed": IOI_FIXED, "varied": IOI_VARIED},
        "checks": {
            "names": len(NAMES),
            "places": len(PLACES),
            "objects": len(OBJECTS),
            "all_one_token": True,
        },
        "splits": parts,
        "summary": summary(records),
        "records": records,
    }


# ------------------------------------------------------------------ main


def render(obj: dict[str, Any]) -> str:
    """JSON with one record per line (readable diffs, a small file)."""
    head = {k: v for k, v in obj.items() if k != "records"}
    text = json.dumps(head, indent=1, ensure_ascii=False)[:-2]
    rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in obj["records"])
    return f'{text},\n "records": [\n  {rows}\n ]\n}}\n'


def same_data(old: dict[str, Any], new: dict[str, Any], tol: float) -> list[str]:
    """Where two task files differ: exactly, except the model's numbers (within tol)."""
    problems = []
    strip = ("summary", "records")
    if {k: v for k, v in old.items() if k not in strip} != {
        k: v for k, v in new.items() if k not in strip
    }:
        problems.append("the header (checks, entities, templates or splits) differs")
    a, b = old.get("records", []), new.get("records", [])
    if len(a) != len(b):
        return [*problems, f"{len(a)} records shipped, {len(b)} regenerated"]
    key = "unsteered_logit_diff"
    for i, (r, s) in enumerate(zip(a, b, strict=True)):
        if {k: v for k, v in r.items() if k != key} != {k: v for k, v in s.items() if k != key}:
            problems.append(f"record {i} differs")
        elif abs(r[key] - s[key]) > tol:
            problems.append(f"record {i}: logit diff {r[key]} shipped, {s[key]} now")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="fail unless the shipped files match a rerun"
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=0.05,
        help="with --check: how far a logit difference may move (another build or CPU)",
    )
    args = parser.parse_args(argv)
    model = sl.Model.load()
    failed = False
    for task in (make_country_capital(model), make_ioi(model)):
        path = OUT / f"{task['name']}.json"
        text = render(task)
        fixed = task["summary"]
        print(
            f"{task['name']}: {len(task['records'])} records, fixed length "
            f"{task['n_tokens_fixed']} tokens, checks {task['checks']}"
        )
        for key, row in fixed.items():
            print(f"  {key:18s} {row}")
        if args.check:
            old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            problems = same_data(old, json.loads(text), args.tol)
            for p in problems[:10]:
                print(f"  DIFFERS: {p}")
            print(f"  {path.relative_to(ROOT)}: {'DIFFERS' if problems else 'matches'}")
            failed |= bool(problems)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"  wrote {path.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
