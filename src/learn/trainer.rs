//! The training loop's state: parameters, optimiser, clipping, history, best parameters
//! (the seeded mini-batch sampler is [`crate::learn::batches::Batches`]).
//!
//! The trainer knows nothing of models. The caller owns the forward pass and hands each
//! step a closure that builds the loss from the trainer's `Var`s:
//!
//! ```ignore
//! let mut tr = Trainer::new(vec![("layer.15".into(), v.clone())], TrainConfig::default())?
//!     .with_cancel(cancel);
//! let batches = Batches::new(n_examples, 8, seed)?;
//! for step in 0..steps {
//!     let idx = batches.batch(step);
//!     let rec = tr.step(|| model_loss(&idx, v.as_tensor()))?; // Err(Interrupted) on Ctrl-C
//! }
//! tr.restore_best()?;
//! ```
//!
//! One step: check the cancel flag, evaluate the loss, refuse a non-finite loss, run
//! `loss.backward()`, refuse a missing or non-finite gradient, check the flag again,
//! remember the parameters if this loss is the lowest so far, clip the gradients to a
//! global L2 norm, and let the optimiser update the `Var`s in place (candle-nn's `AdamW`
//! with `ParamsAdamW`, or `SGD`). A step that fails or is cancelled changes nothing: no
//! update, no history record.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap, SGD};

use crate::cancel::Cancel;
use crate::error::{Error, Result};

/// Which candle-nn optimiser updates the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// `candle_nn::AdamW` (decoupled weight decay, bias-corrected moments).
    AdamW,
    /// `candle_nn::SGD` (plain gradient descent, no momentum; `weight_decay` must be 0).
    Sgd,
}

/// Hyperparameters of a [`Trainer`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Learning rate, finite and > 0.
    pub lr: f64,
    /// AdamW's decoupled weight decay (`θ ← θ (1 − lr·wd)` each step), finite and >= 0.
    pub weight_decay: f64,
    /// AdamW's moment decay rates, each in [0, 1).
    pub beta1: f64,
    pub beta2: f64,
    /// AdamW's denominator term, finite and > 0.
    pub eps: f64,
    /// Clip the gradients to this global L2 norm (over every parameter together) before
    /// the update; `None` does not clip. Finite and > 0.
    pub max_grad_norm: Option<f64>,
    pub optimizer: OptimizerKind,
}

impl Default for TrainConfig {
    /// AdamW with PyTorch's defaults except `lr = 1e-2` and `weight_decay = 0` (a steering
    /// vector has no reason to shrink towards 0), clipped to a norm of 1.
    fn default() -> Self {
        Self {
            lr: 1e-2,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: Some(1.0),
            optimizer: OptimizerKind::AdamW,
        }
    }
}

/// `Err(InvalidArgument)` naming `name`, its value and what was expected.
fn check(ok: bool, name: &str, value: f64, expected: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{name} is {value}; expected {expected}"
        )))
    }
}

impl TrainConfig {
    /// Check every field. Errors: [`Error::InvalidArgument`] naming the field, its value
    /// and the range expected.
    pub fn validate(&self) -> Result<()> {
        let lr = self.lr;
        check(lr.is_finite() && lr > 0.0, "lr", lr, "a finite number > 0")?;
        let wd = self.weight_decay;
        check(
            wd.is_finite() && wd >= 0.0,
            "weight_decay",
            wd,
            "a finite number >= 0",
        )?;
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            check((0.0..1.0).contains(&b), name, b, "a number in [0, 1)")?;
        }
        let eps = self.eps;
        check(
            eps.is_finite() && eps > 0.0,
            "eps",
            eps,
            "a finite number > 0",
        )?;
        if let Some(m) = self.max_grad_norm {
            check(
                m.is_finite() && m > 0.0,
                "max_grad_norm",
                m,
                "a finite number > 0 (or None to not clip)",
            )?;
        }
        if self.optimizer == OptimizerKind::Sgd {
            check(
                wd == 0.0,
                "weight_decay",
                wd,
                "0 with the SGD optimizer (candle-nn's SGD has no weight decay)",
            )?;
        }
        Ok(())
    }

    fn adamw(&self) -> ParamsAdamW {
        ParamsAdamW {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// 0-based index of the step (= the number of steps before it).
    pub step: usize,
    /// The loss at the parameters before this step's update.
    pub loss: f64,
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// The learning rate the update used.
    pub lr: f64,
    /// Further numbers the loss closure reported (loss terms, accuracy...), in its order.
    pub extra: Vec<(String, f64)>,
}

enum Opt {
    AdamW(AdamW),
    Sgd(SGD),
}

impl Opt {
    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        match self {
            Opt::AdamW(o) => o.step(grads)?,
            Opt::Sgd(o) => o.step(grads)?,
        }
        Ok(())
    }
    fn set_lr(&mut self, lr: f64) {
        match self {
            Opt::AdamW(o) => o.set_learning_rate(lr),
            Opt::Sgd(o) => o.set_learning_rate(lr),
        }
    }
}

/// The lowest loss seen and the parameter values that produced it.
struct Best {
    step: usize,
    loss: f64,
    values: Vec<Tensor>,
}

/// A copy of `v`'s value that later updates of `v` do not change.
fn snapshot(v: &Var) -> Result<Tensor> {
    Ok(v.as_tensor().detach().copy()?)
}

/// Parameters, optimiser state, history and best parameters of one training run.
pub struct Trainer {
    params: Vec<(String, Var)>,
    opt: Opt,
    cfg: TrainConfig,
    history: Vec<StepRecord>,
    best: Option<Best>,
    cancel: Cancel,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("params", &self.params)
            .field("cfg", &self.cfg)
            .field("steps", &self.history.len())
            .field("best_step", &self.best.as_ref().map(|b| b.step))
            .finish()
    }
}

impl Trainer {
    /// A trainer for `params` (name, `Var`), in the order given (the order of
    /// [`Trainer::best_params`] and of the gradient-norm sum).
    ///
    /// Errors: [`Error::InvalidArgument`] for an invalid `cfg` (see
    /// [`TrainConfig::validate`]), no parameters, an empty or repeated name, a parameter
    /// that is not F32/F64, or one holding NaN/inf; [`Error::Shape`] for a parameter with no
    /// elements.
    pub fn new(params: Vec<(String, Var)>, cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        if params.is_empty() {
            return Err(Error::invalid(
                "params is empty; expected at least one (name, Var) to train",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, v) in &params {
            if name.is_empty() {
                return Err(Error::invalid("a parameter has an empty name"));
            }
            if !seen.insert(name.as_str()) {
                return Err(Error::invalid(format!(
                    "parameter name '{name}' appears twice; expected unique names"
                )));
            }
            if !matches!(v.dtype(), DType::F32 | DType::F64) {
                return Err(Error::invalid(format!(
                    "parameter '{name}' has dtype {:?}; expected F32 (or F64)",
                    v.dtype()
                )));
            }
            if v.elem_count() == 0 {
                return Err(Error::shape(format!(
                    "parameter '{name}' has shape {:?} with no elements",
                    v.dims()
                )));
            }
            let s = v.as_tensor().to_dtype(DType::F64)?.abs()?.sum_all()?;
            if !s.to_scalar::<f64>()?.is_finite() {
                return Err(Error::invalid(format!(
                    "parameter '{name}' holds NaN or inf; expected finite initial values"
                )));
            }
        }
        let vars: Vec<Var> = params.iter().map(|(_, v)| v.clone()).collect();
        let opt = match cfg.optimizer {
            OptimizerKind::AdamW => Opt::AdamW(AdamW::new(vars, cfg.adamw())?),
            OptimizerKind::Sgd => Opt::Sgd(SGD::new(vars, cfg.lr)?),
        };
        Ok(Self {
            params,
            opt,
            cfg,
            history: Vec::new(),
            best: None,
            cancel: Cancel::new(),
        })
    }

    /// A trainer for every `Var` of a candle-nn `VarMap`, ordered by name (a `VarMap`
    /// is a hash map; sorting keeps runs deterministic). Errors as [`Trainer::new`].
    pub fn from_varmap(map: &VarMap, cfg: TrainConfig) -> Result<Self> {
        let mut params: Vec<(String, Var)> = map
            .data()
            .lock()
            .map_err(|_| Error::invalid("the VarMap's lock is poisoned"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self::new(params, cfg)
    }

    /// Stop at the next step boundary once `cancel` is set (see [`Trainer::step`]).
    pub fn with_cancel(mut self, cancel: Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    /// One training step with the loss from `loss_fn` (a scalar: shape `[]`, F32/F64).
    /// See [`Trainer::step_with`].
    pub fn step(&mut self, loss_fn: impl FnOnce() -> Result<Tensor>) -> Result<StepRecord> {
        self.step_with(|| Ok((loss_fn()?, Vec::new())))
    }

    /// One training step; `loss_fn` returns the loss (a scalar: shape `[]`, F32/F64,
    /// computed from the trainer's `Var`s) and extra numbers to record with it.
    ///
    /// Errors (the parameters, optimiser state, history and best parameters are then
    /// unchanged): [`Error::Interrupted`] when the cancel flag is set before the loss is
    /// evaluated or before the update is applied; whatever `loss_fn` returns;
    /// [`Error::Shape`] / [`Error::InvalidArgument`] for a loss that is not a float
    /// scalar; [`Error::InvalidArgument`] for a NaN/inf loss, a parameter the loss does not
    /// depend on (no gradient), or a NaN/inf gradient.
    pub fn step_with(
        &mut self,
        loss_fn: impl FnOnce() -> Result<(Tensor, Vec<(String, f64)>)>,
    ) -> Result<StepRecord> {
        self.step_adjusted(loss_fn, |_, _| Ok(()))
    }

    /// As [`Trainer::step_with`], with `adjust` called on the parameters and their
    /// gradients right after the backward pass (before the norm, clipping and update):
    /// it may replace a gradient in the store, e.g. by a pseudo-gradient of a
    /// non-smooth penalty the loss leaves out.
    pub fn step_adjusted(
        &mut self,
        loss_fn: impl FnOnce() -> Result<(Tensor, Vec<(String, f64)>)>,
        adjust: impl FnOnce(&[(String, Var)], &mut GradStore) -> Result<()>,
    ) -> Result<StepRecord> {
        let step = self.history.len();
        self.cancel.check()?;
        let (loss, extra) = loss_fn()?;
        if !loss.dims().is_empty() {
            return Err(Error::shape(format!(
                "training step {step}: the loss has shape {:?}; expected a scalar (shape [])",
                loss.dims()
            )));
        }
        if !matches!(loss.dtype(), DType::F32 | DType::F64) {
            return Err(Error::invalid(format!(
                "training step {step}: the loss has dtype {:?}; expected F32 (or F64)",
                loss.dtype()
            )));
        }
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(Error::invalid(format!(
                "training step {step}: the loss is {value}; the parameters were not updated \
                 (lower lr, or check the data)"
            )));
        }
        let mut grads = loss.backward()?;
        adjust(&self.params, &mut grads)?;
        let mut sq = 0f64;
        let mut gs = Vec::with_capacity(self.params.len());
        for (name, v) in &self.params {
            let Some(g) = grads.get(v.as_tensor()) else {
                return Err(Error::invalid(format!(
                    "training step {step}: parameter '{name}' got no gradient: the loss does \
                     not depend on it"
                )));
            };
            let s = g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
            if !s.is_finite() {
                return Err(Error::invalid(format!(
                    "training step {step}: the gradient of parameter '{name}' holds NaN or \
                     inf (loss {value}); the parameters were not updated"
                )));
            }
            sq += s;
            gs.push(g.clone());
        }
        let grad_norm = sq.sqrt();
        self.cancel.check()?;
        if self.best.as_ref().is_none_or(|b| value < b.loss) {
            let values = self
                .params
                .iter()
                .map(|(_, v)| snapshot(v))
                .collect::<Result<Vec<_>>>()?;
            self.best = Some(Best {
                step,
                loss: value,
                values,
            });
        }
        if let Some(max) = self.cfg.max_grad_norm {
            if grad_norm > max {
                // As torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6).
                let scale = max / (grad_norm + 1e-6);
                for ((_, v), g) in self.params.iter().zip(gs) {
                    grads.insert(v.as_tensor(), (g * scale)?);
                }
            }
        }
        self.opt.step(&grads)?;
        let rec = StepRecord {
            step,
            loss: value,
            grad_norm,
            lr: self.cfg.lr,
            extra,
        };
        self.history.push(rec.clone());
        Ok(rec)
    }

    /// One record per completed step, in order.
    pub fn history(&self) -> &[StepRecord] {
        &self.history
    }

    /// The parameters being trained (their current values).
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The step with the lowest loss so far and that loss; `None` before the first step.
    ///
    /// The loss of a step is measured on that step's mini-batch, so with batches smaller
    /// than the data set "best" is the best batch loss, not the best loss on the whole set.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.best.as_ref().map(|b| (b.step, b.loss))
    }

    /// Copies of the parameter values that gave the lowest loss (those before that
    /// step's update), by name in the trainer's order; the current values before the first
    /// step.
    pub fn best_params(&self) -> Result<Vec<(String, Tensor)>> {
        match &self.best {
            Some(b) => Ok(self
                .params
                .iter()
                .zip(&b.values)
                .map(|((name, _), t)| (name.clone(), t.clone()))
                .collect()),
            None => self.current_params(),
        }
    }

    /// Copies of the current parameter values, by name.
    pub fn current_params(&self) -> Result<Vec<(String, Tensor)>> {
        self.params
            .iter()
            .map(|(name, v)| Ok((name.clone(), snapshot(v)?)))
            .collect()
    }

    /// Set every `Var` to its best value (no-op before the first step). The optimiser's
    /// moments are not rewound.
    pub fn restore_best(&self) -> Result<()> {
        if let Some(b) = &self.best {
            for ((_, v), t) in self.params.iter().zip(&b.values) {
                v.set(t)?;
            }
        }
        Ok(())
    }

    /// Change the learning rate of the following steps (for a schedule).
    /// Errors: [`Error::InvalidArgument`] unless finite and > 0.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        check(lr.is_finite() && lr > 0.0, "lr", lr, "a finite number > 0")?;
        self.cfg.lr = lr;
        self.opt.set_lr(lr);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
