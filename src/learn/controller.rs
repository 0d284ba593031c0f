//! Training the weighted steering controller (Hegazy et al. 2025, arXiv 2505.20309; the
//! module itself is [`crate::intervene::controller`]).
//!
//! **Stage 1, the gate**, on cached activations (the model does not run again): the read
//! layers' last-token residuals of harmful (label 1) and benign (label 0) prompts, stored
//! once as `[n, k·d]`. Loss per mini-batch:
//! `BCE(o_0, y) + weight_reg · mean((1 − w)²)`, with `o_0` the gate logit and `w` the layer
//! weights. Stage 1 carries no signal about which layers matter, so the regulariser holds
//! every weight near 1 (the whole patch): after stage 1 the controller is a gated
//! constant steering. The inputs are standardised with the training set's per-feature
//! mean and standard deviation, stored in the module, so the same numbers apply at
//! inference. AdamW (candle-nn), gradient clipping, seeded mini-batches; the parameters
//! with the lowest validation BCE are kept (the authors' code keeps the last epoch).
//!
//! **Stage 2, end to end**, through the frozen model (quantized or f32) with the patch
//! applied by the forward: on harmful prompts the cross-entropy of a refusal opening, on
//! benign prompts `KL(p_unsteered || p_steered)` at the same positions of the model's own
//! continuation, so the per-layer weights and the gate learn what the patch does. The gate
//! of a training sequence is read once from the prompt's last token (the cached stage-1
//! input, exactly what generation reads for the first patched position); generation then
//! recomputes it at every step. The blocks below the first steered layer run once per
//! example (frozen prefix).

use std::sync::Arc;

use candle_core::{DType, Tensor, Var, D};

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::intervene::controller::controller_logits;
use crate::intervene::{ControllerParams, Intervention, Positions};
use crate::learn::batches::{Batches, SplitMix64};
use crate::learn::losses;
use crate::learn::prefix::{forward_from_prefix, frozen_prefix, steered_from_prefix};
use crate::learn::trainer::{StepRecord, TrainConfig, Trainer};
use crate::model::{Mode, Model, NoHooks};
use crate::pool::in_pool;

/// What to train and how.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub read_layers: Vec<usize>,
    pub layers: Vec<usize>,
    pub hidden: usize,
    pub strength: f32,
    /// Unit directions [L·d], one per steered layer.
    pub directions: Vec<f32>,
    /// Weight of stage 1's pull of the layer weights towards 1 (>= 0).
    pub weight_reg: f64,
    pub batch_size: usize,
    pub seed: u64,
    pub train: TrainConfig,
}

/// A stage-1 record: one epoch.
#[derive(Debug, Clone)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub bce: f64,
    pub reg: f64,
    pub val_bce: f64,
    pub val_acc: f64,
    pub grad_norm: f64,
}

/// One stage-2 example: the prompt and its continuation (`ids[split..]`), and the read
/// layers' raw last-prompt-token states [k·d].
#[derive(Debug, Clone)]
pub struct Stage2Example {
    pub ids: Vec<u32>,
    pub split: usize,
    pub state: Vec<f32>,
}

struct Cached {
    ids: Vec<u32>,
    split: usize,
    /// Standardised read states [k·d].
    x: Tensor,
    /// The frozen prefix's output [len, d].
    h: Tensor,
}

struct Stage2 {
    trainer: Trainer,
    harmful: Vec<Cached>,
    benign: Vec<Cached>,
    val_harmful: Vec<Cached>,
    val_benign: Vec<Cached>,
    hb: Batches,
    bb: Batches,
    start: usize,
    kl_weight: f64,
}

/// A controller training run (see the module docs).
pub struct ControllerTraining {
    model: Arc<Model>,
    cfg: ControllerConfig,
    mean: Vec<f32>,
    scale: Vec<f32>,
    dirs: Tensor,
    vars: Vec<Var>,
    trainer: Trainer,
    x: Tensor,
    y: Tensor,
    xv: Tensor,
    yv: Tensor,
    batches: Batches,
    epochs: Vec<EpochRecord>,
    best: Option<(f64, Vec<Tensor>)>,
    stage2: Option<Stage2>,
}

/// `U(-1/√fan_in, 1/√fan_in)` values (PyTorch's `nn.Linear` initialisation), seeded.
fn uniform(n: usize, fan_in: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
            ((2.0 * u - 1.0) * bound) as f32
        })
        .collect()
}

fn check_states(what: &str, x: &[f32], y: &[f32], kd: usize) -> Result<usize> {
    if y.is_empty() {
        return Err(Error::invalid(format!(
            "no {what} examples; expected at least one harmful and one benign"
        )));
    }
    if x.len() != y.len() * kd {
        return Err(Error::shape(format!(
            "{what} states have {} values for {} labels; expected [{} x {kd}]",
            x.len(),
            y.len(),
            y.len()
        )));
    }
    if let Some(j) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "{what} states hold a non-finite value at index {j}; expected finite activations"
        )));
    }
    if let Some(j) = y.iter().position(|&v| v != 0.0 && v != 1.0) {
        return Err(Error::invalid(format!(
            "{what} label {j} is {}; expected 1 (harmful) or 0 (benign)",
            y[j]
        )));
    }
    if !(y.contains(&0.0) && y.contains(&1.0)) {
        return Err(Error::invalid(format!(
            "the {what} labels are all {}; expected harmful (1) and benign (0) examples",
            y[0]
        )));
    }
    Ok(y.len())
}

/// Mean BCE with logits `z` [n] and labels `y` [n] (stable form
/// `max(z, 0) − z·y + log(1 + e^{−|z|})`).
fn bce(z: &Tensor, y: &Tensor) -> Result<Tensor> {
    let t = ((z.relu()? - (z * y)?)? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok(t.mean_all()?)
}

impl ControllerTraining {
    /// Set up stage 1 on cached states: `x` [n·k·d] raw read-layer states with labels `y`
    /// (1 harmful, 0 benign) for training, `xv`, `yv` for validation.
    ///
    /// Errors: as [`crate::intervene::Controller::new`] for the layers, directions and
    /// strength; `Shape` for states whose size does not match the labels; `InvalidArgument`
    /// for non-finite states, labels other than 0/1, a split without both classes, a
    /// negative `weight_reg`, or a bad `train` config.
    pub fn new(
        model: Arc<Model>,
        x: Vec<f32>,
        y: Vec<f32>,
        xv: Vec<f32>,
        yv: Vec<f32>,
        cfg: ControllerConfig,
    ) -> Result<Self> {
        let d = model.d_model();
        let (k, l, h) = (cfg.read_layers.len(), cfg.layers.len(), cfg.hidden);
        let kd = k * d;
        if !(cfg.weight_reg.is_finite() && cfg.weight_reg >= 0.0) {
            return Err(Error::invalid(format!(
                "weight_reg is {}; expected a finite number >= 0",
                cfg.weight_reg
            )));
        }
        cfg.train.validate()?;
        let n = check_states("training", &x, &y, kd)?;
        let nv = check_states("validation", &xv, &yv, kd)?;
        // Per-feature standardisation from the training states.
        let mut mean = vec![0f64; kd];
        for row in x.chunks(kd) {
            mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut var = vec![0f64; kd];
        for row in x.chunks(kd) {
            for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v as f64 - m).powi(2);
            }
        }
        let scale: Vec<f32> = var
            .iter()
            .map(|s| ((s / n as f64).sqrt() as f32).max(1e-6))
            .collect();
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let mut rng = SplitMix64::new(cfg.seed ^ 0xC0417_u64);
        // The weights' biases start at 2 (w = σ(2) ≈ 0.88): the patch starts nearly whole.
        let mut b2 = uniform(1 + l, h, &mut rng);
        b2.iter_mut().skip(1).for_each(|b| *b += 2.0);
        let p = ControllerParams {
            read_layers: cfg.read_layers.clone(),
            layers: cfg.layers.clone(),
            hidden: h,
            mean: mean.clone(),
            scale: scale.clone(),
            w1: uniform(kd * h, kd, &mut rng),
            b1: uniform(h, kd, &mut rng),
            w2: uniform(h * (1 + l), h, &mut rng),
            b2,
            directions: cfg.directions.clone(),
            strength: cfg.strength,
        };
        // The same checks as a controller loaded for inference.
        crate::intervene::Controller::new(p.clone(), model.n_layers(), d, &model.device)?;
        let dev = &model.device;
        let vars = vec![
            Var::from_vec(p.w1, (kd, h), dev)?,
            Var::from_vec(p.b1, h, dev)?,
            Var::from_vec(p.w2, (h, 1 + l), dev)?,
            Var::from_vec(p.b2, 1 + l, dev)?,
        ];
        let names = ["w1", "b1", "w2", "b2"];
        let trainer = Trainer::new(
            names
                .iter()
                .zip(&vars)
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
            cfg.train.clone(),
        )?;
        let std = |v: Vec<f32>, rows: usize| -> Result<Tensor> {
            let t = Tensor::from_vec(v, (rows, kd), dev)?;
            let m = Tensor::from_slice(&mean, kd, dev)?;
            let s = Tensor::from_slice(&scale, kd, dev)?;
            Ok(t.broadcast_sub(&m)?.broadcast_div(&s)?)
        };
        let x = std(x, n)?;
        let xv = std(xv, nv)?;
        let y = Tensor::from_vec(y, n, dev)?;
        let yv = Tensor::from_vec(yv, nv, dev)?;
        let batches = Batches::new(n, cfg.batch_size, cfg.seed)?;
        let dirs = Tensor::from_slice(&cfg.directions, (l, d), dev)?;
        Ok(ControllerTraining {
            model,
            cfg,
            mean,
            scale,
            dirs,
            vars,
            trainer,
            x,
            y,
            xv,
            yv,
            batches,
            epochs: Vec::new(),
            best: None,
            stage2: None,
        })
    }

    fn outputs(&self, x: &Tensor) -> Result<Tensor> {
        let v: Vec<&Tensor> = self.vars.iter().map(|v| v.as_tensor()).collect();
        controller_logits(x, v[0], v[1], v[2], v[3])
    }

    /// Stage-1 loss on standardised states `x` [n, k·d] with labels `y` [n]: (total, bce,
    /// reg).
    fn gate_loss(&self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let o = self.outputs(x)?; // [n, 1 + L]
        let l = self.cfg.layers.len();
        let z = o.narrow(1, 0, 1)?.squeeze(1)?;
        let b = bce(&z, y)?;
        let w = candle_nn::ops::sigmoid(&o.narrow(1, 1, l)?)?;
        let reg = w.affine(-1.0, 1.0)?.sqr()?.mean_all()?;
        let total = (&b + (&reg * self.cfg.weight_reg)?)?;
        Ok((total, b, reg))
    }

    /// One epoch of stage 1 (every training example once, in seeded mini-batches), then
    /// the validation BCE and accuracy; the parameters with the lowest validation BCE so
    /// far are kept aside. `Interrupted` between steps when `cancel` is set.
    pub fn epoch(&mut self, cancel: &Cancel) -> Result<EpochRecord> {
        in_pool(|| {
            let e = self.epochs.len();
            let (mut tot, mut tb, mut tr, mut gn) = (0.0, 0.0, 0.0, 0.0);
            let batches = self.batches.epoch(e as u64);
            let nb = batches.len().max(1) as f64;
            for idx in batches {
                cancel.check()?;
                let ix = Tensor::from_vec(
                    idx.iter().map(|&i| i as u32).collect::<Vec<u32>>(),
                    idx.len(),
                    self.x.device(),
                )?;
                let (x, y) = (self.x.index_select(&ix, 0)?, self.y.index_select(&ix, 0)?);
                let (loss, b, r) = self.gate_loss(&x, &y)?;
                let extra = vec![
                    ("bce".to_string(), b.to_scalar::<f32>()? as f64),
                    ("reg".to_string(), r.to_scalar::<f32>()? as f64),
                ];
                tb += extra[0].1;
                tr += extra[1].1;
                let rec = self.trainer.step_with(move || Ok((loss, extra)))?;
                tot += rec.loss;
                gn += rec.grad_norm;
            }
            let (val_bce, val_acc) = self.validate()?;
            if !val_bce.is_finite() {
                return Err(Error::invalid(format!(
                    "stage 1 diverged in epoch {e}: the validation BCE is {val_bce} (expected \
                     a finite loss; lower lr)"
                )));
            }
            let rec = EpochRecord {
                epoch: e,
                loss: tot / nb,
                bce: tb / nb,
                reg: tr / nb,
                val_bce,
                val_acc,
                grad_norm: gn / nb,
            };
            if self.best.as_ref().is_none_or(|(b, _)| val_bce < *b) {
                let snap = self
                    .vars
                    .iter()
                    .map(|v| Ok(v.as_tensor().detach().copy()?))
                    .collect::<Result<Vec<_>>>()?;
                self.best = Some((val_bce, snap));
            }
            self.epochs.push(rec.clone());
            Ok(rec)
        })
    }

    /// Validation BCE and accuracy (gate > 0.5 on harmful, < 0.5 on benign).
    fn validate(&self) -> Result<(f64, f64)> {
        let o = self.outputs(&self.xv)?;
        let z = o.narrow(1, 0, 1)?.squeeze(1)?;
        let b = bce(&z, &self.yv)?.to_scalar::<f32>()? as f64;
        let zs = z.to_vec1::<f32>()?;
        let ys = self.yv.to_vec1::<f32>()?;
        let right = zs
            .iter()
            .zip(&ys)
            .filter(|(&z, &y)| (z > 0.0) == (y > 0.5))
            .count();
        Ok((b, right as f64 / ys.len().max(1) as f64))
    }

    /// Load the best stage-1 parameters (lowest validation BCE) into the trained ones.
    pub fn restore_best(&mut self) -> Result<()> {
        if let Some((_, snap)) = &self.best {
            for (v, s) in self.vars.iter().zip(snap) {
                v.set(s)?;
            }
        }
        Ok(())
    }

    /// Set up stage 2 (see the module docs) on harmful examples (continuation: a refusal
    /// opening) and benign ones (continuation: the unsteered model's own), computing the
    /// frozen prefix of each. `kl_weight` weighs the benign KL against the harmful CE.
    ///
    /// Errors: `InvalidArgument` for no examples of a kind, an example without prompt or
    /// continuation, a state of the wrong size or non-finite, a bad `kl_weight` or
    /// `train`; `ContextLength` for an example longer than the model's context;
    /// `Interrupted`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_stage2(
        &mut self,
        harmful: Vec<Stage2Example>,
        benign: Vec<Stage2Example>,
        val_harmful: Vec<Stage2Example>,
        val_benign: Vec<Stage2Example>,
        kl_weight: f64,
        train: TrainConfig,
        cancel: &Cancel,
    ) -> Result<()> {
        if !(kl_weight.is_finite() && kl_weight >= 0.0) {
            return Err(Error::invalid(format!(
                "kl_weight is {kl_weight}; expected a finite number >= 0"
            )));
        }
        let m = self.model.clone();
        let kd = self.cfg.read_layers.len() * m.d_model();
        let start = self.cfg.layers.iter().min().copied().unwrap_or(0) + 1;
        let chunk = self.cfg.batch_size.max(8);
        let prep = |ex: Vec<Stage2Example>, what: &str| -> Result<Vec<Cached>> {
            if ex.is_empty() {
                return Err(Error::invalid(format!(
                    "no {what} examples for stage 2; expected at least one"
                )));
            }
            for (i, e) in ex.iter().enumerate() {
                if e.split == 0 || e.split >= e.ids.len() {
                    return Err(Error::invalid(format!(
                        "{what} example {i}: the prompt has {} tokens and the continuation \
                         {}; expected at least one token in each",
                        e.split,
                        e.ids.len().saturating_sub(e.split)
                    )));
                }
                if e.ids.len() > m.cfg.max_context {
                    return Err(Error::ContextLength(format!(
                        "{what} example {i} has {} tokens, longer than the model's context \
                         of {}",
                        e.ids.len(),
                        m.cfg.max_context
                    )));
                }
                if e.state.len() != kd || e.state.iter().any(|v| !v.is_finite()) {
                    return Err(Error::invalid(format!(
                        "{what} example {i}: its read state has {} values (or a non-finite \
                         one); expected {kd} finite values",
                        e.state.len()
                    )));
                }
            }
            let rows: Vec<Vec<u32>> = ex.iter().map(|e| e.ids.clone()).collect();
            let hs = frozen_prefix(&m, &rows, start, chunk, cancel)?;
            let mean = Tensor::from_slice(&self.mean, kd, &m.device)?;
            let scale = Tensor::from_slice(&self.scale, kd, &m.device)?;
            ex.into_iter()
                .zip(hs)
                .map(|(e, h)| {
                    let x = Tensor::from_vec(e.state, kd, &m.device)?
                        .sub(&mean)?
                        .div(&scale)?;
                    Ok(Cached {
                        ids: e.ids,
                        split: e.split,
                        x,
                        h,
                    })
                })
                .collect()
        };
        let harmful = in_pool(|| prep(harmful, "harmful"))?;
        let benign = in_pool(|| prep(benign, "benign"))?;
        let val_harmful = in_pool(|| prep(val_harmful, "validation harmful"))?;
        let val_benign = in_pool(|| prep(val_benign, "validation benign"))?;
        let half = self.cfg.batch_size.div_ceil(2).max(1);
        let params = ["w1", "b1", "w2", "b2"]
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        self.stage2 = Some(Stage2 {
            trainer: Trainer::new(params, train)?,
            hb: Batches::new(harmful.len(), half, self.cfg.seed ^ 0x2)?,
            bb: Batches::new(benign.len(), half, self.cfg.seed ^ 0x3)?,
            harmful,
            benign,
            val_harmful,
            val_benign,
            start,
            kl_weight,
        });
        Ok(())
    }

    /// One stage-2 step on the next half-batch of harmful and of benign examples; the
    /// record carries `ce` (harmful refusal-opening cross-entropy), `kl` (benign),
    /// `gate_harmful` and `gate_benign` (mean gates of the batch).
    pub fn stage2_step(&mut self, cancel: &Cancel) -> Result<StepRecord> {
        let Some(s2) = self.stage2.as_ref() else {
            return Err(Error::invalid(
                "stage 2 has not been set up (start_stage2 first)",
            ));
        };
        let k = s2.trainer.history().len();
        let (hi, bi) = (s2.hb.batch(k), s2.bb.batch(k));
        in_pool(|| {
            let out = {
                let s2 = self
                    .stage2
                    .as_ref()
                    .ok_or_else(|| Error::invalid("stage 2 has not been set up"))?;
                let rows: Vec<&Cached> = hi
                    .iter()
                    .map(|&i| &s2.harmful[i])
                    .chain(bi.iter().map(|&i| &s2.benign[i]))
                    .collect();
                self.stage2_loss(&rows, hi.len(), cancel)
            };
            let s2 = self
                .stage2
                .as_mut()
                .ok_or_else(|| Error::invalid("stage 2 has not been set up"))?;
            s2.trainer.step_with(move || out)
        })
    }

    /// Stage 2's loss on the validation examples (no update), in chunks of the batch
    /// size: the mean `loss`, `ce` and `kl` over chunks.
    pub fn stage2_validate(&self, cancel: &Cancel) -> Result<Vec<(String, f64)>> {
        let s2 = self
            .stage2
            .as_ref()
            .ok_or_else(|| Error::invalid("stage 2 has not been set up (start_stage2 first)"))?;
        let half = self.cfg.batch_size.div_ceil(2).max(1);
        in_pool(|| {
            let mut sums: Vec<(String, f64, usize)> = Vec::new();
            let mut add = |k: &str, v: f64| match sums.iter_mut().find(|(n, _, _)| n == k) {
                Some(e) => {
                    e.1 += v;
                    e.2 += 1;
                }
                None => sums.push((k.to_string(), v, 1)),
            };
            let nh = s2.val_harmful.len().div_ceil(half);
            let nb = s2.val_benign.len().div_ceil(half);
            for c in 0..nh.max(nb) {
                let part = |v: &'_ [Cached]| -> Vec<usize> {
                    (c * half..((c + 1) * half).min(v.len())).collect()
                };
                let (hi, bi) = (part(&s2.val_harmful), part(&s2.val_benign));
                let rows: Vec<&Cached> = hi
                    .iter()
                    .map(|&i| &s2.val_harmful[i])
                    .chain(bi.iter().map(|&i| &s2.val_benign[i]))
                    .collect();
                let (loss, rec) = self.stage2_loss(&rows, hi.len(), cancel)?;
                add("loss", loss.to_scalar::<f32>()? as f64);
                for (k, v) in rec {
                    add(&k, v);
                }
            }
            Ok(sums
                .into_iter()
                .map(|(k, v, n)| (k, v / n as f64))
                .collect())
        })
    }

    /// Stage 2's loss on `rows` (the first `nh` harmful, the rest benign).
    fn stage2_loss(
        &self,
        rows: &[&Cached],
        nh: usize,
        cancel: &Cancel,
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        let s2 = self
            .stage2
            .as_ref()
            .ok_or_else(|| Error::invalid("stage 2 has not been set up"))?;
        let m = &self.model;
        let dev = &m.device;
        let d = m.d_model();
        let l = self.cfg.layers.len();
        let xs: Vec<&Tensor> = rows.iter().map(|c| &c.x).collect();
        let x = Tensor::stack(&xs, 0)?; // [b, k·d]
        let o = self.outputs(&x)?;
        let g = candle_nn::ops::sigmoid(&o.narrow(1, 0, 1)?)?; // [b, 1]
        let w = candle_nn::ops::sigmoid(&o.narrow(1, 1, l)?)?; // [b, L]
        let coef = (w.broadcast_mul(&g)? * self.cfg.strength as f64)?; // [b, L]
                                                                       // Each row's patch at each steered layer: coef[r, i] · d_i, differentiable.
        let patches = coef.unsqueeze(2)?.broadcast_mul(&self.dirs.unsqueeze(0)?)?; // [b, L, d]
        let steer: Vec<Vec<Intervention>> = (0..rows.len())
            .map(|r| {
                self.cfg
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(i, &layer)| {
                        let v = patches.get(r)?.get(i)?; // [d]
                        Ok(Intervention::add(layer, v, Positions::Last))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let splits: Vec<usize> = rows.iter().map(|c| c.split).collect();
        let hs: Vec<&Tensor> = rows.iter().map(|c| &c.h).collect();
        let (out, layout) = steered_from_prefix(m, &hs, splits, &steer, s2.start, cancel)?;
        let w_ = layout.width;
        // The positions that predict continuation tokens, per part.
        let pick = |range: std::ops::Range<usize>| -> (Vec<u32>, Vec<u32>) {
            let (mut p, mut t) = (Vec::new(), Vec::new());
            for r in range {
                let c = rows[r];
                let pad = layout.pad(r);
                for j in c.split - 1..c.ids.len() - 1 {
                    p.push((r * w_ + pad + j) as u32);
                    t.push(c.ids[j + 1]);
                }
            }
            (p, t)
        };
        let flat = out.reshape((rows.len() * w_, d))?;
        let mut loss = Tensor::zeros((), DType::F32, dev)?;
        let mut rec = Vec::new();
        if nh > 0 {
            let (p, t) = pick(0..nh);
            let n = p.len();
            let sel = flat.index_select(&Tensor::from_vec(p, n, dev)?, 0)?;
            let logits = m.logits_all(&sel, Mode::Gradient)?; // [n, V]
            let lp = losses::log_softmax_rows(&logits)?;
            let t = Tensor::from_vec(t, (n, 1), dev)?;
            let ce = (lp.gather(&t, 1)?.sum_all()? * (-1.0 / n as f64))?;
            rec.push(("ce".to_string(), ce.to_scalar::<f32>()? as f64));
            loss = (loss + ce)?;
        }
        if nh < rows.len() {
            let (p, _) = pick(nh..rows.len());
            let n = p.len();
            let sel = flat.index_select(&Tensor::from_vec(p.clone(), n, dev)?, 0)?;
            let logits = m.logits_all(&sel, Mode::Gradient)?; // [n, V]
                                                              // The unsteered reference at the same positions, without gradients.
            let bh: Vec<&Tensor> = rows[nh..].iter().map(|c| &c.h).collect();
            let (ref_out, ref_layout) =
                forward_from_prefix(m, &bh, s2.start, &mut NoHooks, Mode::Inference)?;
            let rw = ref_layout.width;
            let mut rp = Vec::with_capacity(n);
            for (r, c) in rows[nh..].iter().enumerate() {
                let pad = ref_layout.pad(r);
                for j in c.split - 1..c.ids.len() - 1 {
                    rp.push((r * rw + pad + j) as u32);
                }
            }
            let rsel = ref_out
                .reshape((bh.len() * rw, d))?
                .index_select(&Tensor::from_vec(rp, n, dev)?, 0)?;
            let rl = m.logits_all(&rsel, Mode::Inference)?.detach();
            let rlp = candle_nn::ops::log_softmax(&rl, D::Minus1)?;
            let kl = losses::kl_to_reference(&logits, &rlp)?;
            rec.push(("kl".to_string(), kl.to_scalar::<f32>()? as f64));
            loss = (loss + (kl * s2.kl_weight)?)?;
        }
        let gv = g.squeeze(1)?.to_vec1::<f32>()?;
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        if nh > 0 {
            rec.push(("gate_harmful".into(), mean(&gv[..nh])));
        }
        if nh < gv.len() {
            rec.push(("gate_benign".into(), mean(&gv[nh..])));
        }
        Ok((loss, rec))
    }

    /// The controller's parameters now (the trained values, the standardisation, the
    /// layers, directions and strength).
    pub fn params(&self) -> Result<ControllerParams> {
        let v = |i: usize| -> Result<Vec<f32>> {
            Ok(self.vars[i].as_tensor().flatten_all()?.to_vec1::<f32>()?)
        };
        Ok(ControllerParams {
            read_layers: self.cfg.read_layers.clone(),
            layers: self.cfg.layers.clone(),
            hidden: self.cfg.hidden,
            mean: self.mean.clone(),
            scale: self.scale.clone(),
            w1: v(0)?,
            b1: v(1)?,
            w2: v(2)?,
            b2: v(3)?,
            directions: self.cfg.directions.clone(),
            strength: self.cfg.strength,
        })
    }

    /// Snapshot of the trained parameters (to put back with [`Self::set_params`]).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        self.vars
            .iter()
            .map(|v| Ok(v.as_tensor().detach().copy()?))
            .collect()
    }

    pub fn set_params(&self, snap: &[Tensor]) -> Result<()> {
        for (v, s) in self.vars.iter().zip(snap) {
            v.set(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
