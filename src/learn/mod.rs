//! Training learned steering modules: the model-independent half.
//!
//! - [`losses`]: differentiable losses on logits (continuation cross-entropy, sequence
//!   log-probability, logit difference, KL to the unsteered distribution, L1).
//! - [`trainer`]: parameters as candle `Var`s, AdamW (or SGD) from candle-nn, gradient
//!   clipping, per-step history, best-parameter tracking and cancellation between steps.
//! - [`batches`]: the seeded mini-batch sampler.
//! - [`scalars`]: activation scaling (Stoehr et al. 2024): learned scalars, the additive
//!   baseline and dynamic scalars, as site modules and their training run.
//! - [`artifact`]: a trained module on disk (safetensors + JSON metadata bound to the
//!   model fingerprint).
//!
//! The forward pass that turns parameters into logits lives with the model; a step is
//! `trainer.step(|| loss_from_a_forward())`.

pub mod artifact;
pub mod batches;
pub mod controller;
mod fused;
pub mod hyper;
pub mod losses;
mod prefix;
pub mod scalars;
pub mod trainer;
pub mod vector;
