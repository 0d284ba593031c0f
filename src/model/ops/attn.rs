//! Self-attention over one step without a KV cache (a training forward), fused into one
//! candle custom op with a hand-written backward pass: rotary embedding of queries and
//! keys, scaled scores plus the additive mask (causal, padding, sliding window), softmax
//! and the weighted sum of values, for grouped KV heads.
//!
//! Composed from candle ops (transposes, rope, two batched matmuls, the mask broadcast,
//! softmax) the same function is about twenty graph nodes per layer, each with a
//! zero-filled gradient buffer. Here the forward keeps nothing but its inputs; the
//! backward recomputes each query's probabilities (t × T per head, cheap next to the
//! projections) and accumulates dQ, dK, dV row by row, parallel over the batch rows.
//! Each (row, head, query) reads only its own row's keys, and masked keys contribute
//! exactly nothing, as in the direct inference loop of `attention.rs`.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{f32s, stored};
use super::rope_into;

/// The fixed inputs of one layer's attention step: rotary tables [b, t, hd/2] and the
/// additive mask [b, t, t] (0 or -inf), row-major.
#[derive(Clone)]
pub(crate) struct AttnCore {
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
    pub mask: Arc<Vec<f32>>,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub interleaved: bool,
}

/// Shapes of one call: rows, columns.
struct Dims {
    b: usize,
    t: usize,
}

impl AttnCore {
    /// Check q [b, t, n_heads, hd], k and v [b, t, n_kv, hd] against the tables.
    fn dims(&self, q: &Shape, k: &Shape, v: &Shape) -> candle_core::Result<Dims> {
        let (b, t, h, hd) = q.dims4()?;
        let want_kv = (b, t, self.n_kv, self.head_dim);
        if h != self.n_heads
            || hd != self.head_dim
            || k.dims4()? != want_kv
            || v.dims4()? != want_kv
            || self.n_kv == 0
            || h % self.n_kv != 0
            || hd % 2 != 0
        {
            candle_core::bail!(
                "fused attention: q {:?}, k {:?}, v {:?}; expected [b, t, {}, {hd}] and \
                 [b, t, {}, {hd}]",
                q,
                k,
                v,
                self.n_heads,
                self.n_kv
            )
        }
        if self.mask.len() != b * t * t || self.cos.len() != b * t * hd / 2 {
            candle_core::bail!(
                "fused attention: mask has {} values and rotary {}, expected {} and {}",
                self.mask.len(),
                self.cos.len(),
                b * t * t,
                b * t * hd / 2
            )
        }
        Ok(Dims { b, t })
    }

    /// Rotary tables of row r, column j.
    fn rot(&self, r: usize, t: usize, j: usize) -> (&[f32], &[f32]) {
        let half = self.head_dim / 2;
        let o = (r * t + j) * half;
        (&self.cos[o..o + half], &self.sin[o..o + half])
    }

    /// The rotated keys of one row, [n_kv, t, hd] (kv head major).
    fn rotated_keys(&self, r: usize, t: usize, k: &[f32]) -> Vec<f32> {
        let (hd, g) = (self.head_dim, self.n_kv);
        let mut kr = vec![0f32; g * t * hd];
        for j in 0..t {
            let (c, s) = self.rot(r, t, j);
            for gi in 0..g {
                let src = (j * g + gi) * hd;
                let dst = (gi * t + j) * hd;
                rope_into(
                    &k[src..src + hd],
                    c,
                    s,
                    self.interleaved,
                    &mut kr[dst..dst + hd],
                );
            }
        }
        kr
    }

    /// Rotated queries of KV head `gi`'s query heads, [group * t, hd] (head major).
    fn rotated_queries(&self, r: usize, t: usize, gi: usize, q: &[f32], qr: &mut [f32]) {
        let (hd, nh) = (self.head_dim, self.n_heads);
        let group = nh / self.n_kv;
        for i in 0..t {
            let (c, s) = self.rot(r, t, i);
            for hi in 0..group {
                let src = (i * nh + gi * group + hi) * hd;
                let dst = (hi * t + i) * hd;
                rope_into(
                    &q[src..src + hd],
                    c,
                    s,
                    self.interleaved,
                    &mut qr[dst..dst + hd],
                );
            }
        }
    }

    /// Softmax probabilities of KV head `gi`'s queries of row r: `p` [group * t, t]
    /// from rotated queries and keys; masked keys get exactly 0.
    fn probs(
        &self,
        r: usize,
        t: usize,
        qr: &[f32],
        kr: &[f32],
        p: &mut [f32],
    ) -> candle_core::Result<()> {
        let (hd, rows) = (self.head_dim, qr.len() / self.head_dim.max(1));
        // S = scale · Qr · Krᵀ
        mm(
            p,
            (t as isize, 1),
            qr,
            (hd as isize, 1),
            kr,
            (1, hd as isize),
            (rows, t, hd),
            false,
            self.scale,
        )?;
        for (ri, prow) in p.chunks_exact_mut(t).enumerate() {
            let i = ri % t;
            let mrow = &self.mask[(r * t + i) * t..(r * t + i + 1) * t];
            let mut mx = f32::NEG_INFINITY;
            for (s, &m) in prow.iter_mut().zip(mrow) {
                if m != f32::NEG_INFINITY {
                    *s += m;
                    mx = mx.max(*s);
                }
            }
            let mut sum = 0f32;
            for (s, &m) in prow.iter_mut().zip(mrow) {
                if m == f32::NEG_INFINITY {
                    *s = 0.0;
                } else {
                    *s = (*s - mx).exp();
                    sum += *s;
                }
            }
            prow.iter_mut().for_each(|s| *s /= sum);
        }
        Ok(())
    }

    /// Output of row r: [t, n_heads * hd].
    fn forward_row(
        &self,
        r: usize,
        t: usize,
        (q, k, v): (&[f32], &[f32], &[f32]),
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let (hd, nh, g) = (self.head_dim, self.n_heads, self.n_kv);
        let group = nh / g;
        let kr = self.rotated_keys(r, t, k);
        let mut qr = vec![0f32; group * t * hd];
        let mut p = vec![0f32; group * t * t];
        let mut o = vec![0f32; group * t * hd];
        for gi in 0..g {
            self.rotated_queries(r, t, gi, q, &mut qr);
            self.probs(r, t, &qr, &kr[gi * t * hd..(gi + 1) * t * hd], &mut p)?;
            // O = P · V (V: rows of stride n_kv * hd)
            let vg = &v[gi * hd..];
            mm(
                &mut o,
                (hd as isize, 1),
                &p,
                (t as isize, 1),
                vg,
                ((g * hd) as isize, 1),
                (group * t, hd, t),
                false,
                1.0,
            )?;
            for hi in 0..group {
                for i in 0..t {
                    let dst = (i * nh + gi * group + hi) * hd;
                    out[dst..dst + hd]
                        .copy_from_slice(&o[(hi * t + i) * hd..(hi * t + i + 1) * hd]);
                }
            }
        }
        Ok(())
    }

    /// Gradients of row r: dq [t, nh, hd], dk and dv [t, n_kv, hd] from dO [t, nh, hd].
    fn backward_row(
        &self,
        r: usize,
        t: usize,
        (q, k, v, dout): (&[f32], &[f32], &[f32], &[f32]),
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) -> candle_core::Result<()> {
        let (hd, nh, g) = (self.head_dim, self.n_heads, self.n_kv);
        let group = nh / g;
        let half = hd / 2;
        let rows = group * t;
        let kr = self.rotated_keys(r, t, k);
        let mut qr = vec![0f32; rows * hd];
        let mut p = vec![0f32; rows * t];
        let mut dp = vec![0f32; rows * t];
        let mut d_o = vec![0f32; rows * hd];
        let mut dqr = vec![0f32; rows * hd];
        let mut dkr = vec![0f32; t * hd];
        let mut neg = vec![0f32; half];
        for gi in 0..g {
            let krg = &kr[gi * t * hd..(gi + 1) * t * hd];
            self.rotated_queries(r, t, gi, q, &mut qr);
            self.probs(r, t, &qr, krg, &mut p)?;
            for hi in 0..group {
                for i in 0..t {
                    let src = (i * nh + gi * group + hi) * hd;
                    d_o[(hi * t + i) * hd..(hi * t + i + 1) * hd]
                        .copy_from_slice(&dout[src..src + hd]);
                }
            }
            let (vg, dvg) = (&v[gi * hd..], &mut dv[gi * hd..]);
            let vs = (g * hd) as isize;
            // dV = Pᵀ · dO (written in place: rows of stride n_kv * hd)
            mm(
                dvg,
                (vs, 1),
                &p,
                (1, t as isize),
                &d_o,
                (hd as isize, 1),
                (t, hd, rows),
                false,
                1.0,
            )?;
            // dP = dO · Vᵀ
            mm(
                &mut dp,
                (t as isize, 1),
                &d_o,
                (hd as isize, 1),
                vg,
                (1, vs),
                (rows, t, hd),
                false,
                1.0,
            )?;
            // dS = P ∘ (dP − Σ_j P dP), into dp
            for (prow, dprow) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)) {
                let c: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
                for (d, &pj) in dprow.iter_mut().zip(prow) {
                    *d = pj * (*d - c);
                }
            }
            // dQr = scale · dS · Kr ; dKr = scale · dSᵀ · Qr
            mm(
                &mut dqr,
                (hd as isize, 1),
                &dp,
                (t as isize, 1),
                krg,
                (hd as isize, 1),
                (rows, hd, t),
                false,
                self.scale,
            )?;
            mm(
                &mut dkr,
                (hd as isize, 1),
                &dp,
                (1, t as isize),
                &qr,
                (hd as isize, 1),
                (t, hd, rows),
                false,
                self.scale,
            )?;
            // The transpose of a rotation is the rotation by the opposite angle.
            for i in 0..t {
                let (c, s) = self.rot(r, t, i);
                neg.iter_mut().zip(s).for_each(|(n, s)| *n = -s);
                for hi in 0..group {
                    let dst = (i * nh + gi * group + hi) * hd;
                    let src = (hi * t + i) * hd;
                    rope_into(
                        &dqr[src..src + hd],
                        c,
                        &neg,
                        self.interleaved,
                        &mut dq[dst..dst + hd],
                    );
                }
                let dst = (i * g + gi) * hd;
                rope_into(
                    &dkr[i * hd..(i + 1) * hd],
                    c,
                    &neg,
                    self.interleaved,
                    &mut dk[dst..dst + hd],
                );
            }
        }
        Ok(())
    }
}

/// dst (m × n) = beta · lhs (m × k) · rhs (k × n), or dst + that when `acc`; each
/// operand given by (row stride, column stride). Single-threaded (the callers split
/// rows over the pool).
#[allow(clippy::too_many_arguments)]
fn mm(
    dst: &mut [f32],
    (d_rs, d_cs): (isize, isize),
    lhs: &[f32],
    (l_rs, l_cs): (isize, isize),
    rhs: &[f32],
    (r_rs, r_cs): (isize, isize),
    (m, n, k): (usize, usize, usize),
    acc: bool,
    beta: f32,
) -> candle_core::Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let last = |rs: isize, cs: isize, rows: usize, cols: usize| {
        (rows.saturating_sub(1) as isize * rs + cols.saturating_sub(1) as isize * cs) as usize
    };
    // The furthest element each operand reaches must lie inside its slice.
    let inside = last(d_rs, d_cs, m, n) < dst.len()
        && (k == 0 || (last(l_rs, l_cs, m, k) < lhs.len() && last(r_rs, r_cs, k, n) < rhs.len()));
    if !inside {
        candle_core::bail!("fused attention: a {m} x {n} x {k} product reaches past its operands")
    }
    // SAFETY: every index the strides reach lies inside its slice (checked above); dst
    // does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            d_cs,
            d_rs,
            acc,
            lhs.as_ptr(),
            l_cs,
            l_rs,
            rhs.as_ptr(),
            r_cs,
            r_rs,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
    Ok(())
}

impl CustomOp3 for AttnCore {
    fn name(&self) -> &'static str {
        "steerlab-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dims { b, t } = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let q = f32s(s1, l1, "attention queries")?;
        let k = f32s(s2, l2, "attention keys")?;
        let v = f32s(s3, l3, "attention values")?;
        let (nh, g, hd) = (self.n_heads, self.n_kv, self.head_dim);
        let mut out = vec![0f32; b * t * nh * hd];
        out.par_chunks_mut((t * nh * hd).max(1))
            .enumerate()
            .try_for_each(|(r, o)| {
                let qo = r * t * nh * hd;
                let ko = r * t * g * hd;
                let ins = (
                    &q[qo..qo + t * nh * hd],
                    &k[ko..ko + t * g * hd],
                    &v[ko..ko + t * g * hd],
                );
                self.forward_row(r, t, ins, o)
            })?;
        Ok((CpuStorage::F32(out), Shape::from((b, t, nh * hd))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Dims { b, t } = self.dims(q.shape(), k.shape(), v.shape())?;
        let (nh, g, hd) = (self.n_heads, self.n_kv, self.head_dim);
        let (q, k, v, grad) = (
            q.contiguous()?,
            k.contiguous()?,
            v.contiguous()?,
            grad.contiguous()?,
        );
        if grad.elem_count() != b * t * nh * hd {
            candle_core::bail!(
                "fused attention backward: gradient shape {:?}",
                grad.shape()
            )
        }
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let qv = stored(&qs, ql, "attention queries")?;
        let kv = stored(&ks, kl, "attention keys")?;
        let vv = stored(&vs, vl, "attention values")?;
        let gv = stored(&gs, gl, "attention output gradient")?;
        let (qn, kn) = (t * nh * hd, t * g * hd);
        let mut dq = vec![0f32; b * qn];
        let mut dk = vec![0f32; b * kn];
        let mut dv = vec![0f32; b * kn];
        dq.par_chunks_mut(qn.max(1))
            .zip(
                dk.par_chunks_mut(kn.max(1))
                    .zip(dv.par_chunks_mut(kn.max(1))),
            )
            .enumerate()
            .try_for_each(|(r, (dq, (dk, dv)))| {
                let ins = (
                    &qv[r * qn..(r + 1) * qn],
                    &kv[r * kn..(r + 1) * kn],
                    &vv[r * kn..(r + 1) * kn],
                    &gv[r * qn..(r + 1) * qn],
                );
                self.backward_row(r, t, ins, dq, dk, dv)
            })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}
