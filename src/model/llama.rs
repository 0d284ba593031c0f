//! Llama-family decoder block: Llama 2/3, Mistral, SmolLM2 and Qwen2/2.5 (which adds
//! q/k/v biases). Pre-norm residual blocks with RMSNorm, rotary attention with grouped
//! KV heads, and a SwiGLU MLP.
//!
//! Paper: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models".
//! Reference implementation matched: Hugging Face transformers
//! `models/llama/modeling_llama.py` and `models/qwen2/modeling_qwen2.py` (and llama.cpp's
//! `llm_build_llama` for GGUF files, whose Q/K rows are permuted for interleaved rotary).

use candle_core::{Module, Tensor};

use super::attention::{Attention, AttnInput};
use super::config::Config;
use super::weights::Weights;
use super::{Mlp, RmsNorm};
use crate::error::Result;

pub struct LlamaBlock {
    attn_norm: RmsNorm,
    attn: Attention,
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

    pub fn forward(&self, x: &Tensor, a: &mut AttnInput) -> Result<Tensor> {
        let h = self.attn_norm.forward(x)?; // [b, t, d]
        let h = self.attn.forward(&h, a)?; // [b, t, d]
        let x = (x + h)?; // residual after attention
        let h = self.ffn_norm.forward(&x)?;
        let h = self.mlp.forward(&h)?;
        Ok((x + h)?) // [b, t, d] residual stream after this block
    }
}
