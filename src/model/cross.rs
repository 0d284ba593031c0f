//! Cross-attention from one stream to another model's states: the layer HyperSteer adds
//! to each block of its hypernetwork (Sun et al. 2025, "HyperSteer: Activation Steering
//! at Scale with Hypernetworks"), whose queries come from the steering-prompt stream and
//! whose keys and values are the base model's residual states at the steered layer.
//!
//! The layer is trained from the start (every weight an f32 `Var`), built from a block's
//! self-attention so it has the architecture's own norms and head layout:
//! - the stream is normed by a copy of the block's pre-attention norm, the base states
//!   by another copy of it (they are residual states too, of a deeper layer);
//! - q, k, v start as copies of the block's q, k, v projections (and biases, and Gemma's
//!   per-head q/k norms); the output projection starts at **zero**, so that at the start
//!   the layer adds nothing and the hypernetwork block equals the base block;
//! - Gemma's post-attention norm is copied too (it applies to the output, as in the
//!   block's own attention);
//! - rotary embedding on the queries only (at their positions in the stream): the keys
//!   are states of another sequence and carry no position.
//!
//! Every op is candle's elementary form in `Mode::Gradient` (each with a backward pass)
//! and the fused inference kernels otherwise.

use candle_core::{DType, Device, Module, Tensor, Var};

use super::attention::{project_heads, trainable_bias, Attention, Rotary};
use super::block::Block;
use super::ops::{rope, softmax_last, Mode, RmsNorm};
use super::weights::Linear;
use crate::error::{Error, Result};

pub struct CrossAttention {
    norm: RmsNorm,
    mem_norm: RmsNorm,
    post_norm: Option<RmsNorm>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scale: f64,
    interleaved: bool,
}

impl CrossAttention {
    /// A new cross-attention layer built from `block`'s self-attention (see the module
    /// docs for the initialisation), its `Var`s registered in `vars` as `{prefix}.*`.
    pub fn from_block(
        block: &Block,
        prefix: &str,
        dev: &Device,
        vars: &mut Vec<(String, Var)>,
    ) -> Result<CrossAttention> {
        let n = |s: &str| format!("{prefix}.{s}");
        let a: &Attention = block.attention();
        let (pre, post) = block.attn_norms();
        let norm_copy = |m: &Option<RmsNorm>, name: String, vars: &mut Vec<_>| -> Result<_> {
            m.as_ref().map(|m| m.trainable(name, vars)).transpose()
        };
        let o = {
            let (out, inp) = a.o.dense_f32(dev)?.dims2()?;
            let v = Var::zeros((out, inp), DType::F32, dev)?;
            let t = v.as_tensor().clone();
            vars.push((n("o"), v));
            Linear::Trained(t)
        };
        Ok(CrossAttention {
            norm: pre.trainable(n("norm"), vars)?,
            mem_norm: pre.trainable(n("mem_norm"), vars)?,
            post_norm: post
                .map(|p| p.trainable(n("post_norm"), vars))
                .transpose()?,
            q: a.q.trainable(n("q"), dev, vars)?,
            k: a.k.trainable(n("k"), dev, vars)?,
            v: a.v.trainable(n("v"), dev, vars)?,
            o,
            q_bias: trainable_bias(&a.q_bias, n("q_bias"), vars)?,
            k_bias: trainable_bias(&a.k_bias, n("k_bias"), vars)?,
            v_bias: trainable_bias(&a.v_bias, n("v_bias"), vars)?,
            q_norm: norm_copy(&a.q_norm, n("q_norm"), vars)?,
            k_norm: norm_copy(&a.k_norm, n("k_norm"), vars)?,
            n_heads: a.n_heads,
            n_kv: a.n_kv,
            head_dim: a.head_dim,
            scale: a.scale,
            interleaved: a.interleaved,
        })
    }

    /// Projections of `x` [b, t, d] to `heads` heads [b, heads, t, hd], with the bias and
    /// the per-head norm.
    fn heads(
        &self,
        m: &Linear,
        bias: &Option<Tensor>,
        hnorm: &Option<RmsNorm>,
        x: &Tensor,
        heads: usize,
        mode: Mode,
    ) -> Result<Tensor> {
        let y = project_heads(m, bias, hnorm, x, heads, self.head_dim, mode)?;
        Ok(y.transpose(1, 2)?.contiguous()?) // [b, heads, t, hd]
    }

    /// What the layer adds to the stream `x` [b, t, d]: attention from `x` (queries,
    /// rotated by `rot`, the stream's positions) to `mem` [b, m, d] (keys and values),
    /// where `mem_mask` [b, 1, 1, m] is 0 on the row's states and -inf on padding. Each
    /// row attends only to its own states, so the rows are independent. Returns
    /// [b, t, d].
    pub fn forward(
        &self,
        x: &Tensor,
        mem: &Tensor,
        mem_mask: &Tensor,
        rot: &Rotary,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (bm, m, _) = mem.dims3()?;
        if bm != b || mem_mask.dims() != [b, 1, 1, m] {
            return Err(Error::shape(format!(
                "cross-attention: stream has {b} rows, states {bm} rows of {m} and the mask \
                 {:?}; expected the same rows and a mask [{b}, 1, 1, {m}]",
                mem_mask.dims()
            )));
        }
        let (hd, nh, nkv) = (self.head_dim, self.n_heads, self.n_kv);
        let h = self.norm.forward(x, mode)?;
        let q = self.heads(&self.q, &self.q_bias, &self.q_norm, &h, nh, mode)?; // [b, nh, t, hd]
        let q = rope(&q, &rot.cos, &rot.sin, self.interleaved, mode)?;
        let hm = self.mem_norm.forward(mem, mode)?;
        let k = self.heads(&self.k, &self.k_bias, &self.k_norm, &hm, nkv, mode)?; // [b, nkv, m, hd]
        let v = self.heads(&self.v, &self.v_bias, &None, &hm, nkv, mode)?;
        let g = nh / nkv;
        let q = q.reshape((b, nkv, g * t, hd))?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * self.scale)?; // [b, nkv, g*t, m]
        let scores = scores.broadcast_add(mem_mask)?;
        let probs = softmax_last(&scores, mode)?;
        let out = probs.matmul(&v)?; // [b, nkv, g*t, hd]
        let out = out
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, nh * hd))?;
        let y = self.o.forward(&out)?; // [b, t, d]
        match &self.post_norm {
            Some(p) => p.forward(&y, mode),
            None => Ok(y),
        }
    }
}

/// The additive mask [b, 1, 1, m] of left-padded rows of `lens` states each (width m):
/// 0 on a row's states, -inf on its padding.
pub fn padding_mask(lens: &[usize], m: usize, dev: &Device) -> Result<Tensor> {
    let mut v = vec![f32::NEG_INFINITY; lens.len() * m];
    for (r, &len) in lens.iter().enumerate() {
        if len == 0 || len > m {
            return Err(Error::shape(format!(
                "cross-attention states: row {r} has {len} states in a width of {m}; \
                 expected 1..={m}"
            )));
        }
        v[r * m + (m - len)..(r + 1) * m].fill(0.0);
    }
    Ok(Tensor::from_vec(v, (lens.len(), 1, 1, m), dev)?)
}
