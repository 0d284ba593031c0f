//! The weighted steering controller (Hegazy et al. 2025, "Guiding Giants: Lightweight
//! Controllers for Weighted Activation Steering in LLMs", arXiv 2505.20309) as the engine
//! runs it during generation.
//!
//! A small network reads the residual stream (`resid_post`) of `k` read layers at the
//! last position of the previous forward step, concatenated and standardised,
//! `x = (concat(h_l) - mean) / scale` [k·d], and outputs
//! `o = W2 · relu(W1 · x + b1) + b2` [1 + L]; the gate is `g = σ(o_0)` and the weight of
//! steered layer `i` is `w_i = σ(o_{1+i})`. The patch at steered layer `layers[i]` is
//! `Δh = α · g · w_i · d_i` (α the strength, `d_i` a unit direction) on every position
//! that predicts a token.
//!
//! Where the authors' public code differs, this follows the method as stated: the patch
//! lands on every steered layer (not only the last hooked one); the gate is σ(logit) in
//! [0, 1] at inference too (so a quiet controller, g = 0, is exactly the unsteered
//! model); and the gate is recomputed at every decoding step.
//!
//! [`ControllerRun`] is the per-call state: which controller each row runs, the current
//! coefficients `α·g·w_i`, the last-position states read at this step, and the gates used
//! so far. The generation loop (`crate::generate`) drives it: a prefill that only reads
//! (the prompt's last token, unpatched, gives the first gate), a re-run of the last
//! prompt position with the patch (its KV cache before the last token is reused), then
//! one patched, reading step per token.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::model::{Site, StepCtx};

/// Tolerance on the norm of a steering direction.
const UNIT_TOL: f32 = 1e-3;

/// The raw outputs `o = W2 · relu(W1 · x + b1) + b2` [b, 1 + L] for standardised inputs
/// `x` [b, k·d] (`w1` [k·d, H], `b1` [H], `w2` [H, 1 + L], `b2` [1 + L]); differentiable
/// in every argument. Shared by inference and training so both compute the same thing.
pub fn controller_logits(
    x: &Tensor,
    w1: &Tensor,
    b1: &Tensor,
    w2: &Tensor,
    b2: &Tensor,
) -> Result<Tensor> {
    let hid = x.matmul(w1)?.broadcast_add(b1)?.relu()?; // [b, H]
    Ok(hid.matmul(w2)?.broadcast_add(b2)?) // [b, 1 + L]
}

/// The parameters of a controller, as stored (f32 row-major values with their shapes
/// implied by `read_layers`, `layers`, `hidden` and the model's width).
#[derive(Debug, Clone)]
pub struct ControllerParams {
    /// Layers whose `resid_post` the network reads (k of them), in input order.
    pub read_layers: Vec<usize>,
    /// Steered layers (L of them): the patch lands on their `resid_post`.
    pub layers: Vec<usize>,
    pub hidden: usize,
    /// Input standardisation: `x = (h - mean) / scale`, each [k·d], scale > 0.
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    /// [k·d, H], [H], [H, 1 + L], [1 + L].
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
    /// Unit directions [L, d], one per steered layer.
    pub directions: Vec<f32>,
    /// α, the patch's strength in units of the residual stream (finite).
    pub strength: f32,
}

/// A checked controller ready to run (see the module docs).
#[derive(Debug)]
pub struct Controller {
    read_layers: Vec<usize>,
    layers: Vec<usize>,
    hidden: usize,
    d: usize,
    /// Row-major values for the inference form: 1 / scale, and W2 transposed
    /// ([1 + L, H]) so each output is one contiguous dot product.
    inv_scale: Vec<f32>,
    w2t: Vec<f32>,
    /// [L, d] on the model's device, and as values.
    directions: Tensor,
    strength: f32,
    params: ControllerParams,
}

fn check_layers(what: &str, layers: &[usize], n_layers: usize) -> Result<()> {
    if layers.is_empty() {
        return Err(Error::invalid(format!(
            "the controller's {what} is empty; expected at least one layer"
        )));
    }
    if let Some(&l) = layers.iter().find(|&&l| l >= n_layers) {
        return Err(Error::out_of_range(format!(
            "the controller's {what} include layer {l}, out of range for a model with \
             {n_layers} layers (expected 0..{})",
            n_layers.saturating_sub(1)
        )));
    }
    let mut s = layers.to_vec();
    s.sort_unstable();
    if s.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::invalid(format!(
            "the controller's {what} {layers:?} repeat a layer; expected distinct layers"
        )));
    }
    Ok(())
}

fn check_values(what: &str, v: &[f32], len: usize, shape: &str) -> Result<()> {
    if v.len() != len {
        return Err(Error::shape(format!(
            "the controller's {what} has {} values; expected {len} ({shape})",
            v.len()
        )));
    }
    if let Some(j) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(format!(
            "the controller's {what} has a non-finite value ({}) at index {j}; expected \
             finite numbers",
            v[j]
        )));
    }
    Ok(())
}

impl Controller {
    /// Check `p` against a model with `n_layers` layers of width `d` and put its tensors on
    /// `device`.
    ///
    /// Errors: `OutOfRange` for a layer the model lacks; `InvalidArgument` for empty or
    /// repeated layers, `hidden` = 0, a non-finite value, a scale that is not > 0, a
    /// direction that is not unit length, a strength that is not finite; `Shape` for a
    /// parameter whose size does not match the layers, `hidden` and `d`.
    pub fn new(p: ControllerParams, n_layers: usize, d: usize, device: &Device) -> Result<Self> {
        check_layers("read layers", &p.read_layers, n_layers)?;
        check_layers("steered layers", &p.layers, n_layers)?;
        let (k, l, h) = (p.read_layers.len(), p.layers.len(), p.hidden);
        if h == 0 {
            return Err(Error::invalid(
                "the controller's hidden width is 0; expected at least 1",
            ));
        }
        let kd = k * d;
        check_values("input mean", &p.mean, kd, "read layers x d_model")?;
        check_values("input scale", &p.scale, kd, "read layers x d_model")?;
        if let Some(j) = p.scale.iter().position(|&s| s <= 0.0) {
            return Err(Error::invalid(format!(
                "the controller's input scale is {} at index {j}; expected values > 0",
                p.scale[j]
            )));
        }
        check_values("W1", &p.w1, kd * h, "[read layers x d_model, hidden]")?;
        check_values("b1", &p.b1, h, "[hidden]")?;
        check_values("W2", &p.w2, h * (1 + l), "[hidden, 1 + steered layers]")?;
        check_values("b2", &p.b2, 1 + l, "[1 + steered layers]")?;
        check_values(
            "directions",
            &p.directions,
            l * d,
            "[steered layers, d_model]",
        )?;
        for (i, row) in p.directions.chunks(d.max(1)).enumerate() {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if (norm - 1.0).abs() > UNIT_TOL {
                return Err(Error::invalid(format!(
                    "the controller's direction for layer {} has norm {norm}; expected a \
                     unit direction (norm 1 within {UNIT_TOL})",
                    p.layers[i]
                )));
            }
        }
        if !p.strength.is_finite() {
            return Err(Error::invalid(format!(
                "the controller's strength is {}; expected a finite number",
                p.strength
            )));
        }
        let t = |v: &[f32], shape: &[usize]| -> Result<Tensor> {
            Ok(Tensor::from_slice(v, shape, device)?)
        };
        let transpose = |v: &[f32], rows: usize, cols: usize| -> Vec<f32> {
            let mut out = vec![0f32; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    out[c * rows + r] = v[r * cols + c];
                }
            }
            out
        };
        Ok(Controller {
            read_layers: p.read_layers.clone(),
            layers: p.layers.clone(),
            hidden: h,
            d,
            inv_scale: p.scale.iter().map(|s| 1.0 / s).collect(),
            w2t: transpose(&p.w2, h, 1 + l),
            directions: t(&p.directions, &[l, d])?,
            strength: p.strength,
            params: p,
        })
    }

    pub fn read_layers(&self) -> &[usize] {
        &self.read_layers
    }

    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    pub fn strength(&self) -> f32 {
        self.strength
    }

    /// The device the controller's tensors live on (the model's).
    pub fn device(&self) -> &Device {
        self.directions.device()
    }

    pub fn params(&self) -> &ControllerParams {
        &self.params
    }

    /// Refuse a model of another width or depth than the one this was built for.
    pub fn check_model(&self, n_layers: usize, d: usize) -> Result<()> {
        if d != self.d {
            return Err(Error::shape(format!(
                "this controller reads activations of width {}, but the model's d_model is \
                 {d}; it was made for another model",
                self.d
            )));
        }
        let top = self.read_layers.iter().chain(&self.layers).max().copied();
        if let Some(l) = top.filter(|&l| l >= n_layers) {
            return Err(Error::out_of_range(format!(
                "this controller uses layer {l}, but the model has {n_layers} layers; it \
                 was made for another model"
            )));
        }
        Ok(())
    }

    /// Gate and layer weights σ(o) [b, 1 + L] for raw read states `h` [b, k·d].
    pub fn outputs(&self, h: &Tensor) -> Result<Tensor> {
        let (n, kd) = h.dims2()?;
        let x = h.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let rows: Vec<&[f32]> = x.chunks(kd.max(1)).collect();
        let out = self.rows_outputs(&rows)?;
        let cols = 1 + self.layers.len();
        Ok(Tensor::from_vec(out.concat(), (n, cols), h.device())?)
    }

    /// σ(o) [1 + L] for one row of raw read states [k·d] (see [`Self::rows_outputs`]).
    pub fn row_outputs(&self, h: &[f32]) -> Result<Vec<f32>> {
        Ok(self.rows_outputs(&[h])?.remove(0))
    }

    /// σ(o) [1 + L] for each row of raw read states [k·d], each row's bits the same
    /// whatever rows share the call (a row's gate must not depend on its batch: the
    /// quantized model amplifies rounding differences into different tokens at large
    /// strengths). This is the network of `controller_logits` (the training form); the
    /// tests hold the two equal.
    pub fn rows_outputs(&self, rows: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        let kd = self.read_layers.len() * self.d;
        if let Some(h) = rows.iter().find(|h| h.len() != kd) {
            return Err(Error::shape(format!(
                "the controller reads [n, {kd}] states ({} layers x d_model {}), got {} values \
                 per row",
                self.read_layers.len(),
                self.d,
                h.len()
            )));
        }
        let isa = crate::kernels::Isa::detect();
        let p = &self.params;
        let xs: Vec<Vec<f32>> = rows
            .iter()
            .map(|h| {
                h.iter()
                    .zip(&p.mean)
                    .zip(&self.inv_scale)
                    .map(|((v, m), s)| (v - m) * s)
                    .collect()
            })
            .collect();
        let n = rows.len();
        // The hidden layer [n, H] as one GEMM over the rows (W1 read once). A lone row is
        // padded with a zero row: the GEMM's result for a row then does not depend on
        // how many rows share the call (a single row would take another code path);
        // the tests hold a row's bits equal across batch sizes.
        let m = n.max(2);
        let mut flat = Vec::with_capacity(m * kd);
        xs.iter().for_each(|x| flat.extend_from_slice(x));
        flat.resize(m * kd, 0.0);
        let hid = crate::kernels::dense::matmul_serial(&flat, &p.w1, m, self.hidden, kd)?;
        Ok((0..n)
            .map(|r| {
                let h: Vec<f32> = hid[r * self.hidden..(r + 1) * self.hidden]
                    .iter()
                    .zip(&p.b1)
                    .map(|(v, b)| (v + b).max(0.0))
                    .collect();
                self.w2t
                    .chunks(self.hidden)
                    .zip(&p.b2)
                    .map(|(w, b)| {
                        let o = crate::kernels::vecops::dot(isa, &h, w) + b;
                        1.0 / (1.0 + (-o).exp())
                    })
                    .collect()
            })
            .collect())
    }
}

/// The per-call state of the controllers of one generation (see the module docs).
#[derive(Debug)]
pub struct ControllerRun {
    /// Each row's controller (rows without one hold None).
    rows: Vec<Option<Arc<Controller>>>,
    /// Each row's current coefficients, one per steered layer of its controller.
    coef: Vec<Vec<f32>>,
    /// Each row's current gate.
    gate: Vec<f32>,
    /// The gate in force at each position that predicted a token, per row.
    used: Vec<Vec<f32>>,
    /// Read layers of every controller, with the last-position states this step read
    /// there ([b, d] each).
    reads: Vec<(usize, Option<Tensor>)>,
    /// Whether this step adds the patch (false during the reading prefill).
    pub(crate) patching: bool,
}

impl ControllerRun {
    /// The state for a batch whose row r runs `rows[r]`; None when no row has one.
    pub fn new(rows: Vec<Option<Arc<Controller>>>) -> Option<Self> {
        if rows.iter().all(Option::is_none) {
            return None;
        }
        let mut layers: Vec<usize> = rows
            .iter()
            .flatten()
            .flat_map(|c| c.read_layers.iter().copied())
            .collect();
        layers.sort_unstable();
        layers.dedup();
        let b = rows.len();
        Some(ControllerRun {
            coef: rows
                .iter()
                .map(|c| c.as_ref().map_or(Vec::new(), |c| vec![0.0; c.layers.len()]))
                .collect(),
            gate: vec![0.0; b],
            used: vec![Vec::new(); b],
            reads: layers.into_iter().map(|l| (l, None)).collect(),
            rows,
            patching: false,
        })
    }

    /// Whether row r's current patch is non-zero somewhere.
    pub fn active(&self, r: usize) -> bool {
        self.coef[r].iter().any(|&c| c != 0.0)
    }

    /// The gates in force at each position that predicted a token, per row (NaN-free;
    /// empty for rows without a controller).
    pub fn gates_used(&self) -> &[Vec<f32>] {
        &self.used
    }

    /// Note that a step is about to run with the current gates (one entry per row with a
    /// controller, for rows in `rows`).
    pub fn record_use(&mut self, rows: &[bool]) {
        for (r, c) in self.rows.iter().enumerate() {
            if c.is_some() && rows.get(r).copied().unwrap_or(false) {
                self.used[r].push(self.gate[r]);
            }
        }
    }

    /// The hook at `site`: add the patch (when patching) on `resid_post` of a steered
    /// layer, then keep the last position's state on a read layer.
    pub fn at(&mut self, site: Site, h: Tensor, ctx: &StepCtx) -> Result<Tensor> {
        let Site::ResidPost(l) = site else {
            return Ok(h);
        };
        let mut h = h;
        if self.patching {
            h = self.patch(l, h, ctx)?;
        }
        if let Some(slot) = self.reads.iter_mut().find(|(rl, _)| *rl == l) {
            let last = h
                .narrow(1, ctx.t - 1, 1)?
                .squeeze(1)?
                .contiguous()?
                .detach(); // [b, d]
            slot.1 = Some(last);
        }
        Ok(h)
    }

    fn patch(&self, l: usize, h: Tensor, ctx: &StepCtx) -> Result<Tensor> {
        let (b, _, d) = h.dims3()?;
        let mut delta: Option<Vec<f32>> = None;
        for (r, c) in self.rows.iter().enumerate() {
            let Some(c) = c else { continue };
            let Some(i) = c.layers.iter().position(|&x| x == l) else {
                continue;
            };
            let k = self.coef[r][i];
            if k == 0.0 {
                continue;
            }
            let dv = delta.get_or_insert_with(|| vec![0f32; b * d]);
            let dir = &c.params.directions[i * d..(i + 1) * d];
            dv[r * d..(r + 1) * d]
                .iter_mut()
                .zip(dir)
                .for_each(|(x, u)| *x += k * u);
        }
        let Some(dv) = delta else { return Ok(h) };
        let delta = Tensor::from_vec(dv, (b, 1, d), h.device())?;
        let out = h.broadcast_add(&delta)?;
        // The patched rows must stay within what the rest of the forward can carry.
        let sq = out.sqr()?.sum(D::Minus1)?.to_vec2::<f32>()?; // [b, t]
        for (r, row) in sq.iter().enumerate() {
            if let Some(j) = row.iter().position(|x| !x.is_finite()) {
                let pos = ctx.position(r, j).unwrap_or(0);
                return Err(Error::invalid(format!(
                    "row {r}: the controller's patch at {} made the activation at \
                     position {pos} too large (its squared norm is not finite); expected a \
                     smaller strength",
                    Site::ResidPost(l)
                )));
            }
        }
        Ok(out)
    }

    /// Recompute the gate and coefficients of the rows in `rows` (all rows with a
    /// controller when None) from the states this step read.
    pub fn update(&mut self, rows: Option<&[bool]>) -> Result<()> {
        // The read states as values, [b, d] per read layer.
        let mut states: Vec<(usize, Vec<f32>)> = Vec::with_capacity(self.reads.len());
        for (l, st) in &self.reads {
            if let Some(st) = st {
                states.push((
                    *l,
                    st.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                ));
            }
        }
        let b = self.rows.len();
        let mut done = vec![false; b];
        for r in 0..b {
            let Some(c) = self.rows[r].clone() else {
                continue;
            };
            if done[r] {
                continue;
            }
            // Every row that runs this controller (one pass over its weights for all).
            let group: Vec<usize> = (r..b)
                .filter(|&q| {
                    self.rows[q].as_ref().is_some_and(|x| Arc::ptr_eq(x, &c))
                        && rows.is_none_or(|m| m.get(q).copied().unwrap_or(false))
                })
                .collect();
            let d = c.d;
            let mut xs = Vec::with_capacity(group.len());
            for &q in &group {
                done[q] = true;
                let mut x = Vec::with_capacity(c.read_layers.len() * d);
                for l in &c.read_layers {
                    let st = states
                        .iter()
                        .find(|(rl, _)| rl == l)
                        .map(|(_, v)| v)
                        .ok_or_else(|| {
                            Error::invalid(format!(
                                "the controller reads layer {l}, which this step never reached"
                            ))
                        })?;
                    x.extend_from_slice(&st[q * d..(q + 1) * d]);
                }
                xs.push(x);
            }
            let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
            for (&q, o) in group.iter().zip(c.rows_outputs(&refs)?) {
                let g = o[0];
                self.gate[q] = g;
                self.coef[q] = o[1..].iter().map(|w| c.strength * g * w).collect();
            }
        }
        Ok(())
    }
}
