//! Reading from an opened [`Gguf`]: typed metadata accessors (`get_*` / `opt_*`, which
//! name the key and the expected type in their errors) and tensor data, read with
//! positional reads into aligned buffers and handed to candle under a panic guard.

use std::fs::File;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::Device;

use super::validation::tensor_nbytes;
use super::{panic_message, Gguf};
use crate::error::{Error, Result};

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
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}
