//! Llama-family decoder block: Llama 2/3, Mistral, SmolLM2 and Qwen2/2.5 (which adds
//! q/k/v biases). Pre-norm residual blocks with RMSNorm, rotary attention with grouped
//! KV heads, and a SwiGLU MLP.
//!
//! Paper: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models".
//! Reference implementation matched: Hugging Face transformers
//! `models/llama/modeling_llama.py` and `models/qwen2/modeling_qwen2.py` (and llama.cpp's
//! `llm_build_llama` for GGUF files, whose Q/K rows are permuted for interleaved rotary).

use candle_core::Tensor;

use super::attention::{Attention, AttnInput};
use super::block::Mlp;
use super::config::Config;
use super::ops::{Mode, RmsNorm};
use super::weights::Weights;
use crate::error::Result;

pub struct LlamaBlock {
    pub(super) attn_norm: RmsNorm,
    pub(super) attn: Attention,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

impl LlamaBlock {
    pub fn load(w: &Weights, cfg: &Config, i: usize) -> Result<Self> {
        let p = |s: &str| format!("{i}.{s}");
        Ok(LlamaBlock {
            attn_norm: RmsNorm::load(w, &p("attn_norm"), cfg.d_model, cfg.rms_eps)?,
            attn: Attention::load(w, cfg, i)?,
            ffn_norm: RmsNorm::load(w, &p("ffn_norm"), cfg.d_model, cfg.rms_eps)?,
            mlp: Mlp::load(w, cfg, i)?,
        })
    }

    /// A trainable copy (see `Block::trainable`).
    pub fn trainable(
        &self,
        prefix: &str,
        dev: &candle_core::Device,
        vars: &mut Vec<(String, candle_core::Var)>,
    ) -> Result<Self> {
        let n = |s: &str| format!("{prefix}.{s}");
        Ok(LlamaBlock {
            attn_norm: self.attn_norm.trainable(n("attn_norm"), vars)?,
            attn: self.attn.trainable(&n("attn"), dev, vars)?,
            ffn_norm: self.ffn_norm.trainable(n("ffn_norm"), vars)?,
            mlp: self.mlp.trainable(&n("mlp"), dev, vars)?,
        })
    }

    /// What attention adds to the residual x [b, t, d]: attn(norm(x)) [b, t, d].
    pub fn attn_out(&self, x: &Tensor, a: &mut AttnInput) -> Result<Tensor> {
        let h = self.attn_norm.forward(x, a.mode)?; // [b, t, d]
        self.attn.forward(&h, a) // [b, t, d]
    }

    /// What the MLP adds to the residual x [b, t, d]: mlp(norm(x)) [b, t, d].
    pub fn mlp_out(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = self.ffn_norm.forward(x, mode)?;
        self.mlp.forward(&h, mode) // [b, t, d]
    }
}
