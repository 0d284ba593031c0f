//! Model configuration in two layers (as candle-transformers does): serde structs that
//! mirror `config.json` / GGUF metadata, converted into one normalised [`Config`] with
//! no `Option`s, which the forward reads.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// Architecture families steerlab implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Mistral, SmolLM2 (GGUF `llama`, HF `llama` / `mistral`).
    Llama,
    /// Qwen2 / Qwen2.5 (q/k/v biases).
    Qwen2,
    /// Gemma 3 text models (sandwich norms, q/k norms, sliding-window layers).
    Gemma3,
}

impl Arch {
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
        }
    }
}

pub const SUPPORTED_GGUF: &str = "llama, qwen2, gemma3";
pub const SUPPORTED_HF: &str = "llama, mistral, qwen2, gemma3_text, gemma3";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Silu,
    GeluTanh,
}

/// How rotary frequencies are rescaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear(f64),
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
}

/// The normalised configuration every forward reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    /// Rotary base for sliding-window layers (Gemma 3); equals `rope_theta` otherwise.
    pub rope_local_theta: f64,
    pub rope_scaling: RopeScaling,
    /// GGUF llama-family Q/K weights are permuted for interleaved (GPT-J style) rotary.
    pub rope_interleaved: bool,
    pub max_context: usize,
    /// Per layer: `Some(window)` when that layer attends only to the last `window` keys.
    pub sliding_window: Vec<Option<usize>>,
    pub attn_scale: f64,
    pub activation: Activation,
    pub attn_bias: bool,
    pub tie_embeddings: bool,
    /// Multiply the token embeddings by this (Gemma: sqrt(d_model)).
    pub embed_scale: Option<f64>,
    pub final_logit_softcap: Option<f64>,
}

/// Upper bounds on the sizes a model file may declare. They are checked as each size is
/// read, before anything is allocated from it (real models stay far below: 126 layers,
/// d_model 16384, 128 heads, head_dim 256, d_ff 53248, vocabulary 262k).
pub const MAX_LAYERS: usize = 4096;
pub const MAX_D_MODEL: usize = 1 << 16;
pub const MAX_HEADS: usize = 1024;
pub const MAX_HEAD_DIM: usize = 4096;
pub const MAX_D_FF: usize = 1 << 20;
pub const MAX_VOCAB: usize = 1 << 24;

/// A size read from `origin` (a path or "config.json") under `key`: 1..=max.
pub fn check_size(origin: &str, key: &str, v: u64, max: usize) -> Result<usize> {
    match usize::try_from(v) {
        Ok(n) if n >= 1 && n <= max => Ok(n),
        _ => Err(Error::format(format!(
            "{origin}: {key} = {v} is not a plausible size (expected 1..={max})"
        ))),
    }
}

impl Config {
    /// Check the relations between sizes and that every float is usable. Sizes were
    /// bounded when they were read ([`check_size`]); this runs again here so that a
    /// `Config` built in code is held to the same rules.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::format(format!("invalid model config: {m}")));
        let sizes = [
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("d_model", self.d_model, MAX_D_MODEL),
            ("n_heads", self.n_heads, MAX_HEADS),
            ("n_kv_heads", self.n_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("d_ff", self.d_ff, MAX_D_FF),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
        ];
        for (name, v, max) in sizes {
            if v == 0 || v > max {
                return bad(format!("{name}={v} (expected 1..={max})"));
            }
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "n_heads={} must be a positive multiple of n_kv_heads={}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!(
                "head_dim={} must be even and positive",
                self.head_dim
            ));
        }
        if self.max_context == 0 {
            return bad("max_context=0 (expected at least 1 token)".into());
        }
        if self.sliding_window.len() != self.n_layers {
            return bad(format!(
                "{} sliding-window entries for {} layers",
                self.sliding_window.len(),
                self.n_layers
            ));
        }
        if let Some(i) = self.sliding_window.iter().position(|w| *w == Some(0)) {
            return bad(format!(
                "layer {i} has a sliding window of 0 keys (expected at least 1)"
            ));
        }
        let positive = [
            ("rope_theta", self.rope_theta),
            ("rope_local_theta", self.rope_local_theta),
            ("attn_scale", self.attn_scale),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{name}={v} (expected a finite number > 0)"));
            }
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return bad(format!(
                "rms_eps={} (expected a finite number >= 0)",
                self.rms_eps
            ));
        }
        if let Some(c) = self.final_logit_softcap {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!(
                    "final_logit_softcap={c} (expected a finite number > 0)"
                ));
            }
        }
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear(f) => {
                if !(f.is_finite() && *f > 0.0) {
                    return bad(format!(
                        "linear rope scaling factor={f} (expected a finite number > 0)"
                    ));
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let all = [
                    ("factor", *factor),
                    ("low_freq_factor", *low_freq_factor),
                    ("high_freq_factor", *high_freq_factor),
                    ("original_max_position_embeddings", *original_max_position),
                ];
                for (name, v) in all {
                    if !(v.is_finite() && v > 0.0) {
                        return bad(format!(
                            "llama3 rope scaling {name}={v} (expected a finite number > 0)"
                        ));
                    }
                }
                if high_freq_factor <= low_freq_factor {
                    return bad(format!(
                        "llama3 rope scaling high_freq_factor={high_freq_factor} must be greater than low_freq_factor={low_freq_factor}"
                    ));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- HF config.json

#[derive(Debug, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_local_base_freq: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub sliding_window_pattern: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub query_pre_attn_scalar: Option<f64>,
    pub attention_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub final_logit_softcapping: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub mlp_bias: Option<bool>,
    pub text_config: Option<Box<HfConfig>>,
}

fn need<T>(v: Option<T>, key: &str) -> Result<T> {
    v.ok_or_else(|| Error::format(format!("config.json: missing required key '{key}'")))
}

fn parse_rope_scaling(v: &Option<serde_json::Value>) -> Result<RopeScaling> {
    let Some(v) = v else {
        return Ok(RopeScaling::None);
    };
    if v.is_null() {
        return Ok(RopeScaling::None);
    }
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear(num("factor").ok_or_else(|| {
            Error::format("config.json: rope_scaling 'linear' needs a number 'factor'")
        })?)),
        "llama3" => {
            // transformers requires all four; a default here would be a guess.
            let req = |k: &str| {
                num(k).ok_or_else(|| {
                    Error::format(format!(
                        "config.json: rope_scaling 'llama3' needs a number '{k}'"
                    ))
                })
            };
            Ok(RopeScaling::Llama3 {
                factor: req("factor")?,
                low_freq_factor: req("low_freq_factor")?,
                high_freq_factor: req("high_freq_factor")?,
                original_max_position: req("original_max_position_embeddings")?,
            })
        }
        other => Err(Error::unsupported(format!(
            "rope_scaling type '{other}' is not supported (supported: default, linear, llama3)"
        ))),
    }
}

impl HfConfig {
    pub fn into_config(self) -> Result<Config> {
        let mt = self.model_type.clone().unwrap_or_default();
        if mt == "gemma3" {
            if let Some(tc) = self.text_config {
                let mut tc = *tc;
                tc.model_type = Some("gemma3_text".into());
                return tc.into_config();
            }
        }
        let arch = match mt.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3_text" | "gemma3" => Arch::Gemma3,
            "" => return Err(Error::format("config.json has no 'model_type'")),
            other => {
                return Err(Error::unsupported(format!(
                    "unsupported architecture '{other}' (supported: {SUPPORTED_HF})"
                )))
            }
        };
        // Every size is bounded before anything is sized by it.
        let size = |v: Option<usize>, key: &str, max: usize| -> Result<usize> {
            check_size("config.json", key, need(v, key)? as u64, max)
        };
        let d_model = size(self.hidden_size, "hidden_size", MAX_D_MODEL)?;
        let n_heads = size(self.num_attention_heads, "num_attention_heads", MAX_HEADS)?;
        let n_layers = size(self.num_hidden_layers, "num_hidden_layers", MAX_LAYERS)?;
        let n_kv_heads = match self.num_key_value_heads {
            Some(v) => check_size("config.json", "num_key_value_heads", v as u64, MAX_HEADS)?,
            None => n_heads,
        };
        let head_dim = match self.head_dim {
            Some(v) => check_size("config.json", "head_dim", v as u64, MAX_HEAD_DIM)?,
            None if d_model % n_heads != 0 => {
                return Err(Error::format(format!(
                    "config.json: hidden_size = {d_model} is not a multiple of num_attention_heads = {n_heads} and there is no head_dim"
                )))
            }
            None => d_model / n_heads,
        };
        let d_ff = size(self.intermediate_size, "intermediate_size", MAX_D_FF)?;
        let vocab_size = size(self.vocab_size, "vocab_size", MAX_VOCAB)?;
        let max_context = match self.max_position_embeddings {
            Some(v) => check_size(
                "config.json",
                "max_position_embeddings",
                v as u64,
                u32::MAX as usize,
            )?,
            None => 4096,
        };
        if let Some(f) = self.partial_rotary_factor {
            if f != 1.0 {
                return Err(Error::unsupported(format!(
                    "config.json: partial_rotary_factor = {f} is not supported (steerlab rotates the whole head; expected 1.0)"
                )));
            }
        }
        if self.mlp_bias == Some(true) {
            return Err(Error::unsupported(
                "config.json: mlp_bias = true is not supported (steerlab's MLP has no biases)",
            ));
        }
        if let Some(w) = self.sliding_window {
            check_size("config.json", "sliding_window", w as u64, u32::MAX as usize)?;
        }
        let rope_theta = self.rope_theta.unwrap_or(10_000.0);
        let sliding_window = match arch {
            Arch::Gemma3 => {
                let w = self.sliding_window.unwrap_or(4096);
                let types: Vec<bool> = match &self.layer_types {
                    Some(t) => {
                        if t.len() != n_layers {
                            return Err(Error::format(format!(
                                "config.json: layer_types has {} entries, expected num_hidden_layers={n_layers}",
                                t.len()
                            )));
                        }
                        t.iter().map(|s| s == "sliding_attention").collect()
                    }
                    None => {
                        let p =
                            match self.sliding_window_pattern {
                                Some(0) => return Err(Error::format(
                                    "config.json: sliding_window_pattern = 0 (expected at least 1)",
                                )),
                                p => p.unwrap_or(6),
                            };
                        (0..n_layers).map(|i| (i + 1) % p != 0).collect()
                    }
                };
                types.into_iter().map(|s| s.then_some(w)).collect()
            }
            Arch::Llama if mt == "mistral" => vec![self.sliding_window; n_layers],
            Arch::Qwen2 if self.use_sliding_window == Some(true) => {
                vec![self.sliding_window; n_layers]
            }
            _ => vec![None; n_layers],
        };
        let act = self
            .hidden_activation
            .clone()
            .or(self.hidden_act.clone())
            .unwrap_or_else(|| "silu".into());
        let activation = match act.as_str() {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_tanh" => Activation::GeluTanh,
            other => {
                return Err(Error::unsupported(format!(
                    "activation '{other}' is not supported (supported: silu, gelu_pytorch_tanh)"
                )))
            }
        };
        let cfg = Config {
            arch,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            d_ff,
            vocab_size,
            rms_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_local_theta: match arch {
                Arch::Gemma3 => self.rope_local_base_freq.unwrap_or(10_000.0),
                _ => rope_theta,
            },
            rope_scaling: parse_rope_scaling(&self.rope_scaling)?,
            rope_interleaved: false,
            max_context,
            sliding_window,
            attn_scale: match arch {
                Arch::Gemma3 => self
                    .query_pre_attn_scalar
                    .unwrap_or(head_dim as f64)
                    .powf(-0.5),
                _ => (head_dim as f64).powf(-0.5),
            },
            activation,
            attn_bias: match arch {
                Arch::Qwen2 => true,
                _ => self.attention_bias.unwrap_or(false),
            },
            tie_embeddings: self
                .tie_word_embeddings
                .unwrap_or(matches!(arch, Arch::Gemma3)),
            embed_scale: match arch {
                Arch::Gemma3 => Some((d_model as f64).sqrt()),
                _ => None,
            },
            final_logit_softcap: self.final_logit_softcapping,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

// ---------------------------------------------------------------- GGUF metadata

/// Build the config from GGUF metadata (`{arch}.block_count` etc.).
pub fn from_gguf(g: &Gguf) -> Result<Config> {
    let arch_name = g.architecture()?.to_string();
    let arch = match arch_name.as_str() {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "gemma3" => Arch::Gemma3,
        other => {
            return Err(Error::unsupported(format!(
                "{}: unsupported GGUF architecture '{other}' (supported: {SUPPORTED_GGUF})",
                g.path.display()
            )))
        }
    };
    let k = |s: &str| format!("{arch_name}.{s}");
    let origin = g.path.display().to_string();
    // Every size is bounded as it is read, before anything is sized by it.
    let size = |key: &str, max: usize| -> Result<usize> {
        check_size(&origin, key, u64::from(g.get_u32(key)?), max)
    };
    let opt_size = |key: &str, max: usize| -> Result<Option<usize>> {
        g.opt_u32(key)?
            .map(|v| check_size(&origin, key, u64::from(v), max))
            .transpose()
    };
    let n_layers = size(&k("block_count"), MAX_LAYERS)?;
    let d_model = size(&k("embedding_length"), MAX_D_MODEL)?;
    let n_heads = size(&k("attention.head_count"), MAX_HEADS)?;
    let n_kv_heads = opt_size(&k("attention.head_count_kv"), MAX_HEADS)?.unwrap_or(n_heads);
    let head_dim = match opt_size(&k("attention.key_length"), MAX_HEAD_DIM)? {
        Some(v) => v,
        None if d_model % n_heads != 0 => {
            return Err(Error::format(format!(
                "{origin}: {} = {d_model} is not a multiple of {} = {n_heads} and there is no {}",
                k("embedding_length"),
                k("attention.head_count"),
                k("attention.key_length")
            )))
        }
        None => d_model / n_heads,
    };
    // Metadata steerlab cannot honour is refused rather than ignored.
    if let Some(v) = opt_size(&k("attention.value_length"), MAX_HEAD_DIM)? {
        if v != head_dim {
            return Err(Error::unsupported(format!(
                "{origin}: {} = {v} differs from the key length {head_dim}; steerlab needs equal key and value head sizes",
                k("attention.value_length")
            )));
        }
    }
    if let Some(v) = g.opt_u32(&k("rope.dimension_count"))? {
        if v as usize != head_dim {
            return Err(Error::unsupported(format!(
                "{origin}: {} = {v} but the head dimension is {head_dim}: partial rotary embeddings are not supported (steerlab rotates the whole head)",
                k("rope.dimension_count")
            )));
        }
    }
    if let Some(n) = g.opt_u32(&k("expert_count"))? {
        if n > 0 {
            return Err(Error::unsupported(format!(
                "{origin}: {} = {n}: mixture-of-experts models are not supported",
                k("expert_count")
            )));
        }
    }
    let d_ff = size(&k("feed_forward_length"), MAX_D_FF)?;
    let rms_eps = g.get_f32(&k("attention.layer_norm_rms_epsilon"))? as f64;
    let rope_theta = g.opt_f32(&k("rope.freq_base"))?.unwrap_or(10_000.0) as f64;
    let max_context = opt_size(&k("context_length"), u32::MAX as usize)?.unwrap_or(4096);
    let vocab_size = match g.opt_u32(&k("vocab_size"))? {
        Some(v) => check_size(&origin, &k("vocab_size"), u64::from(v), MAX_VOCAB)?,
        None => {
            let t = g
                .content
                .tensor_infos
                .get("token_embd.weight")
                .ok_or_else(|| {
                    Error::format(format!("{origin}: missing tensor 'token_embd.weight'"))
                })?;
            let rows = t.shape.dims().first().copied().unwrap_or(0);
            check_size(
                &origin,
                "the row count of token_embd.weight (the vocabulary size)",
                rows as u64,
                MAX_VOCAB,
            )?
        }
    };
    let rope_scaling = match g.opt_str(&k("rope.scaling.type"))? {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear(g.get_f32(&k("rope.scaling.factor"))? as f64),
        Some(other) => {
            return Err(Error::unsupported(format!(
                "{}: rope scaling '{other}' is not supported (supported: none, linear)",
                g.path.display()
            )))
        }
    };
    let tie = !g.content.tensor_infos.contains_key("output.weight");
    let sliding_window = match arch {
        Arch::Gemma3 => {
            let w = opt_size(&k("attention.sliding_window"), u32::MAX as usize)?.unwrap_or(512);
            // llama.cpp: every 6th layer (il % 6 == 5) attends globally.
            (0..n_layers).map(|i| (i % 6 < 5).then_some(w)).collect()
        }
        _ => vec![None; n_layers],
    };
    let cfg = Config {
        arch,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        d_ff,
        vocab_size,
        rms_eps,
        rope_theta,
        rope_local_theta: if arch == Arch::Gemma3 {
            10_000.0
        } else {
            rope_theta
        },
        rope_scaling,
        rope_interleaved: arch == Arch::Llama,
        max_context,
        sliding_window,
        attn_scale: (head_dim as f64).powf(-0.5),
        activation: if arch == Arch::Gemma3 {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        attn_bias: arch == Arch::Qwen2,
        tie_embeddings: tie,
        embed_scale: (arch == Arch::Gemma3).then(|| (d_model as f64).sqrt()),
        final_logit_softcap: g.opt_f32(&k("final_logit_softcapping"))?.map(|v| v as f64),
    };
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests;
