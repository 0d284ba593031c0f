"""HyperSteer against the other ways to steer towards a concept, AxBench-style (Wu et al.
2025), judged offline by the base model (`sl.evaluate.axbench`; the table of issue 13's
closing note and bench/RESULTS.md).

Full size (the default quantized SmolLM2-135M-Instruct; the hypernetwork that
``scripts/train_hypersteer.py --out runs/hypersteer`` wrote; 8 held-in and 8 held-out
concepts, 10 held-out base prompts each, 128 new tokens, factors 0.5 to 8)::

    .venv/bin/python bench/hypersteer_eval.py --hypersteer runs/hypersteer/hypersteer.safetensors

Small (a smoke run)::

    .venv/bin/python bench/hypersteer_eval.py --hypersteer runs/hypersteer/hypersteer.safetensors \\
        --concepts 2 --prompts 4 --max-new-tokens 16 --factors 1 2 --out /tmp/hs_eval.json

The table again from saved figures (no model)::

    .venv/bin/python bench/hypersteer_eval.py --table bench/results/hypersteer_eval_smollm2.json.gz

Concepts: the first phrasing of each concept (`SteeringPrompts.one_per_concept`) whose
keywords are reliable, a seeded sample of ``--concepts`` from the held-in and from the
held-out split (held-out concepts were never trained on). Methods: ``none`` (unsteered),
``prompt`` (the instruction in the user turn), ``diffmean`` (per-concept difference of
means at the hypernetwork's layer), ``optimized`` (per-concept optimised vector on
self-distilled targets), ``hypersteer``. Per method: the mean aggregate score (harmonic
mean of concept, instruction relevance and fluency, each in [0, 2]) on the report half,
the three components, the keyword hit rate, the chosen factors, and how often the
offline concept score and the keyword check disagree.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import steerlab as sl
from controller_eval import _commit, load_model

HERE = Path(__file__).resolve().parent
METHODS = ("none", "prompt", "diffmean", "optimized", "hypersteer")


def concepts(part: Any, n: int, seed: int) -> list[tuple[str, list[str]]]:
    """A seeded sample of `n` concepts (first phrasing, reliable keywords) of `part`."""
    one = part.one_per_concept()
    keep = [i for i, ok in enumerate(one.keywords_reliable) if ok]
    rng = np.random.default_rng(seed)
    pick = sorted(int(i) for i in rng.choice(len(keep), size=min(n, len(keep)), replace=False))
    return [(one.instructions[keep[i]], one.keywords[keep[i]]) for i in pick]


def specificity(vecs: np.ndarray) -> dict[str, float]:
    """The mean pairwise cosine between rows, the mean norm, and the share of the rows'
    energy that is not their mean (0: one vector for every instruction)."""
    n = np.linalg.norm(vecs, axis=1)
    u = vecs / n[:, None]
    c = u @ u.T
    k = len(vecs)
    centred = vecs - vecs.mean(0)
    return {
        "mean_pairwise_cosine": round(float((c.sum() - k) / (k * (k - 1))), 4),
        "mean_norm": round(float(n.mean()), 3),
        "varying_share": round(float((centred**2).sum() / (vecs**2).sum()), 4),
    }


def vector_specificity(hs: sl.HyperSteer, instructions: list[str], prompt: str) -> dict[str, float]:
    """`specificity` of `hs`'s vectors for `instructions` on one base prompt."""
    if hs.variant == "cross_attention":
        return specificity(hs.vectors(instructions, [prompt] * len(instructions)))
    return specificity(hs.vectors(instructions))


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model, args.dtype)
    hs = sl.HyperSteer.load(args.hypersteer, model) if args.hypersteer else None
    data = sl.datasets.load_steering_prompts()
    prompts = data.split(base_prompts="held_out").base_prompts[: args.prompts]
    parts = {k: data.split(instructions=k) for k in ("held_in", "held_out")}
    if args.specificity:
        # The first `--specificity` concepts of each split (first phrasing each).
        assert hs is not None
        return {
            k: vector_specificity(
                hs, p.one_per_concept().instructions[: args.specificity], prompts[0]
            )
            for k, p in parts.items()
        }
    groups = {k: concepts(p, args.concepts, args.seed) for k, p in parts.items()}
    methods: dict[str, Any] = {
        "none": None,
        "prompt": "prompt",
        "diffmean": "diffmean",
        "optimized": "optimized",
        "hypersteer": hs,
    }
    methods = {k: v for k, v in methods.items() if k in args.methods}
    layer = args.layer if args.layer is not None else (hs.layer if hs else None)
    out: dict[str, Any] = {
        "command": "python bench/hypersteer_eval.py " + " ".join(args.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "model": str(model),
        "settings": {
            "concepts": args.concepts,
            "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens,
            "factors": args.factors,
            "layer": layer,
        },
        "groups": {},
    }
    if hs is not None:
        keys = (
            "variant",
            "layer",
            "n_blocks",
            "n_examples",
            "steps_done",
            "lr",
            "seconds_targets",
            "seconds_training",
        )
        out["hypersteer"] = repr(hs)
        out["hypersteer_training"] = {k: hs.training.get(k) for k in keys}
        # How instruction-specific the vectors are: the mean pairwise cosine between
        # the vectors of the evaluated concepts on one base prompt (1.0: one vector).
        instr = [c for cs in groups.values() for c, _ in cs]
        out["hypersteer_specificity"] = vector_specificity(hs, instr, prompts[0])
        print("HyperSteer vectors:", out["hypersteer_specificity"])
    for name, cs in groups.items():
        t0 = time.perf_counter()
        rep = sl.evaluate.axbench(
            model,
            cs,
            prompts,
            methods=methods,
            factors=args.factors,
            max_new_tokens=args.max_new_tokens,
            layer=layer,
            name=name,
            progress=True,
        )
        secs = time.perf_counter() - t0
        print(f"{name} ({secs:.0f} s)\n{rep.summary()}")
        out["groups"][name] = {"seconds": round(secs, 1), "report": rep.to_dict()}
    return out


def table(res: dict[str, Any]) -> str:
    """The markdown table of a saved run: one row per method and concept group."""
    lines = [
        "| method | concepts | aggregate | concept | relevance | fluency | keyword rate "
        "| factors chosen | score/keyword disagreements |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group, g in res["groups"].items():
        rep = sl.evaluate.AxBenchReport.from_dict(g["report"])
        for row in rep.summary_rows():
            m = row["method"]
            chosen = rep.chosen.get(m, ())
            fs = ", ".join(f"{f:g}" for f in chosen if np.isfinite(f)) or "-"
            lines.append(
                f"| {m} | {group.replace('_', '-')} | {row['aggregate']:.3f} | "
                f"{row['concept_score']:.3f} | {row['relevance']:.3f} | {row['fluency']:.3f} | "
                f"{row['keyword_rate']:.2f} | {fs} | {row['disagreements']} |"
            )
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> None:
    """JSON, gzip-compressed when the name ends in ``.gz`` (the replies make it large)."""
    text = json.dumps(data, separators=(",", ":"))
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text)


def read_json(path: Path) -> Any:
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--hypersteer", help="a HyperSteer file (scripts/train_hypersteer.py)")
    ap.add_argument(
        "--layer",
        type=int,
        default=None,
        help="the layer of diffmean / optimized (default: the HyperSteer's)",
    )
    ap.add_argument(
        "--specificity",
        type=int,
        default=0,
        help="only print the specificity of the HyperSteer's vectors for the first N\n"
        "concepts of each split (no evaluation)",
    )
    ap.add_argument("--concepts", type=int, default=8, help="per group (held-in, held-out)")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--factors", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "hypersteer_eval_smollm2.json.gz"))
    ap.add_argument("--table", help="print the table of a saved run and exit")
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    if args.table:
        print(table(read_json(Path(args.table))))
        return
    if not args.hypersteer and ("hypersteer" in args.methods or args.specificity):
        ap.error("--hypersteer is required (or --table, or --methods without hypersteer)")
    if not args.hypersteer and args.layer is None:
        ap.error("--layer is required without --hypersteer")
    res = run(args)
    if args.specificity:
        print(json.dumps(res))
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), res)
    print(table(res))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
