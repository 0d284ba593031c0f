//! Unit tests of `losses`.

use super::*;
use candle_core::{Device, Var};

const CPU: Device = Device::Cpu;

/// Deterministic pseudo-random values in [-2, 2).
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
        })
        .collect()
}

/// Check the gradient of `f` at `x0` (shape `dims`, F64) against central differences:
/// `|g − (f(x+h) − f(x−h)) / 2h| <= tol * max(1, |g|)` for every element.
fn check_grad(dims: &[usize], x0: Vec<f64>, f: impl Fn(&Tensor) -> Result<Tensor>) {
    let h = 1e-5;
    let tol = 1e-6;
    let x = Var::from_tensor(&Tensor::from_vec(x0.clone(), dims, &CPU).unwrap()).unwrap();
    let loss = f(x.as_tensor()).unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let eval = |v: Vec<f64>| -> f64 {
        f(&Tensor::from_vec(v, dims, &CPU).unwrap())
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for i in 0..x0.len() {
        let (mut up, mut down) = (x0.clone(), x0.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (eval(up) - eval(down)) / (2.0 * h);
        assert!(
            (g[i] - fd).abs() <= tol * g[i].abs().max(1.0),
            "element {i}: autograd {} vs central difference {fd}",
            g[i]
        );
    }
}

fn u32s(v: &[u32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(v, dims, &CPU).unwrap()
}

/// The value tests' batch. Reference (numpy):
/// ```text
/// def lsm(x): m = x.max(-1, keepdims=True); return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
/// logits = np.array([[[0,0,0,0], np.log([1,2,3,4])], [[1000,0,-1000,0], [2,1,0,-1]]])
/// targets = np.array([[1,3],[1,0]]); mask = np.array([[0,1],[1,1]], float)
/// lp = np.take_along_axis(lsm(logits), targets[..., None], -1)[..., 0]
/// (lp * mask).sum(1)         # [-0.9162907318741551, -1000.4401896985612]
/// -(lp * mask).sum() / mask.sum()   # 333.7854934768118
/// ```
fn ce_batch(dtype: DType) -> (Tensor, Tensor, Tensor) {
    let (l2, l3, l4) = (2f64.ln(), 3f64.ln(), 4f64.ln());
    let logits = Tensor::from_vec(
        vec![
            0.0, 0.0, 0.0, 0.0, 0.0, l2, l3, l4, 1000.0, 0.0, -1000.0, 0.0, 2.0, 1.0, 0.0, -1.0,
        ],
        (2, 2, 4),
        &CPU,
    )
    .unwrap()
    .to_dtype(dtype)
    .unwrap();
    let mask = Tensor::from_vec(vec![0.0, 1.0, 1.0, 1.0], (2, 2), &CPU)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    (logits, u32s(&[1, 3, 1, 0], &[2, 2]), mask)
}

#[test]
fn continuation_ce_and_sequence_logprob_values() {
    let (logits, targets, mask) = ce_batch(DType::F64);
    let seq = sequence_logprob(&logits, &targets, &mask)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!((seq[0] - -0.9162907318741551).abs() < 1e-12, "{seq:?}");
    assert!((seq[1] - -1000.4401896985612).abs() < 1e-9, "{seq:?}");
    let ce = continuation_ce(&logits, &targets, &mask)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((ce - 333.7854934768118).abs() < 1e-9, "{ce}");
    // F32 with logits of ±1000 stays finite (max subtraction).
    let (logits, targets, mask) = ce_batch(DType::F32);
    let ce = continuation_ce(&logits, &targets, &mask)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((ce - 333.785_5).abs() < 1e-3, "{ce}");
}

#[test]
fn continuation_ce_gradient_matches_finite_differences() {
    let dims = [2, 3, 5];
    let targets = u32s(&[0, 4, 2, 1, 1, 3], &[2, 3]);
    let mask = Tensor::from_vec(vec![0.0, 1.0, 1.0, 1.0, 0.0, 1.0], (2, 3), &CPU).unwrap();
    check_grad(&dims, values(30, 1), |x| {
        continuation_ce(x, &targets, &mask)
    });
    // Row sums: differentiate a weighted sum of both rows.
    let w = Tensor::new(&[0.7f64, -1.3], &CPU).unwrap();
    check_grad(&dims, values(30, 2), |x| {
        Ok((sequence_logprob(x, &targets, &mask)? * &w)?.sum_all()?)
    });
}

#[test]
fn continuation_ce_gradient_f32() {
    // F32: central differences with h = 1e-2 agree within 2e-3.
    let targets = u32s(&[2, 0, 1], &[1, 3]);
    let mask = Tensor::new(&[[1f32, 1.0, 0.0]], &CPU).unwrap();
    let x0: Vec<f32> = values(12, 3).iter().map(|&v| v as f32).collect();
    let x = Var::from_tensor(&Tensor::from_vec(x0.clone(), (1, 3, 4), &CPU).unwrap()).unwrap();
    let g = continuation_ce(x.as_tensor(), &targets, &mask)
        .unwrap()
        .backward()
        .unwrap();
    let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
    let g = g.to_vec1::<f32>().unwrap();
    let eval = |v: Vec<f32>| {
        let t = Tensor::from_vec(v, (1, 3, 4), &CPU).unwrap();
        continuation_ce(&t, &targets, &mask)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    for i in 0..12 {
        let (mut up, mut down) = (x0.clone(), x0.clone());
        up[i] += 1e-2;
        down[i] -= 1e-2;
        let fd = (eval(up) - eval(down)) / 2e-2;
        assert!((g[i] - fd).abs() < 2e-3, "element {i}: {} vs {fd}", g[i]);
    }
}

#[test]
fn ce_arguments_are_checked() {
    let (logits, targets, mask) = ce_batch(DType::F64);
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let e = err(continuation_ce(
        &logits,
        &u32s(&[1, 3, 1, 4], &[2, 2]),
        &mask,
    ));
    assert!(
        e.contains(
            "targets holds token id 4 at flat index 3; expected ids below the vocabulary size 4"
        ),
        "{e}"
    );
    let e = err(continuation_ce(&logits, &u32s(&[1, 3], &[1, 2]), &mask));
    assert!(
        e.contains("targets has shape [1, 2]; expected [2, 2]"),
        "{e}"
    );
    let zero = mask.zeros_like().unwrap();
    let e = err(continuation_ce(&logits, &targets, &zero));
    assert!(e.contains("mask selects no position"), "{e}");
    let neg = Tensor::new(&[[0f64, 1.0], [-1.0, 1.0]], &CPU).unwrap();
    let e = err(continuation_ce(&logits, &targets, &neg));
    assert!(e.contains("mask holds -1 at row 1, position 0"), "{e}");
    let e = err(continuation_ce(
        &logits,
        &targets,
        &mask.to_dtype(DType::F32).unwrap(),
    ));
    assert!(e.contains("mask has dtype F32; expected F64"), "{e}");
    let e = err(continuation_ce(
        &logits.flatten_all().unwrap(),
        &targets,
        &mask,
    ));
    assert!(
        e.contains("logits has shape [16]; expected [batch, positions, vocab]"),
        "{e}"
    );
    let ints = targets.to_dtype(DType::I64).unwrap();
    let e = err(continuation_ce(&logits, &ints, &mask));
    assert!(e.contains("targets has dtype I64; expected U32"), "{e}");
}

/// Reference (numpy): `l = [[1,2,3],[0.5,-1,4]]`, good `[2,1]`, bad `[0,2]`:
/// diff `[2, -5]`, `np.mean(np.logaddexp(0, -diff))` = 2.5668216797660452.
#[test]
fn logit_diff_values_and_gradient() {
    let l = Tensor::new(&[[1f64, 2.0, 3.0], [0.5, -1.0, 4.0]], &CPU).unwrap();
    let (good, bad) = (u32s(&[2, 1], &[2]), u32s(&[0, 2], &[2]));
    let d = logit_diff(&l, &good, &bad).unwrap();
    assert_eq!(d.to_vec1::<f64>().unwrap(), [2.0, -5.0]);
    let loss = logit_diff_loss(&d).unwrap().to_scalar::<f64>().unwrap();
    assert!((loss - 2.5668216797660452).abs() < 1e-12, "{loss}");
    // Stable for large differences: softplus(-1000) = 0, softplus(1000) = 1000.
    let big = Tensor::new(&[1000f32, -1000.0], &CPU).unwrap();
    let v = logit_diff_loss(&big).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(v, 500.0);
    check_grad(&[3, 4], values(12, 4), |x| {
        logit_diff_loss(&logit_diff(
            x,
            &u32s(&[0, 3, 2], &[3]),
            &u32s(&[1, 0, 3], &[3]),
        )?)
    });
}

#[test]
fn logit_diff_arguments_are_checked() {
    let l = Tensor::new(&[[1f64, 2.0, 3.0], [0.5, -1.0, 4.0]], &CPU).unwrap();
    let e = logit_diff(&l, &u32s(&[2, 1], &[2]), &u32s(&[0, 1], &[2]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("good and bad are the same token id 1 in row 1"),
        "{e}"
    );
    let e = logit_diff(&l, &u32s(&[3, 1], &[2]), &u32s(&[0, 2], &[2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("good holds token id 3 at flat index 0"), "{e}");
    let e = logit_diff(&l, &u32s(&[2], &[1]), &u32s(&[0, 2], &[2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("good has shape [1]; expected [2]"), "{e}");
    let e = logit_diff_loss(&l).unwrap_err().to_string();
    assert!(e.contains("diff has shape [2, 3]; expected [batch]"), "{e}");
}

/// Reference (numpy, `lsm` as above):
/// ```text
/// ref = lsm(np.array([[0.,1,2],[0,0,-np.inf]])); x = np.array([[2.,1,0],[1,0,0]])
/// p = np.exp(ref); t = np.where(p > 0, p * (ref - lsm(x)), 0.0)
/// t.sum(1).mean()   # 0.7543591492904942
/// ```
#[test]
fn kl_to_reference_values_and_gradient() {
    let raw = Tensor::new(&[[0f64, 1.0, 2.0], [0.0, 0.0, f64::NEG_INFINITY]], &CPU).unwrap();
    let r = log_softmax_rows(&raw).unwrap();
    let x = Tensor::new(&[[2f64, 1.0, 0.0], [1.0, 0.0, 0.0]], &CPU).unwrap();
    let kl = kl_to_reference(&x, &r).unwrap().to_scalar::<f64>().unwrap();
    assert!((kl - 0.7543591492904942).abs() < 1e-12, "{kl}");
    // KL of a distribution to itself is 0.
    let same = kl_to_reference(&raw.clamp(-50.0, 50.0).unwrap(), &r)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(same.abs() < 1e-12, "{same}");
    check_grad(&[2, 3], values(6, 5), |x| kl_to_reference(x, &r));
}

#[test]
fn kl_arguments_are_checked() {
    let x = Tensor::new(&[[2f64, 1.0, 0.0]], &CPU).unwrap();
    let e = kl_to_reference(&x, &x).unwrap_err().to_string();
    assert!(
        e.contains("row 0 of ref_logprobs sums to probability 11.10733"),
        "{e}"
    );
    let nan = Tensor::new(&[[f64::NAN, 0.0, f64::INFINITY]], &CPU).unwrap();
    let e = kl_to_reference(&x, &nan).unwrap_err().to_string();
    assert!(
        e.contains("ref_logprobs holds 1 NaN and 1 +inf values"),
        "{e}"
    );
    let short = Tensor::new(&[[0f64, 0.0]], &CPU).unwrap();
    let e = kl_to_reference(&x, &short).unwrap_err().to_string();
    assert!(
        e.contains("ref_logprobs has shape [1, 2]; expected [1, 3]"),
        "{e}"
    );
}

#[test]
fn l1_value_and_gradient() {
    let t = Tensor::new(&[[1.5f64, -2.0], [0.25, -0.0]], &CPU).unwrap();
    assert_eq!(l1(&t).unwrap().to_scalar::<f64>().unwrap(), 3.75);
    // Away from 0 (|x| is not differentiable there).
    let x0: Vec<f64> = values(6, 6).iter().map(|v| v + v.signum() * 0.1).collect();
    check_grad(&[2, 3], x0, l1);
    let e = l1(&u32s(&[1], &[1])).unwrap_err().to_string();
    assert!(
        e.contains("the tensor has dtype U32; expected F32 (or F64)"),
        "{e}"
    );
}

/// The fused CPU kernels and the composed candle ops (the other devices' path) give
/// the same values and gradients.
#[test]
fn fused_and_composed_paths_agree() {
    for dtype in [DType::F32, DType::F64] {
        let x0 = Tensor::from_vec(values(6 * 7, 8), (6, 7), &CPU)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let grad_of = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
            let x = Var::from_tensor(&x0).unwrap();
            let y = f(x.as_tensor()).unwrap();
            let w = Tensor::from_vec(values(y.elem_count(), 9), y.dims(), &CPU)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let g = (y.clone() * w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let flat = |t: &Tensor| {
                t.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            };
            (flat(&y), flat(g.get(x.as_tensor()).unwrap()))
        };
        let close = |a: (Vec<f64>, Vec<f64>), b: (Vec<f64>, Vec<f64>)| {
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            for (u, v) in a.0.iter().chain(&a.1).zip(b.0.iter().chain(&b.1)) {
                assert!(
                    (u - v).abs() <= tol * u.abs().max(1.0),
                    "{dtype:?}: {u} vs {v}"
                );
            }
        };
        let (rows, targets) = (vec![4u32, 0, 5], vec![6u32, 0, 3]);
        close(
            grad_of(&|x| fused::target_logprobs(x, rows.clone(), targets.clone())),
            grad_of(&|x| composed_target_logprobs(x, rows.clone(), targets.clone())),
        );
        let mut raw = values(6 * 7, 10);
        raw[3] = f64::NEG_INFINITY;
        let raw = Tensor::from_vec(raw, (6, 7), &CPU).unwrap();
        let r = log_softmax_rows(&raw).unwrap().to_dtype(dtype).unwrap();
        close(
            grad_of(&|x| fused::row_kl(x, &r)),
            grad_of(&|x| composed_row_kl(x, &r)),
        );
        let odd = Tensor::new(
            &[
                [f64::NAN, 0.0, f64::INFINITY],
                [f64::NEG_INFINITY, 0.0, 0.5],
            ],
            &CPU,
        )
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
        let (a, b) = (
            fused::ref_summary(&odd).unwrap(),
            composed_ref_summary(&odd).unwrap(),
        );
        assert_eq!((a.0, a.1, b.0, b.1), (1, 1, 1, 1));
        assert!(a.2[0].is_nan() && b.2[0].is_nan());
        assert!((a.2[1] - b.2[1]).abs() < 1e-6 && (a.2[1] - (1.0 + 0.5f64.exp())).abs() < 1e-6);
    }
}
