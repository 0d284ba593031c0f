//! [`Tokenizer::from_file`]: a Hugging Face `tokenizer.json` plus the config files beside
//! it (`tokenizer_config.json`, `generation_config.json`, `config.json`, and the chat
//! template in `chat_template.jinja` / `chat_template.json`), which give the bos/eos/pad
//! ids, whether BOS/EOS are added, and the chat template.

use std::path::Path;

use super::{guarded, template, Meta, Tokenizer};
use crate::error::{Error, Result};

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
}

fn disable_truncation_and_padding(inner: &mut tokenizers::Tokenizer, path: &Path) -> Result<()> {
    inner
        .with_truncation(None)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    inner.with_padding(None);
    Ok(())
}

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
