//! Prefill + decode loop, samplers and stopping, with per-row steering applied by the
//! forward at every step (decode step k of a row is position len(prompt) + k).

use std::sync::Arc;

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cancel::Cancel;
use crate::capture::{Capture, Captured, Monitor};
use crate::error::{Error, Result};
use crate::hooks::Sites;
use crate::intervene::{ControllerRun, RowSteering, SteeringPlan};
use crate::model::attention::LayerCache;
use crate::model::{BatchLayout, Mode, Model, Site, StepCtx};
pub use crate::pool::in_pool;

/// Sampling and stopping settings for one generation call.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    /// Stop strings: a row stops once its generated text contains one.
    pub stop: Vec<String>,
    /// Keep generating through eos tokens (benchmarks, fixed-length sweeps).
    pub ignore_eos: bool,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl GenParams {
    /// The one place generation settings are checked (the Python layer checks only
    /// their types). Errors: `InvalidArgument` naming the setting, its value and what is
    /// accepted.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::invalid(format!(
                "temperature must be a finite number >= 0 (0 = greedy), got {}",
                py_float(self.temperature)
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("top_k must be >= 1, got 0"));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::invalid(format!(
                    "top_p must be in (0, 1], got {}",
                    py_float(p)
                )));
            }
        }
        if let Some(i) = self.stop.iter().position(|s| s.is_empty()) {
            return Err(Error::invalid(format!(
                "a stop string is empty (stop[{i}]); expected non-empty str"
            )));
        }
        Ok(())
    }
}

/// A float as Python prints it (`1.0`, `-0.5`, `nan`, `inf`), for messages.
fn py_float(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else if x == x.trunc() && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// Check a steering list against the batch (`lens`: each row's prompt length; `extra`:
/// generated tokens the model reads after each prompt) and build its plan, for a call
/// that reads the prompt only (no steering controller: it needs the generation loop).
pub fn plan_steering(
    model: &Model,
    steering: Option<&[RowSteering]>,
    lens: &[usize],
    extra: usize,
) -> Result<Option<SteeringPlan>> {
    let plan = build_plan(model, steering, lens, extra)?;
    if plan.as_ref().is_some_and(SteeringPlan::has_controllers) {
        return Err(Error::invalid(
            "a steering controller acts during generation (it recomputes its gate at each \
             decoding step): use it with generate, generate_stream, generate_monitored or \
             continuation_logprobs; this call reads the prompt only (for the gate on the \
             prompts use SteeringController.gate)",
        ));
    }
    Ok(plan)
}

/// [`plan_steering`] for a generation: the plan without its controllers, and the
/// controllers' per-call state.
fn plan_generation(
    model: &Model,
    steering: Option<&[RowSteering]>,
    lens: &[usize],
    extra: usize,
) -> Result<(Option<SteeringPlan>, Option<ControllerRun>)> {
    let Some(mut plan) = build_plan(model, steering, lens, extra)? else {
        return Ok((None, None));
    };
    let ctrl = ControllerRun::new(plan.take_controllers());
    Ok(((!plan.is_empty()).then_some(plan), ctrl))
}

fn build_plan(
    model: &Model,
    steering: Option<&[RowSteering]>,
    lens: &[usize],
    extra: usize,
) -> Result<Option<SteeringPlan>> {
    let Some(st) = steering else { return Ok(None) };
    let rows = lens.len();
    if st.len() != rows {
        return Err(Error::invalid(format!(
            "steering has {} entries but there are {rows} prompts; pass one steering (or None) per prompt",
            st.len()
        )));
    }
    let plan = SteeringPlan::new(
        st,
        lens,
        extra,
        model.n_layers(),
        model.d_model(),
        &model.device,
    )?;
    Ok((!plan.is_empty()).then_some(plan))
}

/// Last-position logits, row-major, with their [batch, vocab] shape.
pub type Logits = (Vec<f32>, [usize; 2]);

/// One prefill over a batch: captures at `sites` and/or last-position logits. Stops
/// with `Error::Interrupted` within one decoder block of `cancel` being set.
pub fn forward_batch(
    model: &Model,
    rows: &[Vec<u32>],
    sites: Vec<Site>,
    reduce: crate::capture::Reduce,
    steering: Option<&[RowSteering]>,
    want_logits: bool,
    cancel: &Cancel,
) -> Result<(Option<Captured>, Option<Logits>)> {
    in_pool(|| {
        let mut capture = (!sites.is_empty()).then(|| Capture::new(sites, reduce));
        let (h, layout) = prefill(model, rows, steering, capture.as_mut(), cancel)?;
        cancel.check()?;
        let logits = if want_logits {
            let l = model.logits_last(&h, Mode::Inference)?;
            let (b, v) = l.dims2()?;
            Some((l.flatten_all()?.to_vec1::<f32>()?, [b, v]))
        } else {
            None
        };
        let captured = match capture {
            Some(c) => Some(c.finish(&layout.lens, layout.width)?),
            None => None,
        };
        Ok((captured, logits))
    })
}

/// Pad `rows`, plan their steering and run one forward over the whole prompts (a fresh
/// KV cache), recording into `capture` if given: the residual after the last block
/// [b, t, d] and the batch layout. Call on the engine's pool.
fn prefill(
    model: &Model,
    rows: &[Vec<u32>],
    steering: Option<&[RowSteering]>,
    capture: Option<&mut Capture>,
    cancel: &Cancel,
) -> Result<(Tensor, BatchLayout)> {
    let (ids, layout) = model.pad_batch(rows)?;
    let plan = plan_steering(model, steering, &layout.lens, 0)?;
    if let Some(c) = &capture {
        c.check(&layout.lens)?;
    }
    let ctx = StepCtx::prefill(&layout);
    let mut cache = model.new_cache();
    let mut hooks = Sites {
        steering: plan.as_ref(),
        capture,
        monitor: None,
        cancel: Some(cancel),
        controller: None,
    };
    let h = model.forward(&ids, &ctx, &mut cache, &mut hooks)?;
    Ok((h, layout))
}

/// Log-probability of every token given the ones before it, per row (steering applied):
/// row r gets `len_r - 1` values, `log p(ids[j] | ids[..j])` for j = 1..len_r. Stops
/// with `Error::Interrupted` within one decoder block (or one row) of `cancel` being set.
pub fn token_logprobs(
    model: &Model,
    rows: &[Vec<u32>],
    steering: Option<&[RowSteering]>,
    cancel: &Cancel,
) -> Result<Vec<Vec<f32>>> {
    in_pool(|| {
        let (h, layout) = prefill(model, rows, steering, None, cancel)?; // [b, t, d]
        let mut out = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            cancel.check()?;
            let len = row.len();
            if len < 2 {
                out.push(Vec::new());
                continue;
            }
            // Columns pad..pad+len-1 predict tokens 1..len of the row, taken in chunks of
            // LOGPROB_CHUNK positions: the [chunk, vocab] logits stay small (a 2000-token row
            // would need 400 MB at once for a 49k vocabulary) and Ctrl-C is seen between them.
            let mut picked = Vec::with_capacity(len - 1);
            let mut j = 0;
            while j < len - 1 {
                cancel.check()?;
                let n = LOGPROB_CHUNK.min(len - 1 - j);
                let hr = h.narrow(0, r, 1)?.narrow(1, layout.pad(r) + j, n)?; // [1, n, d]
                let logits = model.logits_all(&hr, Mode::Inference)?.squeeze(0)?; // [n, vocab]
                let lp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
                let next = Tensor::from_slice(&row[1 + j..1 + j + n], (n, 1), &model.device)?;
                picked.extend(lp.gather(&next, 1)?.squeeze(1)?.to_vec1::<f32>()?); // [n]
                j += n;
            }
            out.push(picked);
        }
        Ok(out)
    })
}

/// Positions per log-softmax over the vocabulary in `token_logprobs`.
const LOGPROB_CHUNK: usize = 128;

/// A generation in progress; `step` produces one token per row.
pub struct Generation {
    model: Arc<Model>,
    layout: BatchLayout,
    ids: Tensor,
    plan: Option<SteeringPlan>,
    params: GenParams,
    /// Each row's own settings (sampling, limit, stop strings, eos); all equal to
    /// `params` unless made by [`Generation::per_row`].
    row_params: Vec<GenParams>,
    cache: Vec<LayerCache>,
    rngs: Vec<StdRng>,
    generated: Vec<Vec<u32>>,
    finished: Vec<bool>,
    steps: usize,
    monitor: Option<Monitor>,
    /// The rows' steering controllers (see [`crate::intervene::controller`]).
    ctrl: Option<ControllerRun>,
    /// Tokens fed instead of sampled, per row, and whether a row goes on sampling after
    /// them (else it ends after its last one).
    forced: Option<Vec<Vec<u32>>>,
    then_sample: bool,
    /// The log-probability of each new token, per row, when asked for.
    logprobs: Option<Vec<Vec<f32>>>,
    /// The last step's logits [b, vocab], row-major.
    last_logits: Vec<f32>,
}

impl Generation {
    pub fn new(
        model: Arc<Model>,
        rows: &[Vec<u32>],
        steering: Option<&[RowSteering]>,
        params: GenParams,
    ) -> Result<Self> {
        params.validate()?;
        let (ids, layout) = model.pad_batch(rows)?;
        if params.ignore_eos {
            // A row stops when it fills the context; with ignore_eos the caller was
            // promised exactly max_new_tokens, so say up front when they cannot fit.
            let ctx = model.cfg.max_context;
            if let Some((r, &l)) = (layout.lens.iter().enumerate())
                .find(|(_, &l)| l.saturating_add(params.max_new_tokens) > ctx)
            {
                return Err(Error::ContextLength(format!(
                    "ignore_eos=True asks for exactly max_new_tokens={} new tokens, but prompt \
                     {r} has {l} tokens and the model's context holds {ctx}: at most {} new \
                     tokens fit",
                    params.max_new_tokens,
                    ctx.saturating_sub(l)
                )));
            }
        }
        // The last new token is sampled but never fed: max_new_tokens - 1 are read.
        let extra = params.max_new_tokens.saturating_sub(1);
        let (plan, ctrl) = plan_generation(&model, steering, &layout.lens, extra)?;
        let base = params.seed.unwrap_or_else(|| rand::rng().random());
        let rngs = (0..rows.len())
            .map(|r| StdRng::seed_from_u64(base.wrapping_add(r as u64)))
            .collect();
        let cache = model.new_cache();
        let n = rows.len();
        let finished = vec![params.max_new_tokens == 0; n];
        let row_params = vec![params.clone(); n];
        Ok(Generation {
            model,
            layout,
            ids,
            plan,
            params,
            row_params,
            cache,
            rngs,
            generated: vec![Vec::new(); n],
            finished,
            steps: 0,
            monitor: None,
            ctrl,
            forced: None,
            then_sample: false,
            logprobs: None,
            last_logits: Vec::new(),
        })
    }

    /// A generation whose rows each have their own settings: row r samples with
    /// `params[r]` (temperature, top_k, top_p), draws from its own generator seeded with
    /// `params[r].seed` (so a row gives what it gives alone, wherever it sits in the
    /// batch), and ends at its own `max_new_tokens`, stop strings and eos rule. The
    /// batch's cache and steering plan are sized for the longest limit. This is what a
    /// server batching unrelated requests needs. Errors: `InvalidArgument` for a count of
    /// settings that is not the count of rows, or a setting `GenParams::validate`
    /// refuses (naming the row); else as [`Generation::new`].
    pub fn per_row(
        model: Arc<Model>,
        rows: &[Vec<u32>],
        steering: Option<&[RowSteering]>,
        params: Vec<GenParams>,
    ) -> Result<Self> {
        if params.len() != rows.len() {
            return Err(Error::invalid(format!(
                "{} generation settings for {} prompts; expected one per prompt",
                params.len(),
                rows.len()
            )));
        }
        for (r, p) in params.iter().enumerate() {
            p.validate()
                .map_err(|e| Error::invalid(format!("settings of row {r}: {e}")))?;
        }
        let shared = GenParams {
            max_new_tokens: params.iter().map(|p| p.max_new_tokens).max().unwrap_or(0),
            ignore_eos: false,
            stop: Vec::new(),
            seed: Some(0),
            ..GenParams::default()
        };
        let mut g = Generation::new(model, rows, steering, shared)?;
        let ctx = g.model.cfg.max_context;
        for (r, p) in params.iter().enumerate() {
            let l = g.layout.lens[r];
            if p.ignore_eos && l.saturating_add(p.max_new_tokens) > ctx {
                return Err(Error::ContextLength(format!(
                    "row {r}: ignore_eos=True asks for exactly max_new_tokens={} new tokens, \
                     but the prompt has {l} tokens and the model's context holds {ctx}: at \
                     most {} new tokens fit",
                    p.max_new_tokens,
                    ctx.saturating_sub(l)
                )));
            }
            g.finished[r] = p.max_new_tokens == 0;
            g.rngs[r] = StdRng::seed_from_u64(p.seed.unwrap_or_else(|| rand::rng().random()));
        }
        g.row_params = params;
        Ok(g)
    }

    /// End row `r` now (a client went away): it yields no more tokens and the others go
    /// on unchanged. Errors: `OutOfRange` for a row the batch lacks.
    pub fn finish(&mut self, r: usize) -> Result<()> {
        let b = self.finished.len();
        match self.finished.get_mut(r) {
            Some(f) => {
                *f = true;
                Ok(())
            }
            None => Err(Error::out_of_range(format!(
                "row {r} is out of range for a generation of {b} rows"
            ))),
        }
    }

    /// Feed `forced[r]` as row r's first new tokens instead of sampling them (teacher
    /// forcing with generation semantics: steering positions and controllers act as in
    /// generation); eos tokens among them do not end the row. With `then_sample` false a
    /// row ends after its last forced token; with true it goes on sampling up to
    /// `max_new_tokens` (counting the forced ones). Errors: `InvalidArgument` for a
    /// count of rows that is not the batch's, or a row with more tokens than
    /// `max_new_tokens`; `OutOfRange` for a token id outside the vocabulary.
    pub fn with_forced(mut self, forced: Vec<Vec<u32>>, then_sample: bool) -> Result<Self> {
        let b = self.layout.rows();
        if forced.len() != b {
            return Err(Error::invalid(format!(
                "{} forced continuations for {b} prompts; expected one per prompt",
                forced.len()
            )));
        }
        let vocab = self.model.cfg.vocab_size;
        for (r, f) in forced.iter().enumerate() {
            if let Some(&t) = f.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::out_of_range(format!(
                    "forced continuation {r}: token id {t} is out of range for a vocabulary \
                     of {vocab}"
                )));
            }
            if f.len() > self.params.max_new_tokens {
                return Err(Error::invalid(format!(
                    "forced continuation {r} has {} tokens, more than max_new_tokens = {}",
                    f.len(),
                    self.params.max_new_tokens
                )));
            }
            if f.is_empty() && !then_sample {
                self.finished[r] = true;
            }
        }
        self.forced = Some(forced);
        self.then_sample = then_sample;
        Ok(self)
    }

    /// Also record the log-probability (natural log) of each new token under the
    /// distribution it was drawn from (or forced into); read with
    /// [`Generation::logprobs`].
    pub fn with_logprobs(mut self) -> Self {
        self.logprobs = Some(vec![Vec::new(); self.layout.rows()]);
        self
    }

    /// Each row's new-token log-probabilities (None unless asked for).
    pub fn logprobs(&self) -> Option<&[Vec<f32>]> {
        self.logprobs.as_deref()
    }

    /// Each row's controller gate at the position that predicted each new token (None
    /// without a controller; empty for a row without one).
    pub fn gates(&self) -> Option<Vec<Vec<f32>>> {
        let c = self.ctrl.as_ref()?;
        Some(
            c.gates_used()
                .iter()
                .zip(&self.generated)
                .map(|(g, toks)| g.iter().take(toks.len()).copied().collect())
                .collect(),
        )
    }

    /// The last step's logits, row-major [b, vocab] (empty before the first step).
    pub fn last_logits(&self) -> &[f32] {
        &self.last_logits
    }

    /// Also record, at `sites`, the activation that produced each generated token (see
    /// [`Monitor`]); read them with [`Generation::monitored`]. Errors: `OutOfRange` for
    /// a site of a block the model lacks.
    pub fn with_monitor(mut self, sites: Vec<Site>) -> Result<Self> {
        let n = self.model.n_layers();
        if let Some(s) = sites.iter().find(|s| s.layer().is_some_and(|l| l >= n)) {
            return Err(Error::out_of_range(format!(
                "monitored site {s} is out of range for a model with {n} layers"
            )));
        }
        self.monitor = Some(Monitor::new(sites, self.model.d_model()));
        Ok(self)
    }

    /// What the monitor recorded: per row [n_sites, generated tokens, d] (None without
    /// a monitor).
    pub fn monitored(&self) -> Option<Vec<(Vec<f32>, [usize; 3])>> {
        let counts: Vec<usize> = self.generated.iter().map(Vec::len).collect();
        self.monitor.as_ref().map(|m| m.finish(&counts))
    }

    pub fn generated(&self) -> &[Vec<u32>] {
        &self.generated
    }

    pub fn into_generated(self) -> Vec<Vec<u32>> {
        self.generated
    }

    /// One decode step: the new token of each row (None for finished rows), or None
    /// when every row has finished.
    pub fn step(&mut self) -> Result<Option<Vec<Option<u32>>>> {
        in_pool(|| self.step_inner(None))
    }

    /// One forward of `input` on this generation's cache with its hooks (steering,
    /// monitor, controllers, cancellation).
    fn forward(
        &mut self,
        input: &Tensor,
        ctx: &StepCtx,
        cancel: Option<&Cancel>,
    ) -> Result<Tensor> {
        let mut hooks = Sites {
            steering: self.plan.as_ref(),
            capture: None,
            monitor: self.monitor.as_mut(),
            cancel,
            controller: self.ctrl.as_mut(),
        };
        self.model.forward(input, ctx, &mut self.cache, &mut hooks)
    }

    /// The prefill. With controllers: it only reads (the first gate comes from the
    /// prompt's unpatched last token); then, when some row's patch is not zero, the last
    /// prompt position runs again with the patch on the cache of the positions before it
    /// (which the patch does not change), and the rows whose patch is zero keep the
    /// prefill's logits, cache and monitored states exactly.
    fn prefill_step(&mut self, cancel: Option<&Cancel>) -> Result<Vec<f32>> {
        let m = self.model.clone();
        let layout = self.layout.clone();
        let ids = self.ids.clone();
        if let Some(c) = self.ctrl.as_mut() {
            c.patching = false;
        }
        let h = self.forward(&ids, &StepCtx::prefill(&layout), cancel)?;
        let mut flat = m
            .logits_last(&h, Mode::Inference)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let Some(c) = self.ctrl.as_mut() else {
            return Ok(flat);
        };
        c.update(None)?;
        c.patching = true;
        let b = layout.rows();
        let active: Vec<bool> = (0..b).map(|r| c.active(r)).collect();
        c.record_use(&vec![true; b]);
        if !active.iter().any(|&a| a) {
            return Ok(flat);
        }
        let pos = layout.width - 1;
        let cols = self
            .cache
            .iter()
            .map(|lc| lc.column(pos))
            .collect::<Result<Vec<_>>>()?;
        for lc in self.cache.iter_mut() {
            lc.truncate(pos)?;
        }
        let saved = self.monitor.as_ref().map(Monitor::pending);
        let ctx = StepCtx {
            layout: &layout,
            start: pos,
            t: 1,
            mode: Mode::Inference,
        };
        let last = ids.narrow(1, pos, 1)?.contiguous()?; // [b, 1]
        let h = self.forward(&last, &ctx, cancel)?;
        let again = m
            .logits_last(&h, Mode::Inference)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let vocab = flat.len() / b.max(1);
        let keep: Vec<bool> = active.iter().map(|a| !a).collect();
        for r in (0..b).filter(|&r| active[r]) {
            flat[r * vocab..(r + 1) * vocab].copy_from_slice(&again[r * vocab..(r + 1) * vocab]);
        }
        for (lc, col) in self.cache.iter_mut().zip(&cols) {
            lc.restore_rows(col, pos, &keep)?;
        }
        if let (Some(mon), Some(saved)) = (self.monitor.as_mut(), saved) {
            mon.restore_rows(saved, &keep)?;
        }
        if let Some(c) = self.ctrl.as_mut() {
            c.update(Some(&active))?;
        }
        Ok(flat)
    }

    /// One step, on the engine's pool; a set `cancel` stops the prefill between blocks
    /// (the generation is then unusable: its KV cache is partly written).
    fn step_inner(&mut self, cancel: Option<&Cancel>) -> Result<Option<Vec<Option<u32>>>> {
        if self.finished.iter().all(|&f| f) {
            return Ok(None);
        }
        let m = self.model.clone();
        let flat = if self.steps == 0 {
            self.prefill_step(cancel)?
        } else {
            let last: Vec<u32> = self
                .generated
                .iter()
                .map(|g| g.last().copied().unwrap_or(0))
                .collect();
            let b = last.len();
            let input = Tensor::from_vec(last, (b, 1), &m.device)?;
            let layout = self.layout.clone();
            let ctx = StepCtx {
                layout: &layout,
                start: layout.width + self.steps - 1,
                t: 1,
                mode: Mode::Inference,
            };
            if let Some(c) = self.ctrl.as_mut() {
                let live: Vec<bool> = self.finished.iter().map(|f| !f).collect();
                c.record_use(&live);
            }
            let h = self.forward(&input, &ctx, cancel)?;
            if let Some(c) = self.ctrl.as_mut() {
                c.update(None)?;
            }
            m.logits_last(&h, Mode::Inference)?
                .flatten_all()?
                .to_vec1::<f32>()?
        };
        if let Some(mon) = self.monitor.as_mut() {
            mon.end_step()?;
        }
        let b = self.layout.rows();
        let vocab = flat.len() / b.max(1);
        self.steps += 1;
        let mut out = Vec::with_capacity(b);
        for r in 0..b {
            if self.finished[r] {
                out.push(None);
                continue;
            }
            let row = &flat[r * vocab..(r + 1) * vocab];
            let forced_tok = self
                .forced
                .as_ref()
                .and_then(|f| f[r].get(self.generated[r].len()))
                .copied();
            // Rows that end with their forced tokens (teacher forcing only).
            let forced = self
                .forced
                .as_ref()
                .filter(|_| !self.then_sample)
                .map(|f| &f[r]);
            let tok = match forced_tok {
                Some(t) => t,
                None => sample(row, &self.row_params[r], &mut self.rngs[r]),
            };
            if let Some(lp) = self.logprobs.as_mut() {
                lp[r].push(token_logprob(row, tok));
            }
            let p = &self.row_params[r];
            if forced_tok.is_none() && !p.ignore_eos && m.tokenizer.eos_ids.contains(&tok) {
                self.finished[r] = true;
                out.push(None);
                continue;
            }
            self.generated[r].push(tok);
            out.push(Some(tok));
            let len = self.layout.lens[r] + self.generated[r].len();
            let n = self.generated[r].len();
            if forced.is_some_and(|f| n >= f.len())
                || n >= p.max_new_tokens
                || len >= m.cfg.max_context
            {
                self.finished[r] = true;
            } else if !p.stop.is_empty() && forced_tok.is_none() {
                let text = m.tokenizer.decode(&self.generated[r], true)?;
                if p.stop.iter().any(|s| text.contains(s.as_str())) {
                    self.finished[r] = true;
                }
            }
        }
        self.last_logits = flat;
        Ok(Some(out))
    }

    /// Run to the end; returns the new tokens per row. Stops with `Error::Interrupted`
    /// within one decode step (or one decoder block of the prefill) of `cancel` being set.
    pub fn run(mut self, cancel: &Cancel) -> Result<Vec<Vec<u32>>> {
        self.run_all(cancel)?;
        Ok(self.generated)
    }

    /// Step until every row has finished (or `cancel` is set).
    pub fn run_all(&mut self, cancel: &Cancel) -> Result<()> {
        in_pool(|| -> Result<()> {
            cancel.check()?;
            while self.step_inner(Some(cancel))?.is_some() {
                cancel.check()?;
            }
            Ok(())
        })
    }
}

/// `log Σ exp(x)` over a row of logits, in f64 (the max subtracted first).
fn log_sum_exp(x: &[f32]) -> f64 {
    let mx = f64::from(x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    mx + x
        .iter()
        .map(|&v| (f64::from(v) - mx).exp())
        .sum::<f64>()
        .ln()
}

/// `log softmax(logits)[tok]` in f64, as f32.
fn token_logprob(logits: &[f32], tok: u32) -> f32 {
    let x = logits
        .get(tok as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    (f64::from(x) - log_sum_exp(logits)) as f32
}

/// `KL(softmax(p) || softmax(q))` in nats, in f64, for two rows of logits.
fn kl_logits(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_sum_exp(p), log_sum_exp(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let la = f64::from(a) - lp;
            let pa = la.exp();
            if pa == 0.0 {
                0.0
            } else {
                pa * (la - (f64::from(b) - lq))
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// Teacher-forced continuations under two steerings at once: for each row, at each
/// position that predicts a token of `forced[r]` (the prompt's last token, then each
/// forced token but the last), `KL(p_reference || p_steered)` in nats, the reference
/// being the unsteered model. Both runs take the generation path (controllers recompute
/// their gate each step). Stops with `Error::Interrupted` within one step of `cancel`.
pub fn forced_kl(
    model: Arc<Model>,
    rows: &[Vec<u32>],
    forced: Vec<Vec<u32>>,
    steering: Option<&[RowSteering]>,
    cancel: &Cancel,
) -> Result<Vec<Vec<f32>>> {
    let params = GenParams {
        max_new_tokens: forced.iter().map(Vec::len).max().unwrap_or(0),
        ..Default::default()
    };
    let mut base = Generation::new(model.clone(), rows, None, params.clone())?
        .with_forced(forced.clone(), false)?;
    let mut steered = Generation::new(model, rows, steering, params)?.with_forced(forced, false)?;
    let mut out = vec![Vec::new(); rows.len()];
    in_pool(|| -> Result<()> {
        loop {
            cancel.check()?;
            let (Some(a), Some(_)) = (
                base.step_inner(Some(cancel))?,
                steered.step_inner(Some(cancel))?,
            ) else {
                return Ok(());
            };
            let (p, q) = (base.last_logits(), steered.last_logits());
            let v = p.len() / rows.len().max(1);
            for (r, tok) in a.iter().enumerate() {
                if tok.is_some() {
                    let kl = kl_logits(&p[r * v..(r + 1) * v], &q[r * v..(r + 1) * v]);
                    out[r].push(kl as f32);
                }
            }
        }
    })?;
    Ok(out)
}

/// Pick a token from one row of logits.
///
/// Softmax of `logits / temperature` in f64 with the maximum subtracted before the
/// division, so no temperature overflows: `(l - max) / t` is 0 for the best tokens and
/// at most a large negative number (or -inf) for the others, never inf - inf = NaN. A
/// temperature so small that every other token's weight underflows to 0 is greedy.
pub fn sample(logits: &[f32], p: &GenParams, rng: &mut StdRng) -> u32 {
    if p.temperature == 0.0 {
        return argmax(logits);
    }
    let t = p.temperature;
    let mut idx: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i].is_finite())
        .collect();
    if idx.is_empty() {
        return argmax(logits);
    }
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = p.top_k {
        idx.truncate(k.max(1));
    }
    let mx = f64::from(logits[idx[0]]);
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| ((f64::from(logits[i]) - mx) / t).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= z);
    if let Some(tp) = p.top_p {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (j, &q) in probs.iter().enumerate() {
            acc += q;
            if acc >= tp {
                keep = j + 1;
                break;
            }
        }
        idx.truncate(keep);
        probs.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= z);
    }
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (j, &q) in probs.iter().enumerate() {
        acc += q;
        if u < acc {
            return idx[j] as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

/// Index of the largest value (first one on ties, as torch.argmax).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || (xs[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_first_on_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = GenParams {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(0);
        for _ in 0..10 {
            assert_eq!(sample(&[0.1, 5.0, 0.3], &p, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_probabilities() {
        let p = GenParams {
            temperature: 1.0,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let logits = [0f32, (3f32).ln()]; // p = [0.25, 0.75]
        let n = 4000;
        let ones = (0..n)
            .filter(|_| sample(&logits, &p, &mut rng) == 1)
            .count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
    }

    #[test]
    fn tiny_temperature_is_greedy() {
        // logits / t overflowed f32 for t = 1e-38 (inf - inf = NaN), and sampling then
        // picked the least likely token. Every weight but the best is 0 now.
        let logits = [1.0f32, 3.0, -2.0, 2.5, 0.0];
        let mut rng = StdRng::seed_from_u64(7);
        for t in [1e-38, 1e-30, 1e-300, 5e-324, 1e-6] {
            let p = GenParams {
                temperature: t,
                ..Default::default()
            };
            for _ in 0..50 {
                assert_eq!(sample(&logits, &p, &mut rng), 1, "temperature {t}");
            }
        }
        // Large logits and a tiny temperature: still the argmax.
        let big = [3.0e38f32, -3.0e38, 1.0e38];
        let p = GenParams {
            temperature: 1e-38,
            ..Default::default()
        };
        assert_eq!(sample(&big, &p, &mut rng), 0);
    }

    #[test]
    fn bad_params_rejected() {
        let p = GenParams {
            temperature: -1.0,
            ..Default::default()
        };
        assert!(p.validate().is_err());
        let p = GenParams {
            top_p: Some(1.5),
            ..Default::default()
        };
        assert!(p.validate().is_err());
    }
}
