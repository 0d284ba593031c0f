//! Sites inside blocks, the intervention operations and the two execution modes, on tiny
//! random checkpoints of every family: the residual identity, inference == gradient
//! over prefill and decode steps with padding, per-row steering of every operation and
//! capture, and finite-difference gradients of every operation.

use candle_core::{Device, Tensor, Var};
use steerlab::capture::{Capture, Captured, Reduce};
use steerlab::hooks::Sites;
use steerlab::intervene::{Intervention, Op, Positions, SteeringPlan};
use steerlab::model::{BatchLayout, Mode, Model, Site, StepCtx};

mod common;
use common::*;

const FAMILIES: [&str; 3] = ["llama", "qwen2", "gemma3_text"];

fn unit(seed: f32) -> Tensor {
    let v = direction(seed);
    let n = v.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    v.broadcast_div(&n).unwrap()
}

fn per_row(c: Captured) -> Vec<(Vec<f32>, [usize; 3])> {
    match c {
        Captured::PerRow(r) => r,
        Captured::Reduced { .. } => panic!("expected per-row"),
    }
}

/// Every site of every block, captured at every token.
fn all_sites(n: usize) -> Vec<Site> {
    let mut s = vec![Site::Embed];
    for i in 0..n {
        s.extend([
            Site::AttnOut(i),
            Site::ResidMid(i),
            Site::MlpOut(i),
            Site::ResidPost(i),
        ]);
    }
    s
}

#[test]
fn residual_identity_holds_on_every_family() {
    for fam in FAMILIES {
        let (_d, m) = tiny(fam);
        let n = m.n_layers();
        let sites = all_sites(n);
        let (cap, _) = steerlab::generate::forward_batch(
            &m,
            &rows(),
            sites.clone(),
            Reduce::All,
            None,
            false,
            &steerlab::cancel::Cancel::new(),
        )
        .unwrap();
        for (data, shape) in per_row(cap.unwrap()) {
            let [ns, len, d] = shape;
            assert_eq!(ns, sites.len());
            let at = |k: usize| &data[k * len * d..(k + 1) * len * d];
            let idx = |s: Site| sites.iter().position(|x| *x == s).unwrap();
            for i in 0..n {
                let prev = if i == 0 {
                    at(idx(Site::Embed)).to_vec()
                } else {
                    at(idx(Site::ResidPost(i - 1))).to_vec()
                };
                let attn = at(idx(Site::AttnOut(i)));
                let mlp = at(idx(Site::MlpOut(i)));
                let mid: Vec<f32> = prev.iter().zip(attn).map(|(a, b)| a + b).collect();
                let post: Vec<f32> = mid.iter().zip(mlp).map(|(a, b)| a + b).collect();
                assert!(
                    max_diff(&mid, at(idx(Site::ResidMid(i)))) < 1e-5,
                    "{fam} mid {i}"
                );
                assert!(
                    max_diff(&post, at(idx(Site::ResidPost(i)))) < 1e-5,
                    "{fam}: resid_post[{i}] != resid_post[{i}-1] + attn_out + mlp_out"
                );
            }
        }
    }
}

/// Per-row steering with every operation at every kind of site: row 0 adds at
/// resid_post and scales attn_out per position, row 1 projects out of resid_mid and
/// clamps mlp_out, row 2 steers nothing.
fn mixed_steering(m: &Model) -> Vec<Vec<Intervention>> {
    let alpha: Vec<f32> = (0..20).map(|p| 0.3 * ((p as f32) * 0.9).sin()).collect();
    vec![
        vec![
            Intervention::add(1, (direction(0.3) * 2.0).unwrap(), Positions::All),
            Intervention {
                site: Site::AttnOut(0),
                positions: Positions::Last,
                op: Op::Scale(Tensor::from_vec(alpha, 20, &m.device).unwrap()),
            },
        ],
        vec![
            Intervention {
                site: Site::ResidMid(2),
                positions: Positions::All,
                op: Op::ProjectOut(unit(1.7)),
            },
            Intervention {
                site: Site::MlpOut(1),
                positions: Positions::Indices(vec![0, -1, 3]),
                op: Op::Clamp {
                    dir: unit(2.9),
                    value: 1.5,
                },
            },
            Intervention {
                site: Site::Embed,
                positions: Positions::Prompt,
                op: Op::Scale(Tensor::new(&[-0.5f32], &m.device).unwrap()),
            },
        ],
        vec![],
    ]
}

/// Prefill and `steps` decode steps in one mode; every step's residual and logits, and
/// the prefill capture at a few sites.
fn run(m: &Model, mode: Mode, steps: usize, steer: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
    let (ids, layout) = m.pad_batch(&rows()).unwrap();
    let plan = steer.then(|| {
        SteeringPlan::new(
            &mixed_steering(m),
            &layout.lens,
            steps,
            m.n_layers(),
            D,
            &m.device,
        )
        .unwrap()
    });
    let sites = vec![
        Site::AttnOut(0),
        Site::ResidMid(1),
        Site::MlpOut(2),
        Site::ResidPost(2),
    ];
    let mut cap = Capture::new(sites, Reduce::All);
    let mut cache = m.new_cache();
    let mut out = Vec::new();
    let mut input = ids;
    for k in 0..=steps {
        let ctx = StepCtx {
            layout: &layout,
            start: if k == 0 { 0 } else { layout.width + k - 1 },
            t: if k == 0 { layout.width } else { 1 },
            mode,
        };
        let mut hooks = Sites {
            steering: plan.as_ref(),
            capture: (k == 0).then_some(&mut cap),
            monitor: None,
            cancel: None,
            controller: None,
        };
        let h = m.forward(&input, &ctx, &mut cache, &mut hooks).unwrap();
        out.extend(h.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let lg = m.logits_last(&h, mode).unwrap();
        out.extend(lg.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let next: Vec<u32> = (0..3)
            .map(|r| ((7 * k + 3 * r + 2) % VOCAB) as u32)
            .collect();
        input = Tensor::from_vec(next, (3, 1), &Device::Cpu).unwrap();
    }
    let caps = per_row(cap.finish(&layout.lens, layout.width).unwrap())
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    (out, caps)
}

#[test]
fn inference_and_gradient_modes_agree_over_decode_steps() {
    for fam in FAMILIES {
        let (_d, m) = tiny(fam);
        for steer in [false, true] {
            let (a, ca) = run(&m, Mode::Inference, 8, steer);
            let (b, cb) = run(&m, Mode::Gradient, 8, steer);
            let scale = b.iter().fold(0f32, |s, v| s.max(v.abs()));
            let e = max_diff(&a, &b) / scale;
            assert!(e < 1e-5, "{fam} steer={steer}: modes differ by {e} x max");
            for (x, y) in ca.iter().zip(&cb) {
                assert!(max_diff(x, y) < 1e-4, "{fam}: captures differ");
            }
        }
        // The steering changed something, so the comparison above covered it.
        let (plain, _) = run(&m, Mode::Inference, 2, false);
        let (steered, _) = run(&m, Mode::Inference, 2, true);
        assert!(
            max_diff(&plain, &steered) > 1e-2,
            "{fam}: steering had no effect"
        );
    }
}

/// h after one operation, in a given mode, on a [3, t, D] activation with padding.
fn apply_op(op: Op, positions: Positions, h: &Tensor, mode: Mode) -> Tensor {
    let layout = BatchLayout::new(vec![4, 2, 3]);
    let rows = vec![
        vec![Intervention {
            site: Site::MlpOut(0),
            positions: positions.clone(),
            op: op.clone(),
        }],
        vec![],
        vec![Intervention {
            site: Site::MlpOut(0),
            positions,
            op,
        }],
    ];
    let plan = SteeringPlan::new(&rows, &layout.lens, 0, 1, D, &Device::Cpu).unwrap();
    let ctx = StepCtx {
        layout: &layout,
        start: 0,
        t: 4,
        mode,
    };
    plan.apply(Site::MlpOut(0), h.clone(), &ctx).unwrap()
}

fn ops() -> Vec<(Op, Positions)> {
    let alpha = Tensor::new(&[0.5f32, -0.25, 1.5, 0.75], &Device::Cpu).unwrap();
    vec![
        (Op::Add(direction(0.1)), Positions::All),
        (
            Op::Scale(Tensor::new(&[0.7f32], &Device::Cpu).unwrap()),
            Positions::Last,
        ),
        (Op::Scale(alpha), Positions::All),
        (Op::ProjectOut(unit(0.4)), Positions::Indices(vec![0, -1])),
        (
            Op::Clamp {
                dir: unit(0.8),
                value: -2.0,
            },
            Positions::Prompt,
        ),
    ]
}

fn activation() -> Tensor {
    let v: Vec<f32> = (0..3 * 4 * D)
        .map(|i| ((i as f32) * 0.37).sin() * 2.0)
        .collect();
    Tensor::from_vec(v, (3, 4, D), &Device::Cpu).unwrap()
}

#[test]
fn every_operation_is_the_same_in_both_modes_and_does_what_it_says() {
    let h = activation();
    for (op, pos) in ops() {
        let name = op.name();
        let a = apply_op(op.clone(), pos.clone(), &h, Mode::Inference);
        let b = apply_op(op.clone(), pos, &h, Mode::Gradient);
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(max_diff(&a, &b) < 1e-5, "{name}: modes differ");
        // Row 1 carries no operation and is untouched; padding columns too.
        let hv = h.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let row1 = 4 * D..8 * D;
        assert_eq!(a[row1.clone()], hv[row1]);
        let pad_of_row2 = 8 * D..9 * D; // row 2 has 3 tokens in a width of 4
        assert_eq!(a[pad_of_row2.clone()], hv[pad_of_row2]);
    }
    // project_out leaves no component along u; clamp sets it to the value.
    let u = unit(0.4).to_vec1::<f32>().unwrap();
    let out = apply_op(
        Op::ProjectOut(unit(0.4)),
        Positions::All,
        &h,
        Mode::Inference,
    );
    let last = out
        .get(0)
        .unwrap()
        .get(3)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let p: f32 = last.iter().zip(&u).map(|(a, b)| a * b).sum();
    assert!(p.abs() < 1e-5, "projection left: {p}");
    let c = Op::Clamp {
        dir: unit(0.4),
        value: 3.25,
    };
    let out = apply_op(c, Positions::All, &h, Mode::Inference);
    let last = out
        .get(2)
        .unwrap()
        .get(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let p: f32 = last.iter().zip(&u).map(|(a, b)| a * b).sum();
    assert!((p - 3.25).abs() < 1e-4, "clamped projection: {p}");
}

/// Central finite differences of L = sum(op(h) * r) with respect to h and to the
/// operation's own tensor (the vector of `add`, alpha of `scale`), in f32.
#[test]
fn every_operation_has_the_finite_difference_gradient() {
    let h0 = activation();
    let r: Vec<f32> = (0..3 * 4 * D).map(|i| ((i as f32) * 0.11).cos()).collect();
    let r = Tensor::from_vec(r, (3, 4, D), &Device::Cpu).unwrap();
    let loss = |op: Op, pos: Positions, h: &Tensor| -> Tensor {
        (apply_op(op, pos, h, Mode::Gradient) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let eps = 1e-2f32;
    for (op, pos) in ops() {
        let name = op.name();
        // d/dh
        let hv = Var::from_tensor(&h0).unwrap();
        let g = loss(op.clone(), pos.clone(), hv.as_tensor())
            .backward()
            .unwrap()
            .get(hv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = h0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in [0usize, 5, D + 3, 3 * D + 1, 9 * D + 7, 11 * D + 2] {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                let h = Tensor::from_vec(v, (3, 4, D), &Device::Cpu).unwrap();
                loss(op.clone(), pos.clone(), &h)
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() < 2e-2 * (1.0 + fd.abs()),
                "{name} dh[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
        // d/d(parameter)
        let param = match &op {
            Op::Add(v) | Op::Scale(v) => v.clone(),
            _ => continue,
        };
        let pv = Var::from_tensor(&param).unwrap();
        let with = |t: &Tensor| match &op {
            Op::Add(_) => Op::Add(t.clone()),
            _ => Op::Scale(t.clone()),
        };
        let g = loss(with(pv.as_tensor()), pos.clone(), &h0)
            .backward()
            .unwrap()
            .get(pv.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = param.to_vec1::<f32>().unwrap();
        for i in 0..base.len().min(6) {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, base.len(), &Device::Cpu).unwrap();
                loss(with(&t), pos.clone(), &h0).to_scalar::<f32>().unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() < 2e-2 * (1.0 + fd.abs()),
                "{name} dparam[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
    }
}

#[test]
fn bad_operations_are_refused() {
    let (_d, m) = tiny("llama");
    let plan = |op: Op, site: Site| {
        SteeringPlan::new(
            &[vec![Intervention {
                site,
                positions: Positions::All,
                op,
            }]],
            &[4],
            0,
            m.n_layers(),
            D,
            &Device::Cpu,
        )
    };
    let e = plan(Op::ProjectOut(direction(0.0)), Site::ResidMid(0)).unwrap_err();
    assert!(e.to_string().contains("expected a unit direction"), "{e}");
    let e = plan(
        Op::Scale(Tensor::new(&[0.1f32, 0.2], &Device::Cpu).unwrap()),
        Site::AttnOut(1),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("expected [1] (one value for every position) or [n] with n >= 4"),
        "{e}"
    );
    let e = plan(Op::Add(direction(0.0)), Site::MlpOut(7)).unwrap_err();
    assert!(
        e.to_string().contains("steering layer 7 is out of range"),
        "{e}"
    );
    let nan = Tensor::new(&[f32::NAN], &Device::Cpu).unwrap();
    let e = plan(Op::Scale(nan), Site::Embed).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    let e = plan(
        Op::Clamp {
            dir: unit(0.1),
            value: f32::INFINITY,
        },
        Site::ResidPost(0),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("clamp value for resid_post[0] is inf"),
        "{e}"
    );
}

/// A monitored generation records, per row, the activation that produced each new token:
/// the same values a capture of prompt + generated tokens reads at those positions, with
/// per-row steering and rows of different lengths.
#[test]
fn monitor_reads_the_positions_that_produce_each_token() {
    use steerlab::generate::{GenParams, Generation};
    for fam in FAMILIES {
        let (_d, m) = tiny(fam);
        let sites = vec![Site::MlpOut(1), Site::ResidPost(2)];
        let params = GenParams {
            max_new_tokens: 6,
            ignore_eos: true,
            ..GenParams::default()
        };
        // Positions that mean the same in a generation and in a capture of its tokens.
        let alpha: Vec<f32> = (0..20).map(|p| 0.2 * ((p as f32) * 0.7).cos()).collect();
        let steer = vec![
            vec![
                Intervention::add(1, (direction(0.3) * 2.0).unwrap(), Positions::All),
                Intervention {
                    site: Site::AttnOut(0),
                    positions: Positions::All,
                    op: Op::Scale(Tensor::from_vec(alpha, 20, &m.device).unwrap()),
                },
            ],
            vec![Intervention {
                site: Site::ResidMid(2),
                positions: Positions::All,
                op: Op::ProjectOut(unit(1.7)),
            }],
            vec![],
        ];
        let mut g = Generation::new(m.clone(), &rows(), Some(&steer), params)
            .unwrap()
            .with_monitor(sites.clone())
            .unwrap();
        g.run_all(&steerlab::cancel::Cancel::new()).unwrap();
        let mon = g.monitored().unwrap();
        for (r, prompt) in rows().iter().enumerate() {
            let new = &g.generated()[r];
            assert_eq!(new.len(), 6);
            let (data, shape) = &mon[r];
            assert_eq!(*shape, [2, 6, D]);
            // Capture over prompt + all new tokens but the last, with the same steering.
            let mut ids = prompt.clone();
            ids.extend(&new[..5]);
            let (cap, _) = steerlab::generate::forward_batch(
                &m,
                &[ids.clone()],
                sites.clone(),
                Reduce::All,
                Some(&steer[r..r + 1]),
                false,
                &steerlab::cancel::Cancel::new(),
            )
            .unwrap();
            let (full, fshape) = per_row(cap.unwrap()).remove(0);
            let len = ids.len();
            assert_eq!(fshape, [2, len, D]);
            for s in 0..2 {
                for k in 0..6 {
                    let p = prompt.len() - 1 + k;
                    let a = &data[(s * 6 + k) * D..(s * 6 + k + 1) * D];
                    let b = &full[(s * len + p) * D..(s * len + p + 1) * D];
                    assert!(max_diff(a, b) < 1e-4, "{fam} row {r} site {s} token {k}");
                }
            }
        }
    }
}

/// The two modes agree on SmolLM2 with f32 weights over a prefill and 8 decode steps of
/// a padded batch with per-row operations (skipped with a note when the file is absent:
/// `STEERLAB_SMOLLM2_GGUF`, which `make test` sets).
#[test]
fn modes_agree_on_smollm2_f32() {
    let Some(path) = std::env::var_os("STEERLAB_SMOLLM2_GGUF").map(std::path::PathBuf::from) else {
        eprintln!("note: STEERLAB_SMOLLM2_GGUF not set; skipping");
        return;
    };
    if !path.is_file() {
        eprintln!("note: {} not found; skipping", path.display());
        return;
    }
    let m = std::sync::Arc::new(
        Model::load(&path, steerlab::model::WeightDtype::F32, Device::Cpu).unwrap(),
    );
    let d = m.d_model();
    let wave = |seed: f32, scale: f32| -> Tensor {
        let v: Vec<f32> = (0..d)
            .map(|i| ((i as f32 + seed) * 0.37).sin() * scale)
            .collect();
        Tensor::from_vec(v, d, &Device::Cpu).unwrap()
    };
    let unit_d = |seed: f32| {
        let v = wave(seed, 1.0);
        let n = v.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        v.broadcast_div(&n).unwrap()
    };
    let steer = vec![
        vec![
            Intervention::add(12, wave(0.5, 2.0), Positions::All),
            Intervention {
                site: Site::MlpOut(20),
                positions: Positions::Last,
                op: Op::Scale(Tensor::new(&[0.5f32], &Device::Cpu).unwrap()),
            },
        ],
        vec![Intervention {
            site: Site::ResidMid(15),
            positions: Positions::All,
            op: Op::ProjectOut(unit_d(2.0)),
        }],
    ];
    let prompts = vec![vec![504u32, 3575, 282, 4649, 314, 9, 11], vec![1, 2, 3]];
    let run = |mode: Mode| -> Vec<f32> {
        let (ids, layout) = m.pad_batch(&prompts).unwrap();
        let plan = SteeringPlan::new(&steer, &layout.lens, 8, m.n_layers(), d, &m.device).unwrap();
        let mut cache = m.new_cache();
        let mut out = Vec::new();
        let mut input = ids;
        for k in 0..=8 {
            let ctx = StepCtx {
                layout: &layout,
                start: if k == 0 { 0 } else { layout.width + k - 1 },
                t: if k == 0 { layout.width } else { 1 },
                mode,
            };
            let mut hooks = Sites {
                steering: Some(&plan),
                capture: None,
                monitor: None,
                cancel: None,
                controller: None,
            };
            let h = m.forward(&input, &ctx, &mut cache, &mut hooks).unwrap();
            let lg = m.logits_last(&h, mode).unwrap();
            out.extend(lg.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let next: Vec<u32> = (0..2).map(|r| (100 + 37 * k + 11 * r) as u32).collect();
            input = Tensor::from_vec(next, (2, 1), &Device::Cpu).unwrap();
        }
        out
    };
    let (a, b) = (run(Mode::Inference), run(Mode::Gradient));
    let std = {
        let n = b.len() as f32;
        let mean = b.iter().sum::<f32>() / n;
        (b.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n).sqrt()
    };
    let e = max_diff(&a, &b) / std;
    assert!(e < 1e-3, "SmolLM2 f32: modes differ by {e} x std(logits)");
}
