//! The execution mode and the operations that have a fast and a differentiable form.
//!
//! [`Mode`] is chosen once per call (generation, capture and logits run in
//! `Inference`; the trainer runs in `Gradient`) and carried by the step context, so no
//! op guesses from its tensors whether a gradient is wanted. Each pair below computes the
//! same function both ways, side by side, and the tests at the end hold them equal:
//! - inference: fused candle kernels without a backward pass (`rms_norm`, `rope`,
//!   `softmax_last_dim`) and steerlab's own CPU loops (`rope_into`, the SiLU gate);
//! - gradient: candle's elementary ops, each with a backward pass.
//!
//! Attention over the KV cache has its pair in `attention.rs` (`forward_direct` /
//! `forward_candle`) and the projections theirs in `weights.rs` (one custom op whose
//! backward is the frozen-weight GEMM); the intervention operations theirs in
//! `crate::intervene`.

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
}

impl RmsNorm {
    pub fn load(w: &Weights, name: &str, len: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            w: w.vector(name, len)?,
            eps: eps as f32,
        })
    }

    /// x [..., len] -> [..., len].
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(match mode {
            Mode::Inference => candle_nn::ops::rms_norm(&x, &self.w, self.eps)?,
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
    if mode == Mode::Inference && act == Activation::Silu {
        if let Some(h) = silu_mul_cpu(g, u)? {
            return Ok(h);
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
}
