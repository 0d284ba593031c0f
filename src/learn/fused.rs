//! Fused CPU kernels for the losses over the vocabulary, with their backward passes.
//!
//! Composed from candle ops, a log-softmax over a `[k, V]` block and its backward walk
//! the block about a dozen times (max, subtract, exp, sum, log, gather, and the same
//! again for the gradient, each allocating); at V ≈ 50k that is most of a training
//! step's loss cost. These kernels make one pass per row for the value and one for the
//! gradient (`g · (onehot − softmax)` for a target log-probability, `g · (softmax −
//! p_ref)` for KL), parallel over rows with rayon, accumulating in f64 whatever the
//! input dtype (F32 or F64). Other devices use the composed ops in `losses.rs`; the
//! tests check that both paths agree.

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor, WithDType,
};
use rayon::prelude::*;

use crate::error::Result;

/// Whether the fused kernels can run on `t` (CPU, F32/F64).
pub(crate) fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The element types the kernels run on: `exp` in the input's precision (f32's is
/// several times faster than f64's), sums accumulated in f64.
pub(crate) trait Real: WithDType {
    fn exp_(self) -> Self;
}

impl Real for f32 {
    fn exp_(self) -> Self {
        self.exp()
    }
}

impl Real for f64 {
    fn exp_(self) -> Self {
        self.exp()
    }
}

/// `(max, ln sum exp(x − max))` of one row (the sum in f64).
fn row_stats<T: Real>(row: &[T]) -> (f64, f64) {
    let m = row.iter().copied().fold(
        T::from_f64(f64::NEG_INFINITY),
        |a, b| if b > a { b } else { a },
    );
    let s: f64 = row.iter().map(|&v| (v - m).exp_().to_f64()).sum();
    (m.to_f64(), s.ln())
}

/// The contiguous `[n, v]` slice of a storage, or a candle error.
fn rows_of<'a, T: WithDType>(
    data: &'a [T],
    l: &Layout,
    what: &str,
) -> candle_core::Result<(&'a [T], usize, usize)> {
    let Some((o0, o1)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expects a contiguous input")
    };
    let (n, v) = l.shape().dims2()?;
    Ok((&data[o0..o1], n, v))
}

/// `log softmax(x[rows[j]])[targets[j]]` for each `j`: x `[N, V]` -> `[k]`. Rows are
/// distinct and every index is in range (the caller checked).
#[derive(Clone)]
struct TargetLogprobs {
    rows: Arc<Vec<u32>>,
    targets: Arc<Vec<u32>>,
}

impl TargetLogprobs {
    fn fwd<T: Real>(&self, x: &[T], v: usize) -> Vec<T> {
        self.rows
            .par_iter()
            .zip(self.targets.par_iter())
            .map(|(&r, &t)| {
                let row = &x[r as usize * v..(r as usize + 1) * v];
                let (m, lse) = row_stats(row);
                T::from_f64(row[t as usize].to_f64() - m - lse)
            })
            .collect()
    }
}

impl CustomOp1 for TargetLogprobs {
    fn name(&self) -> &'static str {
        "steerlab-target-logprobs"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = self.rows.len();
        let out = match s {
            CpuStorage::F32(d) => {
                let (x, _, v) = rows_of(d, l, self.name())?;
                CpuStorage::F32(self.fwd(x, v))
            }
            CpuStorage::F64(d) => {
                let (x, _, v) = rows_of(d, l, self.name())?;
                CpuStorage::F64(self.fwd(x, v))
            }
            _ => candle_core::bail!("{}: expects F32 or F64 logits", self.name()),
        };
        Ok((out, Shape::from(k)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let lp = res.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let op = TargetLogprobsGrad {
            of: self.clone(),
            grad: Arc::new(g),
            logprobs: Arc::new(lp),
        };
        Ok(Some(arg.apply_op1_no_bwd(&op)?))
    }
}

/// The gradient of [`TargetLogprobs`] with respect to x: row `rows[j]` gets
/// `grad[j] · (onehot(targets[j]) − softmax(x[rows[j]]))`, other rows 0.
/// The forward's results give each row's log-normaliser without another pass:
/// `max + ln sum exp(x − max) = x[target] − logprob`.
struct TargetLogprobsGrad {
    of: TargetLogprobs,
    grad: Arc<Vec<f64>>,
    logprobs: Arc<Vec<f64>>,
}

impl TargetLogprobsGrad {
    fn run<T: Real>(&self, x: &[T], n: usize, v: usize) -> Vec<T> {
        let mut which = vec![usize::MAX; n];
        for (j, &r) in self.of.rows.iter().enumerate() {
            which[r as usize] = j;
        }
        let mut out = vec![T::zero(); n * v];
        out.par_chunks_mut(v.max(1))
            .zip(x.par_chunks(v.max(1)))
            .zip(which.par_iter())
            .for_each(|((o, row), &j)| {
                if j == usize::MAX {
                    return;
                }
                let g = self.grad[j];
                let t = self.of.targets[j] as usize;
                let shift = T::from_f64(row[t].to_f64() - self.logprobs[j]);
                for (dst, &xv) in o.iter_mut().zip(row) {
                    *dst = T::from_f64(-g * (xv - shift).exp_().to_f64());
                }
                o[t] = T::from_f64(o[t].to_f64() + g);
            });
        out
    }
}

impl CustomOp1 for TargetLogprobsGrad {
    fn name(&self) -> &'static str {
        "steerlab-target-logprobs-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(d) => {
                let (x, n, v) = rows_of(d, l, self.name())?;
                CpuStorage::F32(self.run(x, n, v))
            }
            CpuStorage::F64(d) => {
                let (x, n, v) = rows_of(d, l, self.name())?;
                CpuStorage::F64(self.run(x, n, v))
            }
            _ => candle_core::bail!("{}: expects F32 or F64 logits", self.name()),
        };
        Ok((out, l.shape().clone()))
    }
}

/// `log softmax(x[rows[j]])[targets[j]]` for each `j` on the CPU: x `[N, V]` (F32/F64)
/// -> `[k]`, differentiable. `rows` distinct and `< N`, `targets < V` (checked by the
/// caller).
pub(crate) fn target_logprobs(x: &Tensor, rows: Vec<u32>, targets: Vec<u32>) -> Result<Tensor> {
    let op = TargetLogprobs {
        rows: Arc::new(rows),
        targets: Arc::new(targets),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// KL(p_ref || softmax(x)) per row: x `[n, V]`, ref log-probabilities `[n, V]` -> `[n]`.
/// Terms with `p_ref = 0` count 0.
struct RowKl;

fn kl_rows<T: Real>(x: &[T], r: &[T], v: usize) -> Vec<T> {
    x.par_chunks(v.max(1))
        .zip(r.par_chunks(v.max(1)))
        .map(|(row, rr)| {
            let (m, lse) = row_stats(row);
            let kl: f64 = row
                .iter()
                .zip(rr)
                .map(|(xv, &rv)| {
                    let p = rv.exp_().to_f64();
                    if p > 0.0 {
                        p * (rv.to_f64() - (xv.to_f64() - m - lse))
                    } else {
                        0.0
                    }
                })
                .sum();
            T::from_f64(kl)
        })
        .collect()
}

impl CustomOp2 for RowKl {
    fn name(&self) -> &'static str {
        "steerlab-row-kl"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l1.shape().dims2()?.0;
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                let (x, _, v) = rows_of(a, l1, self.name())?;
                let (r, _, _) = rows_of(b, l2, self.name())?;
                CpuStorage::F32(kl_rows(x, r, v))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                let (x, _, v) = rows_of(a, l1, self.name())?;
                let (r, _, _) = rows_of(b, l2, self.name())?;
                CpuStorage::F64(kl_rows(x, r, v))
            }
            _ => candle_core::bail!("{}: expects two F32 or two F64 inputs", self.name()),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let gx = x.apply_op2_no_bwd(r, &RowKlGrad(Arc::new(g)))?;
        Ok((Some(gx), None))
    }
}

/// The gradient of [`RowKl`] with respect to x: `grad[j] · (softmax(x[j]) − p_ref[j])`.
struct RowKlGrad(Arc<Vec<f64>>);

impl RowKlGrad {
    fn run<T: Real>(&self, x: &[T], r: &[T], v: usize) -> Vec<T> {
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(v.max(1))
            .zip(x.par_chunks(v.max(1)))
            .zip(r.par_chunks(v.max(1)))
            .zip(self.0.par_iter())
            .for_each(|(((o, row), rr), &g)| {
                let (m, lse) = row_stats(row);
                let shift = T::from_f64(m + lse);
                for ((dst, &xv), &rv) in o.iter_mut().zip(row).zip(rr) {
                    let q = (xv - shift).exp_().to_f64();
                    *dst = T::from_f64(g * (q - rv.exp_().to_f64()));
                }
            });
        out
    }
}

impl CustomOp2 for RowKlGrad {
    fn name(&self) -> &'static str {
        "steerlab-row-kl-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                let (x, _, v) = rows_of(a, l1, self.name())?;
                let (r, _, _) = rows_of(b, l2, self.name())?;
                CpuStorage::F32(self.run(x, r, v))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                let (x, _, v) = rows_of(a, l1, self.name())?;
                let (r, _, _) = rows_of(b, l2, self.name())?;
                CpuStorage::F64(self.run(x, r, v))
            }
            _ => candle_core::bail!("{}: expects two F32 or two F64 inputs", self.name()),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// KL(p_ref || softmax(x)) per row on the CPU: x and `ref_logprobs` `[n, V]`, same
/// F32/F64 dtype, checked by the caller -> `[n]`, differentiable in x only.
pub(crate) fn row_kl(x: &Tensor, ref_logprobs: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op2(&ref_logprobs.detach().contiguous()?, RowKl)?)
}

/// For checking reference log-probabilities `[n, V]` (CPU, F32/F64) in one pass: the
/// number of NaN values, of `+inf` values, and each row's total probability.
pub(crate) fn ref_summary(r: &Tensor) -> Result<(usize, usize, Vec<f64>)> {
    fn run<T: Real>(x: &[T], v: usize) -> (usize, usize, Vec<f64>) {
        let rows: Vec<(usize, usize, f64)> = x
            .par_chunks(v.max(1))
            .map(|row| {
                let (mut nan, mut inf, mut mass) = (0, 0, 0f64);
                for &e in row {
                    let f = e.to_f64();
                    nan += f.is_nan() as usize;
                    inf += (f == f64::INFINITY) as usize;
                    mass += e.exp_().to_f64();
                }
                (nan, inf, mass)
            })
            .collect();
        let nan = rows.iter().map(|r| r.0).sum();
        let inf = rows.iter().map(|r| r.1).sum();
        (nan, inf, rows.into_iter().map(|r| r.2).collect())
    }
    let r = r.contiguous()?;
    let (st, l) = r.storage_and_layout();
    let name = "steerlab-ref-summary";
    Ok(match &*st {
        Storage::Cpu(CpuStorage::F32(d)) => {
            let (x, _, v) = rows_of(d, l, name)?;
            run(x, v)
        }
        Storage::Cpu(CpuStorage::F64(d)) => {
            let (x, _, v) = rows_of(d, l, name)?;
            run(x, v)
        }
        _ => {
            return Err(crate::error::Error::invalid(format!(
                "{name}: expects F32 or F64 on the CPU"
            )))
        }
    })
}
