//! HyperSteer (Sun et al. 2025, "HyperSteer: Activation Steering at Scale with
//! Hypernetworks"): a hypernetwork that writes a steering vector Δ ∈ R^d from a
//! plain-language steering prompt s, added at `resid_post[layer]` of the frozen base
//! model.
//!
//! Architecture ([`HyperNet`]):
//! - the stream starts from the base model's (shared, frozen) embeddings of s;
//! - N blocks, each a **trainable copy of base block i** (i < N) built by the same block
//!   code ([`Block::trainable`]): self-attention over s, then, in the `cross_attention`
//!   variant, a new [`CrossAttention`] layer whose queries come from the stream and whose
//!   keys/values are the base model's `resid_post[layer]` states on the base prompt x
//!   (so Δ depends on s and x), then the MLP;
//! - a trainable copy of the base model's final norm, and a head Linear(d → d) with bias
//!   on the last token's final state: Δ = W·norm(h_last) + b.
//!
//! Initialisation: the copied blocks equal the base blocks; the cross-attention output
//! projections and the head start at zero, so a new hypernetwork writes Δ = 0 (the
//! unsteered model) and its blocks compute the base model's first N blocks.
//!
//! Training ([`HyperTraining`]): the loss is the cross-entropy of the steered, frozen
//! base model on target continuations (output tokens only). The base model's
//! `resid_post[layer]` on prompt + target is computed once per example (the frozen
//! prefix) and serves both as the entry of block `layer + 1` and (its prompt part) as the
//! cross-attention states; the backward runs from the loss down to the steered layer and
//! into the hypernetwork. Δ is added at every position except a BOS token at 0.
//!
//! Inference ([`HyperNet::vectors`]) runs each row alone (no padding), so a row's vector
//! does not depend on the batch it came in.

use std::sync::Arc;

use candle_core::{DType, Tensor, Var};

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::intervene::{Intervention, Positions};
use crate::learn::batches::Batches;
use crate::learn::prefix::{
    completion_logprobs, frozen_prefix, stack_left_padded, steered_from_prefix,
};
use crate::learn::trainer::{StepRecord, TrainConfig, Trainer};
use crate::model::attention::{AttnInput, LayerCache};
use crate::model::block::Block;
use crate::model::cross::{padding_mask, CrossAttention};
use crate::model::{BatchLayout, Mode, Model, RmsNorm, StepCtx};
use crate::pool::in_pool;

/// Which HyperSteer architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The hypernetwork reads only the steering prompt.
    NoContext,
    /// Each block also cross-attends to the base prompt's states at the steered layer.
    CrossAttention,
}

impl Variant {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "no_context" => Ok(Variant::NoContext),
            "cross_attention" => Ok(Variant::CrossAttention),
            other => Err(Error::invalid(format!(
                "unknown HyperSteer variant '{other}'; expected 'cross_attention' or \
                 'no_context'"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::NoContext => "no_context",
            Variant::CrossAttention => "cross_attention",
        }
    }
}

/// What the head reads of the hypernetwork's final stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The last token's state (the paper's head).
    Last,
    /// The mean over the steering prompt's tokens (padding excluded).
    Mean,
}

impl Pool {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Pool::Last),
            "mean" => Ok(Pool::Mean),
            other => Err(Error::invalid(format!(
                "unknown pool '{other}'; expected 'last' or 'mean'"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pool::Last => "last",
            Pool::Mean => "mean",
        }
    }
}

/// The hypernetwork (see the module docs). Its parameters are `Var`s; the base model is
/// shared and never changed.
pub struct HyperNet {
    model: Arc<Model>,
    variant: Variant,
    pool: Pool,
    layer: usize,
    blocks: Vec<Block>,
    cross: Vec<CrossAttention>,
    norm: RmsNorm,
    head_w: Tensor,
    head_b: Tensor,
    vars: Vec<(String, Var)>,
}

impl HyperNet {
    /// A new hypernetwork for `model` steering `resid_post[layer]`, with `n_blocks`
    /// copied blocks (initialised as in the module docs).
    ///
    /// Errors: `OutOfRange` for a layer the model lacks or `n_blocks` not in
    /// 1..=n_layers.
    pub fn new(model: Arc<Model>, variant: Variant, layer: usize, n_blocks: usize) -> Result<Self> {
        let n = model.n_layers();
        if layer >= n {
            return Err(Error::out_of_range(format!(
                "layer {layer} is out of range: this model has {n} layers (0..{})",
                n - 1
            )));
        }
        if n_blocks == 0 || n_blocks > n {
            return Err(Error::out_of_range(format!(
                "n_blocks is {n_blocks}; expected 1..={n} (the hypernetwork copies the base \
                 model's first n_blocks blocks)"
            )));
        }
        let dev = model.device.clone();
        let d = model.d_model();
        let mut vars = Vec::new();
        let mut blocks = Vec::with_capacity(n_blocks);
        let mut cross = Vec::new();
        for i in 0..n_blocks {
            let base = model.block(i)?;
            blocks.push(base.trainable(&format!("blocks.{i}"), &dev, &mut vars)?);
            if variant == Variant::CrossAttention {
                cross.push(CrossAttention::from_block(
                    base,
                    &format!("blocks.{i}.cross"),
                    &dev,
                    &mut vars,
                )?);
            }
        }
        let norm = model.final_norm().trainable("norm".into(), &mut vars)?;
        let w = Var::zeros((d, d), DType::F32, &dev)?;
        let b = Var::zeros(d, DType::F32, &dev)?;
        let (head_w, head_b) = (w.as_tensor().clone(), b.as_tensor().clone());
        vars.push(("head.weight".into(), w));
        vars.push(("head.bias".into(), b));
        Ok(HyperNet {
            model,
            variant,
            pool: Pool::Last,
            layer,
            blocks,
            cross,
            norm,
            head_w,
            head_b,
            vars,
        })
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }
    /// Read the head's input as `pool` says (default [`Pool::Last`]).
    pub fn with_pool(mut self, pool: Pool) -> Self {
        self.pool = pool;
        self
    }
    pub fn pool(&self) -> Pool {
        self.pool
    }
    pub fn layer(&self) -> usize {
        self.layer
    }
    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The parameters (name, `Var`), in a fixed order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Number of trained values.
    pub fn n_params(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Copies of the parameter values, by name.
    pub fn params(&self) -> Result<Vec<(String, Tensor)>> {
        self.vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect()
    }

    /// Set every parameter from `named` (f32 tensors): exactly the names and shapes of
    /// [`HyperNet::params`], finite values.
    ///
    /// Errors: `InvalidArgument` for a missing, extra or non-finite tensor; `Shape` for a
    /// tensor of another shape. Nothing is changed on error.
    pub fn set_params(&self, named: &[(String, Tensor)]) -> Result<()> {
        let mut by_name = std::collections::HashMap::new();
        for (n, t) in named {
            if by_name.insert(n.as_str(), t).is_some() {
                return Err(Error::invalid(format!(
                    "hypernetwork parameters: '{n}' appears twice"
                )));
            }
        }
        let mut plan = Vec::with_capacity(self.vars.len());
        for (n, v) in &self.vars {
            let Some(t) = by_name.remove(n.as_str()) else {
                return Err(Error::invalid(format!(
                    "hypernetwork parameters: '{n}' is missing (a {}-block {} hypernetwork \
                     for layer {} of this model has {} tensors)",
                    self.blocks.len(),
                    self.variant.name(),
                    self.layer,
                    self.vars.len()
                )));
            };
            if t.dims() != v.dims() {
                return Err(Error::shape(format!(
                    "hypernetwork parameter '{n}' has shape {:?}; expected {:?}",
                    t.dims(),
                    v.dims()
                )));
            }
            let t = t.to_dtype(DType::F32)?.to_device(&self.model.device)?;
            let bad = t
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .any(|x| !x.is_finite());
            if bad {
                return Err(Error::invalid(format!(
                    "hypernetwork parameter '{n}' holds NaN or inf; expected finite values"
                )));
            }
            plan.push((v, t));
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(Error::invalid(format!(
                "hypernetwork parameters: unexpected tensor '{extra}' (not part of a {}-block \
                 {} hypernetwork)",
                self.blocks.len(),
                self.variant.name()
            )));
        }
        for (v, t) in plan {
            v.set(&t)?;
        }
        Ok(())
    }

    /// Δ [b, d] for a batch of steering prompts `steer` (token ids, left-padded into one
    /// batch) and, in the `cross_attention` variant, each row's base-prompt states `mem`
    /// (each `[len_r, d]`, the base model's `resid_post[layer]`). In `Mode::Gradient` Δ
    /// is differentiable in every parameter (the training form).
    ///
    /// Errors: `InvalidArgument` when `mem` is missing (cross_attention), given
    /// (no_context) or has another number of rows; as `Model::pad_batch` for the ids.
    pub fn deltas(
        &self,
        steer: &[Vec<u32>],
        mem: Option<&[&Tensor]>,
        mode: Mode,
    ) -> Result<Tensor> {
        let x = self.stream(steer, mem, mode)?; // [b, t, d]
        let (b, t, _) = x.dims3()?;
        let pooled = match self.pool {
            Pool::Last => x.narrow(1, t - 1, 1)?.squeeze(1)?, // [b, d]
            Pool::Mean => {
                // Weights 1/len on each row's tokens (left padding gets 0): [b, 1, t].
                let mut w = vec![0f32; b * t];
                for (r, s) in steer.iter().enumerate() {
                    let len = s.len().min(t);
                    w[r * t + (t - len)..(r + 1) * t].fill(1.0 / len.max(1) as f32);
                }
                let w = Tensor::from_vec(w, (b, 1, t), x.device())?;
                w.matmul(&x.contiguous()?)?.squeeze(1)? // [b, d]
            }
        };
        let h = self.norm.forward(&pooled, mode)?;
        Ok(h.matmul(&self.head_w.t()?)?.broadcast_add(&self.head_b)?) // [b, d]
    }

    /// The hypernetwork's stream after its last block, before the final norm: [b, t, d]
    /// for the left-padded steering prompts (arguments and errors as
    /// [`HyperNet::deltas`]). At initialisation it equals the base model's
    /// `resid_post[n_blocks - 1]` on the steering prompts.
    pub fn stream(
        &self,
        steer: &[Vec<u32>],
        mem: Option<&[&Tensor]>,
        mode: Mode,
    ) -> Result<Tensor> {
        let m = &*self.model;
        let dev = &m.device;
        self.check_context(steer.len(), mem.map(<[&Tensor]>::len))?;
        let mem = match mem {
            Some(rows) => {
                let lens = rows
                    .iter()
                    .map(|h| Ok(h.dim(0)?))
                    .collect::<Result<Vec<usize>>>()?;
                let layout = BatchLayout::new(lens);
                let states = stack_left_padded(rows, &layout, m.d_model(), dev)?.detach(); // [b, m, d]
                Some((states, padding_mask(&layout.lens, layout.width, dev)?))
            }
            None => None,
        };
        let (ids, layout) = m.pad_batch(steer)?;
        let ctx = StepCtx {
            layout: &layout,
            start: 0,
            t: layout.width,
            mode,
        };
        let mut tables = m.step_tables(&ctx)?;
        let mut x = m.embed(&ids)?.detach(); // [b, t, d], the frozen shared table
        for (i, block) in self.blocks.iter().enumerate() {
            let (rot, mask) = tables.for_block(m, i, &ctx)?;
            let mut cache = LayerCache::default();
            let mut a = AttnInput {
                rot,
                mask,
                cache: &mut cache,
                mode,
            };
            let attn = block.attn_out(&x, &mut a)?;
            x = (x + attn)?;
            if let (Some(c), Some((states, smask))) = (self.cross.get(i), &mem) {
                let y = c.forward(&x, states, smask, rot, mode)?;
                x = (x + y)?;
            }
            let y = block.mlp_out(&x, mode)?;
            x = (x + y)?;
        }
        Ok(x)
    }

    /// Check that the base prompts fit the variant: `base` (their count, if given) is
    /// required by cross_attention, one per steering prompt (`steer` of them), and refused
    /// by no_context. Errors: `InvalidArgument` naming the mismatch.
    fn check_context(&self, steer: usize, base: Option<usize>) -> Result<()> {
        match (self.variant, base) {
            (Variant::CrossAttention, Some(n)) if n != steer => Err(Error::invalid(format!(
                "{steer} steering prompts and {n} base prompts; expected one base prompt per \
                 steering prompt"
            ))),
            (Variant::CrossAttention, None) => Err(Error::invalid(
                "the cross_attention hypernetwork needs the base prompt of each row; expected \
                 base prompts",
            )),
            (Variant::NoContext, Some(_)) => Err(Error::invalid(
                "the no_context hypernetwork reads only the steering prompt; expected no base \
                 prompts",
            )),
            _ => Ok(()),
        }
    }

    /// The steering vectors (f32, `d_model` each) for steering prompts `steer` and, in the
    /// `cross_attention` variant, base prompts `base` (token ids, element-wise pairs).
    /// Each row runs alone (its base prompt's prefix too), so its vector does not depend
    /// on the batch. Cancellable between rows.
    ///
    /// Errors: as [`HyperNet::deltas`]; `InvalidArgument` for an empty batch or a base
    /// list of another length; `Interrupted`.
    pub fn vectors(
        &self,
        steer: &[Vec<u32>],
        base: Option<&[Vec<u32>]>,
        cancel: &Cancel,
    ) -> Result<Vec<Vec<f32>>> {
        if steer.is_empty() {
            return Err(Error::invalid("no steering prompts; expected at least one"));
        }
        self.check_context(steer.len(), base.map(<[Vec<u32>]>::len))?;
        in_pool(|| {
            let mem = match base {
                Some(b) => Some(frozen_prefix(&self.model, b, self.layer + 1, 1, cancel)?),
                None => None,
            };
            let mut out = Vec::with_capacity(steer.len());
            for (r, s) in steer.iter().enumerate() {
                cancel.check()?;
                let row = mem.as_ref().map(|m| [&m[r]]);
                let d = self.deltas(
                    std::slice::from_ref(s),
                    row.as_ref().map(|r| &r[..]),
                    Mode::Inference,
                )?;
                out.push(d.squeeze(0)?.to_vec1::<f32>()?);
            }
            Ok(out)
        })
    }
}

/// One training example: the steering prompt's ids, and the base prompt followed by its
/// target continuation (`ids`, the continuation starting at `split`, 1 <= split <
/// len).
#[derive(Debug, Clone)]
pub struct HyperExample {
    pub steer: Vec<u32>,
    pub ids: Vec<u32>,
    pub split: usize,
}

/// What to train and how.
#[derive(Debug, Clone)]
pub struct HyperConfig {
    pub variant: Variant,
    pub pool: Pool,
    /// The steered layer (resid_post, non-negative).
    pub layer: usize,
    pub n_blocks: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub train: TrainConfig,
}

/// An example with the base model's `resid_post[layer]` on prompt + target `h`
/// [len, d], and whether its first token is BOS (Δ skips it).
struct Cached {
    steer: Vec<u32>,
    ids: Vec<u32>,
    split: usize,
    h: Tensor,
    skip_first: bool,
}

/// A HyperSteer training run (see the module docs).
pub struct HyperTraining {
    net: HyperNet,
    trainer: Trainer,
    batches: Batches,
    train: Vec<Cached>,
    validation: Vec<Cached>,
    /// Steps run before this run (a resumed run continues the batch order).
    offset: usize,
}

fn check_examples(ex: &[HyperExample], what: &str, model: &Model) -> Result<()> {
    let max = model.cfg.max_context;
    for (i, e) in ex.iter().enumerate() {
        if e.steer.is_empty() {
            return Err(Error::invalid(format!(
                "{what} {i}: the steering prompt has no tokens; expected at least one"
            )));
        }
        if e.split == 0 || e.split >= e.ids.len() {
            return Err(Error::invalid(format!(
                "{what} {i}: the base prompt has {} tokens and the target {}; expected at \
                 least one token in each",
                e.split,
                e.ids.len().saturating_sub(e.split)
            )));
        }
        if e.ids.len() > max || e.steer.len() > max {
            return Err(Error::ContextLength(format!(
                "{what} {i} has {} tokens (base prompt + target) and a steering prompt of \
                 {}; the model's context is {max} tokens",
                e.ids.len(),
                e.steer.len()
            )));
        }
    }
    Ok(())
}

impl HyperTraining {
    /// Check the data, build a new hypernetwork, compute every example's frozen prefix
    /// (cancellable between chunks) and set up the optimiser (AdamW from candle-nn as
    /// `cfg.train` says).
    ///
    /// Errors: `InvalidArgument` for no examples, an example without steering prompt,
    /// base prompt or target, a bad `train` config or batch size; `OutOfRange` for the
    /// layer or `n_blocks`; `ContextLength`; `Interrupted`.
    pub fn new(
        model: Arc<Model>,
        examples: Vec<HyperExample>,
        validation: Vec<HyperExample>,
        cfg: HyperConfig,
        cancel: &Cancel,
    ) -> Result<Self> {
        if examples.is_empty() {
            return Err(Error::invalid(
                "no training examples; expected at least one (steering prompt, base prompt, \
                 target)",
            ));
        }
        check_examples(&examples, "example", &model)?;
        check_examples(&validation, "validation example", &model)?;
        let net =
            HyperNet::new(model.clone(), cfg.variant, cfg.layer, cfg.n_blocks)?.with_pool(cfg.pool);
        let trainer = Trainer::new(net.vars().to_vec(), cfg.train.clone())?;
        let batches = Batches::new(examples.len(), cfg.batch_size, cfg.seed)?;
        let chunk = cfg.batch_size.max(8);
        let (train, validation) = in_pool(|| -> Result<_> {
            Ok((
                cache(&model, examples, cfg.layer + 1, chunk, cancel)?,
                cache(&model, validation, cfg.layer + 1, chunk, cancel)?,
            ))
        })?;
        Ok(HyperTraining {
            net,
            trainer,
            batches,
            train,
            validation,
            offset: 0,
        })
    }

    /// One optimiser step on the next mini-batch (`ce` recorded with the loss).
    /// `Interrupted` (state unchanged) when `cancel` is set before the update.
    pub fn step(&mut self, cancel: &Cancel) -> Result<StepRecord> {
        let idx = self
            .batches
            .batch(self.offset + self.trainer.history().len());
        in_pool(|| {
            let loss = ce(&self.net, &self.train, &idx, cancel);
            self.trainer.step_with(move || {
                let l = loss?;
                let v = l.to_scalar::<f32>()? as f64;
                Ok((l, vec![("ce".into(), v)]))
            })
        })
    }

    /// The token-weighted cross-entropy of the validation examples (in batches of the
    /// training batch size), without an update; None without validation examples.
    pub fn validate(&self, cancel: &Cancel) -> Result<Option<f64>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        in_pool(|| {
            let (mut sum, mut tokens) = (0f64, 0usize);
            let all: Vec<usize> = (0..self.validation.len()).collect();
            for idx in all.chunks(self.batches.batch_size().max(1)) {
                let l = ce(&self.net, &self.validation, idx, cancel)?.to_scalar::<f32>()? as f64;
                let k: usize = idx
                    .iter()
                    .map(|&i| self.validation[i].ids.len() - self.validation[i].split)
                    .sum();
                sum += l * k as f64;
                tokens += k;
            }
            Ok(Some(sum / tokens.max(1) as f64))
        })
    }

    /// The differentiable loss (token-weighted cross-entropy, a scalar) of training
    /// examples `idx` at the current parameters, without an update (tests, probes).
    /// Errors: `OutOfRange` for an index past the examples.
    pub fn batch_loss(&self, idx: &[usize], cancel: &Cancel) -> Result<Tensor> {
        if let Some(&i) = idx.iter().find(|&&i| i >= self.train.len()) {
            return Err(Error::out_of_range(format!(
                "example {i} is out of range: there are {} training examples",
                self.train.len()
            )));
        }
        in_pool(|| ce(&self.net, &self.train, idx, cancel))
    }

    pub fn net(&self) -> &HyperNet {
        &self.net
    }
    pub fn history(&self) -> &[StepRecord] {
        self.trainer.history()
    }
    /// Steps per pass over the training examples.
    pub fn steps_per_epoch(&self) -> usize {
        self.batches.per_epoch()
    }
    /// Continue the batch order of a run that had completed `steps` steps (a resumed
    /// run: the next step takes that run's next batch).
    pub fn set_step_offset(&mut self, steps: usize) {
        self.offset = steps;
    }

    /// Change the learning rate of the following steps.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.trainer.set_lr(lr)
    }
}

/// The cross-entropy of the steered base model on the targets of examples `idx`.
fn ce(net: &HyperNet, data: &[Cached], idx: &[usize], cancel: &Cancel) -> Result<Tensor> {
    let m = &**net.model();
    let layer = net.layer();
    let steer: Vec<Vec<u32>> = idx.iter().map(|&i| data[i].steer.clone()).collect();
    let mem: Vec<Tensor> = idx
        .iter()
        .map(|&i| Ok(data[i].h.narrow(0, 0, data[i].split)?))
        .collect::<Result<_>>()?;
    let mem_refs: Vec<&Tensor> = mem.iter().collect();
    let mem_arg = (net.variant() == Variant::CrossAttention).then_some(mem_refs.as_slice());
    let delta = net.deltas(&steer, mem_arg, Mode::Gradient)?; // [b, d]
    let rows = idx
        .iter()
        .enumerate()
        .map(|(r, &i)| {
            let pos = if data[i].skip_first {
                Positions::From(1)
            } else {
                Positions::All
            };
            Ok(vec![Intervention::add(layer, delta.get(r)?, pos)])
        })
        .collect::<Result<Vec<_>>>()?;
    let hs: Vec<&Tensor> = idx.iter().map(|&i| &data[i].h).collect();
    let splits: Vec<usize> = idx.iter().map(|&i| data[i].split).collect();
    let (out, layout) = steered_from_prefix(m, &hs, splits, &rows, layer + 1, cancel)?;
    let seqs: Vec<(&[u32], usize)> = idx
        .iter()
        .map(|&i| (data[i].ids.as_slice(), data[i].split))
        .collect();
    Ok(completion_logprobs(m, &out, &layout, &seqs)?.0)
}

fn cache(
    model: &Model,
    ex: Vec<HyperExample>,
    start: usize,
    chunk: usize,
    cancel: &Cancel,
) -> Result<Vec<Cached>> {
    if ex.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Vec<u32>> = ex.iter().map(|e| e.ids.clone()).collect();
    let hs = frozen_prefix(model, &rows, start, chunk, cancel)?;
    let bos = model.tokenizer.bos_id;
    Ok(ex
        .into_iter()
        .zip(hs)
        .map(|(e, h)| Cached {
            skip_first: bos.is_some() && e.ids.first().copied() == bos,
            steer: e.steer,
            ids: e.ids,
            split: e.split,
            h,
        })
        .collect())
}
