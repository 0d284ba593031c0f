//! The frozen prefix of a training run: the blocks below the first trained site do not
//! depend on the trained parameters, so their output is computed once per example,
//! without gradients, and each step starts from it.

use candle_core::{DType, Device, Tensor};

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::hooks::Sites;
use crate::intervene::{RowSteering, SteeringPlan};
use crate::learn::{fused, losses};
use crate::model::{BatchLayout, Hooks, Mode, Model, NoHooks, StepCtx};

/// The output of blocks `0..start` (the embeddings when `start` is 0) for each token id
/// row, without hooks or gradients, run in padded chunks of `chunk` rows (a row's values
/// do not depend on its batch): one h `[len, d]` per row. Cancellable between chunks.
pub(crate) fn frozen_prefix(
    model: &Model,
    rows: &[Vec<u32>],
    start: usize,
    chunk: usize,
    cancel: &Cancel,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(rows.len());
    for part in rows.chunks(chunk.max(1)) {
        cancel.check()?;
        let (ids, layout) = model.pad_batch(part)?;
        let ctx = StepCtx::prefill(&layout);
        let mut cache = model.new_cache();
        let h = model.embed(&ids)?;
        let h = model.forward_blocks(h, 0..start, &ctx, &mut cache, &mut NoHooks)?; // [b, w, d]
        for (r, ids) in part.iter().enumerate() {
            let hr = h.get(r)?.narrow(0, layout.pad(r), ids.len())?; // [len, d]
            out.push(hr.contiguous()?.detach());
        }
    }
    Ok(out)
}

/// Blocks `start..` of the model in `mode` (`Mode::Gradient` to train) on frozen-prefix rows `hs` (each
/// `[len_r, d]`, the output of blocks `0..start`), left-padded into one batch, with
/// `hooks` at the sites: the output `[b, width, d]` and the batch layout.
pub(crate) fn forward_from_prefix(
    model: &Model,
    hs: &[&Tensor],
    start: usize,
    hooks: &mut dyn Hooks,
    mode: Mode,
) -> Result<(Tensor, BatchLayout)> {
    let layout = BatchLayout::new(
        hs.iter()
            .map(|h| h.dim(0))
            .collect::<candle_core::Result<_>>()?,
    );
    let h = stack_left_padded(hs, &layout, model.d_model(), &model.device)?; // [b, w, d]
    let ctx = StepCtx {
        layout: &layout,
        start: 0,
        t: layout.width,
        mode,
    };
    let mut cache = model.new_cache();
    let out = model.forward_blocks(h, start..model.n_layers(), &ctx, &mut cache, hooks)?;
    Ok((out, layout))
}

/// [`forward_from_prefix`] in `Mode::Gradient` with per-row steering `steer` on training
/// sequences: row r is a prompt of `splits[r]` tokens followed by its continuation
/// (`hs[r]` holds the whole sequence), and the steering's positions resolve as in
/// generation, the continuation playing the generated tokens.
pub(crate) fn steered_from_prefix(
    model: &Model,
    hs: &[&Tensor],
    splits: Vec<usize>,
    steer: &[RowSteering],
    start: usize,
    cancel: &Cancel,
) -> Result<(Tensor, BatchLayout)> {
    let extra = hs
        .iter()
        .zip(&splits)
        .map(|(h, &s)| Ok(h.dim(0)?.saturating_sub(s)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let plan = SteeringPlan::new(
        steer,
        &splits,
        extra,
        model.n_layers(),
        model.d_model(),
        &model.device,
    )?
    .with_prompt_lens(splits);
    let mut hooks = Sites {
        steering: Some(&plan),
        capture: None,
        monitor: None,
        cancel: Some(cancel),
        controller: None,
    };
    forward_from_prefix(model, hs, start, &mut hooks, Mode::Gradient)
}

/// Rows `hs` (each `[len_r, d]`) left-padded with zeros into one batch `[b, width, d]`
/// laid out as `layout` (whose lens are the rows' lengths).
pub(crate) fn stack_left_padded(
    hs: &[&Tensor],
    layout: &BatchLayout,
    d: usize,
    dev: &Device,
) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(hs.len());
    for (r, h) in hs.iter().enumerate() {
        let pad = layout.pad(r);
        rows.push(if pad == 0 {
            (*h).clone()
        } else {
            Tensor::cat(&[&Tensor::zeros((pad, d), DType::F32, dev)?, *h], 0)?
        });
    }
    Ok(Tensor::stack(&rows, 0)?) // [b, w, d]
}

/// The log-probabilities of the completions of training sequences under the forward
/// output `out` [b, width, d] (laid out as `layout`): row r is `seqs[r] = (ids, split)`,
/// a prompt of `split` tokens and its completion. Returns the token-weighted
/// cross-entropy (scalar: every completion token weighs the same) and each row's mean
/// log-probability per completion token [b]. Only the completion columns go through the
/// final norm and the LM head.
pub(crate) fn completion_logprobs(
    model: &Model,
    out: &Tensor,
    layout: &BatchLayout,
    seqs: &[(&[u32], usize)],
) -> Result<(Tensor, Tensor)> {
    let m = model;
    let d = m.d_model();
    let dev = &m.device;
    let w = layout.width;
    // Columns that predict a completion token, their targets and their row.
    let (mut pick, mut targets, mut owner) = (Vec::new(), Vec::new(), Vec::new());
    for (r, &(ids, split)) in seqs.iter().enumerate() {
        if split == 0 || split >= ids.len() {
            return Err(Error::invalid(format!(
                "sequence {r}: the prompt has {split} tokens and the completion {}; \
                 expected at least one token in each",
                ids.len().saturating_sub(split)
            )));
        }
        let pad = layout.pad(r);
        for j in split - 1..ids.len() - 1 {
            pick.push((r * w + pad + j) as u32);
            targets.push(ids[j + 1]);
            owner.push(r);
        }
    }
    let k = pick.len();
    let pick = Tensor::from_vec(pick, k, dev)?;
    let sel = out.reshape((seqs.len() * w, d))?.index_select(&pick, 0)?; // [k, d]
                                                                         // The LM head straight on [k, d] -> [k, V]: no reshape between it and the loss,
                                                                         // so the backward allocates the [k, V] gradient once (each graph node in between
                                                                         // would add a zero-filled [k, V] buffer and a pass over it).
    let logits = m.logits_all(&sel, Mode::Gradient)?; // [k, V]
    let v = logits.dim(1)?;
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
        return Err(Error::out_of_range(format!(
            "token id {bad} is out of range for a vocabulary of {v}"
        )));
    }
    let lp = if fused::applies(&logits) {
        fused::target_logprobs(&logits, (0..k as u32).collect(), targets)? // [k]
    } else {
        let logits = logits.reshape((k, 1, v))?;
        let targets = Tensor::from_vec(targets, (k, 1), dev)?;
        let ones = Tensor::ones((k, 1), DType::F32, dev)?;
        losses::sequence_logprob(&logits, &targets, &ones)? // [k]
    };
    let mut s = vec![0f32; seqs.len() * k];
    let mut count = vec![0usize; seqs.len()];
    owner.iter().for_each(|&r| count[r] += 1);
    for (j, &r) in owner.iter().enumerate() {
        s[r * k + j] = 1.0 / count[r] as f32;
    }
    let s = Tensor::from_vec(s, (seqs.len(), k), dev)?;
    let per_row = s.matmul(&lp.unsqueeze(1)?)?.squeeze(1)?; // [b]
    let ce = (lp.sum_all()? * (-1.0 / k as f64))?;
    Ok((ce, per_row))
}
