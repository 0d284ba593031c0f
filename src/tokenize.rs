//! Tokenizers: loaded from a Hugging Face `tokenizer.json` (plus the config files beside
//! it), or rebuilt from the vocabulary a GGUF file carries in its metadata.
//!
//! The GGUF route rebuilds the same `tokenizers` pipeline that Hugging Face's converters
//! produce for the original model, so that ids agree with the reference tokenizer:
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE from `tokens` + `merges`, with the
//!   pre-tokenizer that `tokenizer.ggml.pre` names (transformers `GPT2Converter`, and the
//!   model's own `tokenizer.json` for the regex: e.g. SmolLM2 = `Digits(individual) +
//!   ByteLevel`).
//! * `tokenizer.ggml.model = "llama"`: SentencePiece BPE with byte fallback. When the
//!   file has no merges they are derived from the scores exactly as transformers'
//!   `convert_slow_tokenizer.generate_merges` does (`GemmaConverter` / `LlamaConverter`).
//!
//! Control tokens (GGUF token type 3) become special added tokens and user-defined tokens
//! (type 4) plain added tokens, so that they are matched in raw text as Hugging Face does.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// SentencePiece's word-boundary marker.
const SPIECE_UNDERLINE: &str = "\u{2581}";

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
const TOKEN_NORMAL: i64 = 1;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
const TOKEN_BYTE: i64 = 6;

/// Tokens that end a chat turn; a GGUF tokenizer treats them as extra end-of-sequence ids
/// when they are control tokens (llama.cpp does the same to find its end-of-generation
/// set; it matches Hugging Face `generation_config.eos_token_id`, e.g. `[1, 106]` for
/// Gemma 3).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<end_of_turn>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
];

/// The GPT-2 pre-tokenizer regex is `ByteLevel(use_regex = true)`'s built-in one. These
/// are the ones Hugging Face `tokenizer.json` files use for the other families.
const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values this module reproduces (for `tokenizer.ggml.model = gpt2`).
const SUPPORTED_PRE: &str =
    "gpt-2, gpt2, smollm, starcoder, refact, codeshell, llama-bpe, llama3, smaug-bpe, qwen2";

/// A text tokenizer with the model's special-token conventions.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_id: Option<u32>,
    /// Its text (for chat templates).
    pub bos_token: Option<String>,
    /// Ids that end generation: the EOS token first, then end-of-turn tokens.
    pub eos_ids: Vec<u32>,
    /// The text of the main EOS token (for chat templates).
    pub eos_token: Option<String>,
    /// Padding token, if the model names one.
    pub pad_id: Option<u32>,
    /// Unknown token, if the model has one.
    pub unk_id: Option<u32>,
    /// Whether `encode(_, add_special_tokens = true)` prepends `bos_id`.
    pub add_bos: bool,
    /// Whether `encode(_, add_special_tokens = true)` appends the EOS token.
    pub add_eos: bool,
    /// The Jinja chat template, if the model ships one.
    pub chat_template: Option<String>,
    special: HashSet<u32>,
    vocab_size: usize,
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json`. Config files beside it are read when present:
    /// `tokenizer_config.json` (chat template, bos/eos/pad tokens, `add_bos_token`,
    /// `add_eos_token`), `chat_template.jinja` / `chat_template.json`, and the
    /// `eos_token_id` / `bos_token_id` of `generation_config.json` and `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // tokenizers panics (expect("Helper")) on JSON that does not parse; check the
        // syntax first (serde_json also bounds the nesting depth).
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| {
            Error::format(format!(
                "{}: not a valid tokenizer.json (not JSON: {e})",
                path.display()
            ))
        })?;
        let mut inner = guarded(path, || {
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
                Error::format(format!(
                    "{}: not a valid tokenizer.json ({e})",
                    path.display()
                ))
            })
        })?;
        disable_truncation_and_padding(&mut inner, path)?;

        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?;
        let (gen_path, cfg_path) = (dir.join("generation_config.json"), dir.join("config.json"));
        let gen_cfg = read_json(&gen_path)?;
        let model_cfg = read_json(&cfg_path)?;
        let vocab = inner.get_vocab_size(true);
        let bos_from_gen = json_ids(gen_cfg.as_ref(), "bos_token_id", &gen_path, vocab)?;
        let bos_from_cfg = json_ids(model_cfg.as_ref(), "bos_token_id", &cfg_path, vocab)?;

        let cfg_str = |key: &str| -> Option<String> {
            let v = tok_cfg.as_ref()?.get(key)?;
            match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let cfg_bool = |key: &str| tok_cfg.as_ref()?.get(key)?.as_bool();

        let bos_token = cfg_str("bos_token");
        let eos_token = cfg_str("eos_token");
        let id_of = |t: &Option<String>| t.as_deref().and_then(|t| inner.token_to_id(t));
        let bos_id = id_of(&bos_token)
            .or_else(|| bos_from_gen.first().copied())
            .or_else(|| bos_from_cfg.first().copied());
        let pad_id = id_of(&cfg_str("pad_token")).or(json_ids(
            gen_cfg.as_ref(),
            "pad_token_id",
            &gen_path,
            vocab,
        )?
        .first()
        .copied());
        let unk_id = id_of(&cfg_str("unk_token"));

        let mut eos_ids = Vec::new();
        let main_eos = id_of(&eos_token);
        for id in main_eos
            .into_iter()
            .chain(json_ids(
                gen_cfg.as_ref(),
                "eos_token_id",
                &gen_path,
                vocab,
            )?)
            .chain(json_ids(
                model_cfg.as_ref(),
                "eos_token_id",
                &cfg_path,
                vocab,
            )?)
        {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let eos_token = eos_token.or_else(|| eos_ids.first().and_then(|&id| inner.id_to_token(id)));
        let bos_token = bos_token.or_else(|| bos_id.and_then(|id| inner.id_to_token(id)));

        // What the tokenizer.json post-processor does on its own...
        let probe = inner
            .encode_fast("", true)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let probe = probe.get_ids();
        let mut add_bos = bos_id.is_some() && probe.first().copied() == bos_id;
        let first_eos = eos_ids.first().copied();
        let mut add_eos = probe.len() > usize::from(add_bos)
            && first_eos.is_some()
            && probe.last().copied() == first_eos;
        // ...and what transformers' Llama/Gemma fast tokenizers rebuild it to from
        // `add_bos_token` / `add_eos_token` at load time.
        let want_bos = cfg_bool("add_bos_token").unwrap_or(add_bos);
        let want_eos = cfg_bool("add_eos_token").unwrap_or(add_eos);
        if (want_bos, want_eos) != (add_bos, add_eos) {
            let bos = bos_id.zip(bos_token.clone()).filter(|_| want_bos);
            let eos = first_eos.zip(eos_token.clone()).filter(|_| want_eos);
            if (want_bos && bos.is_none()) || (want_eos && eos.is_none()) {
                return Err(Error::format(format!(
                    "{}: tokenizer_config.json asks for add_bos_token={want_bos}, add_eos_token={want_eos} but the bos/eos token is not in the vocabulary",
                    path.display()
                )));
            }
            let pp = template(bos, eos, path)?;
            inner.with_post_processor(pp);
            add_bos = want_bos;
            add_eos = want_eos;
        }

        let chat_template = match tok_cfg.as_ref().and_then(|c| c.get("chat_template")) {
            Some(v) => chat_template_from_json(v),
            None => None,
        };
        let chat_template = match chat_template {
            Some(t) => Some(t),
            None => read_chat_template_files(dir)?,
        };

        Ok(Self::assemble(
            inner,
            Meta {
                bos_id,
                bos_token,
                eos_ids,
                eos_token,
                pad_id,
                unk_id,
                add_bos,
                add_eos,
                chat_template,
            },
            None,
        ))
    }

    /// Rebuild the tokenizer a GGUF file describes in its `tokenizer.*` metadata.
    ///
    /// Errors: [`Error::Unsupported`] for a `tokenizer.ggml.model` other than `gpt2` or
    /// `llama` (or a `gpt2` pre-tokenizer it does not know), [`Error::Format`] naming the
    /// key when required metadata is missing or inconsistent.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let p = g.path.display().to_string();
        let model = g.get_str("tokenizer.ggml.model")?;
        let tokens = string_array(
            g.get_array("tokenizer.ggml.tokens")?,
            "tokenizer.ggml.tokens",
            &p,
        )?;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::format(format!(
                "{p}: tokenizer.ggml.tokens is empty (expected the vocabulary)"
            )));
        }
        if u32::try_from(n).is_err() {
            return Err(Error::format(format!(
                "{p}: tokenizer.ggml.tokens has {n} entries, more than token ids can address"
            )));
        }
        let types = match g.opt_array("tokenizer.ggml.token_type")? {
            Some(a) => {
                let t = int_array(a, "tokenizer.ggml.token_type", &p)?;
                if t.len() != n {
                    return Err(Error::format(format!(
                        "{p}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                        t.len()
                    )));
                }
                t
            }
            None => vec![TOKEN_NORMAL; n],
        };
        let id_key = |key: &str| -> Result<Option<u32>> {
            match g.opt_u32(key)? {
                Some(id) if (id as usize) >= n => Err(Error::format(format!(
                    "{p}: {key} = {id} is outside the vocabulary of {n} tokens"
                ))),
                other => Ok(other),
            }
        };
        let bos_id = id_key("tokenizer.ggml.bos_token_id")?;
        let eos_id = id_key("tokenizer.ggml.eos_token_id")?;
        let unk_id = id_key("tokenizer.ggml.unknown_token_id")?;
        let pad_id = id_key("tokenizer.ggml.padding_token_id")?;
        let eot_id = id_key("tokenizer.ggml.eot_token_id")?;
        let eom_id = id_key("tokenizer.ggml.eom_token_id")?;
        let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let chat_template = g.opt_str("tokenizer.chat_template")?.map(str::to_string);

        let (inner, add_bos) = match model {
            "gpt2" => {
                let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
                let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("gpt-2");
                let merges = match g.opt_array("tokenizer.ggml.merges")? {
                    Some(m) => parse_merges(m, &p)?,
                    None => {
                        return Err(Error::format(format!(
                            "{p}: missing GGUF metadata key 'tokenizer.ggml.merges' (a gpt2 tokenizer needs its BPE merges)"
                        )))
                    }
                };
                let spec = ByteLevelSpec {
                    tokens: &tokens,
                    types: &types,
                    merges,
                    pre,
                    bos: bos_id.filter(|_| add_bos),
                    eos: eos_id.filter(|_| add_eos),
                };
                (guarded(&g.path, || build_byte_level(spec, &p))?, add_bos)
            }
            "llama" => {
                let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true);
                let add_space_prefix = g.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                let scores = match g.opt_array("tokenizer.ggml.scores")? {
                    Some(a) => {
                        let s = float_array(a, "tokenizer.ggml.scores", &p)?;
                        if s.len() != n {
                            return Err(Error::format(format!(
                                "{p}: tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {n}",
                                s.len()
                            )));
                        }
                        Some(s)
                    }
                    None => None,
                };
                let merges = match g.opt_array("tokenizer.ggml.merges")? {
                    Some(m) => Some(parse_merges(m, &p)?),
                    None => None,
                };
                if merges.is_none() && scores.is_none() {
                    return Err(Error::format(format!(
                        "{p}: missing GGUF metadata key 'tokenizer.ggml.scores' (a llama tokenizer without merges needs its scores)"
                    )));
                }
                let spec = SpmSpec {
                    tokens: &tokens,
                    types: &types,
                    scores: scores.as_deref(),
                    merges,
                    unk: unk_id,
                    add_space_prefix,
                    bos: bos_id.filter(|_| add_bos),
                    eos: eos_id.filter(|_| add_eos),
                };
                (guarded(&g.path, || build_spm(spec, &p))?, add_bos)
            }
            other => {
                return Err(Error::unsupported(format!(
                    "{p}: tokenizer model '{other}' is not supported (supported: gpt2 = byte-level BPE, llama = SentencePiece BPE)"
                )))
            }
        };
        if add_bos && bos_id.is_none() {
            return Err(Error::format(format!(
                "{p}: tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing"
            )));
        }
        if add_eos && eos_id.is_none() {
            return Err(Error::format(format!(
                "{p}: tokenizer.ggml.add_eos_token is true but tokenizer.ggml.eos_token_id is missing"
            )));
        }

        let mut eos_ids: Vec<u32> = Vec::new();
        let turn_ends = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| types[*i] == TOKEN_CONTROL && END_OF_TURN_TOKENS.contains(t));
        for id in eos_id
            .into_iter()
            .chain(eot_id)
            .chain(eom_id)
            .chain(turn_ends.map(|(i, _)| i as u32))
        {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let name = |id: Option<u32>| id.map(|i| tokens[i as usize].to_string());
        let meta = Meta {
            bos_id,
            bos_token: name(bos_id),
            eos_ids,
            eos_token: name(eos_id),
            pad_id,
            unk_id,
            add_bos,
            add_eos,
            chat_template,
        };
        Ok(Self::assemble(inner, meta, Some(n)))
    }

    fn assemble(inner: tokenizers::Tokenizer, m: Meta, vocab_size: Option<usize>) -> Self {
        let added = inner.get_added_tokens_decoder();
        let special: HashSet<u32> = added
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let vocab_size = vocab_size.unwrap_or_else(|| {
            let model_max = inner.get_vocab(false).values().copied().max();
            let added_max = added.keys().copied().max();
            model_max.max(added_max).map_or(0, |m| m as usize + 1)
        });
        Tokenizer {
            inner,
            bos_id: m.bos_id,
            bos_token: m.bos_token,
            eos_ids: m.eos_ids,
            eos_token: m.eos_token,
            pad_id: m.pad_id,
            unk_id: m.unk_id,
            add_bos: m.add_bos,
            add_eos: m.add_eos,
            chat_template: m.chat_template,
            special,
            vocab_size,
        }
    }

    /// Token ids for `text`: the ids the model is fed for it (every call that runs the
    /// model tokenizes through here). Special tokens written literally in the text (e.g.
    /// `<|im_start|>`) are parsed as those tokens, as Hugging Face does. With
    /// `add_special_tokens`, BOS/EOS are added when the model asks for them
    /// ([`Tokenizer::add_bos`], [`Tokenizer::add_eos`]), except that a text which
    /// already starts with the BOS token (a rendered chat template, e.g. Gemma's
    /// `<bos><start_of_turn>...`) does not get a second one: Hugging Face would return
    /// `[bos, bos, ...]` there, which no model was trained on (llama.cpp warns about it).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(self.single_bos(text, enc.get_ids().to_vec(), add_special_tokens))
    }

    /// [`Tokenizer::encode`] for many texts at once (in parallel).
    pub fn encode_batch(&self, texts: &[&str], add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        let encs = self
            .inner
            .encode_batch_fast(texts.to_vec(), add_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(texts
            .iter()
            .zip(encs)
            .map(|(t, e)| self.single_bos(t, e.get_ids().to_vec(), add_special_tokens))
            .collect())
    }

    /// Drop the BOS that `add_special_tokens` put before a text that starts with the BOS
    /// token itself.
    fn single_bos(&self, text: &str, mut ids: Vec<u32>, add_special_tokens: bool) -> Vec<u32> {
        let doubled = add_special_tokens
            && self.add_bos
            && ids.len() >= 2
            && self.bos_id.is_some_and(|b| ids[0] == b && ids[1] == b)
            && self
                .bos_token
                .as_deref()
                .is_some_and(|t| !t.is_empty() && text.starts_with(t));
        if doubled {
            ids.remove(0);
        }
        ids
    }

    /// Text for `ids`. With `skip_special_tokens`, special tokens (BOS, EOS, chat markers)
    /// are left out. An id outside the vocabulary is an [`Error::OutOfRange`].
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some((pos, &bad)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.vocab_size)
        {
            return Err(Error::out_of_range(format!(
                "token id {bad} (at position {pos}) is out of range: the vocabulary has {} tokens (ids 0 to {})",
                self.vocab_size,
                self.vocab_size.saturating_sub(1)
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    /// Number of token ids (the model's vocabulary, added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The token string for `id` (in the model's own spelling, e.g. `Ġthe` or `▁the`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is a special (control) token, i.e. one `decode` skips on request.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The underlying Hugging Face `tokenizers` object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

struct Meta {
    bos_id: Option<u32>,
    bos_token: Option<String>,
    eos_ids: Vec<u32>,
    eos_token: Option<String>,
    pad_id: Option<u32>,
    unk_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

/// Run tokenizer construction, turning a panic inside `tokenizers` into an error.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".to_string());
            Err(Error::Tokenizer(format!(
                "{}: building the tokenizer failed (internal panic: {msg})",
                path.display()
            )))
        }
    }
}

fn tk_err(p: &str, what: &str) -> impl Fn(tokenizers::Error) -> Error {
    let ctx = format!("{p}: {what}");
    move |e| Error::Tokenizer(format!("{ctx}: {e}"))
}

fn disable_truncation_and_padding(inner: &mut tokenizers::Tokenizer, path: &Path) -> Result<()> {
    inner
        .with_truncation(None)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    inner.with_padding(None);
    Ok(())
}

// ------------------------------------------------------------------ GGUF helpers

fn string_array<'a>(a: &'a [Value], key: &str, p: &str) -> Result<Vec<&'a str>> {
    a.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(Error::format(format!(
                "{p}: {key}[{i}] is not a string (expected an array of strings)"
            ))),
        })
        .collect()
}

fn int_array(a: &[Value], key: &str, p: &str) -> Result<Vec<i64>> {
    a.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::U8(x) => Ok(i64::from(*x)),
            Value::I8(x) => Ok(i64::from(*x)),
            Value::U16(x) => Ok(i64::from(*x)),
            Value::I16(x) => Ok(i64::from(*x)),
            Value::U32(x) => Ok(i64::from(*x)),
            Value::I32(x) => Ok(i64::from(*x)),
            Value::I64(x) => Ok(*x),
            Value::U64(x) => i64::try_from(*x)
                .map_err(|_| Error::format(format!("{p}: {key}[{i}] = {x} is out of range"))),
            _ => Err(Error::format(format!(
                "{p}: {key}[{i}] is not an integer (expected an array of integers)"
            ))),
        })
        .collect()
}

fn float_array(a: &[Value], key: &str, p: &str) -> Result<Vec<f32>> {
    a.iter()
        .enumerate()
        .map(|(i, v)| {
            let x = match v {
                Value::F32(x) => *x,
                Value::F64(x) => *x as f32,
                _ => {
                    return Err(Error::format(format!(
                        "{p}: {key}[{i}] is not a float (expected an array of floats)"
                    )))
                }
            };
            if x.is_nan() {
                return Err(Error::format(format!("{p}: {key}[{i}] is NaN")));
            }
            Ok(x)
        })
        .collect()
}

fn parse_merges(a: &[Value], p: &str) -> Result<Vec<(String, String)>> {
    let strs = string_array(a, "tokenizer.ggml.merges", p)?;
    strs.iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(l, r)| (l.to_string(), r.to_string()))
                .ok_or_else(|| {
                    Error::format(format!(
                        "{p}: tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"
                    ))
                })
        })
        .collect()
}

/// TemplateProcessing adding `bos` before and/or `eos` after each sequence.
fn template(
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    path: impl std::fmt::Debug,
) -> Result<Option<PostProcessorWrapper>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    // Template pieces refer to special tokens by key; fixed keys avoid parsing token text.
    let mut single: Vec<String> = Vec::new();
    let mut pair: Vec<String> = Vec::new();
    let mut specials: Vec<SpecialToken> = Vec::new();
    if let Some((id, tok)) = &bos {
        specials.push(
            SpecialToken::new("BOS".into(), vec![*id], vec![tok.clone()])
                .map_err(|e| Error::Tokenizer(format!("{path:?}: {e}")))?,
        );
        single.push("BOS".into());
        pair.push("BOS:0".into());
    }
    single.push("$A".into());
    pair.push("$A:0".into());
    if let Some((id, tok)) = &eos {
        specials.push(
            SpecialToken::new("EOS".into(), vec![*id], vec![tok.clone()])
                .map_err(|e| Error::Tokenizer(format!("{path:?}: {e}")))?,
        );
        single.push("EOS".into());
        pair.push("EOS:0".into());
    }
    if bos.is_some() {
        pair.push("BOS:1".into());
    }
    pair.push("$B:1".into());
    if eos.is_some() {
        pair.push("EOS:1".into());
    }
    let tp = TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| Error::Tokenizer(format!("{path:?}: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| Error::Tokenizer(format!("{path:?}: {e}")))?;
    Ok(Some(PostProcessorWrapper::Template(tp)))
}

fn added_tokens(tokens: &[String], types: &[i64]) -> Vec<AddedToken> {
    tokens
        .iter()
        .zip(types)
        .filter(|(t, ty)| !t.is_empty() && (**ty == TOKEN_CONTROL || **ty == TOKEN_USER_DEFINED))
        .map(|(t, ty)| AddedToken::from(t.clone(), *ty == TOKEN_CONTROL).normalized(false))
        .collect()
}

// ------------------------------------------------------------------ byte-level BPE

struct ByteLevelSpec<'a> {
    tokens: &'a [&'a str],
    types: &'a [i64],
    merges: Vec<(String, String)>,
    pre: &'a str,
    bos: Option<u32>,
    eos: Option<u32>,
}

fn split_regex(re: &str) -> Result<PreTokenizerWrapper> {
    let s = Split::new(
        SplitPattern::Regex(re.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
    Ok(s.into())
}

fn build_byte_level(s: ByteLevelSpec<'_>, p: &str) -> Result<tokenizers::Tokenizer> {
    // (normalizer, pre-tokenizer, ignore_merges) as in each family's tokenizer.json.
    let (normalizer, pre, ignore_merges): (Option<NormalizerWrapper>, PreTokenizerWrapper, bool) =
        match s.pre {
            "gpt-2" | "gpt2" => (None, ByteLevel::new(false, true, true).into(), false),
            // StarCoder-style: every digit on its own, then the GPT-2 regex.
            "smollm" | "starcoder" | "refact" | "codeshell" => (
                None,
                PreSequence::new(vec![
                    Digits::new(true).into(),
                    ByteLevel::new(false, true, true).into(),
                ])
                .into(),
                false,
            ),
            "llama-bpe" | "llama3" | "smaug-bpe" => (
                None,
                PreSequence::new(vec![split_regex(REGEX_LLAMA3)?, ByteLevel::new(false, true, false).into()])
                    .into(),
                true,
            ),
            "qwen2" => (
                Some(NFC.into()),
                PreSequence::new(vec![split_regex(REGEX_QWEN2)?, ByteLevel::new(false, false, false).into()])
                    .into(),
                false,
            ),
            other => {
                return Err(Error::unsupported(format!(
                    "{p}: tokenizer.ggml.pre = '{other}' is not supported for gpt2 tokenizers (supported: {SUPPORTED_PRE})"
                )))
            }
        };
    let vocab: Vocab = s
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, s.merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| Error::format(format!("{p}: tokenizer.ggml.merges: {e}")))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_normalizer(normalizer);
    tk.with_pre_tokenizer(Some(pre));
    tk.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
    let name = |id: u32| (id, s.tokens[id as usize].to_string());
    tk.with_post_processor(template(s.bos.map(name), s.eos.map(name), p)?);
    let owned: Vec<String> = s.tokens.iter().map(|t| t.to_string()).collect();
    tk.add_tokens(&added_tokens(&owned, s.types));
    Ok(tk)
}

// ------------------------------------------------------------------ SentencePiece BPE

struct SpmSpec<'a> {
    tokens: &'a [&'a str],
    types: &'a [i64],
    scores: Option<&'a [f32]>,
    merges: Option<Vec<(String, String)>>,
    unk: Option<u32>,
    add_space_prefix: bool,
    bos: Option<u32>,
    eos: Option<u32>,
}

/// The token strings of a SentencePiece vocabulary as Hugging Face spells them: llama.cpp's
/// converter writes the `▁` of user-defined tokens as a plain space ("pre-normalized"),
/// Hugging Face keeps `▁` (so Gemma's token 138 is `▁▁`, not two spaces).
fn spm_spelling(tokens: &[&str], types: &[i64]) -> Vec<String> {
    tokens
        .iter()
        .zip(types)
        .map(|(t, ty)| {
            if *ty == TOKEN_USER_DEFINED && t.contains(' ') {
                t.replace(' ', SPIECE_UNDERLINE)
            } else {
                t.to_string()
            }
        })
        .collect()
}

/// The BPE merges transformers derives from a SentencePiece vocabulary
/// (`convert_slow_tokenizer.generate_merges`):
///
/// ```python
/// for merge, piece_score in vocab_scores.items():
///     local = [(l, r, piece_score) for l, r in splits(merge) if l in vocab and r in vocab]
///     merges.extend(sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]])))
/// merges = sorted(merges, key=lambda v: (v[2], len(v[0]), len(v[1])), reverse=True)
/// ```
///
/// Python's sort is stable even with `reverse=True`, lengths count code points, and
/// dicts keep the first position of a repeated key with its last value; all three are
/// reproduced. Cost: one pair of hash lookups per split point, O(total token length).
fn spm_merges(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    // dict(vocab_scores): first position, last score (only differs with repeated tokens).
    let mut order: Vec<(&str, f32)> = tokens
        .iter()
        .zip(scores)
        .map(|(t, &s)| (t.as_str(), s))
        .collect();
    if vocab.len() != tokens.len() {
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
        let mut dedup: Vec<(&str, f32)> = Vec::with_capacity(vocab.len());
        for (t, s) in order {
            match first.get(t) {
                Some(&pos) => dedup[pos].1 = s,
                None => {
                    first.insert(t, dedup.len());
                    dedup.push((t, s));
                }
            }
        }
        order = dedup;
    }

    // Split candidates, piece by piece, on a few threads (the lookups dominate); chunks are
    // concatenated in order so the result is the sequential one.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = order.len().div_ceil(threads).max(1);
    let parts: Vec<Vec<Candidate<'_>>> = std::thread::scope(|s| {
        let handles: Vec<_> = order
            .chunks(chunk)
            .map(|c| s.spawn(move || split_candidates(c, vocab)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let merges: Vec<Candidate<'_>> = parts.into_iter().flatten().collect();

    // sorted(..., key=(score, len(l), len(r)), reverse=True), stable: sort descending on
    // the key with the original position as the final tie-break.
    let mut keyed: Vec<(u128, u32)> = merges
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let key = (u128::from(score_order(c.score)) << 64)
                | (u128::from(c.left_chars) << 32)
                | u128::from(c.right_chars);
            (!key, i as u32)
        })
        .collect();
    keyed.sort_unstable();

    keyed
        .iter()
        .map(|&(_, i)| {
            let m = &merges[i as usize];
            (m.left.to_string(), m.right.to_string())
        })
        .collect()
}

/// One `(left, right)` split of a vocabulary piece whose halves are both in the vocabulary.
struct Candidate<'a> {
    left: &'a str,
    right: &'a str,
    score: f32,
    left_chars: u32,
    right_chars: u32,
}

/// The splits of each piece, each piece's ordered by `(vocab[l], vocab[r])`.
fn split_candidates<'a>(pieces: &[(&'a str, f32)], vocab: &Vocab) -> Vec<Candidate<'a>> {
    let mut out = Vec::with_capacity(2 * pieces.len());
    let mut local: Vec<(u32, u32, Candidate<'a>)> = Vec::new();
    for &(piece, score) in pieces {
        local.clear();
        let total_chars = piece.chars().count() as u32;
        for (k, (b, _)) in piece.char_indices().enumerate().skip(1) {
            let (l, r) = piece.split_at(b);
            let Some(&li) = vocab.get(l) else { continue };
            if let Some(&ri) = vocab.get(r) {
                let lc = k as u32;
                let c = Candidate {
                    left: l,
                    right: r,
                    score,
                    left_chars: lc,
                    right_chars: total_chars - lc,
                };
                local.push((li, ri, c));
            }
        }
        local.sort_by_key(|&(li, ri, _)| (li, ri));
        out.extend(local.drain(..).map(|(_, _, c)| c));
    }
    out
}

/// Map an f32 to a u32 with the same order (NaN excluded by the caller); -0.0 equals 0.0,
/// as in Python.
fn score_order(x: f32) -> u32 {
    let x = if x == 0.0 { 0.0 } else { x };
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

fn build_spm(s: SpmSpec<'_>, p: &str) -> Result<tokenizers::Tokenizer> {
    let tokens = spm_spelling(s.tokens, s.types);
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), i as u32);
    }
    let merges = match s.merges {
        Some(m) => m,
        None => {
            let raw = s.scores.ok_or_else(|| {
                Error::format(format!(
                    "{p}: missing GGUF metadata key 'tokenizer.ggml.scores'"
                ))
            })?;
            // SentencePiece gives control, user-defined and unknown pieces a score of 0;
            // llama.cpp rewrites the score of every added token to -1000. Hugging Face's
            // merges come from the SentencePiece scores, so restore them.
            let scores: Vec<f32> = raw
                .iter()
                .zip(s.types)
                .map(|(&x, &ty)| {
                    if ty == TOKEN_NORMAL || ty == TOKEN_BYTE {
                        x
                    } else {
                        0.0
                    }
                })
                .collect();
            spm_merges(&tokens, &scores, &vocab)
        }
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = s.unk {
        builder = builder.unk_token(tokens[unk as usize].clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| Error::format(format!("{p}: building the BPE model: {e}")))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);

    let replace = Replace::new(" ", SPIECE_UNDERLINE).map_err(tk_err(p, "normalizer"))?;
    let normalizer: NormalizerWrapper = if s.add_space_prefix {
        // transformers LlamaConverter (legacy): Prepend("▁") + Replace(" ", "▁").
        NormSequence::new(vec![
            Prepend::new(SPIECE_UNDERLINE.to_string()).into(),
            replace.into(),
        ])
        .into()
    } else {
        // transformers GemmaConverter: Replace(" ", "▁") only.
        replace.into()
    };
    tk.with_normalizer(Some(normalizer));
    let mut decoders: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(Replace::new(SPIECE_UNDERLINE, " ").map_err(tk_err(p, "decoder"))?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if s.add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tk.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(
        decoders,
    ))));
    let name = |id: u32| (id, tokens[id as usize].clone());
    tk.with_post_processor(template(s.bos.map(name), s.eos.map(name), p)?);
    tk.add_tokens(&added_tokens(&tokens, s.types));
    Ok(tk)
}

// ------------------------------------------------------------------ config files

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::format(format!("{}: not valid JSON ({e})", path.display())))
}

/// `eos_token_id` / `bos_token_id` as an int or a list of ints (also under `text_config`);
/// `null` or absent is none. Anything else (a string, a negative or huge number, an id
/// past the tokenizer's vocabulary of `vocab` tokens) is refused, not dropped: an eos id
/// that silently vanished would let generation run past the end of a turn.
fn json_ids(
    v: Option<&serde_json::Value>,
    key: &str,
    file: &Path,
    vocab: usize,
) -> Result<Vec<u32>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let field = v
        .get(key)
        .or_else(|| v.get("text_config").and_then(|t| t.get(key)));
    let to_id = |x: &serde_json::Value| -> Result<u32> {
        match x.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(id) if (id as usize) < vocab => Ok(id),
            _ => Err(Error::format(format!(
                "{}: {key} {x} is not a token id of the vocabulary (expected an integer in \
                 0..{vocab}, or a list of them)",
                file.display()
            ))),
        }
    };
    match field {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => a.iter().map(to_id).collect(),
        Some(x) => Ok(vec![to_id(x)?]),
    }
}

/// A `chat_template` entry: a string, or a list of `{name, template}` (the `default` one).
fn chat_template_from_json(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => {
            let named = |n: &str| {
                items
                    .iter()
                    .find(|i| i.get("name").and_then(|x| x.as_str()) == Some(n))
            };
            named("default")
                .or_else(|| items.first())
                .and_then(|i| i.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string)
        }
        _ => None,
    }
}

/// Newer transformers save the template beside the config instead of inside it.
fn read_chat_template_files(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(s) => return Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(jinja, e)),
    }
    Ok(read_json(&dir.join("chat_template.json"))?
        .as_ref()
        .and_then(|v| v.get("chat_template"))
        .and_then(chat_template_from_json))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab_of(toks: &[String]) -> Vocab {
        toks.iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect()
    }

    #[test]
    fn spm_merges_follow_transformers_ordering() {
        // vocab: ids 0..; scores like a SentencePiece BPE model.
        let toks: Vec<String> = ["a", "b", "c", "ab", "bc", "abc", "▁", "▁▁"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, 0.0];
        let m = spm_merges(&toks, &scores, &vocab_of(&toks));
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // ▁▁ (score 0) first; then ab (-1), bc (-2); abc (-3) as a+bc and ab+c, ordered
        // by (len(l), len(r)) descending: ("ab","c") before ("a","bc").
        assert_eq!(
            m,
            vec![("▁", "▁"), ("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]
        );
    }

    #[test]
    fn spm_merges_count_chars_not_bytes() {
        // "▁x" is 2 chars (4 bytes): the split must land on the char boundary.
        let toks: Vec<String> = ["▁", "x", "▁x"].iter().map(|s| s.to_string()).collect();
        let m = spm_merges(&toks, &[0.0, 0.0, -1.0], &vocab_of(&toks));
        assert_eq!(m, vec![("▁".to_string(), "x".to_string())]);
    }

    #[test]
    fn score_order_is_monotonic() {
        let xs = [
            f32::NEG_INFINITY,
            -1e30,
            -2.5,
            -1.0,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            1.0,
            3e38,
        ];
        for w in xs.windows(2) {
            assert!(score_order(w[0]) <= score_order(w[1]), "{w:?}");
        }
        assert_eq!(score_order(-0.0), score_order(0.0));
    }

    #[test]
    fn spm_merges_with_repeated_tokens_and_zero_ties() {
        // Python: dict keeps the first position of "ab" with its last score (-0.0 here),
        // which ties with "▁▁" (0.0); the tie goes by lengths, then by position.
        let toks: Vec<String> = ["a", "b", "ab", "▁", "▁▁", "ab"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, -9.0, 0.0, 0.0, -0.0];
        let m = spm_merges(&toks, &scores, &vocab_of(&toks));
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("a", "b"), ("▁", "▁")]);
    }

    #[test]
    fn template_adds_bos_and_eos() {
        let pp = template(Some((2, "<bos>".into())), Some((1, "<eos>".into())), "t")
            .unwrap()
            .unwrap();
        let vocab: Vocab = [("<eos>", 1), ("<bos>", 2), ("a", 3)]
            .iter()
            .map(|(s, i)| (s.to_string(), *i))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .unwrap();
        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_post_processor(Some(pp));
        let ids = tk.encode_fast("a", true).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![2, 3, 1]);
        let ids = tk.encode_fast("a", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![3]);
    }

    #[test]
    fn pretokenizer_regexes_compile() {
        split_regex(REGEX_LLAMA3).unwrap();
        split_regex(REGEX_QWEN2).unwrap();
    }
}
