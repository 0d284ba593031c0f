//! Decoder-only transformer with sites inside every block.
//!
//! The forward calls a [`Hooks`] value at every [`Site`] (`embed`, and per block
//! `attn_out`, `resid_mid`, `mlp_out`, `resid_post`); what the hook returns is what the
//! forward continues with, so steering plans, captures and learned modules all plug in
//! there and the model knows none of them. The execution mode ([`Mode`]) travels in the
//! step context. The weights are immutable; the KV cache and the hooks are per-call
//! values, so one `Model` serves many threads.

pub mod attention;
pub mod block;
pub mod config;
pub mod cross;
pub mod gemma3;
pub mod llama;
pub mod ops;
pub mod step;
pub mod weights;

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::tokenize::Tokenizer;
use attention::{AttnInput, LayerCache, Mask};
use block::Block;
pub use config::{Activation, Arch, Config, RopeScaling};
pub use ops::{Mode, RmsNorm};
pub use step::{BatchLayout, Hooks, NoHooks, Site, SiteKind, StepCtx};
pub use weights::WeightDtype;
use weights::{Embedding, Linear, Weights};

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

/// The rotary tables and attention masks of one step (global, and Gemma's local
/// sliding-window ones, built when a block first needs them).
pub struct StepTables {
    rot_g: attention::Rotary,
    rot_l: Option<attention::Rotary>,
    mask_g: Mask,
    local: Option<(usize, Mask)>,
}

impl StepTables {
    /// The rotary table and mask block `i` of `model` attends with.
    pub fn for_block(
        &mut self,
        model: &Model,
        i: usize,
        ctx: &StepCtx,
    ) -> Result<(&attention::Rotary, &Mask)> {
        let window = model.cfg.sliding_window.get(i).copied().flatten();
        Ok(match window {
            None => (&self.rot_g, &self.mask_g),
            Some(w) => {
                if self.local.as_ref().map(|(mw, _)| *mw) != Some(w) {
                    self.local = Some((w, step::mask(ctx, Some(w), &model.device)?));
                }
                let m = match &self.local {
                    Some((_, m)) => m,
                    None => &self.mask_g,
                };
                (self.rot_l.as_ref().unwrap_or(&self.rot_g), m)
            }
        })
    }
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
        let blocks = crate::pool::in_pool(|| {
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
        let ig = step::inv_freq(&cfg, cfg.rope_theta, true);
        let il = step::inv_freq(&cfg, cfg.rope_local_theta, false);
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

    /// Token embeddings (scaled for Gemma): ids [b, t] -> [b, t, d].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let h = self.embed.forward(ids)?;
        Ok(match self.cfg.embed_scale {
            Some(s) => (h * s)?,
            None => h,
        })
    }

    /// Run every block over one step, starting from embeddings `h` [b, t, d]; returns
    /// the residual stream after the last block [b, t, d] (before the final norm).
    pub fn forward_embeds(
        &self,
        h: Tensor,
        ctx: &StepCtx,
        cache: &mut [LayerCache],
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        self.forward_blocks(h, 0..self.cfg.n_layers, ctx, cache, hooks)
    }

    /// Run blocks `blocks` over one step. `h` [b, t, d] is the input of the first: the
    /// embeddings when it is block 0, else `resid_post` of the block before it. The hook
    /// at that entry site (`embed` or `resid_post[start - 1]`) is applied first, so a
    /// frozen prefix computed once (blocks `0..s` under [`NoHooks`]) can be resumed at
    /// block s with the hooks of the trained sites. Returns `resid_post` of the last
    /// block [b, t, d]. In `Mode::Gradient` every op on the path from a tracked tensor
    /// (a `Var` in `h` or in a hook) to the output has a backward pass.
    pub fn forward_blocks(
        &self,
        h: Tensor,
        blocks: Range<usize>,
        ctx: &StepCtx,
        cache: &mut [LayerCache],
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let n = self.cfg.n_layers;
        if cache.len() != n {
            return Err(Error::invalid(format!(
                "KV cache has {} layers, model has {n}",
                cache.len()
            )));
        }
        if blocks.start > blocks.end || blocks.end > n {
            return Err(Error::out_of_range(format!(
                "blocks {}..{} are out of range for a model with {n} blocks",
                blocks.start, blocks.end
            )));
        }
        let mut tables = self.step_tables(ctx)?;
        let entry = match blocks.start {
            0 => Site::Embed,
            s => Site::ResidPost(s - 1),
        };
        let mut x = hooks.at(entry, h, ctx)?; // [b, t, d]
        for i in blocks {
            hooks.before_block(i)?;
            let (rot, mask) = tables.for_block(self, i, ctx)?;
            let mut a = AttnInput {
                rot,
                mask,
                cache: &mut cache[i],
                mode: ctx.mode,
            };
            let block = &self.blocks[i];
            let attn = block.attn_out(&x, &mut a)?; // [b, t, d]
            let attn = hooks.at(Site::AttnOut(i), attn, ctx)?;
            let mid = hooks.at(Site::ResidMid(i), (x + attn)?, ctx)?; // [b, t, d]
            let mlp = block.mlp_out(&mid, ctx.mode)?; // [b, t, d]
            let mlp = hooks.at(Site::MlpOut(i), mlp, ctx)?;
            x = hooks.at(Site::ResidPost(i), (mid + mlp)?, ctx)?; // [b, t, d]
        }
        Ok(x)
    }

    /// The rotary tables and attention masks of one step, shared by its blocks.
    pub fn step_tables(&self, ctx: &StepCtx) -> Result<StepTables> {
        let dev = &self.device;
        Ok(StepTables {
            rot_g: step::rotary(ctx, &self.inv_freq_global, dev)?,
            rot_l: if self.cfg.arch == Arch::Gemma3 {
                Some(step::rotary(ctx, &self.inv_freq_local, dev)?)
            } else {
                None
            },
            mask_g: step::mask(ctx, None, dev)?,
            local: None,
        })
    }

    /// Block i (0-based). Errors: `OutOfRange` past the last block.
    pub fn block(&self, i: usize) -> Result<&Block> {
        self.blocks.get(i).ok_or_else(|| {
            Error::out_of_range(format!(
                "block {i} is out of range for a model with {} blocks",
                self.blocks.len()
            ))
        })
    }

    /// The final norm (before the LM head).
    pub fn final_norm(&self) -> &RmsNorm {
        &self.norm
    }

    /// Forward one step from token ids [b, t] (u32).
    pub fn forward(
        &self,
        ids: &Tensor,
        ctx: &StepCtx,
        cache: &mut [LayerCache],
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let h = self.embed(ids)?;
        self.forward_embeds(h, ctx, cache, hooks)
    }

    /// Next-token logits from the residual at the last column: h [b, t, d] -> [b, vocab].
    pub fn logits_last(&self, h: &Tensor, mode: Mode) -> Result<Tensor> {
        let (_, t, _) = h.dims3()?;
        let last = h.narrow(1, t - 1, 1)?.contiguous()?; // [b, 1, d]
        let x = self.norm.forward(&last, mode)?;
        let mut y = self.lm_head.forward(&x)?.squeeze(1)?; // [b, vocab]
        if let Some(c) = self.cfg.final_logit_softcap {
            y = ((y / c)?.tanh()? * c)?;
        }
        Ok(y.to_dtype(DType::F32)?)
    }

    /// Next-token logits at every column: h [b, t, d] -> [b, t, vocab] (f32).
    pub fn logits_all(&self, h: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = self.norm.forward(&h.contiguous()?, mode)?;
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
