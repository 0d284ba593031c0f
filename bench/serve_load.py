"""Bounded load test of the steering server (`steerlab.server`) on loopback, side by side
with llama-cpp-python's OpenAI-compatible server on the same GGUF file.

For each ``max_batch`` setting (default: 8, batched, against 1, one request at a time)
a server process is started (``steerlab.server.run`` in a subprocess, so client and
server do not share a GIL), and for each concurrency level a fixed number of streaming
chat requests is sent with the official async ``openai`` client, each with its own
steering (a rotation of none, a stored vector at +1 and -1, a raw vector) and its own
seed. Each level stops launching requests at a time cap. Reported per (server,
steering, concurrency): requests/s, generated tokens/s (completion tokens over the wall
time), mean completion tokens per request and the share that reached ``max_tokens``,
latency p50/p99 (send to last byte), time to first token p50/p99 and the mean rows per
engine batch (from the server's ``/health``); then the batched/unbatched throughput
ratio per concurrency level (median of the ratios of interleaved repeats).

The peer: when a Python with llama-cpp-python's server is found (``--peer-python``;
default ``.bench-venv/bin/python`` if it can import ``llama_cpp.server``), its server
(``python -m llama_cpp.server``) is started on the same GGUF file with the same thread
count, and it and each steerlab server also get the same requests *without* steering
(the peer has no per-request steering): same prompts, ``max_tokens``, temperature,
``top_p`` 1, seeds, chat endpoint, streaming. The peer's other samplers are switched
off (``top_k`` 0, ``min_p`` 0, ``repeat_penalty`` 1: steerlab applies none of them),
``--interrupt_requests False`` (its default cuts a stream short as soon as another
request waits) and ``--logits_all False`` (its default computes the LM head at every
prompt position). Its streamed chunks carry no ``usage``, so its completion tokens are
``max_tokens`` when ``finish_reason`` is ``length`` and otherwise the token count of the
returned text (its ``/extras/tokenize/count``, after the level, untimed). Reported:
steerlab/peer tokens/s on that unsteered work per concurrency level and steerlab
``max_batch`` (median of the per-repeat ratios). llama-cpp-python's server does not
batch: it holds one ``Llama`` (one context, one sequence) behind a global lock, so
concurrent requests run one after another in arrival order (like steerlab with
``max_batch`` 1); it reuses the KV cache of the previous prompt's common prefix (the
chat template's system prompt). Its llama.cpp threads meet at spinning barriers: on a
machine with fewer free cores than ``--threads`` a decode step can take seconds, so
measure on a quiet machine (and compare ``--threads 1`` if in doubt).

Threads: steerlab's engine pool gets ``RAYON_NUM_THREADS`` = ``--threads``; the peer
``--n_threads`` = ``--n_threads_batch`` = ``--threads`` (default: the CPU count).

Peer setup (a venv of its own; ``make bench``'s ``.bench-venv`` has llama-cpp-python but
not its server's dependencies)::

    python3.11 -m venv /work/peer-venv
    /work/peer-venv/bin/pip install 'llama-cpp-python[server]==0.3.36'
    # or, into make bench's venv: .bench-venv/bin/pip install 'llama-cpp-python[server]==0.3.36'

Usage: the figures in bench/RESULTS.md came from this command without the
``--threads`` and ``--peer-python`` options (no peer then); with the peer::

    PYTHONPATH=python python bench/serve_load.py --requests 16 --concurrency 1 4 8 \\
        --max-tokens 32 --repeats 3 --time-cap 90 --threads 2 \\
        --peer-python /work/peer-venv/bin/python --out bench/results/serve_load.json

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

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

# llama-cpp-python's sampling chain with only temperature and top_p, as steerlab's.
PEER_SAMPLING = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
PEER_NAME = "llama-cpp-python"

KEYS = (
    "requests_per_s",
    "tokens_per_s",
    "mean_completion_tokens",
    "share_at_max_tokens",
    "latency_p50_s",
    "latency_p99_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "wall_s",
)


@dataclass
class Target:
    """One server and the steering its requests carry."""

    server: str  # "steerlab" or PEER_NAME
    max_batch: int | None  # steerlab's; None for the peer
    steering: str  # "rotation" or "none"
    url: str
    model_id: str

    @property
    def label(self) -> str:
        name = self.server if self.max_batch is None else f"steerlab mb={self.max_batch}"
        return f"{name} / {self.steering}"


@contextlib.contextmanager
def _server(args: argparse.Namespace, folder: Path, max_batch: int) -> Iterator[str]:
    """A server process (``steerlab.server.run``) on a free port; yields its URL."""
    port = _free_port()
    code = SERVER.format(
        model=args.model,
        vectors=str(folder),
        port=port,
        max_batch=max_batch,
        max_queue=max(64, max(args.concurrency)),
        window=args.batch_window_ms,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), env.get("PYTHONPATH", "")])
    env["RAYON_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-c", code]
    with _process(cmd, env, folder / f"server_{max_batch}.log", port, "/health") as url:
        yield url


@contextlib.contextmanager
def _peer_server(args: argparse.Namespace, folder: Path) -> Iterator[str]:
    """llama-cpp-python's server on a free port; yields its URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = str(args.threads)
    # fmt: off
    cmd = [
        args.peer_python, "-m", "llama_cpp.server",
        "--model", os.path.abspath(args.model),  # the peer runs in `folder`
        "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
        "--n_ctx", str(args.peer_n_ctx),
        "--host", "127.0.0.1", "--port", str(port),
        "--interrupt_requests", "False",
        "--logits_all", "False",
        "--verbose", "False",
    ]
    # fmt: on
    with _process(cmd, env, folder / "peer_server.log", port, "/v1/models", cwd=folder) as url:
        yield url


@contextlib.contextmanager
def _process(
    cmd: list[str], env: dict[str, str], log_path: Path, port: int, ready: str,
    cwd: Path | None = None,
) -> Iterator[str]:  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=cwd)
        try:
            _wait_healthy(f"{url}{ready}", proc, 180)
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


def _make_vectors(model_path: str, folder: Path) -> list[Any]:
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
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def _peer_info(python: str) -> dict[str, Any] | None:
    """The peer's version when `python` can import llama-cpp-python's server, else None."""
    code = (
        "import json, llama_cpp, llama_cpp.server.app; print(json.dumps({"
        "'llama_cpp_python': llama_cpp.__version__, "
        "'system_info': llama_cpp.llama_print_system_info().decode().strip()}))"
    )
    try:
        out = subprocess.run(
            [python, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tempfile.gettempdir(),  # not a folder whose files shadow the stdlib
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return {"python": python, **json.loads(out.stdout.strip().splitlines()[-1])}


async def _one(
    client: Any, target: Target, i: int, steering: Any, max_tokens: int
) -> dict[str, Any]:
    peer = target.server == PEER_NAME
    if peer:
        extra: dict[str, Any] = {"extra_body": PEER_SAMPLING}
    else:  # llama-cpp-python ignores stream_options (its chunks carry no usage)
        extra = {"stream_options": {"include_usage": True}}
        if steering is not None:
            extra["extra_body"] = {"steering": steering}
    t0 = time.perf_counter()
    first = None
    tokens = None
    text: list[str] = []
    finish = None
    stream = await client.chat.completions.create(
        model=target.model_id,
        messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        max_tokens=max_tokens,
        temperature=0.7,
        top_p=1.0,
        seed=i,
        stream=True,
        **extra,
    )
    async for chunk in stream:
        if chunk.choices:
            piece = chunk.choices[0].delta.content
            if piece:
                if first is None:
                    first = time.perf_counter() - t0
                text.append(piece)
            if chunk.choices[0].finish_reason is not None:
                finish = chunk.choices[0].finish_reason
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - t0
    return {
        "latency": total,
        "ttft": first if first is not None else total,
        "tokens": tokens,
        "finish": finish,
        "text": "".join(text),
    }


async def _peer_tokens(url: str, results: list[dict[str, Any]], max_tokens: int) -> None:
    """Fill in the peer's completion tokens: max_tokens at a `length` finish, else the
    token count of the text (without what tokenizing an empty text gives, e.g. BOS)."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def count(text: str) -> int:
            r = await http.post("/extras/tokenize/count", json={"input": text})
            r.raise_for_status()
            return int(r.json()["count"])

        base = await count("")
        for r in results:
            if r["finish"] == "length":
                r["tokens"] = max_tokens
            else:
                r["tokens"] = await count(r["text"]) - base


async def _level(
    target: Target, n: int, concurrency: int, mix: list[Any], max_tokens: int, cap: float
) -> dict[str, Any]:
    import httpx
    import openai

    url = target.url
    peer = target.server == PEER_NAME
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    batches = None if peer else httpx.get(f"{url}/health").json()["batches"]
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
            results.append(await _one(client, target, i, mix[i % len(mix)], max_tokens))

    await asyncio.gather(*(task(i) for i in range(n)))
    wall = time.perf_counter() - start
    await client.close()
    if peer:
        await _peer_tokens(url, results, max_tokens)
    else:
        batches = httpx.get(f"{url}/health").json()["batches"] - batches
    missing = [r for r in results if r["tokens"] is None]
    if missing:
        raise RuntimeError(f"{target.label}: {len(missing)} responses without usage")
    lat = np.array([r["latency"] for r in results])
    ttft = np.array([r["ttft"] for r in results])
    counts = np.array([r["tokens"] for r in results])
    return {
        "concurrency": concurrency,
        "completed": len(results),
        "skipped_by_time_cap": skipped,
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "tokens": int(counts.sum()),
        "tokens_per_s": float(counts.sum()) / wall,
        "mean_completion_tokens": float(counts.mean()),
        "share_at_max_tokens": float(np.mean(counts >= max_tokens)),
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p99_s": float(np.percentile(lat, 99)),
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p99_s": float(np.percentile(ttft, 99)),
        "mean_batch_rows": None if batches is None else len(results) / max(batches, 1),
    }


def _paired_ratio(
    runs: list[dict[str, Any]], num: dict[str, Any], den: dict[str, Any], repeats: int
) -> dict[str, Any]:
    """Median over repeats of tokens/s of the `num` run over the `den` run."""

    def pick(match: dict[str, Any], k: int) -> float:
        return float(
            next(r for r in runs if r["repeat"] == k and all(r[f] == v for f, v in match.items()))[
                "tokens_per_s"
            ]
        )

    per_rep = [pick(num, k) / pick(den, k) for k in range(repeats)]
    return {"median": float(np.median(per_rep)), "per_repeat": per_rep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF file (default: the embedded model)")
    ap.add_argument("--requests", type=int, default=32, help="requests per level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--max-batch", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--time-cap", type=float, default=120.0, help="seconds per level")
    ap.add_argument("--batch-window-ms", type=float, default=5.0, help="the server's window")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1,
        help="threads of each server: steerlab RAYON_NUM_THREADS, the peer --n_threads and "
        "--n_threads_batch (default: the CPU count)",
    )  # fmt: skip
    default_peer = ROOT / ".bench-venv" / "bin" / "python"
    ap.add_argument(
        "--peer-python", default=None,
        help="a Python with llama-cpp-python[server] (default: .bench-venv/bin/python if "
        "it can import llama_cpp.server)",
    )  # fmt: skip
    ap.add_argument("--no-peer", action="store_true", help="skip the llama-cpp-python rows")
    ap.add_argument("--peer-n-ctx", type=int, default=2048, help="the peer's --n_ctx")
    ap.add_argument("--out", default="bench/results/serve_load.json")
    args = ap.parse_args()

    from steerlab.catalog import default_model_path

    if args.model is None:
        args.model = default_model_path()
    peer = None
    if not args.no_peer:
        if args.peer_python is not None:
            args.peer_python = os.path.abspath(args.peer_python)  # runs in another folder
            peer = _peer_info(args.peer_python)
            if peer is None:
                ap.error(
                    f"--peer-python {args.peer_python!r} cannot import llama_cpp.server; "
                    "install it with: <python> -m pip install 'llama-cpp-python[server]==0.3.36'"
                )
        elif default_peer.exists():
            peer = _peer_info(str(default_peer))
            if peer is not None:
                args.peer_python = str(default_peer)
        if peer is None:
            print(
                "no peer: no --peer-python given and .bench-venv/bin/python cannot import "
                "llama_cpp.server; measuring steerlab only",
                file=sys.stderr,
            )
        elif not str(args.model).endswith(".gguf"):
            ap.error(f"--model {args.model!r}: the peer needs a GGUF file")

    load_start = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        rotation = _make_vectors(args.model, folder)
        none_mix: list[Any] = [None]
        import httpx

        targets = []
        for mb in args.max_batch:
            url = stack.enter_context(_server(args, folder, mb))
            model_id = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            targets.append(Target("steerlab", mb, "rotation", url, model_id))
            if peer is not None:
                targets.append(Target("steerlab", mb, "none", url, model_id))
        if peer is not None:
            url = stack.enter_context(_peer_server(args, folder))
            model_id = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            targets.append(Target(PEER_NAME, None, "none", url, model_id))
        mixes = {"rotation": rotation, "none": none_mix}
        for t in targets:  # warm-up: one request of each steering kind
            asyncio.run(_level(t, len(mixes[t.steering]), 1, mixes[t.steering], 4, 60))
        # Settings interleaved within each repeat, so drift in the machine's load hits
        # them alike; the ratio is taken per repeat (paired), then its median.
        for rep in range(args.repeats):
            for c in args.concurrency:
                for t in targets:
                    rec = asyncio.run(
                        _level(
                            t, args.requests, c, mixes[t.steering], args.max_tokens, args.time_cap
                        )
                    )
                    rec.update(
                        server=t.server, max_batch=t.max_batch, steering=t.steering, repeat=rep
                    )
                    runs.append(rec)
                    print(
                        f"repeat {rep} {t.label} concurrency={c}: "
                        f"{rec['requests_per_s']:.2f} req/s, {rec['tokens_per_s']:.1f} tok/s, "
                        f"{rec['mean_completion_tokens']:.1f} tok/req",
                        flush=True,
                    )

    summary = []
    ratios: dict[str, dict[str, Any]] = {}
    peer_ratios: dict[str, dict[str, Any]] = {}
    for c in args.concurrency:
        for t in targets:
            rs = [
                r for r in runs if r["concurrency"] == c and r["server"] == t.server
                and r["max_batch"] == t.max_batch and r["steering"] == t.steering
            ]  # fmt: skip
            row: dict[str, Any] = {
                "server": t.server, "max_batch": t.max_batch, "steering": t.steering,
                "concurrency": c, "completed": sum(r["completed"] for r in rs),
            }  # fmt: skip
            for key in KEYS:
                row[key] = float(np.median([r[key] for r in rs]))
            rows = [r["mean_batch_rows"] for r in rs]
            row["mean_batch_rows"] = None if None in rows else float(np.median(rows))
            summary.append(row)
        if 1 in args.max_batch and len(args.max_batch) > 1:
            best = max(mb for mb in args.max_batch if mb != 1)
            steered = {"server": "steerlab", "steering": "rotation", "concurrency": c}
            ratios[str(c)] = _paired_ratio(
                runs, {**steered, "max_batch": best}, {**steered, "max_batch": 1}, args.repeats
            )
        if peer is not None:
            den = {"server": PEER_NAME, "concurrency": c}
            peer_ratios[str(c)] = {
                f"max_batch={mb}": _paired_ratio(
                    runs,
                    {"server": "steerlab", "steering": "none", "concurrency": c, "max_batch": mb},
                    den,
                    args.repeats,
                )
                for mb in args.max_batch
            }
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args),
        "steering_mix": ["none", "joy +1", "joy -1", "raw vector layer 8"],
        "sampling": {"temperature": 0.7, "top_p": 1.0, "seed": "the request's index"},
        "peer": None
        if peer is None
        else {
            **peer,
            "sampling_extra": PEER_SAMPLING,
            "flags": "--interrupt_requests False --logits_all False --verbose False",
            "completion_tokens": "max_tokens at finish_reason=length, else the token count "
            "of the text (/extras/tokenize/count)",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "summary_median_over_repeats": summary,
        "tokens_per_s_ratio_batched_over_unbatched": ratios,
        "tokens_per_s_ratio_steerlab_over_peer_unsteered": peer_ratios,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    print(
        f"{'server / steering':<30} {'conc':>4} {'done':>4} {'req/s':>6} {'tok/s':>7} "
        f"{'tok/rq':>6} {'p50 s':>6} {'p99 s':>6} {'ttft50':>6} {'ttft99':>6} {'rows':>5}"
        f"   (medians over {args.repeats} repeats)"
    )
    for r in summary:
        name = r["server"] if r["max_batch"] is None else f"steerlab mb={r['max_batch']}"
        rows = "-" if r["mean_batch_rows"] is None else f"{r['mean_batch_rows']:.2f}"
        print(
            f"{name + ' / ' + r['steering']:<30} {r['concurrency']:>4} {r['completed']:>4} "
            f"{r['requests_per_s']:>6.2f} {r['tokens_per_s']:>7.1f} "
            f"{r['mean_completion_tokens']:>6.1f} {r['latency_p50_s']:>6.2f} "
            f"{r['latency_p99_s']:>6.2f} {r['ttft_p50_s']:>6.2f} {r['ttft_p99_s']:>6.2f} {rows:>5}"
        )
    for c, ratio in ratios.items():
        shown = ", ".join(f"{x:.2f}" for x in ratio["per_repeat"])
        print(
            f"concurrency {c}: batched/unbatched tokens/s (steering rotation) = "
            f"{ratio['median']:.2f}x (per repeat: {shown})"
        )
    for c, by_mb in peer_ratios.items():
        for mb, ratio in by_mb.items():
            shown = ", ".join(f"{x:.2f}" for x in ratio["per_repeat"])
            print(
                f"concurrency {c}: steerlab {mb} / {PEER_NAME} tokens/s (unsteered) = "
                f"{ratio['median']:.2f}x (per repeat: {shown})"
            )


if __name__ == "__main__":
    main()
