//! Unit tests of `config`.

use super::*;

fn hf(json: &str) -> Result<Config> {
    let c: HfConfig = serde_json::from_str(json).map_err(|e| Error::format(e.to_string()))?;
    c.into_config()
}

const BASE: &str = r#""model_type":"llama","hidden_size":64,"num_attention_heads":4,
    "intermediate_size":128,"vocab_size":100"#;
const GEMMA: &str = r#""model_type":"gemma3_text","hidden_size":64,"num_attention_heads":4,
    "intermediate_size":128,"vocab_size":100"#;

#[test]
fn sizes_are_bounded_before_anything_is_allocated() {
    // 2^33 layers used to allocate per-layer storage before the plausibility check.
    let e = hf(&format!(r#"{{{BASE},"num_hidden_layers":8589934592}}"#)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config.json: num_hidden_layers = 8589934592 is not a plausible size (expected 1..=4096)"
    );
    let e = hf(&format!(
        r#"{{{GEMMA},"num_hidden_layers":2,"sliding_window":0}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("sliding_window = 0"), "{e}");
    let ok = hf(&format!(r#"{{{BASE},"num_hidden_layers":2}}"#)).unwrap();
    assert_eq!((ok.n_layers, ok.head_dim, ok.n_kv_heads), (2, 16, 4));
}

#[test]
fn ignored_features_are_refused() {
    let e = hf(&format!(
        r#"{{{BASE},"num_hidden_layers":2,"partial_rotary_factor":0.25}}"#
    ))
    .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    assert!(
        e.to_string().contains("partial_rotary_factor = 0.25"),
        "{e}"
    );
    let e = hf(&format!(
        r#"{{{BASE},"num_hidden_layers":2,"mlp_bias":true}}"#
    ))
    .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
}

#[test]
fn check_size_message_names_key_value_and_range() {
    let e = check_size("f.gguf", "llama.block_count", 1 << 31, MAX_LAYERS).unwrap_err();
    assert_eq!(
        e.to_string(),
        "f.gguf: llama.block_count = 2147483648 is not a plausible size (expected 1..=4096)"
    );
    assert_eq!(check_size("f", "k", 7, 8).unwrap(), 7);
}
