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
//!
//! Layout: this file holds [`Tokenizer`] and its encode/decode API; `hf` loads a
//! `tokenizer.json` and its config files; `gguf` reads the `tokenizer.*` metadata of a
//! GGUF file and hands it to `gguf_bpe` (byte-level BPE) or `gguf_spm` (SentencePiece BPE).

mod gguf;
mod gguf_bpe;
mod gguf_spm;
mod hf;

use std::collections::HashSet;
use std::path::Path;

use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::processors::PostProcessorWrapper;

use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::bpe::{Vocab, BPE};

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
}
