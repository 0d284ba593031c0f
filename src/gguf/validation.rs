//! Bounded validation of a GGUF header before candle parses it: every count, string
//! length, array length, tensor shape and tensor extent is checked against the bytes the
//! file really has, and against caps on entries and metadata elements, so that a
//! truncated, corrupt or hostile file becomes an [`Error::Format`] naming the problem.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::quantized::GgmlDType;

use crate::error::{Error, Result};

/// Bytes before the first metadata entry: magic, version, tensor count, metadata count.
const HEADER_LEN: u64 = 4 + 4 + 8 + 8;
/// The smallest possible metadata entry: key length (8), empty key, type (4), 1-byte value.
pub(super) const MIN_KV_LEN: u64 = 8 + 4 + 1;
/// The smallest possible tensor info: name length (8), n_dims (4), dtype (4), offset (8).
const MIN_TENSOR_INFO_LEN: u64 = 8 + 4 + 4 + 8;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are rejected (real files never nest at all).
const MAX_ARRAY_DEPTH: usize = 8;
/// Metadata array elements allowed in one file, all arrays together. candle holds each
/// element as a 32-byte `Value`, so a 1 GB array of u8 would become 32 GB in memory; real
/// files stay far below this (Gemma 3's 262k-token vocabulary: ~0.8M elements), and
/// the cap keeps candle's copy of the metadata under ~130 MB.
pub(super) const MAX_METADATA_ELEMENTS: u64 = 1 << 22;
/// Tensors and metadata entries allowed in one file (real models have a few thousand).
pub(super) const MAX_ENTRIES: u64 = 1 << 20;
/// The alignment of the tensor data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = gguf_file::DEFAULT_ALIGNMENT;
/// ggml type ids candle can load, with ggml's names for the ones it cannot.
fn ggml_dtype(id: u32) -> std::result::Result<GgmlDType, Option<&'static str>> {
    Ok(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        // Known to ggml, not loadable by candle.
        16 => return Err(Some("IQ2_XXS")),
        17 => return Err(Some("IQ2_XS")),
        18 => return Err(Some("IQ3_XXS")),
        19 => return Err(Some("IQ1_S")),
        20 => return Err(Some("IQ4_NL")),
        21 => return Err(Some("IQ3_S")),
        22 => return Err(Some("IQ2_S")),
        23 => return Err(Some("IQ4_XS")),
        24 => return Err(Some("I8")),
        25 => return Err(Some("I16")),
        26 => return Err(Some("I32")),
        27 => return Err(Some("I64")),
        28 => return Err(Some("F64")),
        29 => return Err(Some("IQ1_M")),
        34 => return Err(Some("TQ1_0")),
        35 => return Err(Some("TQ2_0")),
        39 => return Err(Some("MXFP4")),
        _ => return Err(None),
    })
}

/// Bytes a tensor of `dims` (any order) occupies, or `None` on overflow.
pub(super) fn tensor_nbytes(dtype: GgmlDType, dims: &[usize]) -> Option<u64> {
    let mut elems: u64 = 1;
    for &d in dims {
        elems = elems.checked_mul(u64::try_from(d).ok()?)?;
    }
    let block = dtype.block_size() as u64;
    if block == 0 {
        return None;
    }
    (elems / block).checked_mul(dtype.type_size() as u64)
}

/// What the validator learned that `open` cross-checks against candle.
pub(super) struct Header {
    pub(super) data_offset: u64,
}

/// A bounded reader: every read first checks that the bytes exist in the file.
struct Bounded<'a> {
    r: BufReader<&'a File>,
    pos: u64,
    len: u64,
    path: &'a Path,
    /// Metadata array elements seen so far.
    elements: u64,
}

impl<'a> Bounded<'a> {
    fn fail(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(format!("{}: {msg}", self.path.display()))
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        if n > self.remaining() {
            return Err(self.fail(format!(
                "truncated: {} needs {n} bytes at offset {} but only {} remain in the file ({} bytes)",
                what(),
                self.pos,
                self.remaining(),
                self.len
            )));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| Error::io(self.path, e))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
    }

    fn skip(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        self.need(n, what)?;
        let step = i64::try_from(n).map_err(|_| self.fail("offset overflow"))?;
        self.r
            .seek_relative(step)
            .map_err(|e| Error::io(self.path, e))?;
        self.pos += n;
        Ok(())
    }

    /// A length-prefixed string, read into memory (keys and tensor names: `max` caps it).
    fn string(&mut self, max: u64, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(what)?;
        if n > max {
            return Err(self.fail(format!(
                "{} has length {n}, more than the {max} bytes allowed",
                what()
            )));
        }
        self.need(n, &|| format!("{} ({n}-byte string)", what()))?;
        let mut buf = vec![0u8; n as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| Error::io(self.path, e))?;
        self.pos += n;
        String::from_utf8(buf).map_err(|_| self.fail(format!("{} is not valid UTF-8", what())))
    }

    /// A length-prefixed string value, skipped after its length is checked.
    fn skip_string(&mut self, what: &dyn Fn() -> String) -> Result<()> {
        let n = self.u64(what)?;
        if n > self.remaining() {
            return Err(self.fail(format!(
                "{} has string length {n} but only {} bytes remain in the file",
                what(),
                self.remaining()
            )));
        }
        self.skip(n, what)
    }
}

/// Fixed on-disk size of a scalar GGUF value type, `None` for string and array.
fn scalar_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;
const TYPE_BOOL: u32 = 7;

fn type_name(ty: u32) -> &'static str {
    match ty {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

/// Walk one metadata value of type `ty`, checking every length against the file.
fn walk_value(b: &mut Bounded<'_>, ty: u32, depth: usize, what: &dyn Fn() -> String) -> Result<()> {
    if ty == TYPE_BOOL {
        let [v] = b.bytes::<1>(what)?;
        if v > 1 {
            return Err(b.fail(format!(
                "{} is a bool with value {v} (expected 0 or 1)",
                what()
            )));
        }
        Ok(())
    } else if let Some(size) = scalar_size(ty) {
        b.skip(size, what)
    } else if ty == TYPE_STRING {
        b.skip_string(what)
    } else if ty == TYPE_ARRAY {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(b.fail(format!(
                "{} nests arrays more than {MAX_ARRAY_DEPTH} deep",
                what()
            )));
        }
        let elem_ty = b.u32(what)?;
        let count = b.u64(what)?;
        let min_elem = match elem_ty {
            TYPE_STRING => 8,
            TYPE_ARRAY => 12,
            t => scalar_size(t).ok_or_else(|| {
                b.fail(format!(
                    "{} is an array of unknown value type {t} (expected 0..=12)",
                    what()
                ))
            })?,
        };
        let needed = count.checked_mul(min_elem);
        if needed.is_none_or(|n| n > b.remaining()) {
            return Err(b.fail(format!(
                "{} claims {count} elements of type {} ({} bytes or more) but only {} bytes remain in the file",
                what(),
                type_name(elem_ty),
                needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()),
                b.remaining()
            )));
        }
        b.elements = b.elements.saturating_add(count);
        if b.elements > MAX_METADATA_ELEMENTS {
            return Err(b.fail(format!(
                "{} brings the metadata arrays to {} elements, more than the {MAX_METADATA_ELEMENTS} steerlab accepts",
                what(),
                b.elements
            )));
        }
        match elem_ty {
            TYPE_STRING | TYPE_ARRAY | TYPE_BOOL => {
                for i in 0..count {
                    walk_value(b, elem_ty, depth + 1, &|| format!("{} element {i}", what()))?;
                }
                Ok(())
            }
            // count * size <= remaining was checked above.
            _ => b.skip(count * min_elem, what),
        }
    } else {
        Err(b.fail(format!(
            "{} has unknown value type {ty} (expected 0..=12)",
            what()
        )))
    }
}

/// Capacity to reserve for `n` header entries: counts are only known to fit in the file,
/// so reserve a bounded amount and let the collection grow with what is really read.
fn prealloc(n: u64) -> usize {
    n.min(4096) as usize
}

pub(super) fn validate(file: &File, len: u64, path: &Path) -> Result<Header> {
    let too_short = || {
        Error::format(format!(
            "{}: file is too short to be GGUF ({len} bytes; a GGUF header alone is {HEADER_LEN})",
            path.display()
        ))
    };
    let mut b = Bounded {
        r: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        len,
        path,
        elements: 0,
    };
    if len < 4 {
        return Err(too_short());
    }
    let magic = b.bytes::<4>(&|| "the magic".to_string())?;
    if &magic != b"GGUF" {
        return Err(b.fail(format!(
            "not a GGUF file (expected magic \"GGUF\", found {})",
            show_magic(&magic)
        )));
    }
    if len < HEADER_LEN {
        return Err(too_short());
    }
    let version = b.u32(&|| "the version".to_string())?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            " (this looks like a big-endian GGUF file, which is not supported)"
        } else if version == 1 {
            " (GGUF v1 is obsolete; re-convert the model with a current llama.cpp)"
        } else {
            ""
        };
        return Err(Error::unsupported(format!(
            "{}: unsupported GGUF version {version} (supported: 2, 3){hint}",
            path.display()
        )));
    }
    let n_tensors = b.u64(&|| "the tensor count".to_string())?;
    let n_kv = b.u64(&|| "the metadata count".to_string())?;
    let rem = b.remaining();
    let kv_min = n_kv.checked_mul(MIN_KV_LEN);
    if kv_min.is_none_or(|n| n > rem) {
        return Err(b.fail(format!(
            "header claims {n_kv} metadata entries, which cannot fit in the remaining {rem} bytes (each needs at least {MIN_KV_LEN})"
        )));
    }
    let tensor_min = n_tensors.checked_mul(MIN_TENSOR_INFO_LEN);
    if tensor_min.is_none_or(|n| n > rem) {
        return Err(b.fail(format!(
            "header claims {n_tensors} tensors, which cannot fit in the remaining {rem} bytes (each tensor info needs at least {MIN_TENSOR_INFO_LEN})"
        )));
    }
    if kv_min
        .unwrap_or(u64::MAX)
        .saturating_add(tensor_min.unwrap_or(u64::MAX))
        > rem
    {
        return Err(b.fail(format!(
            "header claims {n_kv} metadata entries and {n_tensors} tensors, which cannot fit in the remaining {rem} bytes"
        )));
    }

    if n_kv > MAX_ENTRIES || n_tensors > MAX_ENTRIES {
        return Err(b.fail(format!(
            "header claims {n_kv} metadata entries and {n_tensors} tensors; steerlab accepts at most {MAX_ENTRIES} of each"
        )));
    }

    // Metadata.
    let mut keys: HashSet<String> = HashSet::with_capacity(prealloc(n_kv));
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..n_kv {
        let key = b.string(1 << 16, &|| format!("metadata entry {i} key"))?;
        let ty = b.u32(&|| format!("metadata '{key}' type"))?;
        let what = || format!("metadata '{key}'");
        if key == "general.alignment" {
            alignment = read_alignment(&mut b, ty)?;
        } else {
            walk_value(&mut b, ty, 0, &what)?;
        }
        if !keys.insert(key.clone()) {
            return Err(b.fail(format!("metadata key '{key}' appears twice")));
        }
    }

    // Tensor infos.
    struct Info {
        name: String,
        nbytes: u64,
        offset: u64,
    }
    let mut infos: Vec<Info> = Vec::with_capacity(prealloc(n_tensors));
    let mut names: HashSet<String> = HashSet::with_capacity(prealloc(n_tensors));
    for i in 0..n_tensors {
        let name = b.string(1 << 16, &|| format!("tensor info {i} name"))?;
        let n_dims = b.u32(&|| format!("tensor '{name}' dimension count"))?;
        if n_dims > MAX_DIMS {
            return Err(b.fail(format!(
                "tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS} are allowed)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut elems: u64 = 1;
        for d in 0..n_dims {
            let dim = b.u64(&|| format!("tensor '{name}' dimension {d}"))?;
            // ggml stores dimensions as int64; an empty tensor has no use in a model or a
            // control vector, and candle's tensor reader assumes at least one element.
            if dim == 0 || dim > i64::MAX as u64 {
                return Err(b.fail(format!(
                    "tensor '{name}' has dimension {d} = {dim} (expected 1..={})",
                    i64::MAX
                )));
            }
            elems = elems.checked_mul(dim).ok_or_else(|| {
                b.fail(format!(
                    "tensor '{name}' has dimensions whose product overflows 64 bits ({dims:?} x {dim})"
                ))
            })?;
            dims.push(dim);
        }
        if usize::try_from(elems).is_err() {
            return Err(b.fail(format!(
                "tensor '{name}' has {elems} elements, too many for this platform"
            )));
        }
        let type_id = b.u32(&|| format!("tensor '{name}' type"))?;
        let dtype = match ggml_dtype(type_id) {
            Ok(t) => t,
            Err(Some(type_name)) => {
                return Err(Error::unsupported(format!(
                    "{}: tensor '{name}' has ggml type {type_name} (id {type_id}), which steerlab cannot load (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K..Q8_K)",
                    path.display()
                )))
            }
            Err(None) => {
                return Err(b.fail(format!(
                    "tensor '{name}' has unknown ggml type id {type_id}"
                )))
            }
        };
        let block = dtype.block_size() as u64;
        let ne0 = dims.first().copied().unwrap_or(1);
        if block > 1 && ne0 % block != 0 {
            return Err(b.fail(format!(
                "tensor '{name}' has a row of {ne0} elements, not a multiple of the {block}-element block of its type {dtype:?}"
            )));
        }
        let nbytes = (elems / block)
            .checked_mul(dtype.type_size() as u64)
            .ok_or_else(|| b.fail(format!("tensor '{name}' size overflows 64 bits")))?;
        let offset = b.u64(&|| format!("tensor '{name}' offset"))?;
        if !names.insert(name.clone()) {
            return Err(b.fail(format!("tensor '{name}' appears twice")));
        }
        infos.push(Info {
            name,
            nbytes,
            offset,
        });
    }

    // Tensor data.
    let data_offset = b
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| b.fail("tensor data offset overflows"))?;
    for info in &infos {
        if info.offset % alignment != 0 {
            return Err(b.fail(format!(
                "tensor '{}' offset {} is not a multiple of the alignment {alignment}",
                info.name, info.offset
            )));
        }
        let end = data_offset
            .checked_add(info.offset)
            .and_then(|s| s.checked_add(info.nbytes));
        match end {
            Some(end) if end <= len => {}
            _ => {
                return Err(b.fail(format!(
                    "truncated: tensor '{}' needs bytes up to {} but the file has {len}",
                    info.name,
                    end.map_or_else(|| "beyond 2^64".to_string(), |e| e.to_string())
                )))
            }
        }
    }
    Ok(Header { data_offset })
}

fn read_alignment(b: &mut Bounded<'_>, ty: u32) -> Result<u64> {
    // llama.cpp requires a u32; candle also accepts narrower / signed integers.
    let what = || "metadata 'general.alignment'".to_string();
    let v: i64 = match ty {
        0 => i64::from(b.bytes::<1>(&what)?[0]),
        1 => i64::from(i8::from_le_bytes(b.bytes::<1>(&what)?)),
        2 => i64::from(u16::from_le_bytes(b.bytes::<2>(&what)?)),
        3 => i64::from(i16::from_le_bytes(b.bytes::<2>(&what)?)),
        4 => i64::from(b.u32(&what)?),
        5 => i64::from(i32::from_le_bytes(b.bytes::<4>(&what)?)),
        other => {
            return Err(b.fail(format!(
                "metadata 'general.alignment' is a {} (expected a u32)",
                type_name(other)
            )))
        }
    };
    if v <= 0 || !(v as u64).is_power_of_two() {
        return Err(b.fail(format!(
            "metadata 'general.alignment' = {v} (expected a positive power of two)"
        )));
    }
    Ok(v as u64)
}

fn show_magic(m: &[u8; 4]) -> String {
    if m.iter().all(|c| c.is_ascii_graphic()) {
        format!("\"{}\"", String::from_utf8_lossy(m))
    } else {
        format!("bytes {:02x} {:02x} {:02x} {:02x}", m[0], m[1], m[2], m[3])
    }
}
