"""Train a HyperSteer hypernetwork (Sun et al. 2025) on steerlab's steering-prompt data,
with progress, checkpoints every K steps and resume.

Full size (the default quantized SmolLM2-135M-Instruct; every held-in instruction paired
with 6 train base prompts; N = 4 copied blocks; the contract's defaults otherwise)::

    .venv/bin/python scripts/train_hypersteer.py --out runs/hypersteer

Resume after an interruption (Ctrl-C, a lost machine)::

    .venv/bin/python scripts/train_hypersteer.py --out runs/hypersteer --resume

Keyword-filtered targets (the run of bench/RESULTS.md, "Issue 13": SmolLM2-135M mostly
ignores the instruction when it writes its own targets, so keep the pairs whose target
shows it)::

    .venv/bin/python scripts/train_hypersteer.py --out runs/hypersteer \\
        --pairs-per-instruction 6 --keyword-filter --epochs 3

Small (a smoke run, about a minute; notebooks/07_hypersteer.ipynb runs about this)::

    .venv/bin/python scripts/train_hypersteer.py --out /tmp/hs_small --instructions 16 \\
        --pairs-per-instruction 1 --n-blocks 1 --max-target-tokens 16

Writes into ``--out``: ``hypersteer.safetensors`` (the checkpoint, then the result: load
it with ``sl.HyperSteer.load(path, model)``), ``history.json`` (per-step loss and the
run's settings and timings), ``loss.png`` (``hs.plot()``) and ``targets.json`` (the
self-distilled targets, written once and reused by later runs on the same data). Validation: a held-out
set of ``--validation`` pairs (held-out instructions on validation base prompts) whose
cross-entropy is recorded as ``val_ce``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import steerlab as sl


def load_model(which: str, dtype: str = "auto") -> sl.Model:
    """``smollm2`` (the embedded default), ``gemma`` (Gemma-3-270M from its PyPI
    packages) or a path."""
    if which == "smollm2":
        return sl.Model.load(None, dtype=dtype)
    if which == "gemma":
        return sl.Model.load(sl.models.gemma3_270m_path(), dtype=dtype)
    return sl.Model.load(which, dtype=dtype)


def keyword_filter(
    model: sl.Model,
    data: sl.datasets.SteeringPrompts,
    steer: list[str],
    base: list[str],
    greedy: list[str],
    args: argparse.Namespace,
    out: Path,
) -> tuple[list[str], list[str], list[str], dict]:
    """Pairs whose target follows the instruction by the keyword check: the greedy
    target if it hits a keyword of its instruction, else the first of `args.samples`
    sampled targets (cached in ``samples.json``) that does; pairs of instructions whose
    keywords are unreliable (formats) keep the greedy target; the rest are dropped."""
    kw = dict(zip(data.instructions, data.keywords, strict=True))
    ok = dict(zip(data.instructions, data.keywords_reliable, strict=True))
    cache = out / "samples.json"
    key = {"steer": steer, "base": base, "n": args.max_target_tokens, "t": args.temperature}
    samples: list[list[str]] = []
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            samples = saved["samples"]
    for k in range(len(samples), args.samples):
        samples.append(
            sl.hypersteer.distill_targets(
                model,
                steer,
                base,
                max_target_tokens=args.max_target_tokens,
                temperature=args.temperature,
                seed=args.seed + 1 + k,
                progress=True,
            )
        )
        cache.write_text(json.dumps({"key": key, "samples": samples}))
    kept: list[tuple[str, str, str]] = []
    counts = {
        "pairs": len(steer),
        "greedy_hit": 0,
        "sampled_hit": 0,
        "unreliable_kept": 0,
        "dropped": 0,
        # Chance level: greedy targets with a keyword of another (seeded random)
        # instruction than their own.
        "greedy_hit_other_instruction": 0,
    }
    reliable = sorted({s for s in steer if ok[s]})
    rng = random.Random(args.seed)
    for i, (s, b, g) in enumerate(zip(steer, base, greedy, strict=True)):
        if not ok[s]:
            kept.append((s, b, g))
            counts["unreliable_kept"] += 1
            continue
        other = rng.choice([r for r in reliable if r != s] or [s])
        counts["greedy_hit_other_instruction"] += sl.datasets.keyword_hits(g, kw[other]) > 0
        cands = [g] + [smp[i] for smp in samples[: args.samples]]
        hit = next((c for c in cands if sl.datasets.keyword_hits(c, kw[s]) > 0), None)
        if hit is None:
            counts["dropped"] += 1
            continue
        counts["greedy_hit" if hit is g else "sampled_hit"] += 1
        kept.append((s, b, hit))
    keep_s, keep_b, keep_t = (list(c) for c in zip(*kept, strict=True)) if kept else ([], [], [])
    return keep_s, keep_b, keep_t, counts


def command(args: argparse.Namespace) -> str:
    """The command-line flags that reproduce `args` (flags set, values given)."""
    parts = []
    for k, v in vars(args).items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            parts.append(flag)
        elif v is not None and v is not False:
            parts.append(f"{flag} {v}")
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2, gemma or a path")
    ap.add_argument("--dtype", default="auto", help="auto (as stored: quantized) or f32")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--variant", default="cross_attention", choices=sl.hypersteer.VARIANTS)
    ap.add_argument("--n-blocks", type=int, default=4)
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--instructions", type=int, default=None, help="held-in instructions (all)")
    ap.add_argument("--pairs-per-instruction", type=int, default=6)
    ap.add_argument("--validation", type=int, default=32, help="held-out pairs (0: none)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--max-target-tokens", type=int, default=48)
    ap.add_argument("--checkpoint-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", default="last", choices=sl.hypersteer.POOLS)
    ap.add_argument(
        "--keyword-filter",
        action="store_true",
        help="keep only pairs whose target contains a keyword of its instruction (the greedy\n"
        "target, else the first of --samples sampled ones that does); instructions whose\n"
        "keywords are unreliable keep their greedy target",
    )
    ap.add_argument("--samples", type=int, default=0, help="extra sampled candidates per pair")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "hypersteer.safetensors"
    model = load_model(args.model, args.dtype)
    data = sl.datasets.load_steering_prompts()
    train = data.split(instructions="held_in", base_prompts="train")
    if args.instructions is not None:
        train = train.sample(args.instructions, seed=args.seed)
    steer, base = train.pairs(len(train) * args.pairs_per_instruction, seed=args.seed)
    validation = None
    if args.validation:
        val = data.split(instructions="held_out", base_prompts="validation")
        validation = val.pairs(args.validation, seed=args.seed + 1)
    print(
        f"{model}: {len(steer)} training pairs from {len(train)} instructions, "
        f"{args.validation} validation pairs"
    )
    t0 = time.perf_counter()
    # The self-distilled targets are written once per data set and reused (a resumed run
    # and runs with other hyperparameters train on the same texts).
    cache = out / "targets.json"
    key = {"model": str(model), "steer": steer, "base": base, "n": args.max_target_tokens}
    targets = None
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            targets = saved["targets"]
    if targets is None:
        targets = sl.hypersteer.distill_targets(
            model, steer, base, max_target_tokens=args.max_target_tokens, progress=True
        )
        cache.write_text(json.dumps({"key": key, "targets": targets}))
    filtered = None
    if args.keyword_filter:
        steer, base, targets, filtered = keyword_filter(
            model, data, steer, base, targets, args, out
        )
        print(f"keyword filter: {filtered}")
    hs = sl.HyperSteer.fit(
        model,
        steer,
        base,
        targets=targets,
        variant=args.variant,
        pool=args.pool,
        layer=args.layer,
        n_blocks=args.n_blocks,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_target_tokens=args.max_target_tokens,
        seed=args.seed,
        validation=validation,
        checkpoint=ckpt,
        checkpoint_every=args.checkpoint_every,
        resume=ckpt if args.resume and ckpt.exists() else None,
        progress=True,
    )
    seconds = time.perf_counter() - t0
    record: dict = {
        "keyword_filter": filtered,
        "command": "python scripts/train_hypersteer.py " + command(args),
        "model": str(model),
        "seconds_total": round(seconds, 1),
        "training": hs.training,
        "history": hs.history,
    }
    (out / "history.json").write_text(json.dumps(record, indent=1))
    hs.plot().savefig(out / "loss.png", dpi=120)
    ce = [h["ce"] for h in hs.history]
    val = [h["val_ce"] for h in hs.history if "val_ce" in h]
    k = max(1, len(ce) // 10)
    print(
        f"done in {seconds:.0f} s: {len(ce)} steps, train CE first {k} mean "
        f"{sum(ce[:k]) / k:.3f} -> last {k} mean {sum(ce[-k:]) / k:.3f}"
        + (f"; validation CE {val[0]:.3f} -> {val[-1]:.3f}" if val else "")
    )
    print(f"wrote {ckpt}, {out / 'history.json'}, {out / 'loss.png'}")


if __name__ == "__main__":
    main()
