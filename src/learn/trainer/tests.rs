//! Unit tests of `trainer`.

use super::*;
use crate::learn::batches::Batches;
use candle_core::Device;

fn var(v: &[f32]) -> Var {
    Var::new(v, &Device::Cpu).unwrap()
}

fn values(v: &Var) -> Vec<f32> {
    v.as_tensor().to_vec1::<f32>().unwrap()
}

/// sum((x − target)^2)
fn quadratic(x: &Var, target: &[f32]) -> Result<Tensor> {
    let t = Tensor::new(target, &Device::Cpu)?;
    Ok(x.as_tensor().sub(&t)?.sqr()?.sum_all()?)
}

#[test]
fn adamw_converges_on_a_quadratic() {
    let x = var(&[0.0, 0.0, 0.0]);
    let cfg = TrainConfig {
        lr: 0.1,
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(vec![("x".into(), x.clone())], cfg).unwrap();
    let target = [1.0, -2.0, 3.0];
    for _ in 0..300 {
        tr.step(|| quadratic(&x, &target)).unwrap();
    }
    let got = values(&x);
    for (g, t) in got.iter().zip(target) {
        assert!((g - t).abs() < 1e-2, "{got:?}");
    }
    let h = tr.history();
    assert_eq!(h.len(), 300);
    assert_eq!(h[0].loss, 14.0);
    // First gradient 2(x − t) = [-2, 4, -6]: norm sqrt(56).
    assert!((h[0].grad_norm - 56f64.sqrt()).abs() < 1e-6);
    assert!(h[299].loss < 1e-3, "{}", h[299].loss);
    assert_eq!(tr.best().unwrap().0, 299);
}

/// Least squares on 10 examples, batches of 3: x·a_i ≈ b_i.
fn run_seeded(seed: u64) -> Vec<StepRecord> {
    let a: Vec<f32> = (0..20).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
    let b: Vec<f32> = (0..10).map(|i| (i as f32).sin()).collect();
    let x = var(&[0.5, -0.5]);
    let mut tr = Trainer::new(vec![("x".into(), x.clone())], TrainConfig::default()).unwrap();
    let batches = Batches::new(10, 3, seed).unwrap();
    for step in 0..12 {
        let idx = batches.batch(step);
        tr.step_with(|| {
            let rows: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            let rows = Tensor::new(rows.as_slice(), &Device::Cpu)?;
            let am = Tensor::from_slice(&a, (10, 2), &Device::Cpu)?.index_select(&rows, 0)?;
            let bm = Tensor::from_slice(&b, 10, &Device::Cpu)?.index_select(&rows, 0)?;
            let pred = am.matmul(&x.as_tensor().unsqueeze(1)?)?.squeeze(1)?;
            let loss = pred.sub(&bm)?.sqr()?.mean_all()?;
            Ok((loss, vec![("first".into(), idx[0] as f64)]))
        })
        .unwrap();
    }
    tr.history().to_vec()
}

#[test]
fn same_seed_same_history_bit_for_bit() {
    let (h1, h2) = (run_seeded(7), run_seeded(7));
    let bits = |h: &[StepRecord]| -> Vec<(u64, u64, u64)> {
        h.iter()
            .map(|r| {
                (
                    r.loss.to_bits(),
                    r.grad_norm.to_bits(),
                    r.extra[0].1.to_bits(),
                )
            })
            .collect()
    };
    assert_eq!(bits(&h1), bits(&h2));
    assert_ne!(bits(&h1), bits(&run_seeded(8)));
}

#[test]
fn clipping_bounds_the_applied_update() {
    // SGD: the update is lr · clipped gradient. Gradient of 100·sum(x) is [100; 3],
    // norm 100·sqrt(3); clipped to 0.5, the step moves x by 0.5 (lr 1).
    let x = var(&[0.0, 0.0, 0.0]);
    let cfg = TrainConfig {
        lr: 1.0,
        max_grad_norm: Some(0.5),
        optimizer: OptimizerKind::Sgd,
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(vec![("x".into(), x.clone())], cfg).unwrap();
    let rec = tr.step(|| Ok((x.as_tensor().sum_all()? * 100.0)?)).unwrap();
    assert!((rec.grad_norm - 100.0 * 3f64.sqrt()).abs() < 1e-4);
    let moved: f32 = values(&x).iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(moved <= 0.5 && moved > 0.5 - 1e-5, "{moved}");
    // Without clipping the same step moves it by 100·sqrt(3).
    let y = var(&[0.0, 0.0, 0.0]);
    let cfg = TrainConfig {
        lr: 1.0,
        max_grad_norm: None,
        optimizer: OptimizerKind::Sgd,
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(vec![("y".into(), y.clone())], cfg).unwrap();
    tr.step(|| Ok((y.as_tensor().sum_all()? * 100.0)?)).unwrap();
    assert_eq!(values(&y), [-100.0; 3]);
}

#[test]
fn non_finite_loss_or_gradient_is_refused_without_an_update() {
    let x = var(&[0.0, 1.0]);
    let mut tr = Trainer::new(vec![("x".into(), x.clone())], TrainConfig::default()).unwrap();
    let e = tr
        .step(|| Ok((x.as_tensor().sum_all()? * f64::NAN)?))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
    assert!(
        e.to_string()
            .contains("training step 0: the loss is NaN; the parameters were not updated"),
        "{e}"
    );
    // sqrt at 0: finite loss, infinite gradient.
    let e = tr
        .step(|| Ok(x.as_tensor().sqrt()?.sum_all()?))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the gradient of parameter 'x' holds NaN or inf (loss 1)"),
        "{e}"
    );
    assert_eq!(values(&x), [0.0, 1.0]);
    assert!(tr.history().is_empty());
    assert!(tr.best().is_none());
    // A loss that is not a scalar, or ignores a parameter.
    let e = tr
        .step(|| Ok(x.as_tensor().clone()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the loss has shape [2]; expected a scalar"),
        "{e}"
    );
    let z = var(&[1.0]);
    let mut tr = Trainer::new(
        vec![("x".into(), x.clone()), ("z".into(), z)],
        TrainConfig::default(),
    )
    .unwrap();
    let e = tr
        .step(|| Ok(x.as_tensor().sum_all()?))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("parameter 'z' got no gradient: the loss does not depend on it"),
        "{e}"
    );
}

#[test]
fn cancel_stops_and_keeps_the_best_parameters() {
    // SGD with lr 1.5 on x^2 overshoots: x ← −2x, so the loss grows every step and the
    // best parameters are the initial ones.
    let x = var(&[1.0]);
    let cancel = Cancel::new();
    let cfg = TrainConfig {
        lr: 1.5,
        max_grad_norm: None,
        optimizer: OptimizerKind::Sgd,
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(vec![("x".into(), x.clone())], cfg)
        .unwrap()
        .with_cancel(cancel.clone());
    let mut result = Ok(());
    for step in 0..10 {
        if step == 3 {
            cancel.cancel();
        }
        match tr.step(|| Ok(x.as_tensor().sqr()?.sum_all()?)) {
            Ok(_) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    assert!(matches!(result, Err(Error::Interrupted)));
    let losses: Vec<f64> = tr.history().iter().map(|r| r.loss).collect();
    assert_eq!(losses, [1.0, 4.0, 16.0]);
    assert_eq!(values(&x), [-8.0]);
    assert_eq!(tr.best(), Some((0, 1.0)));
    let best = tr.best_params().unwrap();
    assert_eq!(best[0].0, "x");
    assert_eq!(best[0].1.to_vec1::<f32>().unwrap(), [1.0]);
    tr.restore_best().unwrap();
    assert_eq!(values(&x), [1.0]);

    // Cancelled while the loss was computed: that step is discarded.
    let y = var(&[1.0]);
    let cancel = Cancel::new();
    let mut tr = Trainer::new(vec![("y".into(), y.clone())], TrainConfig::default())
        .unwrap()
        .with_cancel(cancel.clone());
    let e = tr.step(|| {
        cancel.cancel();
        Ok(y.as_tensor().sqr()?.sum_all()?)
    });
    assert!(matches!(e, Err(Error::Interrupted)));
    assert!(tr.history().is_empty());
    assert_eq!(values(&y), [1.0]);
}

#[test]
fn bad_configs_and_params_are_refused() {
    let x = || vec![("x".to_string(), var(&[1.0]))];
    let err = |cfg: TrainConfig| Trainer::new(x(), cfg).unwrap_err().to_string();
    let d = TrainConfig::default();
    assert_eq!(
        err(TrainConfig {
            lr: 0.0,
            ..d.clone()
        }),
        "lr is 0; expected a finite number > 0"
    );
    assert_eq!(
        err(TrainConfig {
            beta2: 1.0,
            ..d.clone()
        }),
        "beta2 is 1; expected a number in [0, 1)"
    );
    assert_eq!(
        err(TrainConfig {
            max_grad_norm: Some(f64::NAN),
            ..d.clone()
        }),
        "max_grad_norm is NaN; expected a finite number > 0 (or None to not clip)"
    );
    assert_eq!(
        err(TrainConfig { weight_decay: 0.1, optimizer: OptimizerKind::Sgd, ..d.clone() }),
        "weight_decay is 0.1; expected 0 with the SGD optimizer (candle-nn's SGD has no weight decay)"
    );
    let e = Trainer::new(vec![], d.clone()).unwrap_err().to_string();
    assert!(e.contains("params is empty"), "{e}");
    let twice = vec![
        ("a".to_string(), var(&[1.0])),
        ("a".to_string(), var(&[2.0])),
    ];
    let e = Trainer::new(twice, d.clone()).unwrap_err().to_string();
    assert!(e.contains("parameter name 'a' appears twice"), "{e}");
    let nan = vec![("a".to_string(), var(&[f32::NAN]))];
    let e = Trainer::new(nan, d.clone()).unwrap_err().to_string();
    assert!(e.contains("parameter 'a' holds NaN or inf"), "{e}");
    let mut tr = Trainer::new(x(), d).unwrap();
    assert!(tr.set_lr(-1.0).is_err());
    tr.set_lr(0.5).unwrap();
    assert_eq!(tr.config().lr, 0.5);
}

#[test]
fn trainer_can_move_to_a_worker_thread() {
    // The bindings run steps with the GIL released, on another thread.
    fn send<T: Send>() {}
    send::<Trainer>();
    send::<Batches>();
}

#[test]
fn varmap_params_are_ordered_by_name() {
    let map = VarMap::new();
    for name in ["b", "a", "c"] {
        map.data()
            .lock()
            .unwrap()
            .insert(name.to_string(), var(&[1.0]));
    }
    let tr = Trainer::from_varmap(&map, TrainConfig::default()).unwrap();
    let names: Vec<&str> = tr.params().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
}
