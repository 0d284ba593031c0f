//! Unit tests of `vectors`.

use super::*;
use ndarray::array;

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

fn random(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut s = seed;
    Array2::from_shape_fn((n, d), |_| lcg(&mut s) as f32)
}

#[test]
fn mean_diff_is_the_mean_of_differences() {
    let pos = array![[1.0f32, 2.0], [3.0, 6.0]];
    let neg = array![[0.0f32, 1.0], [1.0, 1.0]];
    let f = fit(pos.view(), neg.view(), Method::MeanDiff).unwrap();
    assert_eq!(f.direction, vec![1.5, 3.0]);
}

#[test]
fn pca_finds_a_known_axis_with_the_known_sign() {
    // Differences spread along +e0 with a positive mean, small noise elsewhere.
    let n = 40;
    let d = 6;
    let noise = random(n, d, 7);
    let neg = random(n, d, 8);
    let mut pos = neg.clone();
    for i in 0..n {
        let t = 1.0 + 3.0 * (i as f32 / n as f32);
        pos[[i, 0]] += t;
        for j in 0..d {
            pos[[i, j]] += 0.01 * noise[[i, j]];
        }
    }
    for method in [Method::PcaDiff, Method::PcaCenter, Method::Logistic] {
        let f = fit(pos.view(), neg.view(), method).unwrap();
        let u = Array1::from(f.direction.iter().map(|&x| x as f64).collect::<Vec<_>>());
        let cos = u[0] / norm(&u.view());
        let min = if method == Method::Logistic {
            0.9
        } else {
            0.95
        };
        assert!(cos > min, "{method:?}: cos with +e0 {cos}");
        // Same sign for a flipped dataset: the direction follows the labels.
        let g = fit(neg.view(), pos.view(), method).unwrap();
        assert!(
            g.direction[0] < 0.0,
            "{method:?} does not flip with the labels"
        );
    }
}

#[test]
fn top_eigen_matches_jacobi_on_a_full_matrix() {
    let a = random(12, 9, 3).mapv(f64::from);
    let m = a.t().dot(&a);
    let (vals, vecs) = jacobi_eigen(&m);
    let top = (0..9).max_by(|&i, &j| vals[i].total_cmp(&vals[j])).unwrap();
    let (lambda, v) = top_eigen(&m).unwrap();
    assert!((lambda - vals[top]).abs() < 1e-9 * vals[top]);
    let c = v.dot(&vecs.column(top)).abs();
    assert!((c - 1.0).abs() < 1e-9, "|cos| = {c}");
    // Gram route (n < d) agrees with the covariance route.
    let wide = random(5, 30, 4).mapv(f64::from);
    let c1 = top_component(&wide).unwrap();
    let (_, v2) = top_eigen(&wide.t().dot(&wide)).unwrap();
    assert!((c1.vector.dot(&v2).abs() - 1.0).abs() < 1e-9);
}

#[test]
fn logistic_probe_reaches_a_stationary_point() {
    let n = 30;
    let d = 50; // wider than the data, as at real layers
    let mut pos = random(n, d, 11).mapv(f64::from);
    let neg = random(n, d, 12).mapv(f64::from);
    pos.column_mut(3).mapv_inplace(|x| x + 0.8);
    let c = 0.5;
    let probe = logistic_probe(&pos, &neg, c).unwrap();
    // Recompute the gradient of the objective in the probe's scaled coordinates.
    let x_raw = ndarray::concatenate(Axis(0), &[pos.view(), neg.view()]).unwrap();
    let mu = mean_rows(&x_raw);
    let xc = &x_raw - &mu;
    let rms = (xc.iter().map(|v| v * v).sum::<f64>() / (2 * n * d) as f64).sqrt();
    let w = &probe.weights * rms; // scaled-space weights
    let b = probe.bias + probe.weights.dot(&mu);
    let xs = xc / rms;
    let mut g = &w / c;
    let mut gb = 0.0;
    for i in 0..2 * n {
        let y = if i < n { 1.0 } else { -1.0 };
        let z = xs.row(i).dot(&w) + b;
        let r = -y * (1.0 - sigmoid(y * z));
        g.scaled_add(r, &xs.row(i));
        gb += r;
    }
    let gnorm = (g.dot(&g) + gb * gb).sqrt();
    assert!(gnorm < 1e-6, "gradient norm at the solution {gnorm}");
    assert!(probe.accuracy > 0.8);
}

#[test]
fn bad_inputs_are_errors() {
    let empty = Array2::<f32>::zeros((0, 4));
    let one = Array2::<f32>::ones((1, 4));
    let e = fit(empty.view(), empty.view(), Method::MeanDiff).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = fit(one.view(), one.view(), Method::PcaDiff).unwrap_err();
    assert!(e.to_string().contains("at least 2"), "{e}");
    let same = random(4, 4, 1);
    let e = fit(same.view(), same.view(), Method::MeanDiff).unwrap_err();
    assert!(e.to_string().contains("identical means"), "{e}");
    let mut nan = random(4, 4, 2);
    nan[[2, 1]] = f32::NAN;
    let e = fit(nan.view(), same.view(), Method::MeanDiff).unwrap_err();
    assert!(e.to_string().contains("row 2, column 1"), "{e}");
    let wide = random(4, 5, 3);
    let e = fit(wide.view(), same.view(), Method::MeanDiff).unwrap_err();
    assert!(e.to_string().contains("pair up"), "{e}");
    let e = mean_centring(same.view(), wide.view()).unwrap_err();
    assert!(e.to_string().contains("width"), "{e}");
    assert!(Method::parse("svd").is_err());
}
