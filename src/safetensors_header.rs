//! Bounded checking of a safetensors header before the file is handed to a reader.
//!
//! Format: an 8-byte little-endian header length N, N bytes of JSON mapping tensor names
//! to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the data that
//! follows the header) plus an optional `__metadata__` object of strings.
//! [`check`] reads only the length and the header, with every size checked against the
//! file's real length, so that a hostile file becomes an [`Error::Format`] naming the
//! problem before the safetensors crate or candle sees it (steering vectors, model
//! shards).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// One tensor of a checked header.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Byte range within the data section.
    pub begin: u64,
    pub end: u64,
}

/// A checked header: tensors in file order of their names, the metadata strings.
#[derive(Debug, Clone)]
pub struct Header {
    pub tensors: Vec<Entry>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Bytes per element of the safetensors dtypes whose elements are whole bytes.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Read and check the header of the safetensors file at `path` (of `file_len` bytes);
/// a header longer than `max_header` bytes is refused.
///
/// Errors: [`Error::NotFound`] / [`Error::Io`] when the file cannot be read,
/// [`Error::Format`] naming the path and what is wrong otherwise.
pub fn check(path: &Path, max_header: u64) -> Result<Header> {
    let bad = |msg: String| {
        Error::format(format!(
            "{}: not a valid safetensors file: {msg}",
            path.display()
        ))
    };
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len < 8 {
        return Err(bad(format!(
            "{file_len} bytes, less than the 8-byte header length"
        )));
    }
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len8);
    if n > file_len - 8 || n > max_header {
        return Err(bad(format!(
            "header length {n} is beyond the file ({file_len} bytes) or the {max_header} \
             bytes a header may have"
        )));
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact(&mut text).map_err(|e| Error::io(path, e))?;
    // serde_json bounds nesting (128 levels), so no header recurses deeply.
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| bad(format!("header: {e}")))?;
    let data_len = file_len - 8 - n;
    let mut metadata = serde_json::Map::new();
    let mut tensors = Vec::with_capacity(map.len());
    for (name, entry) in map {
        if name == "__metadata__" {
            let m = match entry {
                serde_json::Value::Object(m) if m.values().all(|v| v.is_string()) => m,
                _ => return Err(bad("__metadata__ is not an object of strings".into())),
            };
            metadata = m;
            continue;
        }
        let dtype = entry.get("dtype").and_then(|d| d.as_str());
        let shape = entry.get("shape").and_then(|s| s.as_array());
        let offsets = entry.get("data_offsets").and_then(|s| s.as_array());
        let (Some(dtype), Some(shape), Some(offsets)) = (dtype, shape, offsets) else {
            return Err(bad(format!(
                "tensor '{name}' lacks a dtype, shape or data_offsets"
            )));
        };
        let size = dtype_size(dtype).ok_or_else(|| {
            bad(format!(
                "tensor '{name}' has dtype {dtype:?} (expected one of BOOL, U8, I8, F8_E5M2, \
                 F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64)"
            ))
        })?;
        let dims: Option<Vec<u64>> = shape.iter().map(|d| d.as_u64()).collect();
        let show = |v: &Vec<serde_json::Value>| serde_json::Value::Array(v.clone()).to_string();
        let Some(dims) = dims else {
            return Err(bad(format!(
                "tensor '{name}' has shape {} (expected non-negative integers)",
                show(shape)
            )));
        };
        let count = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let nbytes = count.and_then(|c| c.checked_mul(size));
        let (Some(count), Some(nbytes)) = (count, nbytes) else {
            return Err(bad(format!(
                "tensor '{name}' has shape {} whose size overflows 64 bits",
                show(shape)
            )));
        };
        let range = match offsets.as_slice() {
            [a, b] => a.as_u64().zip(b.as_u64()),
            _ => None,
        };
        match range {
            Some((begin, end)) if begin <= end && end <= data_len && end - begin == nbytes => {
                tensors.push(Entry {
                    name,
                    dtype: dtype.to_string(),
                    shape: dims,
                    begin,
                    end,
                });
            }
            _ => {
                return Err(bad(format!(
                    "tensor '{name}' has data_offsets {} but its {count} {dtype} values need \
                     {nbytes} bytes within the {data_len} bytes of data",
                    show(offsets)
                )))
            }
        }
    }
    Ok(Header { tensors, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8], len: Option<u64>) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = len.unwrap_or(header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        std::fs::write(f.path(), b).unwrap();
        f
    }

    fn err(header: &str, data: &[u8], len: Option<u64>) -> String {
        let f = file(header, data, len);
        check(f.path(), 1 << 20).unwrap_err().to_string()
    }

    #[test]
    fn valid_header_is_returned() {
        let f = file(
            r#"{"__metadata__":{"a":"b"},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}"#,
            &[0u8; 12],
            None,
        );
        let h = check(f.path(), 1 << 20).unwrap();
        assert_eq!(h.metadata.get("a").and_then(|v| v.as_str()), Some("b"));
        assert_eq!(
            h.tensors,
            vec![Entry {
                name: "w".into(),
                dtype: "BF16".into(),
                shape: vec![2, 3],
                begin: 0,
                end: 12
            }]
        );
    }

    #[test]
    fn hostile_headers_are_refused() {
        let t = |shape: &str, offsets: &str, dtype: &str| {
            format!(r#"{{"w":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}}}"#)
        };
        let m = err(&t("[4]", "[0,16]", "F32"), &[0u8; 16], Some(u64::MAX));
        assert!(
            m.contains("header length 18446744073709551615 is beyond the file"),
            "{m}"
        );
        let m = err(&t("[4]", "[0,16]", "F32"), &[0u8; 16], Some(1 << 30));
        assert!(m.contains("header length 1073741824 is beyond"), "{m}");
        let m = err(
            &t("[18446744073709551615,2]", "[0,16]", "F32"),
            &[0u8; 16],
            None,
        );
        assert!(m.contains("whose size overflows 64 bits"), "{m}");
        let m = err(&t("[-1]", "[0,16]", "F32"), &[0u8; 16], None);
        assert!(
            m.contains("has shape [-1] (expected non-negative integers)"),
            "{m}"
        );
        let m = err(&t("[4]", "[0,17]", "F32"), &[0u8; 17], None);
        assert!(
            m.contains("data_offsets [0,17] but its 4 F32 values need 16 bytes within the 17"),
            "{m}"
        );
        let m = err(&t("[4]", "[8,24]", "F32"), &[0u8; 16], None);
        assert!(m.contains("data_offsets [8,24]"), "{m}");
        let m = err(&t("[4]", "[0,2]", "F4"), &[0u8; 2], None);
        assert!(m.contains("has dtype \"F4\""), "{m}");
        let m = err(r#"{"__metadata__":{"a":1}}"#, &[], None);
        assert!(
            m.contains("__metadata__ is not an object of strings"),
            "{m}"
        );
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let m = err(&format!(r#"{{"w":{deep}}}"#), &[], None);
        assert!(m.contains("recursion limit exceeded"), "{m}");
        let m = err("", &[], Some(0));
        assert!(m.contains("header: EOF"), "{m}");
    }
}
