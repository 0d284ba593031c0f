//! The frozen prefix of a training run: the blocks below the first trained site do not
//! depend on the trained parameters, so their output is computed once per example,
//! without gradients, and each step starts from it.

use candle_core::{DType, Device, Tensor};

use crate::cancel::Cancel;
use crate::error::Result;
use crate::hooks::Sites;
use crate::intervene::{RowSteering, SteeringPlan};
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
fn stack_left_padded(
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
