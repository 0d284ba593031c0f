//! Decoder-only transformer with intervention sites.
//!
//! A site is the embedding output (`Site::Embed`) or the residual stream after decoder
//! block i (`Site::Layer(i)`, Hugging Face `hidden_states[i + 1]`). At every site the
//! forward adds the steering deltas for that layer and records what the capture asks
//! for. The weights are immutable; the KV cache, steering plan and capture buffers are
//! per-call values, so one `Model` serves many threads.

pub mod attention;
pub mod config;
pub mod gemma3;
pub mod llama;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use sha2::{Digest, Sha256};

use crate::cancel::Cancel;
use crate::capture::Capture;
use crate::error::{Error, Result};
use crate::intervene::SteeringPlan;
use crate::tokenize::Tokenizer;
use attention::{AttnInput, LayerCache, Mask, Rotary};
pub use config::{Activation, Arch, Config, RopeScaling};
pub use weights::WeightDtype;
use weights::{Embedding, Linear, Weights};

/// Root-mean-square norm: x / sqrt(mean(x^2) + eps) * w (Gemma's 1 + w is folded in at
/// load time).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    w: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(w: &Weights, name: &str, len: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            w: w.vector(name, len)?,
            eps: eps as f32,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        if x.track_op() {
            // The fused kernel has no backward pass; gradients need elementary ops.
            candle_nn::ops::rms_norm_slow(&x, &self.w, self.eps)
        } else {
            candle_nn::ops::rms_norm(&x, &self.w, self.eps)
        }
    }
}

/// Gated MLP: down(act(gate(x)) * up(x)).
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl Mlp {
    pub fn load(w: &Weights, cfg: &Config, i: usize) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        Ok(Mlp {
            gate: w.linear(&format!("{i}.gate"), f, d)?,
            up: w.linear(&format!("{i}.up"), f, d)?,
            down: w.linear(&format!("{i}.down"), d, f)?,
            act: cfg.activation,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let g = self.gate.forward(x)?; // [b, t, d_ff]
        let u = self.up.forward(x)?; // [b, t, d_ff]
        if self.act == Activation::Silu && !g.track_op() && !u.track_op() {
            if let Some(h) = silu_mul_cpu(&g, &u)? {
                return self.down.forward(&h); // [b, t, d]
            }
        }
        let g = match self.act {
            Activation::Silu => candle_nn::ops::silu(&g)?,
            Activation::GeluTanh => g.gelu()?,
        };
        self.down.forward(&(g * u)?) // [b, t, d]
    }
}

/// silu(g) * u in one pass over f32 CPU tensors, on rayon's pool when large (candle's
/// `silu` and `*` each allocate, and above 64 K values run on candle's own thread pool,
/// whose threads then compete with rayon's). The same formula per element as candle's
/// (`g / (1 + exp(-g))`, then `* u`), so the same bits. `None` when the tensors are not
/// contiguous f32 on the CPU of one shape (the caller takes candle's ops).
fn silu_mul_cpu(g: &Tensor, u: &Tensor) -> candle_core::Result<Option<Tensor>> {
    use candle_core::{CpuStorage, Storage};
    use rayon::prelude::*;
    if g.dims() != u.dims() {
        return Ok(None);
    }
    let (gs, gl) = g.storage_and_layout();
    let (us, ul) = u.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(gd)), Storage::Cpu(CpuStorage::F32(ud))) = (&*gs, &*us)
    else {
        return Ok(None);
    };
    let (Some((g0, g1)), Some((u0, u1))) = (gl.contiguous_offsets(), ul.contiguous_offsets())
    else {
        return Ok(None);
    };
    let (gv, uv) = (&gd[g0..g1], &ud[u0..u1]);
    let f = |(&g, &u): (&f32, &f32)| (g / (1.0 + (-g).exp())) * u;
    const PAR_MIN: usize = 64 * 1024;
    let out: Vec<f32> = if gv.len() >= PAR_MIN {
        gv.par_iter()
            .zip(uv.par_iter())
            .with_min_len(8 * 1024)
            .map(f)
            .collect()
    } else {
        gv.iter().zip(uv).map(f).collect()
    };
    Ok(Some(Tensor::from_vec(out, g.shape(), g.device())?))
}

/// Gemma's chat turn format (`<start_of_turn>role ... <end_of_turn>`), written for
/// files that carry no `tokenizer.chat_template`. A system message is folded into the
/// first user turn, as Gemma has no system role.
const GEMMA_TURN_TEMPLATE: &str = "{{- bos_token -}}\
{%- set sys = namespace(text='') -%}\
{%- for m in messages -%}\
{%- if m['role'] == 'system' -%}{%- set sys.text = m['content'] + '\n\n' -%}\
{%- else -%}\
{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}\
{{- '<start_of_turn>' + role + '\n' + (sys.text if role == 'user' else '') + m['content'] | trim + '<end_of_turn>\n' -}}\
{%- if role == 'user' -%}{%- set sys.text = '' -%}{%- endif -%}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}";

enum Block {
    Llama(llama::LlamaBlock),
    Gemma3(gemma3::Gemma3Block),
}

/// Where the forward can record and intervene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    Embed,
    Layer(usize),
}

/// Rotary inverse frequencies (f32, as transformers computes them).
fn inv_freq(cfg: &Config, base: f64, scaled: bool) -> Vec<f32> {
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

/// One forward step over columns `[start, start + t)` of the padded batch.
/// Prefill is `start = 0, t = width`; decode step k is `start = width + k, t = 1`.
#[derive(Debug, Clone)]
pub struct StepCtx<'a> {
    pub layout: &'a BatchLayout,
    pub start: usize,
    pub t: usize,
}

impl StepCtx<'_> {
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

/// Hooks applied at the sites during one step.
#[derive(Default)]
pub struct Sites<'a> {
    pub steering: Option<&'a SteeringPlan>,
    pub capture: Option<&'a mut Capture>,
    /// Checked before each decoder block, so a long prefill stops within one block.
    pub cancel: Option<&'a Cancel>,
}

pub struct Model {
    pub cfg: Config,
    pub tokenizer: Tokenizer,
    pub dtype: WeightDtype,
    pub device: Device,
    pub path: PathBuf,
    pub fingerprint: String,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq_global: Vec<f32>,
    inv_freq_local: Vec<f32>,
}

impl Model {
    /// Load a `.gguf` file or a Hugging Face folder.
    pub fn load(path: &Path, dtype: WeightDtype, device: Device) -> Result<Model> {
        if !path.exists() {
            return Err(Error::NotFound {
                path: path.to_path_buf(),
                what: "expected a .gguf file or a Hugging Face model folder".into(),
            });
        }
        // Every loader validates what it reads before using it; the catch is the last line
        // of defence so that a check still missing cannot unwind into the caller.
        let load = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if path.is_dir() {
                Self::load_hf_dir(path, dtype, device)
            } else {
                Self::load_gguf(path, dtype, device)
            }
        }));
        load.unwrap_or_else(|panic| {
            Err(Error::format(format!(
                "{}: loading failed on a check steerlab lacks ({}); the file is damaged or \
                 unusual; please report it",
                path.display(),
                crate::gguf::panic_message(panic.as_ref())
            )))
        })
    }

    fn load_gguf(path: &Path, dtype: WeightDtype, device: Device) -> Result<Model> {
        let g = crate::gguf::open(path)?;
        let cfg = config::from_gguf(&g)?;
        let mut tokenizer = Tokenizer::from_gguf(&g)?;
        if tokenizer.chat_template.is_none() && cfg.arch == Arch::Gemma3 {
            // Some Gemma 3 GGUF conversions carry no template; Gemma's turn format is fixed.
            tokenizer.chat_template = Some(GEMMA_TURN_TEMPLATE.to_string());
        }
        let w = Weights::from_gguf(g, dtype, device.clone(), cfg.arch);
        Self::build(cfg, tokenizer, w, path)
    }

    fn load_hf_dir(dir: &Path, dtype: WeightDtype, device: Device) -> Result<Model> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::NotFound {
                path: dir.to_path_buf(),
                what: "folder has no config.json (expected a Hugging Face model folder with \
                       config.json, *.safetensors and tokenizer.json, or a .gguf file)"
                    .into(),
            });
        }
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let hf: config::HfConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(format!("{}: invalid config: {e}", cfg_path.display())))?;
        let cfg = hf.into_config()?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(Error::NotFound {
                path: tok_path,
                what: "a Hugging Face folder needs tokenizer.json".into(),
            });
        }
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        let mut w = Weights::from_hf_dir(dir, device.clone(), cfg.arch)?;
        w.dtype = match dtype {
            WeightDtype::Auto | WeightDtype::F32 => WeightDtype::F32,
        };
        let mut m = Self::build(cfg, tokenizer, w, dir)?;
        m.dtype = dtype;
        Ok(m)
    }

    fn build(cfg: Config, tokenizer: Tokenizer, w: Weights, path: &Path) -> Result<Model> {
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(Error::format(format!(
                "{}: the tokenizer has {} tokens but the model's embedding has only {} rows \
                 (expected at most as many tokens as rows)",
                path.display(),
                tokenizer.vocab_size(),
                cfg.vocab_size
            )));
        }
        let embed = w.embedding(cfg.vocab_size, cfg.d_model)?;
        // Blocks read and repack their tensors independently (positional reads): in
        // parallel, the first error wins.
        let blocks = crate::generate::in_pool(|| {
            use rayon::prelude::*;
            (0..cfg.n_layers)
                .into_par_iter()
                .map(|i| -> Result<Block> {
                    Ok(match cfg.arch {
                        Arch::Llama | Arch::Qwen2 => {
                            Block::Llama(llama::LlamaBlock::load(&w, &cfg, i)?)
                        }
                        Arch::Gemma3 => Block::Gemma3(gemma3::Gemma3Block::load(&w, &cfg, i)?),
                    })
                })
                .collect::<Result<Vec<Block>>>()
        })?;
        let norm = RmsNorm::load(&w, "norm", cfg.d_model, cfg.rms_eps)?;
        let lm_head = if cfg.tie_embeddings {
            embed.as_linear()?
        } else if w.exists("lm_head") {
            w.linear("lm_head", cfg.vocab_size, cfg.d_model)?
        } else {
            // GGUF files tie exactly when there is no output.weight, so this is an HF
            // checkpoint whose config says the output projection is separate.
            return Err(Error::format(format!(
                "{}: config.json sets tie_word_embeddings = false (or leaves it at the \
                 {} default, false) but the checkpoint has no 'lm_head.weight'; expected \
                 the output projection, or tie_word_embeddings: true",
                path.display(),
                cfg.arch.name()
            )));
        };
        let mut h = Sha256::new();
        h.update(format!(
            "{}|{}|{}|{}|{}|{}|{}",
            cfg.arch.name(),
            cfg.n_layers,
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.d_ff,
            cfg.vocab_size
        ));
        h.update(w.fingerprint_bytes()?);
        let fingerprint: String = h
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let dev = w.device.clone();
        let ig = inv_freq(&cfg, cfg.rope_theta, true);
        let il = inv_freq(&cfg, cfg.rope_local_theta, false);
        Ok(Model {
            inv_freq_global: ig,
            inv_freq_local: il,
            tokenizer,
            dtype: w.dtype,
            device: dev,
            path: path.to_path_buf(),
            fingerprint,
            embed,
            blocks,
            norm,
            lm_head,
            cfg,
        })
    }

    pub fn n_layers(&self) -> usize {
        self.cfg.n_layers
    }
    pub fn d_model(&self) -> usize {
        self.cfg.d_model
    }

    /// Resolve a possibly negative layer index.
    pub fn resolve_layer(&self, layer: i64) -> Result<usize> {
        let n = self.cfg.n_layers as i64;
        let i = if layer < 0 {
            layer.saturating_add(n)
        } else {
            layer
        };
        if i < 0 || i >= n {
            return Err(Error::out_of_range(format!(
                "layer {layer} is out of range: this model has {n} layers (valid: 0..{} or -{n}..-1)",
                n - 1
            )));
        }
        Ok(i as usize)
    }

    /// Additive attention mask [b, 1, 1, t, T] for one step.
    fn mask(&self, ctx: &StepCtx, window: Option<usize>) -> Result<Mask> {
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
            t: Tensor::from_slice(&m, (b, 1, 1, ctx.t, kv), &self.device)?,
            v: m,
        })
    }

    /// cos/sin [b, t, hd/2] for this step's positions.
    fn rotary(&self, ctx: &StepCtx, inv: &[f32]) -> Result<Rotary> {
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
            cos: Tensor::from_slice(&cos_v, shape, &self.device)?,
            sin: Tensor::from_slice(&sin_v, shape, &self.device)?,
            cos_v,
            sin_v,
        })
    }

    /// Token embeddings (scaled for Gemma): ids [b, t] -> [b, t, d].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let h = self.embed.forward(ids)?;
        Ok(match self.cfg.embed_scale {
            Some(s) => (h * s)?,
            None => h,
        })
    }

    /// Run the blocks over one step, starting from embeddings `h` [b, t, d]; returns the
    /// residual stream after the last block [b, t, d] (before the final norm).
    ///
    /// Differentiable: when an input or an intervention vector is a candle `Var` (dense
    /// weights), every op on its path has a backward pass (fused kernels without one are
    /// swapped for elementary ops only then).
    pub fn forward_embeds(
        &self,
        h: Tensor,
        ctx: &StepCtx,
        cache: &mut [LayerCache],
        sites: &mut Sites,
    ) -> Result<Tensor> {
        if cache.len() != self.cfg.n_layers {
            return Err(Error::invalid(format!(
                "KV cache has {} layers, model has {}",
                cache.len(),
                self.cfg.n_layers
            )));
        }
        let rot_g = self.rotary(ctx, &self.inv_freq_global)?;
        let rot_l = if self.cfg.arch == Arch::Gemma3 {
            Some(self.rotary(ctx, &self.inv_freq_local)?)
        } else {
            None
        };
        let mask_global = self.mask(ctx, None)?;
        let mut mask_local: Option<(usize, Mask)> = None;
        let mut h = self.site(Site::Embed, h, ctx, sites)?;
        for (i, (block, c)) in self.blocks.iter().zip(cache.iter_mut()).enumerate() {
            if let Some(cancel) = sites.cancel {
                cancel.check()?;
            }
            let window = self.cfg.sliding_window[i];
            let (rot, mask) = match window {
                None => (&rot_g, &mask_global),
                Some(w) => {
                    if mask_local.as_ref().map(|(mw, _)| *mw) != Some(w) {
                        mask_local = Some((w, self.mask(ctx, Some(w))?));
                    }
                    let m = match &mask_local {
                        Some((_, m)) => m,
                        None => &mask_global,
                    };
                    (rot_l.as_ref().unwrap_or(&rot_g), m)
                }
            };
            let mut a = AttnInput {
                rot,
                mask,
                cache: c,
            };
            h = match block {
                Block::Llama(b) => b.forward(&h, &mut a)?,
                Block::Gemma3(b) => b.forward(&h, &mut a)?,
            };
            h = self.site(Site::Layer(i), h, ctx, sites)?;
        }
        Ok(h)
    }

    fn site(&self, site: Site, h: Tensor, ctx: &StepCtx, sites: &mut Sites) -> Result<Tensor> {
        let mut h = h;
        if let (Some(plan), Site::Layer(l)) = (sites.steering, site) {
            if let Some(delta) = plan.delta(l, ctx, &self.device)? {
                h = (h + delta)?; // [b, t, d]
            }
        }
        if let Some(cap) = sites.capture.as_deref_mut() {
            cap.record(site, &h, ctx)?;
        }
        Ok(h)
    }

    /// Forward one step from token ids [b, t] (u32).
    pub fn forward(
        &self,
        ids: &Tensor,
        ctx: &StepCtx,
        cache: &mut [LayerCache],
        sites: &mut Sites,
    ) -> Result<Tensor> {
        let h = self.embed(ids)?;
        self.forward_embeds(h, ctx, cache, sites)
    }

    /// Next-token logits from the residual at the last column: h [b, t, d] -> [b, vocab].
    pub fn logits_last(&self, h: &Tensor) -> Result<Tensor> {
        let (_, t, _) = h.dims3()?;
        let last = h.narrow(1, t - 1, 1)?.contiguous()?; // [b, 1, d]
        let x = self.norm.forward(&last)?;
        let mut y = self.lm_head.forward(&x)?.squeeze(1)?; // [b, vocab]
        if let Some(c) = self.cfg.final_logit_softcap {
            y = ((y / c)?.tanh()? * c)?;
        }
        Ok(y.to_dtype(DType::F32)?)
    }

    /// Next-token logits at every column: h [b, t, d] -> [b, t, vocab] (f32).
    pub fn logits_all(&self, h: &Tensor) -> Result<Tensor> {
        let x = self.norm.forward(&h.contiguous()?)?;
        let mut y = self.lm_head.forward(&x)?; // [b, t, vocab]
        if let Some(c) = self.cfg.final_logit_softcap {
            y = ((y / c)?.tanh()? * c)?;
        }
        Ok(y.to_dtype(DType::F32)?)
    }

    pub fn new_cache(&self) -> Vec<LayerCache> {
        vec![LayerCache::default(); self.cfg.n_layers]
    }

    /// Left-pad a batch of token id rows into one [b, width] tensor.
    pub fn pad_batch(&self, rows: &[Vec<u32>]) -> Result<(Tensor, BatchLayout)> {
        if rows.is_empty() {
            return Err(Error::invalid("empty batch: pass at least one prompt"));
        }
        let lens: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        if let Some(i) = lens.iter().position(|&l| l == 0) {
            return Err(Error::invalid(format!(
                "prompt {i} has no tokens (an empty string with no special tokens); \
                 expected at least one token"
            )));
        }
        let layout = BatchLayout::new(lens);
        if layout.width > self.cfg.max_context {
            let (i, l) = layout
                .lens
                .iter()
                .enumerate()
                .max_by_key(|(_, l)| **l)
                .map(|(i, l)| (i, *l))
                .unwrap_or((0, 0));
            return Err(Error::ContextLength(format!(
                "prompt {i} has {l} tokens, longer than the model's context of {} tokens",
                self.cfg.max_context
            )));
        }
        let vocab = self.cfg.vocab_size as u32;
        let pad_id = 0u32; // padding columns are masked out everywhere
        let mut flat = Vec::with_capacity(rows.len() * layout.width);
        for (r, row) in rows.iter().enumerate() {
            flat.extend(std::iter::repeat_n(pad_id, layout.pad(r)));
            for &id in row {
                if id >= vocab {
                    return Err(Error::out_of_range(format!(
                        "token id {id} in prompt {r} is out of range for a vocabulary of {vocab}"
                    )));
                }
                flat.push(id);
            }
        }
        let ids = Tensor::from_vec(flat, (rows.len(), layout.width), &self.device)?;
        Ok((ids, layout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused SiLU-gate gives the bits of candle's `silu(g) * u`, below and above the
    /// size where it goes parallel, and declines what it does not handle.
    #[test]
    fn silu_mul_matches_candle_bitwise() {
        for n in [7usize, 1536 * 16, 70 * 1024 + 3] {
            let g: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.013).sin() * 9.0).collect();
            let u: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.007).cos() * 2.0).collect();
            let g = Tensor::from_vec(g, n, &Device::Cpu).unwrap();
            let u = Tensor::from_vec(u, n, &Device::Cpu).unwrap();
            let want = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
            let got = silu_mul_cpu(&g, &u)
                .unwrap()
                .expect("f32 CPU tensors are handled");
            let bits = |t: &Tensor| -> Vec<u32> {
                t.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(bits(&got), bits(&want), "n = {n}");
        }
        let g = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(silu_mul_cpu(&g, &g.t().unwrap()).unwrap().is_none()); // not contiguous
        assert!(silu_mul_cpu(&g, &g.reshape(9).unwrap()).unwrap().is_none()); // shapes
        let h = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
        assert!(silu_mul_cpu(&h, &h).unwrap().is_none());
    }
}
