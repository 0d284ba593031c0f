//! Rotary self-attention with grouped KV heads, a per-call KV cache, left padding and
//! optional sliding windows. Shared by every architecture family.
//!
//! Two paths compute the same thing:
//! - on the CPU without gradients, a direct loop (`attend`): rotary applied while the
//!   keys are written into a preallocated cache, scores and the weighted sum of values
//!   per (row, head, query), masked keys skipped, output written straight in
//!   [b, t, heads * hd] order. No candle op per step besides the projections.
//! - with gradients (or on CUDA), candle ops with backward passes.
//!
//! Each (row, head, query) only reads its own row's keys, in key order, and masked
//! keys contribute nothing, so a row's output does not depend on the rest of the batch.

use std::sync::Arc;

use candle_core::{Module, Storage, Tensor};
use rayon::prelude::*;

use super::config::{Arch, Config};
use super::ops::attn::AttnCore;
use super::ops::{rope, rope_into, softmax_last, Mode, RmsNorm};
use super::weights::{Linear, Weights};
use crate::error::{Error, Result};
use crate::kernels::{vecops, Isa};

/// Per-layer keys and values cached across decode steps.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<Kv>,
}

#[derive(Debug, Clone)]
enum Kv {
    /// candle tensors [b, n_kv, T, hd] (the differentiable path).
    Tensors(Tensor, Tensor),
    /// What the fused gradient-mode step leaves: keys before rotary and values, both
    /// [b, t, n_kv, hd], with the step's rotary tables; turned into `Tensors` (rotated
    /// by the differentiable rope) only if a later step reads them.
    Unrotated {
        k: Tensor,
        v: Tensor,
        cos: Tensor,
        sin: Tensor,
    },
    /// Preallocated [b, n_kv, cap, hd] buffers; a step writes its keys in place.
    Buffers(KvBuffers),
}

#[derive(Debug, Clone)]
struct KvBuffers {
    k: Vec<f32>,
    v: Vec<f32>,
    b: usize,
    n_kv: usize,
    hd: usize,
    len: usize,
    cap: usize,
}

/// The keys and values of one cache column for every row (see
/// [`LayerCache::column`]).
#[derive(Debug, Clone)]
pub struct KvColumn {
    /// Buffers: [b, n_kv, hd] each; tensors: [b, n_kv, 1, hd] each.
    k: ColumnData,
    v: ColumnData,
}

#[derive(Debug, Clone)]
enum ColumnData {
    Values(Vec<f32>),
    Tensor(Tensor),
}

impl LayerCache {
    /// The number of cached positions.
    pub fn len(&self) -> Result<usize> {
        Ok(match &self.kv {
            None => 0,
            Some(Kv::Buffers(c)) => c.len,
            Some(Kv::Tensors(k, _)) => k.dim(2)?,
            Some(Kv::Unrotated { k, .. }) => k.dim(1)?,
        })
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A copy of the keys and values at cached position `pos` of every row, to put back
    /// with [`LayerCache::restore_rows`]. Errors: `OutOfRange` for a position not cached;
    /// `InvalidArgument` for the gradient-mode cache (generation never holds one).
    pub fn column(&self, pos: usize) -> Result<KvColumn> {
        let n = self.len()?;
        if pos >= n {
            return Err(Error::out_of_range(format!(
                "KV cache position {pos} is not cached ({n} positions)"
            )));
        }
        match &self.kv {
            Some(Kv::Buffers(c)) => {
                let take = |src: &Vec<f32>| {
                    let mut out = Vec::with_capacity(c.b * c.n_kv * c.hd);
                    for bg in 0..c.b * c.n_kv {
                        let at = (bg * c.cap + pos) * c.hd;
                        out.extend_from_slice(&src[at..at + c.hd]);
                    }
                    out
                };
                Ok(KvColumn {
                    k: ColumnData::Values(take(&c.k)),
                    v: ColumnData::Values(take(&c.v)),
                })
            }
            Some(Kv::Tensors(k, v)) => Ok(KvColumn {
                k: ColumnData::Tensor(k.narrow(2, pos, 1)?.contiguous()?),
                v: ColumnData::Tensor(v.narrow(2, pos, 1)?.contiguous()?),
            }),
            _ => Err(Error::invalid(
                "this KV cache holds a gradient-mode step; expected a generation's cache",
            )),
        }
    }

    /// Forget every cached position from `len` on.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        match &mut self.kv {
            None => {}
            Some(Kv::Buffers(c)) => c.len = c.len.min(len),
            Some(Kv::Tensors(k, v)) => {
                let n = k.dim(2)?.min(len);
                *k = k.narrow(2, 0, n)?;
                *v = v.narrow(2, 0, n)?;
            }
            Some(Kv::Unrotated { .. }) => {
                return Err(Error::invalid(
                    "this KV cache holds a gradient-mode step; expected a generation's cache",
                ))
            }
        }
        Ok(())
    }

    /// Put `col` (taken by [`LayerCache::column`] at `pos`) back at `pos` for the rows
    /// flagged in `rows`.
    pub fn restore_rows(&mut self, col: &KvColumn, pos: usize, rows: &[bool]) -> Result<()> {
        if pos >= self.len()? {
            return Err(Error::out_of_range(format!(
                "KV cache position {pos} is not cached"
            )));
        }
        match (&mut self.kv, &col.k, &col.v) {
            (Some(Kv::Buffers(c)), ColumnData::Values(ck), ColumnData::Values(cv)) => {
                for r in (0..c.b).filter(|&r| rows.get(r).copied().unwrap_or(false)) {
                    for g in 0..c.n_kv {
                        let bg = r * c.n_kv + g;
                        let at = (bg * c.cap + pos) * c.hd;
                        c.k[at..at + c.hd].copy_from_slice(&ck[bg * c.hd..(bg + 1) * c.hd]);
                        c.v[at..at + c.hd].copy_from_slice(&cv[bg * c.hd..(bg + 1) * c.hd]);
                    }
                }
            }
            (Some(Kv::Tensors(k, v)), ColumnData::Tensor(ck), ColumnData::Tensor(cv)) => {
                let put = |cur: &Tensor, col: &Tensor| -> Result<Tensor> {
                    let b = cur.dim(0)?;
                    let n = cur.dim(2)?;
                    let mut parts = Vec::with_capacity(b);
                    for r in 0..b {
                        let row = cur.narrow(0, r, 1)?;
                        if !rows.get(r).copied().unwrap_or(false) {
                            parts.push(row);
                            continue;
                        }
                        let mut seg = vec![row.narrow(2, 0, pos)?, col.narrow(0, r, 1)?];
                        if pos + 1 < n {
                            seg.push(row.narrow(2, pos + 1, n - pos - 1)?);
                        }
                        parts.push(Tensor::cat(&seg, 2)?);
                    }
                    Ok(Tensor::cat(&parts, 0)?)
                };
                *k = put(k, ck)?;
                *v = put(v, cv)?;
            }
            _ => {
                return Err(Error::invalid(
                    "a KV cache column does not match the cache it is put back into",
                ))
            }
        }
        Ok(())
    }
}

impl KvBuffers {
    fn new(b: usize, n_kv: usize, hd: usize) -> Self {
        KvBuffers {
            k: Vec::new(),
            v: Vec::new(),
            b,
            n_kv,
            hd,
            len: 0,
            cap: 0,
        }
    }

    /// Room for `extra` more keys (capacity doubles, so decode appends are amortised).
    fn reserve(&mut self, extra: usize) {
        let need = self.len + extra;
        if need <= self.cap {
            return;
        }
        let cap = need.max(2 * self.cap).max(64);
        let (hd, old) = (self.hd, self.cap);
        let grow = |src: &Vec<f32>| {
            let mut dst = vec![0f32; self.b * self.n_kv * cap * hd];
            for bg in 0..self.b * self.n_kv {
                dst[bg * cap * hd..(bg * cap + self.len) * hd]
                    .copy_from_slice(&src[bg * old * hd..(bg * old + self.len) * hd]);
            }
            dst
        };
        self.k = grow(&self.k);
        self.v = grow(&self.v);
        self.cap = cap;
    }

    /// The cached keys and values as [b, n_kv, len, hd] tensors.
    fn to_tensors(&self, dev: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let (b, g, hd, len, cap) = (self.b, self.n_kv, self.hd, self.len, self.cap);
        let take = |src: &Vec<f32>| -> Result<Tensor> {
            let mut out = Vec::with_capacity(b * g * len * hd);
            for bg in 0..b * g {
                out.extend_from_slice(&src[bg * cap * hd..(bg * cap + len) * hd]);
            }
            Ok(Tensor::from_vec(out, (b, g, len, hd), dev)?)
        };
        Ok((take(&self.k)?, take(&self.v)?))
    }
}

/// Rotary cos/sin for one step's positions, as tensors [b, t, hd/2] (candle path) and
/// as row-major values (direct path).
pub struct Rotary {
    pub cos: Tensor,
    pub sin: Tensor,
    pub cos_v: Vec<f32>,
    pub sin_v: Vec<f32>,
}

/// Additive attention mask (0 or -inf) for one step: [b, 1, 1, t, T] with T = cached +
/// t keys, as a tensor and as row-major values.
pub struct Mask {
    pub t: Tensor,
    pub v: Vec<f32>,
}

/// What one layer's attention needs for one step besides its weights.
pub struct AttnInput<'a> {
    pub rot: &'a Rotary,
    pub mask: &'a Mask,
    pub cache: &'a mut LayerCache,
    pub mode: Mode,
}

/// Multiply-adds above which the direct attention splits rows over threads.
const PAR_ATTN_WORK: usize = 1 << 16;

pub struct Attention {
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) o: Linear,
    pub(super) q_bias: Option<Tensor>,
    pub(super) k_bias: Option<Tensor>,
    pub(super) v_bias: Option<Tensor>,
    pub(super) q_norm: Option<RmsNorm>,
    pub(super) k_norm: Option<RmsNorm>,
    pub(super) n_heads: usize,
    pub(super) n_kv: usize,
    pub(super) head_dim: usize,
    pub(super) scale: f64,
    pub(super) interleaved: bool,
}

/// One projection of x [b, t, d] to `heads` heads: `m`, the bias, then the per-head norm
/// (Gemma's q/k norms): [b, t, heads, hd]. Self-attention and cross-attention share it.
pub(super) fn project_heads(
    m: &Linear,
    bias: &Option<Tensor>,
    norm: &Option<RmsNorm>,
    x: &Tensor,
    heads: usize,
    hd: usize,
    mode: Mode,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    let mut y = m.forward(x)?; // [b, t, heads * hd]
    if let Some(bias) = bias {
        y = y.broadcast_add(bias)?;
    }
    let y = y.reshape((b, t, heads, hd))?;
    Ok(match norm {
        Some(n) => n.forward(&y, mode)?,
        None => y,
    })
}

/// A bias as a new trainable `Var` (registered under `name`).
pub(super) fn trainable_bias(
    b: &Option<Tensor>,
    name: String,
    vars: &mut Vec<(String, candle_core::Var)>,
) -> Result<Option<Tensor>> {
    Ok(match b {
        None => None,
        Some(b) => {
            let v = candle_core::Var::from_tensor(&b.to_dtype(candle_core::DType::F32)?.copy()?)?;
            let t = v.as_tensor().clone();
            vars.push((name, v));
            Some(t)
        }
    })
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

    /// A trainable copy (every weight, bias and norm a new f32 `Var` in `vars`, named
    /// `{prefix}.q`, `{prefix}.q_bias`, `{prefix}.q_norm`, ...): the same function at
    /// the start.
    pub fn trainable(
        &self,
        prefix: &str,
        dev: &candle_core::Device,
        vars: &mut Vec<(String, candle_core::Var)>,
    ) -> Result<Attention> {
        let n = |s: &str| format!("{prefix}.{s}");
        let norm = |m: &Option<RmsNorm>, name: String, vars: &mut Vec<_>| -> Result<_> {
            m.as_ref().map(|m| m.trainable(name, vars)).transpose()
        };
        Ok(Attention {
            q: self.q.trainable(n("q"), dev, vars)?,
            k: self.k.trainable(n("k"), dev, vars)?,
            v: self.v.trainable(n("v"), dev, vars)?,
            o: self.o.trainable(n("o"), dev, vars)?,
            q_bias: trainable_bias(&self.q_bias, n("q_bias"), vars)?,
            k_bias: trainable_bias(&self.k_bias, n("k_bias"), vars)?,
            v_bias: trainable_bias(&self.v_bias, n("v_bias"), vars)?,
            q_norm: norm(&self.q_norm, n("q_norm"), vars)?,
            k_norm: norm(&self.k_norm, n("k_norm"), vars)?,
            n_heads: self.n_heads,
            n_kv: self.n_kv,
            head_dim: self.head_dim,
            scale: self.scale,
            interleaved: self.interleaved,
        })
    }

    pub fn forward(&self, x: &Tensor, a: &mut AttnInput) -> Result<Tensor> {
        // Weights are constants; gradients can only come in through x.
        let empty = match &a.cache.kv {
            None => true,
            Some(Kv::Buffers(c)) => c.len == 0,
            Some(_) => false,
        };
        let direct = a.mode == Mode::Inference
            && x.device().is_cpu()
            && matches!(a.cache.kv, None | Some(Kv::Buffers(_)));
        let fused = a.mode == Mode::Gradient
            && x.device().is_cpu()
            && x.dtype() == candle_core::DType::F32
            && empty;
        if direct {
            self.forward_direct(x, a)
        } else if fused {
            self.forward_fused(x, a)
        } else {
            self.forward_candle(x, a)
        }
    }

    /// Gradient mode without cached keys: the fused attention op (`ops::attn`), whose
    /// backward is hand-written. The cache keeps the keys unrotated for a later step.
    fn forward_fused(&self, x: &Tensor, a: &mut AttnInput) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (q, k, v) = self.qkv(x, a.mode)?; // [b, t, heads, hd]
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let core = AttnCore {
            cos: Arc::new(a.rot.cos_v.clone()),
            sin: Arc::new(a.rot.sin_v.clone()),
            mask: Arc::new(a.mask.v.clone()),
            n_heads: self.n_heads,
            n_kv: self.n_kv,
            head_dim: self.head_dim,
            scale: self.scale as f32,
            interleaved: self.interleaved,
        };
        let out = q.apply_op3(&k, &v, core)?; // [b, t, heads * hd]
        a.cache.kv = Some(Kv::Unrotated {
            k,
            v,
            cos: a.rot.cos.clone(),
            sin: a.rot.sin.clone(),
        });
        debug_assert_eq!(out.dims(), [b, t, self.n_heads * self.head_dim]);
        Ok(self.o.forward(&out)?) // [b, t, d]
    }

    /// Projections [b, t, heads * hd] with biases, and the per-head norms (Gemma).
    fn qkv(&self, x: &Tensor, mode: Mode) -> Result<(Tensor, Tensor, Tensor)> {
        let hd = self.head_dim;
        let q = project_heads(
            &self.q,
            &self.q_bias,
            &self.q_norm,
            x,
            self.n_heads,
            hd,
            mode,
        )?;
        let k = project_heads(&self.k, &self.k_bias, &self.k_norm, x, self.n_kv, hd, mode)?;
        let v = project_heads(&self.v, &self.v_bias, &None, x, self.n_kv, hd, mode)?;
        Ok((q, k, v))
    }

    fn forward_direct(&self, x: &Tensor, a: &mut AttnInput) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (hd, nh, nkv) = (self.head_dim, self.n_heads, self.n_kv);
        let (q, k, v) = self.qkv(x, a.mode)?; // [b, t, heads, hd]
        let kv = a
            .cache
            .kv
            .get_or_insert_with(|| Kv::Buffers(KvBuffers::new(b, nkv, hd)));
        let Kv::Buffers(c) = kv else {
            return Err(Error::invalid("KV cache holds tensors; expected buffers"));
        };
        if (c.b, c.n_kv, c.hd) != (b, nkv, hd) {
            return Err(Error::shape(format!(
                "KV cache is for {} rows x {} heads x {}, this step has {b} x {nkv} x {hd}",
                c.b, c.n_kv, c.hd
            )));
        }
        let start = c.len;
        let total = start + t;
        if a.mask.v.len() != b * t * total || a.rot.cos_v.len() != b * t * hd / 2 {
            return Err(Error::shape(format!(
                "attention step: mask has {} values and rotary {}, expected {} and {}                  ({b} rows, {t} new and {start} cached keys)",
                a.mask.v.len(),
                a.rot.cos_v.len(),
                b * t * total,
                b * t * hd / 2
            )));
        }
        c.reserve(t);
        let cap = c.cap;
        let (cos, sin) = (&a.rot.cos_v, &a.rot.sin_v);
        let half = hd / 2;
        let inter = self.interleaved;
        // Rotate the new keys into the cache; copy the values.
        with_f32(&k, |kx| {
            with_f32(&v, |vx| {
                for r in 0..b {
                    for j in 0..t {
                        let cs = &cos[(r * t + j) * half..(r * t + j + 1) * half];
                        let sn = &sin[(r * t + j) * half..(r * t + j + 1) * half];
                        for g in 0..nkv {
                            let src = ((r * t + j) * nkv + g) * hd;
                            let dst = ((r * nkv + g) * cap + start + j) * hd;
                            rope_into(&kx[src..src + hd], cs, sn, inter, &mut c.k[dst..dst + hd]);
                            c.v[dst..dst + hd].copy_from_slice(&vx[src..src + hd]);
                        }
                    }
                }
                Ok(())
            })
        })?;
        c.len = total;
        let c = &*c;
        let isa = Isa::detect();
        let scale = self.scale as f32;
        let group = nh / nkv;
        let mut out = vec![0f32; b * t * nh * hd];
        with_f32(&q, |qx| {
            let row = |r: usize, out: &mut [f32]| {
                // The `group` query heads of one KV head: rotated queries, scores, maxima.
                let mut qr = vec![0f32; group * hd];
                let mut sc = vec![0f32; group * total];
                let mut mx = vec![f32::NEG_INFINITY; group];
                for j in 0..t {
                    let cs = &cos[(r * t + j) * half..(r * t + j + 1) * half];
                    let sn = &sin[(r * t + j) * half..(r * t + j + 1) * half];
                    let mrow = &a.mask.v[(r * t + j) * total..(r * t + j + 1) * total];
                    for g in 0..nkv {
                        let kb = &c.k[(r * nkv + g) * cap * hd..];
                        let vb = &c.v[(r * nkv + g) * cap * hd..];
                        for (i, q) in qr.chunks_exact_mut(hd).enumerate() {
                            let src = ((r * t + j) * nh + g * group + i) * hd;
                            rope_into(&qx[src..src + hd], cs, sn, inter, q);
                        }
                        // Scores of up to 4 heads per pass over the keys (each key read
                        // once for them; each score the bits of a lone `dot`).
                        mx.fill(f32::NEG_INFINITY);
                        let mut h0 = 0;
                        while h0 < group {
                            let n = (group - h0).min(4);
                            let (q, s, m) = (&qr[h0 * hd..], &mut sc[h0 * total..], &mut mx[h0..]);
                            let kb = &kb[..total * hd];
                            match n {
                                4 => scores::<4>(isa, q, kb, mrow, scale, s, m),
                                3 => scores::<3>(isa, q, kb, mrow, scale, s, m),
                                2 => scores::<2>(isa, q, kb, mrow, scale, s, m),
                                _ => scores::<1>(isa, q, kb, mrow, scale, s, m),
                            }
                            h0 += n;
                        }
                        for (i, (sc, &mx)) in sc.chunks_exact_mut(total).zip(&mx).enumerate() {
                            let h = g * group + i;
                            let mut sum = 0f32;
                            for (s, &m) in sc.iter_mut().zip(mrow) {
                                if m != f32::NEG_INFINITY {
                                    *s = (*s - mx).exp();
                                    sum += *s;
                                }
                            }
                            let o = &mut out[(j * nh + h) * hd..(j * nh + h + 1) * hd];
                            for (ci, (&s, &m)) in sc.iter().zip(mrow).enumerate() {
                                if m != f32::NEG_INFINITY {
                                    vecops::axpy(isa, o, s / sum, &vb[ci * hd..(ci + 1) * hd]);
                                }
                            }
                        }
                    }
                }
            };
            let work = b * t * total * nh * hd;
            if b > 1 && work >= PAR_ATTN_WORK {
                out.par_chunks_mut(t * nh * hd)
                    .enumerate()
                    .for_each(|(r, o)| row(r, o));
            } else {
                for (r, o) in out.chunks_mut(t * nh * hd).enumerate() {
                    row(r, o);
                }
            }
            Ok(())
        })?;
        let out = Tensor::from_vec(out, (b, t, nh * hd), x.device())?;
        Ok(self.o.forward(&out)?) // [b, t, d]
    }

    fn forward_candle(&self, x: &Tensor, a: &mut AttnInput) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (q, k, v) = self.qkv(x, a.mode)?; // [b, t, heads, hd]
        let q = q.transpose(1, 2)?.contiguous()?; // [b, heads, t, hd]
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let q = rope(&q, &a.rot.cos, &a.rot.sin, self.interleaved, a.mode)?;
        let k = rope(&k, &a.rot.cos, &a.rot.sin, self.interleaved, a.mode)?;
        let prev = match a.cache.kv.take() {
            Some(Kv::Tensors(pk, pv)) => Some((pk, pv)),
            Some(Kv::Unrotated { k, v, cos, sin }) => {
                let k = k.transpose(1, 2)?.contiguous()?; // [b, n_kv, t, hd]
                let k = rope(&k, &cos, &sin, self.interleaved, Mode::Gradient)?;
                Some((k, v.transpose(1, 2)?.contiguous()?))
            }
            Some(Kv::Buffers(c)) if c.len > 0 => Some(c.to_tensors(x.device())?),
            _ => None,
        };
        let (k, v) = match prev {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        a.cache.kv = Some(Kv::Tensors(k.clone(), v.clone()));
        let kv_len = k.dim(2)?;
        let g = self.n_heads / self.n_kv;
        // Group query heads onto their shared KV head: [b, n_kv, g * t, hd].
        let q = q.reshape((b, self.n_kv, g * t, self.head_dim))?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?; // [b, n_kv, g*t, T]
        let scores = scores
            .reshape((b, self.n_kv, g, t, kv_len))?
            .broadcast_add(&a.mask.t)?;
        let probs = softmax_last(&scores, a.mode)?;
        let probs = probs.reshape((b, self.n_kv, g * t, kv_len))?;
        let out = probs.matmul(&v)?; // [b, n_kv, g*t, hd]
        let out = out
            .reshape((b, self.n_heads, t, self.head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, self.n_heads * self.head_dim))?;
        Ok(self.o.forward(&out)?) // [b, t, d]
    }
}

/// Scores of G query heads (`q`: G vectors of `hd`, `hd = kb.len() / mask.len()`)
/// against every unmasked key of `kb`: `sc[i * T + key] = q_i · k * scale + mask`, and
/// `mx[i]` the maximum of head i's (T = `mask.len()`; masked entries are not written).
fn scores<const G: usize>(
    isa: Isa,
    q: &[f32],
    kb: &[f32],
    mask: &[f32],
    scale: f32,
    sc: &mut [f32],
    mx: &mut [f32],
) {
    let total = mask.len();
    let hd = kb.len() / total.max(1);
    let qs: [&[f32]; G] = std::array::from_fn(|i| &q[i * hd..(i + 1) * hd]);
    for (ci, (&m, k)) in mask.iter().zip(kb.chunks_exact(hd)).enumerate() {
        if m == f32::NEG_INFINITY {
            continue;
        }
        let d = vecops::dot_group(isa, qs, k);
        for (i, dv) in d.iter().enumerate() {
            let s = dv * scale + m;
            sc[i * total + ci] = s;
            mx[i] = mx[i].max(s);
        }
    }
}

/// Run `f` on the f32 values of a contiguous CPU tensor, in place (no copy).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
        return Err(Error::invalid(
            "attention: expected f32 activations on the CPU",
        ));
    };
    let Some((o0, o1)) = layout.contiguous_offsets() else {
        return Err(Error::invalid("attention: expected contiguous activations"));
    };
    f(&data[o0..o1])
}
