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
mod tests;
