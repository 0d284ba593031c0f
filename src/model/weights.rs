//! Where weights come from: a GGUF file (quantized or dequantized) or a Hugging Face
//! folder of safetensors shards. Both are read through logical names so the block code
//! never sees a file format.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};

use super::config::Arch;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kernels::{self, QLinear};

mod linear;
pub use linear::{Embedding, Linear};

/// `auto` keeps GGUF weights quantized; `f32` dequantizes everything (exact path,
/// differentiable w.r.t. activations and intervention parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    Auto,
    F32,
}

impl WeightDtype {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(WeightDtype::Auto),
            "f32" | "float32" => Ok(WeightDtype::F32),
            other => Err(Error::invalid(format!(
                "dtype must be 'auto' or 'f32', got '{other}'"
            ))),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            WeightDtype::Auto => "auto",
            WeightDtype::F32 => "f32",
        }
    }
}

/// Logical tensor names, resolved per file format.
pub enum Source {
    Gguf(Box<Gguf>),
    Safetensors {
        st: candle_core::safetensors::MmapedSafetensors,
        prefix: String,
        dir: PathBuf,
    },
}

pub struct Weights {
    pub source: Source,
    pub dtype: WeightDtype,
    pub device: Device,
    pub arch: Arch,
}

impl Weights {
    pub fn from_gguf(g: Gguf, dtype: WeightDtype, device: Device, arch: Arch) -> Self {
        Weights {
            source: Source::Gguf(Box::new(g)),
            dtype,
            device,
            arch,
        }
    }

    /// Open the safetensors shards of a Hugging Face folder.
    pub fn from_hf_dir(dir: &Path, device: Device, arch: Arch) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        // (tensor, shard) pairs the index lists, checked against the shards below.
        let mut listed: Vec<(String, PathBuf)> = Vec::new();
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(format!("{}: not valid JSON: {e}", index.display())))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::format(format!("{}: missing 'weight_map' object", index.display()))
                })?;
            let mut names: Vec<&str> = Vec::with_capacity(map.len().min(4096));
            for (tensor, shard) in map {
                let shard = shard.as_str().ok_or_else(|| {
                    Error::format(format!(
                        "{}: weight_map['{tensor}'] is {shard}, expected a shard file name",
                        index.display()
                    ))
                })?;
                names.push(shard);
                listed.push((tensor.clone(), dir.join(shard)));
            }
            names.sort_unstable();
            names.dedup();
            names
                .into_iter()
                .map(|n| shard_path(dir, &index, n))
                .collect::<Result<Vec<_>>>()?
        } else {
            let single = dir.join("model.safetensors");
            if single.exists() {
                vec![single]
            } else {
                let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|e| Error::io(dir, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                found.sort();
                found
            }
        };
        if files.is_empty() {
            return Err(Error::NotFound {
                path: dir.to_path_buf(),
                what: "no *.safetensors weights in this folder (expected model.safetensors or \
                       model.safetensors.index.json with its shards)"
                    .into(),
            });
        }
        for f in &files {
            if !f.exists() {
                return Err(Error::NotFound {
                    path: f.clone(),
                    what: "safetensors shard listed in the index is missing".into(),
                });
            }
        }
        // Every shard's header is checked with bounded reads before safetensors and candle
        // parse it; a tensor in two shards, or not where the index puts it, is refused.
        let mut home: std::collections::HashMap<String, &Path> = std::collections::HashMap::new();
        for f in &files {
            let header = crate::safetensors_header::check(f, MAX_SHARD_HEADER)?;
            for t in header.tensors {
                if let Some(other) = home.insert(t.name.clone(), f) {
                    return Err(Error::format(format!(
                        "{}: tensor '{}' is in two shards, {} and {}",
                        dir.display(),
                        t.name,
                        other.display(),
                        f.display()
                    )));
                }
            }
        }
        for (tensor, shard) in &listed {
            if home.get(tensor).copied() != Some(shard.as_path()) {
                return Err(Error::format(format!(
                    "{}: the index puts tensor '{tensor}' in {}, but {}",
                    index.display(),
                    shard.display(),
                    match home.get(tensor) {
                        Some(p) => format!("it is in {}", p.display()),
                        None => "no shard has it".to_string(),
                    }
                )));
            }
        }
        // SAFETY: the files are memory-mapped read-only; steerlab never writes them and
        // copies every tensor out (to f32) at load time, before returning to the caller.
        let st =
            unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.map_err(|e| {
                Error::format(format!(
                    "{}: cannot read safetensors weights: {e}",
                    dir.display()
                ))
            })?;
        let mut w = Weights {
            source: Source::Safetensors {
                st,
                prefix: String::new(),
                dir: dir.to_path_buf(),
            },
            dtype: WeightDtype::F32,
            device,
            arch,
        };
        // Multimodal Gemma 3 checkpoints nest the text model.
        for p in ["", "language_model.", "model.language_model."] {
            if w.has(&format!("{p}model.embed_tokens.weight"))
                || (p == "model.language_model."
                    && w.has("model.language_model.embed_tokens.weight"))
            {
                if let Source::Safetensors { prefix, .. } = &mut w.source {
                    *prefix = p.to_string();
                }
                break;
            }
        }
        Ok(w)
    }

    fn has(&self, full: &str) -> bool {
        match &self.source {
            Source::Gguf(g) => g.content.tensor_infos.contains_key(full),
            Source::Safetensors { st, .. } => st.get(full).is_ok(),
        }
    }

    fn origin(&self) -> String {
        match &self.source {
            Source::Gguf(g) => g.path.display().to_string(),
            Source::Safetensors { dir, .. } => dir.display().to_string(),
        }
    }

    /// Map a logical name (`embed`, `norm`, `lm_head`, `L.q`, ...) to the file's name.
    fn resolve(&self, logical: &str) -> String {
        let (layer, part) = match logical.split_once('.') {
            Some((l, p)) => (Some(l), p),
            None => (None, logical),
        };
        match &self.source {
            Source::Gguf(_) => match layer {
                None => match part {
                    "embed" => "token_embd.weight".into(),
                    "norm" => "output_norm.weight".into(),
                    "lm_head" => "output.weight".into(),
                    other => other.into(),
                },
                Some(i) => {
                    let n = match part {
                        "attn_norm" => "attn_norm.weight",
                        "q" => "attn_q.weight",
                        "k" => "attn_k.weight",
                        "v" => "attn_v.weight",
                        "o" => "attn_output.weight",
                        "q_bias" => "attn_q.bias",
                        "k_bias" => "attn_k.bias",
                        "v_bias" => "attn_v.bias",
                        "q_norm" => "attn_q_norm.weight",
                        "k_norm" => "attn_k_norm.weight",
                        "post_attn_norm" => "post_attention_norm.weight",
                        "ffn_norm" => "ffn_norm.weight",
                        "post_ffn_norm" => "post_ffw_norm.weight",
                        "gate" => "ffn_gate.weight",
                        "up" => "ffn_up.weight",
                        "down" => "ffn_down.weight",
                        other => other,
                    };
                    format!("blk.{i}.{n}")
                }
            },
            Source::Safetensors { prefix, .. } => match layer {
                None => match part {
                    "embed" => format!("{prefix}model.embed_tokens.weight"),
                    "norm" => format!("{prefix}model.norm.weight"),
                    "lm_head" => {
                        if prefix.is_empty() {
                            "lm_head.weight".into()
                        } else {
                            format!("{prefix}lm_head.weight")
                        }
                    }
                    other => other.into(),
                },
                Some(i) => {
                    let gemma = self.arch == Arch::Gemma3;
                    let n = match part {
                        "attn_norm" => "input_layernorm.weight",
                        "q" => "self_attn.q_proj.weight",
                        "k" => "self_attn.k_proj.weight",
                        "v" => "self_attn.v_proj.weight",
                        "o" => "self_attn.o_proj.weight",
                        "q_bias" => "self_attn.q_proj.bias",
                        "k_bias" => "self_attn.k_proj.bias",
                        "v_bias" => "self_attn.v_proj.bias",
                        "q_norm" => "self_attn.q_norm.weight",
                        "k_norm" => "self_attn.k_norm.weight",
                        "post_attn_norm" => "post_attention_layernorm.weight",
                        // Llama's pre-MLP norm is called post_attention_layernorm in HF.
                        "ffn_norm" if gemma => "pre_feedforward_layernorm.weight",
                        "ffn_norm" => "post_attention_layernorm.weight",
                        "post_ffn_norm" => "post_feedforward_layernorm.weight",
                        "gate" => "mlp.gate_proj.weight",
                        "up" => "mlp.up_proj.weight",
                        "down" => "mlp.down_proj.weight",
                        other => other,
                    };
                    format!("{prefix}model.layers.{i}.{n}")
                }
            },
        }
    }

    pub fn exists(&self, logical: &str) -> bool {
        self.has(&self.resolve(logical))
    }

    fn missing(&self, name: &str) -> Error {
        Error::format(format!(
            "{}: missing tensor '{name}' (a {} checkpoint needs it)",
            self.origin(),
            self.arch.name()
        ))
    }

    fn dense(&self, name: &str) -> Result<Tensor> {
        match &self.source {
            Source::Gguf(g) => {
                let q = g.tensor(name, &self.device)?;
                Ok(q.dequantize(&self.device)?)
            }
            Source::Safetensors { st, .. } => {
                let view = st.get(name).map_err(|_| self.missing(name))?;
                // Weights are floats; candle would turn other dtypes (integers, the
                // placeholder F4/F6/F8_E8M0 types) into tensors it cannot convert.
                // (candle's safetensors is another major version than ours: compare names.)
                let dtype = format!("{:?}", view.dtype());
                if !matches!(dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
                    return Err(Error::unsupported(format!(
                        "{}: tensor '{name}' has dtype {dtype}; steerlab loads F32, F16, BF16 and F64 weights",
                        self.origin()
                    )));
                }
                let t = st.load(name, &self.device).map_err(|e| {
                    Error::format(format!("{}: tensor '{name}': {e}", self.origin()))
                })?;
                Ok(t.to_dtype(DType::F32)?)
            }
        }
    }

    /// A weight vector (norm scale, bias) as f32 with an expected length.
    pub fn vector(&self, logical: &str, len: usize) -> Result<Tensor> {
        let name = self.resolve(logical);
        if !self.has(&name) {
            return Err(self.missing(&name));
        }
        let t = self.dense(&name)?;
        // A vector stored with another shape is refused, not flattened.
        if t.dims() != [len] {
            return Err(Error::format(format!(
                "{}: tensor '{name}' has shape {:?}, expected [{len}]",
                self.origin(),
                t.dims()
            )));
        }
        // Hugging Face Gemma stores norm scales as w and applies (1 + w); GGUF files
        // already carry 1 + w (llama.cpp's converter adds it).
        let shift = self.arch == Arch::Gemma3
            && matches!(self.source, Source::Safetensors { .. })
            && logical.ends_with("norm");
        Ok(if shift { (t + 1.0)? } else { t })
    }

    /// A projection matrix [out, in] as a matmul (quantized or dense).
    pub fn linear(&self, logical: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        let name = self.resolve(logical);
        if !self.has(&name) {
            return Err(self.missing(&name));
        }
        match &self.source {
            Source::Gguf(g) if self.dtype == WeightDtype::Auto => {
                if let Some(packed) = self.packed(g, &name, out_dim, in_dim)? {
                    return Ok(Linear::Packed(packed));
                }
                let q = g.tensor(&name, &self.device)?;
                check_dims(&self.origin(), &name, q.shape().dims(), out_dim, in_dim)?;
                Linear::quantized(q)
            }
            _ => {
                let t = self.dense(&name)?;
                check_dims(&self.origin(), &name, t.dims(), out_dim, in_dim)?;
                Ok(Linear::Dense(t))
            }
        }
    }

    /// A GGUF matrix in a format the CPU kernels cover, repacked straight from the file's
    /// bytes (no candle tensor in between: one read, one repack). None on other devices
    /// or formats.
    fn packed(
        &self,
        g: &Gguf,
        name: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> Result<Option<Arc<QLinear>>> {
        if !self.device.is_cpu() {
            return Ok(None);
        }
        let Some(fmt) = g
            .content
            .tensor_infos
            .get(name)
            .and_then(|i| kernels::format_of(i.ggml_dtype))
        else {
            return Ok(None);
        };
        let (_, dims, raw) = g.raw(name)?;
        check_dims(&self.origin(), name, &dims, out_dim, in_dim)?;
        let packed = QLinear::from_gguf(fmt, &raw, out_dim, in_dim)
            .map_err(|e| Error::format(format!("{}: tensor '{name}': {e}", self.origin())))?;
        Ok(Some(Arc::new(packed)))
    }

    pub fn embedding(&self, vocab: usize, d: usize) -> Result<Embedding> {
        let name = self.resolve("embed");
        if !self.has(&name) {
            return Err(self.missing(&name));
        }
        match &self.source {
            Source::Gguf(g) if self.dtype == WeightDtype::Auto => {
                if let Some(packed) = self.packed(g, &name, vocab, d)? {
                    return Ok(Embedding::Packed(packed));
                }
                let q = g.tensor(&name, &self.device)?;
                check_dims(&self.origin(), &name, q.shape().dims(), vocab, d)?;
                Ok(match Linear::quantized(q)? {
                    Linear::Packed(p) => Embedding::Packed(p),
                    Linear::Candle(QMatMul::QTensor(q)) => Embedding::Quantized(q),
                    Linear::Candle(_) | Linear::Dense(_) | Linear::Trained(_) => {
                        let t = self.dense(&name)?;
                        Embedding::Dense(t)
                    }
                })
            }
            _ => {
                let t = self.dense(&name)?;
                check_dims(&self.origin(), &name, t.dims(), vocab, d)?;
                Ok(Embedding::Dense(t))
            }
        }
    }

    /// Raw stored bytes of the start of the embedding table (as in the file, before any
    /// dequantization), for the model fingerprint: the `auto` and `f32` loads of one file
    /// get the same fingerprint.
    pub fn fingerprint_bytes(&self) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let name = self.resolve("embed");
        match &self.source {
            Source::Gguf(g) => {
                let info = g
                    .content
                    .tensor_infos
                    .get(&name)
                    .ok_or_else(|| self.missing(&name))?;
                let start = g.content.tensor_data_offset + info.offset;
                let mut f = &g.file;
                f.seek(SeekFrom::Start(start))
                    .map_err(|e| Error::io(&g.path, e))?;
                let mut buf = vec![0u8; 16384];
                let mut n = 0;
                while n < buf.len() {
                    let r = f.read(&mut buf[n..]).map_err(|e| Error::io(&g.path, e))?;
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                buf.truncate(n);
                Ok(buf)
            }
            Source::Safetensors { st, .. } => {
                let view = st.get(&name).map_err(|_| self.missing(&name))?;
                let data = view.data();
                Ok(data[..data.len().min(16384)].to_vec())
            }
        }
    }
}

/// The safetensors crate's own limit on a header (100 MB).
const MAX_SHARD_HEADER: u64 = 100_000_000;

/// The path of a shard named in `model.safetensors.index.json`: a plain file name in
/// `dir` (no separator, no `..`, not absolute), which must not be a symlink leading out
/// of the folder. Anything else could make a downloaded index open files elsewhere.
fn shard_path(dir: &Path, index: &Path, name: &str) -> Result<PathBuf> {
    let refuse = |why: &str| {
        Err(Error::format(format!(
            "{}: shard {name:?} {why}; expected a plain file name inside {}",
            index.display(),
            dir.display()
        )))
    };
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).components().count() == 1
        && !Path::new(name).has_root();
    if !plain {
        return refuse("is not a plain file name");
    }
    let path = dir.join(name);
    if path.is_symlink() {
        let real_dir = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        match std::fs::canonicalize(&path) {
            Ok(real) if real.parent() == Some(real_dir.as_path()) => {}
            Ok(_) => return refuse("is a symbolic link to a file outside the folder"),
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Ok(path)
}

fn check_dims(origin: &str, name: &str, dims: &[usize], rows: usize, cols: usize) -> Result<()> {
    if dims != [rows, cols] {
        return Err(Error::format(format!(
            "{origin}: tensor '{name}' has shape {dims:?}, expected [{rows}, {cols}]"
        )));
    }
    Ok(())
}
