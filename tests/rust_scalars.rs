//! Activation scaling through tiny checkpoints of each family: the training loss at
//! initialisation equals the loss computed by the inference path, its gradient matches
//! finite differences of that inference loss, training flips the answers, and bad data
//! is refused.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use steerlab::cancel::Cancel;
use steerlab::capture::Reduce;
use steerlab::generate::forward_batch;
use steerlab::intervene::{Intervention, Op, Positions};
use steerlab::learn::scalars::{
    ScalarConfig, ScalarExample, ScalarKind, ScalarModule, ScalarTraining,
};
use steerlab::learn::trainer::{OptimizerKind, TrainConfig};
use steerlab::model::{Model, Site};

mod common;
use common::*;

/// Four records of one token length (6): target and foil ids differ per record.
fn records() -> Vec<ScalarExample> {
    vec![
        ScalarExample {
            ids: vec![5, 9, 3, 7, 11, 2],
            target: 4,
            foil: 8,
        },
        ScalarExample {
            ids: vec![4, 6, 30, 31, 2, 9],
            target: 12,
            foil: 3,
        },
        ScalarExample {
            ids: vec![12, 13, 14, 15, 16, 17],
            target: 20,
            foil: 21,
        },
        ScalarExample {
            ids: vec![1, 2, 3, 4, 5, 6],
            target: 7,
            foil: 30,
        },
    ]
}

fn sites() -> Vec<Site> {
    vec![Site::AttnOut(0), Site::MlpOut(1), Site::AttnOut(2)]
}

fn cfg(kind: ScalarKind, train: TrainConfig, sparsity: f64) -> ScalarConfig {
    ScalarConfig {
        kind,
        sites: sites(),
        positions: Positions::All,
        effectiveness: 1.0,
        faithfulness: 0.7,
        sparsity,
        batch_size: 4,
        seed: 0,
        train,
    }
}

fn sgd() -> TrainConfig {
    TrainConfig {
        lr: 1.0,
        max_grad_norm: None,
        optimizer: OptimizerKind::Sgd,
        ..TrainConfig::default()
    }
}

fn log_softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = x.iter().map(|v| (v - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|v| v - lse).collect()
}

/// Last-position logits per record with modules built from `params` (None: unsteered),
/// by the inference path.
fn logits(m: &Model, kind: ScalarKind, params: Option<&[Vec<Tensor>]>) -> Vec<Vec<f64>> {
    logits_at(m, kind, &sites(), params)
}

/// As [`logits`], with the modules at `at` (one parameter set per site).
fn logits_at(
    m: &Model,
    kind: ScalarKind,
    at: &[Site],
    params: Option<&[Vec<Tensor>]>,
) -> Vec<Vec<f64>> {
    let rows: Vec<Vec<u32>> = records().iter().map(|r| r.ids.clone()).collect();
    let steer: Option<Vec<Vec<Intervention>>> = params.map(|ps| {
        assert_eq!(at.len(), ps.len(), "one parameter set per site");
        let row: Vec<Intervention> = at
            .iter()
            .copied()
            .zip(ps)
            .map(|(site, p)| Intervention {
                site,
                positions: Positions::All,
                op: Op::Module(Arc::new(
                    ScalarModule::new(kind, site, p.clone(), 1.0, D).unwrap(),
                )),
            })
            .collect();
        vec![row; rows.len()]
    });
    let (_, lg) = forward_batch(
        m,
        &rows,
        vec![],
        Reduce::Last,
        steer.as_deref(),
        true,
        &Cancel::new(),
    )
    .unwrap();
    let (v, [b, n]) = lg.unwrap();
    (0..b)
        .map(|r| v[r * n..(r + 1) * n].iter().map(|&x| x as f64).collect())
        .collect()
}

/// The training objective (effectiveness + 0.7 KL, no L1) from inference logits.
fn inference_loss(base: &[Vec<f64>], steered: &[Vec<f64>]) -> f64 {
    let recs = records();
    let (mut eff, mut kl) = (0.0, 0.0);
    for ((r, b), s) in recs.iter().zip(base).zip(steered) {
        let ld = s[r.target as usize] - s[r.foil as usize];
        eff += (-ld).max(0.0) + (1.0 + (-ld.abs()).exp()).ln();
        let drop = |x: &[f64]| -> Vec<f64> {
            let mut y = x.to_vec();
            y[r.target as usize] = -1e9;
            y[r.foil as usize] = -1e9;
            log_softmax(&y)
        };
        let (p, q) = (drop(b), drop(s));
        kl += p
            .iter()
            .zip(&q)
            .map(|(p, q)| p.exp() * (p - q))
            .sum::<f64>();
    }
    let n = recs.len() as f64;
    eff / n + 0.7 * kl / n
}

fn zeros(kind: ScalarKind) -> Vec<Vec<f32>> {
    match kind {
        ScalarKind::Scalar => vec![vec![0.0; 6]],
        ScalarKind::Vector => vec![vec![0.0; 6 * D]],
        ScalarKind::Dynamic => vec![vec![0.0; D], vec![0.0]],
    }
}

fn tensors(kind: ScalarKind, flat: &[Vec<f32>]) -> Vec<Tensor> {
    let shapes: Vec<Vec<usize>> = match kind {
        ScalarKind::Scalar => vec![vec![6]],
        ScalarKind::Vector => vec![vec![6, D]],
        ScalarKind::Dynamic => vec![vec![D], vec![1]],
    };
    flat.iter()
        .zip(shapes)
        .map(|(v, s)| Tensor::from_vec(v.clone(), s, &Device::Cpu).unwrap())
        .collect()
}

#[test]
fn the_training_loss_and_its_gradient_are_those_of_the_inference_path() {
    for fam in ["llama", "qwen2", "gemma3_text"] {
        let (_d, m) = tiny(fam);
        let base = logits(&m, ScalarKind::Scalar, None);
        for kind in [ScalarKind::Scalar, ScalarKind::Vector, ScalarKind::Dynamic] {
            let mut run =
                ScalarTraining::new(m.clone(), records(), cfg(kind, sgd(), 0.0), &Cancel::new())
                    .unwrap();
            let rec = run.step(&Cancel::new()).unwrap();
            let extra = |k: &str| rec.extra.iter().find(|(n, _)| n == k).unwrap().1;
            assert!(
                extra("faithfulness").abs() < 1e-6,
                "{fam} {kind:?}: KL at 0 is {}",
                extra("faithfulness")
            );
            let want = inference_loss(&base, &base);
            assert!(
                (rec.loss - want).abs() < 1e-4 * (1.0 + want),
                "{fam} {kind:?}: {} vs {want}",
                rec.loss
            );
            // SGD with lr 1 from zeros: a variable u (parameter = u * k) ends at -dL/du
            // = -k dL/dparam, so the parameter ends at -k^2 dL/dparam.
            let after = run.params(false).unwrap();
            let scales = run.scales().to_vec();
            let eps = 1e-2f32;
            for (si, site_params) in after.iter().enumerate() {
                for (pi, g) in site_params.iter().enumerate() {
                    for i in [0usize, g.len() / 2, g.len() - 1] {
                        let at = |delta: f32| {
                            let ps: Vec<Vec<Tensor>> = (0..sites().len())
                                .map(|s| {
                                    let mut z = zeros(kind);
                                    if s == si {
                                        z[pi][i] += delta;
                                    }
                                    tensors(kind, &z)
                                })
                                .collect();
                            inference_loss(&base, &logits(&m, kind, Some(&ps)))
                        };
                        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                        let grad = -g[i] as f64 / (scales[si][pi] * scales[si][pi]);
                        assert!(
                            (fd - grad).abs() < 2e-2 * (1.0 + fd.abs()) + 1e-4,
                            "{fam} {kind:?} site {si} param {pi}[{i}]: fd {fd} vs grad {grad}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn training_flips_the_answers_and_a_seed_fixes_the_run() {
    let (_d, m) = tiny("llama");
    // The tiny model's weights are random (candle cannot seed its CPU generator): take
    // each record's foil = the unsteered model's top token and target = its runner-up,
    // so every record starts wrong by a margin a few scalars can overturn.
    let base = logits(&m, ScalarKind::Scalar, None);
    let recs: Vec<ScalarExample> = records()
        .into_iter()
        .zip(&base)
        .map(|(mut r, l)| {
            let mut order: Vec<usize> = (0..l.len()).collect();
            order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
            r.foil = order[0] as u32;
            r.target = order[1] as u32;
            r
        })
        .collect();
    let all_sites: Vec<Site> = (0..3)
        .flat_map(|l| [Site::AttnOut(l), Site::MlpOut(l)])
        .collect();
    for kind in [ScalarKind::Scalar, ScalarKind::Vector, ScalarKind::Dynamic] {
        let adam = TrainConfig {
            lr: 0.1,
            max_grad_norm: None,
            ..TrainConfig::default()
        };
        let run = |seed| {
            let mut c = cfg(kind, adam.clone(), 1e-3);
            c.seed = seed;
            c.batch_size = 2;
            c.sites = all_sites.clone();
            let mut t = ScalarTraining::new(m.clone(), recs.clone(), c, &Cancel::new()).unwrap();
            for _ in 0..150 {
                t.step(&Cancel::new()).unwrap();
            }
            (t.history().to_vec(), t.params(false).unwrap())
        };
        let (h, p) = run(3);

        let (h2, p2) = run(3);
        assert_eq!(p, p2, "{kind:?}: a seed fixes the run");
        assert_eq!(h.len(), h2.len());
        let ld = |r: &steerlab::learn::trainer::StepRecord| {
            r.extra.iter().find(|(n, _)| n == "logit_diff").unwrap().1
        };
        // Every record ends on its target.
        let ps: Vec<Vec<Tensor>> = p.iter().map(|s| tensors(kind, s)).collect();
        let after = logits_at(&m, kind, &all_sites, Some(&ps));
        for (r, a) in recs.iter().zip(&after) {
            let diff = a[r.target as usize] - a[r.foil as usize];
            assert!(
                diff > 0.0,
                "{kind:?}: a record still prefers its foil (LD {diff})"
            );
        }
        // The recorded batch means: the first step's batch is measured before any
        // update, the last ones after 149; over the run the mean grows.
        let early: f64 = h[..10].iter().map(ld).sum::<f64>() / 10.0;
        let late: f64 = h[h.len() - 10..].iter().map(ld).sum::<f64>() / 10.0;
        assert!(
            late > early,
            "{kind:?}: batch logit difference {early} -> {late}"
        );
    }
}

#[test]
fn bad_data_is_refused() {
    let (_d, m) = tiny("llama");
    let new = |recs: Vec<ScalarExample>, c: ScalarConfig| {
        ScalarTraining::new(m.clone(), recs, c, &Cancel::new())
            .err()
            .unwrap()
            .to_string()
    };
    let adam = TrainConfig::default();
    let mut uneven = records();
    uneven[1].ids.push(3);
    let e = new(uneven.clone(), cfg(ScalarKind::Scalar, adam.clone(), 0.0));
    assert!(
        e.contains("one token length") && e.contains("[6, 7]") && e.contains("kind='dynamic'"),
        "{e}"
    );
    // The dynamic kind takes any lengths.
    ScalarTraining::new(
        m.clone(),
        uneven,
        cfg(ScalarKind::Dynamic, adam.clone(), 0.0),
        &Cancel::new(),
    )
    .unwrap();
    let mut same = records();
    same[2].foil = same[2].target;
    assert!(new(same, cfg(ScalarKind::Scalar, adam.clone(), 0.0))
        .contains("record 2: target and foil are the same token"));
    assert!(new(vec![], cfg(ScalarKind::Scalar, adam.clone(), 0.0)).contains("no records"));
    let mut far = cfg(ScalarKind::Scalar, adam.clone(), 0.0);
    far.sites = vec![Site::MlpOut(9)];
    assert!(new(records(), far).contains("out of range"));
    let mut twice = cfg(ScalarKind::Scalar, adam.clone(), 0.0);
    twice.sites = vec![Site::MlpOut(1), Site::MlpOut(1)];
    assert!(new(records(), twice).contains("given twice"));
    let mut w = cfg(ScalarKind::Scalar, adam.clone(), 0.0);
    w.faithfulness = f64::NAN;
    assert!(new(records(), w).contains("faithfulness weight is NaN"));
    let mut big = records();
    big[0].target = 999;
    assert!(new(big, cfg(ScalarKind::Scalar, adam.clone(), 0.0))
        .contains("out of range for a vocabulary"));
    let bad_lr = TrainConfig {
        lr: f64::INFINITY,
        ..TrainConfig::default()
    };
    let e = new(records(), cfg(ScalarKind::Scalar, bad_lr, 0.0));
    assert!(e.contains("lr") && e.contains("finite"), "{e}");
    let mut zero = cfg(ScalarKind::Scalar, TrainConfig::default(), 0.0);
    zero.batch_size = 0;
    assert!(new(records(), zero).contains("batch_size"));
    // Cancel before a step leaves the run as it was.
    let mut t = ScalarTraining::new(
        m.clone(),
        records(),
        cfg(ScalarKind::Scalar, adam, 0.0),
        &Cancel::new(),
    )
    .unwrap();
    let c = Cancel::new();
    c.cancel();
    assert!(t.step(&c).is_err());
    assert!(t.history().is_empty());
}
