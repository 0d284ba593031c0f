//! Engine tests on tiny random checkpoints written here: batching and padding,
//! per-row steering, the KV cache, positions, and gradients reaching steering vectors.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use steerlab::cancel::Cancel;
use steerlab::capture::{Captured, Reduce};
use steerlab::generate::{forward_batch, GenParams, Generation};
use steerlab::hooks::Sites;
use steerlab::intervene::{Intervention, Positions, SteeringPlan};
use steerlab::model::{BatchLayout, Mode, Model, Site, StepCtx, WeightDtype};

const D: usize = 32;
const VOCAB: usize = 40;

fn write_tiny(dir: &Path, family: &str) {
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

fn tiny(family: &str) -> (tempfile::TempDir, Arc<Model>) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), family);
    let m = Model::load(dir.path(), WeightDtype::F32, Device::Cpu).unwrap();
    (dir, Arc::new(m))
}

fn rows() -> Vec<Vec<u32>> {
    vec![vec![5, 9, 3, 7, 11, 2, 8], vec![4, 6], vec![12, 13, 14, 15]]
}

fn reduced(c: Captured) -> (Vec<f32>, [usize; 3]) {
    match c {
        Captured::Reduced { data, shape } => (data, shape),
        Captured::PerRow(_) => panic!("expected reduced"),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn vecf(v: Vec<f32>) -> Tensor {
    Tensor::from_vec(v, D, &Device::Cpu).unwrap()
}

fn direction(seed: f32) -> Tensor {
    vecf((0..D).map(|i| ((i as f32 + seed) * 0.7).sin()).collect())
}

#[test]
fn batch_equals_alone_for_each_family() {
    for fam in ["llama", "qwen2", "gemma3_text"] {
        let (_d, m) = tiny(fam);
        let sites = vec![Site::Embed, Site::ResidPost(0), Site::ResidPost(2)];
        let (cb, lb) = forward_batch(
            &m,
            &rows(),
            sites.clone(),
            Reduce::Mean,
            None,
            true,
            &Cancel::default(),
        )
        .unwrap();
        let (cb, shape) = reduced(cb.unwrap());
        let (lb, lshape) = lb.unwrap();
        assert_eq!(shape, [3, 3, D]);
        for (r, row) in rows().iter().enumerate() {
            let (ca, la) = forward_batch(
                &m,
                std::slice::from_ref(row),
                sites.clone(),
                Reduce::Mean,
                None,
                true,
                &Cancel::default(),
            )
            .unwrap();
            let (ca, _) = reduced(ca.unwrap());
            let (la, _) = la.unwrap();
            let n = 3 * D;
            let e = max_diff(&ca, &cb[r * n..(r + 1) * n]);
            assert!(e < 1e-4, "{fam} row {r}: capture differs by {e}");
            let v = lshape[1];
            let e = max_diff(&la, &lb[r * v..(r + 1) * v]);
            assert!(e < 1e-4, "{fam} row {r}: logits differ by {e}");
        }
    }
}

#[test]
fn kv_cache_matches_full_recompute() {
    for fam in ["llama", "gemma3_text"] {
        let (_d, m) = tiny(fam);
        let prompt = vec![5u32, 9, 3, 7, 11];
        let params = GenParams {
            max_new_tokens: 8,
            ..Default::default()
        };
        let steer = vec![vec![Intervention::add(1, direction(1.0), Positions::All)]];
        let gen = Generation::new(
            m.clone(),
            std::slice::from_ref(&prompt),
            Some(&steer),
            params,
        )
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
        // Recompute each step from scratch without a cache.
        let mut seq = prompt.clone();
        for (k, &tok) in gen[0].iter().enumerate() {
            let (_, lg) = forward_batch(
                &m,
                &[seq.clone()],
                vec![],
                Reduce::Last,
                Some(&steer),
                true,
                &Cancel::default(),
            )
            .unwrap();
            let (lg, _) = lg.unwrap();
            let want = steerlab::generate::argmax(&lg);
            assert_eq!(tok, want, "{fam}: step {k} differs from full recompute");
            seq.push(tok);
        }
        assert!(!gen[0].is_empty());
    }
}

#[test]
fn per_row_steering_matches_alone() {
    let (_d, m) = tiny("llama");
    let v = direction(0.3);
    let neg = v.neg().unwrap();
    let steer = vec![
        vec![Intervention::add(1, (&v * 3.0).unwrap(), Positions::All)],
        vec![],
        vec![Intervention::add(2, (&neg * 2.0).unwrap(), Positions::Last)],
    ];
    let params = GenParams {
        max_new_tokens: 6,
        ..Default::default()
    };
    let batch = Generation::new(m.clone(), &rows(), Some(&steer), params.clone())
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
    for (r, row) in rows().iter().enumerate() {
        let alone = Generation::new(
            m.clone(),
            std::slice::from_ref(row),
            Some(&[steer[r].clone()]),
            params.clone(),
        )
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
        assert_eq!(alone[0], batch[r], "row {r}");
    }
    // Steering changes something.
    let plain = Generation::new(m.clone(), &rows(), None, params)
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
    assert_eq!(plain[1], batch[1]);
}

#[test]
fn positions_select_the_right_tokens() {
    let (_d, m) = tiny("llama");
    let row = vec![vec![5u32, 9, 3, 7]];
    let site = vec![Site::ResidPost(1)];
    let all = |p: Option<Positions>| {
        let st = p.map(|p| vec![vec![Intervention::add(1, direction(2.0), p)]]);
        let (c, _) = forward_batch(
            &m,
            &row,
            site.clone(),
            Reduce::All,
            st.as_deref(),
            false,
            &Cancel::default(),
        )
        .unwrap();
        match c.unwrap() {
            Captured::PerRow(mut v) => v.remove(0).0,
            _ => unreachable!(),
        }
    };
    let base = all(None);
    let changed = |x: &[f32]| -> Vec<bool> {
        (0..4)
            .map(|j| max_diff(&x[j * D..(j + 1) * D], &base[j * D..(j + 1) * D]) > 1e-6)
            .collect()
    };
    assert_eq!(changed(&all(Some(Positions::All))), [true; 4]);
    // A prefill reads no generated token: 'generated' would steer nothing, so it is
    // refused rather than ignored, as is an index outside the row.
    for bad in [
        Positions::Generated,
        Positions::Indices(vec![4]),
        Positions::Indices(vec![-5]),
    ] {
        let st = vec![vec![Intervention::add(1, direction(2.0), bad.clone())]];
        let r = forward_batch(
            &m,
            &row,
            site.clone(),
            Reduce::All,
            Some(&st),
            false,
            &Cancel::default(),
        );
        assert!(r.is_err(), "{bad:?} was accepted");
    }
    assert_eq!(
        changed(&all(Some(Positions::Last))),
        [false, false, false, true]
    );
    assert_eq!(
        changed(&all(Some(Positions::Indices(vec![0, -2])))),
        [true, false, true, false]
    );
}

/// The direct CPU attention (no gradients: preallocated cache, rotary on the fly) and
/// the differentiable candle path compute the same thing, prefill and a decode step,
/// on a left-padded batch.
#[test]
fn direct_attention_matches_differentiable_path() {
    for fam in ["llama", "qwen2", "gemma3_text"] {
        let (_d, m) = tiny(fam);
        let (ids, layout) = m.pad_batch(&rows()).unwrap();
        let run = |track: bool| -> Vec<f32> {
            let embed = |ids: &Tensor| {
                let e = m.embed(ids).unwrap();
                if track {
                    Var::from_tensor(&e).unwrap().as_tensor().clone()
                } else {
                    e
                }
            };
            let mut cache = m.new_cache();
            let ctx = StepCtx {
                layout: &layout,
                start: 0,
                t: layout.width,
                mode: if track {
                    Mode::Gradient
                } else {
                    Mode::Inference
                },
            };
            let h = m
                .forward_embeds(embed(&ids), &ctx, &mut cache, &mut Sites::default())
                .unwrap();
            assert_eq!(h.track_op(), track);
            let next = Tensor::new(&[[3u32], [17], [8]], &Device::Cpu).unwrap();
            let ctx = StepCtx {
                layout: &layout,
                start: layout.width,
                t: 1,
                mode: if track {
                    Mode::Gradient
                } else {
                    Mode::Inference
                },
            };
            let h2 = m
                .forward_embeds(embed(&next), &ctx, &mut cache, &mut Sites::default())
                .unwrap();
            let mut out = h.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            out.extend(h2.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            out
        };
        let (direct, candle) = (run(false), run(true));
        let scale = candle.iter().fold(0f32, |a, v| a.max(v.abs()));
        let e = max_diff(&direct, &candle) / scale;
        assert!(
            e < 1e-5,
            "{fam}: direct attention differs from candle's by {e} x max"
        );
    }
}

#[test]
fn gradient_reaches_steering_vector() {
    let (_d, m) = tiny("gemma3_text");
    let v = Var::from_tensor(&direction(0.5)).unwrap();
    let layout = BatchLayout::new(vec![4]);
    let ids = Tensor::new(&[[5u32, 9, 3, 7]], &Device::Cpu).unwrap();
    let loss_for = |vec: &Tensor| -> Tensor {
        let plan = SteeringPlan::new(
            &[vec![Intervention::add(0, vec.clone(), Positions::All)]],
            &[4],
            0,
            m.n_layers(),
            D,
            &Device::Cpu,
        )
        .unwrap();
        let ctx = StepCtx {
            layout: &layout,
            start: 0,
            t: 4,
            mode: Mode::Gradient,
        };
        let mut cache = m.new_cache();
        let mut sites = Sites {
            steering: Some(&plan),
            capture: None,
            cancel: None,
        };
        let h = m
            .forward_embeds(m.embed(&ids).unwrap(), &ctx, &mut cache, &mut sites)
            .unwrap();
        let lg = m.logits_last(&h, Mode::Gradient).unwrap();
        lg.narrow(1, 3, 1).unwrap().sum_all().unwrap()
    };
    let loss = loss_for(v.as_tensor());
    let grads = loss.backward().unwrap();
    let g = grads
        .get(v.as_tensor())
        .expect("no gradient")
        .to_vec1::<f32>()
        .unwrap();
    // Finite difference on a few coordinates.
    let base = v.as_tensor().to_vec1::<f32>().unwrap();
    for i in [0usize, 7, 19] {
        let eps = 1e-2f32;
        let mut p = base.clone();
        p[i] += eps;
        let mut q = base.clone();
        q[i] -= eps;
        let lp = loss_for(&vecf(p)).to_scalar::<f32>().unwrap();
        let lq = loss_for(&vecf(q)).to_scalar::<f32>().unwrap();
        let fd = (lp - lq) / (2.0 * eps);
        assert!(
            (fd - g[i]).abs() < 2e-2 * (1.0 + fd.abs()),
            "coord {i}: autograd {} vs finite difference {fd}",
            g[i]
        );
    }
    let _ = DType::F32;
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (_d, m) = tiny("llama");
    assert!(m.resolve_layer(3).is_err());
    assert!(m.resolve_layer(-4).is_err());
    assert_eq!(m.resolve_layer(-1).unwrap(), 2);
    let wrong = Tensor::zeros(D + 1, DType::F32, &Device::Cpu).unwrap();
    let st = vec![vec![Intervention::add(0, wrong, Positions::All)]];
    let e = forward_batch(
        &m,
        &[vec![1, 2]],
        vec![],
        Reduce::Last,
        Some(&st),
        true,
        &Cancel::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("expected [32]"), "{e}");
    let nan = vecf(vec![f32::NAN; D]);
    let st = vec![vec![Intervention::add(0, nan, Positions::All)]];
    let e = forward_batch(
        &m,
        &[vec![1, 2]],
        vec![],
        Reduce::Last,
        Some(&st),
        true,
        &Cancel::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("non-finite"), "{e}");
    let e = forward_batch(
        &m,
        &[vec![1, 2]],
        vec![],
        Reduce::Last,
        Some(&[]),
        true,
        &Cancel::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("one steering"), "{e}");
    let long = vec![(0..70).map(|i| (i % 30) as u32 + 2).collect::<Vec<u32>>()];
    let e = forward_batch(
        &m,
        &long,
        vec![],
        Reduce::Last,
        None,
        true,
        &Cancel::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("context"), "{e}");
    let e = forward_batch(
        &m,
        &[vec![1, 99]],
        vec![],
        Reduce::Last,
        None,
        true,
        &Cancel::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = forward_batch(
        &m,
        &[vec![1, 2]],
        vec![Site::ResidPost(0)],
        Reduce::Index(5),
        None,
        false,
        &Cancel::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("position 5"), "{e}");
}

#[test]
fn a_set_cancel_stops_every_loop_and_leaves_the_model_usable() {
    let (_d, m) = tiny("llama");
    let params = GenParams {
        max_new_tokens: 5,
        ignore_eos: true,
        ..Default::default()
    };
    let want = Generation::new(m.clone(), &rows(), None, params.clone())
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
    let (_, want_logits) = forward_batch(
        &m,
        &rows(),
        vec![],
        Reduce::Last,
        None,
        true,
        &Cancel::default(),
    )
    .unwrap();

    let cancelled = Cancel::new();
    cancelled.cancel();
    let g = Generation::new(m.clone(), &rows(), None, params.clone()).unwrap();
    assert!(matches!(
        g.run(&cancelled),
        Err(steerlab::Error::Interrupted)
    ));
    let e = forward_batch(
        &m,
        &rows(),
        vec![Site::ResidPost(1)],
        Reduce::Mean,
        None,
        true,
        &cancelled,
    );
    assert!(matches!(e, Err(steerlab::Error::Interrupted)));
    let e = steerlab::generate::token_logprobs(&m, &rows(), None, &cancelled);
    assert!(matches!(e, Err(steerlab::Error::Interrupted)));

    // Nothing of the interrupted calls stays behind.
    let again = Generation::new(m.clone(), &rows(), None, params)
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
    assert_eq!(again, want);
    let (_, logits) = forward_batch(
        &m,
        &rows(),
        vec![],
        Reduce::Last,
        None,
        true,
        &Cancel::default(),
    )
    .unwrap();
    assert_eq!(logits.unwrap().0, want_logits.unwrap().0);
}
