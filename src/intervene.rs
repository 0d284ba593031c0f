//! Interventions as data: which operation, at which site, on which positions, for which
//! batch row. A [`SteeringPlan`] groups them by site; the forward's hooks apply it at
//! each site, so no callback runs inside the loop.
//!
//! The operations on an activation h [d] at a hit position:
//! - `add`: h <- h + v (the coefficient folded into v);
//! - `scale`: h <- h * (1 + alpha), alpha one value or one per position (activation
//!   scaling, Stoehr et al. 2024);
//! - `project_out`: h <- h - (h . u) u for a unit direction u (directional ablation,
//!   Arditi et al. 2024);
//! - `clamp`: h <- h + (c - h . u) u, the projection on u set to c;
//! - a learned module ([`SiteModule`]) that computes its edit from h inside the forward.
//!
//! Each has an inference form (in place on the CPU values, the fastest) and a gradient
//! form (candle ops, differentiable in the operation's tensors and in h); the tests hold
//! them equal.

use std::fmt;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::{Mode, Site, StepCtx};

pub mod controller;
pub use controller::{Controller, ControllerParams, ControllerRun};

/// Which positions of a row an intervention touches.
#[derive(Debug, Clone, PartialEq)]
pub enum Positions {
    /// Every prompt position and every generated token.
    All,
    /// Prompt positions only.
    Prompt,
    /// Generated tokens only.
    Generated,
    /// The last prompt position and every generated token: each position whose output
    /// predicts the next token.
    Last,
    /// Explicit positions in the unpadded sequence; negative values count from the end of
    /// the prompt. Decode step k is position `len(prompt) + k`.
    Indices(Vec<i64>),
    /// Every position from this one on, prompt and generated (`"all_but_first"` is
    /// `From(1)`: every position except a BOS token at 0, HyperSteer's convention).
    From(usize),
}

impl Positions {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Positions::All),
            "prompt" => Ok(Positions::Prompt),
            "generated" => Ok(Positions::Generated),
            "last" => Ok(Positions::Last),
            "all_but_first" => Ok(Positions::From(1)),
            other => Err(Error::invalid(format!(
                "unknown positions '{other}' (expected 'all', 'all_but_first', 'prompt', \
                 'generated', 'last' or a list of integer positions)"
            ))),
        }
    }

    fn hits(&self, pos: usize, prompt_len: usize) -> bool {
        match self {
            Positions::All => true,
            Positions::Prompt => pos < prompt_len,
            Positions::Generated => pos >= prompt_len,
            Positions::Last => pos + 1 >= prompt_len,
            Positions::Indices(ix) => ix
                .iter()
                .any(|&i| resolve_index(i, prompt_len) == Some(pos)),
            Positions::From(k) => pos >= *k,
        }
    }

    /// Check that these positions touch a token of a row with `len` prompt tokens
    /// whose model reads `extra` generated tokens after the prompt (0 for a prefill
    /// only: capture, logits, token_logprobs; `max_new_tokens - 1` for generation, as
    /// the last new token is sampled but never fed). Nothing is skipped silently.
    pub fn check(&self, row: usize, len: usize, extra: usize) -> Result<()> {
        match self {
            Positions::Generated if extra == 0 => Err(Error::invalid(format!(
                "row {row}: steering positions 'generated' touch no token here: this call \
                 reads only the prompt ({len} tokens) and no generated token (capture, \
                 logits, token_logprobs, or generate with max_new_tokens=1); expected \
                 'all', 'prompt', 'last' or prompt indices"
            ))),
            Positions::From(k) if *k >= len.saturating_add(extra) => Err(Error::invalid(format!(
                "row {row}: steering positions from {k} on touch no token here: the row has \
                 {len} prompt tokens and the model reads {extra} generated token(s) after \
                 them; expected a prompt of at least {} tokens, or 'all'",
                k + 1
            ))),
            Positions::Indices(ix) if ix.is_empty() => Err(Error::invalid(format!(
                "row {row}: steering positions is an empty list; expected at least one index"
            ))),
            Positions::Indices(ix) => {
                let end = len.saturating_add(extra);
                match ix
                    .iter()
                    .find(|&&i| resolve_index(i, len).is_none_or(|p| p >= end))
                {
                    None => Ok(()),
                    Some(&i) => {
                        let gen = if extra == 0 {
                            String::from("this call reads no generated token")
                        } else {
                            format!(
                                "or {len}..{} for the {extra} generated token(s) the model \
                                 reads",
                                end - 1
                            )
                        };
                        Err(Error::out_of_range(format!(
                            "row {row}: steering position {i} is outside the row, which has \
                             {len} prompt tokens (expected 0..{} or -{len}..-1, {gen})",
                            len.saturating_sub(1)
                        )))
                    }
                }
            }
            _ => Ok(()),
        }
    }
}

/// Index `i` of a row with `len` prompt tokens (negative: from the end of the prompt)
/// as a position from the row's start, or None when it lies before the start.
pub fn resolve_index(i: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let p = if i < 0 { i.checked_add(len)? } else { i };
    usize::try_from(p).ok()
}

/// A learned edit that computes its output from the activation itself, run by the
/// forward at its site (the learned-steering modules implement it).
pub trait SiteModule: Send + Sync {
    /// A short name for messages ("dynamic_scaling", "controller", ...).
    fn name(&self) -> &str;

    /// The edited activations of one step: `h` [b, t, d], `mask` [b, t, 1] (f32, 1 at
    /// the positions this module touches in each row, 0 elsewhere). Must leave the
    /// unmasked positions unchanged. In `Mode::Gradient` the result must be
    /// differentiable in `h` and in the module's parameters.
    fn apply(&self, h: &Tensor, mask: &Tensor, ctx: &StepCtx) -> Result<Tensor>;

    /// Check that this module can run on row `row` of a call whose prompt has
    /// `prompt_len` tokens, on a model of width `d_model` (called once per call, when the
    /// plan is built). A module tied to a token layout or a width refuses others here.
    fn check(&self, row: usize, prompt_len: usize, d_model: usize) -> Result<()> {
        let _ = (row, prompt_len, d_model);
        Ok(())
    }
}

/// What an intervention does at its site.
#[derive(Clone)]
pub enum Op {
    /// h + v, v [d].
    Add(Tensor),
    /// h * (1 + alpha), alpha [1] (every hit position) or [n] (position p takes
    /// alpha[p]; n must cover every position the row reads).
    Scale(Tensor),
    /// h - (h . u) u, u [d] of unit norm.
    ProjectOut(Tensor),
    /// h + (value - h . u) u, u [d] of unit norm.
    Clamp { dir: Tensor, value: f32 },
    /// A learned module.
    Module(Arc<dyn SiteModule>),
    /// The weighted steering controller: it acts on several layers at once and needs the
    /// generation loop (it is taken out of the plan into a [`ControllerRun`]); its
    /// intervention's site and positions are not used.
    Controller(Arc<Controller>),
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Add(_) => "add",
            Op::Scale(_) => "scale",
            Op::ProjectOut(_) => "project_out",
            Op::Clamp { .. } => "clamp",
            Op::Module(_) => "module",
            Op::Controller(_) => "controller",
        }
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Module(m) => write!(f, "Module({})", m.name()),
            Op::Clamp { value, .. } => write!(f, "Clamp(value = {value})"),
            other => write!(f, "{}", other.name()),
        }
    }
}

/// One operation at one site on some positions of one row.
#[derive(Debug, Clone)]
pub struct Intervention {
    pub site: Site,
    pub positions: Positions,
    pub op: Op,
}

impl Intervention {
    /// Run `controller` on this row (during generation; see [`controller`]).
    pub fn controller(controller: Arc<Controller>) -> Self {
        let site = Site::ResidPost(controller.layers().first().copied().unwrap_or(0));
        Intervention {
            site,
            positions: Positions::Last,
            op: Op::Controller(controller),
        }
    }

    /// Add `vector` [d_model] to the residual stream after block `layer` (the classic
    /// steering vector).
    pub fn add(layer: usize, vector: Tensor, positions: Positions) -> Self {
        Intervention {
            site: Site::ResidPost(layer),
            positions,
            op: Op::Add(vector),
        }
    }
}

/// Interventions for one batch row, applied in order at each site.
pub type RowSteering = Vec<Intervention>;

/// The k-th intervention of each row at one site (rows without one hold None).
struct Slot {
    rows: Vec<Option<RowOp>>,
}

/// One row's operation with its parameters read out for the inference form.
struct RowOp {
    op: Op,
    positions: Positions,
    /// `Add`: v; `Scale`: alpha; `ProjectOut` / `Clamp`: u (f32 values).
    values: Vec<f32>,
}

/// The per-row interventions of one call, grouped by site.
pub struct SteeringPlan {
    per_site: Vec<(Site, Vec<Slot>)>,
    /// Each row's prompt length for `positions` when it is not the batch layout's (a
    /// training sequence is prompt + completion fed at once; the completion plays the
    /// generated tokens).
    prompt_lens: Option<Vec<usize>>,
    /// Each row's steering controller (at most one per row), for the generation loop.
    controllers: Vec<Option<Arc<Controller>>>,
}

impl fmt::Debug for SteeringPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sites: Vec<String> = self
            .per_site
            .iter()
            .map(|(s, slots)| format!("{s} x{}", slots.len()))
            .collect();
        write!(f, "SteeringPlan({})", sites.join(", "))
    }
}

/// Tolerance on the norm of a `project_out` / `clamp` direction.
const UNIT_TOL: f32 = 1e-3;

fn finite_values(t: &Tensor, what: &dyn Fn() -> String) -> Result<Vec<f32>> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if let Some(j) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(format!(
            "{} has a non-finite value ({}) at index {j}; expected finite numbers",
            what(),
            v[j]
        )));
    }
    Ok(v)
}

impl SteeringPlan {
    /// Check and group per-row interventions. `rows` and `lens` (each row's prompt
    /// length) have one entry per batch row; `extra` is the number of generated tokens
    /// the model reads after each prompt (see [`Positions::check`]).
    pub fn new(
        rows: &[RowSteering],
        lens: &[usize],
        extra: usize,
        n_layers: usize,
        d_model: usize,
        device: &Device,
    ) -> Result<Self> {
        let b = rows.len();
        if lens.len() != b {
            return Err(Error::invalid(format!(
                "steering has {b} rows but the batch has {} prompts",
                lens.len()
            )));
        }
        let mut checked: Vec<Vec<(Site, RowOp)>> = Vec::with_capacity(b);
        let mut controllers: Vec<Option<Arc<Controller>>> = vec![None; b];
        for (r, row) in rows.iter().enumerate() {
            let mut ops = Vec::with_capacity(row.len());
            for iv in row {
                if let Op::Controller(c) = &iv.op {
                    c.check_model(n_layers, d_model)?;
                    if controllers[r].replace(c.clone()).is_some() {
                        return Err(Error::invalid(format!(
                            "row {r} has two steering controllers; expected at most one per \
                             row"
                        )));
                    }
                    continue;
                }
                ops.push((
                    iv.site,
                    check(iv, r, lens[r], extra, n_layers, d_model, device)?,
                ));
            }
            checked.push(ops);
        }
        let mut sites: Vec<Site> = checked.iter().flatten().map(|(s, _)| *s).collect();
        sites.sort();
        sites.dedup();
        let mut per_site = Vec::with_capacity(sites.len());
        let mut checked: Vec<std::collections::VecDeque<(Site, RowOp)>> =
            checked.into_iter().map(Into::into).collect();
        for site in sites {
            let mut slots = Vec::new();
            loop {
                // The next intervention of each row at this site, in the row's order.
                let mut any = false;
                let rows: Vec<Option<RowOp>> = checked
                    .iter_mut()
                    .map(|q| {
                        let i = q.iter().position(|(s, _)| *s == site)?;
                        any = true;
                        q.remove(i).map(|(_, op)| op)
                    })
                    .collect();
                if !any {
                    break;
                }
                slots.push(Slot { rows });
            }
            per_site.push((site, slots));
        }
        Ok(SteeringPlan {
            per_site,
            prompt_lens: None,
            controllers,
        })
    }

    /// No operation at any site and no controller.
    pub fn is_empty(&self) -> bool {
        self.per_site.is_empty() && !self.has_controllers()
    }

    pub fn has_controllers(&self) -> bool {
        self.controllers.iter().any(Option::is_some)
    }

    /// Move the rows' controllers out of the plan (for the generation loop's
    /// [`ControllerRun`]).
    pub fn take_controllers(&mut self) -> Vec<Option<Arc<Controller>>> {
        let b = self.controllers.len();
        std::mem::replace(&mut self.controllers, vec![None; b])
    }

    /// Apply this plan's operations at `site` to h [b, t, d] on this step.
    /// Resolve positions against these prompt lengths (one per row) instead of the rows'
    /// lengths in the batch: for sequences that carry their continuation (training),
    /// built with `lens` = prompt lengths and `extra` = the longest continuation.
    pub fn with_prompt_lens(mut self, lens: Vec<usize>) -> Self {
        self.prompt_lens = Some(lens);
        self
    }

    pub fn apply(&self, site: Site, h: Tensor, ctx: &StepCtx) -> Result<Tensor> {
        let Some((_, slots)) = self.per_site.iter().find(|(s, _)| *s == site) else {
            return Ok(h);
        };
        let mut h = h;
        for slot in slots {
            h = slot.apply(h, ctx, self.prompt_lens.as_deref(), site)?;
        }
        Ok(h)
    }
}

/// Validate one intervention of row `r` and read its parameters.
fn check(
    iv: &Intervention,
    r: usize,
    len: usize,
    extra: usize,
    n_layers: usize,
    d: usize,
    device: &Device,
) -> Result<RowOp> {
    iv.positions.check(r, len, extra)?;
    if let Some(l) = iv.site.layer() {
        if l >= n_layers {
            return Err(Error::out_of_range(format!(
                "row {r}: steering layer {l} is out of range for a model with {n_layers} layers"
            )));
        }
    }
    let site = iv.site;
    let vector = |t: &Tensor, what: &str| -> Result<Vec<f32>> {
        let dims = t.dims();
        if dims != [d] {
            return Err(Error::shape(format!(
                "row {r}: {what} for {site} has shape {dims:?}, expected [{d}] (this \
                 model's d_model)"
            )));
        }
        finite_values(t, &|| format!("row {r}: {what} for {site}"))
    };
    let unit = |t: &Tensor, op: &str| -> Result<Vec<f32>> {
        let v = vector(t, &format!("{op} direction"))?;
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if (norm - 1.0).abs() > UNIT_TOL {
            return Err(Error::invalid(format!(
                "row {r}: {op} direction for {site} has norm {norm}, expected a unit \
                 direction (norm 1 within {UNIT_TOL}); divide it by its norm first"
            )));
        }
        Ok(v)
    };
    let values = match &iv.op {
        Op::Add(v) => vector(v, "steering vector")?,
        Op::ProjectOut(u) => unit(u, "project_out")?,
        Op::Clamp { dir, value } => {
            if !value.is_finite() {
                return Err(Error::invalid(format!(
                    "row {r}: clamp value for {site} is {value}; expected a finite number"
                )));
            }
            unit(dir, "clamp")?
        }
        Op::Scale(a) => {
            let n = a.elem_count();
            let reads = len.saturating_add(extra);
            if a.rank() != 1 || !(n == 1 || n >= reads) {
                return Err(Error::shape(format!(
                    "row {r}: scale alpha for {site} has shape {:?}, expected [1] (one value \
                     for every position) or [n] with n >= {reads} (one per position the row \
                     reads: {len} prompt + {extra} generated)",
                    a.dims()
                )));
            }
            finite_values(a, &|| format!("row {r}: scale alpha for {site}"))?
        }
        Op::Module(m) => {
            m.check(r, len, d)?;
            Vec::new()
        }
        Op::Controller(_) => Vec::new(),
    };
    let op = match &iv.op {
        Op::Add(v) => Op::Add(v.to_device(device)?),
        Op::Scale(a) => Op::Scale(a.to_device(device)?),
        Op::ProjectOut(u) => Op::ProjectOut(u.to_device(device)?),
        Op::Clamp { dir, value } => Op::Clamp {
            dir: dir.to_device(device)?,
            value: *value,
        },
        Op::Module(m) => Op::Module(m.clone()),
        Op::Controller(c) => Op::Controller(c.clone()),
    };
    Ok(RowOp {
        op,
        positions: iv.positions.clone(),
        values,
    })
}

impl Slot {
    /// Row r's hit mask on this step: one flag per column.
    fn hits(&self, r: usize, ctx: &StepCtx, prompts: Option<&[usize]>) -> Option<Vec<bool>> {
        let ro = self.rows[r].as_ref()?;
        let len = prompts.map_or(ctx.layout.lens[r], |p| p[r]);
        let m: Vec<bool> = (0..ctx.t)
            .map(|j| {
                ctx.position(r, j)
                    .is_some_and(|p| ro.positions.hits(p, len))
            })
            .collect();
        m.iter().any(|&x| x).then_some(m)
    }

    fn apply(
        &self,
        h: Tensor,
        ctx: &StepCtx,
        prompts: Option<&[usize]>,
        site: Site,
    ) -> Result<Tensor> {
        let b = ctx.layout.rows();
        let masks: Vec<Option<Vec<bool>>> = (0..b).map(|r| self.hits(r, ctx, prompts)).collect();
        if masks.iter().all(Option::is_none) {
            return Ok(h);
        }
        let has_module = self
            .rows
            .iter()
            .flatten()
            .any(|ro| matches!(ro.op, Op::Module(_)));
        if ctx.mode == Mode::Inference && h.device().is_cpu() && !has_module {
            return self.apply_values(h, ctx, &masks, site);
        }
        let out = self.apply_tensors(h, ctx, &masks)?;
        if ctx.mode == Mode::Inference {
            // The inference form of a learned module: the same check as the in-place
            // operations (training refuses a non-finite loss instead), on the squared
            // norms [b, t] computed where the values are (only they are read back).
            let sq = out.sqr()?.sum(2)?.to_vec2::<f32>()?; // [b, t]
            for (r, m) in masks.iter().enumerate() {
                let (Some(m), Some(ro)) = (m, &self.rows[r]) else {
                    continue;
                };
                for (j, _) in m.iter().enumerate().filter(|(_, &hit)| hit) {
                    let pos = ctx.position(r, j).unwrap_or(0);
                    check_normable(sq[r][j], None, r, ro, site, pos)?;
                }
            }
        }
        Ok(out)
    }

    /// Inference form: edit a copy of the CPU values in place.
    fn apply_values(
        &self,
        h: Tensor,
        ctx: &StepCtx,
        masks: &[Option<Vec<bool>>],
        site: Site,
    ) -> Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        let mut x = h.flatten_all()?.to_vec1::<f32>()?; // [b * t * d]
        for (r, m) in masks.iter().enumerate() {
            let (Some(m), Some(ro)) = (m, &self.rows[r]) else {
                continue;
            };
            for (j, _) in m.iter().enumerate().filter(|(_, &hit)| hit) {
                let row = &mut x[(r * t + j) * d..(r * t + j + 1) * d];
                let v = &ro.values;
                match &ro.op {
                    Op::Add(_) => row.iter_mut().zip(v).for_each(|(h, v)| *h += v),
                    Op::Scale(_) => {
                        let a = alpha_at(v, ctx.position(r, j).unwrap_or(0));
                        row.iter_mut().for_each(|h| *h *= 1.0 + a);
                    }
                    Op::ProjectOut(_) => {
                        let p: f32 = row.iter().zip(v).map(|(h, u)| h * u).sum();
                        row.iter_mut().zip(v).for_each(|(h, u)| *h -= p * u);
                    }
                    Op::Clamp { value, .. } => {
                        let p: f32 = row.iter().zip(v).map(|(h, u)| h * u).sum();
                        row.iter_mut()
                            .zip(v)
                            .for_each(|(h, u)| *h += (value - p) * u);
                    }
                    Op::Module(_) | Op::Controller(_) => {}
                }
                let bad = row.iter().copied().find(|v| !v.is_finite());
                let sq: f32 = row.iter().map(|v| v * v).sum();
                check_normable(sq, bad, r, ro, site, ctx.position(r, j).unwrap_or(0))?;
            }
        }
        Ok(Tensor::from_vec(x, (b, t, d), h.device())?)
    }

    /// The module every row with an operation here runs, when they all run the same one
    /// (the same `Arc`).
    fn shared_module(&self) -> Option<&Arc<dyn SiteModule>> {
        let mut shared: Option<&Arc<dyn SiteModule>> = None;
        for ro in self.rows.iter().flatten() {
            match (&ro.op, shared) {
                (Op::Module(m), None) => shared = Some(m),
                (Op::Module(m), Some(s)) if Arc::ptr_eq(m, s) => {}
                _ => return None,
            }
        }
        shared
    }

    /// Gradient form: candle ops row by row, differentiable in h and in each
    /// operation's tensors.
    fn apply_tensors(
        &self,
        h: Tensor,
        ctx: &StepCtx,
        masks: &[Option<Vec<bool>>],
    ) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        let dev = h.device().clone();
        if let Some(module) = self.shared_module() {
            // One module for every steered row (a learned module applied to a whole
            // batch, as in training): one call on the batch, the mask zero on the rows
            // and positions it does not touch.
            let mut mv = vec![0f32; b * t];
            for (r, m) in masks.iter().enumerate() {
                if let (Some(m), Some(_)) = (m, &self.rows[r]) {
                    for (j, &hit) in m.iter().enumerate() {
                        mv[r * t + j] = f32::from(u8::from(hit));
                    }
                }
            }
            let mask = Tensor::from_vec(mv, (b, t, 1), &dev)?; // [b, t, 1]
            return module.apply(&h, &mask, ctx);
        }
        let mut out = Vec::with_capacity(b);
        for (r, m) in masks.iter().enumerate() {
            let hr = h.narrow(0, r, 1)?; // [1, t, d]
            let (Some(m), Some(ro)) = (m, &self.rows[r]) else {
                out.push(hr);
                continue;
            };
            let mv: Vec<f32> = m.iter().map(|&x| f32::from(u8::from(x))).collect();
            let mask = Tensor::from_vec(mv, (1, t, 1), &dev)?; // [1, t, 1]
            let e = match &ro.op {
                Op::Add(v) => (&hr + mask.broadcast_mul(&v.reshape((1, 1, ()))?)?)?,
                Op::Scale(a) => {
                    let idx: Vec<u32> = (0..t)
                        .map(|j| {
                            let p = ctx.position(r, j).unwrap_or(0);
                            if a.elem_count() == 1 {
                                0
                            } else {
                                p as u32
                            }
                        })
                        .collect();
                    let idx = Tensor::from_vec(idx, t, &dev)?;
                    let at = a.index_select(&idx, 0)?.reshape((1, t, 1))?; // [1, t, 1]
                    (&hr + hr.broadcast_mul(&(at * &mask)?)?)?
                }
                Op::ProjectOut(u) => {
                    let u = u.reshape((1, 1, ()))?; // [1, 1, d]
                    let p = hr.broadcast_mul(&u)?.sum_keepdim(2)?; // [1, t, 1]
                    (&hr - (p * &mask)?.broadcast_mul(&u)?)?
                }
                Op::Clamp { dir, value } => {
                    let u = dir.reshape((1, 1, ()))?;
                    let p = hr.broadcast_mul(&u)?.sum_keepdim(2)?; // [1, t, 1]
                    let gap = (p.affine(-1.0, f64::from(*value))? * &mask)?;
                    (&hr + gap.broadcast_mul(&u)?)?
                }
                Op::Module(module) => {
                    let sub = crate::model::BatchLayout {
                        lens: vec![ctx.layout.lens[r]],
                        width: ctx.layout.width,
                    };
                    let sctx = StepCtx {
                        layout: &sub,
                        start: ctx.start,
                        t: ctx.t,
                        mode: ctx.mode,
                    };
                    module.apply(&hr, &mask, &sctx)?
                }
                Op::Controller(_) => hr,
            };
            out.push(e);
        }
        Ok(Tensor::cat(&out, 0)?)
    }
}

/// Refuse an edited activation the rest of the forward cannot carry, from its squared norm
/// `sq` and its first non-finite value `bad` (when known): a non-finite value, or a squared
/// norm beyond f32 (the next RMSNorm would square it to inf and normalise
/// it to zeros). Finite inputs can overflow (a huge alpha, vector or beta): say so here
/// instead of letting inf, NaN or a collapsed row run through the rest of the model.
fn check_normable(
    sq: f32,
    bad: Option<f32>,
    r: usize,
    ro: &RowOp,
    site: Site,
    pos: usize,
) -> Result<()> {
    let what = match &ro.op {
        Op::Module(m) => m.name().to_string(),
        op => format!("{} operation", op.name()),
    };
    if let Some(bad) = bad.or_else(|| sq.is_nan().then_some(sq)) {
        return Err(Error::invalid(format!(
            "row {r}: the {what} at {site} made the activation at position {pos} \
             non-finite ({bad}); its values are too large for this activation (expected a \
             result within f32's range)"
        )));
    }
    if !sq.is_finite() {
        return Err(Error::invalid(format!(
            "row {r}: the {what} at {site} made the activation at position {pos} too \
             large to normalise (its squared norm overflows f32); expected a result whose \
             squared norm fits f32 (use a smaller strength)"
        )));
    }
    Ok(())
}

/// The scale at position p: one value for all, or one per position.
fn alpha_at(alpha: &[f32], p: usize) -> f32 {
    match alpha {
        [a] => *a,
        all => all.get(p).copied().unwrap_or(0.0),
    }
}

#[cfg(test)]
mod tests;
