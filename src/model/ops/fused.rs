//! Fused gradient-mode kernels for RMSNorm and the SiLU gate, each one candle custom op
//! with a hand-written backward pass.
//!
//! Composed from candle's elementary ops, an RMSNorm is six ops forward and about
//! fifteen backward, a SiLU gate three and eight, each allocating its output plus a
//! zero-filled gradient buffer (candle's `GradStore::or_insert`) and running on one
//! thread. These make one pass per row forward and one backward, split over the
//! engine's rayon pool. They run only in `Mode::Gradient` on f32 CPU tensors (the
//! inference forms are untouched); the tests in `super` hold them equal to the
//! elementary forms, values and gradients.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Rows per rayon task (a row is `d_model` or `d_ff` values).
const ROWS_PER_TASK: usize = 16;

/// The f32 values of a contiguous CPU storage, in place.
pub(super) fn f32s<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("{what}: expected f32 values, got {:?}", s.dtype())
    };
    let Some((o0, o1)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expected contiguous values")
    };
    Ok(&d[o0..o1])
}

/// The f32 values of a contiguous CPU storage (`Tensor::storage_and_layout`), in place.
pub(super) fn stored<'a>(s: &'a Storage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Storage::Cpu(c) = s else {
        candle_core::bail!("{what}: expected a CPU tensor")
    };
    f32s(c, l, what)
}

/// Whether the fused kernels can run on `t` (f32 on the CPU).
pub(super) fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// RMSNorm with a frozen weight: y = x / sqrt(mean(x²) + eps) · w over the last
/// dimension; backward dL/dx only.
pub(super) struct RmsNormOp {
    pub w: Vec<f32>,
    pub eps: f32,
}

impl RmsNormOp {
    /// 1 / sqrt(mean(x²) + eps) of one row (the sum in f32, as candle's kernels).
    fn inv_rms(&self, x: &[f32]) -> f32 {
        let s: f32 = x.iter().map(|v| v * v).sum();
        1.0 / (s / x.len() as f32 + self.eps).sqrt()
    }
}

impl CustomOp1 for RmsNormOp {
    fn name(&self) -> &'static str {
        "steerlab-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.w.len();
        if l.shape().dims().last() != Some(&d) || d == 0 {
            candle_core::bail!("rms norm: shape {:?}, the weight has {d} values", l.shape())
        }
        let x = f32s(s, l, "rms norm input")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(y, x)| {
                let m = (x.iter().map(|v| v * v).sum::<f32>() / d as f32 + self.eps).sqrt();
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(&self.w) {
                    *y = x / m * w;
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    /// dx = r · (w∘g) − x · r³ / d · Σ(x∘w∘g), r = 1 / sqrt(mean(x²) + eps).
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let d = self.w.len();
        let (x, g) = (x.contiguous()?, g.contiguous()?);
        let ((xs, xl), (gs, gl)) = (x.storage_and_layout(), g.storage_and_layout());
        let (xv, gv) = (
            stored(&xs, xl, "rms norm input")?,
            stored(&gs, gl, "rms norm grad")?,
        );
        let mut dx = vec![0f32; xv.len()];
        dx.par_chunks_mut(d)
            .zip(xv.par_chunks(d).zip(gv.par_chunks(d)))
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(dx, (x, g))| {
                let r = self.inv_rms(x);
                let dot: f32 = x
                    .iter()
                    .zip(g)
                    .zip(&self.w)
                    .map(|((x, g), w)| x * g * w)
                    .sum();
                let c = r * r * r * dot / d as f32;
                for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(&self.w) {
                    *dx = r * g * w - c * x;
                }
            });
        Ok(Some(
            Tensor::from_vec(dx, x.shape(), x.device())?.to_dtype(x.dtype())?,
        ))
    }
}

/// silu(g) · u (`g / (1 + exp(-g)) * u`, the formula of candle's `silu` then `*`);
/// backward dL/dg = dy · u · s · (1 + g · (1 − s)) with s = sigmoid(g), dL/du = dy ·
/// silu(g).
pub(super) struct SiluMulOp;

impl CustomOp2 for SiluMulOp {
    fn name(&self) -> &'static str {
        "steerlab-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "silu gate: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            )
        }
        let (g, u) = (f32s(s1, l1, "silu gate")?, f32s(s2, l2, "silu up")?);
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(4096)
            .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
            .for_each(|(y, (g, u))| {
                for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                    *y = (g / (1.0 + (-g).exp())) * u;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u, dy) = (g.contiguous()?, u.contiguous()?, dy.contiguous()?);
        let (gs, gl) = g.storage_and_layout();
        let (us, ul) = u.storage_and_layout();
        let (ds, dl) = dy.storage_and_layout();
        let gv = stored(&gs, gl, "silu gate")?;
        let uv = stored(&us, ul, "silu up")?;
        let dv = stored(&ds, dl, "silu gate grad")?;
        let mut dg = vec![0f32; gv.len()];
        let mut du = vec![0f32; gv.len()];
        const C: usize = 4096;
        dg.par_chunks_mut(C)
            .zip(du.par_chunks_mut(C))
            .zip(gv.par_chunks(C).zip(uv.par_chunks(C)).zip(dv.par_chunks(C)))
            .for_each(|((dg, du), ((g, u), dy))| {
                for i in 0..dg.len() {
                    let (x, s) = (g[i], 1.0 / (1.0 + (-g[i]).exp()));
                    dg[i] = dy[i] * u[i] * s * (1.0 + x * (1.0 - s));
                    du[i] = dy[i] * (x / (1.0 + (-x).exp()));
                }
            });
        let dg = Tensor::from_vec(dg, g.shape(), g.device())?.to_dtype(g.dtype())?;
        let du = Tensor::from_vec(du, u.shape(), u.device())?.to_dtype(u.dtype())?;
        Ok((Some(dg), Some(du)))
    }
}
