//! The execution mode and the operations that have a fast and a differentiable form.
//!
//! [`Mode`] is chosen once per call (generation, capture and logits run in
//! `Inference`; the trainer runs in `Gradient`) and carried by the step context, so no
//! op guesses from its tensors whether a gradient is wanted. Each pair below computes the
//! same function both ways, side by side, and the tests at the end hold them equal:
//! - inference: fused candle kernels without a backward pass (`rms_norm`, `rope`,
//!   `softmax_last_dim`) and steerlab's own CPU loops (`rope_into`, the SiLU gate);
//! - gradient: candle's elementary ops, each with a backward pass; on f32 CPU tensors
//!   RMSNorm (frozen weight), the SiLU gate and attention without a cache run instead as
//!   fused custom ops with hand-written backward passes (`fused.rs`, `attn.rs`), tested
//!   here equal to the elementary forms in value and gradient.
//!
//! Attention over the KV cache has its pair in `attention.rs` (`forward_direct` /
//! `forward_candle`) and the projections theirs in `weights.rs` (one custom op whose
//! backward is the frozen-weight GEMM); the intervention operations theirs in
//! `crate::intervene`.

pub(crate) mod attn;
mod fused;

use candle_core::{Tensor, D};

use super::config::Activation;
use super::weights::Weights;
use crate::error::Result;

/// How a forward runs: without gradients on the fastest kernels, or with every op on
/// the path from a trainable tensor to the loss recorded for backpropagation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Inference,
    Gradient,
}

/// Root-mean-square norm: x / sqrt(mean(x^2) + eps) * w (Gemma's 1 + w is folded in at
/// load time). Hugging Face `LlamaRMSNorm` / `Gemma3RMSNorm`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    w: Tensor,
    eps: f32,
    /// The weight is trained (a `Var`): the elementary ops, which give it its gradient.
    trained: bool,
}

impl RmsNorm {
    pub fn load(w: &Weights, name: &str, len: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            w: w.vector(name, len)?,
            eps: eps as f32,
            trained: false,
        })
    }

    /// A norm whose weight `w` [len] is trained.
    pub fn trained(w: Tensor, eps: f64) -> Self {
        RmsNorm {
            w,
            eps: eps as f32,
            trained: true,
        }
    }

    /// A trainable copy of this norm: its weight (Gemma's 1 + w, as stored here) as a new
    /// f32 `Var` registered in `vars` under `name`.
    pub fn trainable(
        &self,
        name: String,
        vars: &mut Vec<(String, candle_core::Var)>,
    ) -> Result<RmsNorm> {
        let v = candle_core::Var::from_tensor(&self.w.to_dtype(candle_core::DType::F32)?.copy()?)?;
        let w = v.as_tensor().clone();
        vars.push((name, v));
        Ok(RmsNorm {
            w,
            eps: self.eps,
            trained: true,
        })
    }

    /// x [..., len] -> [..., len].
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(match mode {
            Mode::Inference => candle_nn::ops::rms_norm(&x, &self.w, self.eps)?,
            // A frozen weight: the fused op (gradient to x only). A weight that trains
            // takes the elementary ops, which also give it its gradient.
            Mode::Gradient if !self.trained && fused::applies(&x) && fused::applies(&self.w) => {
                x.apply_op1(fused::RmsNormOp {
                    w: self.w.to_vec1::<f32>()?,
                    eps: self.eps,
                })?
            }
            Mode::Gradient => candle_nn::ops::rms_norm_slow(&x, &self.w, self.eps)?,
        })
    }
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor, mode: Mode) -> Result<Tensor> {
    Ok(match mode {
        Mode::Inference => candle_nn::ops::softmax_last_dim(x)?,
        Mode::Gradient => candle_nn::ops::softmax(x, D::Minus1)?,
    })
}

/// Rotary embedding of one head vector into `out` (the formulas of candle-nn's `rope` /
/// `rope_i`, i.e. Hugging Face's `rotate_half` and llama.cpp's pairwise layout). The
/// direct attention loop's form.
pub fn rope_into(x: &[f32], cos: &[f32], sin: &[f32], interleaved: bool, out: &mut [f32]) {
    let half = cos.len();
    if interleaved {
        for i in 0..half {
            let (x0, x1) = (x[2 * i], x[2 * i + 1]);
            out[2 * i] = x0 * cos[i] - x1 * sin[i];
            out[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
        }
    } else {
        for i in 0..half {
            let (x0, x1) = (x[i], x[i + half]);
            out[i] = x0 * cos[i] - x1 * sin[i];
            out[i + half] = x1 * cos[i] + x0 * sin[i];
        }
    }
}

/// Rotary embedding with per-row positions: x [b, heads, t, hd], cos/sin [b, t, hd/2].
/// `interleaved` rotates pairs (2i, 2i+1) (GGUF llama layout); otherwise halves
/// (Hugging Face `rotate_half`).
pub fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
    mode: Mode,
) -> Result<Tensor> {
    if mode == Mode::Inference {
        return Ok(if interleaved {
            candle_nn::rotary_emb::rope_i(x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(x, cos, sin)?
        });
    }
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

/// The MLP's gate: act(g) * u, g and u [b, t, d_ff].
pub fn gate(g: &Tensor, u: &Tensor, act: Activation, mode: Mode) -> Result<Tensor> {
    if act == Activation::Silu {
        match mode {
            Mode::Inference => {
                if let Some(h) = silu_mul_cpu(g, u)? {
                    return Ok(h);
                }
            }
            Mode::Gradient => {
                if fused::applies(g) && fused::applies(u) && g.dims() == u.dims() {
                    return Ok(g
                        .contiguous()?
                        .apply_op2(&u.contiguous()?, fused::SiluMulOp)?);
                }
            }
        }
    }
    let g = match act {
        Activation::Silu => candle_nn::ops::silu(g)?,
        Activation::GeluTanh => g.gelu()?,
    };
    Ok((g * u)?)
}

/// silu(g) * u in one pass over f32 CPU tensors, on rayon's pool when large (candle's
/// `silu` and `*` each allocate, and above 64 K values run on candle's own thread pool,
/// whose threads then compete with rayon's). The same formula per element as candle's
/// (`g / (1 + exp(-g))`, then `* u`), so the same bits. `None` when the tensors are not
/// contiguous f32 on the CPU of one shape (the caller takes candle's ops).
fn silu_mul_cpu(g: &Tensor, u: &Tensor) -> candle_core::Result<Option<Tensor>> {
    use candle_core::{CpuStorage, Storage};
    use rayon::prelude::*;
    if g.dims() != u.dims() {
        return Ok(None);
    }
    let (gs, gl) = g.storage_and_layout();
    let (us, ul) = u.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(gd)), Storage::Cpu(CpuStorage::F32(ud))) = (&*gs, &*us)
    else {
        return Ok(None);
    };
    let (Some((g0, g1)), Some((u0, u1))) = (gl.contiguous_offsets(), ul.contiguous_offsets())
    else {
        return Ok(None);
    };
    let (gv, uv) = (&gd[g0..g1], &ud[u0..u1]);
    let f = |(&g, &u): (&f32, &f32)| (g / (1.0 + (-g).exp())) * u;
    const PAR_MIN: usize = 64 * 1024;
    let out: Vec<f32> = if gv.len() >= PAR_MIN {
        gv.par_iter()
            .zip(uv.par_iter())
            .with_min_len(8 * 1024)
            .map(f)
            .collect()
    } else {
        gv.iter().zip(uv).map(f).collect()
    };
    Ok(Some(Tensor::from_vec(out, g.shape(), g.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn wave(n: usize, f: f32, a: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * f).sin() * a).collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The fused SiLU-gate gives the bits of candle's `silu(g) * u`, below and above the
    /// size where it goes parallel, and declines what it does not handle.
    #[test]
    fn silu_mul_matches_candle_bitwise() {
        for n in [7usize, 1536 * 16, 70 * 1024 + 3] {
            let g = Tensor::from_vec(wave(n, 0.013, 9.0), n, &Device::Cpu).unwrap();
            let u = Tensor::from_vec(wave(n, 0.007, 2.0), n, &Device::Cpu).unwrap();
            let want = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
            let got = silu_mul_cpu(&g, &u)
                .unwrap()
                .expect("f32 CPU tensors are handled");
            let bits = |t: &Tensor| -> Vec<u32> {
                t.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(bits(&got), bits(&want), "n = {n}");
        }
        let g = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(silu_mul_cpu(&g, &g.t().unwrap()).unwrap().is_none()); // not contiguous
        assert!(silu_mul_cpu(&g, &g.reshape(9).unwrap()).unwrap().is_none()); // shapes
        let h = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
        assert!(silu_mul_cpu(&h, &h).unwrap().is_none());
    }

    #[test]
    fn gate_modes_agree() {
        let dev = Device::Cpu;
        let g = Tensor::from_vec(wave(2 * 5 * 12, 0.31, 4.0), (2, 5, 12), &dev).unwrap();
        let u = Tensor::from_vec(wave(2 * 5 * 12, 0.17, 1.5), (2, 5, 12), &dev).unwrap();
        for act in [Activation::Silu, Activation::GeluTanh] {
            let a = gate(&g, &u, act, Mode::Inference).unwrap();
            let b = gate(&g, &u, act, Mode::Gradient).unwrap();
            assert!(max_diff(&a, &b) < 1e-6, "{act:?}");
        }
    }

    #[test]
    fn rms_norm_modes_agree() {
        let dev = Device::Cpu;
        let n = RmsNorm {
            w: Tensor::from_vec(wave(16, 0.5, 1.0), 16, &dev).unwrap(),
            eps: 1e-6,
            trained: false,
        };
        let x = Tensor::from_vec(wave(3 * 4 * 16, 0.23, 3.0), (3, 4, 16), &dev).unwrap();
        let a = n.forward(&x, Mode::Inference).unwrap();
        let b = n.forward(&x, Mode::Gradient).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
    }

    #[test]
    fn softmax_modes_agree() {
        let x = Tensor::from_vec(wave(6 * 9, 0.41, 7.0), (2, 3, 9), &Device::Cpu).unwrap();
        let a = softmax_last(&x, Mode::Inference).unwrap();
        let b = softmax_last(&x, Mode::Gradient).unwrap();
        assert!(max_diff(&a, &b) < 1e-6);
    }

    /// The three rotary forms (fused kernel, elementary ops, the direct loop) agree, for
    /// both layouts, and the gradient form has a backward pass.
    #[test]
    fn rope_forms_agree() {
        let dev = Device::Cpu;
        let (b, h, t, hd) = (2, 3, 4, 8);
        let x = Tensor::from_vec(wave(b * h * t * hd, 0.37, 2.0), (b, h, t, hd), &dev).unwrap();
        let ang: Vec<f32> = (0..b * t * hd / 2).map(|i| i as f32 * 0.11).collect();
        let cos_v: Vec<f32> = ang.iter().map(|a| a.cos()).collect();
        let sin_v: Vec<f32> = ang.iter().map(|a| a.sin()).collect();
        let cos = Tensor::from_slice(&cos_v, (b, t, hd / 2), &dev).unwrap();
        let sin = Tensor::from_slice(&sin_v, (b, t, hd / 2), &dev).unwrap();
        for inter in [false, true] {
            let fused = rope(&x, &cos, &sin, inter, Mode::Inference).unwrap();
            let xv = Var::from_tensor(&x).unwrap();
            let elem = rope(xv.as_tensor(), &cos, &sin, inter, Mode::Gradient).unwrap();
            assert!(max_diff(&fused, &elem) < 1e-6, "interleaved = {inter}");
            let grads = elem.sum_all().unwrap().backward().unwrap();
            assert!(grads.get(xv.as_tensor()).is_some());
            // The direct loop, one head vector at a time.
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = fused.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut out = vec![0f32; hd];
            for r in 0..b {
                for hh in 0..h {
                    for j in 0..t {
                        let o = ((r * h + hh) * t + j) * hd;
                        let c = &cos_v[(r * t + j) * hd / 2..(r * t + j + 1) * hd / 2];
                        let s = &sin_v[(r * t + j) * hd / 2..(r * t + j + 1) * hd / 2];
                        rope_into(&xs[o..o + hd], c, s, inter, &mut out);
                        for (a, w) in out.iter().zip(&want[o..o + hd]) {
                            assert!((a - w).abs() < 1e-6);
                        }
                    }
                }
            }
        }
    }

    /// Σ out ∘ r for fixed weights r: a scalar whose gradient is r pulled back.
    fn probe(out: &Tensor, seed: f32) -> Tensor {
        let n = out.elem_count();
        let r = Tensor::from_vec(wave(n, seed, 1.0), out.shape(), out.device()).unwrap();
        (out * r).unwrap().sum_all().unwrap()
    }

    /// d/dε f(x + ε·dir) by central differences (f64 sums of f32 outputs).
    fn directional_fd(f: impl Fn(&Tensor) -> f64, x: &Tensor, dir: &Tensor, h: f64) -> f64 {
        let xp = (x + (dir * h).unwrap()).unwrap();
        let xm = (x - (dir * h).unwrap()).unwrap();
        (f(&xp) - f(&xm)) / (2.0 * h)
    }

    fn dot_all(a: &Tensor, b: &Tensor) -> f64 {
        (a * b)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// The fused RMSNorm (frozen weight) equals candle's elementary form in value and in
    /// the gradient to x; a directional finite difference agrees; a weight that tracks
    /// gradients takes the elementary form and gets its gradient.
    #[test]
    fn rms_norm_fused_matches_elementary_with_gradients() {
        let dev = Device::Cpu;
        let d = 40;
        let w = Tensor::from_vec(wave(d, 0.5, 1.0), d, &dev).unwrap();
        let n = RmsNorm {
            w: w.clone(),
            eps: 1e-6,
            trained: false,
        };
        let x0 = Tensor::from_vec(wave(3 * 5 * d, 0.23, 3.0), (3, 5, d), &dev).unwrap();
        let xv = Var::from_tensor(&x0).unwrap();
        let fused = n.forward(xv.as_tensor(), Mode::Gradient).unwrap();
        let elem = candle_nn::ops::rms_norm_slow(xv.as_tensor(), &w, 1e-6).unwrap();
        assert!(max_diff(&fused, &elem) < 1e-5);
        let gf = probe(&fused, 0.71).backward().unwrap();
        let ge = probe(&elem, 0.71).backward().unwrap();
        let (gf, ge) = (
            gf.get(xv.as_tensor()).unwrap(),
            ge.get(xv.as_tensor()).unwrap(),
        );
        assert!(max_diff(gf, ge) < 1e-5, "{}", max_diff(gf, ge));
        let dir = Tensor::from_vec(wave(3 * 5 * d, 0.91, 1.0), (3, 5, d), &dev).unwrap();
        let f = |x: &Tensor| {
            let y = n.forward(x, Mode::Gradient).unwrap();
            probe(&y, 0.71)
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = directional_fd(f, &x0, &dir, 1e-2);
        let an = dot_all(gf, &dir);
        assert!(
            (fd - an).abs() < 2e-3 * an.abs().max(1.0),
            "fd {fd} vs {an}"
        );
        // A trained weight: the elementary form, with a gradient for w.
        let wv = Var::from_tensor(&w).unwrap();
        let nt = RmsNorm::trained(wv.as_tensor().clone(), 1e-6);
        let y = nt.forward(xv.as_tensor(), Mode::Gradient).unwrap();
        assert!(max_diff(&y, &elem) < 1e-5);
        let g = probe(&y, 0.71).backward().unwrap();
        assert!(g.get(wv.as_tensor()).is_some());
        assert!(max_diff(g.get(xv.as_tensor()).unwrap(), ge) < 1e-5);
    }

    /// The fused SiLU gate equals `silu(g) * u` in value and both gradients, and a
    /// directional finite difference agrees.
    #[test]
    fn silu_gate_fused_matches_elementary_with_gradients() {
        let dev = Device::Cpu;
        let n = 2 * 7 * 33;
        let g0 = Tensor::from_vec(wave(n, 0.31, 6.0), (2, 7, 33), &dev).unwrap();
        let u0 = Tensor::from_vec(wave(n, 0.17, 1.5), (2, 7, 33), &dev).unwrap();
        let (gv, uv) = (
            Var::from_tensor(&g0).unwrap(),
            Var::from_tensor(&u0).unwrap(),
        );
        let fused = gate(
            gv.as_tensor(),
            uv.as_tensor(),
            Activation::Silu,
            Mode::Gradient,
        )
        .unwrap();
        let elem = (candle_nn::ops::silu(gv.as_tensor()).unwrap() * uv.as_tensor()).unwrap();
        assert!(max_diff(&fused, &elem) < 1e-6);
        let gf = probe(&fused, 0.37).backward().unwrap();
        let ge = probe(&elem, 0.37).backward().unwrap();
        for v in [&gv, &uv] {
            let (a, b) = (
                gf.get(v.as_tensor()).unwrap(),
                ge.get(v.as_tensor()).unwrap(),
            );
            assert!(max_diff(a, b) < 1e-5, "{}", max_diff(a, b));
        }
        let dir = Tensor::from_vec(wave(n, 0.53, 1.0), (2, 7, 33), &dev).unwrap();
        let f = |g: &Tensor| {
            let y = gate(g, &u0, Activation::Silu, Mode::Gradient).unwrap();
            probe(&y, 0.37)
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = directional_fd(f, &g0, &dir, 1e-2);
        let an = dot_all(gf.get(gv.as_tensor()).unwrap(), &dir);
        assert!(
            (fd - an).abs() < 2e-3 * an.abs().max(1.0),
            "fd {fd} vs {an}"
        );
    }

    /// Attention composed from candle ops, as `attention.rs`'s `forward_candle` computes
    /// it without a cache: q [b, t, nh, hd], k and v [b, t, nkv, hd] -> [b, t, nh * hd].
    #[allow(clippy::too_many_arguments)]
    fn attention_composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rot: &super::super::attention::Rotary,
        mask: &super::super::attention::Mask,
        nkv: usize,
        scale: f64,
        inter: bool,
    ) -> Tensor {
        let (b, t, nh, hd) = q.dims4().unwrap();
        let tr = |x: &Tensor| x.transpose(1, 2).unwrap().contiguous().unwrap();
        let q = rope(&tr(q), &rot.cos, &rot.sin, inter, Mode::Gradient).unwrap();
        let k = rope(&tr(k), &rot.cos, &rot.sin, inter, Mode::Gradient).unwrap();
        let v = tr(v);
        let g = nh / nkv;
        let q = q.reshape((b, nkv, g * t, hd)).unwrap();
        let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let s = s
            .reshape((b, nkv, g, t, t))
            .unwrap()
            .broadcast_add(&mask.t)
            .unwrap();
        let p = softmax_last(&s, Mode::Gradient)
            .unwrap()
            .reshape((b, nkv, g * t, t))
            .unwrap();
        let o = p.matmul(&v).unwrap();
        o.reshape((b, nh, t, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, nh * hd))
            .unwrap()
    }

    /// The fused attention op equals the composed candle ops in value and in the
    /// gradients to q, k and v, with left padding, grouped KV heads, a sliding window
    /// and both rotary layouts; a directional finite difference agrees.
    #[test]
    fn attention_fused_matches_composed_with_gradients() {
        use super::super::step::{mask, rotary, BatchLayout, StepCtx};
        let dev = Device::Cpu;
        let (nh, nkv, hd) = (4, 2, 8);
        let layout = BatchLayout::new(vec![6, 4, 5]);
        let (b, t) = (3, layout.width);
        let mut ctx = StepCtx::prefill(&layout);
        ctx.mode = Mode::Gradient;
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 100f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let rot = rotary(&ctx, &inv, &dev).unwrap();
        let scale = 1.0 / (hd as f64).sqrt();
        let mk = |n: usize, f: f32, a: f32, heads: usize| {
            Tensor::from_vec(wave(n, f, a), (b, t, heads, hd), &dev).unwrap()
        };
        let (q0, k0, v0) = (
            mk(b * t * nh * hd, 0.37, 2.0, nh),
            mk(b * t * nkv * hd, 0.23, 2.0, nkv),
            mk(b * t * nkv * hd, 0.41, 1.0, nkv),
        );
        for (window, inter) in [(None, false), (None, true), (Some(3), false)] {
            let m = mask(&ctx, window, &dev).unwrap();
            let core = attn::AttnCore {
                cos: std::sync::Arc::new(rot.cos_v.clone()),
                sin: std::sync::Arc::new(rot.sin_v.clone()),
                mask: std::sync::Arc::new(m.v.clone()),
                n_heads: nh,
                n_kv: nkv,
                head_dim: hd,
                scale: scale as f32,
                interleaved: inter,
            };
            let vars: Vec<Var> = [&q0, &k0, &v0]
                .iter()
                .map(|x| Var::from_tensor(x).unwrap())
                .collect();
            let (q, k, v) = (
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
            );
            let fused = q.apply_op3(k, v, core.clone()).unwrap();
            let comp = attention_composed(q, k, v, &rot, &m, nkv, scale, inter);
            let what = format!("window {window:?}, interleaved {inter}");
            assert!(
                max_diff(&fused, &comp) < 1e-5,
                "{what}: {}",
                max_diff(&fused, &comp)
            );
            let gf = probe(&fused, 0.29).backward().unwrap();
            let gc = probe(&comp, 0.29).backward().unwrap();
            for x in &vars {
                let (a, c) = (
                    gf.get(x.as_tensor()).unwrap(),
                    gc.get(x.as_tensor()).unwrap(),
                );
                assert!(max_diff(a, c) < 1e-5, "{what}: {}", max_diff(a, c));
            }
            // Finite differences along one direction in (q, k, v) together.
            let dirs: Vec<Tensor> = [&q0, &k0, &v0]
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    Tensor::from_vec(
                        wave(x.elem_count(), 0.13 + 0.1 * i as f32, 1.0),
                        x.shape(),
                        &dev,
                    )
                    .unwrap()
                })
                .collect();
            let f = |eps: f64| {
                let sh = |x: &Tensor, d: &Tensor| (x + (d * eps).unwrap()).unwrap();
                let y = sh(&q0, &dirs[0]).apply_op3(
                    &sh(&k0, &dirs[1]),
                    &sh(&v0, &dirs[2]),
                    core.clone(),
                );
                probe(&y.unwrap(), 0.29)
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let h = 1e-2;
            let fd = (f(h) - f(-h)) / (2.0 * h);
            let an: f64 = vars
                .iter()
                .zip(&dirs)
                .map(|(x, d)| dot_all(gf.get(x.as_tensor()).unwrap(), d))
                .sum();
            assert!(
                (fd - an).abs() < 2e-3 * an.abs().max(1.0),
                "{what}: fd {fd} vs {an}"
            );
        }
    }
}
