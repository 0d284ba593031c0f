//! Safe opening of GGUF files (the container llama.cpp uses for weights and tokenizer
//! metadata). Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//!
//! candle's reader (`candle_core::quantized::gguf_file`) does the actual parsing, but it is
//! only handed a file after [`open`] has walked the whole header with bounded reads: every
//! count, string length, array length, tensor shape and tensor extent is checked against
//! the bytes the file really has, so a truncated, corrupt or hostile file becomes an
//! [`Error::Format`] naming the problem instead of a huge allocation, a panic or an abort.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::Device;

use crate::error::{Error, Result};

/// Bytes before the first metadata entry: magic, version, tensor count, metadata count.
const HEADER_LEN: u64 = 4 + 4 + 8 + 8;
/// The smallest possible metadata entry: key length (8), empty key, type (4), 1-byte value.
const MIN_KV_LEN: u64 = 8 + 4 + 1;
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
const MAX_METADATA_ELEMENTS: u64 = 1 << 22;
/// Tensors and metadata entries allowed in one file (real models have a few thousand).
const MAX_ENTRIES: u64 = 1 << 20;
/// The alignment of the tensor data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = gguf_file::DEFAULT_ALIGNMENT;

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

impl Gguf {
    fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn missing(&self, key: &str, expected: &str) -> Error {
        Error::format(format!(
            "{}: missing GGUF metadata key '{key}' (expected {expected})",
            self.path.display()
        ))
    }

    fn wrong_type(&self, key: &str, v: &Value, expected: &str) -> Error {
        Error::format(format!(
            "{}: GGUF metadata '{key}' is {} but {expected} was expected",
            self.path.display(),
            describe(v)
        ))
    }

    /// An unsigned integer that must be present. Any integer type whose value fits in a
    /// u32 is accepted (writers disagree on the width).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?
            .ok_or_else(|| self.missing(key, "an unsigned integer"))
    }

    /// A float that must be present (f32, or f64 narrowed to f32).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?
            .ok_or_else(|| self.missing(key, "a float"))
    }

    /// A string that must be present.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?
            .ok_or_else(|| self.missing(key, "a string"))
    }

    /// A boolean that must be present.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.opt_bool(key)?
            .ok_or_else(|| self.missing(key, "a bool"))
    }

    /// An array that must be present.
    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        self.opt_array(key)?
            .ok_or_else(|| self.missing(key, "an array"))
    }

    /// An optional unsigned integer: `None` when absent, an error when present with a
    /// non-integer type or a value outside 0..=u32::MAX.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        let wide: Option<i128> = match v {
            Value::U8(x) => Some(i128::from(*x)),
            Value::I8(x) => Some(i128::from(*x)),
            Value::U16(x) => Some(i128::from(*x)),
            Value::I16(x) => Some(i128::from(*x)),
            Value::U32(x) => Some(i128::from(*x)),
            Value::I32(x) => Some(i128::from(*x)),
            Value::U64(x) => Some(i128::from(*x)),
            Value::I64(x) => Some(i128::from(*x)),
            _ => None,
        };
        match wide {
            None => Err(self.wrong_type(key, v, "an unsigned integer")),
            Some(w) => u32::try_from(w).map(Some).map_err(|_| {
                Error::format(format!(
                    "{}: GGUF metadata '{key}' = {w} is outside the range 0..={}",
                    self.path.display(),
                    u32::MAX
                ))
            }),
        }
    }

    /// An optional float: `None` when absent, an error when present with another type.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(Value::F64(x)) => Ok(Some(*x as f32)),
            Some(v) => Err(self.wrong_type(key, v, "a float")),
        }
    }

    /// An optional string: `None` when absent, an error when present with another type.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.wrong_type(key, v, "a string")),
        }
    }

    /// An optional boolean: `None` when absent, an error when present with another type.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, v, "a bool")),
        }
    }

    /// An optional array: `None` when absent, an error when present with another type.
    pub fn opt_array(&self, key: &str) -> Result<Option<&[Value]>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a.as_slice())),
            Some(v) => Err(self.wrong_type(key, v, "an array")),
        }
    }

    /// `general.architecture` (e.g. "llama", "gemma3").
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// Where a tensor's bytes are: its info, start offset and size, all checked.
    fn extent(&self, name: &str) -> Result<(GgmlDType, Vec<usize>, u64, usize)> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| {
            Error::format(format!(
                "{}: tensor '{name}' not found in the GGUF file ({} tensors present)",
                self.path.display(),
                self.content.tensor_infos.len()
            ))
        })?;
        let dims = info.shape.dims().to_vec();
        // `open` checked that the extent fits in the file without overflow.
        let size = tensor_nbytes(info.ggml_dtype, &dims).ok_or_else(|| {
            Error::format(format!(
                "{}: tensor '{name}' has an invalid size",
                self.path.display()
            ))
        })?;
        let start = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .ok_or_else(|| {
                Error::format(format!(
                    "{}: tensor '{name}' offset overflows",
                    self.path.display()
                ))
            })?;
        let size = usize::try_from(size).map_err(|_| {
            Error::format(format!(
                "{}: tensor '{name}' is too large for this platform ({size} bytes)",
                self.path.display()
            ))
        })?;
        if size == 0 {
            return Err(Error::format(format!(
                "{}: tensor '{name}' has no elements (dims {dims:?})",
                self.path.display()
            )));
        }
        Ok((info.ggml_dtype, dims, start, size))
    }

    /// One tensor's ggml type, dims (row-major, as candle reports them: [rows, cols] for a
    /// matrix) and raw bytes.
    /// The error names the tensor when it is not in the file.
    pub fn raw(&self, name: &str) -> Result<(GgmlDType, Vec<usize>, Vec<u8>)> {
        let (dtype, dims, start, size) = self.extent(name)?;
        let mut raw = vec![0u8; size];
        read_exact_at(&self.file, &mut raw, start).map_err(|e| Error::io(&self.path, e))?;
        Ok((dtype, dims, raw))
    }

    /// Read one tensor's data onto `device`. The error names the tensor when it is not in
    /// the file.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let (dtype, dims, start, size) = self.extent(name)?;
        // candle reinterprets the bytes in place as blocks of the tensor's type, which
        // needs them aligned for that type (f32: 4 bytes); a `Vec<u8>` does not promise
        // that, so the bytes are read into u64 words.
        let mut data = Aligned::zeroed(size);
        read_exact_at(&self.file, data.bytes_mut(), start).map_err(|e| Error::io(&self.path, e))?;
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ggml_file::qtensor_from_ggml(dtype, data.bytes(), dims, device)
        }));
        match built {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(Error::format(format!(
                "{}: tensor '{name}': {e}",
                self.path.display()
            ))),
            Err(panic) => Err(Error::format(format!(
                "{}: tensor '{name}' could not be loaded ({})",
                self.path.display(),
                panic_message(panic.as_ref())
            ))),
        }
    }
}

/// Bytes held in u64 words, so that they start 8-byte aligned (enough for every ggml
/// block type candle reinterprets them as).
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Self {
        Aligned {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the words hold at least `len` initialised bytes (len <= 8 * words.len()),
        // u8 has alignment 1, and the slice borrows `self`, so it cannot outlive them.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; the exclusive borrow of `self` makes the slice unique, and
        // every byte pattern is a valid u64.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
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

fn describe(v: &Value) -> &'static str {
    match v {
        Value::U8(_) => "a u8",
        Value::I8(_) => "an i8",
        Value::U16(_) => "a u16",
        Value::I16(_) => "an i16",
        Value::U32(_) => "a u32",
        Value::I32(_) => "an i32",
        Value::U64(_) => "a u64",
        Value::I64(_) => "an i64",
        Value::F32(_) => "an f32",
        Value::F64(_) => "an f64",
        Value::Bool(_) => "a bool",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(not(any(unix, windows)))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

// ------------------------------------------------------------------ validation

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
fn tensor_nbytes(dtype: GgmlDType, dims: &[usize]) -> Option<u64> {
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
struct Header {
    data_offset: u64,
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

fn validate(file: &File, len: u64, path: &Path) -> Result<Header> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A tiny GGUF writer for tests, so that every field can be corrupted on purpose.
    #[derive(Default)]
    struct Blob {
        version: u32,
        n_tensors: Option<u64>,
        n_kv: Option<u64>,
        kvs: Vec<Vec<u8>>,
        tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    }

    fn str_bytes(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    impl Blob {
        fn new() -> Self {
            Blob {
                version: 3,
                ..Default::default()
            }
        }
        fn kv_raw(mut self, key: &str, ty: u32, value: Vec<u8>) -> Self {
            let mut v = str_bytes(key);
            v.extend_from_slice(&ty.to_le_bytes());
            v.extend_from_slice(&value);
            self.kvs.push(v);
            self
        }
        fn kv_u32(self, key: &str, x: u32) -> Self {
            self.kv_raw(key, 4, x.to_le_bytes().to_vec())
        }
        fn kv_str(self, key: &str, s: &str) -> Self {
            self.kv_raw(key, 8, str_bytes(s))
        }
        fn kv_f32(self, key: &str, x: f32) -> Self {
            self.kv_raw(key, 6, x.to_le_bytes().to_vec())
        }
        fn kv_str_array(self, key: &str, items: &[&str]) -> Self {
            let mut v = 8u32.to_le_bytes().to_vec();
            v.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                v.extend_from_slice(&str_bytes(s));
            }
            self.kv_raw(key, 9, v)
        }
        fn tensor_f32(mut self, name: &str, dims: &[u64], data: &[f32]) -> Self {
            let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.tensors
                .push((name.to_string(), dims.to_vec(), 0, bytes));
            self
        }
        fn bytes(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&self.version.to_le_bytes());
            let nt = self.n_tensors.unwrap_or(self.tensors.len() as u64);
            out.extend_from_slice(&nt.to_le_bytes());
            let nkv = self.n_kv.unwrap_or(self.kvs.len() as u64);
            out.extend_from_slice(&nkv.to_le_bytes());
            for kv in &self.kvs {
                out.extend_from_slice(kv);
            }
            let mut offset = 0u64;
            let mut offsets = vec![];
            for (name, dims, ty, data) in &self.tensors {
                out.extend_from_slice(&str_bytes(name));
                out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                offsets.push(offset);
                offset = (offset + data.len() as u64).next_multiple_of(32);
            }
            while out.len() % 32 != 0 {
                out.push(0);
            }
            let base = out.len() as u64;
            for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
                out.resize((base + off) as usize, 0);
                out.extend_from_slice(data);
            }
            out
        }
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(bytes).expect("write");
        f.flush().expect("flush");
        f
    }

    fn open_bytes(bytes: &[u8]) -> Result<Gguf> {
        let f = write(bytes);
        open(f.path())
    }

    fn format_err(bytes: &[u8]) -> String {
        match open_bytes(bytes) {
            Err(Error::Format(m)) => m,
            Err(e) => panic!("expected a Format error, got {e:?}"),
            Ok(_) => panic!("expected a Format error, got a valid file"),
        }
    }

    fn tiny() -> Blob {
        Blob::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.block_count", 2)
            .kv_f32("llama.rope.freq_base", 10000.0)
            .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "c"])
            .tensor_f32("tok.weight", &[2, 3], &[1., 2., 3., 4., 5., 6.])
            .tensor_f32("norm.weight", &[4], &[0.5, 0.25, 0.125, 1.0])
    }

    #[test]
    fn valid_tiny_file_round_trips() {
        let g = open_bytes(&tiny().bytes()).expect("valid file opens");
        assert_eq!(g.architecture().unwrap(), "llama");
        assert_eq!(g.get_u32("llama.block_count").unwrap(), 2);
        assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
        assert_eq!(g.opt_u32("nope").unwrap(), None);
        assert_eq!(g.get_array("tokenizer.ggml.tokens").unwrap().len(), 3);
        // Wrong type is an error, absent is None.
        let e = g.opt_u32("general.architecture").unwrap_err().to_string();
        assert!(
            e.contains("general.architecture") && e.contains("string"),
            "{e}"
        );
        let e = g.get_str("missing.key").unwrap_err().to_string();
        assert!(e.contains("missing.key"), "{e}");

        let t = g.tensor("tok.weight", &Device::Cpu).unwrap();
        assert_eq!(t.shape().dims(), &[3, 2]);
        let v = t.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
        assert_eq!(v.to_vec1::<f32>().unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        let n = g.tensor("norm.weight", &Device::Cpu).unwrap();
        let v = n
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(v, vec![0.5, 0.25, 0.125, 1.0]);
        let e = g
            .tensor("blk.0.missing", &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("blk.0.missing"), "{e}");
    }

    #[test]
    fn candle_writer_output_is_accepted() {
        let t = QTensor::quantize(
            &candle_core::Tensor::arange(0f32, 64., &Device::Cpu).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap();
        let mut buf = std::io::Cursor::new(Vec::new());
        let arch = Value::String("llama".into());
        gguf_file::write(&mut buf, &[("general.architecture", &arch)], &[("w", &t)]).unwrap();
        let g = open_bytes(buf.get_ref()).unwrap();
        let back = g.tensor("w", &Device::Cpu).unwrap();
        assert_eq!(back.shape().dims(), &[64]);
    }

    #[test]
    fn missing_file_is_not_found() {
        let e = open(Path::new("/definitely/not/here.gguf")).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    }

    #[test]
    fn empty_file() {
        let m = format_err(b"");
        assert!(m.contains("too short to be GGUF (0 bytes"), "{m}");
    }

    #[test]
    fn random_bytes() {
        // A deterministic pseudo-random blob (xorshift) that does not start with "GGUF".
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let m = format_err(&bytes);
        assert!(
            m.contains("not a GGUF file") && m.contains("\"GGUF\""),
            "{m}"
        );
        // Random bytes after a valid magic and version must still fail cleanly.
        for seed in 0..64u64 {
            let mut y = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
            let mut blob = b"GGUF\x03\x00\x00\x00".to_vec();
            blob.extend((0..512).map(|_| {
                y ^= y << 13;
                y ^= y >> 7;
                y ^= y << 17;
                (y >> 32) as u8
            }));
            assert!(open_bytes(&blob).is_err());
        }
    }

    #[test]
    fn truncated_header() {
        let m = format_err(b"GGUF\x03\x00\x00\x00\x01\x00");
        assert!(m.contains("too short to be GGUF (10 bytes"), "{m}");
    }

    #[test]
    fn unsupported_version() {
        let mut b = tiny();
        b.version = 1;
        let e = open_bytes(&b.bytes()).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
        assert!(e.to_string().contains("version 1"), "{e}");
    }

    #[test]
    fn absurd_tensor_count() {
        let mut b = tiny();
        b.n_tensors = Some(u64::MAX / 2);
        let m = format_err(&b.bytes());
        assert!(m.contains(&format!("{} tensors", u64::MAX / 2)), "{m}");
    }

    #[test]
    fn absurd_metadata_count() {
        let mut b = tiny();
        b.n_kv = Some(1 << 40);
        let m = format_err(&b.bytes());
        assert!(
            m.contains(&format!("{} metadata entries", 1u64 << 40)),
            "{m}"
        );
    }

    #[test]
    fn absurd_string_length() {
        let mut value = (u64::MAX / 3).to_le_bytes().to_vec();
        value.extend_from_slice(b"short");
        let b = Blob::new().kv_raw("general.name", 8, value);
        let m = format_err(&b.bytes());
        assert!(
            m.contains("general.name") && m.contains("string length"),
            "{m}"
        );
    }

    #[test]
    fn absurd_array_length() {
        let mut value = 4u32.to_le_bytes().to_vec(); // u32 elements
        value.extend_from_slice(&(1u64 << 50).to_le_bytes());
        value.extend_from_slice(&[0u8; 16]);
        let b = Blob::new().kv_raw("tokenizer.ggml.token_type", 9, value);
        let m = format_err(&b.bytes());
        assert!(
            m.contains("tokenizer.ggml.token_type") && m.contains("elements"),
            "{m}"
        );
    }

    #[test]
    fn bad_value_type() {
        let b = Blob::new().kv_raw("general.weird", 77, vec![0u8; 16]);
        let m = format_err(&b.bytes());
        assert!(m.contains("unknown value type 77"), "{m}");
        // Unknown element type inside an array.
        let mut value = 99u32.to_le_bytes().to_vec();
        value.extend_from_slice(&1u64.to_le_bytes());
        value.extend_from_slice(&[0u8; 16]);
        let m = format_err(&Blob::new().kv_raw("a", 9, value).bytes());
        assert!(m.contains("unknown value type 99"), "{m}");
        // Bool that is neither 0 nor 1.
        let m = format_err(&Blob::new().kv_raw("flag", 7, vec![5]).bytes());
        assert!(m.contains("bool with value 5"), "{m}");
    }

    #[test]
    fn too_many_metadata_elements() {
        // Fits in the file, but candle would hold each byte as a 32-byte value.
        let n = MAX_METADATA_ELEMENTS + 1;
        let mut value = 0u32.to_le_bytes().to_vec();
        value.extend_from_slice(&n.to_le_bytes());
        value.resize(value.len() + n as usize, 0);
        let m = format_err(&Blob::new().kv_raw("big", 9, value).bytes());
        assert!(m.contains("'big'") && m.contains("steerlab accepts"), "{m}");
    }

    #[test]
    fn too_many_entries() {
        // 2^20 + 1 minimal metadata entries do fit in this file.
        let n = MAX_ENTRIES + 1;
        let mut b = Blob::new();
        b.n_kv = Some(n);
        let mut bytes = b.bytes();
        bytes.resize(bytes.len() + (n * MIN_KV_LEN) as usize, 0);
        let m = format_err(&bytes);
        assert!(m.contains("at most"), "{m}");
    }

    #[test]
    fn deeply_nested_arrays() {
        let mut value = Vec::new();
        for _ in 0..20 {
            value.extend_from_slice(&9u32.to_le_bytes());
            value.extend_from_slice(&1u64.to_le_bytes());
        }
        value.extend_from_slice(&[0u8; 64]);
        let m = format_err(&Blob::new().kv_raw("nest", 9, value).bytes());
        assert!(m.contains("nests arrays"), "{m}");
    }

    #[test]
    fn duplicate_key() {
        let b = Blob::new().kv_u32("x", 1).kv_u32("x", 2);
        let m = format_err(&b.bytes());
        assert!(m.contains("'x' appears twice"), "{m}");
    }

    #[test]
    fn bad_alignment() {
        let m = format_err(&tiny().kv_u32("general.alignment", 0).bytes());
        assert!(m.contains("general.alignment"), "{m}");
        let m = format_err(&tiny().kv_u32("general.alignment", 24).bytes());
        assert!(m.contains("power of two"), "{m}");
    }

    #[test]
    fn truncated_tensor_data() {
        let bytes = tiny().bytes();
        let cut = &bytes[..bytes.len() - 3];
        let m = format_err(cut);
        assert!(
            m.contains("truncated: tensor 'norm.weight' needs bytes up to")
                && m.contains(&format!("but the file has {}", cut.len())),
            "{m}"
        );
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let bytes = tiny().bytes();
        for n in 0..bytes.len() {
            let r = open_bytes(&bytes[..n]);
            assert!(r.is_err(), "prefix of {n} bytes was accepted");
        }
    }

    #[test]
    fn bad_tensor_infos() {
        // Too many dimensions.
        let mut b = Blob::new();
        b.tensors
            .push(("t".into(), vec![1, 1, 1, 1, 1], 0, vec![0u8; 4]));
        let m = format_err(&b.bytes());
        assert!(m.contains("5 dimensions"), "{m}");
        // Overflowing dimension product.
        let mut b = Blob::new();
        b.tensors
            .push(("t".into(), vec![u64::MAX / 2, 4], 0, vec![0u8; 4]));
        let m = format_err(&b.bytes());
        assert!(m.contains("overflows"), "{m}");
        // Unknown dtype.
        let mut b = Blob::new();
        b.tensors.push(("t".into(), vec![1], 1234, vec![0u8; 4]));
        let m = format_err(&b.bytes());
        assert!(m.contains("unknown ggml type id 1234"), "{m}");
        // Known to ggml, unsupported by candle.
        let mut b = Blob::new();
        b.tensors.push(("t".into(), vec![256], 16, vec![0u8; 128]));
        let e = open_bytes(&b.bytes()).unwrap_err();
        assert!(
            matches!(e, Error::Unsupported(_)) && e.to_string().contains("IQ2_XXS"),
            "{e}"
        );
        // Row not a multiple of the block size (Q4_0 has 32-element blocks).
        let mut b = Blob::new();
        b.tensors.push(("t".into(), vec![33], 2, vec![0u8; 64]));
        let m = format_err(&b.bytes());
        assert!(m.contains("not a multiple of the 32-element block"), "{m}");
        // A dimension of 0 (candle's reader assumes at least one element) or beyond
        // ggml's int64.
        for dims in [vec![0u64], vec![4, 0], vec![1u64 << 63]] {
            let mut b = Blob::new();
            b.tensors.push(("t".into(), dims.clone(), 0, vec![]));
            let m = format_err(&b.bytes());
            let bad = dims
                .iter()
                .position(|&d| d == 0 || d > i64::MAX as u64)
                .unwrap();
            assert!(
                m.contains(&format!(
                    "tensor 't' has dimension {bad} = {} (expected 1..=9223372036854775807)",
                    dims[bad]
                )),
                "{m}"
            );
        }
        // Huge tensor that cannot be in the file.
        let mut b = Blob::new();
        b.tensors
            .push(("huge".into(), vec![1 << 20, 1 << 20], 0, vec![0u8; 4]));
        let m = format_err(&b.bytes());
        assert!(
            m.contains("truncated: tensor 'huge' needs bytes up to"),
            "{m}"
        );
    }
}
