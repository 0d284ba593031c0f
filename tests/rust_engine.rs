//! Engine tests on tiny random checkpoints written here: batching and padding,
//! per-row steering, the KV cache, positions, and gradients reaching steering vectors.

use candle_core::{DType, Device, Tensor, Var};
use steerlab::cancel::Cancel;
use steerlab::capture::{Captured, Reduce};
use steerlab::generate::{forward_batch, GenParams, Generation};
use steerlab::hooks::Sites;
use steerlab::intervene::{Intervention, Positions, SteeringPlan};
use steerlab::model::{BatchLayout, Mode, Site, StepCtx};

mod common;
use common::*;

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
fn per_row_settings_give_each_row_what_it_gives_alone() {
    // Rows with their own sampling settings, seeds and limits in one batch (what a
    // server batching unrelated requests runs) equal each row run alone.
    let (_d, m) = tiny("llama");
    let v = direction(0.3);
    let steer = vec![
        vec![Intervention::add(1, (&v * 3.0).unwrap(), Positions::All)],
        vec![],
        vec![],
    ];
    let settings = vec![
        GenParams {
            max_new_tokens: 7,
            temperature: 0.9,
            seed: Some(11),
            ..Default::default()
        },
        GenParams {
            max_new_tokens: 3,
            ..Default::default()
        },
        GenParams {
            max_new_tokens: 5,
            temperature: 1.3,
            top_k: Some(20),
            seed: Some(5),
            ignore_eos: true,
            ..Default::default()
        },
    ];
    let batch = Generation::per_row(m.clone(), &rows(), Some(&steer), settings.clone())
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
    for (r, row) in rows().iter().enumerate() {
        let alone = Generation::new(
            m.clone(),
            std::slice::from_ref(row),
            Some(&[steer[r].clone()]),
            settings[r].clone(),
        )
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
        assert_eq!(alone[0], batch[r], "row {r}");
        assert!(batch[r].len() <= settings[r].max_new_tokens);
    }
    assert_eq!(batch[2].len(), 5, "ignore_eos row runs to its limit");
    // Seeds are the rows' own: a different seed changes row 0's sample.
    let mut other = settings.clone();
    other[0].seed = Some(12);
    let changed = Generation::per_row(m.clone(), &rows(), Some(&steer), other)
        .unwrap()
        .run(&Cancel::default())
        .unwrap();
    assert_eq!(changed[1], batch[1]);
    assert_ne!(changed[0], batch[0], "row 0 samples with its own seed");
    // A finished row yields nothing more; the others are untouched.
    let mut g = Generation::per_row(m.clone(), &rows(), Some(&steer), settings.clone()).unwrap();
    let first = g.step().unwrap().unwrap();
    g.finish(0).unwrap();
    let mut rest: Vec<Vec<u32>> = first.iter().map(|t| t.iter().copied().collect()).collect();
    while let Some(step) = g.step().unwrap() {
        assert_eq!(step[0], None, "a finished row yields no tokens");
        for (r, t) in step.iter().enumerate() {
            rest[r].extend(t.iter().copied());
        }
    }
    assert_eq!(rest[0].len(), 1);
    assert_eq!(rest[1], batch[1]);
    assert_eq!(rest[2], batch[2]);
    // Bad settings are errors, naming the row.
    assert!(g.finish(3).is_err());
    let e = Generation::per_row(m.clone(), &rows(), None, settings[..2].to_vec())
        .err()
        .unwrap();
    assert!(e.to_string().contains("expected one per prompt"), "{e}");
    let mut bad = settings.clone();
    bad[1].temperature = -1.0;
    let e = Generation::per_row(m.clone(), &rows(), None, bad)
        .err()
        .unwrap();
    assert!(e.to_string().contains("row 1"), "{e}");
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
            monitor: None,
            cancel: None,
            controller: None,
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
