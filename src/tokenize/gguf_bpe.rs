//! Byte-level BPE from GGUF metadata (`tokenizer.ggml.model = "gpt2"`): `tokens` + `merges`
//! with the pre-tokenizer that `tokenizer.ggml.pre` names, as transformers'
//! `GPT2Converter` and each family's own `tokenizer.json` build it.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use super::gguf::added_tokens;
use super::template;
use crate::error::{Error, Result};

/// The GPT-2 pre-tokenizer regex is `ByteLevel(use_regex = true)`'s built-in one. These
/// are the ones Hugging Face `tokenizer.json` files use for the other families.
const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values this module reproduces (for `tokenizer.ggml.model = gpt2`).
const SUPPORTED_PRE: &str =
    "gpt-2, gpt2, smollm, starcoder, refact, codeshell, llama-bpe, llama3, smaug-bpe, qwen2";

pub(super) struct ByteLevelSpec<'a> {
    pub(super) tokens: &'a [&'a str],
    pub(super) types: &'a [i64],
    pub(super) merges: Vec<(String, String)>,
    pub(super) pre: &'a str,
    pub(super) bos: Option<u32>,
    pub(super) eos: Option<u32>,
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

pub(super) fn build_byte_level(s: ByteLevelSpec<'_>, p: &str) -> Result<tokenizers::Tokenizer> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretokenizer_regexes_compile() {
        split_regex(REGEX_LLAMA3).unwrap();
        split_regex(REGEX_QWEN2).unwrap();
    }
}
