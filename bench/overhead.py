"""What capture, steering and per-row steering cost over the same forward without them,
measured inside one process (issue 4: "Capture, steering and per-row interventions must
cost <= 5% over the same forward without them").

``run_bench.py`` also times the variants, but each in its own process, minutes apart; on
a machine whose speed drifts by +-20% between minutes that cannot resolve a few percent.
Here both variants of a pair run back to back in one process on the loaded model,
alternating A B B A so that a linear drift cancels, and the cost is the median over the
pairs of time(with) / time(without) - 1.

Pairs (same sizes and token ids as run_bench.py's W1-W3):
- W1: ``capture`` of every layer at the last position vs ``logits`` (the same forward
  plus the LM head at the last position, 0.4% of the work: the capture cost is
  understated by at most that);
- W2: 128 greedy tokens with a vector at layer 15 vs none;
- W3: 16 rows x 64 tokens with one vector per row vs none.

Run in the bench environment (``make bench`` does, after run_bench.py)::

    .bench-venv/bin/python bench/overhead.py [--pairs 7] [--quick]

Writes ``bench/overhead.json``; RESULTS.md carries its table (``run_bench.py
--report-only`` re-reads it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAYON_NUM_THREADS", "2")

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import measure  # noqa: E402  (sizes, corpus and exact-length texts of the benchmark)


def pair_costs(with_it: Callable[[], Any], without: Callable[[], Any], pairs: int) -> list[float]:
    """time(with) / time(without) - 1 for each pair, the order alternating A B B A."""
    costs = []
    for i in range(pairs):
        order = (with_it, without) if i % 2 == 0 else (without, with_it)
        times = {}
        for fn in order:
            start = time.perf_counter()
            fn()
            times[fn] = time.perf_counter() - start
        costs.append(times[with_it] / times[without] - 1.0)
    return costs


def run(dtype: str, pairs: int, quick: bool) -> dict[str, Any]:
    """The three pairs for one dtype."""
    import steerlab

    steerlab.set_progress(False)
    model = steerlab.Model.load(dtype=dtype)
    sizes = {
        "w1": (measure.W1_PROMPTS, measure.W1_TOKENS),
        "w2": (measure.W2_PROMPT_TOKENS, measure.W2_NEW_TOKENS),
        "w3": (measure.W3_PROMPTS, measure.W3_PROMPT_TOKENS, measure.W3_NEW_TOKENS),
    }
    if quick:
        sizes = {"w1": (8, 16), "w2": (20, 8), "w3": (4, 20, 4)}
    w1, _ = measure._exact_texts(model, sizes["w1"][0], sizes["w1"][1], 1)
    w2, _ = measure._exact_texts(model, 1, sizes["w2"][0], 2)
    w3, _ = measure._exact_texts(model, sizes["w3"][0], sizes["w3"][1], 3)
    rng = np.random.default_rng(0)
    units = rng.standard_normal((1 + len(w3), model.d_model))
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    vec = (measure.STEER_COEF * units).astype(np.float32)
    layer = measure.STEER_LAYER
    layers = list(range(model.n_layers))

    def gen(texts: list[str], steering: Any, new: int) -> Callable[[], Any]:
        return lambda: model.generate(
            texts,
            steering=steering,
            max_new_tokens=new,
            batch_size=len(texts),
            ignore_eos=True,
            progress=False,
        )

    cases = {
        "capture (W1)": (
            lambda: model.capture(
                w1, layers=layers, position="last", batch_size=16, progress=False
            ),
            lambda: model.logits(w1, batch_size=16, progress=False),
        ),
        "steering (W2)": (
            gen(w2, {layer: vec[0]}, sizes["w2"][1]),
            gen(w2, None, sizes["w2"][1]),
        ),
        "per-row steering (W3)": (
            gen(w3, [{layer: v} for v in vec[1:]], sizes["w3"][2]),
            gen(w3, None, sizes["w3"][2]),
        ),
    }
    out = {}
    for name, (with_it, without) in cases.items():
        with_it()  # warm-up of both paths
        without()
        costs = pair_costs(with_it, without, pairs)
        out[name] = {
            "median": statistics.median(costs),
            "min": min(costs),
            "max": max(costs),
            "pairs": costs,
        }
        print(
            f"   {dtype:>4} {name:<24} {out[name]['median'] * 100:+6.1f}% "
            f"(min {out[name]['min'] * 100:+.1f}%, max {out[name]['max'] * 100:+.1f}%)",
            flush=True,
        )
    return out


def table(result: dict[str, Any]) -> list[str]:
    """Markdown lines for RESULTS.md."""
    lines = [
        "| feature | dtype | cost, median over pairs | min - max | target ≤ 5% |",
        "|---|---|---:|---:|---|",
    ]
    for dtype, cases in result["dtypes"].items():
        for name, c in cases.items():
            ok = "yes" if c["median"] <= 0.05 else "**no**"
            lines.append(
                f"| {name} | {dtype} | {c['median'] * 100:+.1f}% | "
                f"{c['min'] * 100:+.1f}% - {c['max'] * 100:+.1f}% | {ok} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7, help="A/B pairs per case")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 pairs")
    parser.add_argument("--out", type=Path, default=BENCH / "overhead.json")
    args = parser.parse_args()
    pairs = 2 if args.quick else args.pairs
    start = time.perf_counter()
    print(f"== in-process overhead: {pairs} A/B pairs per case", flush=True)
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(["bench/overhead.py", *sys.argv[1:]]),
        "quick": args.quick,
        "pairs": pairs,
        "dtypes": {dtype: run(dtype, pairs, args.quick) for dtype in ("auto", "f32")},
    }
    result["wall_s"] = time.perf_counter() - start
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False) as f:
        f.write(json.dumps(result, indent=1) + "\n")
    os.replace(f.name, args.out)
    print("\n".join(table(result)))
    print(f"== wrote {args.out} in {result['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
