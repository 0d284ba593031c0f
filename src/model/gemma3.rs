//! Gemma 3 text decoder block: "sandwich" RMSNorms around attention and MLP, per-head
//! RMSNorm on queries and keys, GeGLU (tanh GELU) MLP, interleaved sliding-window
//! (local, rotary base 10k) and global (rotary base 1M) attention layers, embeddings
//! scaled by sqrt(d_model).
//!
//! Paper: Gemma Team 2025, "Gemma 3 Technical Report".
//! Reference implementation matched: Hugging Face transformers
//! `models/gemma3/modeling_gemma3.py` (`Gemma3DecoderLayer`), and llama.cpp's
//! `llm_build_gemma3` for GGUF files (norm scales stored as 1 + w).

use candle_core::Tensor;

use super::attention::{Attention, AttnInput};
use super::block::Mlp;
use super::config::Config;
use super::ops::{Mode, RmsNorm};
use super::weights::Weights;
use crate::error::Result;

pub struct Gemma3Block {
    pub(super) attn_norm: RmsNorm,
    pub(super) attn: Attention,
    pub(super) post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    mlp: Mlp,
    post_ffn_norm: RmsNorm,
}

impl Gemma3Block {
    pub fn load(w: &Weights, cfg: &Config, i: usize) -> Result<Self> {
        let d = cfg.d_model;
        let e = cfg.rms_eps;
        let p = |s: &str| format!("{i}.{s}");
        Ok(Gemma3Block {
            attn_norm: RmsNorm::load(w, &p("attn_norm"), d, e)?,
            attn: Attention::load(w, cfg, i)?,
            post_attn_norm: RmsNorm::load(w, &p("post_attn_norm"), d, e)?,
            ffn_norm: RmsNorm::load(w, &p("ffn_norm"), d, e)?,
            mlp: Mlp::load(w, cfg, i)?,
            post_ffn_norm: RmsNorm::load(w, &p("post_ffn_norm"), d, e)?,
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
        Ok(Gemma3Block {
            attn_norm: self.attn_norm.trainable(n("attn_norm"), vars)?,
            attn: self.attn.trainable(&n("attn"), dev, vars)?,
            post_attn_norm: self.post_attn_norm.trainable(n("post_attn_norm"), vars)?,
            ffn_norm: self.ffn_norm.trainable(n("ffn_norm"), vars)?,
            mlp: self.mlp.trainable(&n("mlp"), dev, vars)?,
            post_ffn_norm: self.post_ffn_norm.trainable(n("post_ffn_norm"), vars)?,
        })
    }

    /// What attention adds to the residual x [b, t, d]: post_norm(attn(norm(x))).
    pub fn attn_out(&self, x: &Tensor, a: &mut AttnInput) -> Result<Tensor> {
        let h = self.attn_norm.forward(x, a.mode)?; // [b, t, d]
        let h = self.attn.forward(&h, a)?;
        self.post_attn_norm.forward(&h, a.mode) // [b, t, d]
    }

    /// What the MLP adds to the residual x [b, t, d]: post_norm(mlp(norm(x))).
    pub fn mlp_out(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = self.ffn_norm.forward(x, mode)?;
        let h = self.mlp.forward(&h, mode)?;
        self.post_ffn_norm.forward(&h, mode) // [b, t, d]
    }
}
