//! Optimised steering vectors: one additive vector per layer, trained so that the
//! steered, frozen model gives target completions high likelihood.
//!
//! This is the trained-vector baseline of AxBench (Wu et al. 2025; the ReFT-r1 / RePS
//! family) and the SteerVec baseline of activation scaling (Stoehr et al. 2024): the
//! parameters are the vectors `v_l` added at `resid_post[l]`; the loss is the
//! cross-entropy of the completion tokens given the prompt (every completion token
//! weighs the same), or, with negatives, `softplus(-(lp+ - lp-))` averaged over the
//! examples, where `lp±` is the mean log-probability per token of the target and the
//! negative completion (the preference form of RePS / BiPO, bounded so the negative's
//! probability is not driven to zero for its own sake).
//!
//! Frozen prefix: the blocks below the first steered layer do not depend on the vectors,
//! so their output (the input of block `min(layers) + 1`) is computed once per example
//! at construction, without gradients, and every step runs only the blocks above it in
//! `Mode::Gradient`. Only the completion positions go through the final norm and the LM
//! head.

use std::sync::Arc;

use candle_core::{DType, Tensor, Var};

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::intervene::{Intervention, Positions};
use crate::learn::batches::Batches;
use crate::learn::losses;
use crate::learn::prefix::{completion_logprobs, frozen_prefix, steered_from_prefix};
use crate::learn::trainer::{StepRecord, TrainConfig, Trainer};
use crate::model::Model;
use crate::pool::in_pool;

/// One training example: `ids` = prompt tokens then completion tokens; the completion
/// starts at `split` (1 <= split < ids.len()).
#[derive(Debug, Clone)]
pub struct Example {
    pub ids: Vec<u32>,
    pub split: usize,
}

/// What to train and how.
#[derive(Debug, Clone)]
pub struct VectorConfig {
    /// Layers (resid_post, non-negative, distinct) that get a vector each.
    pub layers: Vec<usize>,
    /// Where the vectors are added while training (prompt and completion tokens).
    pub positions: Positions,
    pub batch_size: usize,
    pub seed: u64,
    pub train: TrainConfig,
    /// Initial vectors [d_model] per layer (zeros when None).
    pub init: Option<Vec<Vec<f32>>>,
}

/// An example with the frozen prefix's output: h [len, d] entering the first trained
/// block.
struct Cached {
    ids: Vec<u32>,
    split: usize,
    h: Tensor,
}

/// A training run of optimised steering vectors (see the module docs).
pub struct VectorTraining {
    model: Arc<Model>,
    layers: Vec<usize>,
    positions: Positions,
    vars: Vec<Var>,
    trainer: Trainer,
    batches: Batches,
    start: usize,
    pos: Vec<Cached>,
    neg: Option<Vec<Cached>>,
}

fn check_examples(ex: &[Example], what: &str, max_context: usize) -> Result<()> {
    if ex.is_empty() {
        return Err(Error::invalid(format!(
            "no {what}: expected at least one (prompt, completion) pair"
        )));
    }
    for (i, e) in ex.iter().enumerate() {
        if e.split == 0 || e.split >= e.ids.len() {
            return Err(Error::invalid(format!(
                "{what} {i}: the prompt has {} tokens and the completion {}; expected at \
                 least one token in each",
                e.split,
                e.ids.len().saturating_sub(e.split)
            )));
        }
        if e.ids.len() > max_context {
            return Err(Error::ContextLength(format!(
                "{what} {i} has {} tokens (prompt + completion), longer than the model's \
                 context of {max_context} tokens",
                e.ids.len()
            )));
        }
    }
    Ok(())
}

impl VectorTraining {
    /// Check the data, compute the frozen prefix of every example (cancellable between
    /// batches) and set up the vectors and the optimiser.
    ///
    /// Errors: `InvalidArgument` for empty data, an example without prompt or
    /// completion, negatives whose count differs from the examples', repeated layers,
    /// a bad `train` config or `init`; `OutOfRange` for a layer the model lacks;
    /// `ContextLength` for an example longer than the context; `Interrupted`.
    pub fn new(
        model: Arc<Model>,
        examples: Vec<Example>,
        negatives: Option<Vec<Example>>,
        cfg: VectorConfig,
        cancel: &Cancel,
    ) -> Result<Self> {
        let n_layers = model.n_layers();
        let d = model.d_model();
        if cfg.layers.is_empty() {
            return Err(Error::invalid(
                "layers is empty; expected at least one layer",
            ));
        }
        let mut sorted = cfg.layers.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid(format!(
                "layers {:?} repeat a layer; expected distinct layers",
                cfg.layers
            )));
        }
        if let Some(&l) = sorted.last().filter(|&&l| l >= n_layers) {
            return Err(Error::out_of_range(format!(
                "layer {l} is out of range: this model has {n_layers} layers"
            )));
        }
        let ctx_len = model.cfg.max_context;
        check_examples(&examples, "example", ctx_len)?;
        if let Some(neg) = &negatives {
            check_examples(neg, "negative", ctx_len)?;
            if neg.len() != examples.len() {
                return Err(Error::invalid(format!(
                    "{} negatives for {} examples; expected one negative completion per \
                     example",
                    neg.len(),
                    examples.len()
                )));
            }
        }
        // Positions as in generation: the prompt is ids[..split], the completion plays the
        // generated tokens ("last" = the last prompt token and the completion,
        // "generated" = the completion).
        for (i, e) in examples.iter().enumerate() {
            cfg.positions.check(i, e.split, e.ids.len() - e.split)?;
        }
        let init = match &cfg.init {
            None => vec![vec![0f32; d]; cfg.layers.len()],
            Some(v) => {
                if v.len() != cfg.layers.len() || v.iter().any(|x| x.len() != d) {
                    return Err(Error::shape(format!(
                        "init has {} vectors of lengths {:?}; expected {} of length {d}",
                        v.len(),
                        v.iter().map(Vec::len).collect::<Vec<_>>(),
                        cfg.layers.len()
                    )));
                }
                v.clone()
            }
        };
        let vars = init
            .into_iter()
            .map(|v| Var::from_vec(v, d, &model.device))
            .collect::<candle_core::Result<Vec<Var>>>()?;
        let params = cfg
            .layers
            .iter()
            .zip(&vars)
            .map(|(l, v)| (format!("resid_post.{l}"), v.clone()))
            .collect();
        let trainer = Trainer::new(params, cfg.train.clone())?;
        let batches = Batches::new(examples.len(), cfg.batch_size, cfg.seed)?;
        let start = sorted[0] + 1;
        let chunk = cfg.batch_size.max(8);
        let pos = in_pool(|| prefix(&model, examples, start, chunk, cancel))?;
        let neg = match negatives {
            Some(n) => Some(in_pool(|| prefix(&model, n, start, chunk, cancel))?),
            None => None,
        };
        Ok(VectorTraining {
            model,
            layers: cfg.layers,
            positions: cfg.positions,
            vars,
            trainer,
            batches,
            start,
            pos,
            neg,
        })
    }

    /// One optimiser step on the next mini-batch. `Interrupted` (state unchanged) when
    /// `cancel` is set before the update.
    pub fn step(&mut self, cancel: &Cancel) -> Result<StepRecord> {
        let idx = self.batches.batch(self.trainer.history().len());
        in_pool(|| {
            let loss = self.loss(&idx, cancel);
            self.trainer.step_with(move || loss)
        })
    }

    /// The loss of the examples `idx` and what to record with it (`ce`, and `margin`
    /// with negatives).
    fn loss(&self, idx: &[usize], cancel: &Cancel) -> Result<(Tensor, Vec<(String, f64)>)> {
        let (ce, lp) = self.logprobs(&self.pos, idx, cancel)?;
        let ce_v = ce.to_scalar::<f32>()? as f64;
        match &self.neg {
            None => Ok((ce, vec![("ce".into(), ce_v)])),
            Some(neg) => {
                let (_, lpn) = self.logprobs(neg, idx, cancel)?;
                let margin = (lp - lpn)?; // [b]
                let m = margin.mean_all()?.to_scalar::<f32>()? as f64;
                let loss = losses::logit_diff_loss(&margin)?;
                Ok((loss, vec![("ce".into(), ce_v), ("margin".into(), m)]))
            }
        }
    }

    /// The steered model's log-probabilities of the completions of `rows` of `data`:
    /// the token-weighted cross-entropy (scalar) and each row's mean log-probability
    /// per completion token [b].
    fn logprobs(
        &self,
        data: &[Cached],
        rows: &[usize],
        cancel: &Cancel,
    ) -> Result<(Tensor, Tensor)> {
        let m = &self.model;
        let steer: Vec<Vec<Intervention>> = rows
            .iter()
            .map(|_| {
                self.layers
                    .iter()
                    .zip(&self.vars)
                    .map(|(&l, v)| {
                        Intervention::add(l, v.as_tensor().clone(), self.positions.clone())
                    })
                    .collect()
            })
            .collect();
        let splits: Vec<usize> = rows.iter().map(|&i| data[i].split).collect();
        let hs: Vec<&Tensor> = rows.iter().map(|&i| &data[i].h).collect();
        let (out, layout) = steered_from_prefix(m, &hs, splits, &steer, self.start, cancel)?; // [b, w, d]
        let seqs: Vec<(&[u32], usize)> = rows
            .iter()
            .map(|&i| (data[i].ids.as_slice(), data[i].split))
            .collect();
        completion_logprobs(m, &out, &layout, &seqs)
    }

    pub fn history(&self) -> &[StepRecord] {
        self.trainer.history()
    }

    pub fn best(&self) -> Option<(usize, f64)> {
        self.trainer.best()
    }

    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    /// The vectors per layer (in `layers` order): the best ones seen (lowest batch
    /// loss) or the current ones.
    pub fn vectors(&self, best: bool) -> Result<Vec<Vec<f32>>> {
        let params = if best {
            self.trainer.best_params()?
        } else {
            self.trainer.current_params()?
        };
        params
            .into_iter()
            .map(|(_, t)| Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?))
            .collect()
    }
}

/// The frozen prefix of each example (see [`frozen_prefix`]).
fn prefix(
    model: &Model,
    ex: Vec<Example>,
    start: usize,
    chunk: usize,
    cancel: &Cancel,
) -> Result<Vec<Cached>> {
    let rows: Vec<Vec<u32>> = ex.iter().map(|e| e.ids.clone()).collect();
    let hs = frozen_prefix(model, &rows, start, chunk, cancel)?;
    Ok(ex
        .into_iter()
        .zip(hs)
        .map(|(e, h)| Cached {
            ids: e.ids,
            split: e.split,
            h,
        })
        .collect())
}
