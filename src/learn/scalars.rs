//! Activation scaling: learned scalars at (site, layer, position), the additive
//! baseline, and dynamic scalars.
//!
//! Follows Stoehr et al. 2024, "Activation Scaling for Steering and Interpreting Language
//! Models" (arXiv 2410.04962). At a site (`attn_out` / `mlp_out` of a layer) the
//! activation h `[d]` at prompt position p becomes
//! - **ActivScalar** (`Scalar`): h * (1 + beta * alpha[p]), one alpha per position, 0 at
//!   initialisation (the identity);
//! - **SteerVec** (`Vector`, the additive baseline): h + beta * v[p], one vector per
//!   position;
//! - **DynScalar** (`Dynamic`): h * (1 + beta * (w . h + b)), one probe (w, b) per site
//!   shared over positions, so it applies to prompts of any length (and to generated
//!   tokens).
//!
//! beta is a strength chosen at use time (1 = what training saw; 0 = the unsteered model,
//! exactly). The static kinds hold one entry per position of the training prompts' token
//! layout (`P` tokens) and refuse prompts of another length; generated tokens (positions
//! `>= P`) are left alone.
//!
//! Training ([`ScalarTraining`]) minimises, on the logits at the last prompt position,
//! `effectiveness * mean softplus(-(logit[target] - logit[foil]))`
//! `+ faithfulness * mean KL(unsteered || steered)` over the next-token distribution with
//! the two answer tokens removed and renormalised
//! `+ sparsity * L1` of the parameters (alpha, v, or w and b). The L1 term is not
//! differentiable at 0, and AdamW on its subgradient leaves every parameter jittering
//! around 0 instead of at it; so it is applied as in OWL-QN (Andrew & Gao 2007): AdamW
//! steps on the pseudo-gradient (at 0, the smallest subgradient: 0 when the rest of the
//! loss pulls less than `sparsity`), and a step may not carry a parameter across 0. A
//! parameter the data does not need stays exactly 0. The base model is frozen;
//! the blocks below the first trained site run once per example (the frozen prefix).

use std::sync::Arc;

use candle_core::{DType, Tensor, Var};

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::hooks::Sites;
use crate::intervene::{Intervention, Op, Positions, SiteModule, SteeringPlan};
use crate::learn::batches::Batches;
use crate::learn::losses;
use crate::learn::prefix::{forward_from_prefix, frozen_prefix};
use crate::learn::trainer::{StepRecord, TrainConfig, Trainer};
use crate::model::{Hooks, Mode, Model, Site, StepCtx};
use crate::pool::in_pool;

/// Which of the three modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    /// ActivScalar: one alpha per (site, layer, position).
    Scalar,
    /// SteerVec: one vector per (site, layer, position).
    Vector,
    /// DynScalar: one probe (w, b) per (site, layer).
    Dynamic,
}

impl ScalarKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "scalar" => Ok(ScalarKind::Scalar),
            "vector" => Ok(ScalarKind::Vector),
            "dynamic" => Ok(ScalarKind::Dynamic),
            other => Err(Error::invalid(format!(
                "unknown kind '{other}' (expected 'scalar' (ActivScalar), 'vector' (SteerVec) \
                 or 'dynamic' (DynScalar))"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ScalarKind::Scalar => "scalar",
            ScalarKind::Vector => "vector",
            ScalarKind::Dynamic => "dynamic",
        }
    }

    /// The factor from each trained variable to its parameter at a site whose unsteered
    /// activations have mean norm `norm` (over the training prompts): 1 for alpha,
    /// `norm / sqrt(d)` for v, `1 / (norm * sqrt(d))` for w, 1 for b. With them an AdamW
    /// step of size `lr` on every variable changes the activation by about `lr * ||h||`
    /// whatever the kind (alpha: `lr * h`; v: `lr * norm`; w: alpha by about `lr`), so
    /// one learning rate means the same for the three kinds. A reparametrisation
    /// (preconditioning) only: the module computes exactly the formulas above.
    fn scales(self, norm: f64, d: usize) -> Vec<f64> {
        let root = (d as f64).sqrt();
        match self {
            ScalarKind::Scalar => vec![1.0],
            ScalarKind::Vector => vec![norm / root],
            ScalarKind::Dynamic => vec![1.0 / (norm * root), 1.0],
        }
    }

    /// The parameter tensors of one site, zero-initialised: alpha `[P]`, v `[P, d]`, or
    /// w `[d]` and b `[1]`.
    fn zeros(self, layout: usize, d: usize) -> Vec<(String, Vec<usize>)> {
        match self {
            ScalarKind::Scalar => vec![("alpha".into(), vec![layout])],
            ScalarKind::Vector => vec![("v".into(), vec![layout, d])],
            ScalarKind::Dynamic => vec![("w".into(), vec![d]), ("b".into(), vec![1])],
        }
    }
}

/// The learned module at one site (see the module docs), at strength `beta`.
#[derive(Clone)]
pub struct ScalarModule {
    kind: ScalarKind,
    site: Site,
    /// alpha `[P]`; v `[P, d]`; or w `[d]` and b `[1]`.
    params: Vec<Tensor>,
    beta: f64,
}

impl ScalarModule {
    /// Build and check a module from its parameters (as [`ScalarKind`] lists them).
    ///
    /// Errors: `Shape` for parameters of the wrong number or rank, an empty layout, or a
    /// vector/probe width that is not `d_model`; `InvalidArgument` for a non-finite value
    /// or beta.
    pub fn new(
        kind: ScalarKind,
        site: Site,
        params: Vec<Tensor>,
        beta: f64,
        d_model: usize,
    ) -> Result<Self> {
        if !(beta.is_finite() && (beta as f32).is_finite()) {
            return Err(Error::invalid(format!(
                "beta for the {} module at {site} is {beta}; expected a finite strength \
                 within f32's range (|beta| <= {:e})",
                kind.name(),
                f32::MAX
            )));
        }
        let dims: Vec<Vec<usize>> = params.iter().map(|p| p.dims().to_vec()).collect();
        let ok = match (kind, dims.as_slice()) {
            (ScalarKind::Scalar, [a]) => a.len() == 1 && a[0] > 0,
            (ScalarKind::Vector, [v]) => v.len() == 2 && v[0] > 0 && v[1] == d_model,
            (ScalarKind::Dynamic, [w, b]) => w == &[d_model] && b == &[1],
            _ => false,
        };
        if !ok {
            let want = match kind {
                ScalarKind::Scalar => "alpha [P] with P >= 1".to_string(),
                ScalarKind::Vector => format!("v [P, {d_model}] with P >= 1"),
                ScalarKind::Dynamic => format!("w [{d_model}] and b [1]"),
            };
            return Err(Error::shape(format!(
                "the {} module at {site} has parameters of shapes {dims:?}; expected {want} \
                 (d_model {d_model}: a module made for another model has another width)",
                kind.name()
            )));
        }
        for p in &params {
            let v = p.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::invalid(format!(
                    "the {} module at {site} has a non-finite parameter ({}) at flat index \
                     {j}; expected finite numbers",
                    kind.name(),
                    v[j]
                )));
            }
        }
        Ok(ScalarModule {
            kind,
            site,
            params,
            beta,
        })
    }

    /// The token layout length P of a static module (None for `Dynamic`).
    pub fn layout(&self) -> Option<usize> {
        match self.kind {
            ScalarKind::Dynamic => None,
            _ => self.params.first().and_then(|p| p.dims().first().copied()),
        }
    }

    /// For each column of a `[b, t]` step, the row of the per-position table it reads:
    /// its position p when p < P, else P (an extra row of zeros).
    fn table_index(&self, ctx: &StepCtx, b: usize, t: usize, p: usize) -> Result<Tensor> {
        let idx: Vec<u32> = (0..b)
            .flat_map(|r| (0..t).map(move |j| (r, j)))
            .map(|(r, j)| match ctx.position(r, j) {
                Some(pos) if pos < p => pos as u32,
                _ => p as u32,
            })
            .collect();
        Ok(Tensor::from_vec(idx, b * t, self.params[0].device())?)
    }
}

impl SiteModule for ScalarModule {
    fn name(&self) -> &str {
        match self.kind {
            ScalarKind::Scalar => "activation scalars (ActivScalar)",
            ScalarKind::Vector => "steering vectors per position (SteerVec)",
            ScalarKind::Dynamic => "dynamic scalars (DynScalar)",
        }
    }

    fn check(&self, row: usize, prompt_len: usize, d_model: usize) -> Result<()> {
        let width = match self.kind {
            ScalarKind::Scalar => None,
            ScalarKind::Vector => self.params[0].dims().get(1).copied(),
            ScalarKind::Dynamic => self.params[0].dims().first().copied(),
        };
        if let Some(w) = width.filter(|&w| w != d_model) {
            return Err(Error::shape(format!(
                "the {} at {} have width {w}, but this model's d_model is {d_model}: they \
                 were made for another model",
                self.name(),
                self.site
            )));
        }
        match self.layout() {
            Some(p) if p != prompt_len => Err(Error::shape(format!(
                "row {row}: the {} at {} were trained on prompts of {p} tokens, but this \
                 prompt has {prompt_len} tokens. Static activation scalars (kind='scalar') and \
                 per-position vectors (kind='vector') are tied to the training prompts' token \
                 layout; train kind='dynamic' (DynScalar: alpha = w.h + b, one probe per \
                 site) for prompts of other lengths",
                self.name(),
                self.site
            ))),
            _ => Ok(()),
        }
    }

    fn apply(&self, h: &Tensor, mask: &Tensor, ctx: &StepCtx) -> Result<Tensor> {
        let (b, t, d) = h.dims3()?; // h [b, t, d], mask [b, t, 1]
        let dev = h.device();
        let dt = h.dtype();
        Ok(match self.kind {
            ScalarKind::Scalar => {
                let alpha = self.params[0].to_dtype(dt)?; // [P]
                let p = alpha.dim(0)?;
                let table = Tensor::cat(&[&alpha, &Tensor::zeros(1, dt, dev)?], 0)?; // [P + 1]
                let idx = self.table_index(ctx, b, t, p)?;
                let a = table.index_select(&idx, 0)?.reshape((b, t, 1))?; // [b, t, 1]
                let a = ((a * self.beta)? * mask)?;
                (h + h.broadcast_mul(&a)?)?
            }
            ScalarKind::Vector => {
                let v = self.params[0].to_dtype(dt)?; // [P, d]
                let p = v.dim(0)?;
                let table = Tensor::cat(&[&v, &Tensor::zeros((1, d), dt, dev)?], 0)?; // [P + 1, d]
                let idx = self.table_index(ctx, b, t, p)?;
                let add = table.index_select(&idx, 0)?.reshape((b, t, d))?; // [b, t, d]
                (h + (add * self.beta)?.broadcast_mul(mask)?)?
            }
            ScalarKind::Dynamic => {
                // alpha = w . h + b per position, as a product and a sum over d: each
                // position's dot product is the same arithmetic whatever the batch (a
                // batched matmul against the broadcast w gave another result for one row
                // of an 8-row chat batch than for the row alone: 0.5 in the logits).
                let w = self.params[0].to_dtype(dt)?.reshape((1, 1, d))?; // [1, 1, d]
                let bias = self.params[1].to_dtype(dt)?.reshape((1, 1, 1))?;
                let a = h.broadcast_mul(&w)?.sum_keepdim(2)?.broadcast_add(&bias)?; // [b, t, 1]
                let a = ((a * self.beta)? * mask)?;
                (h + h.broadcast_mul(&a)?)?
            }
        })
    }
}

/// One training record: the prompt's token ids and the two answer tokens.
#[derive(Debug, Clone)]
pub struct ScalarExample {
    pub ids: Vec<u32>,
    pub target: u32,
    pub foil: u32,
}

/// What to train and how.
#[derive(Debug, Clone)]
pub struct ScalarConfig {
    pub kind: ScalarKind,
    /// Sites with a layer (distinct), e.g. `attn_out[i]` and `mlp_out[i]`.
    pub sites: Vec<Site>,
    /// Where the modules act: which prompt positions get a trained entry (static kinds)
    /// or where the probe applies (dynamic).
    pub positions: Positions,
    pub effectiveness: f64,
    pub faithfulness: f64,
    pub sparsity: f64,
    pub batch_size: usize,
    pub seed: u64,
    pub train: TrainConfig,
}

/// A record with its frozen prefix h `[len, d]`.
struct Cached {
    ids: Vec<u32>,
    target: u32,
    foil: u32,
    h: Tensor,
}

/// A training run of activation scalars (see the module docs).
pub struct ScalarTraining {
    model: Arc<Model>,
    cfg: ScalarConfig,
    /// The trained variables of each site, in `cfg.sites` order; parameter = variable *
    /// scale (see [`ScalarKind::scales`]).
    vars: Vec<Vec<Var>>,
    scales: Vec<Vec<f64>>,
    layout: Option<usize>,
    trainer: Trainer,
    batches: Batches,
    start: usize,
    data: Vec<Cached>,
    /// The unsteered model's next-token log-probabilities at each record's answer
    /// position, the two answer tokens removed and the rest renormalised: `[n, V]`.
    reference: Tensor,
}

/// The logit that removes a token from a distribution (finite, so the KL's gradient stays
/// finite; exp of it is exactly 0 in f32).
const REMOVED: f32 = -1e9;

/// `[b, V]`: 0 everywhere except `REMOVED` at each row's two answer tokens.
fn answer_mask(rows: &[(u32, u32)], v: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let mut m = vec![0f32; rows.len() * v];
    for (r, &(a, b)) in rows.iter().enumerate() {
        for id in [a, b] {
            let slot = Some(id as usize)
                .filter(|&i| i < v)
                .and_then(|i| m.get_mut(r * v + i))
                .ok_or_else(|| {
                    Error::out_of_range(format!(
                        "answer token id {id} is out of range for logits of {v} tokens"
                    ))
                })?;
            *slot = REMOVED;
        }
    }
    Ok(Tensor::from_vec(m, (rows.len(), v), dev)?)
}

fn check_weights(cfg: &ScalarConfig) -> Result<()> {
    for (name, w) in [
        ("effectiveness", cfg.effectiveness),
        ("faithfulness", cfg.faithfulness),
        ("sparsity", cfg.sparsity),
    ] {
        if !(w.is_finite() && w >= 0.0) {
            return Err(Error::invalid(format!(
                "{name} weight is {w}; expected a finite number >= 0"
            )));
        }
    }
    if cfg.effectiveness == 0.0 && cfg.faithfulness == 0.0 {
        return Err(Error::invalid(
            "effectiveness and faithfulness weights are both 0: nothing to train towards; \
             expected effectiveness > 0 (flip the answer) and usually faithfulness > 0",
        ));
    }
    Ok(())
}

fn check_sites(sites: &[Site], n_layers: usize) -> Result<usize> {
    if sites.is_empty() {
        return Err(Error::invalid(
            "no sites: expected at least one (site, layer)",
        ));
    }
    let mut sorted = sites.to_vec();
    sorted.sort();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(format!(
            "site {} is given twice; expected distinct (site, layer) pairs",
            w[0]
        )));
    }
    let mut start = usize::MAX;
    for s in sites {
        let Some(l) = s.layer() else {
            return Err(Error::invalid(format!(
                "site {s} has no layer; expected attn_out, mlp_out, resid_mid or resid_post \
                 of a layer"
            )));
        };
        if l >= n_layers {
            return Err(Error::out_of_range(format!(
                "site {s} is out of range: this model has {n_layers} layers"
            )));
        }
        start = start.min(s.block());
    }
    Ok(start)
}

fn check_examples(ex: &[ScalarExample], vocab: usize, max_context: usize) -> Result<()> {
    if ex.is_empty() {
        return Err(Error::invalid(
            "no records: expected at least one (prompt, target, foil)",
        ));
    }
    for (i, e) in ex.iter().enumerate() {
        if e.ids.is_empty() {
            return Err(Error::invalid(format!("prompt {i} has no tokens")));
        }
        if e.ids.len() > max_context {
            return Err(Error::ContextLength(format!(
                "prompt {i} has {} tokens, longer than the model's context of {max_context}",
                e.ids.len()
            )));
        }
        if let Some(&bad) = [e.target, e.foil].iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::out_of_range(format!(
                "record {i}: answer token id {bad} is out of range for a vocabulary of {vocab}"
            )));
        }
        if e.target == e.foil {
            return Err(Error::invalid(format!(
                "record {i}: target and foil are the same token (id {}); expected two \
                 different answer tokens",
                e.target
            )));
        }
    }
    Ok(())
}

impl ScalarTraining {
    /// Check the data, compute the frozen prefix and the unsteered reference of every
    /// record (cancellable between chunks), and set up the parameters (zeros: the
    /// identity) and the optimiser.
    ///
    /// Errors: `InvalidArgument` for empty data, an empty prompt, equal target and foil,
    /// bad weights, no or repeated sites, a site without a layer, or a bad `train`
    /// config; `Shape` when a static kind gets prompts of several token lengths;
    /// `OutOfRange` for a layer the model lacks or an answer id outside the vocabulary;
    /// `ContextLength`; `Interrupted`.
    pub fn new(
        model: Arc<Model>,
        examples: Vec<ScalarExample>,
        cfg: ScalarConfig,
        cancel: &Cancel,
    ) -> Result<Self> {
        let d = model.d_model();
        let vocab = model.cfg.vocab_size;
        check_examples(&examples, vocab, model.cfg.max_context)?;
        check_weights(&cfg)?;
        cfg.train.validate()?; // before the prefix pass, not after it
        let batches = Batches::new(examples.len(), cfg.batch_size, cfg.seed)?;
        let start = check_sites(&cfg.sites, model.n_layers())?;
        for (i, e) in examples.iter().enumerate() {
            cfg.positions.check(i, e.ids.len(), 0)?;
        }
        let layout = match cfg.kind {
            ScalarKind::Dynamic => None,
            kind => {
                let mut lens: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
                lens.sort_unstable();
                lens.dedup();
                if lens.len() > 1 {
                    return Err(Error::shape(format!(
                        "kind='{}' needs prompts of one token length (its parameters are tied \
                         to token positions), but these prompts have {} lengths: {lens:?}; \
                         train on prompts of one length (one template), or use \
                         kind='dynamic' (DynScalar), which applies to any length",
                        kind.name(),
                        lens.len()
                    )));
                }
                lens.first().copied()
            }
        };
        let p = layout.unwrap_or(0);
        let chunk = cfg.batch_size.max(8);
        let (data, reference, norms) =
            in_pool(|| Self::prepare(&model, examples, &cfg.sites, start, chunk, cancel))?;
        let mut vars = Vec::with_capacity(cfg.sites.len());
        let mut scales = Vec::with_capacity(cfg.sites.len());
        let mut params = Vec::new();
        for (site, &norm) in cfg.sites.iter().zip(&norms) {
            let mut site_vars = Vec::new();
            for (name, shape) in cfg.kind.zeros(p, d) {
                let var = Var::zeros(shape, DType::F32, &model.device)?;
                params.push((format!("{site}.{name}"), var.clone()));
                site_vars.push(var);
            }
            vars.push(site_vars);
            scales.push(cfg.kind.scales(norm, d));
        }
        let trainer = Trainer::new(params, cfg.train.clone())?;
        Ok(ScalarTraining {
            model,
            cfg,
            vars,
            scales,
            layout,
            trainer,
            batches,
            start,
            data,
            reference,
        })
    }

    /// The frozen prefix of each record and the unsteered reference distributions.
    fn prepare(
        model: &Model,
        examples: Vec<ScalarExample>,
        sites: &[Site],
        start: usize,
        chunk: usize,
        cancel: &Cancel,
    ) -> Result<(Vec<Cached>, Tensor, Vec<f64>)> {
        let ids: Vec<Vec<u32>> = examples.iter().map(|e| e.ids.clone()).collect();
        let hs = frozen_prefix(model, &ids, start, chunk, cancel)?;
        let data: Vec<Cached> = examples
            .into_iter()
            .zip(hs)
            .map(|(e, h)| Cached {
                ids: e.ids,
                target: e.target,
                foil: e.foil,
                h,
            })
            .collect();
        let mut refs = Vec::with_capacity(data.len());
        let all: Vec<usize> = (0..data.len()).collect();
        let mut norms = SiteNorms {
            sites,
            sums: vec![0.0; sites.len()],
            count: vec![0; sites.len()],
            cancel,
        };
        for part in all.chunks(chunk) {
            cancel.check()?;
            // The same gradient-mode forward as training, without steering: at
            // initialisation the steered and reference distributions are the same numbers.
            let logits = Self::last_logits(model, &data, part, start, &mut norms)?;
            let pairs: Vec<(u32, u32)> = part
                .iter()
                .map(|&i| (data[i].target, data[i].foil))
                .collect();
            let masked = (logits.detach() + answer_mask(&pairs, logits.dim(1)?, &model.device)?)?;
            refs.push(losses::log_softmax_rows(&masked)?);
        }
        let mean_norms = norms
            .sums
            .iter()
            .zip(&norms.count)
            .map(|(s, &n)| if n > 0 && *s > 0.0 { s / n as f64 } else { 1.0 })
            .collect();
        Ok((data, Tensor::cat(&refs, 0)?, mean_norms))
    }

    /// The logits `[b, V]` at the last prompt position of records `rows`, from the frozen
    /// prefix, in `Mode::Gradient`, with `hooks` at the sites.
    fn last_logits(
        model: &Model,
        data: &[Cached],
        rows: &[usize],
        start: usize,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let hs: Vec<&Tensor> = rows.iter().map(|&i| &data[i].h).collect();
        let (out, layout) = forward_from_prefix(model, &hs, start, hooks, Mode::Gradient)?; // [b, w, d]
        let w = layout.width;
        let last = out.narrow(1, w - 1, 1)?.squeeze(1)?; // [b, d]: left padding ends every row at w - 1
        model.logits_all(&last, Mode::Gradient) // [b, V]
    }

    /// The modules of the current parameters, one per site (strength 1).
    fn modules(&self) -> Result<Vec<Intervention>> {
        self.cfg
            .sites
            .iter()
            .zip(self.vars.iter().zip(&self.scales))
            .map(|(&site, (vs, sc))| {
                let params = vs
                    .iter()
                    .zip(sc)
                    .map(|(v, &k)| Ok((v.as_tensor() * k)?))
                    .collect::<Result<Vec<_>>>()?;
                let m = ScalarModule {
                    kind: self.cfg.kind,
                    site,
                    params,
                    beta: 1.0,
                };
                Ok(Intervention {
                    site,
                    positions: self.cfg.positions.clone(),
                    op: Op::Module(Arc::new(m)),
                })
            })
            .collect()
    }

    /// One optimiser step on the next mini-batch. `Interrupted` (state unchanged) when
    /// `cancel` is set before the update.
    pub fn step(&mut self, cancel: &Cancel) -> Result<StepRecord> {
        let idx = self.batches.batch(self.trainer.history().len());
        let lambda = self.cfg.sparsity;
        let scales: Vec<f64> = self.scales.iter().flatten().copied().collect();
        in_pool(|| {
            let before = self
                .vars
                .iter()
                .flatten()
                .map(|v| Ok(v.as_tensor().sign()?.detach()))
                .collect::<Result<Vec<_>>>()?;
            let loss = self.loss(&idx, cancel);
            let mut directions = Vec::with_capacity(scales.len());
            let rec = self.trainer.step_adjusted(
                move || loss,
                |params, grads| {
                    if lambda == 0.0 {
                        return Ok(());
                    }
                    for ((_, v), &k) in params.iter().zip(&scales) {
                        let x = v.as_tensor();
                        let Some(g) = grads.get(x) else {
                            continue; // the trainer reports the missing gradient
                        };
                        let pg = l1_pseudo_gradient(x, g, lambda * k)?;
                        directions.push(pg.neg()?.sign()?);
                        grads.insert(x, pg);
                    }
                    Ok(())
                },
            )?;
            if lambda > 0.0 {
                // The orthant projection of OWL-QN: a parameter may not cross zero in one
                // step (it stops at 0), and one at 0 may only leave it in the direction of
                // its negative pseudo-gradient (it stays at 0 when that is 0).
                for ((v, was), dir) in self.vars.iter().flatten().zip(before).zip(directions) {
                    let x = v.as_tensor();
                    let allowed = (&was + (was.abs()?.affine(-1.0, 1.0)? * dir)?)?;
                    let keep = (x.sign()? * allowed)?.gt(0.0)?.to_dtype(x.dtype())?;
                    v.set(&(x * keep)?)?;
                }
            }
            Ok(rec)
        })
    }

    /// The loss of records `idx` and its parts (effectiveness, faithfulness, minimality,
    /// and the mean logit difference).
    fn loss(&self, idx: &[usize], cancel: &Cancel) -> Result<(Tensor, Vec<(String, f64)>)> {
        let m = &self.model;
        let dev = &m.device;
        let row = self.modules()?;
        let steer = vec![row; idx.len()];
        let lens: Vec<usize> = idx.iter().map(|&i| self.data[i].ids.len()).collect();
        let plan = SteeringPlan::new(&steer, &lens, 0, m.n_layers(), m.d_model(), dev)?;
        let mut hooks = Sites {
            steering: Some(&plan),
            capture: None,
            monitor: None,
            cancel: Some(cancel),
            controller: None,
        };
        let logits = Self::last_logits(m, &self.data, idx, self.start, &mut hooks)?;
        let pairs: Vec<(u32, u32)> = idx
            .iter()
            .map(|&i| (self.data[i].target, self.data[i].foil))
            .collect();
        let b = idx.len();
        let good = Tensor::from_vec(pairs.iter().map(|p| p.0).collect(), b, dev)?;
        let bad = Tensor::from_vec(pairs.iter().map(|p| p.1).collect(), b, dev)?;
        let ld = losses::logit_diff(&logits, &good, &bad)?; // [b]
        let eff = losses::logit_diff_loss(&ld)?;
        let masked = (&logits + answer_mask(&pairs, logits.dim(1)?, dev)?)?;
        let sel = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect(), b, dev)?;
        let reference = self.reference.index_select(&sel, 0)?; // [b, V]
        let kl = losses::kl_to_reference(&masked, &reference)?;
        // The L1 term's value only: its (pseudo-)gradient is applied in `step`.
        let mut l1 = Tensor::zeros((), DType::F32, dev)?;
        for (v, &k) in self.vars.iter().flatten().zip(self.scales.iter().flatten()) {
            l1 = (l1 + (v.as_tensor().detach() * k)?.abs()?.sum_all()?)?;
        }
        let scalar = |t: &Tensor| -> Result<f64> { Ok(f64::from(t.to_scalar::<f32>()?)) };
        let parts = vec![
            ("effectiveness".to_string(), scalar(&eff)?),
            ("faithfulness".to_string(), scalar(&kl)?),
            ("minimality".to_string(), scalar(&l1)?),
            ("logit_diff".to_string(), scalar(&ld.mean_all()?)?),
        ];
        let loss = ((eff * self.cfg.effectiveness)?
            + (kl * self.cfg.faithfulness)?
            + (l1 * self.cfg.sparsity)?)?;
        Ok((loss, parts))
    }

    pub fn history(&self) -> &[StepRecord] {
        self.trainer.history()
    }

    pub fn best(&self) -> Option<(usize, f64)> {
        self.trainer.best()
    }

    pub fn sites(&self) -> &[Site] {
        &self.cfg.sites
    }

    pub fn kind(&self) -> ScalarKind {
        self.cfg.kind
    }

    /// The token layout length of a static kind (None for `Dynamic`).
    pub fn layout(&self) -> Option<usize> {
        self.layout
    }

    /// Per site, the factor from each trained variable to its parameter (see
    /// [`ScalarKind::scales`]).
    pub fn scales(&self) -> &[Vec<f64>] {
        &self.scales
    }

    /// Each site's parameters as flat f32 values (alpha `[P]`; v `[P * d]` row-major; w
    /// `[d]` then b `[1]`), in `sites` order: the best seen (lowest batch loss) or the
    /// current ones.
    pub fn params(&self, best: bool) -> Result<Vec<Vec<Vec<f32>>>> {
        let all = if best {
            self.trainer.best_params()?
        } else {
            self.trainer.current_params()?
        };
        let mut it = all.into_iter();
        let mut out = Vec::with_capacity(self.cfg.sites.len());
        for sc in &self.scales {
            let mut site = Vec::with_capacity(sc.len());
            for &k in sc {
                let (_, t) = it.next().ok_or_else(|| {
                    Error::invalid("the trainer holds fewer parameters than sites")
                })?;
                site.push(
                    (t * k)?
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
            }
            out.push(site);
        }
        Ok(out)
    }
}

/// Reads the mean activation norm at the trained sites over the real (unpadded)
/// positions of an unsteered forward; stops at the next block on cancel.
struct SiteNorms<'a> {
    sites: &'a [Site],
    sums: Vec<f64>,
    count: Vec<usize>,
    cancel: &'a Cancel,
}

impl Hooks for SiteNorms<'_> {
    fn at(&mut self, site: Site, h: Tensor, ctx: &StepCtx) -> Result<Tensor> {
        if let Some(k) = self.sites.iter().position(|&s| s == site) {
            let norms = h.detach().sqr()?.sum(2)?.sqrt()?.to_vec2::<f32>()?; // [b, t]
            for (r, row) in norms.iter().enumerate() {
                for (j, &n) in row.iter().enumerate() {
                    if ctx.position(r, j).is_some() {
                        self.sums[k] += f64::from(n);
                        self.count[k] += 1;
                    }
                }
            }
        }
        Ok(h)
    }

    fn before_block(&mut self, _block: usize) -> Result<()> {
        self.cancel.check()
    }
}

/// The pseudo-gradient of `f(x) + lambda * sum |x|` from the gradient `g` of `f`
/// (Andrew & Gao 2007, OWL-QN): `g + lambda * sign(x)` where `x != 0`; where `x = 0`,
/// the smallest subgradient: 0 when `|g| <= lambda` (zero is optimal there), else `g`
/// shrunk towards 0 by `lambda`.
fn l1_pseudo_gradient(x: &Tensor, g: &Tensor, lambda: f64) -> Result<Tensor> {
    let sign = x.sign()?;
    let nonzero = sign.abs()?; // 1 where x != 0
    let at_nonzero = (g + (&sign * lambda)?)?;
    let at_zero = (g.sign()? * (g.abs()? - lambda)?.relu()?)?;
    Ok(((at_nonzero * &nonzero)? + (at_zero * nonzero.affine(-1.0, 1.0)?)?)?)
}

#[cfg(test)]
mod tests;
