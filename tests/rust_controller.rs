//! The steering controller in the decode loop, on tiny checkpoints of each family: a
//! quiet controller is exactly the unsteered model; a firing one equals the same
//! constant patch applied by a plan on every steered layer; per-row controllers in a
//! batch equal each row alone; the gate of each step is recomputed from the previous
//! step's states; the KV cache survives the re-run of the last prompt token; bad
//! controllers are refused.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use steerlab::cancel::Cancel;
use steerlab::capture::Reduce;
use steerlab::generate::{forward_batch, GenParams, Generation};
use steerlab::intervene::{Controller, ControllerParams, Intervention, Positions, RowSteering};
use steerlab::model::{Model, Site};

mod common;
use common::*;

const K: usize = 2; // read layers 1, 2
const H: usize = 3;
const LAYERS: [usize; 2] = [0, 1];

fn dirs() -> Vec<f32> {
    let mut out = Vec::new();
    for s in [1.0f32, 2.5] {
        let v: Vec<f32> = (0..D).map(|i| ((i as f32 + s) * 0.7).sin()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / n));
    }
    out
}

/// A controller whose outputs are constant (W zero): gate σ(gate_bias), weights σ(2).
fn constant(gate_bias: f32, strength: f32) -> ControllerParams {
    let l = LAYERS.len();
    let mut b2 = vec![2.0f32; 1 + l];
    b2[0] = gate_bias;
    ControllerParams {
        read_layers: vec![1, 2],
        layers: LAYERS.to_vec(),
        hidden: H,
        mean: vec![0.0; K * D],
        scale: vec![1.0; K * D],
        w1: vec![0.0; K * D * H],
        b1: vec![0.0; H],
        w2: vec![0.0; H * (1 + l)],
        b2,
        directions: dirs(),
        strength,
    }
}

/// A controller whose gate depends on what it reads.
fn reading() -> ControllerParams {
    let l = LAYERS.len();
    let mut p = constant(-0.5, 3.0);
    p.w1 = (0..K * D * H)
        .map(|i| ((i as f32) * 0.37).sin() * 0.3)
        .collect();
    p.b1 = vec![0.1, -0.2, 0.05];
    p.w2 = (0..H * (1 + l)).map(|i| ((i as f32) * 1.3).cos()).collect();
    p.mean = (0..K * D).map(|i| (i as f32 * 0.1).sin() * 0.2).collect();
    p.scale = (0..K * D).map(|i| 0.5 + (i % 3) as f32 * 0.25).collect();
    p
}

fn ctrl(m: &Model, p: ControllerParams) -> Arc<Controller> {
    Arc::new(Controller::new(p, m.n_layers(), m.d_model(), &Device::Cpu).unwrap())
}

fn params(n: usize) -> GenParams {
    GenParams {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    }
}

/// New ids, their log-probabilities, and the gates of a generation.
type Run = (Vec<Vec<u32>>, Vec<Vec<f32>>, Option<Vec<Vec<f32>>>);

fn run(m: &Arc<Model>, rows: &[Vec<u32>], steering: Option<&[RowSteering]>, n: usize) -> Run {
    let mut g = Generation::new(m.clone(), rows, steering, params(n))
        .unwrap()
        .with_logprobs();
    g.run_all(&Cancel::new()).unwrap();
    let lp = g.logprobs().unwrap().to_vec();
    let gates = g.gates();
    (g.into_generated(), lp, gates)
}

fn every(c: &Arc<Controller>, n: usize) -> Vec<RowSteering> {
    vec![vec![Intervention::controller(c.clone())]; n]
}

#[test]
fn quiet_controller_is_exactly_unsteered() {
    for family in ["llama", "gemma3_text"] {
        let (_d, m) = tiny(family);
        let rows = rows();
        let base = run(&m, &rows, None, 6);
        let c = ctrl(&m, constant(-1e4, 3.0));
        let quiet = run(&m, &rows, Some(&every(&c, rows.len())), 6);
        assert_eq!(base.0, quiet.0, "{family}");
        assert_eq!(base.1, quiet.1, "{family}: log-probabilities differ");
        let gates = quiet.2.unwrap();
        assert!(gates.iter().flatten().all(|&g| g == 0.0));
        assert_eq!(gates[0].len(), 6);
        // Strength 0 with the gate open is also exactly unsteered.
        let c0 = ctrl(&m, constant(1e4, 0.0));
        assert_eq!(run(&m, &rows, Some(&every(&c0, rows.len())), 6).1, base.1);
    }
}

#[test]
fn firing_controller_patches_every_steered_layer() {
    for family in ["llama", "gemma3_text"] {
        let (_d, m) = tiny(family);
        let rows = rows();
        let strength = 2.0f32;
        let c = ctrl(&m, constant(1e4, strength));
        let fired = run(&m, &rows, Some(&every(&c, rows.len())), 5);
        // The same patch as constant additions at "last" on every steered layer.
        let w = 1.0 / (1.0 + (-2.0f32).exp());
        let d = dirs();
        let plan: RowSteering = LAYERS
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let v: Vec<f32> = d[i * D..(i + 1) * D]
                    .iter()
                    .map(|x| strength * 1.0 * w * x)
                    .collect();
                Intervention::add(l, vecf(v), Positions::Last)
            })
            .collect();
        let constant = run(&m, &rows, Some(&vec![plan.clone(); rows.len()]), 5);
        assert_eq!(fired.0, constant.0, "{family}");
        let worst = fired
            .1
            .iter()
            .zip(&constant.1)
            .map(|(a, b)| max_diff(a, b))
            .fold(0.0, f32::max);
        assert!(
            worst < 1e-5,
            "{family}: log-probabilities differ by {worst}"
        );
        // Dropping either layer's patch changes the result: both layers are patched.
        for (skip, layer) in LAYERS.iter().enumerate() {
            let mut part = plan.clone();
            part.remove(skip);
            let other = run(&m, &rows, Some(&vec![part; rows.len()]), 5);
            let diff = fired
                .1
                .iter()
                .zip(&other.1)
                .map(|(a, b)| max_diff(a, b))
                .fold(0.0, f32::max);
            assert!(diff > 1e-4, "{family}: layer {layer} made no difference");
        }
        // And the residual at the first steered layer moved by exactly the patch at the
        // position that predicts the first token.
        let mut g = Generation::new(m.clone(), &rows, Some(&every(&c, rows.len())), params(1))
            .unwrap()
            .with_monitor(vec![Site::ResidPost(LAYERS[0])])
            .unwrap();
        g.run_all(&Cancel::new()).unwrap();
        let steered = g.monitored().unwrap();
        let mut g = Generation::new(m.clone(), &rows, None, params(1))
            .unwrap()
            .with_monitor(vec![Site::ResidPost(LAYERS[0])])
            .unwrap();
        g.run_all(&Cancel::new()).unwrap();
        let base = g.monitored().unwrap();
        for (s, b) in steered.iter().zip(&base) {
            let delta: Vec<f32> = s.0.iter().zip(&b.0).map(|(x, y)| x - y).collect();
            let want: Vec<f32> = d[..D].iter().map(|x| strength * w * x).collect();
            assert!(max_diff(&delta, &want) < 1e-5, "{family}");
        }
    }
}

#[test]
fn per_row_controllers_equal_each_row_alone() {
    let (_d, m) = tiny("llama");
    let rows = rows();
    let fire = ctrl(&m, constant(1e4, 2.0));
    let read = ctrl(&m, reading());
    let quiet = ctrl(&m, constant(-1e4, 2.0));
    let per_row: Vec<RowSteering> = vec![
        vec![Intervention::controller(fire.clone())],
        vec![Intervention::controller(read.clone())],
        vec![Intervention::controller(quiet.clone())],
    ];
    let batch = run(&m, &rows, Some(&per_row), 5);
    let mut none = per_row.clone();
    none[2] = Vec::new();
    let batch2 = run(&m, &rows, Some(&none), 5);
    for (r, row) in rows.iter().enumerate() {
        let alone = run(&m, std::slice::from_ref(row), Some(&per_row[r..r + 1]), 5);
        assert_eq!(alone.0[0], batch.0[r], "row {r}");
        assert!(max_diff(&alone.1[0], &batch.1[r]) < 1e-5, "row {r}");
        let (ga, gb) = (alone.2.unwrap(), batch.2.clone().unwrap());
        assert!(max_diff(&ga[0], &gb[r]) < 1e-5, "row {r} gates");
    }
    // A quiet row in a batch where others fire keeps the unsteered numbers exactly (its
    // KV cache and logits are restored after the re-run of the last prompt token).
    let base = run(&m, &rows, None, 5);
    assert_eq!(batch.1[2], base.1[2]);
    assert_eq!(batch2.1[2], base.1[2]);
}

#[test]
fn the_gate_is_recomputed_from_each_previous_step() {
    let (_d, m) = tiny("llama");
    let rows = rows();
    let p = reading();
    let c = ctrl(&m, p.clone());
    let reads: Vec<Site> = p.read_layers.iter().map(|&l| Site::ResidPost(l)).collect();
    let mut g = Generation::new(m.clone(), &rows, Some(&every(&c, rows.len())), params(6))
        .unwrap()
        .with_monitor(reads.clone())
        .unwrap();
    g.run_all(&Cancel::new()).unwrap();
    let gates = g.gates().unwrap();
    let mon = g.monitored().unwrap(); // per row [k, n_new, d]
                                      // The first gate: the unpatched prompt's last token.
    let (cap, _) =
        forward_batch(&m, &rows, reads, Reduce::Last, None, false, &Cancel::new()).unwrap();
    let (x0, shape) = reduced(cap.unwrap()); // [n, k, d]
    let n = shape[0];
    let x0 = Tensor::from_vec(x0, (n, K * D), &Device::Cpu).unwrap();
    let g0 = c.outputs(&x0).unwrap().to_vec2::<f32>().unwrap();
    let mut distinct = 0;
    for r in 0..rows.len() {
        assert!((gates[r][0] - g0[r][0]).abs() < 1e-6, "row {r} first gate");
        let (data, [k, steps, d]) = &mon[r];
        for s in 1..*steps {
            // The states that predicted token s-1, at each read layer, concatenated.
            let mut x = Vec::with_capacity(k * d);
            for site in 0..*k {
                let at = (site * steps + (s - 1)) * d;
                x.extend_from_slice(&data[at..at + d]);
            }
            let x = Tensor::from_vec(x, (1, k * d), &Device::Cpu).unwrap();
            let want = c.outputs(&x).unwrap().to_vec2::<f32>().unwrap()[0][0];
            assert!(
                (gates[r][s] - want).abs() < 1e-5,
                "row {r} step {s}: gate {} but the previous step's states give {want}",
                gates[r][s]
            );
            if (gates[r][s] - gates[r][0]).abs() > 1e-4 {
                distinct += 1;
            }
        }
    }
    assert!(distinct > 0, "the gate never changed: it is not recomputed");
}

#[test]
fn forced_tokens_give_the_prefill_log_probabilities() {
    let (_d, m) = tiny("llama");
    let rows = rows();
    let (ids, lps, _) = run(&m, &rows, None, 4);
    let mut g = Generation::new(m.clone(), &rows, None, params(4))
        .unwrap()
        .with_forced(ids.clone(), false)
        .unwrap()
        .with_logprobs();
    g.run_all(&Cancel::new()).unwrap();
    assert_eq!(g.generated(), &ids[..]);
    let full: Vec<Vec<u32>> = rows
        .iter()
        .zip(&ids)
        .map(|(r, i)| r.iter().chain(i).copied().collect())
        .collect();
    let tl = steerlab::generate::token_logprobs(&m, &full, None, &Cancel::new()).unwrap();
    for r in 0..rows.len() {
        let tail = &tl[r][tl[r].len() - 4..];
        assert!(max_diff(tail, &lps[r]) < 1e-4, "row {r}");
        assert!(max_diff(&g.logprobs().unwrap()[r], &lps[r]) < 1e-6);
    }
    // A quiet controller's forced KL is exactly 0; a firing one's is not.
    let quiet = ctrl(&m, constant(-1e4, 3.0));
    let kl = steerlab::generate::forced_kl(
        m.clone(),
        &rows,
        ids.clone(),
        Some(&every(&quiet, rows.len())),
        &Cancel::new(),
    )
    .unwrap();
    assert!(kl.iter().flatten().all(|&x| x == 0.0));
    let fire = ctrl(&m, constant(1e4, 3.0));
    let kl = steerlab::generate::forced_kl(
        m.clone(),
        &rows,
        ids,
        Some(&every(&fire, rows.len())),
        &Cancel::new(),
    )
    .unwrap();
    assert!(kl.iter().flatten().all(|&x| x > 0.0 && x.is_finite()));
}

#[test]
fn controllers_are_refused_where_they_cannot_act() {
    let (_d, m) = tiny("llama");
    let rows = rows();
    let c = ctrl(&m, constant(1e4, 2.0));
    let err = forward_batch(
        &m,
        &rows,
        vec![],
        Reduce::Last,
        Some(&every(&c, rows.len())),
        true,
        &Cancel::new(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("acts during generation"), "{err}");
    let two = vec![
        vec![
            Intervention::controller(c.clone()),
            Intervention::controller(c)
        ];
        3
    ];
    let err = Generation::new(m.clone(), &rows, Some(&two), params(3))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("two steering controllers"), "{err}");
}

#[test]
fn bad_controllers_are_refused() {
    let (_d, m) = tiny("llama");
    let (n, d) = (m.n_layers(), m.d_model());
    let check = |p: ControllerParams, want: &str| {
        let err = Controller::new(p, n, d, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "expected '{want}' in: {err}");
    };
    let mut p = constant(0.0, 1.0);
    p.directions[0] *= 3.0;
    check(p, "unit direction");
    let mut p = constant(0.0, 1.0);
    p.layers = vec![0, 9];
    check(p, "out of range");
    let mut p = constant(0.0, 1.0);
    p.read_layers = vec![1, 1];
    check(p, "repeat a layer");
    let mut p = constant(0.0, 1.0);
    p.w1.pop();
    check(p, "W1 has");
    let mut p = constant(0.0, 1.0);
    p.b1[1] = f32::NAN;
    check(p, "non-finite");
    let mut p = constant(0.0, 1.0);
    p.scale[3] = 0.0;
    check(p, "expected values > 0");
    let mut p = constant(0.0, 1.0);
    p.strength = f32::INFINITY;
    check(p, "strength");
    let mut p = constant(0.0, 1.0);
    p.hidden = 0;
    check(p, "hidden width is 0");
    // A controller for a wider model is refused by a generation on this one.
    let (_d2, other) = tiny("gemma3_text");
    let c = ctrl(&other, constant(1e4, 1.0));
    assert!(c.check_model(n, d + 1).is_err());
    // A patch too large for the activations is refused, not carried as inf.
    let big = ctrl(&m, constant(1e4, 3.0e38));
    let err = Generation::new(m.clone(), &rows(), Some(&every(&big, 3)), params(3))
        .unwrap()
        .run(&Cancel::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large"), "{err}");
}

/// Stage 2's loss and gradient are those of the generation path: with an input-free
/// controller (W1 = W2 = 0, so the outputs are b2 and the gate read once equals the gate
/// recomputed at every step), the training loss equals the cross-entropy of the forced
/// refusal tokens plus the forced KL computed by generation, and its gradient in b2
/// (one SGD step with lr 1) matches central differences of that generation-path loss.
#[test]
fn stage_two_loss_and_gradient_match_the_generation_path() {
    use steerlab::learn::controller::{ControllerConfig, ControllerTraining, Stage2Example};
    use steerlab::learn::trainer::{OptimizerKind, TrainConfig};
    for family in ["llama", "gemma3_text"] {
        let (_d, m) = tiny(family);
        let kd = K * m.d_model();
        let strength = 2.5f32;
        let harmful = (vec![5u32, 9, 3, 7], vec![11u32, 2, 8]);
        let benign = (vec![4u32, 6, 12], vec![13u32, 14]);
        let state = |s: f32| -> Vec<f32> { (0..kd).map(|i| ((i as f32) * s).sin()).collect() };
        let sgd = TrainConfig {
            lr: 1.0,
            max_grad_norm: None,
            optimizer: OptimizerKind::Sgd,
            ..TrainConfig::default()
        };
        let cfg = ControllerConfig {
            read_layers: vec![1, 2],
            layers: LAYERS.to_vec(),
            hidden: H,
            strength,
            directions: dirs(),
            weight_reg: 0.0,
            batch_size: 2,
            seed: 3,
            train: sgd.clone(),
        };
        let x: Vec<f32> = [state(0.3), state(0.7)].concat();
        let mut run =
            ControllerTraining::new(m.clone(), x.clone(), vec![1.0, 0.0], x, vec![1.0, 0.0], cfg)
                .unwrap();
        let ex = |(p, c): &(Vec<u32>, Vec<u32>), s: f32| Stage2Example {
            ids: p.iter().chain(c).copied().collect(),
            split: p.len(),
            state: state(s),
        };
        let kl_weight = 0.7;
        run.start_stage2(
            vec![ex(&harmful, 0.3)],
            vec![ex(&benign, 0.7)],
            vec![ex(&harmful, 0.3)],
            vec![ex(&benign, 0.7)],
            kl_weight,
            sgd,
            &Cancel::new(),
        )
        .unwrap();
        let b2 = [0.3f32, -0.4, 1.1];
        let set = |run: &ControllerTraining, b2: &[f32]| {
            let z = |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu);
            run.set_params(&[
                z(&[kd, H]).unwrap(),
                z(&[H]).unwrap(),
                z(&[H, 3]).unwrap(),
                Tensor::from_slice(b2, 3, &Device::Cpu).unwrap(),
            ])
            .unwrap();
        };
        // The generation path's loss for outputs b2.
        let path_loss = |b2: &[f32]| -> f64 {
            let mut p = constant(0.0, strength);
            p.read_layers = vec![1, 2];
            p.b2 = b2.to_vec();
            let c = ctrl(&m, p);
            let steer = every(&c, 1);
            let mut g = Generation::new(
                m.clone(),
                std::slice::from_ref(&harmful.0),
                Some(&steer),
                params(harmful.1.len()),
            )
            .unwrap()
            .with_forced(vec![harmful.1.clone()], false)
            .unwrap()
            .with_logprobs();
            g.run_all(&Cancel::new()).unwrap();
            let lp = &g.logprobs().unwrap()[0];
            let ce = -lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64;
            let kl = steerlab::generate::forced_kl(
                m.clone(),
                std::slice::from_ref(&benign.0),
                vec![benign.1.clone()],
                Some(&steer),
                &Cancel::new(),
            )
            .unwrap();
            let kl = kl[0].iter().map(|&x| x as f64).sum::<f64>() / kl[0].len() as f64;
            ce + kl_weight * kl
        };
        set(&run, &b2);
        let val = run.stage2_validate(&Cancel::new()).unwrap();
        let loss = val.iter().find(|(k, _)| k == "loss").unwrap().1;
        let want = path_loss(&b2);
        assert!(
            (loss - want).abs() < 1e-4 * (1.0 + want),
            "{family}: training loss {loss} vs generation path {want}"
        );
        // One SGD step with lr 1: b2 moves by -grad.
        run.stage2_step(&Cancel::new()).unwrap();
        let after = run.params().unwrap().b2;
        let eps = 1e-2f32;
        for i in 0..3 {
            let grad = (b2[i] - after[i]) as f64;
            let mut hi = b2;
            hi[i] += eps;
            let mut lo = b2;
            lo[i] -= eps;
            let fd = (path_loss(&hi) - path_loss(&lo)) / (2.0 * eps as f64);
            assert!(
                (fd - grad).abs() < 2e-2 * (1.0 + fd.abs()) + 1e-4,
                "{family} b2[{i}]: fd {fd} vs grad {grad}"
            );
        }
    }
}

#[test]
fn one_controller_on_several_rows_equals_each_row_alone() {
    let (_d, m) = tiny("llama");
    let rows = rows();
    let mut p = reading();
    p.strength = 40.0;
    let c = ctrl(&m, p);
    let batch = run(&m, &rows, Some(&every(&c, rows.len())), 5);
    for (r, row) in rows.iter().enumerate() {
        let alone = run(&m, std::slice::from_ref(row), Some(&every(&c, 1)), 5);
        assert_eq!(alone.0[0], batch.0[r], "row {r}");
        assert!(
            max_diff(&alone.1[0], &batch.1[r]) < 1e-5,
            "row {r}: {:?} vs {:?}",
            alone.1[0],
            batch.1[r]
        );
        let (ga, gb) = (alone.2.unwrap(), batch.2.clone().unwrap());
        assert!(
            max_diff(&ga[0], &gb[r]) < 1e-5,
            "row {r} gates {:?} vs {:?}",
            ga[0],
            gb[r]
        );
    }
}

/// The inference form of the network (one dot product per output, row by row) equals
/// the training form (`controller_logits`, candle ops) within float rounding.
#[test]
fn inference_and_training_forms_of_the_network_agree() {
    use steerlab::intervene::controller::controller_logits;
    let (_d, m) = tiny("llama");
    let p = reading();
    let c = ctrl(&m, p.clone());
    let kd = K * D;
    let n = 4;
    let raw: Vec<f32> = (0..n * kd)
        .map(|i| ((i as f32) * 0.13).cos() * 2.0)
        .collect();
    let got = c
        .outputs(&Tensor::from_vec(raw.clone(), (n, kd), &Device::Cpu).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let x: Vec<f32> = raw
        .chunks(kd)
        .flat_map(|r| {
            r.iter()
                .zip(&p.mean)
                .zip(&p.scale)
                .map(|((v, m), s)| (v - m) / s)
                .collect::<Vec<_>>()
        })
        .collect();
    let t = |v: &[f32], s: &[usize]| Tensor::from_slice(v, s, &Device::Cpu).unwrap();
    let l = LAYERS.len();
    let o = controller_logits(
        &t(&x, &[n, kd]),
        &t(&p.w1, &[kd, H]),
        &t(&p.b1, &[H]),
        &t(&p.w2, &[H, 1 + l]),
        &t(&p.b2, &[1 + l]),
    )
    .unwrap();
    let want = candle_nn::ops::sigmoid(&o)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(max_diff(&got, &want) < 1e-5, "{got:?} vs {want:?}");
    // One row alone gives the same bits as in a batch.
    let one = c.row_outputs(&raw[kd..2 * kd]).unwrap();
    assert_eq!(one, got[(1 + l)..2 * (1 + l)].to_vec());
}

/// A row's outputs have the same bits whatever the batch (sizes 1 to 40, any place), at
/// the default sizes (4 read layers of width 576, hidden 1024).
#[test]
fn a_rows_outputs_do_not_depend_on_its_batch() {
    let (d, k, h, l) = (576, 4, 1024, 15);
    let kd = k * d;
    let dirs: Vec<f32> = (0..l)
        .flat_map(|i| {
            let mut v = vec![0f32; d];
            v[i] = 1.0;
            v
        })
        .collect();
    let wave = |n: usize, a: f32, s: f32| -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * a).sin() * s).collect()
    };
    let p = ControllerParams {
        read_layers: vec![26, 27, 28, 29],
        layers: (7..7 + l).collect(),
        hidden: h,
        mean: wave(kd, 0.11, 0.3),
        scale: vec![1.5; kd],
        w1: wave(kd * h, 0.0137, 0.05),
        b1: wave(h, 0.7, 0.1),
        w2: wave(h * (1 + l), 0.31, 0.1),
        b2: wave(1 + l, 0.9, 0.5),
        directions: dirs,
        strength: 4.0,
    };
    let c = Controller::new(p, 30, d, &Device::Cpu).unwrap();
    let rows: Vec<Vec<f32>> = (0..40)
        .map(|r| wave(kd, 0.05 + r as f32 * 0.001, 40.0))
        .collect();
    let alone: Vec<Vec<f32>> = rows.iter().map(|x| c.row_outputs(x).unwrap()).collect();
    for n in [1usize, 2, 3, 7, 16, 40] {
        let refs: Vec<&[f32]> = rows[40 - n..].iter().map(Vec::as_slice).collect();
        let got = c.rows_outputs(&refs).unwrap();
        for (i, o) in got.iter().enumerate() {
            assert_eq!(o, &alone[40 - n + i], "batch of {n}, row {i}");
        }
    }
}
