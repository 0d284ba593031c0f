"""Bounded load test of the steering server (`steerlab.server`) on loopback.

For each ``max_batch`` setting (default: 8, batched, against 1, one request at a time)
a server process is started (``steerlab.server.run`` in a subprocess, so client and
server do not share a GIL), and for each concurrency level a fixed number of streaming
chat requests is sent with the official async ``openai`` client, each with its own
steering (a rotation of none, a stored vector at +1 and -1, a raw vector) and its own
seed. Each level stops launching requests at a time cap. Reported per (max_batch,
concurrency): requests/s, generated tokens/s (``usage.completion_tokens`` over the
wall time), latency p50/p99 (send to last byte), time to first token p50 and the mean
rows per engine batch (from the server's ``/health``), then the batched/unbatched
throughput ratio per concurrency level (median of the ratios of interleaved repeats).

Usage (the figures in bench/RESULTS.md)::

    PYTHONPATH=python python bench/serve_load.py --requests 16 --concurrency 1 4 8 \\
        --max-tokens 32 --repeats 3 --time-cap 90 --out bench/results/serve_load.json

Writes JSON (settings, machine, one record per run) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PROMPTS = [
    "Tell me about your weekend.",
    "What should I cook tonight?",
    "Describe the city you live in.",
    "Give me advice for a job interview.",
    "What is a good book to read?",
    "How was the concert last night?",
    "Write a short note to a neighbour.",
    "What do you think about rainy days?",
]

SERVER = """
import sys
from steerlab.server import run
run({model!r}, vectors={vectors!r}, port={port}, max_batch={max_batch}, max_queue={max_queue},
    batch_window_ms={window})
"""


KEYS = (
    "requests_per_s",
    "tokens_per_s",
    "latency_p50_s",
    "latency_p99_s",
    "ttft_p50_s",
    "wall_s",
    "mean_batch_rows",
)


@contextlib.contextmanager
def _server(args: argparse.Namespace, folder: Path, max_batch: int) -> Iterator[str]:
    """A server process (``steerlab.server.run``) on a free port; yields its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    code = SERVER.format(
        model=args.model,
        vectors=str(folder),
        port=port,
        max_batch=max_batch,
        max_queue=max(64, max(args.concurrency)),
        window=args.batch_window_ms,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent / "python"), env.get("PYTHONPATH", "")]
    )
    log_path = folder / f"server_{max_batch}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=log)
        try:
            _wait_healthy(url, proc, 120)
            yield url
        except BaseException:
            log.flush()
            print(log_path.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _make_vectors(model_path: str | None, folder: Path) -> list[Any]:
    """Save a sentiment vector into `folder`; the steering mix the requests rotate."""
    import steerlab as sl

    model = sl.Model.load(model_path)
    pairs = sl.ContrastPairs.from_texts(sl.datasets.sentiment_pairs()[:16])
    vec = sl.SteeringVector.train(model, pairs, layers=[12], progress=False)
    (vec / max(vec.norms().values()) * 16.0).save(folder / "joy.safetensors")
    raw = np.random.default_rng(0).standard_normal(model.d_model)
    raw = (raw / np.linalg.norm(raw) * 12.0).tolist()
    return [None, {"joy": 1.0}, {"joy": -1.0}, [{"vector": raw, "layer": 8, "strength": 1.0}]]


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


async def _one(
    client: Any, model_id: str, i: int, steering: Any, max_tokens: int
) -> dict[str, Any]:
    extra = {} if steering is None else {"extra_body": {"steering": steering}}
    t0 = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        max_tokens=max_tokens,
        temperature=0.7,
        seed=i,
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - t0
    return {"latency": total, "ttft": first if first is not None else total, "tokens": tokens}


async def _level(
    url: str, model_id: str, n: int, concurrency: int, mix: list[Any], max_tokens: int, cap: float
) -> dict[str, Any]:
    import httpx
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    batches = httpx.get(f"{url}/health").json()["batches"]
    sem = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    skipped = 0

    async def task(i: int) -> None:
        nonlocal skipped
        async with sem:
            if time.perf_counter() - start > cap:
                skipped += 1
                return
            results.append(await _one(client, model_id, i, mix[i % len(mix)], max_tokens))

    await asyncio.gather(*(task(i) for i in range(n)))
    wall = time.perf_counter() - start
    await client.close()
    batches = httpx.get(f"{url}/health").json()["batches"] - batches
    lat = np.array([r["latency"] for r in results])
    ttft = np.array([r["ttft"] for r in results])
    tokens = int(sum(r["tokens"] for r in results))
    return {
        "concurrency": concurrency,
        "completed": len(results),
        "skipped_by_time_cap": skipped,
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p99_s": float(np.percentile(lat, 99)),
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "mean_batch_rows": len(results) / max(batches, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF file or HF folder (default: embedded)")
    ap.add_argument("--requests", type=int, default=32, help="requests per level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--max-batch", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--time-cap", type=float, default=120.0, help="seconds per level")
    ap.add_argument("--batch-window-ms", type=float, default=5.0, help="the server's window")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    ap.add_argument("--out", default="bench/results/serve_load.json")
    args = ap.parse_args()

    load_start = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        mix = _make_vectors(args.model, folder)
        urls = {mb: stack.enter_context(_server(args, folder, mb)) for mb in args.max_batch}
        import httpx

        model_id = httpx.get(f"{urls[args.max_batch[0]]}/v1/models").json()["data"][0]["id"]
        for url in urls.values():  # warm-up: one request of each steering kind
            asyncio.run(_level(url, model_id, len(mix), 1, mix, 4, 60))
        # Settings interleaved within each repeat, so drift in the machine's load hits
        # them alike; the ratio is taken per repeat (paired), then its median.
        for rep in range(args.repeats):
            for c in args.concurrency:
                for mb, url in urls.items():
                    rec = asyncio.run(
                        _level(url, model_id, args.requests, c, mix, args.max_tokens, args.time_cap)
                    )
                    rec.update(max_batch=mb, repeat=rep)
                    runs.append(rec)
                    print(
                        f"repeat {rep} max_batch={mb} concurrency={c}: "
                        f"{rec['requests_per_s']:.2f} req/s, {rec['tokens_per_s']:.1f} tok/s",
                        flush=True,
                    )

    summary = []
    ratios: dict[str, dict[str, Any]] = {}
    for c in args.concurrency:
        for mb in args.max_batch:
            rs = [r for r in runs if r["concurrency"] == c and r["max_batch"] == mb]
            row = {"max_batch": mb, "concurrency": c, "completed": sum(r["completed"] for r in rs)}
            for key in KEYS:
                row[key] = float(np.median([r[key] for r in rs]))
            summary.append(row)
        if 1 in args.max_batch and len(args.max_batch) > 1:
            best = max(mb for mb in args.max_batch if mb != 1)
            per_rep = [
                next(r for r in runs if r["concurrency"] == c and r["max_batch"] == best
                     and r["repeat"] == k)["tokens_per_s"]
                / next(r for r in runs if r["concurrency"] == c and r["max_batch"] == 1
                       and r["repeat"] == k)["tokens_per_s"]
                for k in range(args.repeats)
            ]  # fmt: skip
            ratios[str(c)] = {"median": float(np.median(per_rep)), "per_repeat": per_rep}
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args),
        "steering_mix": ["none", "joy +1", "joy -1", "raw vector layer 8"],
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "summary_median_over_repeats": summary,
        "tokens_per_s_ratio_batched_over_unbatched": ratios,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    print(
        f"{'max_batch':>9} {'conc':>4} {'done':>4} {'req/s':>6} {'tok/s':>7} "
        f"{'p50 s':>6} {'p99 s':>6} {'ttft50':>6} {'rows':>5}   (medians over {args.repeats} repeats)"
    )
    for r in summary:
        print(
            f"{r['max_batch']:>9} {r['concurrency']:>4} {r['completed']:>4} "
            f"{r['requests_per_s']:>6.2f} {r['tokens_per_s']:>7.1f} {r['latency_p50_s']:>6.2f} "
            f"{r['latency_p99_s']:>6.2f} {r['ttft_p50_s']:>6.2f} {r['mean_batch_rows']:>5.2f}"
        )
    for c, ratio in ratios.items():
        shown = ", ".join(f"{x:.2f}" for x in ratio["per_repeat"])
        print(
            f"concurrency {c}: batched/unbatched tokens/s = {ratio['median']:.2f}x "
            f"(per repeat: {shown})"
        )


if __name__ == "__main__":
    main()
