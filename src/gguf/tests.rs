//! Unit tests of GGUF opening: a tiny writer builds valid files and corrupts every field
//! on purpose; each corruption must become a clean error that names the problem.

use super::validation::{MAX_ENTRIES, MAX_METADATA_ELEMENTS, MIN_KV_LEN};
use super::*;
use std::io::Write;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

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
