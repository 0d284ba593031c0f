"""One benchmark measurement per process, started by ``bench/run_bench.py``.

Usage (the driver does this; by hand only to debug one task)::

    .bench-venv/bin/python bench/measure.py TASK WORK_DIR

``WORK_DIR`` holds ``spec.json`` and ``vectors.npz`` written by the ``prepare`` task.
Every task prints one line ``BENCH_RESULT {json}`` on stdout as its last line; the
process's peak resident set size (``ru_maxrss``) is part of it, so each figure is
that of a process that imported one tool, loaded the model once and ran one workload.

Tasks are named ``TOOL:WORKLOAD``:

- tools: ``steerlab-q4`` / ``steerlab-f32`` (``Model.load(dtype="auto"|"f32")``),
  ``hf`` (transformers alone), ``sv`` (transformers + steering-vectors), ``repeng``
  (transformers + repeng ``ControlModel``), ``llama`` (llama.cpp through the low-level
  API of llama-cpp-python);
- workloads: ``w1`` capture of the residual stream after every block at the last
  position, ``w2`` steered greedy decode at batch 1, ``w3`` batched steered
  generation, with suffixes for batch sizes and the variants used to measure overhead;
  ``w5`` one training step of a steering vector (tools ``torch``, ``steerlab-f32``,
  ``steerlab-q4``; the work is done by ``bench/w5_train_{torch,steerlab}.py``).

Besides those: ``prepare`` (token sequences, vectors, parameter count), ``hf-cache``
(saves the transformers model dequantized from the GGUF file as safetensors, so that
timing processes need not repeat the slow GGUF conversion), ``gemm`` (numpy fp32 GEMM
ceiling) and ``check:TOOL`` (the steered-effect sanity check across tools).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

THREADS = 2
STEER_LAYER = 15
# W1: 64 prompts x 64 tokens; W2: one 20-token prompt, 128 new tokens; W3: 16 prompts
# x 64 new tokens (prompts of 20 tokens, so that no tool needs padding).
W1_PROMPTS, W1_TOKENS = 64, 64
W2_PROMPT_TOKENS, W2_NEW_TOKENS = 20, 128
W3_PROMPTS, W3_PROMPT_TOKENS, W3_NEW_TOKENS = 16, 20, 64
QUICK_SIZES = {
    "w1_prompts": 8,
    "w1_tokens": 16,
    "w2_new": 8,
    "w3_prompts": 4,
    "w3_new": 4,
}
STEER_COEF = 4.0
CHECK_NEW_TOKENS = 16
RESULT_MARK = "BENCH_RESULT "
# The task name and start time of this process (for a capped result).
_TASK = [""]
_STARTED = [time.perf_counter()]

# Neutral text for the prompts, written for this benchmark.
CORPUS = [
    "The harbour was quiet in the early morning, and the fishing boats rocked gently "
    "against the wooden piers while gulls circled overhead.",
    "A surveyor walked along the old canal, writing down the depth of the water at "
    "every lock and the condition of each stone wall.",
    "In the school garden the children planted rows of carrots, lettuce and peas, and "
    "they kept a notebook about how quickly each plant grew.",
    "The train to the coast stopped at six small stations, where a few passengers got "
    "off with suitcases, bicycles and baskets of fruit.",
    "Every autumn the town library sorts its donated books into boxes for history, "
    "travel, cooking, poetry and science.",
    "The weather report for the weekend mentioned light winds from the west, scattered "
    "clouds and a small chance of rain on Sunday afternoon.",
    "At the workshop a carpenter measured each plank twice, marked it with a pencil "
    "and cut it slowly along the line with a hand saw.",
    "The museum guide explained how the bridge was built in stages, starting with the "
    "two towers and finishing with the road deck.",
    "On the farm the cows are milked twice a day, and the milk is cooled in a steel "
    "tank before a truck collects it in the morning.",
    "The committee reviewed the plans for the new bus routes, the timetable changes "
    "and the cost of adding two more vehicles.",
    "A student compared the boiling points of several liquids and wrote a short report "
    "with a table of the results and a diagram.",
    "The mountain path climbs through a pine forest, crosses a stream on flat stones "
    "and ends at a meadow with a view of the valley.",
    "Bakers start work long before sunrise, mixing flour, water, salt and yeast, then "
    "shaping the dough into loaves and rolls.",
    "The city council announced that the swimming pool will reopen in June after the "
    "repairs to the roof and the heating system.",
    "During the meeting the engineers discussed the test results, the schedule for the "
    "next phase and the parts that still had to be ordered.",
    "The orchestra rehearsed the second movement three times, paying attention to the "
    "tempo and to the balance between strings and winds.",
]


# -- plumbing -------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result: dict[str, Any]) -> None:
    """Print the result line the driver parses (always the last line on stdout)."""
    result.setdefault("peak_rss_mib", peak_rss_mib())
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result), flush=True)


def load_spec(work: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The workload spec and the steering vectors written by ``prepare``."""
    spec = json.loads((work / "spec.json").read_text())
    with np.load(work / "vectors.npz") as data:
        vectors = {k: data[k].astype(np.float32) for k in data.files}
    return spec, vectors


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall-clock seconds of one call, and its result."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed_workload(fn: Callable[[], Any], tokens: int, info: dict[str, Any]) -> tuple[float, Any]:
    """Time the measured call. With ``BENCH_CAP_S`` set, a watchdog stops the process
    once the call has run that long and reports a capped result: ``tokens`` over the
    time so far, an upper bound of the throughput (the call releases the GIL, so the
    watchdog thread gets to run)."""
    cap = float(os.environ.get("BENCH_CAP_S") or 0)
    start = time.perf_counter()
    timer = None
    if cap > 0:

        def stop() -> None:
            emit(
                {
                    **info,
                    "seconds": time.perf_counter() - start,
                    "tokens": tokens,
                    "capped": True,
                    "task": _TASK[0],
                    "process_s": time.perf_counter() - _STARTED[0],
                    "pid": os.getpid(),
                }
            )
            os._exit(0)

        timer = threading.Timer(cap, stop)
        timer.daemon = True
        timer.start()
    out = fn()
    seconds = time.perf_counter() - start
    if timer is not None:
        timer.cancel()
    return seconds, out


# -- prepare: token sequences, vectors, parameter count -------------------------------


def _exact_texts(
    model: Any, n: int, n_tokens: int, offset: int
) -> tuple[list[str], list[list[int]]]:
    """`n` distinct texts whose steerlab encoding (special tokens included) has exactly
    `n_tokens` ids, cut from the corpus on token boundaries so that decoding and
    re-encoding gives the same ids; returns the texts and those ids."""
    n_special = len(model.encode("x")) - len(model.encode("x", add_special_tokens=False))
    want = n_tokens - n_special
    rng = np.random.default_rng(1234 + offset)
    texts: list[str] = []
    ids: list[list[int]] = []
    seen: set[str] = set()
    while len(texts) < n:
        order = rng.permutation(len(CORPUS))
        stream = model.encode(" ".join(CORPUS[i] for i in order), add_special_tokens=False)
        start = int(rng.integers(0, len(stream) - want - 8))
        for shift in range(8):
            window = stream[start + shift : start + shift + want]
            text = model.decode(window)
            full = model.encode(text)
            if len(full) == n_tokens and full[n_special:] == window and text not in seen:
                seen.add(text)
                texts.append(text)
                ids.append(full)
                break
    return texts, ids


def _block_params(path: str) -> dict[str, int]:
    """Element counts of the GGUF file's tensors: in the decoder blocks and in total."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    blocks = sum(int(t.n_elements) for t in reader.tensors if t.name.startswith("blk."))
    total = sum(int(t.n_elements) for t in reader.tensors)
    return {"block_params": blocks, "total_params": total}


def task_prepare(work: Path, quick: bool) -> dict[str, Any]:
    """Write spec.json (texts and their ids) and vectors.npz for every other task."""
    import steerlab

    path = steerlab.models.default_model_path()
    model = steerlab.Model.load(path)
    sizes = {
        "w1_prompts": W1_PROMPTS,
        "w1_tokens": W1_TOKENS,
        "w2_prompt_tokens": W2_PROMPT_TOKENS,
        "w2_new": W2_NEW_TOKENS,
        "w3_prompts": W3_PROMPTS,
        "w3_prompt_tokens": W3_PROMPT_TOKENS,
        "w3_new": W3_NEW_TOKENS,
    }
    if quick:
        sizes.update(QUICK_SIZES)
    w1_texts, w1_ids = _exact_texts(model, sizes["w1_prompts"], sizes["w1_tokens"], 1)
    w2_texts, w2_ids = _exact_texts(model, 1, sizes["w2_prompt_tokens"], 2)
    w3_texts, w3_ids = _exact_texts(model, sizes["w3_prompts"], sizes["w3_prompt_tokens"], 3)
    d = model.d_model
    rng = np.random.default_rng(0)
    units = rng.standard_normal((1 + sizes["w3_prompts"], d))
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    # Norm of the residual stream at the steered layer on the W2 prompt: sets the
    # strength of the (strong) vector used by the sanity check.
    acts = model.capture(w2_texts, layers=[STEER_LAYER], position="all", progress=False)
    h_norm = float(np.median(np.linalg.norm(acts[0][0], axis=-1)))
    np.savez(
        work / "vectors.npz",
        w2=(STEER_COEF * units[0]).astype(np.float32),
        w3=(STEER_COEF * units[1:]).astype(np.float32),
        unit=units[0].astype(np.float32),
    )
    spec = {
        "model_path": path,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "vocab_size": model.vocab_size,
        "steer_layer": STEER_LAYER,
        "steer_coef": STEER_COEF,
        "check_coef": h_norm,
        "sizes": sizes,
        "w1": {"texts": w1_texts, "ids": w1_ids},
        "w2": {"texts": w2_texts, "ids": w2_ids},
        "w3": {"texts": w3_texts, "ids": w3_ids},
        **_block_params(path),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    return {"model_path": path, "h_norm_layer15": h_norm, **sizes}


# -- GEMM ceiling -----------------------------------------------------------------------


def task_gemm(work: Path, quick: bool) -> dict[str, Any]:
    """fp32 GEMM throughput of numpy (its BLAS) on THREADS threads: 2048^2 matmuls."""
    from threadpoolctl import threadpool_info, threadpool_limits

    n = 1024 if quick else 2048
    reps = 3 if quick else 10
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(limits=THREADS):
        a @ b
        a @ b
        times = []
        for _ in range(reps):
            dt, _ = timed(lambda: a @ b)
            times.append(dt)
        info = threadpool_info()
    flops = 2.0 * n**3
    return {
        "n": n,
        "gflops_median": flops / float(np.median(times)) / 1e9,
        "gflops_best": flops / min(times) / 1e9,
        "blas": [
            {k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for i in info
        ],
    }


# -- steerlab ---------------------------------------------------------------------------


def _steerlab(spec: dict[str, Any], dtype: str) -> tuple[Any, dict[str, float]]:
    start = time.perf_counter()
    import steerlab

    import_s = time.perf_counter() - start
    steerlab.set_progress(False)
    load_s, model = timed(lambda: steerlab.Model.load(spec["model_path"], dtype=dtype))
    return model, {"import_s": import_s, "load_s": load_s}


def task_steerlab(work: Path, dtype: str, workload: str) -> dict[str, Any]:
    """steerlab with ``dtype`` ("auto" keeps Q4_1 quantized, "f32" dequantizes)."""
    spec, vec = load_spec(work)
    model, info = _steerlab(spec, dtype)
    layers = list(range(spec["n_layers"]))
    sz = spec["sizes"]
    w1, w2, w3 = spec["w1"]["texts"], spec["w2"]["texts"], spec["w3"]["texts"]
    v2 = {STEER_LAYER: vec["w2"]}
    per_row = [{STEER_LAYER: v} for v in vec["w3"]]
    if workload in ("w1", "w1-nocapture"):
        capture = workload == "w1"

        def run() -> Any:
            if capture:
                return model.capture(
                    w1, layers=layers, position="last", batch_size=16, progress=False
                )
            return model.logits(w1, batch_size=16, progress=False)

        model.capture(w1[:2], layers=layers, position="last", batch_size=2, progress=False)
        tokens = sz["w1_prompts"] * sz["w1_tokens"]
        seconds, out = timed_workload(run, tokens, info)
        if capture:
            assert out.shape == (len(w1), len(layers), spec["d_model"]), out.shape
    elif workload in ("w2", "w2-unsteered"):
        steering = v2 if workload == "w2" else None

        def run() -> Any:
            return model.generate(
                w2,
                steering=steering,
                max_new_tokens=sz["w2_new"],
                return_ids=True,
                batch_size=1,
                ignore_eos=True,
                progress=False,
            )

        model.generate(w2, steering=steering, max_new_tokens=4, ignore_eos=True, progress=False)
        tokens = sz["w2_new"]
        seconds, out = timed_workload(run, tokens, info)
        assert len(out[0]) == sz["w2_new"], len(out[0])
    elif workload in ("w3", "w3-shared", "w3-unsteered"):
        steering: Any = {"w3": per_row, "w3-shared": {STEER_LAYER: vec["w3"][0]}}.get(workload)

        def run() -> Any:
            return model.generate(
                w3,
                steering=steering,
                max_new_tokens=sz["w3_new"],
                return_ids=True,
                batch_size=len(w3),
                ignore_eos=True,
                progress=False,
            )

        model.generate(w3, steering=steering, max_new_tokens=2, batch_size=len(w3), ignore_eos=True)
        tokens = sz["w3_prompts"] * sz["w3_new"]
        seconds, out = timed_workload(run, tokens, info)
        assert all(len(row) == sz["w3_new"] for row in out)
    else:
        raise SystemExit(f"unknown steerlab workload {workload!r}")
    return {"seconds": seconds, "tokens": tokens, **info}


def check_steerlab(work: Path, dtype: str) -> dict[str, Any]:
    """Greedy tokens and last-position logits of the W2 prompt under a strong vector."""
    spec, vec = load_spec(work)
    model, _ = _steerlab(spec, dtype)
    strong = {STEER_LAYER: vec["unit"] * spec["check_coef"]}
    text = spec["w2"]["texts"]
    out: dict[str, Any] = {}
    for name, steering in (("plain", None), ("steered", strong)):
        ids = model.generate(
            text,
            steering=steering,
            max_new_tokens=CHECK_NEW_TOKENS,
            return_ids=True,
            ignore_eos=True,
            progress=False,
        )
        out[f"tokens_{name}"] = [int(t) for t in ids[0]]
        logits = np.asarray(model.logits(text, steering=steering, progress=False))[0]
        np.save(
            work / f"check-steerlab-{'q4' if dtype == 'auto' else dtype}-{name}.npy",
            logits.astype(np.float32),
        )
    return out


# -- transformers (+ steering-vectors, repeng) ------------------------------------------


def _transformers(
    spec: dict[str, Any], work: Path, from_gguf: bool
) -> tuple[Any, Any, dict[str, float]]:
    """The transformers model in f32, from the GGUF file or from the safetensors cache
    holding the same dequantized weights (see ``task_hf_cache``)."""
    start = time.perf_counter()
    import torch

    torch.set_num_threads(THREADS)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    import_s = time.perf_counter() - start
    path = Path(spec["model_path"])

    def load() -> Any:
        if from_gguf:
            return AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            )
        return AutoModelForCausalLM.from_pretrained(work / "hf-cache", dtype=torch.float32)

    load_s, model = timed(load)
    model.eval()
    return torch, model, {"import_s": import_s, "load_s": load_s, "from_gguf": from_gguf}


def task_hf_cache(work: Path, quick: bool) -> dict[str, Any]:
    """Save the transformers model loaded from the GGUF file as f32 safetensors."""
    spec, _ = load_spec(work)
    _, model, info = _transformers(spec, work, from_gguf=True)
    model.save_pretrained(work / "hf-cache", safe_serialization=True)
    return info


def _generate_kwargs(torch: Any, ids: list[list[int]], new: int) -> dict[str, Any]:
    """Greedy, fixed-length generation (eos suppressed until `new` tokens)."""
    input_ids = torch.tensor(ids, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": 2,
    }


def task_transformers(work: Path, tool: str, workload: str) -> dict[str, Any]:
    """transformers (``hf``), + steering-vectors (``sv``), + repeng (``repeng``).

    W1 calls the base model (``model.model``, no LM head: the peers' best case) with
    ``output_hidden_states`` (hf) or under ``record_activations`` (sv), and returns the
    last position of every block's output as one numpy array. W2 loads from the GGUF
    file (so its process gives the load time and peak RSS of the GGUF path); the
    others load the same weights from the safetensors cache.
    """
    spec, vec = load_spec(work)
    from_gguf = workload == "w2" and tool == "sv"
    torch, model, info = _transformers(spec, work, from_gguf)
    sz = spec["sizes"]
    n_layers = spec["n_layers"]
    if workload.startswith("w1"):
        batch = int(workload.split("-b")[1])
        ids = torch.tensor(spec["w1"]["ids"], dtype=torch.long)
        if tool == "sv":
            from steering_vectors import record_activations

        def forward(chunk: Any) -> np.ndarray:
            if tool == "hf":
                out = model.model(input_ids=chunk, output_hidden_states=True, use_cache=False)
                hs = out.hidden_states[1 : n_layers + 1]
                return torch.stack([h[:, -1, :] for h in hs], dim=1).numpy()
            with record_activations(
                model, layer_type="decoder_block", clone_activations=False
            ) as rec:
                model.model(input_ids=chunk, use_cache=False)
            return torch.stack([rec[i][0][:, -1, :] for i in range(n_layers)], dim=1).numpy()

        def run() -> np.ndarray:
            return np.concatenate(
                [forward(ids[s : s + batch]) for s in range(0, len(ids), batch)], axis=0
            )

        with torch.inference_mode():
            forward(ids[:1, :8])
            seconds, out = timed_workload(run, int(ids.numel()), info)
        assert out.shape == (len(ids), n_layers, spec["d_model"]), out.shape
        return {"seconds": seconds, "tokens": int(ids.numel()), "batch": batch, **info}

    if workload == "w2":
        kwargs = _generate_kwargs(torch, spec["w2"]["ids"], sz["w2_new"])
        vector = vec["w2"]
    elif workload == "w3":
        kwargs = _generate_kwargs(torch, spec["w3"]["ids"], sz["w3_new"])
        vector = vec["w3"][0]  # one vector for all rows: their best case
    else:
        raise SystemExit(f"unknown transformers workload {workload!r}")
    if tool == "sv":
        from steering_vectors import SteeringVector

        steer = SteeringVector({STEER_LAYER: torch.tensor(vector)}, "decoder_block")
        generate = model.generate

        def run() -> Any:
            with steer.apply(model, multiplier=1.0):
                return generate(**kwargs)
    elif tool == "repeng":
        from repeng import ControlModel, ControlVector

        wrapped = ControlModel(model, [STEER_LAYER])
        wrapped.set_control(ControlVector("llama", {STEER_LAYER: vector}), coeff=1.0)

        def run() -> Any:
            return wrapped.generate(**kwargs)
    else:
        raise SystemExit(f"transformers workload {workload!r} needs a steering tool")
    with torch.inference_mode():
        warm = dict(kwargs, max_new_tokens=2, min_new_tokens=2)
        if tool == "sv":
            with steer.apply(model, multiplier=1.0):
                model.generate(**warm)
        else:
            wrapped.generate(**warm)
        n_new = kwargs["input_ids"].shape[0] * kwargs["max_new_tokens"]
        seconds, out = timed_workload(run, n_new, info)
    n_prompt = kwargs["input_ids"].shape[1]
    new = out[:, n_prompt:]
    assert new.shape[1] == kwargs["max_new_tokens"], new.shape
    return {"seconds": seconds, "tokens": int(new.numel()), **info}


def check_transformers(work: Path) -> dict[str, Any]:
    """Greedy tokens and last-position logits of the W2 prompt: unsteered, and with the
    strong vector at blocks 14, 15 and 16 through steering-vectors, and at block 15
    through repeng."""
    spec, vec = load_spec(work)
    torch, model, _ = _transformers(spec, work, from_gguf=False)
    from repeng import ControlModel, ControlVector
    from steering_vectors import SteeringVector

    strong = vec["unit"] * spec["check_coef"]
    kwargs = _generate_kwargs(torch, spec["w2"]["ids"], CHECK_NEW_TOKENS)
    n_prompt = kwargs["input_ids"].shape[1]
    out: dict[str, Any] = {}

    def record(name: str, run: Callable[[], Any], logits: Callable[[], Any]) -> None:
        with torch.inference_mode():
            out[f"tokens_{name}"] = [int(t) for t in run()[0, n_prompt:]]
            last = logits()[0, -1].float().numpy()
        np.save(work / f"check-hf-{name}.npy", last)

    record(
        "plain",
        lambda: model.generate(**kwargs),
        lambda: model(input_ids=kwargs["input_ids"]).logits,
    )
    for layer in (STEER_LAYER - 1, STEER_LAYER, STEER_LAYER + 1):
        steer = SteeringVector({layer: torch.tensor(strong)}, "decoder_block")
        with steer.apply(model, multiplier=1.0):
            record(
                f"sv{layer}",
                lambda: model.generate(**kwargs),
                lambda: model(input_ids=kwargs["input_ids"]).logits,
            )
    wrapped = ControlModel(model, [STEER_LAYER])
    wrapped.set_control(ControlVector("llama", {STEER_LAYER: strong}), coeff=1.0)
    record(
        "repeng15",
        lambda: wrapped.generate(**kwargs),
        lambda: wrapped(input_ids=kwargs["input_ids"]).logits,
    )
    return out


# -- llama.cpp through llama-cpp-python's low-level API ---------------------------------


class Llama:
    """A llama.cpp model and context driven through ``llama_cpp``'s ctypes bindings:
    ``llama_batch`` + ``llama_decode`` for prefill and decoding of one or many
    sequences, greedy argmax over the returned logits, and the control vector set with
    ``llama_set_adapter_cvec``."""

    def __init__(self, path: str, n_ctx: int, n_batch: int, n_seq: int) -> None:
        import llama_cpp

        self.lib = llama_cpp
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_seq_max = n_seq
        cparams.n_threads = THREADS
        cparams.n_threads_batch = THREADS
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.n_layer = llama_cpp.llama_model_n_layer(self.model)
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, n_seq)

    def set_vector(self, layer: int | None, vector: np.ndarray | None) -> None:
        """Steer the output of block `layer` (0-based) by `vector`, or clear (None).

        The buffer holds n_embd floats per layer starting at layer 1 (llama.cpp never
        steers block 0), so block `layer` sits at offset (layer - 1) * n_embd, and
        il_start = il_end = layer.
        """
        if layer is None or vector is None:
            rc = self.lib.llama_set_adapter_cvec(self.ctx, None, 0, self.n_embd, -1, -1)
        else:
            if layer < 1:
                raise ValueError("llama.cpp control vectors cannot steer block 0")
            self._cvec = np.zeros(self.n_layer * self.n_embd, dtype=np.float32)
            self._cvec[(layer - 1) * self.n_embd : layer * self.n_embd] = vector
            ptr = self._cvec.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = self.lib.llama_set_adapter_cvec(
                self.ctx, ptr, self._cvec.size, self.n_embd, layer, layer
            )
        if rc != 0:
            raise RuntimeError(f"llama_set_adapter_cvec returned {rc}")

    def clear(self) -> None:
        """Forget every sequence in the KV cache."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of (token, position, sequence, wants_logits) entries."""
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(entries)
        rc = self.lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def logits(self, index: int) -> np.ndarray:
        """Logits of the `index`-th output of the last decode (-1: the last one)."""
        ptr = self.lib.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def generate(self, prompts: list[list[int]], new: int) -> list[list[int]]:
        """Greedy continuation of all prompts as parallel sequences, `new` tokens each
        (eos ignored): one batch for all prefills, then one batch per step."""
        self.clear()
        entries = []
        for seq, ids in enumerate(prompts):
            entries += [(t, p, seq, p == len(ids) - 1) for p, t in enumerate(ids)]
        self.decode(entries)
        # llama_get_logits_ith indexes the tokens of the batch: after the prefill, the
        # last prompt token of each sequence; after a step, token `seq` of the batch.
        rows = list(np.cumsum([len(ids) for ids in prompts]) - 1)
        out: list[list[int]] = [[] for _ in prompts]
        for step in range(new):
            for seq in range(len(prompts)):
                out[seq].append(int(np.argmax(self.logits(int(rows[seq])))))
            rows = list(range(len(prompts)))
            if step == new - 1:
                break
            self.decode(
                [(out[seq][-1], len(ids) + step, seq, True) for seq, ids in enumerate(prompts)]
            )
        return out


def _llama(spec: dict[str, Any], n_ctx: int, n_batch: int, n_seq: int) -> tuple[Llama, dict]:
    start = time.perf_counter()
    import llama_cpp  # noqa: F401  (import time counted separately from load)

    import_s = time.perf_counter() - start
    load_s, llm = timed(lambda: Llama(spec["model_path"], n_ctx, n_batch, n_seq))
    return llm, {"import_s": import_s, "load_s": load_s}


def task_llama(work: Path, workload: str) -> dict[str, Any]:
    """llama.cpp: W1 prefill (reference only: no residual capture), W2 with the vector as
    a control vector, W3 with 16 parallel sequences in one context (one control vector
    per context, so all rows share it)."""
    spec, vec = load_spec(work)
    sz = spec["sizes"]
    if workload == "w1-prefill":
        ids = spec["w1"]["ids"]
        llm, info = _llama(spec, n_ctx=512, n_batch=max(len(r) for r in ids), n_seq=1)

        def run() -> None:
            for row in ids:
                llm.clear()
                llm.decode([(t, p, 0, p == len(row) - 1) for p, t in enumerate(row)])
                llm.logits(-1)

        llm.clear()
        llm.decode([(t, p, 0, False) for p, t in enumerate(ids[0][:8])])
        tokens = sum(len(r) for r in ids)
        seconds, _ = timed_workload(run, tokens, info)
        return {"seconds": seconds, "tokens": tokens, **info}
    if workload == "w2":
        prompts, new = spec["w2"]["ids"], sz["w2_new"]
        vector = vec["w2"]
    elif workload == "w3":
        prompts, new = spec["w3"]["ids"], sz["w3_new"]
        vector = vec["w3"][0]
    else:
        raise SystemExit(f"unknown llama workload {workload!r}")
    n_seq = len(prompts)
    # Per-sequence context: prompt + new tokens (llama.cpp splits n_ctx across sequences).
    per_seq = 256 * -(-(max(len(p) for p in prompts) + new) // 256)
    llm, info = _llama(
        spec, n_ctx=per_seq * n_seq, n_batch=sum(len(p) for p in prompts), n_seq=n_seq
    )
    llm.set_vector(STEER_LAYER, vector)
    llm.generate(prompts, 2)
    seconds, out = timed_workload(lambda: llm.generate(prompts, new), n_seq * new, info)
    assert all(len(row) == new for row in out)
    return {"seconds": seconds, "tokens": n_seq * new, "n_seq": n_seq, **info}


def check_llama(work: Path) -> dict[str, Any]:
    """Greedy tokens and last-position logits of the W2 prompt, plain and with the strong
    vector at control-vector slot 15."""
    spec, vec = load_spec(work)
    prompt = spec["w2"]["ids"][0]
    llm, _ = _llama(spec, n_ctx=256, n_batch=len(prompt), n_seq=1)
    out: dict[str, Any] = {}
    for name, vector in (("plain", None), ("steered", vec["unit"] * spec["check_coef"])):
        llm.set_vector(STEER_LAYER if vector is not None else None, vector)
        out[f"tokens_{name}"] = llm.generate([prompt], CHECK_NEW_TOKENS)[0]
        llm.clear()
        llm.decode([(t, p, 0, p == len(prompt) - 1) for p, t in enumerate(prompt)])
        np.save(work / f"check-llama-{name}.npy", llm.logits(-1).astype(np.float32))
    return out


# -- W5: one training step of a steering vector (bench/w5_*.py) ---------------------------


def task_w5(work: Path, tool: str, quick: bool) -> dict[str, Any]:
    """One W5 process: ``w5_train_torch.run`` (f32 weights from the ``hf-cache``
    safetensors copy of the GGUF file) or ``w5_train_steerlab.run`` (the GGUF file, f32 or
    kept quantized). ``seconds`` is the median step; ``tokens`` the 8 x 64 batch."""
    spec, _ = load_spec(work)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    steps = 1 if quick else 5
    if tool == "torch":
        import w5_train_torch

        cache = work / "hf-cache"
        return w5_train_torch.run(
            gguf=None if cache.exists() else spec["model_path"],
            hf_dir=str(cache) if cache.exists() else None,
            steps=steps,
        )
    if tool in ("steerlab-f32", "steerlab-q4"):
        import w5_train_steerlab

        dtype = "f32" if tool == "steerlab-f32" else "auto"
        return w5_train_steerlab.run(spec["model_path"], dtype=dtype, steps=steps)
    raise SystemExit(f"no W5 for tool {tool!r}")


# -- entry point --------------------------------------------------------------------------


def run_task(task: str, work: Path, quick: bool) -> dict[str, Any]:
    """Dispatch one task name to its function."""
    tool, _, workload = task.partition(":")
    if task == "prepare":
        return task_prepare(work, quick)
    if task == "gemm":
        return task_gemm(work, quick)
    if task == "hf-cache":
        return task_hf_cache(work, quick)
    if tool == "check":
        return {
            "steerlab-f32": lambda: check_steerlab(work, "f32"),
            "steerlab-q4": lambda: check_steerlab(work, "auto"),
            "transformers": lambda: check_transformers(work),
            "llama": lambda: check_llama(work),
        }[workload]()
    if workload == "w5":
        return task_w5(work, tool, quick)
    if tool in ("steerlab-q4", "steerlab-f32"):
        return task_steerlab(work, "auto" if tool == "steerlab-q4" else "f32", workload)
    if tool in ("hf", "sv", "repeng"):
        return task_transformers(work, tool, workload)
    if tool == "llama":
        return task_llama(work, workload)
    raise SystemExit(f"unknown task {task!r}")


def main() -> None:
    """``measure.py TASK WORK_DIR [--quick]``: run one task, print its result line."""
    args = [a for a in sys.argv[1:] if a != "--quick"]
    if len(args) != 2:
        raise SystemExit(__doc__)
    task, work = args[0], Path(args[1])
    _TASK[0] = task
    start = _STARTED[0]
    result = run_task(task, work, "--quick" in sys.argv)
    result.update(task=task, process_s=time.perf_counter() - start, pid=os.getpid())
    emit(result)


if __name__ == "__main__":
    main()
