//! Training losses as differentiable candle functions.
//!
//! Every function takes float tensors (`F32`, or `F64` for exact gradient tests; all
//! float inputs of one call share a dtype) and returns a tensor that `backward()` can
//! differentiate with respect to the logits (or the input of [`l1`]). Shapes use `b`
//! (batch rows), `t` (positions), `V` (vocabulary) and `n` (chosen positions).
//! Log-probabilities are computed with max subtraction (log-sum-exp), so large logits do
//! not overflow. Reference distributions and masks are constants: no gradient flows into
//! them.
//!
//! On the CPU the vocabulary-wide parts (target log-probabilities, KL per row) run as
//! fused kernels with hand-written backward passes (`fused.rs`); elsewhere they are
//! composed from candle ops. Tests check the two agree.
//!
//! Index and mask arguments are checked (shapes, dtypes, ranges) and a bad one is an
//! [`Error`] naming the argument; these checks read the small index/mask tensors back to
//! the host, never the logits.

use candle_core::{DType, Tensor, D};

use super::fused;
use crate::error::{Error, Result};

/// The float dtype of `t`, or an error naming `what` when it is not F32/F64.
fn float_dtype(t: &Tensor, what: &str) -> Result<DType> {
    match t.dtype() {
        DType::F32 | DType::F64 => Ok(t.dtype()),
        other => Err(Error::invalid(format!(
            "{what} has dtype {other:?}; expected F32 (or F64)"
        ))),
    }
}

/// Require `t` to have dtype `want`.
fn same_dtype(t: &Tensor, want: DType, what: &str) -> Result<()> {
    if t.dtype() == want {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} has dtype {:?}; expected {want:?} (the dtype of the logits)",
            t.dtype()
        )))
    }
}

/// Require `t` to be U32 of shape `dims`, and read it back as a flat vector.
fn indices(t: &Tensor, dims: &[usize], what: &str, vocab: usize) -> Result<Vec<u32>> {
    if t.dtype() != DType::U32 {
        return Err(Error::invalid(format!(
            "{what} has dtype {:?}; expected U32 token ids",
            t.dtype()
        )));
    }
    if t.dims() != dims {
        return Err(Error::shape(format!(
            "{what} has shape {:?}; expected {dims:?}",
            t.dims()
        )));
    }
    let ids = t.flatten_all()?.to_vec1::<u32>()?;
    if let Some((i, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::out_of_range(format!(
            "{what} holds token id {id} at flat index {i}; expected ids below the \
             vocabulary size {vocab}"
        )));
    }
    Ok(ids)
}

/// Row-wise log-softmax of `x` `[n, V]` -> `[n, V]`, with the row maximum subtracted
/// first (detached: log-softmax does not depend on it, so it needs no gradient).
pub fn log_softmax_rows(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach(); // [n, 1]
    let shifted = x.broadcast_sub(&m)?; // [n, V]
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // [n, 1]
    Ok(shifted.broadcast_sub(&lse)?)
}

/// `log softmax(x[rows[j]])[targets[j]]` for each `j` from candle ops (any device):
/// x `[N, V]` -> `[k]`.
fn composed_target_logprobs(x: &Tensor, rows: Vec<u32>, targets: Vec<u32>) -> Result<Tensor> {
    let k = rows.len();
    let row_ids = Tensor::from_vec(rows, k, x.device())?;
    let target_ids = Tensor::from_vec(targets, (k, 1), x.device())?;
    let chosen = x.index_select(&row_ids, 0)?; // [k, V]
    Ok(log_softmax_rows(&chosen)?
        .gather(&target_ids, 1)?
        .squeeze(1)?)
}

/// KL(p_ref || softmax(x)) of each row from candle ops (any device): `[n, V]` -> `[n]`.
fn composed_row_kl(x: &Tensor, r: &Tensor) -> Result<Tensor> {
    let p_ref = r.exp()?; // [n, V]; 0 where r = -inf
                          // sum_v p log p, with 0 log 0 = 0 (r = -inf makes p * r NaN there; where_cond drops it).
    let zeros = p_ref.zeros_like()?;
    let neg_entropy = p_ref.gt(&zeros)?.where_cond(&(&p_ref * r)?, &zeros)?;
    let cross = (&p_ref * log_softmax_rows(x)?)?; // [n, V]
    Ok((neg_entropy - cross)?.sum(1)?)
}

/// For checking reference log-probabilities `[n, V]` from candle ops (any device): the
/// number of NaN values, of `+inf` values, and each row's total probability.
fn composed_ref_summary(r: &Tensor) -> Result<(usize, usize, Vec<f64>)> {
    let count = |t: Tensor| -> Result<usize> {
        Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize)
    };
    let nan = count(r.ne(r)?)?;
    let pos_inf = count(r.eq(f64::INFINITY)?)?;
    let mass = r.exp()?.sum(1)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok((nan, pos_inf, mass))
}

/// The masked positions of a `[b, t, V]` batch: their log-probabilities `[k]` of the
/// targets, a `[b, k]` matrix of mask weights that sums them per row, and the mask total.
fn masked_target_logprobs(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, Tensor, f64)> {
    let dtype = float_dtype(logits, "logits")?;
    let (b, t, v) = match *logits.dims() {
        [b, t, v] if b > 0 && t > 0 && v > 0 => (b, t, v),
        _ => {
            return Err(Error::shape(format!(
                "logits has shape {:?}; expected [batch, positions, vocab] with every size \
                 at least 1",
                logits.dims()
            )))
        }
    };
    let ids = indices(targets, &[b, t], "targets", v)?;
    same_dtype(mask, dtype, "mask")?;
    if mask.dims() != [b, t] {
        return Err(Error::shape(format!(
            "mask has shape {:?}; expected [{b}, {t}] (the batch and positions of the logits)",
            mask.dims()
        )));
    }
    let weights = mask.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if let Some((i, w)) = weights
        .iter()
        .enumerate()
        .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
    {
        return Err(Error::invalid(format!(
            "mask holds {w} at row {}, position {}; expected finite weights >= 0 (1 where the \
             next token is a continuation token, 0 elsewhere)",
            i / t,
            i % t
        )));
    }
    let rows: Vec<usize> = (0..b * t).filter(|&i| weights[i] > 0.0).collect();
    if rows.is_empty() {
        return Err(Error::invalid(
            "mask selects no position (every weight is 0): there is no continuation token to \
             score",
        ));
    }
    let k = rows.len();
    let dev = logits.device();
    let row_ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    let target_ids: Vec<u32> = rows.iter().map(|&r| ids[r]).collect();
    // Only the masked rows go through the log-softmax.
    let flat = logits.reshape((b * t, v))?; // [b*t, V]
    let lp = if fused::applies(logits) {
        fused::target_logprobs(&flat, row_ids, target_ids)? // [k]
    } else {
        composed_target_logprobs(&flat, row_ids, target_ids)?
    };
    let mut sum_rows = vec![0f64; b * k];
    for (j, &r) in rows.iter().enumerate() {
        sum_rows[(r / t) * k + j] = weights[r];
    }
    let sum_rows = Tensor::from_vec(sum_rows, (b, k), dev)?.to_dtype(dtype)?;
    Ok((lp, sum_rows, weights.iter().sum()))
}

/// Log-probability of each row's masked continuation: `[b]`.
///
/// `logits` `[b, t, V]` (float), `targets` `[b, t]` U32, `mask` `[b, t]` (the dtype of
/// the logits). `logits[r, i]` predicts `targets[r, i]` (the caller shifts the ids by
/// one: `targets[r, i] = ids[r, i + 1]`); `mask[r, i]` is 1 where that next token belongs
/// to the continuation, 0 elsewhere (prompt, padding). Returns
/// `sum_i mask[r, i] * log softmax(logits[r, i])[targets[r, i]]`, 0 for a row whose
/// mask is all 0. Use it for "log p(completion) − log p(negative)".
///
/// Errors: [`Error::Shape`] for shapes that do not match, [`Error::InvalidArgument`] for
/// a wrong dtype, a negative or non-finite mask weight, or a mask that selects nothing,
/// [`Error::OutOfRange`] for a target id `>= V`.
pub fn sequence_logprob(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (lp, sum_rows, _) = masked_target_logprobs(logits, targets, mask)?;
    Ok(sum_rows.matmul(&lp.unsqueeze(1)?)?.squeeze(1)?) // [b, k] x [k, 1] -> [b]
}

/// Cross-entropy on continuation tokens only: a scalar.
///
/// Same arguments as [`sequence_logprob`]. Returns the mask-weighted mean over the
/// masked positions of `−log softmax(logits[r, i])[targets[r, i]]`, i.e.
/// `−sum(mask * logp) / sum(mask)`: every continuation token weighs the same, whichever
/// row it is in. Errors as [`sequence_logprob`].
pub fn continuation_ce(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (lp, sum_rows, total) = masked_target_logprobs(logits, targets, mask)?;
    let per_row = sum_rows.matmul(&lp.unsqueeze(1)?)?; // [b, 1]
    Ok((per_row.sum_all()? * (-1.0 / total))?)
}

/// The logit difference `logits[r, good[r]] − logits[r, bad[r]]` of each row: `[b]`.
///
/// `logits` `[b, V]` (float) at the position that predicts the answer, `good` and `bad`
/// `[b]` U32 token ids. Errors: [`Error::Shape`] for shapes that do not match,
/// [`Error::InvalidArgument`] for a wrong dtype or a row whose good and bad ids are equal
/// (its difference is 0 whatever the parameters), [`Error::OutOfRange`] for an id `>= V`.
pub fn logit_diff(logits: &Tensor, good: &Tensor, bad: &Tensor) -> Result<Tensor> {
    float_dtype(logits, "logits")?;
    let (b, v) = match *logits.dims() {
        [b, v] if b > 0 && v > 0 => (b, v),
        _ => {
            return Err(Error::shape(format!(
                "logits has shape {:?}; expected [batch, vocab] with both sizes at least 1 \
                 (the logits at the answer position)",
                logits.dims()
            )))
        }
    };
    let g = indices(good, &[b], "good", v)?;
    let w = indices(bad, &[b], "bad", v)?;
    if let Some(r) = (0..b).find(|&r| g[r] == w[r]) {
        return Err(Error::invalid(format!(
            "good and bad are the same token id {} in row {r}; expected two different answer \
             tokens",
            g[r]
        )));
    }
    let pick = |ids: &Tensor| -> Result<Tensor> {
        Ok(logits.gather(&ids.reshape((b, 1))?, 1)?.squeeze(1)?) // [b]
    };
    Ok((pick(good)? - pick(bad)?)?)
}

/// The loss that trains a logit difference `diff` `[b]` (from [`logit_diff`]) to be
/// large and positive: `mean_r softplus(−diff[r])` = `mean_r −log σ(diff[r])`, a scalar.
///
/// This is the logistic loss on the difference: it falls smoothly towards 0 once the
/// good token clearly beats the bad one, so a row that is already flipped stops pulling
/// on the parameters, where `mean(−diff)` would push every row without bound. Stoehr et
/// al. 2024, "Activation Scaling for Steering and Interpreting Language Models" (arXiv
/// 2410.04962), measure effectiveness by the logit difference between the two answer
/// tokens and train the intervention to flip it; this is a bounded-below form of that
/// effectiveness term (their faithfulness and minimality terms are [`kl_to_reference`]
/// and [`l1`]). Computed stably as `relu(−d) + log(1 + exp(−|d|))`.
///
/// Errors: [`Error::Shape`] when `diff` is not 1-D and non-empty,
/// [`Error::InvalidArgument`] when it is not F32/F64.
pub fn logit_diff_loss(diff: &Tensor) -> Result<Tensor> {
    float_dtype(diff, "diff")?;
    if !matches!(diff.dims(), [b] if *b > 0) {
        return Err(Error::shape(format!(
            "diff has shape {:?}; expected [batch] with batch at least 1",
            diff.dims()
        )));
    }
    let x = diff.neg()?;
    let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok(softplus.mean_all()?)
}

/// Mean KL divergence from the reference distribution to the steered one over `n`
/// chosen positions: `(1/n) sum_j KL(p_ref[j] || p_steered[j])`, a scalar.
///
/// `logits` `[n, V]` are the steered model's logits at the chosen positions;
/// `ref_logprobs` `[n, V]` (same dtype) are the unsteered model's next-token
/// log-probabilities there (log-softmax of its logits; `-inf` allowed for tokens of
/// probability 0). The direction is KL(reference || steered) = `sum_v p_ref (log p_ref −
/// log p_steered)`: it penalises the steered model for dropping probability where the
/// unsteered model had it (mass-covering), the usual faithfulness term. The reference is a
/// constant: it carries no gradient.
///
/// Errors: [`Error::Shape`] when the shapes differ or are not `[n, V]` with `n, V >= 1`,
/// [`Error::InvalidArgument`] for a wrong dtype, a NaN or `+inf` in `ref_logprobs`, or a
/// row of `ref_logprobs` whose probabilities do not sum to 1 (within 1e-3 in log space:
/// logits passed instead of log-probabilities).
pub fn kl_to_reference(logits: &Tensor, ref_logprobs: &Tensor) -> Result<Tensor> {
    let dtype = float_dtype(logits, "logits")?;
    same_dtype(ref_logprobs, dtype, "ref_logprobs")?;
    let n = match *logits.dims() {
        [n, v] if n > 0 && v > 0 => n,
        _ => {
            return Err(Error::shape(format!(
                "logits has shape {:?}; expected [n, vocab] with both sizes at least 1",
                logits.dims()
            )))
        }
    };
    if ref_logprobs.dims() != logits.dims() {
        return Err(Error::shape(format!(
            "ref_logprobs has shape {:?}; expected {:?} (the shape of the logits)",
            ref_logprobs.dims(),
            logits.dims()
        )));
    }
    let r = ref_logprobs.detach();
    let (nan, pos_inf, mass) = if fused::applies(&r) {
        fused::ref_summary(&r)?
    } else {
        composed_ref_summary(&r)?
    };
    if nan > 0 || pos_inf > 0 {
        return Err(Error::invalid(format!(
            "ref_logprobs holds {nan} NaN and {pos_inf} +inf values; expected \
             log-probabilities (finite, or -inf for probability 0)"
        )));
    }
    // Each row must be a distribution: logsumexp(row) = 0.
    if let Some((j, m)) = mass
        .iter()
        .enumerate()
        .find(|(_, m)| m.ln().abs().is_nan() || m.ln().abs() > 1e-3)
    {
        return Err(Error::invalid(format!(
            "row {j} of ref_logprobs sums to probability {m}; expected log-probabilities \
             whose probabilities sum to 1 (take a log-softmax of the reference logits)"
        )));
    }
    let per_row = if fused::applies(logits) {
        fused::row_kl(logits, &r)?
    } else {
        composed_row_kl(logits, &r)?
    }; // [n]
    Ok((per_row.sum_all()? * (1.0 / n as f64))?)
}

/// L1 norm of `t` (any shape, float): `sum |t|`, a scalar (a sum, not a mean: the
/// penalty grows with the number of elements; multiply it by the coefficient you want).
/// At 0 the gradient candle uses is +1 (a subgradient).
///
/// Errors: [`Error::InvalidArgument`] when `t` is not F32/F64.
pub fn l1(t: &Tensor) -> Result<Tensor> {
    float_dtype(t, "the tensor")?;
    Ok(t.abs()?.sum_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    const CPU: Device = Device::Cpu;

    /// Deterministic pseudo-random values in [-2, 2).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
            })
            .collect()
    }

    /// Check the gradient of `f` at `x0` (shape `dims`, F64) against central differences:
    /// `|g − (f(x+h) − f(x−h)) / 2h| <= tol * max(1, |g|)` for every element.
    fn check_grad(dims: &[usize], x0: Vec<f64>, f: impl Fn(&Tensor) -> Result<Tensor>) {
        let h = 1e-5;
        let tol = 1e-6;
        let x = Var::from_tensor(&Tensor::from_vec(x0.clone(), dims, &CPU).unwrap()).unwrap();
        let loss = f(x.as_tensor()).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let eval = |v: Vec<f64>| -> f64 {
            f(&Tensor::from_vec(v, dims, &CPU).unwrap())
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        for i in 0..x0.len() {
            let (mut up, mut down) = (x0.clone(), x0.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (eval(up) - eval(down)) / (2.0 * h);
            assert!(
                (g[i] - fd).abs() <= tol * g[i].abs().max(1.0),
                "element {i}: autograd {} vs central difference {fd}",
                g[i]
            );
        }
    }

    fn u32s(v: &[u32], dims: &[usize]) -> Tensor {
        Tensor::from_slice(v, dims, &CPU).unwrap()
    }

    /// The value tests' batch. Reference (numpy):
    /// ```text
    /// def lsm(x): m = x.max(-1, keepdims=True); return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
    /// logits = np.array([[[0,0,0,0], np.log([1,2,3,4])], [[1000,0,-1000,0], [2,1,0,-1]]])
    /// targets = np.array([[1,3],[1,0]]); mask = np.array([[0,1],[1,1]], float)
    /// lp = np.take_along_axis(lsm(logits), targets[..., None], -1)[..., 0]
    /// (lp * mask).sum(1)         # [-0.9162907318741551, -1000.4401896985612]
    /// -(lp * mask).sum() / mask.sum()   # 333.7854934768118
    /// ```
    fn ce_batch(dtype: DType) -> (Tensor, Tensor, Tensor) {
        let (l2, l3, l4) = (2f64.ln(), 3f64.ln(), 4f64.ln());
        let logits = Tensor::from_vec(
            vec![
                0.0, 0.0, 0.0, 0.0, 0.0, l2, l3, l4, 1000.0, 0.0, -1000.0, 0.0, 2.0, 1.0, 0.0, -1.0,
            ],
            (2, 2, 4),
            &CPU,
        )
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
        let mask = Tensor::from_vec(vec![0.0, 1.0, 1.0, 1.0], (2, 2), &CPU)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        (logits, u32s(&[1, 3, 1, 0], &[2, 2]), mask)
    }

    #[test]
    fn continuation_ce_and_sequence_logprob_values() {
        let (logits, targets, mask) = ce_batch(DType::F64);
        let seq = sequence_logprob(&logits, &targets, &mask)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!((seq[0] - -0.9162907318741551).abs() < 1e-12, "{seq:?}");
        assert!((seq[1] - -1000.4401896985612).abs() < 1e-9, "{seq:?}");
        let ce = continuation_ce(&logits, &targets, &mask)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((ce - 333.7854934768118).abs() < 1e-9, "{ce}");
        // F32 with logits of ±1000 stays finite (max subtraction).
        let (logits, targets, mask) = ce_batch(DType::F32);
        let ce = continuation_ce(&logits, &targets, &mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((ce - 333.785_5).abs() < 1e-3, "{ce}");
    }

    #[test]
    fn continuation_ce_gradient_matches_finite_differences() {
        let dims = [2, 3, 5];
        let targets = u32s(&[0, 4, 2, 1, 1, 3], &[2, 3]);
        let mask = Tensor::from_vec(vec![0.0, 1.0, 1.0, 1.0, 0.0, 1.0], (2, 3), &CPU).unwrap();
        check_grad(&dims, values(30, 1), |x| {
            continuation_ce(x, &targets, &mask)
        });
        // Row sums: differentiate a weighted sum of both rows.
        let w = Tensor::new(&[0.7f64, -1.3], &CPU).unwrap();
        check_grad(&dims, values(30, 2), |x| {
            Ok((sequence_logprob(x, &targets, &mask)? * &w)?.sum_all()?)
        });
    }

    #[test]
    fn continuation_ce_gradient_f32() {
        // F32: central differences with h = 1e-2 agree within 2e-3.
        let targets = u32s(&[2, 0, 1], &[1, 3]);
        let mask = Tensor::new(&[[1f32, 1.0, 0.0]], &CPU).unwrap();
        let x0: Vec<f32> = values(12, 3).iter().map(|&v| v as f32).collect();
        let x = Var::from_tensor(&Tensor::from_vec(x0.clone(), (1, 3, 4), &CPU).unwrap()).unwrap();
        let g = continuation_ce(x.as_tensor(), &targets, &mask)
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let g = g.to_vec1::<f32>().unwrap();
        let eval = |v: Vec<f32>| {
            let t = Tensor::from_vec(v, (1, 3, 4), &CPU).unwrap();
            continuation_ce(&t, &targets, &mask)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        for i in 0..12 {
            let (mut up, mut down) = (x0.clone(), x0.clone());
            up[i] += 1e-2;
            down[i] -= 1e-2;
            let fd = (eval(up) - eval(down)) / 2e-2;
            assert!((g[i] - fd).abs() < 2e-3, "element {i}: {} vs {fd}", g[i]);
        }
    }

    #[test]
    fn ce_arguments_are_checked() {
        let (logits, targets, mask) = ce_batch(DType::F64);
        let err = |r: Result<Tensor>| r.unwrap_err().to_string();
        let e = err(continuation_ce(
            &logits,
            &u32s(&[1, 3, 1, 4], &[2, 2]),
            &mask,
        ));
        assert!(
            e.contains("targets holds token id 4 at flat index 3; expected ids below the vocabulary size 4"),
            "{e}"
        );
        let e = err(continuation_ce(&logits, &u32s(&[1, 3], &[1, 2]), &mask));
        assert!(
            e.contains("targets has shape [1, 2]; expected [2, 2]"),
            "{e}"
        );
        let zero = mask.zeros_like().unwrap();
        let e = err(continuation_ce(&logits, &targets, &zero));
        assert!(e.contains("mask selects no position"), "{e}");
        let neg = Tensor::new(&[[0f64, 1.0], [-1.0, 1.0]], &CPU).unwrap();
        let e = err(continuation_ce(&logits, &targets, &neg));
        assert!(e.contains("mask holds -1 at row 1, position 0"), "{e}");
        let e = err(continuation_ce(
            &logits,
            &targets,
            &mask.to_dtype(DType::F32).unwrap(),
        ));
        assert!(e.contains("mask has dtype F32; expected F64"), "{e}");
        let e = err(continuation_ce(
            &logits.flatten_all().unwrap(),
            &targets,
            &mask,
        ));
        assert!(
            e.contains("logits has shape [16]; expected [batch, positions, vocab]"),
            "{e}"
        );
        let ints = targets.to_dtype(DType::I64).unwrap();
        let e = err(continuation_ce(&logits, &ints, &mask));
        assert!(e.contains("targets has dtype I64; expected U32"), "{e}");
    }

    /// Reference (numpy): `l = [[1,2,3],[0.5,-1,4]]`, good `[2,1]`, bad `[0,2]`:
    /// diff `[2, -5]`, `np.mean(np.logaddexp(0, -diff))` = 2.5668216797660452.
    #[test]
    fn logit_diff_values_and_gradient() {
        let l = Tensor::new(&[[1f64, 2.0, 3.0], [0.5, -1.0, 4.0]], &CPU).unwrap();
        let (good, bad) = (u32s(&[2, 1], &[2]), u32s(&[0, 2], &[2]));
        let d = logit_diff(&l, &good, &bad).unwrap();
        assert_eq!(d.to_vec1::<f64>().unwrap(), [2.0, -5.0]);
        let loss = logit_diff_loss(&d).unwrap().to_scalar::<f64>().unwrap();
        assert!((loss - 2.5668216797660452).abs() < 1e-12, "{loss}");
        // Stable for large differences: softplus(-1000) = 0, softplus(1000) = 1000.
        let big = Tensor::new(&[1000f32, -1000.0], &CPU).unwrap();
        let v = logit_diff_loss(&big).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(v, 500.0);
        check_grad(&[3, 4], values(12, 4), |x| {
            logit_diff_loss(&logit_diff(
                x,
                &u32s(&[0, 3, 2], &[3]),
                &u32s(&[1, 0, 3], &[3]),
            )?)
        });
    }

    #[test]
    fn logit_diff_arguments_are_checked() {
        let l = Tensor::new(&[[1f64, 2.0, 3.0], [0.5, -1.0, 4.0]], &CPU).unwrap();
        let e = logit_diff(&l, &u32s(&[2, 1], &[2]), &u32s(&[0, 1], &[2]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("good and bad are the same token id 1 in row 1"),
            "{e}"
        );
        let e = logit_diff(&l, &u32s(&[3, 1], &[2]), &u32s(&[0, 2], &[2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("good holds token id 3 at flat index 0"), "{e}");
        let e = logit_diff(&l, &u32s(&[2], &[1]), &u32s(&[0, 2], &[2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("good has shape [1]; expected [2]"), "{e}");
        let e = logit_diff_loss(&l).unwrap_err().to_string();
        assert!(e.contains("diff has shape [2, 3]; expected [batch]"), "{e}");
    }

    /// Reference (numpy, `lsm` as above):
    /// ```text
    /// ref = lsm(np.array([[0.,1,2],[0,0,-np.inf]])); x = np.array([[2.,1,0],[1,0,0]])
    /// p = np.exp(ref); t = np.where(p > 0, p * (ref - lsm(x)), 0.0)
    /// t.sum(1).mean()   # 0.7543591492904942
    /// ```
    #[test]
    fn kl_to_reference_values_and_gradient() {
        let raw = Tensor::new(&[[0f64, 1.0, 2.0], [0.0, 0.0, f64::NEG_INFINITY]], &CPU).unwrap();
        let r = log_softmax_rows(&raw).unwrap();
        let x = Tensor::new(&[[2f64, 1.0, 0.0], [1.0, 0.0, 0.0]], &CPU).unwrap();
        let kl = kl_to_reference(&x, &r).unwrap().to_scalar::<f64>().unwrap();
        assert!((kl - 0.7543591492904942).abs() < 1e-12, "{kl}");
        // KL of a distribution to itself is 0.
        let same = kl_to_reference(&raw.clamp(-50.0, 50.0).unwrap(), &r)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(same.abs() < 1e-12, "{same}");
        check_grad(&[2, 3], values(6, 5), |x| kl_to_reference(x, &r));
    }

    #[test]
    fn kl_arguments_are_checked() {
        let x = Tensor::new(&[[2f64, 1.0, 0.0]], &CPU).unwrap();
        let e = kl_to_reference(&x, &x).unwrap_err().to_string();
        assert!(
            e.contains("row 0 of ref_logprobs sums to probability 11.10733"),
            "{e}"
        );
        let nan = Tensor::new(&[[f64::NAN, 0.0, f64::INFINITY]], &CPU).unwrap();
        let e = kl_to_reference(&x, &nan).unwrap_err().to_string();
        assert!(
            e.contains("ref_logprobs holds 1 NaN and 1 +inf values"),
            "{e}"
        );
        let short = Tensor::new(&[[0f64, 0.0]], &CPU).unwrap();
        let e = kl_to_reference(&x, &short).unwrap_err().to_string();
        assert!(
            e.contains("ref_logprobs has shape [1, 2]; expected [1, 3]"),
            "{e}"
        );
    }

    #[test]
    fn l1_value_and_gradient() {
        let t = Tensor::new(&[[1.5f64, -2.0], [0.25, -0.0]], &CPU).unwrap();
        assert_eq!(l1(&t).unwrap().to_scalar::<f64>().unwrap(), 3.75);
        // Away from 0 (|x| is not differentiable there).
        let x0: Vec<f64> = values(6, 6).iter().map(|v| v + v.signum() * 0.1).collect();
        check_grad(&[2, 3], x0, l1);
        let e = l1(&u32s(&[1], &[1])).unwrap_err().to_string();
        assert!(
            e.contains("the tensor has dtype U32; expected F32 (or F64)"),
            "{e}"
        );
    }

    /// The fused CPU kernels and the composed candle ops (the other devices' path) give
    /// the same values and gradients.
    #[test]
    fn fused_and_composed_paths_agree() {
        for dtype in [DType::F32, DType::F64] {
            let x0 = Tensor::from_vec(values(6 * 7, 8), (6, 7), &CPU)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let grad_of = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
                let x = Var::from_tensor(&x0).unwrap();
                let y = f(x.as_tensor()).unwrap();
                let w = Tensor::from_vec(values(y.elem_count(), 9), y.dims(), &CPU)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let g = (y.clone() * w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let flat = |t: &Tensor| {
                    t.to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()
                };
                (flat(&y), flat(g.get(x.as_tensor()).unwrap()))
            };
            let close = |a: (Vec<f64>, Vec<f64>), b: (Vec<f64>, Vec<f64>)| {
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                for (u, v) in a.0.iter().chain(&a.1).zip(b.0.iter().chain(&b.1)) {
                    assert!(
                        (u - v).abs() <= tol * u.abs().max(1.0),
                        "{dtype:?}: {u} vs {v}"
                    );
                }
            };
            let (rows, targets) = (vec![4u32, 0, 5], vec![6u32, 0, 3]);
            close(
                grad_of(&|x| fused::target_logprobs(x, rows.clone(), targets.clone())),
                grad_of(&|x| composed_target_logprobs(x, rows.clone(), targets.clone())),
            );
            let mut raw = values(6 * 7, 10);
            raw[3] = f64::NEG_INFINITY;
            let raw = Tensor::from_vec(raw, (6, 7), &CPU).unwrap();
            let r = log_softmax_rows(&raw).unwrap().to_dtype(dtype).unwrap();
            close(
                grad_of(&|x| fused::row_kl(x, &r)),
                grad_of(&|x| composed_row_kl(x, &r)),
            );
            let odd = Tensor::new(
                &[
                    [f64::NAN, 0.0, f64::INFINITY],
                    [f64::NEG_INFINITY, 0.0, 0.5],
                ],
                &CPU,
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
            let (a, b) = (
                fused::ref_summary(&odd).unwrap(),
                composed_ref_summary(&odd).unwrap(),
            );
            assert_eq!((a.0, a.1, b.0, b.1), (1, 1, 1, 1));
            assert!(a.2[0].is_nan() && b.2[0].is_nan());
            assert!((a.2[1] - b.2[1]).abs() < 1e-6 && (a.2[1] - (1.0 + 0.5f64.exp())).abs() < 1e-6);
        }
    }
}
