//! HyperSteer's hypernetwork on tiny random models (Llama and Gemma 3 families):
//! - the copied blocks compute the base model's first N blocks at initialisation, and a
//!   new hypernetwork writes Δ = 0;
//! - the gradient of the training loss in every parameter (the copied blocks, the new
//!   cross-attention layers, the norm and the head) matches central finite differences of
//!   the same loss, one parameter tensor at a time along a random direction;
//! - training lowers the loss; a row's vector does not depend on its batch; the
//!   cross-attention variant's vector depends on the base prompt; parameters round-trip
//!   and bad ones are refused.

mod common;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use common::{max_diff, smollm2, tiny, values};
use steerlab::cancel::Cancel;
use steerlab::learn::hyper::{HyperConfig, HyperExample, HyperNet, HyperTraining, Pool, Variant};
use steerlab::learn::trainer::{OptimizerKind, TrainConfig};
use steerlab::model::{Mode, Model, NoHooks, StepCtx};

const FAMILIES: [&str; 2] = ["llama", "gemma3_text"];

fn examples() -> Vec<HyperExample> {
    vec![
        HyperExample {
            steer: vec![5, 9, 3],
            ids: vec![1, 4, 6, 8, 10, 12, 14],
            split: 4,
        },
        HyperExample {
            steer: vec![7, 11, 2, 8, 3],
            ids: vec![1, 13, 15, 17, 19, 21],
            split: 3,
        },
        HyperExample {
            steer: vec![22, 23],
            ids: vec![2, 24, 25, 26, 27, 28, 29, 30],
            split: 5,
        },
    ]
}

fn training(m: &Arc<Model>, variant: Variant, lr: f64, opt: OptimizerKind) -> HyperTraining {
    training_pooled(m, variant, Pool::Last, lr, opt)
}

fn training_pooled(
    m: &Arc<Model>,
    variant: Variant,
    pool: Pool,
    lr: f64,
    opt: OptimizerKind,
) -> HyperTraining {
    HyperTraining::new(
        m.clone(),
        examples(),
        Vec::new(),
        HyperConfig {
            variant,
            pool,
            layer: 1,
            n_blocks: 2,
            batch_size: 3,
            seed: 0,
            train: TrainConfig {
                lr,
                max_grad_norm: None,
                optimizer: opt,
                ..TrainConfig::default()
            },
        },
        &Cancel::new(),
    )
    .unwrap()
}

/// Every parameter set to small random values (the zero-initialised head and
/// cross-attention outputs too), so every gradient is non-trivial.
fn randomise(net: &HyperNet, scale: f32) {
    for (i, (_, v)) in net.vars().iter().enumerate() {
        let cur = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let noise = values(cur.len(), 100 + i as u64);
        let new: Vec<f32> = cur.iter().zip(&noise).map(|(c, n)| c + scale * n).collect();
        v.set(&Tensor::from_vec(new, v.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

#[test]
fn copied_blocks_equal_the_base_blocks_and_a_new_network_writes_zero() {
    for fam in FAMILIES {
        let (_d, m) = tiny(fam);
        for variant in [Variant::NoContext, Variant::CrossAttention] {
            let net = HyperNet::new(m.clone(), variant, 2, 2).unwrap();
            let steer = vec![vec![5u32, 9, 3, 7], vec![4, 6]];
            let base_ids = [vec![1u32, 8, 9], vec![2, 3, 4, 5, 6]];
            let mem: Vec<Tensor> = base_ids
                .iter()
                .map(|r| {
                    Tensor::from_vec(
                        values(r.len() * common::D, 3),
                        (r.len(), common::D),
                        &Device::Cpu,
                    )
                    .unwrap()
                })
                .collect();
            let refs: Vec<&Tensor> = mem.iter().collect();
            let mem_arg = (variant == Variant::CrossAttention).then_some(refs.as_slice());
            for mode in [Mode::Inference, Mode::Gradient] {
                let got = net.stream(&steer, mem_arg, mode).unwrap();
                let (ids, layout) = m.pad_batch(&steer).unwrap();
                let ctx = StepCtx::prefill(&layout);
                let mut cache = m.new_cache();
                let want = m
                    .forward_blocks(m.embed(&ids).unwrap(), 0..2, &ctx, &mut cache, &mut NoHooks)
                    .unwrap();
                // Compare the real (unpadded) columns of each row.
                for (r, row) in steer.iter().enumerate() {
                    let pad = layout.pad(r);
                    let g = got.get(r).unwrap().narrow(0, pad, row.len()).unwrap();
                    let w = want.get(r).unwrap().narrow(0, pad, row.len()).unwrap();
                    let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let diff = max_diff(&g, &w);
                    assert!(diff < 1e-4, "{fam} {variant:?} {mode:?} row {r}: {diff}");
                }
                let delta = net.deltas(&steer, mem_arg, mode).unwrap();
                assert_eq!(delta.dims(), [2, common::D]);
                let dv = delta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(dv.iter().all(|&x| x == 0.0), "{fam}: Δ at init {dv:?}");
            }
        }
    }
}

/// Central differences of the loss along a random direction of each parameter tensor
/// against the autograd gradient's projection on it.
#[test]
fn gradient_of_every_parameter_matches_finite_differences() {
    for fam in FAMILIES {
        let (_d, m) = tiny(fam);
        for (variant, pool) in [
            (Variant::CrossAttention, Pool::Last),
            (Variant::NoContext, Pool::Last),
            (Variant::CrossAttention, Pool::Mean),
        ] {
            let run = training_pooled(&m, variant, pool, 1e-3, OptimizerKind::AdamW);
            let net = run.net();
            randomise(net, 0.05);
            let idx = [0usize, 1, 2];
            let cancel = Cancel::new();
            let loss = run.batch_loss(&idx, &cancel).unwrap();
            let grads = loss.backward().unwrap();
            let (mut checked, mut informative) = (0, 0);
            for (i, (name, v)) in net.vars().iter().enumerate() {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{fam} {variant:?}: no gradient for {name}"));
                let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let base = v
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                // Half along the gradient, half random: a derivative well above the
                // noise, and a check of the direction as well as the size.
                let r = values(base.len(), 7 + i as u64);
                let norm = |x: &[f32]| x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-30);
                let (gn, rn) = (norm(&g), norm(&r));
                let u: Vec<f32> = g.iter().zip(&r).map(|(g, r)| g / gn + r / rn).collect();
                let un = norm(&u);
                let u: Vec<f32> = u.iter().map(|x| x / un).collect();
                let analytic: f64 = g
                    .iter()
                    .zip(&u)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum();
                let h = 1e-2f32;
                let eval = |sign: f32| {
                    let p: Vec<f32> = base.iter().zip(&u).map(|(b, u)| b + sign * h * u).collect();
                    v.set(&Tensor::from_vec(p, v.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    let l = run
                        .batch_loss(&idx, &cancel)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    l as f64
                };
                let fd = (eval(1.0) - eval(-1.0)) / (2.0 * h as f64);
                v.set(&Tensor::from_vec(base.clone(), v.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                let gnorm = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                let tol = 1e-3 + 2e-2 * gnorm;
                assert!(
                    (fd - analytic).abs() < tol,
                    "{fam} {variant:?} {name}: autograd {analytic:.6} vs finite difference \
                     {fd:.6} (|g| {gnorm:.4})"
                );
                checked += 1;
                if analytic.abs() > 3.0 * tol {
                    informative += 1;
                }
            }
            // The check has teeth: most directional derivatives are well above the
            // tolerance (a wrong sign or a missing term would fail).
            assert!(
                2 * informative >= checked,
                "{fam} {variant:?}: only {informative} of {checked} derivatives exceed 3x the \
                 tolerance"
            );
            let crosses = net
                .vars()
                .iter()
                .filter(|(n, _)| n.contains(".cross."))
                .count();
            match variant {
                Variant::CrossAttention => assert!(crosses >= 12, "{crosses}"),
                Variant::NoContext => assert_eq!(crosses, 0),
            }
            assert_eq!(checked, net.vars().len());
        }
    }
}

#[test]
fn training_lowers_the_loss() {
    for fam in FAMILIES {
        let (_d, m) = tiny(fam);
        let mut run = training(&m, Variant::CrossAttention, 3e-3, OptimizerKind::AdamW);
        let cancel = Cancel::new();
        let first = run
            .batch_loss(&[0, 1, 2], &cancel)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        for _ in 0..30 {
            run.step(&cancel).unwrap();
        }
        let last = run
            .batch_loss(&[0, 1, 2], &cancel)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(last < 0.7 * first, "{fam}: loss {first} -> {last}");
        assert_eq!(run.history().len(), 30);
        assert!(run.history()[0].extra.iter().any(|(k, _)| k == "ce"));
    }
}

#[test]
fn a_rows_vector_does_not_depend_on_its_batch_and_cross_attention_reads_the_base_prompt() {
    let (_d, m) = tiny("llama");
    let net = HyperNet::new(m.clone(), Variant::CrossAttention, 1, 2).unwrap();
    randomise(&net, 0.05);
    let steer = vec![vec![5u32, 9, 3, 7], vec![4, 6], vec![5, 9, 3, 7]];
    let base = vec![
        vec![1u32, 8, 9],
        vec![2, 3, 4, 5, 6],
        vec![1, 20, 21, 22, 23, 24],
    ];
    let c = Cancel::new();
    let all = net.vectors(&steer, Some(&base), &c).unwrap();
    for r in 0..3 {
        let alone = net
            .vectors(&steer[r..r + 1], Some(&base[r..r + 1]), &c)
            .unwrap();
        assert_eq!(alone[0], all[r], "row {r}");
    }
    // Same steering prompt, other base prompt: another vector.
    assert!(max_diff(&all[0], &all[2]) > 1e-4);
    // Mean pooling: rows alone = the batch, and the padded training form agrees.
    let mean = HyperNet::new(m.clone(), Variant::NoContext, 1, 2)
        .unwrap()
        .with_pool(Pool::Mean);
    randomise(&mean, 0.05);
    let mv = mean.vectors(&steer, None, &c).unwrap();
    let md = mean.deltas(&steer, None, Mode::Gradient).unwrap();
    for (r, want) in mv.iter().enumerate() {
        let alone = mean.vectors(&steer[r..r + 1], None, &c).unwrap();
        assert_eq!(&alone[0], want, "mean row {r}");
        let v = md.get(r).unwrap().to_vec1::<f32>().unwrap();
        assert!(max_diff(&v, want) < 1e-4, "mean row {r} padded");
    }
    assert!(max_diff(&mv[0], &mv[1]) > 1e-4);
    // The training form (padded batch, gradient mode) gives the same vectors.
    let mem = {
        let mut out = Vec::new();
        for b in &base {
            let (ids, layout) = m.pad_batch(std::slice::from_ref(b)).unwrap();
            let ctx = StepCtx::prefill(&layout);
            let mut cache = m.new_cache();
            let h = m
                .forward_blocks(m.embed(&ids).unwrap(), 0..2, &ctx, &mut cache, &mut NoHooks)
                .unwrap();
            out.push(h.get(0).unwrap());
        }
        out
    };
    let refs: Vec<&Tensor> = mem.iter().collect();
    let d = net.deltas(&steer, Some(&refs), Mode::Gradient).unwrap();
    for (r, want) in all.iter().enumerate() {
        let v = d.get(r).unwrap().to_vec1::<f32>().unwrap();
        assert!(max_diff(&v, want) < 1e-4, "row {r}");
    }
}

#[test]
fn parameters_round_trip_and_bad_ones_are_refused() {
    let (_d, m) = tiny("llama");
    let a = HyperNet::new(m.clone(), Variant::NoContext, 1, 1).unwrap();
    randomise(&a, 0.1);
    let b = HyperNet::new(m.clone(), Variant::NoContext, 1, 1).unwrap();
    let p = a.params().unwrap();
    b.set_params(&p).unwrap();
    let c = Cancel::new();
    let s = vec![vec![3u32, 4, 5]];
    assert_eq!(
        a.vectors(&s, None, &c).unwrap(),
        b.vectors(&s, None, &c).unwrap()
    );
    // Missing, extra, wrong shape, NaN: refused, nothing changed.
    let before = b.params().unwrap();
    let err = b.set_params(&p[1..]).unwrap_err().to_string();
    assert!(err.contains("is missing"), "{err}");
    let mut extra = p.clone();
    extra.push((
        "blocks.9.q".into(),
        Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
    ));
    let err = b.set_params(&extra).unwrap_err().to_string();
    assert!(err.contains("unexpected tensor 'blocks.9.q'"), "{err}");
    let mut shaped = p.clone();
    shaped[0].1 = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = b.set_params(&shaped).unwrap_err().to_string();
    assert!(err.contains("has shape [3]"), "{err}");
    let mut nan = p.clone();
    let dims = nan[0].1.dims().to_vec();
    let n: usize = dims.iter().product();
    nan[0].1 = Tensor::from_vec(vec![f32::NAN; n], dims, &Device::Cpu).unwrap();
    let err = b.set_params(&nan).unwrap_err().to_string();
    assert!(err.contains("NaN"), "{err}");
    let after = b.params().unwrap();
    for ((_, x), (_, y)) in before.iter().zip(&after) {
        let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(x, y);
    }
    // A cross-attention network needs base prompts; a no_context one refuses them.
    let x = HyperNet::new(m.clone(), Variant::CrossAttention, 1, 1).unwrap();
    let err = x.vectors(&s, None, &c).unwrap_err().to_string();
    assert!(err.contains("needs the base prompt"), "{err}");
    let err = a
        .vectors(&s, Some(&[vec![1, 2]]), &c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("reads only the steering prompt"), "{err}");
    let err = x
        .vectors(&s, Some(&[vec![1, 2], vec![3]]), &c)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1 steering prompts and 2 base prompts"),
        "{err}"
    );
    // Out-of-range layer and block count.
    let n = m.n_layers();
    let err = HyperNet::new(m.clone(), Variant::NoContext, n, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&format!("layer {n} is out of range")), "{err}");
    let err = HyperNet::new(m.clone(), Variant::NoContext, 0, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("n_blocks is 0"), "{err}");
    // Bad examples.
    let mut bad = examples();
    bad[1].split = 6;
    let err = HyperTraining::new(
        m.clone(),
        bad,
        Vec::new(),
        HyperConfig {
            variant: Variant::NoContext,
            pool: steerlab::learn::hyper::Pool::Last,
            layer: 1,
            n_blocks: 1,
            batch_size: 2,
            seed: 0,
            train: TrainConfig::default(),
        },
        &c,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("example 1: the base prompt has 6 tokens and the target 0"),
        "{err}"
    );
}

#[test]
fn cancellation_stops_training_and_vectors() {
    let (_d, m) = tiny("llama");
    let mut run = training(&m, Variant::NoContext, 1e-3, OptimizerKind::AdamW);
    let c = Cancel::new();
    c.cancel();
    assert!(run
        .step(&c)
        .unwrap_err()
        .to_string()
        .to_lowercase()
        .contains("interrupt"));
    assert_eq!(run.history().len(), 0);
    let err = run
        .net()
        .vectors(&[vec![3u32]], None, &c)
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("interrupt"), "{err}");
}

/// On the quantized default model the copies (dequantized to f32) compute the base
/// blocks up to the kernels' 8-bit activation rounding; on its f32 load, exactly (to
/// float rounding).
#[test]
fn copies_of_smollm2_blocks_match_the_quantized_and_f32_model() {
    let Some(path) = smollm2() else { return };
    for (dtype, tol) in [
        (steerlab::model::WeightDtype::Auto, 3e-2f32),
        (steerlab::model::WeightDtype::F32, 1e-4),
    ] {
        let m = Arc::new(Model::load(&path, dtype, Device::Cpu).unwrap());
        let net = HyperNet::new(m.clone(), Variant::NoContext, 22, 4).unwrap();
        let ids = m
            .tokenizer
            .encode("Mention the ocean in every answer.", true)
            .unwrap();
        let got = net
            .stream(std::slice::from_ref(&ids), None, Mode::Inference)
            .unwrap();
        let (t, layout) = m.pad_batch(std::slice::from_ref(&ids)).unwrap();
        let ctx = StepCtx::prefill(&layout);
        let mut cache = m.new_cache();
        let want = m
            .forward_blocks(m.embed(&t).unwrap(), 0..4, &ctx, &mut cache, &mut NoHooks)
            .unwrap();
        let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = w.iter().map(|x| x.abs()).fold(0.0, f32::max);
        let rel = max_diff(&g, &w) / scale;
        eprintln!("{dtype:?}: max |copy - base| / max |base| = {rel:.2e}");
        assert!(rel < tol, "{dtype:?}: {rel}");
    }
}
