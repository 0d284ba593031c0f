"""W5, steerlab side: one training step of a steering vector on SmolLM2-135M.

Same batch, initial vector and loss as ``bench/w5_train_torch.py`` (``bench/w5_spec.py``
holds the spec): 8 x 64 token ids, a vector added to the output of block 15 (steerlab
layer 15) at every position, mean cross-entropy over the last 32 tokens of each row,
frozen weights, 2 threads; warm-up 1 step, median of ``--steps`` timed steps. A step is
forward + backward to the vector, no optimiser update. ``--dtype f32`` is compared with
PyTorch; ``--dtype auto`` (the Q4_1 base kept quantized) has no PyTorch counterpart and
is reported on its own.

An extension without ``steerlab._core.VectorTrainer`` prints
``{"skipped": "steerlab training API not built"}`` and exits 0.

Usage::

    python bench/w5_train_steerlab.py [--gguf PATH] [--dtype f32|auto] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import w5_spec as spec

SKIPPED = {"skipped": "steerlab training API not built"}


def available() -> bool:
    """Whether the extension has the training API this script drives."""
    import steerlab

    return hasattr(steerlab._core, "VectorTrainer")


def make_step(model: Any, ids: np.ndarray, init: np.ndarray) -> Callable[[], tuple[float, float]]:
    """A callable running one step (forward + backward to the vector at layer
    ``spec.LAYER``, loss of ``w5_spec``) and returning ``(loss, ||dL/dv||_2)``.

    Drives ``steerlab._core.VectorTrainer`` (the engine of `SteeringVector.optimize`):
    each row is one example whose completion is its last ``spec.CONTINUATION`` tokens
    (predicted from positions 31..62), the vector starts at ``init``; the trainer's
    loss is the token-weighted mean cross-entropy over those 8 x 32 targets, the same as
    PyTorch's. The step includes an AdamW update (a few microseconds on 576 numbers); lr
    is 1e-12, so the vector stays at ``init`` to 1e-12 and every step gives the same
    loss and gradient. The frozen prefix (blocks 0..15, no gradient) is computed once
    when the trainer is built, as in real training; each step runs blocks 16..29 and the
    LM head with gradients.
    """
    import steerlab

    rows = [(list(map(int, r)), ids.shape[1] - spec.CONTINUATION) for r in ids]
    trainer = steerlab._core.VectorTrainer(
        model._core,
        rows,
        [spec.LAYER],
        lr=1e-12,
        max_grad_norm=None,
        batch_size=ids.shape[0],
        init=[np.asarray(init, dtype=np.float32).tolist()],
    )

    def step() -> tuple[float, float]:
        rec = trainer.step()
        return float(rec["loss"]), float(rec["grad_norm"])

    return step


def run(
    gguf: str | None = None,
    dtype: str = "f32",
    steps: int = spec.STEPS,
    warmup: int = spec.WARMUP,
) -> dict[str, Any]:
    """Load, warm up, time `steps` steps; the result dictionary (or SKIPPED)."""
    start = time.perf_counter()
    import steerlab

    import_s = time.perf_counter() - start
    if not available():
        return dict(SKIPPED)
    steerlab.set_progress(False)
    path = gguf or steerlab.models.default_model_path()
    start = time.perf_counter()
    model = steerlab.Model.load(path, dtype=dtype)
    load_s = time.perf_counter() - start
    ids, init = spec.load()
    step = make_step(model, ids, init)
    rss_loaded = spec.peak_rss_mib()

    return {
        "tool": "steerlab",
        "dtype": dtype,
        **spec.run_steps(step, warmup, steps),
        "peak_rss_mib": spec.peak_rss_mib(),
        "rss_after_load_mib": rss_loaded,
        "threads": int(os.environ.get("RAYON_NUM_THREADS", "0")) or None,
        "import_s": import_s,
        "load_s": load_s,
        "gguf": Path(path).name,
    }


def main() -> None:
    """Command line: one JSON line on stdout."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", help="the SmolLM2 GGUF file (default: steerlab's default model)")
    ap.add_argument("--dtype", default="f32", choices=["f32", "auto"])
    ap.add_argument("--steps", type=int, default=spec.STEPS)
    ap.add_argument("--warmup", type=int, default=spec.WARMUP)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    # 2 threads unless the caller (run_bench.py) has set them already
    os.environ.setdefault("RAYON_NUM_THREADS", str(spec.THREADS))
    print(json.dumps(run(args.gguf, args.dtype, args.steps, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
