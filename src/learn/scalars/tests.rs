//! The three modules on a padded batch: identity at zero parameters and at beta 0,
//! what each computes, finite-difference gradients (f64) in h and in the parameters,
//! and the checks.

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::model::BatchLayout;

const D: usize = 5;
const P: usize = 4;

fn layout() -> BatchLayout {
    // Row 1 is padded by one column; column 4 of row 0 is a generated token (pos 4 >= P).
    BatchLayout::new(vec![4, 3])
}

fn ctx(l: &BatchLayout) -> StepCtx<'_> {
    StepCtx {
        layout: l,
        start: 0,
        t: 4,
        mode: Mode::Gradient,
    }
}

fn seq(n: usize, seed: f64, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|i| ((i as f64 + seed) * 0.73).sin() * scale)
        .collect()
}

fn t64(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn params(kind: ScalarKind) -> Vec<Tensor> {
    match kind {
        ScalarKind::Scalar => vec![t64(seq(P, 1.0, 0.8), &[P])],
        ScalarKind::Vector => vec![t64(seq(P * D, 2.0, 0.5), &[P, D])],
        ScalarKind::Dynamic => vec![t64(seq(D, 3.0, 0.3), &[D]), t64(vec![0.2], &[1])],
    }
}

fn module(kind: ScalarKind, params: Vec<Tensor>, beta: f64) -> ScalarModule {
    ScalarModule::new(kind, Site::AttnOut(0), params, beta, D).unwrap()
}

fn h0() -> Tensor {
    t64(seq(2 * 4 * D, 0.5, 1.5), &[2, 4, D])
}

fn mask() -> Tensor {
    // Row 0: all four columns; row 1: its three real columns but not the last.
    t64(vec![1., 1., 1., 1., 0., 1., 1., 0.], &[2, 4, 1])
}

const KINDS: [ScalarKind; 3] = [ScalarKind::Scalar, ScalarKind::Vector, ScalarKind::Dynamic];

#[test]
fn zero_parameters_and_zero_beta_are_exactly_the_identity() {
    let l = layout();
    let h = h0();
    let hv = h.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for kind in KINDS {
        let zeros: Vec<Tensor> = params(kind)
            .iter()
            .map(|p| p.zeros_like().unwrap())
            .collect();
        for m in [module(kind, zeros, 1.0), module(kind, params(kind), 0.0)] {
            let out = m.apply(&h, &mask(), &ctx(&l)).unwrap();
            assert_eq!(
                out.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                hv,
                "{kind:?}"
            );
        }
    }
}

#[test]
fn each_module_computes_its_formula() {
    let l = layout();
    let h = h0();
    let hv = h.to_vec3::<f64>().unwrap();
    let m = mask().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let beta = -0.7;
    for kind in KINDS {
        let ps = params(kind);
        let out = module(kind, ps.clone(), beta)
            .apply(&h, &mask(), &ctx(&l))
            .unwrap()
            .to_vec3::<f64>()
            .unwrap();
        for r in 0..2 {
            for j in 0..4 {
                let pos = ctx(&l).position(r, j);
                let hit = m[r * 4 + j] > 0.0;
                for k in 0..D {
                    let x = hv[r][j][k];
                    let want = match (kind, pos) {
                        _ if !hit => x,
                        (ScalarKind::Scalar, Some(p)) if p < P => {
                            let a = ps[0].to_vec1::<f64>().unwrap()[p];
                            x * (1.0 + beta * a)
                        }
                        (ScalarKind::Vector, Some(p)) if p < P => {
                            x + beta * ps[0].to_vec2::<f64>().unwrap()[p][k]
                        }
                        (ScalarKind::Dynamic, Some(_)) => {
                            let w = ps[0].to_vec1::<f64>().unwrap();
                            let b = ps[1].to_vec1::<f64>().unwrap()[0];
                            let a: f64 =
                                hv[r][j].iter().zip(&w).map(|(h, w)| h * w).sum::<f64>() + b;
                            x * (1.0 + beta * a)
                        }
                        _ => x,
                    };
                    assert!(
                        (out[r][j][k] - want).abs() < 1e-12,
                        "{kind:?} row {r} col {j} k {k}: {} vs {want}",
                        out[r][j][k]
                    );
                }
            }
        }
    }
}

/// Central finite differences of L = sum(module(h) * R) in h and in every parameter.
#[test]
fn gradients_match_finite_differences() {
    let l = layout();
    let r = t64(seq(2 * 4 * D, 7.0, 1.0), &[2, 4, D]);
    let eps = 1e-6;
    for kind in KINDS {
        let loss = |ps: &[Tensor], h: &Tensor| -> Tensor {
            let m = ScalarModule {
                kind,
                site: Site::MlpOut(0),
                params: ps.to_vec(),
                beta: 1.3,
            };
            (m.apply(h, &mask(), &ctx(&l)).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let ps0 = params(kind);
        let vars: Vec<Var> = ps0.iter().map(|p| Var::from_tensor(p).unwrap()).collect();
        let hv = Var::from_tensor(&h0()).unwrap();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = loss(&tensors, hv.as_tensor()).backward().unwrap();
        // Parameters.
        for (pi, p) in ps0.iter().enumerate() {
            let g = grads
                .get(vars[pi].as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = p.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for i in 0..base.len() {
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    let mut ps = ps0.clone();
                    ps[pi] = t64(v, p.dims());
                    loss(&ps, &h0()).to_scalar::<f64>().unwrap()
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                assert!(
                    (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{kind:?} param {pi}[{i}]: fd {fd} vs {}",
                    g[i]
                );
            }
        }
        // The activation.
        let g = grads
            .get(hv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = h0().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..base.len() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                loss(&ps0, &t64(v, &[2, 4, D])).to_scalar::<f64>().unwrap()
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{kind:?} dh[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
    }
}

#[test]
fn static_modules_refuse_another_layout_and_every_module_another_width() {
    let f32p = |kind: ScalarKind| -> Vec<Tensor> {
        params(kind)
            .iter()
            .map(|p| p.to_dtype(DType::F32).unwrap())
            .collect()
    };
    for kind in [ScalarKind::Scalar, ScalarKind::Vector] {
        let m = module(kind, f32p(kind), 1.0);
        assert_eq!(m.layout(), Some(P));
        m.check(0, P, D).unwrap();
        let e = m.check(2, P + 1, D).unwrap_err().to_string();
        assert!(
            e.contains("row 2") && e.contains("4 tokens") && e.contains("5 tokens"),
            "{e}"
        );
        assert!(
            e.contains("kind='dynamic'") && e.contains("DynScalar"),
            "{e}"
        );
    }
    let dynm = module(ScalarKind::Dynamic, f32p(ScalarKind::Dynamic), 1.0);
    assert_eq!(dynm.layout(), None);
    dynm.check(0, 17, D).unwrap();
    let e = dynm.check(0, 17, D + 1).unwrap_err().to_string();
    assert!(e.contains("width 5") && e.contains("another model"), "{e}");
    // Construction checks shapes, widths and finiteness.
    let bad = ScalarModule::new(
        ScalarKind::Vector,
        Site::AttnOut(1),
        f32p(ScalarKind::Vector),
        1.0,
        D + 2,
    );
    assert!(bad.err().unwrap().to_string().contains("expected v [P, 7]"));
    let nan = Tensor::new(&[0.0f32, f32::NAN], &Device::Cpu).unwrap();
    let e = ScalarModule::new(ScalarKind::Scalar, Site::AttnOut(1), vec![nan], 1.0, D)
        .err()
        .unwrap();
    assert!(e.to_string().contains("non-finite"), "{e}");
    let e = ScalarModule::new(
        ScalarKind::Scalar,
        Site::AttnOut(1),
        f32p(ScalarKind::Scalar),
        f64::NAN,
        D,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("beta"), "{e}");
    assert!(ScalarKind::parse("scalars")
        .unwrap_err()
        .to_string()
        .contains("'dynamic'"));
}

#[test]
fn the_l1_pseudo_gradient_keeps_zero_when_the_loss_pulls_less_than_lambda() {
    let x = Tensor::new(&[0.0f64, 0.0, 0.0, -2.0, 3.0], &Device::Cpu).unwrap();
    let g = Tensor::new(&[0.05f64, -0.3, 0.2, 0.5, -0.5], &Device::Cpu).unwrap();
    let pg = l1_pseudo_gradient(&x, &g, 0.1)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let want = [0.0, -0.2, 0.1, 0.4, -0.4];
    for (a, b) in pg.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{pg:?} vs {want:?}");
    }
}
