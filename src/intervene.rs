//! Interventions as data: what to add to the residual stream, at which layer, on which
//! positions, for which batch row. The forward asks the compiled [`SteeringPlan`] for a
//! delta at each layer; no callback runs inside the loop.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::StepCtx;

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
}

impl Positions {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Positions::All),
            "prompt" => Ok(Positions::Prompt),
            "generated" => Ok(Positions::Generated),
            "last" => Ok(Positions::Last),
            other => Err(Error::invalid(format!(
                "unknown positions '{other}' (expected 'all', 'prompt', 'generated', 'last' \
                 or a list of integer positions)"
            ))),
        }
    }

    fn hits(&self, pos: usize, prompt_len: usize) -> bool {
        match self {
            Positions::All => true,
            Positions::Prompt => pos < prompt_len,
            Positions::Generated => pos >= prompt_len,
            Positions::Last => pos + 1 >= prompt_len,
            Positions::Indices(ix) => ix.iter().any(|&i| {
                let p = if i < 0 { i + prompt_len as i64 } else { i };
                p == pos as i64
            }),
        }
    }
}

/// Add `vector` [d_model] at the residual stream after block `layer`.
#[derive(Debug, Clone)]
pub struct Intervention {
    pub layer: usize,
    pub vector: Tensor,
    pub positions: Positions,
}

/// Interventions for one batch row.
pub type RowSteering = Vec<Intervention>;

/// Up to one intervention per row at one layer; rows without one hold zeros.
#[derive(Debug)]
struct Slot {
    vectors: Tensor, // [b, 1, d]
    positions: Vec<Option<Positions>>,
}

/// The per-row interventions of one call, grouped by layer.
#[derive(Debug)]
pub struct SteeringPlan {
    per_layer: Vec<Vec<Slot>>,
}

impl SteeringPlan {
    /// Check and group per-row interventions. `rows.len()` must equal the batch size.
    pub fn new(
        rows: &[RowSteering],
        n_layers: usize,
        d_model: usize,
        device: &Device,
    ) -> Result<Self> {
        let b = rows.len();
        let mut per_layer: Vec<Vec<Slot>> = (0..n_layers).map(|_| Vec::new()).collect();
        // Validate first.
        for (r, row) in rows.iter().enumerate() {
            for iv in row {
                if iv.layer >= n_layers {
                    return Err(Error::out_of_range(format!(
                        "row {r}: steering layer {} is out of range for a model with {n_layers} layers",
                        iv.layer
                    )));
                }
                let dims = iv.vector.dims();
                if dims != [d_model] {
                    return Err(Error::shape(format!(
                        "row {r}: steering vector for layer {} has shape {dims:?}, expected [{d_model}] \
                         (this model's d_model)",
                        iv.layer
                    )));
                }
                let v = iv
                    .vector
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?;
                if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                    return Err(Error::invalid(format!(
                        "row {r}: steering vector for layer {} has a non-finite value ({}) at \
                         index {j}; expected finite numbers",
                        iv.layer, v[j]
                    )));
                }
            }
        }
        for (l, slots) in per_layer.iter_mut().enumerate() {
            // k-th intervention of each row at layer l goes to slot k.
            let per_row: Vec<Vec<&Intervention>> = rows
                .iter()
                .map(|row| row.iter().filter(|iv| iv.layer == l).collect())
                .collect();
            let depth = per_row.iter().map(|v| v.len()).max().unwrap_or(0);
            for k in 0..depth {
                let zeros = Tensor::zeros(d_model, candle_core::DType::F32, device)?;
                let mut vs = Vec::with_capacity(b);
                let mut pos = Vec::with_capacity(b);
                for row in &per_row {
                    match row.get(k) {
                        Some(iv) => {
                            vs.push(iv.vector.to_device(device)?);
                            pos.push(Some(iv.positions.clone()));
                        }
                        None => {
                            vs.push(zeros.clone());
                            pos.push(None);
                        }
                    }
                }
                let vectors = Tensor::stack(&vs, 0)?.unsqueeze(1)?; // [b, 1, d]
                slots.push(Slot {
                    vectors,
                    positions: pos,
                });
            }
        }
        Ok(SteeringPlan { per_layer })
    }

    pub fn is_empty(&self) -> bool {
        self.per_layer.iter().all(|s| s.is_empty())
    }

    /// The delta to add after block `layer` on this step: [b, t, d], or None.
    pub fn delta(&self, layer: usize, ctx: &StepCtx, device: &Device) -> Result<Option<Tensor>> {
        let Some(slots) = self.per_layer.get(layer) else {
            return Ok(None);
        };
        let mut total: Option<Tensor> = None;
        let b = ctx.layout.rows();
        for slot in slots {
            let mut m = vec![0f32; b * ctx.t];
            let mut any = false;
            for (r, p) in slot.positions.iter().enumerate() {
                let Some(p) = p else { continue };
                let len = ctx.layout.lens[r];
                for j in 0..ctx.t {
                    if let Some(pos) = ctx.position(r, j) {
                        if p.hits(pos, len) {
                            m[r * ctx.t + j] = 1.0;
                            any = true;
                        }
                    }
                }
            }
            if !any {
                continue;
            }
            if device.is_cpu() && !slot.vectors.track_op() && total.is_none() {
                // Inference on the CPU: write the [b, t, d] delta directly (each hit
                // position gets its row's vector, exactly mask * v). candle's broadcast
                // multiply would run on its own thread pool, waking threads that then
                // compete with the kernels' (measured +5% wall on 16-row decode).
                let v = slot.vectors.flatten_all()?.to_vec1::<f32>()?; // [b * d]
                let d = v.len() / b.max(1);
                let mut out = vec![0f32; b * ctx.t * d];
                for (i, &w) in m.iter().enumerate() {
                    if w != 0.0 {
                        let r = i / ctx.t;
                        out[i * d..(i + 1) * d].copy_from_slice(&v[r * d..(r + 1) * d]);
                    }
                }
                total = Some(Tensor::from_vec(out, (b, ctx.t, d), device)?);
                continue;
            }
            let mask = Tensor::from_vec(m, (b, ctx.t, 1), device)?;
            let d = mask.broadcast_mul(&slot.vectors)?; // [b, t, d]
            total = Some(match total {
                Some(t) => (t + d)?,
                None => d,
            });
        }
        Ok(total)
    }
}
