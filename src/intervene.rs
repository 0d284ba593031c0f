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
            Positions::Indices(ix) => ix
                .iter()
                .any(|&i| resolve_index(i, prompt_len) == Some(pos)),
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
        let mut per_layer: Vec<Vec<Slot>> = (0..n_layers).map(|_| Vec::new()).collect();
        // Validate first.
        for (r, row) in rows.iter().enumerate() {
            for iv in row {
                iv.positions.check(r, lens[r], extra)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(positions: Positions) -> Vec<RowSteering> {
        vec![vec![Intervention {
            layer: 0,
            vector: Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
            positions,
        }]]
    }

    fn plan(positions: Positions, len: usize, extra: usize) -> Result<SteeringPlan> {
        SteeringPlan::new(&row(positions), &[len], extra, 2, 4, &Device::Cpu)
    }

    #[test]
    fn indices_resolve_from_either_end() {
        assert_eq!(resolve_index(0, 3), Some(0));
        assert_eq!(resolve_index(-1, 3), Some(2));
        assert_eq!(resolve_index(-3, 3), Some(0));
        assert_eq!(resolve_index(-4, 3), None);
        assert_eq!(resolve_index(i64::MIN, 3), None);
        assert_eq!(resolve_index(5, 3), Some(5));
    }

    #[test]
    fn positions_outside_the_row_are_refused() {
        let e = plan(Positions::Indices(vec![-8]), 3, 0).unwrap_err();
        assert!(matches!(e, Error::OutOfRange(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "row 0: steering position -8 is outside the row, which has 3 prompt tokens \
             (expected 0..2 or -3..-1, this call reads no generated token)"
        );
        let e = plan(Positions::Indices(vec![3]), 3, 0).unwrap_err();
        assert!(matches!(e, Error::OutOfRange(_)), "{e}");
        // Decode step k is position len + k: 3 and 4 are read when 2 generated tokens are.
        assert!(plan(Positions::Indices(vec![3, 4]), 3, 2).is_ok());
        let e = plan(Positions::Indices(vec![5]), 3, 2).unwrap_err();
        assert!(
            e.to_string()
                .contains("or 3..4 for the 2 generated token(s)"),
            "{e}"
        );
        assert!(plan(Positions::Indices(vec![-3, 0, 2]), 3, 0).is_ok());
        assert!(matches!(
            plan(Positions::Indices(vec![]), 3, 0),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn generated_needs_generated_tokens() {
        let e = plan(Positions::Generated, 3, 0).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(plan(Positions::Generated, 3, 1).is_ok());
        assert!(plan(Positions::Last, 3, 0).is_ok());
        assert!(plan(Positions::Prompt, 3, 0).is_ok());
    }

    #[test]
    fn lens_must_match_rows() {
        let r = SteeringPlan::new(&row(Positions::All), &[3, 4], 0, 2, 4, &Device::Cpu);
        assert!(matches!(r, Err(Error::InvalidArgument(_))));
    }
}
