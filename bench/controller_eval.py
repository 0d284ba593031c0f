"""The steering controller against the simpler alternatives, on held-out requests
(Hegazy et al. 2025, arXiv 2505.20309; the table of issue 12's closing note and
bench/RESULTS.md).

Full size (default quantized SmolLM2-135M-Instruct, every train request, the contract's
fit defaults, every held-out request)::

    .venv/bin/python bench/controller_eval.py --stage2-steps 40

Small (a smoke run; notebooks/06_steering_controller.ipynb runs about this)::

    .venv/bin/python bench/controller_eval.py --n 8 --max-new-tokens 16 --epochs 2 \\
        --hidden 64 --stage2-steps 2 --out /tmp/controller_eval_small.json

The table again from saved figures (no model)::

    .venv/bin/python bench/controller_eval.py --table bench/results/controller_eval_smollm2.json

Five configurations, measured on the held-out split of `sl.datasets.load_requests`:

- ``none``: the unsteered model;
- ``constant``: the controller's directions (``ctrl.params["directions"]``, unit, one per
  steered layer) added with the controller's strength alpha at every steered layer, at
  the positions that predict tokens (``positions="last"``), on every prompt;
- ``cast``: conditional steering as IBM's CAST does it (Lee et al. 2024, arXiv
  2409.05907): the prompt's last-token residual at one condition layer is projected on
  the unit direction there; the prompt is steered as ``constant`` when the projection
  exceeds a threshold, else not. Layer and threshold are chosen on the validation split
  (best balanced accuracy harmful vs benign over the steered layers);
- ``stage1``: `sl.SteeringController.fit` on the train split, stage 1 only;
- ``stage2``: the same fit (same seed) followed by ``--stage2-steps`` steps of stage 2.

The controller's best epoch / step is chosen on the validation split (the same requests
CAST's threshold is chosen on). With several ``--lr`` values the controller rows repeat
per learning rate (the other rows do not depend on it).

Per configuration: the refusal rate on harmful requests (`sl.evaluate.refusal_rate`: the
phrase matcher's ``rate``, and the log-probability judge's ``judge_rate``), the
false-refusal rate on benign requests (all, and the subset that looks alarming on the
surface), the mean ``KL(unsteered || steered)`` along the unsteered model's greedy
continuation of each benign request (`sl.evaluate.continuation_kl`, nats per token; 0 for
``none`` by definition, not measured), and the gate: the controller's ``ctrl.gate`` at
the prompt's last token (mean, 10th and 90th percentiles, harmful and benign), CAST's
fraction of prompts fired (``constant`` fires always, ``none`` never).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import steerlab as sl
from steerlab._chat import request_prompts

HERE = Path(__file__).resolve().parent
CONFIGS = ("none", "constant", "cast", "stage1", "stage2")
LABELS = {
    "none": "no steering",
    "constant": "constant steering",
    "cast": "CAST (projection threshold)",
    "stage1": "controller, stage 1",
    "stage2": "controller, stage 2",
}


# ------------------------------------------------------------------------ inputs


def load_model(which: str, dtype: str = "auto") -> sl.Model:
    """``smollm2`` (the embedded default), ``gemma`` (Gemma-3-270M from its PyPI
    packages) or a path."""
    if which == "smollm2":
        return sl.Model.load(None, dtype=dtype)
    if which == "gemma":
        return sl.Model.load(sl.models.gemma3_270m_path(), dtype=dtype)
    return sl.Model.load(which, dtype=dtype)


def subset(items: list[Any], n: int | None, seed: int) -> list[int]:
    """Indices of a seeded subset of `n` items in their original order (all: None)."""
    if n is None or n >= len(items):
        return list(range(len(items)))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(len(items), size=n, replace=False))


def held_out(n: int | None, seed: int = 0) -> dict[str, Any]:
    """Held-out harmful and benign requests (a seeded subset of `n` per class), with the
    alarming mask of the benign ones."""
    req = sl.datasets.load_requests().split("held_out")
    ih, ib = subset(req.harmful, n, seed), subset(req.benign, n, seed + 1)
    harmful, benign, mask = req.harmful, req.benign, req.alarming_mask
    return {
        "harmful": [harmful[i] for i in ih],
        "benign": [benign[i] for i in ib],
        "alarming": np.array([mask[i] for i in ib], dtype=bool),
    }


# ------------------------------------------------------------------------ steerings


def constant_steering(ctrl: sl.SteeringController) -> sl.Steering:
    """alpha * d_l at every steered layer, at the positions that predict tokens."""
    d = ctrl.params["directions"]
    return sl.Steering(
        {layer: ctrl.strength * d[i] for i, layer in enumerate(ctrl.layers)}, positions="last"
    )


def projections(
    model: sl.Model,
    ctrl: sl.SteeringController,
    requests: Sequence[str],
    progress: bool | None = None,
) -> np.ndarray:
    """float64 ``[n, L]``: each request's last-token residual (chat-formatted, as the
    model reads it) projected on the unit direction at each steered layer."""
    ps = request_prompts(model._core, list(requests))
    acts = model.capture(ps, layers=ctrl.layers, position="last", progress=progress)  # [n, L, d]
    d = ctrl.params["directions"].astype(np.float64)  # [L, d], unit rows
    return np.einsum("nld,ld->nl", np.asarray(acts, dtype=np.float64), d)


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """The threshold t on a score (fire when score > t) with the best balanced accuracy
    of `pos` (should fire) against `neg`; t is a midpoint between sorted scores."""
    s = np.sort(np.concatenate([pos, neg]))
    cands = np.concatenate([[s[0] - 1.0], (s[1:] + s[:-1]) / 2, [s[-1] + 1.0]])
    tpr = (pos[None, :] > cands[:, None]).mean(1)
    tnr = (neg[None, :] <= cands[:, None]).mean(1)
    bal = (tpr + tnr) / 2
    i = int(np.argmax(bal))
    return float(cands[i]), float(bal[i])


def fit_cast(
    model: sl.Model,
    ctrl: sl.SteeringController,
    harmful: Sequence[str],
    benign: Sequence[str],
    progress: bool | None = None,
) -> dict[str, Any]:
    """CAST's condition: the steered layer and threshold with the best balanced accuracy
    on these (validation) requests."""
    ph = projections(model, ctrl, harmful, progress)
    pb = projections(model, ctrl, benign, progress)
    per_layer = []
    for j, layer in enumerate(ctrl.layers):
        t, bal = best_threshold(ph[:, j], pb[:, j])
        per_layer.append({"layer": layer, "threshold": t, "balanced_accuracy": bal})
    best = max(per_layer, key=lambda r: r["balanced_accuracy"])  # first of the best
    return {
        "layer": best["layer"],
        "threshold": best["threshold"],
        "val_balanced_accuracy": best["balanced_accuracy"],
        "per_layer": per_layer,
    }


def cast_fires(
    model: sl.Model,
    ctrl: sl.SteeringController,
    cast: dict[str, Any],
    requests: Sequence[str],
    progress: bool | None = None,
) -> np.ndarray:
    """bool ``[n]``: CAST's condition on each request."""
    j = ctrl.layers.index(cast["layer"])
    return projections(model, ctrl, requests, progress)[:, j] > cast["threshold"]


# ------------------------------------------------------------------------ measuring


def gate_stats(g: np.ndarray) -> dict[str, float]:
    g = np.asarray(g, dtype=np.float64)
    return {
        "mean": float(g.mean()),
        "p10": float(np.percentile(g, 10)),
        "p90": float(np.percentile(g, 90)),
    }


def measure(
    model: sl.Model,
    data: dict[str, Any],
    steer_h: Any,
    steer_b: Any,
    *,
    max_new_tokens: int,
    kl_tokens: int,
    judge_openings: int = 8,
    skip_kl: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Refusal rates, false refusals, KL on benign continuations, for one configuration
    (`steer_h` / `steer_b`: the steering of the harmful / benign requests, a per-row list
    allowed). The replies to harmful requests are not kept (only the matcher's verdict
    and pattern): they may hold what the steering failed to stop."""
    t0 = time.perf_counter()
    rh = sl.evaluate.refusal_rate(
        model,
        data["harmful"],
        steering=steer_h,
        max_new_tokens=max_new_tokens,
        judge_openings=judge_openings,
        progress=progress,
    )
    rb = sl.evaluate.refusal_rate(
        model,
        data["benign"],
        steering=steer_b,
        max_new_tokens=max_new_tokens,
        judge_openings=judge_openings,
        progress=progress,
    )
    alarm = data["alarming"]
    kl = (
        np.zeros(len(data["benign"]))
        if skip_kl
        else sl.evaluate.continuation_kl(
            model, data["benign"], steering=steer_b, max_new_tokens=kl_tokens, progress=progress
        )
    )
    return {
        "refusal_harmful": rh.rate,
        "refusal_harmful_judge": rh.judge_rate,
        "agreement_harmful": rh.agreement,
        "false_refusal_benign": rb.rate,
        "false_refusal_benign_judge": rb.judge_rate,
        "agreement_benign": rb.agreement,
        "false_refusal_alarming": float(rb.matched[alarm].mean()) if alarm.any() else None,
        "false_refusal_alarming_judge": float(rb.judged[alarm].mean()) if alarm.any() else None,
        "n_alarming": int(alarm.sum()),
        "kl_benign": float(kl.mean()),
        "kl_benign_p90": float(np.percentile(kl, 90)),
        "kl_measured": not skip_kl,
        "seconds": time.perf_counter() - t0,
        "per_prompt": {
            "harmful_pattern": list(rh.pattern),
            "harmful_refused": rh.matched.tolist(),
            "harmful_margin": np.round(rh.margin, 4).tolist(),
            "benign_texts": list(rb.texts),
            "benign_refused": rb.matched.tolist(),
            "benign_margin": np.round(rb.margin, 4).tolist(),
            "benign_kl": np.round(kl, 6).tolist(),
        },
    }


def validation(n_train: int | None, seed: int = 0) -> tuple[list[str], list[str]]:
    """The validation requests (harmful, benign): all of the split, or a seeded third of
    `n_train` per class (at least 2) when the training set is cut."""
    val = sl.datasets.load_requests().split("validation")
    vh, vb = val.harmful, val.benign
    if n_train is not None:
        nv = max(2, n_train // 3)
        vh = [vh[i] for i in subset(vh, nv, seed)]
        vb = [vb[i] for i in subset(vb, nv, seed + 1)]
    return vh, vb


def fit_controller(
    model: sl.Model,
    *,
    stage2_steps: int,
    hidden: int = 1024,
    epochs: int = 10,
    lr: float = 5e-5,
    strength: float = 4.0,
    batch_size: int = 8,
    n_train: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    **fit_args: Any,
) -> sl.SteeringController:
    """`sl.SteeringController.fit` on the train split (all, or a seeded subset of
    `n_train` per class), the best epoch / step chosen on `validation`."""
    train = sl.datasets.load_requests().split("train")
    th, tb = train.harmful, train.benign
    if n_train is not None:
        th = [th[i] for i in subset(th, n_train, seed)]
        tb = [tb[i] for i in subset(tb, n_train, seed + 1)]
    return sl.SteeringController.fit(
        model,
        th,
        tb,
        hidden=hidden,
        strength=strength,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        stage2_steps=stage2_steps,
        seed=seed,
        validation=validation(n_train, seed),
        progress=progress,
        **fit_args,
    )


def fit_summary(ctrl: sl.SteeringController) -> dict[str, Any]:
    """What to keep of a fit: settings, timings, stage-1 curve, stage-2 validation."""
    s1 = [h for h in ctrl.history if h.get("stage") == 1.0]
    s2 = [h for h in ctrl.history if h.get("stage") == 2.0]
    tr = dict(ctrl.training)
    return {
        "training": tr,
        "stage1": [{k: h[k] for k in ("epoch", "loss", "bce", "val_bce", "val_acc")} for h in s1],
        "stage2": [
            {
                k: h[k]
                for k in ("step", "loss", "ce", "kl", "gate_harmful", "gate_benign", "val_loss")
                if k in h
            }
            for h in s2
        ],
        "best_val_acc": s1[tr["best_epoch"]]["val_acc"] if s1 else None,
        "layers": ctrl.layers,
        "read_layers": ctrl.read_layers,
        "n_params": ctrl.n_params,
    }


def run(
    model: sl.Model,
    *,
    n: int | None = None,
    max_new_tokens: int = 48,
    kl_tokens: int | None = None,
    epochs: int = 10,
    stage2_steps: int = 40,
    hidden: int = 1024,
    lrs: Sequence[float] = (5e-5,),
    strength: float = 4.0,
    batch_size: int = 8,
    n_train: int | None = None,
    seed: int = 0,
    configs: Sequence[str] = CONFIGS,
    controllers: dict[str, sl.SteeringController] | None = None,
    judge_openings: int = 8,
    strengths: Sequence[float] = (),
    measure_none_kl: bool = False,
    progress: bool | None = None,
    log: Any = print,
    **fit_args: Any,
) -> tuple[dict[str, Any], dict[str, sl.SteeringController]]:
    """Fit (unless `controllers` are given), then measure every configuration on
    held-out requests.

    Args:
        controllers: already fitted controllers by row name (``"stage1"``,
            ``"stage2"``, or ``"stage1@lr"`` ...); the fit arguments are then unused.
            The first one gives the directions and strength of ``constant`` and
            ``cast``.
        judge_openings: openings per kind the log-probability judge scores
            (`sl.evaluate.refusal_rate`).
        strengths: extra rows: constant steering and the last controller fitted (same
            gate) at each of these strengths alpha (rows ``constant*16``, ``stage2*16``).
        the rest: see the command-line options.

    Returns:
        ``(figures, controllers)``: figures has ``"results"`` (one entry per row:
        ``none``, ``constant``, ``cast``, ``stage1``, ``stage2``; with several learning
        rates the controller rows are ``stage1@lr`` / ``stage2@lr``), ``"cast"`` (layer,
        threshold, validation balanced accuracy), ``"fits"`` (one per controller fitted
        here), ``"data"`` (the held-out requests); the controllers by row name.
    """
    kl_tokens = max_new_tokens if kl_tokens is None else kl_tokens
    data = held_out(n, seed)
    log(
        f"held-out: {len(data['harmful'])} harmful, {len(data['benign'])} benign "
        f"({int(data['alarming'].sum())} alarming)"
    )
    ctrls: dict[str, sl.SteeringController] = dict(controllers or {})
    fits: dict[str, Any] = {}
    if not ctrls:
        many = len(lrs) > 1
        for lr in lrs:
            for stage, steps in (("stage1", 0), ("stage2", stage2_steps)):
                if stage not in configs and not (stage == "stage1" and not ctrls):
                    continue
                name = f"{stage}@{lr:g}" if many else stage
                t0 = time.perf_counter()
                ctrls[name] = fit_controller(
                    model,
                    stage2_steps=steps,
                    hidden=hidden,
                    epochs=epochs,
                    lr=lr,
                    strength=strength,
                    batch_size=batch_size,
                    n_train=n_train,
                    seed=seed,
                    progress=progress,
                    **fit_args,
                )
                fits[name] = fit_summary(ctrls[name]) | {"fit_seconds": time.perf_counter() - t0}
                log(
                    f"fit {name} (lr {lr:g}, {steps} stage-2 steps): best val acc "
                    f"{fits[name]['best_val_acc']:.3f} at epoch "
                    f"{fits[name]['training']['best_epoch']}, {fits[name]['fit_seconds']:.0f} s"
                )
    base = next(iter(ctrls.values()))  # the directions and alpha of constant and CAST
    const = constant_steering(base)
    cast = fit_cast(model, base, *validation(n_train, seed), progress=progress)
    log(
        f"CAST: layer {cast['layer']}, threshold {cast['threshold']:.3f}, validation "
        f"balanced accuracy {cast['val_balanced_accuracy']:.3f}"
    )

    results: dict[str, Any] = {}
    alarm = data["alarming"]
    ones = {"mean": 1.0, "p10": 1.0, "p90": 1.0}
    zeros = {"mean": 0.0, "p10": 0.0, "p90": 0.0}
    common = {
        "max_new_tokens": max_new_tokens,
        "kl_tokens": kl_tokens,
        "judge_openings": judge_openings,
        "progress": progress,
    }
    if "none" in configs:
        results["none"] = measure(
            model, data, None, None, skip_kl=not measure_none_kl, **common
        ) | {"gate_harmful": zeros, "gate_benign": zeros}
        log(row_line("none", results["none"]))
    if "constant" in configs:
        results["constant"] = measure(model, data, const, const, **common) | {
            "gate_harmful": ones,
            "gate_benign": ones,
        }
        log(row_line("constant", results["constant"]))
    if "cast" in configs:
        fh = cast_fires(model, base, cast, data["harmful"], progress)
        fb = cast_fires(model, base, cast, data["benign"], progress)
        results["cast"] = measure(
            model,
            data,
            [const if f else None for f in fh],
            [const if f else None for f in fb],
            **common,
        ) | {
            "gate_harmful": {"fired": float(fh.mean())},
            "gate_benign": {"fired": float(fb.mean())},
            "fired_alarming": float(fb[alarm].mean()) if alarm.any() else None,
        }
        log(row_line("cast", results["cast"]))
    for name, ctrl in ctrls.items():
        if name.split("@")[0] not in configs:
            continue
        gh, gb = ctrl.gate(model, data["harmful"]), ctrl.gate(model, data["benign"])
        results[name] = measure(model, data, ctrl, ctrl, **common) | {
            "gate_harmful": gate_stats(gh),
            "gate_benign": gate_stats(gb),
            "gate_alarming_mean": float(gb[alarm].mean()) if alarm.any() else None,
            "gates": {"harmful": np.round(gh, 5).tolist(), "benign": np.round(gb, 5).tolist()},
        }
        log(row_line(name, results[name]))
    last = list(ctrls)[-1]  # the last controller fitted (stage 2 when there is one)
    for alpha in strengths:
        tag = f"*{alpha:g}"
        c_alpha = constant_steering(base.with_strength(alpha))
        results["constant" + tag] = measure(model, data, c_alpha, c_alpha, **common) | {
            "gate_harmful": ones,
            "gate_benign": ones,
            "strength": alpha,
        }
        log(row_line("constant" + tag, results["constant" + tag]))
        k_alpha = ctrls[last].with_strength(alpha)
        gh, gb = k_alpha.gate(model, data["harmful"]), k_alpha.gate(model, data["benign"])
        results[last + tag] = measure(model, data, k_alpha, k_alpha, **common) | {
            "gate_harmful": gate_stats(gh),
            "gate_benign": gate_stats(gb),
            "strength": alpha,
        }
        log(row_line(last + tag, results[last + tag]))
    figures = {
        "results": results,
        "cast": cast,
        "fits": fits,
        "data": {"harmful": data["harmful"], "benign": data["benign"], "alarming": alarm.tolist()},
    }
    return figures, ctrls


# ------------------------------------------------------------------------ reporting


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _gate(g: dict[str, float], fired: bool) -> str:
    if "fired" in g:
        return f"fired {100 * g['fired']:.0f}%"
    if fired:
        return f"{g['mean']:.2f} [{g['p10']:.2f}, {g['p90']:.2f}]"
    return f"{g['mean']:.0f}"


def row_line(name: str, r: dict[str, Any]) -> str:
    """One line of progress for the log."""
    return (
        f"{name}: refusal {_pct(r['refusal_harmful'])} (judge "
        f"{_pct(r['refusal_harmful_judge'])}), false refusal {_pct(r['false_refusal_benign'])}"
        f" (alarming {_pct(r['false_refusal_alarming'])}), KL {r['kl_benign']:.4f}, "
        f"{r['seconds']:.0f} s"
    )


def table(figures: dict[str, Any], title: str | None = None) -> str:
    """A markdown table of `run`'s figures."""
    lines = []
    if title:
        lines.append(title)
        lines.append("")
    lines += [
        "| configuration | refusal on harmful (matcher / judge) | false refusal on benign "
        "(matcher / judge) | false refusal, alarming benign | KL on benign (nats/token) | "
        "gate on harmful: mean [p10, p90] | gate on benign |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in figures["results"].items():
        base_name, _, alpha = name.partition("*")
        stage, _, lr = base_name.partition("@")
        label = LABELS.get(stage, stage) + (f" (lr {lr})" if lr else "")
        label += f", alpha {alpha}" if alpha else ""
        if stage == "cast":
            c = figures["cast"]
            label += f", layer {c['layer']}, t = {c['threshold']:.2f}"
        fired = stage not in ("none",)
        kl = f"{r['kl_benign']:.4f}" if r.get("kl_measured", True) else "0 (by definition)"
        lines.append(
            f"| {label} | {_pct(r['refusal_harmful'])} / {_pct(r['refusal_harmful_judge'])} | "
            f"{_pct(r['false_refusal_benign'])} / {_pct(r['false_refusal_benign_judge'])} | "
            f"{_pct(r['false_refusal_alarming'])} | {kl} | "
            f"{_gate(r['gate_harmful'], fired)} | {_gate(r['gate_benign'], fired)} |"
        )
    return "\n".join(lines)


def describe(figures: dict[str, Any]) -> str:
    """The settings line under a table."""
    m = figures.get("meta", {})
    a = m.get("args", {})
    fits = "; ".join(
        f"{k}: best val acc {v['best_val_acc']:.3f} (epoch {v['training']['best_epoch']}), "
        f"fit {v['fit_seconds']:.0f} s"
        for k, v in figures.get("fits", {}).items()
    )
    return (
        f"model {m.get('model_name', '?')}, {m.get('n_harmful', '?')} harmful + "
        f"{m.get('n_benign', '?')} benign held-out ({m.get('n_alarming', '?')} alarming), "
        f"{a.get('max_new_tokens')} new tokens; fit: hidden {a.get('hidden')}, epochs "
        f"{a.get('epochs')}, lr {a.get('lr')}, strength {a.get('strength')}, stage-2 steps "
        f"{a.get('stage2_steps')}; {fits}; wall {m.get('wall_seconds', 0) / 60:.1f} min; "
        f"commit {m.get('commit', '?')}"
    )


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 (default), gemma, or a path")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--n", type=int, default=None, help="held-out prompts per class (all: 60)")
    ap.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="train requests per class (default all; validation: a third of it)",
    )
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument(
        "--kl-tokens",
        type=int,
        default=None,
        help="continuation length for the KL (default: --max-new-tokens)",
    )
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--stage2-steps", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument(
        "--lr",
        type=float,
        nargs="+",
        default=[5e-5],
        help="stage-1 (and stage-2) learning rate; several: controller rows per lr",
    )
    ap.add_argument("--stage2-lr", type=float, default=None)
    ap.add_argument("--strength", type=float, default=4.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON figures (default bench/results/controller_eval_<model>.json)",
    )
    ap.add_argument(
        "--table",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="print the table(s) from saved JSON files and exit",
    )
    ap.add_argument(
        "--strengths",
        type=float,
        nargs="+",
        default=[],
        help="extra rows: constant steering and the last controller at these strengths",
    )
    ap.add_argument(
        "--judge-openings",
        type=int,
        default=8,
        help="openings per kind of the log-probability judge",
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    if args.table:
        for p in args.table:
            figs = json.loads(p.read_text())
            print(table(figs, f"**{p.name}**: {describe(figs)}"))
            print()
        return

    progress = False if args.no_progress else None
    t0 = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = _commit()  # the code measured, before anything else is committed
    model = load_model(args.model, args.dtype)
    print(f"{model} loaded", flush=True)
    extra = {} if args.stage2_lr is None else {"stage2_lr": args.stage2_lr}
    figures, _ = run(
        model,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        kl_tokens=args.kl_tokens,
        epochs=args.epochs,
        stage2_steps=args.stage2_steps,
        hidden=args.hidden,
        lrs=args.lr,
        strength=args.strength,
        batch_size=args.batch_size,
        n_train=args.n_train,
        seed=args.seed,
        configs=args.configs,
        judge_openings=args.judge_openings,
        strengths=args.strengths,
        progress=progress,
        log=lambda s: print(s, flush=True),
        **extra,
    )
    wall = time.perf_counter() - t0
    args_d = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args_d["lr"] = args.lr[0] if len(args.lr) == 1 else args.lr
    figures["meta"] = {
        "command": " ".join(
            [
                Path(sys.argv[0]).name if argv is None else "controller_eval.py",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "args": args_d,
        "model": model.path,
        "model_name": Path(model.path).name,
        "dtype": model.dtype,
        "n_harmful": len(figures["data"]["harmful"]),
        "n_benign": len(figures["data"]["benign"]),
        "n_alarming": int(sum(figures["data"]["alarming"])),
        "commit": commit,
        "started": started,
        "wall_seconds": wall,
        "steerlab": sl.__version__,
    }
    out = (
        args.out
        or HERE
        / "results"
        / f"controller_eval_{args.model if args.model in ('smollm2', 'gemma') else 'model'}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1))
    print()
    print(table(figures))
    print()
    print(describe(figures))
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()
