//! A decoder block of any family as two residual branches, and the gated MLP they share.
//! The model's loop adds each branch to the residual itself, so the sites between them
//! (`attn_out`, `resid_mid`, `mlp_out`, `resid_post`) are the same for every family.

use candle_core::{Module, Tensor};

use super::attention::AttnInput;
use super::config::{Activation, Config};
use super::gemma3::Gemma3Block;
use super::llama::LlamaBlock;
use super::ops::{gate, Mode};
use super::weights::{Linear, Weights};
use crate::error::Result;

pub enum Block {
    Llama(LlamaBlock),
    Gemma3(Gemma3Block),
}

impl Block {
    /// What the attention sub-block adds to the residual x [b, t, d].
    pub fn attn_out(&self, x: &Tensor, a: &mut AttnInput) -> Result<Tensor> {
        match self {
            Block::Llama(b) => b.attn_out(x, a),
            Block::Gemma3(b) => b.attn_out(x, a),
        }
    }

    /// What the MLP sub-block adds to the residual x [b, t, d].
    pub fn mlp_out(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match self {
            Block::Llama(b) => b.mlp_out(x, mode),
            Block::Gemma3(b) => b.mlp_out(x, mode),
        }
    }

    /// A trainable copy of this block, built from the same code: every weight and norm
    /// dequantized to f32 as a new `Var` registered in `vars` as `{prefix}.{name}` (the
    /// base block is not changed). At the start it computes the base block's function
    /// (exactly on f32 weights; on quantized ones up to the kernels' 8-bit activation
    /// rounding, which the copy does not do).
    pub fn trainable(
        &self,
        prefix: &str,
        dev: &candle_core::Device,
        vars: &mut Vec<(String, candle_core::Var)>,
    ) -> Result<Block> {
        Ok(match self {
            Block::Llama(b) => Block::Llama(b.trainable(prefix, dev, vars)?),
            Block::Gemma3(b) => Block::Gemma3(b.trainable(prefix, dev, vars)?),
        })
    }

    /// The block's attention (cross-attention layers start from its projections).
    pub fn attention(&self) -> &super::attention::Attention {
        match self {
            Block::Llama(b) => &b.attn,
            Block::Gemma3(b) => &b.attn,
        }
    }

    /// The norm in front of attention, and (Gemma) the one after it.
    pub fn attn_norms(&self) -> (&super::ops::RmsNorm, Option<&super::ops::RmsNorm>) {
        match self {
            Block::Llama(b) => (&b.attn_norm, None),
            Block::Gemma3(b) => (&b.attn_norm, Some(&b.post_attn_norm)),
        }
    }
}

/// Gated MLP: down(act(gate(x)) * up(x)).
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl Mlp {
    pub fn load(w: &Weights, cfg: &Config, i: usize) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        Ok(Mlp {
            gate: w.linear(&format!("{i}.gate"), f, d)?,
            up: w.linear(&format!("{i}.up"), f, d)?,
            down: w.linear(&format!("{i}.down"), d, f)?,
            act: cfg.activation,
        })
    }

    /// A trainable copy (see [`Block::trainable`]).
    pub fn trainable(
        &self,
        prefix: &str,
        dev: &candle_core::Device,
        vars: &mut Vec<(String, candle_core::Var)>,
    ) -> Result<Mlp> {
        Ok(Mlp {
            gate: self.gate.trainable(format!("{prefix}.gate"), dev, vars)?,
            up: self.up.trainable(format!("{prefix}.up"), dev, vars)?,
            down: self.down.trainable(format!("{prefix}.down"), dev, vars)?,
            act: self.act,
        })
    }

    /// x [b, t, d] -> [b, t, d].
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let g = self.gate.forward(x)?; // [b, t, d_ff]
        let u = self.up.forward(x)?; // [b, t, d_ff]
        let h = gate(&g, &u, self.act, mode)?;
        Ok(self.down.forward(&h)?) // [b, t, d]
    }
}
