//! SentencePiece BPE with byte fallback from GGUF metadata (`tokenizer.ggml.model =
//! "llama"`). When the file has no merges they are derived from the scores exactly as
//! transformers' `convert_slow_tokenizer.generate_merges` does (`GemmaConverter` /
//! `LlamaConverter`).

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormSequence};

use super::gguf::{added_tokens, TOKEN_BYTE, TOKEN_NORMAL, TOKEN_USER_DEFINED};
use super::template;
use crate::error::{Error, Result};

/// SentencePiece's word-boundary marker.
const SPIECE_UNDERLINE: &str = "\u{2581}";

fn tk_err(p: &str, what: &str) -> impl Fn(tokenizers::Error) -> Error {
    let ctx = format!("{p}: {what}");
    move |e| Error::Tokenizer(format!("{ctx}: {e}"))
}

pub(super) struct SpmSpec<'a> {
    pub(super) tokens: &'a [&'a str],
    pub(super) types: &'a [i64],
    pub(super) scores: Option<&'a [f32]>,
    pub(super) merges: Option<Vec<(String, String)>>,
    pub(super) unk: Option<u32>,
    pub(super) add_space_prefix: bool,
    pub(super) bos: Option<u32>,
    pub(super) eos: Option<u32>,
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

pub(super) fn build_spm(s: SpmSpec<'_>, p: &str) -> Result<tokenizers::Tokenizer> {
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
}
