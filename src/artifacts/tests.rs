//! Unit tests of `artifacts`.

use super::*;

fn dirs() -> Directions {
    let mut d = Directions::new();
    d.insert(3, vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE]);
    d.insert(15, vec![0.1, 0.2, 0.3, -1e-30]);
    d
}

#[test]
fn safetensors_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.safetensors");
    save_safetensors(&p, &dirs(), "{\"method\":\"mean_diff\"}").unwrap();
    let (back, meta) = load_safetensors(&p).unwrap();
    assert_eq!(back, dirs());
    assert_eq!(meta, "{\"method\":\"mean_diff\"}");
}

#[test]
fn control_vector_round_trip_is_exact_and_keeps_indices() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.gguf");
    save_control_vector(&p, &dirs(), "llama").unwrap();
    let cv = load_control_vector(&p).unwrap();
    assert_eq!(cv.directions, dirs());
    assert_eq!(cv.model_hint.as_deref(), Some("llama"));
    assert_eq!(cv.layer_count, Some(2));
}

/// A control vector with one tensor `name` of ggml `dims`, type `ty` and `data`.
fn control_vector_bytes(name: &str, dims: &[u64], ty: u32, data: &[u8]) -> Vec<u8> {
    let s = |t: &str| {
        let mut v = (t.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(t.as_bytes());
        v
    };
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend(s("general.architecture"));
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend(s("controlvector"));
    out.extend(s(name));
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.resize(out.len().next_multiple_of(32), 0);
    out.extend_from_slice(data);
    out
}

fn load_cv_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cv.gguf");
    std::fs::write(&p, bytes).unwrap();
    match load_control_vector(&p) {
        Err(Error::Format(m)) => m,
        other => panic!("expected a Format error, got {other:?}"),
    }
}

#[test]
fn control_vector_shapes_other_tools_reject_are_refused() {
    // 2-D [2, 288] (ggml dims 288, 2): llama.cpp refuses it; it used to be flattened.
    let data: Vec<u8> = (0..576).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let m = load_cv_err(&control_vector_bytes("direction.1", &[288, 2], 0, &data));
    assert!(
        m.contains("tensor 'direction.1' is F32 with shape [2, 288]; expected a 1-D F32 tensor"),
        "{m}"
    );
    // A dimension of 0 (a 128-byte file): used to abort inside candle's reader.
    let bytes = control_vector_bytes("direction.1", &[0], 0, &[]);
    let m = load_cv_err(&bytes);
    assert!(
        m.contains("tensor 'direction.1' has dimension 0 = 0"),
        "{m}"
    );
    // F16.
    let m = load_cv_err(&control_vector_bytes("direction.1", &[4], 1, &[0u8; 8]));
    assert!(m.contains("is F16 with shape [4]"), "{m}");
    // Non-canonical or absurd layer numbers.
    for name in ["direction.01", "direction.+1", "direction.4097"] {
        let m = load_cv_err(&control_vector_bytes(name, &[1], 0, &[0u8; 4]));
        assert!(m.contains(&format!("unexpected tensor '{name}'")), "{m}");
    }
}

#[test]
fn vector_header_is_checked_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.safetensors");
    let put = |header: &str, data: &[u8], len: Option<u64>| {
        let mut b = len.unwrap_or(header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        std::fs::write(&p, b).unwrap();
    };
    let meta = r#""__metadata__":{"steerlab":"{}"}"#;
    put(
        &format!(r#"{{{meta},"layer.1":{{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}}}"#),
        &[0u8; 16],
        Some(u64::MAX),
    );
    let e = load_safetensors(&p).unwrap_err().to_string();
    assert!(
        e.contains("header length 18446744073709551615 is beyond the file"),
        "{e}"
    );
    put(
        &format!(r#"{{{meta},"layer.1":{{"dtype":"F32","shape":[4],"data_offsets":[0,64]}}}}"#),
        &[0u8; 16],
        None,
    );
    let e = load_safetensors(&p).unwrap_err().to_string();
    assert!(e.contains("has data_offsets [0,64] but its 4 F32 values need 16 bytes within the 16 bytes of data"), "{e}");
    put(
        &format!(
            r#"{{{meta},"layer.1":{{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,16]}}}}"#
        ),
        &[0u8; 16],
        None,
    );
    let e = load_safetensors(&p).unwrap_err().to_string();
    assert!(
        e.contains("has shape [18446744073709551615] whose size overflows 64 bits"),
        "{e}"
    );
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    put(
        &format!(
            r#"{{"__metadata__":{{"steerlab":"{deep}"}},"layer.1":{{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}}}"#
        ),
        &[0u8; 16],
        None,
    );
    let e = load_safetensors(&p).unwrap_err().to_string();
    assert!(
        e.contains("metadata 'steerlab' is not valid JSON (recursion limit exceeded"),
        "{e}"
    );
}

#[test]
fn bad_vectors_and_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.gguf");
    let mut zero = dirs();
    zero.insert(0, vec![0.0; 4]);
    let e = save_control_vector(&p, &zero, "llama").unwrap_err();
    assert!(e.to_string().contains("layer 0"), "{e}");
    let mut nan = dirs();
    nan.insert(4, vec![0.0, f32::NAN, 0.0, 0.0]);
    assert!(save_safetensors(&p, &nan, "{}").is_err());
    let mut ragged = dirs();
    ragged.insert(4, vec![0.0; 3]);
    assert!(save_control_vector(&p, &ragged, "x").is_err());
    std::fs::write(&p, b"not a file at all").unwrap();
    assert!(matches!(load_control_vector(&p), Err(Error::Format(_))));
    assert!(matches!(load_safetensors(&p), Err(Error::Format(_))));
    let missing = dir.path().join("missing.gguf");
    assert!(matches!(
        load_control_vector(&missing),
        Err(Error::NotFound { .. })
    ));
    // Truncated file.
    let good = dir.path().join("good.safetensors");
    save_safetensors(&good, &dirs(), "{}").unwrap();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    assert!(matches!(load_safetensors(&p), Err(Error::Format(_))));
}
