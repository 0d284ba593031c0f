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

impl Config {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::format(format!("invalid model config: {m}")));
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.vocab_size == 0 {
            return bad(format!(
                "n_layers={}, d_model={}, n_heads={}, vocab={} must all be positive",
                self.n_layers, self.d_model, self.n_heads, self.vocab_size
            ));
        }
        if self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "n_heads={} must be a positive multiple of n_kv_heads={}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad(format!(
                "head_dim={} must be even and positive",
                self.head_dim
            ));
        }
        if self.n_layers > 4096 || self.d_model > 1 << 16 || self.n_heads > 1024 {
            return bad("sizes are implausibly large".into());
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
            Error::format("rope_scaling 'linear' needs 'factor'")
        })?)),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor").unwrap_or(8.0),
            low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
            original_max_position: num("original_max_position_embeddings").unwrap_or(8192.0),
        }),
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
        let d_model = need(self.hidden_size, "hidden_size")?;
        let n_heads = need(self.num_attention_heads, "num_attention_heads")?;
        let n_layers = need(self.num_hidden_layers, "num_hidden_layers")?;
        let head_dim = self.head_dim.unwrap_or(d_model / n_heads.max(1));
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
                        let p = self.sliding_window_pattern.unwrap_or(6).max(1);
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
            n_kv_heads: self.num_key_value_heads.unwrap_or(n_heads),
            head_dim,
            d_ff: need(self.intermediate_size, "intermediate_size")?,
            vocab_size: need(self.vocab_size, "vocab_size")?,
            rms_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_local_theta: match arch {
                Arch::Gemma3 => self.rope_local_base_freq.unwrap_or(10_000.0),
                _ => rope_theta,
            },
            rope_scaling: parse_rope_scaling(&self.rope_scaling)?,
            rope_interleaved: false,
            max_context: self.max_position_embeddings.unwrap_or(4096),
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
    let n_layers = g.get_u32(&k("block_count"))? as usize;
    let d_model = g.get_u32(&k("embedding_length"))? as usize;
    let n_heads = g.get_u32(&k("attention.head_count"))? as usize;
    let n_kv_heads = g
        .opt_u32(&k("attention.head_count_kv"))?
        .map(|v| v as usize)
        .unwrap_or(n_heads);
    let head_dim = g
        .opt_u32(&k("attention.key_length"))?
        .map(|v| v as usize)
        .unwrap_or(d_model / n_heads.max(1));
    let d_ff = g.get_u32(&k("feed_forward_length"))? as usize;
    let rms_eps = g.get_f32(&k("attention.layer_norm_rms_epsilon"))? as f64;
    let rope_theta = g.opt_f32(&k("rope.freq_base"))?.unwrap_or(10_000.0) as f64;
    let max_context = g
        .opt_u32(&k("context_length"))?
        .map(|v| v as usize)
        .unwrap_or(4096);
    let vocab_size = match g.opt_u32(&k("vocab_size"))? {
        Some(v) => v as usize,
        None => {
            let t = g
                .content
                .tensor_infos
                .get("token_embd.weight")
                .ok_or_else(|| {
                    Error::format(format!(
                        "{}: missing tensor 'token_embd.weight'",
                        g.path.display()
                    ))
                })?;
            t.shape.dims().first().copied().unwrap_or(0)
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
            let w = g
                .opt_u32(&k("attention.sliding_window"))?
                .map(|v| v as usize)
                .unwrap_or(512);
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
