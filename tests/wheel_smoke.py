"""Smoke script run by tests/test_wheel.py inside a fresh virtual environment that holds
only the built wheel and its required dependencies (no Rust toolchain on PATH, no extras).

It prints one JSON object: what it checked and the outputs a second run (with the
portable kernels forced by STEERLAB_ISA=scalar) must reproduce bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import steerlab as sl

# `import steerlab` pulls none of the optional extras.
OPTIONAL = ("matplotlib", "pandas", "fastapi", "uvicorn", "ray", "torch", "pytest", "openai")
pulled = sorted(m for m in OPTIONAL if m in sys.modules)

model = sl.Model.load(os.environ["STEERLAB_SMOKE_GGUF"])
pairs = sl.ContrastPairs.from_texts(sl.datasets.sentiment_pairs()[:8])
vec = sl.SteeringVector.train(model, pairs, layers=[12], progress=False)
acts = model.capture(["The sea was calm.", "A cold wind"], layers=[3, -1], position="last")
prompts = ["Tell me about your day.", "The weather today is"]
plain = model.generate(prompts, max_new_tokens=12, progress=False)
steered = model.generate(prompts, steering=[vec * 8.0, None], max_new_tokens=12, progress=False)


def vector_norm(v: sl.SteeringVector) -> float:
    return float(sum(float((a.astype("float64") ** 2).sum()) for a in v.vectors.values()) ** 0.5)


# Without the extras: steerlab.ray does not import, steerlab.server imports (the CLI
# reads its defaults) but will not build an app; both say which extra to install.
missing = {}
for module in ("steerlab.server", "steerlab.ray"):
    try:
        __import__(module)
        if module == "steerlab.server":
            import steerlab.server

            steerlab.server.create_app(model)
        missing[module] = "no error"
    except sl.MissingExtraError as exc:
        missing[module] = str(exc)
    except Exception as exc:  # any other error is the wrong answer: report it
        missing[module] = f"{type(exc).__name__}, not MissingExtraError: {exc}"

print(
    json.dumps(
        {
            "python": sys.executable,
            "version": sl.__version__,
            "kernel_isa": sl._core.kernel_isa(),
            "cargo_on_path": shutil.which("cargo"),
            "rustc_on_path": shutil.which("rustc"),
            "pulled_optional": pulled,
            "acts_shape": list(acts.shape),
            "acts_sum": float(acts.astype("float64").sum()),
            "vector_norm": vector_norm(vec),
            "plain": plain,
            "steered": steered,
            "extras_missing": missing,
        }
    )
)
