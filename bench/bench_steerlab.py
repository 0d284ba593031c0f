"""First throughput numbers for steerlab on the embedded default model (SmolLM2-135M).

Two workloads, each for ``dtype="auto"`` (Q4_1 weights kept quantized) and ``"f32"``:

- capture: 64 prompts of about 64 tokens, the residual stream after every block at the
  last position, batch 16 -> prompt tokens per second;
- steered decode: one 20-token prompt, 128 greedy new tokens, batch 1, a vector added
  after block 15 at every position -> new tokens per second (prefill included).

Each number is the median of ``--runs`` timed runs after one warm-up run. Not part of
the test suite::

    python bench/bench_steerlab.py [--runs 3] [--dtypes auto f32]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import steerlab

N_CAPTURE_PROMPTS = 64
CAPTURE_TOKENS = 64
CAPTURE_BATCH = 16
DECODE_PROMPT_TOKENS = 20
DECODE_NEW_TOKENS = 128
STEER_LAYER = 15

_SENTENCES = [
    "The river wound slowly through the valley, past farms and old stone bridges.",
    "Researchers measured the temperature of the lake every morning for a year.",
    "She opened the box and found a stack of letters tied with a blue ribbon.",
    "A good recipe for bread needs flour, water, salt, yeast and a little patience.",
    "The committee met on Tuesday to discuss the budget for the coming season.",
    "Trains leave the central station every fifteen minutes during the day.",
    "He practised the piano for an hour before dinner, then read until late.",
    "The museum's new wing holds paintings from the early twentieth century.",
    "Clouds gathered over the hills and the first drops of rain began to fall.",
    "Engineers tested the bridge with heavy trucks before it opened to traffic.",
    "Our neighbours planted tomatoes, beans and sunflowers along the fence.",
    "The library extended its opening hours for students during the exam period.",
]


def _texts(model: steerlab.Model, n: int, n_tokens: int, seed: int) -> list[str]:
    """`n` distinct texts of about `n_tokens` tokens each, cut on token boundaries."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        order = rng.permutation(len(_SENTENCES))
        text = " ".join(_SENTENCES[i] for i in order)
        ids = model.encode(text, add_special_tokens=False)[:n_tokens]
        out.append(model.decode(ids))
    return out


def _median_time(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(dtype: str, runs: int) -> None:
    start = time.perf_counter()
    model = steerlab.Model.load(dtype=dtype)
    load_s = time.perf_counter() - start
    print(f"\n== dtype={dtype}: {model!r} (loaded in {load_s:.2f} s)")

    texts = _texts(model, N_CAPTURE_PROMPTS, CAPTURE_TOKENS, seed=0)
    n_tokens = sum(len(model.encode(t)) for t in texts)
    layers = list(range(model.n_layers))

    def capture() -> object:
        return model.capture(
            texts, layers=layers, position="last", batch_size=CAPTURE_BATCH, progress=False
        )

    t = _median_time(capture, runs)
    print(
        f"capture: {N_CAPTURE_PROMPTS} prompts, {n_tokens} tokens, {len(layers)} layers, "
        f"batch {CAPTURE_BATCH}: {t:.3f} s -> {n_tokens / t:,.0f} tokens/s"
    )

    prompt = _texts(model, 1, DECODE_PROMPT_TOKENS, seed=1)[0]
    rng = np.random.default_rng(2)
    vec = rng.standard_normal(model.d_model).astype(np.float32)
    vec *= 2.0 / np.linalg.norm(vec)  # small: steers, but keeps the text going
    steering = {STEER_LAYER: vec}
    new_tokens: list[int] = []

    def decode() -> object:
        out = model.generate(
            [prompt],
            steering=steering,
            max_new_tokens=DECODE_NEW_TOKENS,
            return_ids=True,
            progress=False,
        )
        new_tokens[:] = out[0]
        return out

    t = _median_time(decode, runs)
    n_prompt = len(model.encode(prompt))
    print(
        f"steered decode: {n_prompt}-token prompt, {len(new_tokens)} new tokens, batch 1, "
        f"vector at layer {STEER_LAYER}: {t:.3f} s -> {len(new_tokens) / t:,.1f} tokens/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per number (median)")
    parser.add_argument("--dtypes", nargs="+", default=["auto", "f32"], choices=["auto", "f32"])
    args = parser.parse_args()
    steerlab.set_progress(False)
    print(
        f"steerlab {steerlab.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, median of {args.runs} runs after a warm-up"
    )
    for dtype in args.dtypes:
        bench(dtype, args.runs)


if __name__ == "__main__":
    main()
