//! Safe opening of GGUF files (the container llama.cpp uses for weights and tokenizer
//! metadata). Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//!
//! candle's reader (`candle_core::quantized::gguf_file`) does the actual parsing, but it is
//! only handed a file after [`open`] has walked the whole header with bounded reads: every
//! count, string length, array length, tensor shape and tensor extent is checked against
//! the bytes the file really has, so a truncated, corrupt or hostile file becomes an
//! [`Error::Format`] naming the problem instead of a huge allocation, a panic or an abort.
//!
//! Layout: this file holds [`Gguf`], [`open`] and `panic_message`; `validation` walks
//! the header with bounded reads before candle sees the file; `reader` holds the typed
//! metadata accessors and the tensor reads of an opened file.

mod reader;
mod validation;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;

use crate::error::{Error, Result};
use validation::validate;

/// An opened, validated GGUF file: candle's parsed header plus the open file to read
/// tensor data from.
#[derive(Debug)]
pub struct Gguf {
    /// Metadata and tensor infos as parsed by candle.
    pub content: Content,
    /// The open file; tensor data is read from it with positional reads.
    pub file: File,
    /// Where the file was opened from (used in every error message).
    pub path: PathBuf,
}

/// Open and validate a GGUF file.
///
/// Errors: [`Error::NotFound`] / [`Error::Io`] when the file cannot be read,
/// [`Error::Format`] when it is not a well-formed GGUF file (the message starts with the
/// path and says what was wrong), [`Error::Unsupported`] for a GGUF version other than
/// 2 or 3, or a tensor type candle cannot load.
pub fn open(path: &Path) -> Result<Gguf> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let header = validate(&file, len, path)?;

    let mut reader = BufReader::new(&file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    // Everything candle could trip over was checked above; the catch is the last line of
    // defence so that a reader bug still cannot unwind through the caller.
    let read =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)));
    let content = match read {
        Ok(Ok(content)) => content,
        Ok(Err(e)) => return Err(Error::format(format!("{}: {e}", path.display()))),
        Err(panic) => {
            return Err(Error::format(format!(
                "{}: the GGUF reader failed on this file ({})",
                path.display(),
                panic_message(panic.as_ref())
            )))
        }
    };
    if content.tensor_data_offset != header.data_offset {
        return Err(Error::format(format!(
            "{}: tensor data offset disagrees between readers ({} vs {}); the header is inconsistent",
            path.display(),
            content.tensor_data_offset,
            header.data_offset
        )));
    }
    drop(reader);
    Ok(Gguf {
        content,
        file,
        path: path.to_path_buf(),
    })
}
/// The message of a caught panic, for an error that names it.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("internal panic: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("internal panic: {s}")
    } else {
        "internal panic".to_string()
    }
}
