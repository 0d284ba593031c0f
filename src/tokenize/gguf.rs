//! [`Tokenizer::from_gguf`]: reads the `tokenizer.*` metadata of a GGUF file (vocabulary,
//! token types, merges, scores, special ids), checks it, and builds the `gpt2` (see
//! `gguf_bpe`) or `llama` (see `gguf_spm`) tokenizer it describes. Control tokens become
//! special added tokens and user-defined tokens plain added tokens.

use candle_core::quantized::gguf_file::Value;
use tokenizers::AddedToken;

use super::gguf_bpe::{build_byte_level, ByteLevelSpec};
use super::gguf_spm::{build_spm, SpmSpec};
use super::{guarded, Meta, Tokenizer};
use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
pub(super) const TOKEN_NORMAL: i64 = 1;
const TOKEN_CONTROL: i64 = 3;
pub(super) const TOKEN_USER_DEFINED: i64 = 4;
pub(super) const TOKEN_BYTE: i64 = 6;

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

impl Tokenizer {
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
}

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

pub(super) fn added_tokens(tokens: &[String], types: &[i64]) -> Vec<AddedToken> {
    tokens
        .iter()
        .zip(types)
        .filter(|(t, ty)| !t.is_empty() && (**ty == TOKEN_CONTROL || **ty == TOKEN_USER_DEFINED))
        .map(|(t, ty)| AddedToken::from(t.clone(), *ty == TOKEN_CONTROL).normalized(false))
        .collect()
}
