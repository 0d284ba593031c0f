//! What to record at the sites and how to reduce it over tokens.

use std::collections::HashMap;

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::intervene::resolve_index;
use crate::model::{Site, StepCtx};

/// How a captured [b, t, d] residual is reduced per row.
#[derive(Debug, Clone, PartialEq)]
pub enum Reduce {
    /// The last prompt token.
    Last,
    /// Mean over the row's real (non-padding) tokens.
    Mean,
    /// Mean over the row's real tokens after the first (whose residual is the attention
    /// sink's, often tens of times larger than the others); the first token when the row
    /// has only one.
    MeanSkipFirst,
    /// One position of the unpadded prompt (negative: from the end).
    Index(i64),
    /// Every real token: one [n_sites, len, d] array per row.
    All,
}

impl Reduce {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Reduce::Last),
            "mean" => Ok(Reduce::Mean),
            "mean_skip_first" => Ok(Reduce::MeanSkipFirst),
            "all" => Ok(Reduce::All),
            other => Err(Error::invalid(format!(
                "unknown position '{other}' for capture (expected 'last', 'mean', 'mean_skip_first', 'all' or an int)"
            ))),
        }
    }
}

/// Captured values, per requested site, in request order.
pub enum Captured {
    /// [b, n_sites, d], row-major.
    Reduced { data: Vec<f32>, shape: [usize; 3] },
    /// One ([n_sites, len, d] data, shape) per row.
    PerRow(Vec<(Vec<f32>, [usize; 3])>),
}

/// Records the residual stream at the requested sites during a prefill step.
pub struct Capture {
    sites: Vec<Site>,
    reduce: Reduce,
    got: HashMap<Site, Tensor>,
}

impl Capture {
    pub fn new(sites: Vec<Site>, reduce: Reduce) -> Self {
        Capture {
            sites,
            reduce,
            got: HashMap::new(),
        }
    }

    /// Check positions against prompt lengths before running anything.
    pub fn check(&self, lens: &[usize]) -> Result<()> {
        if let Reduce::Index(i) = self.reduce {
            for (r, &len) in lens.iter().enumerate() {
                if resolve_index(i, len).is_none_or(|p| p >= len) {
                    return Err(Error::out_of_range(format!(
                        "row {r}: capture position {i} is outside the row, which has {len} \
                         tokens (expected 0..{} or -{len}..-1)",
                        len.saturating_sub(1)
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn record(&mut self, site: Site, h: &Tensor, ctx: &StepCtx) -> Result<()> {
        if !ctx.is_prefill() || !self.sites.contains(&site) {
            return Ok(());
        }
        let b = ctx.layout.rows();
        let reduced = match &self.reduce {
            // contiguous(): a copy of the [b, d] slice, so the layer's whole [b, t, d]
            // output is freed now instead of living until `finish` (W1 on SmolLM2 Q4_1,
            // batch 16 x 64 tokens, every layer: peak RSS 296 -> 230 MiB).
            Reduce::Last => h.narrow(1, ctx.t - 1, 1)?.squeeze(1)?.contiguous()?, // [b, d]
            Reduce::Mean | Reduce::MeanSkipFirst => {
                let skip = usize::from(self.reduce == Reduce::MeanSkipFirst);
                let mut m = vec![0f32; b * ctx.t];
                for r in 0..b {
                    let len = ctx.layout.lens[r];
                    let from = if len > 1 { skip } else { 0 };
                    let w = 1.0 / (len - from) as f32;
                    for j in 0..ctx.t {
                        if ctx.position(r, j).is_some_and(|p| p >= from) {
                            m[r * ctx.t + j] = w;
                        }
                    }
                }
                let m = Tensor::from_vec(m, (b, ctx.t, 1), h.device())?;
                h.broadcast_mul(&m)?.sum(1)? // [b, d]
            }
            Reduce::Index(i) => {
                let mut rows = Vec::with_capacity(b);
                for r in 0..b {
                    let len = ctx.layout.lens[r];
                    let p = resolve_index(*i, len).filter(|&p| p < len).ok_or_else(|| {
                        Error::out_of_range(format!(
                            "row {r}: capture position {i} is outside the row"
                        ))
                    })?;
                    let col = ctx.layout.pad(r) + p;
                    rows.push(h.get(r)?.get(col)?);
                }
                Tensor::stack(&rows, 0)? // [b, d]
            }
            Reduce::All => h.clone(),
        };
        self.got.insert(site, reduced.detach());
        Ok(())
    }

    /// Gather what was recorded, in the order the sites were requested.
    pub fn finish(self, lens: &[usize], width: usize) -> Result<Captured> {
        let mut parts = Vec::with_capacity(self.sites.len());
        for s in &self.sites {
            let t = self
                .got
                .get(s)
                .ok_or_else(|| Error::invalid(format!("site {s:?} was never reached")))?;
            parts.push(t.clone());
        }
        match self.reduce {
            Reduce::All => {
                let st = Tensor::stack(&parts, 1)?; // [b, n_sites, width, d]
                let d = st.dim(D::Minus1)?;
                let mut out = Vec::with_capacity(lens.len());
                for (r, &len) in lens.iter().enumerate() {
                    let row = st.get(r)?.narrow(1, width - len, len)?; // [n_sites, len, d]
                    let data = row.flatten_all()?.to_vec1::<f32>()?;
                    out.push((data, [parts.len(), len, d]));
                }
                Ok(Captured::PerRow(out))
            }
            _ => {
                let st = Tensor::stack(&parts, 1)?; // [b, n_sites, d]
                let (b, n, d) = st.dims3()?;
                Ok(Captured::Reduced {
                    data: st.flatten_all()?.to_vec1::<f32>()?,
                    shape: [b, n, d],
                })
            }
        }
    }
}

/// Records, during a generation, the activations that produced each new token: at the
/// prefill the last prompt position, then at every decode step the position of the token
/// just fed. Row r's k-th record is the activation whose output predicted its k-th
/// generated token (monitoring a generation, e.g. with a probe).
pub struct Monitor {
    sites: Vec<Site>,
    /// Per step: [b, n_sites, d] row-major.
    steps: Vec<Vec<f32>>,
    current: HashMap<Site, Tensor>,
    d: usize,
}

impl Monitor {
    /// A monitor of `sites` for a model of width `d_model`.
    pub fn new(sites: Vec<Site>, d_model: usize) -> Self {
        Monitor {
            sites,
            steps: Vec::new(),
            current: HashMap::new(),
            d: d_model,
        }
    }

    pub fn record(&mut self, site: Site, h: &Tensor, ctx: &StepCtx) -> Result<()> {
        if !self.sites.contains(&site) {
            return Ok(());
        }
        let last = h.narrow(1, ctx.t - 1, 1)?.squeeze(1)?.contiguous()?; // [b, d]
        self.current.insert(site, last.detach());
        Ok(())
    }

    /// What this step recorded so far, per site ([b, d] each).
    pub(crate) fn pending(&self) -> HashMap<Site, Tensor> {
        self.current.clone()
    }

    /// Put back `saved` (from [`Monitor::pending`]) for the rows flagged in `rows`.
    pub(crate) fn restore_rows(
        &mut self,
        saved: HashMap<Site, Tensor>,
        rows: &[bool],
    ) -> Result<()> {
        for (site, old) in saved {
            let Some(cur) = self.current.get(&site) else {
                continue;
            };
            let parts = (0..cur.dim(0)?)
                .map(|r| {
                    let src = if rows.get(r).copied().unwrap_or(false) {
                        &old
                    } else {
                        cur
                    };
                    src.narrow(0, r, 1)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let merged = Tensor::cat(&parts, 0)?;
            self.current.insert(site, merged);
        }
        Ok(())
    }

    /// Close one forward step: keep what it recorded at every site.
    pub fn end_step(&mut self) -> Result<()> {
        let mut parts = Vec::with_capacity(self.sites.len());
        for s in &self.sites {
            let t = self
                .current
                .remove(s)
                .ok_or_else(|| Error::invalid(format!("monitored site {s} was never reached")))?;
            parts.push(t);
        }
        let st = Tensor::stack(&parts, 1)?; // [b, n_sites, d]
        self.steps.push(st.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    /// One ([n_sites, counts[r], d] data, shape) per row, `counts[r]` being the number of
    /// tokens row r generated (at most the number of steps recorded).
    pub fn finish(&self, counts: &[usize]) -> Vec<(Vec<f32>, [usize; 3])> {
        let (n, d) = (self.sites.len(), self.d);
        counts
            .iter()
            .enumerate()
            .map(|(r, &c)| {
                let c = c.min(self.steps.len());
                let mut out = vec![0f32; n * c * d];
                for (k, step) in self.steps.iter().take(c).enumerate() {
                    for s in 0..n {
                        let src = (r * n + s) * d;
                        out[(s * c + k) * d..(s * c + k + 1) * d]
                            .copy_from_slice(&step[src..src + d]);
                    }
                }
                (out, [n, c, d])
            })
            .collect()
    }
}
