"""Activation scaling on the project's two tasks: ActivScalar vs SteerVec vs DynScalar
vs unsteered, trained on the train split and measured on held-out records (Stoehr et al.
2024, arXiv 2410.04962; the figures of issue 11's closing note and bench/RESULTS.md).

Full size (default model, every train record, 300 steps, every held-out record)::

    .venv/bin/python bench/scalars_eval.py --out bench/results/scalars_eval.json

Small (what notebooks/05_activation_scaling.ipynb runs in the test suite)::

    .venv/bin/python bench/scalars_eval.py --steps 20 --n-train 32 --n-test 16

Tasks: ``country_capital`` (a context states a wrong capital; target = the true capital,
foil = the stated one: the model mostly repeats the context, so steering must flip it)
and ``ioi`` reversed (the model already answers IOI, so the steering flips it to the
subject name). For each method: flip rate and accuracy on held-out records, the mean
logit-difference change, KL on the other tokens (nats), the number of trained and of
non-zero parameters, and the training time (seconds, this process). DynScalar is also
measured on held-out prompts of other token lengths (``lengths="varied"``), where the
static kinds cannot apply.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import steerlab as sl

KINDS = ("scalar", "vector", "dynamic")
NAMES = {"scalar": "ActivScalar", "vector": "SteerVec", "dynamic": "DynScalar"}


def task(name: str, split: str, lengths: str = "fixed") -> Any:
    """The task as evaluated here: ``ioi`` is reversed (flip the model's right answer)."""
    base = "ioi" if name == "ioi" else name
    t = sl.datasets.load_task(base, split=split, lengths=lengths)
    return t.reversed() if name == "ioi" else t


def parts(name: str, n_train: int | None, n_test: int | None, seed: int) -> tuple[Any, Any]:
    """The train and held-out records of `name`, each cut to a seeded subset when a size
    is given."""
    train, test = task(name, "train"), task(name, "held_out")
    if n_train is not None:
        train = train.subset(n_train, seed=seed)
    if n_test is not None:
        test = test.subset(n_test, seed=seed)
    return train, test


def fit(model: Any, train: Any, kind: str, steps: int, seed: int, **kw: Any) -> Any:
    """`sl.ActivationScalars.fit` on a task's records."""
    return sl.ActivationScalars.fit(
        model, train.prompts, train.targets, train.foils, kind=kind, steps=steps, seed=seed, **kw
    )


def measure(model: Any, t: Any, steering: Any) -> dict[str, float]:
    r = sl.evaluate.answer_flips(model, t.prompts, t.targets, t.foils, steering=steering)
    return {
        "flip_rate": r.flip_rate,
        "accuracy_before": r.accuracy_before,
        "accuracy_after": r.accuracy_after,
        "logit_diff_change": r.logit_diff_change,
        "kl_other": r.kl_other,
        "n": r.n,
    }


def run(
    model: Any,
    name: str,
    *,
    steps: int = 300,
    n_train: int | None = None,
    n_test: int | None = None,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
    **fit_args: Any,
) -> tuple[dict[str, Any], dict[str, sl.ActivationScalars]]:
    """Train each kind on `name`'s train split and measure it on held-out records.

    Returns ``(figures, modules)``: figures per method (``"unsteered"`` and one per
    kind, plus ``"dynamic_varied"``), the trained modules by kind.
    """
    train, test = parts(name, n_train, n_test, seed)
    out: dict[str, Any] = {"unsteered": measure(model, test, None)}
    modules = {}
    for kind in kinds:
        t0 = time.perf_counter()
        sc = fit(model, train, kind, steps, seed, **fit_args)
        seconds = time.perf_counter() - t0
        modules[kind] = sc
        out[kind] = measure(model, test, sc) | {
            "n_params": sc.n_params,
            "n_nonzero": sc.n_nonzero(0.0),
            "n_above_1e-3": sc.n_nonzero(1e-3),
            "train_seconds": seconds,
            "final_loss": sc.history[-1]["loss"],
        }
    if "dynamic" in modules:
        varied = task(name, "held_out", "varied")
        if n_test is not None:
            varied = varied.subset(n_test, seed=seed)
        out["dynamic_varied"] = measure(model, varied, modules["dynamic"]) | {
            "lengths": sorted({r.n_tokens for r in varied.records}),
        }
        out["unsteered_varied"] = measure(model, varied, None)
    return out, modules


#: (faithfulness, sparsity) settings of the trade-off run (effectiveness 1).
TRADEOFF = ((0.0, 0.0), (1.0, 0.0), (1.0, 1e-3), (1.0, 1e-2), (1.0, 1e-1), (10.0, 1e-3))


def tradeoff(
    model: Any,
    name: str,
    settings: tuple[tuple[float, float], ...] = TRADEOFF,
    *,
    kind: str = "scalar",
    steps: int = 300,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    **fit_args: Any,
) -> list[dict[str, Any]]:
    """How the loss weights trade effectiveness for faithfulness and minimality: one fit
    per (faithfulness, sparsity) setting, measured on held-out records."""
    train, test = parts(name, n_train, n_test, seed)
    rows = []
    for faith, sparse in settings:
        sc = fit(model, train, kind, steps, seed, faithfulness=faith, sparsity=sparse, **fit_args)
        l1 = float(sum(abs(a).sum() for a in sc.params.values()))
        rows.append(
            {"faithfulness": faith, "sparsity": sparse}
            | measure(model, test, sc)
            | {"n_nonzero": sc.n_nonzero(0.0), "n_above_0.05": sc.n_nonzero(0.05), "l1": l1}
        )
    return rows


def table(results: dict[str, dict[str, Any]]) -> str:
    """A markdown table of `run` figures per task."""
    lines = [
        "| task | method | flip rate | accuracy before -> after | LD change | KL other (nats) "
        "| params | non-zero | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figs in results.items():
        for method, f in figs.items():
            label = NAMES.get(method, method)
            lines.append(
                f"| {name} | {label} | {f['flip_rate']:.3f} | {f['accuracy_before']:.3f} -> "
                f"{f['accuracy_after']:.3f} | {f['logit_diff_change']:+.2f} | "
                f"{f['kl_other']:.4f} | {f.get('n_params', '-')} | {f.get('n_nonzero', '-')} | "
                f"{f['train_seconds']:.0f} |"
                if "train_seconds" in f
                else f"| {name} | {label} | {f['flip_rate']:.3f} | {f['accuracy_before']:.3f} -> "
                f"{f['accuracy_after']:.3f} | {f['logit_diff_change']:+.2f} | "
                f"{f['kl_other']:.4f} | - | - | - |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model path (default: the embedded one)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tasks", nargs="+", default=["country_capital", "ioi"])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sparsity", type=float, default=1e-3)
    ap.add_argument("--faithfulness", type=float, default=1.0)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument(
        "--sites",
        type=float,
        default=None,
        metavar="SPARSITY",
        help="instead: fit ActivScalar on the first task with this sparsity weight and list "
        "its non-zero alphas by site, layer and token",
    )
    ap.add_argument(
        "--tradeoff",
        action="store_true",
        help="instead: ActivScalar on the first task under several loss weights",
    )
    args = ap.parse_args()
    model = sl.Model.load(args.model, dtype=args.dtype)
    if args.sites is not None:
        train = task(args.tasks[0], "train")
        sc = fit(
            model,
            train,
            "scalar",
            args.steps,
            0,
            lr=args.lr,
            batch_size=args.batch_size,
            sparsity=args.sites,
        )
        df = sc.to_pandas()
        df = df[df.alpha != 0].assign(magnitude=lambda d: d.alpha.abs())
        print(f"{len(df)} non-zero alphas of {sc.n_params}; tokens of {train.prompts[0]!r}")
        print(df.sort_values("magnitude", ascending=False).to_string(index=False))
        return
    if args.tradeoff:
        rows = tradeoff(
            model,
            args.tasks[0],
            steps=args.steps,
            n_train=args.n_train,
            n_test=args.n_test,
            lr=args.lr,
            batch_size=args.batch_size,
        )
        print("| faithfulness | sparsity | flip rate | KL other | non-zero | >0.05 | L1 |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['faithfulness']:g} | {r['sparsity']:g} | {r['flip_rate']:.3f} | "
                f"{r['kl_other']:.4f} | {r['n_nonzero']} | {r['n_above_0.05']} | {r['l1']:.1f} |"
            )
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))
        return
    results = {}
    for name in args.tasks:
        figs, _ = run(
            model,
            name,
            steps=args.steps,
            n_train=args.n_train,
            n_test=args.n_test,
            kinds=tuple(args.kinds),
            lr=args.lr,
            batch_size=args.batch_size,
            sparsity=args.sparsity,
            faithfulness=args.faithfulness,
        )
        results[name] = figs
        print(table({name: figs}), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": model.path,
            "dtype": model.dtype,
            "args": vars(args) | {"out": str(args.out)},
        }
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    print(table(results))


if __name__ == "__main__":
    main()
