//! Stage 1's loss pieces: the stable BCE equals the textbook formula (and stays finite at
//! extreme logits), and the gradient of the controller's stage-1 loss in every parameter
//! matches central finite differences (f64).

use candle_core::{DType, Device, Tensor, Var};

use super::bce;
use crate::intervene::controller::controller_logits;

fn t64(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn seq(n: usize, seed: f64, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|i| ((i as f64 + seed) * 0.61).sin() * scale)
        .collect()
}

#[test]
fn bce_is_the_textbook_formula_and_stays_finite() {
    let z = vec![-3.0, -0.5, 0.0, 0.7, 4.0];
    let y = vec![1.0, 0.0, 1.0, 1.0, 0.0];
    let got = bce(&t64(z.clone(), &[5]), &t64(y.clone(), &[5]))
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let want = z
        .iter()
        .zip(&y)
        .map(|(&z, &y)| {
            let p = 1.0 / (1.0 + (-z).exp());
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / 5.0;
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    let big = bce(&t64(vec![1e4, -1e4], &[2]), &t64(vec![0.0, 1.0], &[2]))
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((big - 1e4).abs() < 1e-6, "{big}");
}

/// The stage-1 loss as `ControllerTraining::gate_loss` builds it.
fn loss(x: &Tensor, y: &Tensor, p: &[Tensor], reg: f64) -> Tensor {
    let o = controller_logits(x, &p[0], &p[1], &p[2], &p[3]).unwrap();
    let l = o.dim(1).unwrap() - 1;
    let z = o.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let b = bce(&z, y).unwrap();
    let w = candle_nn::ops::sigmoid(&o.narrow(1, 1, l).unwrap()).unwrap();
    let r = w
        .affine(-1.0, 1.0)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    (b + (r * reg).unwrap()).unwrap()
}

#[test]
fn stage_one_gradient_matches_finite_differences() {
    let (n, kd, h, l) = (5, 6, 4, 3);
    let x = t64(seq(n * kd, 0.3, 1.2), &[n, kd]);
    let y = t64(vec![1.0, 0.0, 1.0, 0.0, 1.0], &[n]);
    let shapes: [&[usize]; 4] = [&[kd, h], &[h], &[h, 1 + l], &[1 + l]];
    let init: Vec<Vec<f64>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| seq(s.iter().product(), 1.0 + i as f64, 0.6))
        .collect();
    let vars: Vec<Var> = init
        .iter()
        .zip(shapes)
        .map(|(v, s)| Var::from_tensor(&t64(v.clone(), s)).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = loss(&x, &y, &ts, 0.3).backward().unwrap();
    let eps = 1e-6;
    for (pi, v) in vars.iter().enumerate() {
        let g = grads
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for i in 0..g.len() {
            let at = |delta: f64| {
                let ps: Vec<Tensor> = init
                    .iter()
                    .zip(shapes)
                    .enumerate()
                    .map(|(j, (p, s))| {
                        let mut p = p.clone();
                        if j == pi {
                            p[i] += delta;
                        }
                        t64(p, s)
                    })
                    .collect();
                loss(&x, &y, &ps, 0.3).to_scalar::<f64>().unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "param {pi}[{i}]: fd {fd} vs grad {}",
                g[i]
            );
        }
    }
    assert_eq!(x.dtype(), DType::F64);
}
