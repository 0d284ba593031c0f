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
- W3: 16 rows x 64 tokens with one vector per row vs none;
- W5c: 128 greedy tokens of one prompt with a steering controller vs none, and W6c: 16
  rows x 64 tokens with the same controller on every row vs none (issue 12: "Decode
  with the controller costs <= 10% over unsteered decode at batch 1 and 16"). The
  controller has the method's default sizes (it reads the last ``CTRL_READ`` layers,
  ``CTRL_HIDDEN`` hidden units, steers ``ctrl_layers``) and seeded random weights, so its
  network costs what a trained one does; it runs at every step whatever its gate. Two
  gates: one that FIRES (``b2[0] = +20``: the patch lands on every steered layer at
  every step, and the last prompt token runs again with it, the worst case) and a
  QUIET one (``b2[0] = -1000``: the gate is exactly 0, so nothing is patched and the
  re-run is skipped). A gate of sigma(-20) = 2e-9 is not 0 and costs what a firing one
  does. Both sides of these pairs call the engine (``Model._core.generate``) directly.

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

# The controller of W5c / W6c: read layers (the last CTRL_READ), hidden width, strength,
# and the steered layers as a function of the model's depth (the method's default:
# n_layers // 4 .. 3 * n_layers // 4 - 1, i.e. 7..21 of SmolLM2-135M's 30 layers).
CTRL_READ = 4
CTRL_HIDDEN = 1024
CTRL_STRENGTH = 4.0
# Bias of the gate's output: sigma(+20) = 1 (fires), sigma(-1000) = 0 exactly (quiet).
CTRL_GATE_BIAS = {"fires": 20.0, "quiet": -1000.0}


def ctrl_layers(n_layers: int) -> list[int]:
    """The steered layers of the benchmark's controller."""
    return list(range(n_layers // 4, 3 * n_layers // 4))


def make_controller(model: Any, gate_bias: float, hidden: int, seed: int = 0) -> Any:
    """A controller with seeded random weights of the default shapes (float32):
    mean 0 / scale 1 over the k*d read inputs, W1 [k*d, hidden] and W2 [hidden, 1 + L]
    scaled by 1/sqrt(fan-in), b2[0] = `gate_bias`, unit directions [L, d]."""
    from steerlab import _core

    n, d = model.n_layers, model.d_model
    read = list(range(n - CTRL_READ, n))
    layers = ctrl_layers(n)
    kd, n_out = len(read) * d, 1 + len(layers)
    rng = np.random.default_rng(seed)

    def f32(a: Any) -> Any:
        return np.ascontiguousarray(a, dtype=np.float32)

    dirs = rng.standard_normal((len(layers), d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    b2 = np.zeros(n_out)
    b2[0] = gate_bias
    return _core.Controller(
        read,
        layers,
        hidden,
        f32(np.zeros(kd)),
        f32(np.ones(kd)),
        f32(rng.standard_normal((kd, hidden)) / np.sqrt(kd)),
        f32(np.zeros(hidden)),
        f32(rng.standard_normal((hidden, n_out)) / np.sqrt(hidden)),
        f32(b2),
        f32(dirs),
        CTRL_STRENGTH,
        d_model=d,
        n_layers=n,
    )


def pair_times(
    with_it: Callable[[], Any], without: Callable[[], Any], pairs: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(time with, time without) in seconds for each pair, the order alternating A B B A:
    wall-clock times, and the process's CPU times (all threads; on a machine shared with
    other jobs it leaves out the time this process waited for a core)."""
    wall, cpu = [], []
    for i in range(pairs):
        order = (with_it, without) if i % 2 == 0 else (without, with_it)
        w, c = {}, {}
        for fn in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            w[fn], c[fn] = time.perf_counter() - start, time.process_time() - start_cpu
        wall.append((w[with_it], w[without]))
        cpu.append((c[with_it], c[without]))
    return wall, cpu


def run(dtype: str, pairs: int, quick: bool, only: list[str] | None = None) -> dict[str, Any]:
    """The pairs for one dtype."""
    import steerlab
    from steerlab import _core

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
    w2, w2_ids = measure._exact_texts(model, 1, sizes["w2"][0], 2)
    w3, w3_ids = measure._exact_texts(model, sizes["w3"][0], sizes["w3"][1], 3)
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

    def core_gen(ids: list[list[int]], ctrl: Any, new: int) -> Callable[[], Any]:
        config = _core.GenConfig(max_new_tokens=new, ignore_eos=True)
        steering = None if ctrl is None else [[ctrl]] * len(ids)
        return lambda: model._core.generate(ids, steering, config)

    hidden = 64 if quick else CTRL_HIDDEN
    ctrl = {k: make_controller(model, b, hidden) for k, b in CTRL_GATE_BIAS.items()}
    cases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
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
    for gate, c in ctrl.items():
        cases[f"controller, {gate} (W5c)"] = (
            core_gen(w2_ids, c, sizes["w2"][1]),
            core_gen(w2_ids, None, sizes["w2"][1]),
        )
        cases[f"controller, {gate} (W6c)"] = (
            core_gen(w3_ids, c, sizes["w3"][2]),
            core_gen(w3_ids, None, sizes["w3"][2]),
        )
    out = {}
    for name, (with_it, without) in cases.items():
        if only and not any(o in name for o in only):
            continue
        with_it()  # warm-up of both paths
        without()
        times, cpu = pair_times(with_it, without, pairs)
        costs = [w / wo - 1.0 for w, wo in times]
        out[name] = {
            "median": statistics.median(costs),
            "min": min(costs),
            "max": max(costs),
            "pairs": costs,
            # The fastest run of each side: on a loaded machine the least disturbed one.
            "fastest": min(w for w, _ in times) / min(wo for _, wo in times) - 1.0,
            "seconds": times,
            # Median over the pairs of CPU time with / CPU time without - 1.
            "cpu_median": statistics.median(w / wo - 1.0 for w, wo in cpu),
            "cpu_seconds": cpu,
            "target": target(name),
        }
        print(
            f"   {dtype:>4} {name:<24} {out[name]['median'] * 100:+6.1f}% "
            f"(min {out[name]['min'] * 100:+.1f}%, max {out[name]['max'] * 100:+.1f}%; "
            f"fastest vs fastest {out[name]['fastest'] * 100:+.1f}%; "
            f"CPU time {out[name]['cpu_median'] * 100:+.1f}%)",
            flush=True,
        )
    return out


def target(name: str) -> float:
    """The cost a case may have: 10% for the controller (issue 12), 5% otherwise (issue 4)."""
    return 0.10 if name.startswith("controller") else 0.05


def table(result: dict[str, Any]) -> list[str]:
    """Markdown lines for RESULTS.md."""
    lines = [
        "| feature | dtype | cost, median over pairs | min - max | target | met |",
        "|---|---|---:|---:|---:|---|",
    ]
    for dtype, cases in result["dtypes"].items():
        for name, c in cases.items():
            limit = c.get("target", target(name))
            ok = "yes" if c["median"] <= limit else "**no**"
            lines.append(
                f"| {name} | {dtype} | {c['median'] * 100:+.1f}% | "
                f"{c['min'] * 100:+.1f}% - {c['max'] * 100:+.1f}% | ≤ {limit * 100:.0f}% | {ok} |"
            )
    return lines


def breakdown(rounds: int, quick: bool) -> None:
    """Where the controller's cost goes (prints, writes nothing): ms per new token (the
    whole call, prefill included, over the new tokens) of W5c and W6c without a controller, with a quiet / firing one of hidden width 8 (the
    reads, the gate's bookkeeping, the patch and the re-run, almost no network) and of
    the default width (plus the network's two matmuls), the fastest of `rounds`
    interleaved runs each."""
    import steerlab
    from steerlab import _core

    steerlab.set_progress(False)
    model = steerlab.Model.load()
    p2, n2, rows, p3, n3 = (20, 8, 4, 20, 4) if quick else (20, 128, 16, 20, 64)
    _, w2 = measure._exact_texts(model, 1, p2, 2)
    _, w3 = measure._exact_texts(model, rows, p3, 3)
    ctrl: dict[str, Any] = {"none": None}
    for hidden in (8, 64 if quick else CTRL_HIDDEN):
        for gate, bias in CTRL_GATE_BIAS.items():
            ctrl[f"{gate}, hidden {hidden}"] = make_controller(model, bias, hidden)
    for ids, new in ((w2, n2), (w3, n3)):
        config = _core.GenConfig(max_new_tokens=new, ignore_eos=True)
        steer = {k: None if c is None else [[c]] * len(ids) for k, c in ctrl.items()}
        times: dict[str, list[float]] = {k: [] for k in steer}
        for i in range(rounds + 1):  # the first round warms up
            for k in steer if i % 2 == 0 else reversed(steer):
                start = time.perf_counter()
                model._core.generate(ids, steer[k], config)
                if i:
                    times[k].append(time.perf_counter() - start)
        base = min(times["none"]) / new
        for k, ts in times.items():
            step = min(ts) / new
            print(
                f"   batch {len(ids):>2} x {new} tokens, {k:<20} {step * 1e3:6.2f} ms/token "
                f"({(step - base) * 1e3:+.3f} ms, {(step / base - 1) * 100:+5.1f}%)",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7, help="A/B pairs per case")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 pairs")
    parser.add_argument("--out", type=Path, default=BENCH / "overhead.json")
    parser.add_argument(
        "--dtypes", nargs="+", default=["auto", "f32"], choices=["auto", "f32"], help="models"
    )
    parser.add_argument(
        "--only", nargs="+", help="run only the cases whose name contains one of these"
    )
    parser.add_argument(
        "--breakdown",
        type=int,
        metavar="ROUNDS",
        help="print where the controller's cost goes (fastest of ROUNDS runs) and stop",
    )
    args = parser.parse_args()
    if args.breakdown:
        breakdown(args.breakdown, args.quick)
        return
    pairs = 2 if args.quick else args.pairs
    start = time.perf_counter()
    print(f"== in-process overhead: {pairs} A/B pairs per case", flush=True)
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(["bench/overhead.py", *sys.argv[1:]]),
        "quick": args.quick,
        "pairs": pairs,
        "dtypes": {d: run(d, pairs, args.quick, args.only) for d in args.dtypes},
    }
    result["wall_s"] = time.perf_counter() - start
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False) as f:
        f.write(json.dumps(result, indent=1) + "\n")
    os.replace(f.name, args.out)
    print("\n".join(table(result)))
    print(f"== wrote {args.out} in {result['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
