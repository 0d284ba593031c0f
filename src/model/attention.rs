//! Rotary self-attention with grouped KV heads, a per-call KV cache, left padding and
//! optional sliding windows. Shared by every architecture family.

use candle_core::{Module, Tensor, D};

use super::config::{Arch, Config};
use super::weights::{Linear, Weights};
use super::RmsNorm;
use crate::error::Result;

/// Per-layer keys and values cached across decode steps: [b, n_kv, T, head_dim] each.
pub type LayerCache = Option<(Tensor, Tensor)>;

/// What one layer's attention needs for one step besides its weights.
pub struct AttnInput<'a> {
    /// Rotary cos/sin for this step's positions: [b, t, head_dim/2].
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// Additive mask (0 or -inf): [b, 1, 1, t, T] with T = cached + t keys.
    pub mask: &'a Tensor,
    pub cache: &'a mut LayerCache,
}

pub struct Attention {
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

impl Attention {
    pub fn load(w: &Weights, cfg: &Config, i: usize) -> Result<Self> {
        let (d, hd) = (cfg.d_model, cfg.head_dim);
        let qd = cfg.n_heads * hd;
        let kvd = cfg.n_kv_heads * hd;
        let p = |s: &str| format!("{i}.{s}");
        let bias = |name: &str, len: usize| -> Result<Option<Tensor>> {
            if cfg.attn_bias || w.exists(&p(name)) {
                Ok(Some(w.vector(&p(name), len)?))
            } else {
                Ok(None)
            }
        };
        let gemma = cfg.arch == Arch::Gemma3;
        Ok(Attention {
            q: w.linear(&p("q"), qd, d)?,
            k: w.linear(&p("k"), kvd, d)?,
            v: w.linear(&p("v"), kvd, d)?,
            o: w.linear(&p("o"), d, qd)?,
            q_bias: bias("q_bias", qd)?,
            k_bias: bias("k_bias", kvd)?,
            v_bias: bias("v_bias", kvd)?,
            q_norm: if gemma {
                Some(RmsNorm::load(w, &p("q_norm"), hd, cfg.rms_eps)?)
            } else {
                None
            },
            k_norm: if gemma {
                Some(RmsNorm::load(w, &p("k_norm"), hd, cfg.rms_eps)?)
            } else {
                None
            },
            n_heads: cfg.n_heads,
            n_kv: cfg.n_kv_heads,
            head_dim: hd,
            scale: cfg.attn_scale,
            interleaved: cfg.rope_interleaved,
        })
    }

    fn project(
        &self,
        m: &Linear,
        bias: &Option<Tensor>,
        x: &Tensor,
        heads: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let mut y = m.forward(x)?; // [b, t, heads * hd]
        if let Some(bias) = bias {
            y = y.broadcast_add(bias)?;
        }
        Ok(y.reshape((b, t, heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?) // [b, heads, t, hd]
    }

    pub fn forward(&self, x: &Tensor, a: &mut AttnInput) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let mut q = self.project(&self.q, &self.q_bias, x, self.n_heads)?;
        let mut k = self.project(&self.k, &self.k_bias, x, self.n_kv)?;
        let v = self.project(&self.v, &self.v_bias, x, self.n_kv)?;
        if let Some(n) = &self.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k)?;
        }
        let q = rope(&q, a.cos, a.sin, self.interleaved)?;
        let k = rope(&k, a.cos, a.sin, self.interleaved)?;
        let (k, v) = match a.cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *a.cache = Some((k.clone(), v.clone()));
        let kv_len = k.dim(2)?;
        let g = self.n_heads / self.n_kv;
        // Group query heads onto their shared KV head: [b, n_kv, g * t, hd].
        let q = q.reshape((b, self.n_kv, g * t, self.head_dim))?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?; // [b, n_kv, g*t, T]
        let scores = scores
            .reshape((b, self.n_kv, g, t, kv_len))?
            .broadcast_add(a.mask)?;
        let probs = if scores.track_op() {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let probs = probs.reshape((b, self.n_kv, g * t, kv_len))?;
        let out = probs.matmul(&v)?; // [b, n_kv, g*t, hd]
        let out = out
            .reshape((b, self.n_heads, t, self.head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, self.n_heads * self.head_dim))?;
        Ok(self.o.forward(&out)?) // [b, t, d]
    }
}

/// Rotary embedding with per-row positions. `interleaved` rotates pairs (2i, 2i+1)
/// (GGUF llama layout); otherwise halves (Hugging Face `rotate_half`).
/// The fused kernels have no backward pass, so a tensor that tracks gradients takes the
/// elementary-op path.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(if interleaved {
            candle_nn::rotary_emb::rope_i(x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(x, cos, sin)?
        });
    }
    // Differentiable path built from elementary ops.
    let (b, h, t, hd) = x.dims4()?;
    let c = cos.unsqueeze(1)?; // [b, 1, t, hd/2]
    let s = sin.unsqueeze(1)?;
    if interleaved {
        let xr = x.reshape((b, h, t, hd / 2, 2))?;
        let x0 = xr.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
        let x1 = xr.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
        let o0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
        let o1 = (x0.broadcast_mul(&s)? + x1.broadcast_mul(&c)?)?;
        Ok(Tensor::stack(&[&o0, &o1], D::Minus1)?.reshape((b, h, t, hd))?)
    } else {
        let x0 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x1 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let o0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
        let o1 = (x1.broadcast_mul(&c)? + x0.broadcast_mul(&s)?)?;
        Ok(Tensor::cat(&[&o0, &o1], D::Minus1)?)
    }
}
