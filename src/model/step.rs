//! One forward step: the batch layout, the step context (columns, execution mode), the
//! sites where hooks read and edit the stream, and the per-step mask and rotary tables.

use std::fmt;

use candle_core::{Device, Tensor};

use super::attention::{Mask, Rotary};
use super::config::{Config, RopeScaling};
use super::ops::Mode;
use crate::error::Result;

/// Where the forward can record and intervene, named after TransformerLens's hook points
/// (`hook_embed`-like `embed`, `blocks.{i}.hook_attn_out`, ...).
///
/// In block i: `attn_out(i)` is what the attention sub-block adds to the residual (Gemma:
/// after its post-attention norm), `resid_mid(i)` the residual between the two
/// sub-blocks, `mlp_out(i)` what the MLP sub-block adds (Gemma: after its post-MLP
/// norm), and `resid_post(i)` the residual after the block (Hugging Face
/// `hidden_states[i + 1]`). `embed` is the input of block 0 (Gemma: already scaled by
/// sqrt(d_model)). Hence resid_post(i) = resid_post(i-1) + attn_out(i) + mlp_out(i).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    Embed,
    AttnOut(usize),
    ResidMid(usize),
    MlpOut(usize),
    ResidPost(usize),
}

/// The kinds of sites inside a block, for callers that name a kind and a list of layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SiteKind {
    Embed,
    AttnOut,
    ResidMid,
    MlpOut,
    ResidPost,
}

impl SiteKind {
    pub const NAMES: &'static str = "'resid_post', 'resid_mid', 'attn_out', 'mlp_out' or 'embed'";

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "embed" => SiteKind::Embed,
            "attn_out" => SiteKind::AttnOut,
            "resid_mid" => SiteKind::ResidMid,
            "mlp_out" => SiteKind::MlpOut,
            "resid_post" => SiteKind::ResidPost,
            other => {
                return Err(crate::error::Error::invalid(format!(
                    "unknown site '{other}' (expected {})",
                    Self::NAMES
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SiteKind::Embed => "embed",
            SiteKind::AttnOut => "attn_out",
            SiteKind::ResidMid => "resid_mid",
            SiteKind::MlpOut => "mlp_out",
            SiteKind::ResidPost => "resid_post",
        }
    }

    /// The site of this kind in block `layer` (`embed` has no layer).
    pub fn at(self, layer: usize) -> Site {
        match self {
            SiteKind::Embed => Site::Embed,
            SiteKind::AttnOut => Site::AttnOut(layer),
            SiteKind::ResidMid => Site::ResidMid(layer),
            SiteKind::MlpOut => Site::MlpOut(layer),
            SiteKind::ResidPost => Site::ResidPost(layer),
        }
    }
}

impl Site {
    /// The kind of this site (its name without the layer).
    pub fn kind(&self) -> SiteKind {
        match *self {
            Site::Embed => SiteKind::Embed,
            Site::AttnOut(_) => SiteKind::AttnOut,
            Site::ResidMid(_) => SiteKind::ResidMid,
            Site::MlpOut(_) => SiteKind::MlpOut,
            Site::ResidPost(_) => SiteKind::ResidPost,
        }
    }

    /// The block the site belongs to (None for `embed`).
    pub fn layer(&self) -> Option<usize> {
        match *self {
            Site::Embed => None,
            Site::AttnOut(i) | Site::ResidMid(i) | Site::MlpOut(i) | Site::ResidPost(i) => Some(i),
        }
    }

    /// The first block whose forward computes this site (0 for `embed`): a frozen prefix
    /// may end at that block's input.
    pub fn block(&self) -> usize {
        match *self {
            Site::Embed => 0,
            Site::ResidPost(i) => i + 1,
            Site::AttnOut(i) | Site::ResidMid(i) | Site::MlpOut(i) => i,
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Embed => write!(f, "embed"),
            Site::AttnOut(i) => write!(f, "attn_out[{i}]"),
            Site::ResidMid(i) => write!(f, "resid_mid[{i}]"),
            Site::MlpOut(i) => write!(f, "mlp_out[{i}]"),
            Site::ResidPost(i) => write!(f, "resid_post[{i}]"),
        }
    }
}

/// What the forward calls at every site: the one seam between the model and the code
/// that reads or edits activations (steering plans, captures, learned modules). The
/// model knows this trait only.
pub trait Hooks {
    /// `h` is what the forward computed at `site` ([b, t, d]); the forward continues with
    /// what this returns (the same tensor when nothing applies).
    fn at(&mut self, site: Site, h: Tensor, ctx: &StepCtx) -> Result<Tensor>;

    /// Called before each decoder block; an error stops the forward (cancellation).
    fn before_block(&mut self, _block: usize) -> Result<()> {
        Ok(())
    }
}

/// No reading, no editing.
pub struct NoHooks;

impl Hooks for NoHooks {
    fn at(&mut self, _site: Site, h: Tensor, _ctx: &StepCtx) -> Result<Tensor> {
        Ok(h)
    }
}

/// Rows of a left-padded batch: prompt lengths and the padded width.
#[derive(Debug, Clone)]
pub struct BatchLayout {
    pub lens: Vec<usize>,
    pub width: usize,
}

impl BatchLayout {
    pub fn new(lens: Vec<usize>) -> Self {
        let width = lens.iter().copied().max().unwrap_or(0);
        BatchLayout { lens, width }
    }
    pub fn rows(&self) -> usize {
        self.lens.len()
    }
    pub fn pad(&self, row: usize) -> usize {
        self.width - self.lens[row]
    }
}

/// One forward step over columns `[start, start + t)` of the padded batch, in one
/// execution mode. Prefill is `start = 0, t = width`; decode step k is
/// `start = width + k, t = 1`.
#[derive(Debug, Clone)]
pub struct StepCtx<'a> {
    pub layout: &'a BatchLayout,
    pub start: usize,
    pub t: usize,
    pub mode: Mode,
}

impl<'a> StepCtx<'a> {
    /// The prefill of a whole batch for inference.
    pub fn prefill(layout: &'a BatchLayout) -> Self {
        StepCtx {
            layout,
            start: 0,
            t: layout.width,
            mode: Mode::Inference,
        }
    }

    /// Position of (row, column j of this step) in the unpadded sequence, or None on a
    /// padding column. Decode step k of a row is position `len + k`.
    pub fn position(&self, row: usize, j: usize) -> Option<usize> {
        let col = self.start + j;
        let pad = self.layout.pad(row);
        (col >= pad).then(|| col - pad)
    }
    pub fn is_prefill(&self) -> bool {
        self.start == 0
    }
}

/// Rotary inverse frequencies (f32, as transformers computes them).
pub(super) fn inv_freq(cfg: &Config, base: f64, scaled: bool) -> Vec<f32> {
    let hd = cfg.head_dim;
    let mut f: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0f32 / (base as f32).powf((2 * i) as f32 / hd as f32))
        .collect();
    if !scaled {
        return f;
    }
    match &cfg.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear(s) => f.iter_mut().for_each(|x| *x /= *s as f32),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } => {
            let low_wl = original_max_position / low_freq_factor;
            let high_wl = original_max_position / high_freq_factor;
            for x in f.iter_mut() {
                let wl = 2.0 * std::f64::consts::PI / *x as f64;
                let v = *x as f64;
                *x = if wl < high_wl {
                    v
                } else if wl > low_wl {
                    v / factor
                } else {
                    let smooth = (original_max_position / wl - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * v / factor + smooth * v
                } as f32;
            }
        }
    }
    f
}

/// Additive attention mask [b, 1, 1, t, T] for one step.
pub(super) fn mask(ctx: &StepCtx, window: Option<usize>, device: &Device) -> Result<Mask> {
    let b = ctx.layout.rows();
    let kv = ctx.start + ctx.t;
    let mut m = vec![f32::NEG_INFINITY; b * ctx.t * kv];
    for r in 0..b {
        let pad = ctx.layout.pad(r);
        for j in 0..ctx.t {
            let qc = ctx.start + j;
            let row = &mut m[(r * ctx.t + j) * kv..(r * ctx.t + j + 1) * kv];
            if qc < pad {
                // A padding query attends to itself only, so it stays finite.
                row[qc] = 0.0;
                continue;
            }
            let lo = match window {
                Some(w) => pad.max((qc + 1).saturating_sub(w)),
                None => pad,
            };
            for x in row.iter_mut().take(qc + 1).skip(lo) {
                *x = 0.0;
            }
        }
    }
    Ok(Mask {
        t: Tensor::from_slice(&m, (b, 1, 1, ctx.t, kv), device)?,
        v: m,
    })
}

/// cos/sin [b, t, hd/2] for this step's positions.
pub(super) fn rotary(ctx: &StepCtx, inv: &[f32], device: &Device) -> Result<Rotary> {
    let b = ctx.layout.rows();
    let half = inv.len();
    let mut cos_v = Vec::with_capacity(b * ctx.t * half);
    let mut sin_v = Vec::with_capacity(b * ctx.t * half);
    for r in 0..b {
        for j in 0..ctx.t {
            let pos = ctx.position(r, j).unwrap_or(0) as f32;
            for &f in inv {
                let ang = pos * f;
                cos_v.push(ang.cos());
                sin_v.push(ang.sin());
            }
        }
    }
    let shape = (b, ctx.t, half);
    Ok(Rotary {
        cos: Tensor::from_slice(&cos_v, shape, device)?,
        sin: Tensor::from_slice(&sin_v, shape, device)?,
        cos_v,
        sin_v,
    })
}
