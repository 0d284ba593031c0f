//! Steering-vector maths: directions from contrastive activations and from a target set
//! against a background corpus.
//!
//! Every function takes activations as `[n, d_model]` f32 views (one row per text, read at
//! one layer), accumulates in f64 and returns an f32 direction of width `d_model`.
//!
//! - `mean_diff`: CAA / DiffMean (Rimsky et al. 2024; Braun et al. 2025):
//!   `s = mean_i (pos_i - neg_i)`.
//! - `pca_diff`: first principal component of the per-pair differences (centred, as
//!   repeng's `pca_diff`); `pca_center`: first principal component of the activations
//!   after each pair is centred on its midpoint (= uncentred PCA of the differences).
//! - `logistic`: the weight vector of an L2-regularised logistic-regression probe that
//!   separates positives from negatives, fitted by truncated Newton (conjugate gradient).
//! - `mean_centring` (Jorgensen et al. 2023): `mean(target) - mean(background)`.
//!
//! PCA and logistic directions have no natural length. They are returned with the
//! convention of the mean difference: unit direction `u` (sign chosen so positives
//! project above negatives) times `(mu+ - mu-) . u`, so coefficient 1 moves the mean
//! negative activation onto the mean positive one along `u`, whatever the method.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::error::{Error, Result};

/// How to turn contrastive activations into a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    MeanDiff,
    PcaDiff,
    PcaCenter,
    Logistic,
}

impl Method {
    pub const NAMES: [&'static str; 4] = ["mean_diff", "pca_diff", "pca_center", "logistic"];

    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "mean_diff" => Ok(Method::MeanDiff),
            "pca_diff" => Ok(Method::PcaDiff),
            "pca_center" => Ok(Method::PcaCenter),
            "logistic" => Ok(Method::Logistic),
            other => Err(Error::invalid(format!(
                "unknown method {other:?}; expected one of {}",
                Method::NAMES.join(", ")
            ))),
        }
    }
}

/// A fitted direction plus what the method knows about its fit.
#[derive(Debug, Clone)]
pub struct Fit {
    /// The steering direction, `d_model` floats (see the module docs for its length).
    pub direction: Vec<f32>,
    /// PCA: share of the variance the first component explains. Logistic: training
    /// accuracy. Mean difference: None.
    pub score: Option<f64>,
}

/// Check one activation matrix: at least `min_rows` rows, width `d`, all finite.
pub(crate) fn check_acts(a: &ArrayView2<f32>, what: &str, min_rows: usize) -> Result<()> {
    let (n, d) = a.dim();
    if n < min_rows {
        return Err(Error::invalid(if n == 0 {
            format!("{what} is empty; at least {min_rows} row(s) are needed")
        } else {
            format!("{what} has {n} row(s); at least {min_rows} are needed")
        }));
    }
    if d == 0 {
        return Err(Error::shape(format!("{what} has width 0")));
    }
    if let Some((i, _)) = a.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "{what} contains a NaN or inf value at row {}, column {}; activations must be finite",
            i.0, i.1
        )));
    }
    Ok(())
}

pub(crate) fn check_pairs(pos: &ArrayView2<f32>, neg: &ArrayView2<f32>, min: usize) -> Result<()> {
    check_acts(pos, "the positive activations", min)?;
    check_acts(neg, "the negative activations", min)?;
    if pos.dim() != neg.dim() {
        return Err(Error::shape(format!(
            "positive and negative activations must pair up row by row: got shapes {:?} and {:?}",
            pos.dim(),
            neg.dim()
        )));
    }
    Ok(())
}

pub(crate) fn to_f64(a: &ArrayView2<f32>) -> Array2<f64> {
    a.mapv(f64::from)
}

pub(crate) fn mean_rows(a: &Array2<f64>) -> Array1<f64> {
    let n = a.nrows().max(1) as f64;
    a.sum_axis(Axis(0)) / n
}

pub(crate) fn norm(v: &ArrayView1<f64>) -> f64 {
    v.dot(v).sqrt()
}

fn to_f32(v: &Array1<f64>) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Fit a direction that points from negatives to positives.
///
/// `pos` and `neg` pair up row by row (row i of each comes from the same record).
pub fn fit(pos: ArrayView2<f32>, neg: ArrayView2<f32>, method: Method) -> Result<Fit> {
    let min = match method {
        Method::MeanDiff => 1,
        _ => 2,
    };
    check_pairs(&pos, &neg, min)?;
    let p = to_f64(&pos);
    let q = to_f64(&neg);
    let mean_diff = mean_rows(&p) - mean_rows(&q); // [d]
    if norm(&mean_diff.view()) == 0.0 && method != Method::Logistic {
        return Err(Error::invalid(
            "positive and negative activations have identical means: there is no direction \
             to find (are the two sides of every pair the same text?)",
        ));
    }
    match method {
        Method::MeanDiff => Ok(Fit {
            direction: to_f32(&mean_diff),
            score: None,
        }),
        Method::PcaDiff | Method::PcaCenter => {
            let diffs = &p - &q; // [n, d]
            let data = if method == Method::PcaDiff {
                let mu = mean_rows(&diffs);
                &diffs - &mu
            } else {
                // Pair midpoints removed: rows (p_i - m_i) and (q_i - m_i) = +-diff_i / 2.
                // Their principal axes are those of the uncentred differences.
                diffs.mapv(|x| 0.5 * x)
            };
            let pc = top_component(&data)?;
            let u = orient(pc.vector, &mean_diff)?;
            Ok(Fit {
                direction: to_f32(&scale_like_mean_diff(u, &mean_diff)),
                score: Some(pc.explained),
            })
        }
        Method::Logistic => {
            let probe = logistic_probe(&p, &q, 1.0)?;
            let w_norm = norm(&probe.weights.view());
            if w_norm == 0.0 {
                return Err(Error::invalid(
                    "the logistic probe found no direction (all weights are zero)",
                ));
            }
            let u = orient(probe.weights / w_norm, &mean_diff)?;
            Ok(Fit {
                direction: to_f32(&scale_like_mean_diff(u, &mean_diff)),
                score: Some(probe.accuracy),
            })
        }
    }
}

/// Mean-centring (Jorgensen et al. 2023): `mean(target) - mean(background)`.
pub fn mean_centring(target: ArrayView2<f32>, background: ArrayView2<f32>) -> Result<Vec<f32>> {
    check_acts(&target, "the target activations", 1)?;
    check_acts(&background, "the background activations", 1)?;
    if target.ncols() != background.ncols() {
        return Err(Error::shape(format!(
            "target activations have width {} but background activations have width {}",
            target.ncols(),
            background.ncols()
        )));
    }
    let v = mean_rows(&to_f64(&target)) - mean_rows(&to_f64(&background));
    Ok(to_f32(&v))
}

/// Flip `u` so that the mean difference projects positively on it.
fn orient(u: Array1<f64>, mean_diff: &Array1<f64>) -> Result<Array1<f64>> {
    let s = u.dot(mean_diff);
    if !s.is_finite() {
        return Err(Error::invalid("the fitted direction is not finite"));
    }
    Ok(if s < 0.0 { -u } else { u })
}

/// `u * ((mu+ - mu-) . u)`: the mean difference's component along unit `u`.
fn scale_like_mean_diff(u: Array1<f64>, mean_diff: &Array1<f64>) -> Array1<f64> {
    let k = u.dot(mean_diff);
    u * k
}

/// The first principal axis of the rows of `a` (not centred here) and its share of
/// the total sum of squares.
pub struct Component {
    pub vector: Array1<f64>,
    pub explained: f64,
}

/// Top right-singular vector of `a` [n, d] by subspace iteration on the smaller of
/// `a aᵀ` [n, n] and `aᵀ a` [d, d], with Rayleigh-Ritz on a block of up to 8 vectors.
pub fn top_component(a: &Array2<f64>) -> Result<Component> {
    let (n, d) = a.dim();
    let total: f64 = a.iter().map(|x| x * x).sum();
    if total == 0.0 || !total.is_finite() {
        return Err(Error::invalid(
            "the data for PCA has no variance (all rows are identical after centring)",
        ));
    }
    let gram_rows = n <= d;
    let m = if gram_rows {
        a.dot(&a.t()) // [n, n]
    } else {
        a.t().dot(a) // [d, d]
    };
    let (lambda, e) = top_eigen(&m)?;
    let vector = if gram_rows {
        let v = a.t().dot(&e); // [d]
        let nv = norm(&v.view());
        if nv == 0.0 {
            return Err(Error::invalid("PCA found a zero principal axis"));
        }
        v / nv
    } else {
        e
    };
    Ok(Component {
        vector,
        explained: (lambda / total).clamp(0.0, 1.0),
    })
}

/// Largest eigenvalue and its unit eigenvector of a symmetric positive semi-definite
/// matrix, by orthogonal (subspace) iteration with a Ritz step.
pub fn top_eigen(m: &Array2<f64>) -> Result<(f64, Array1<f64>)> {
    let p = m.nrows();
    if p == 0 || m.ncols() != p {
        return Err(Error::shape("top_eigen needs a non-empty square matrix"));
    }
    if p == 1 {
        return Ok((m[[0, 0]], Array1::from_elem(1, 1.0)));
    }
    let k = p.min(8);
    // Deterministic start: columns of the matrix with the largest norms, plus a ramp so
    // the block never starts rank-deficient.
    let mut q = Array2::<f64>::zeros((p, k));
    let mut order: Vec<usize> = (0..p).collect();
    let col_norm = |j: usize| m.column(j).dot(&m.column(j));
    order.sort_by(|&i, &j| col_norm(j).total_cmp(&col_norm(i)));
    for (c, &j) in order.iter().take(k).enumerate() {
        for r in 0..p {
            q[[r, c]] = m[[r, j]] + 1e-3 * (((r * 7 + c * 13) % 17) as f64 - 8.0);
        }
    }
    orthonormalise(&mut q);
    let scale = m
        .iter()
        .map(|x| x.abs())
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let mut best = (0.0, q.column(0).to_owned());
    for _ in 0..1000 {
        let z = m.dot(&q); // [p, k]
        let small = q.t().dot(&z); // [k, k] Rayleigh quotient
        let (vals, vecs) = jacobi_eigen(&small);
        let top = (0..k)
            .max_by(|&i, &j| vals[i].total_cmp(&vals[j]))
            .unwrap_or(0);
        let ritz = q.dot(&vecs.column(top)); // [p]
        let lambda = vals[top];
        let resid = &m.dot(&ritz) - &(&ritz * lambda);
        best = (lambda, ritz);
        if norm(&resid.view()) <= 1e-10 * scale * (p as f64).sqrt() {
            break;
        }
        q = z.dot(&vecs);
        orthonormalise(&mut q);
    }
    let (lambda, v) = best;
    let nv = norm(&v.view());
    if nv.is_nan() || nv <= 0.0 || !lambda.is_finite() {
        return Err(Error::invalid("eigen-decomposition did not converge"));
    }
    Ok((lambda, v / nv))
}

/// Modified Gram-Schmidt on the columns; a column that collapses is replaced by a unit
/// vector orthogonal to the ones before it.
fn orthonormalise(q: &mut Array2<f64>) {
    let (p, k) = q.dim();
    for c in 0..k {
        for _attempt in 0..2 {
            for prev in 0..c {
                let proj = q.column(prev).dot(&q.column(c));
                let pc = q.column(prev).to_owned();
                q.column_mut(c).scaled_add(-proj, &pc);
            }
        }
        let n = norm(&q.column(c));
        if n > 1e-300 {
            q.column_mut(c).mapv_inplace(|x| x / n);
        } else {
            q.column_mut(c).fill(0.0);
            q[[c % p, c]] = 1.0;
        }
    }
}

/// All eigenvalues and eigenvectors (columns) of a small symmetric matrix (cyclic Jacobi).
pub fn jacobi_eigen(a: &Array2<f64>) -> (Vec<f64>, Array2<f64>) {
    let n = a.nrows();
    let mut a = a.clone();
    let mut v = Array2::<f64>::eye(n);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[[i, j]] * a[[i, j]])
            .sum();
        let diag: f64 = (0..n).map(|i| a[[i, i]] * a[[i, i]]).sum();
        if off <= 1e-30 * diag.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[[p, q]];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[[q, q]] - a[[p, p]]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[[k, p]];
                    let akq = a[[k, q]];
                    a[[k, p]] = c * akp - s * akq;
                    a[[k, q]] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[[p, k]];
                    let aqk = a[[q, k]];
                    a[[p, k]] = c * apk - s * aqk;
                    a[[q, k]] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let vkp = v[[k, p]];
                    let vkq = v[[k, q]];
                    v[[k, p]] = c * vkp - s * vkq;
                    v[[k, q]] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[[i, i]]).collect(), v)
}

/// A fitted logistic-regression probe in the original activation coordinates:
/// `P(positive | x) = sigmoid(weights . x + bias)`.
pub struct Probe {
    pub weights: Array1<f64>,
    pub bias: f64,
    pub accuracy: f64,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + exp(-z))` without overflow.
fn softplus_neg(z: f64) -> f64 {
    if z > 0.0 {
        (-z).exp().ln_1p()
    } else {
        -z + z.exp().ln_1p()
    }
}

/// L2-regularised logistic regression, positives labelled 1 and negatives 0.
///
/// Features are centred on the mean of all rows and divided by their RMS (so `c` means
/// the same at every layer); the objective is
/// `sum_i log(1 + exp(-y_i (w.x_i + b))) + |w|^2 / (2 c)`, minimised by Newton steps
/// solved with conjugate gradients (`d_model` may exceed the number of rows).
pub fn logistic_probe(pos: &Array2<f64>, neg: &Array2<f64>, c: f64) -> Result<Probe> {
    if !(c > 0.0 && c.is_finite()) {
        return Err(Error::invalid(format!(
            "the inverse regularisation strength must be > 0, got {c}"
        )));
    }
    let x_raw = ndarray::concatenate(Axis(0), &[pos.view(), neg.view()])
        .map_err(|e| Error::shape(format!("cannot stack activations: {e}")))?;
    let (n, d) = x_raw.dim();
    let y: Vec<f64> = (0..n)
        .map(|i| if i < pos.nrows() { 1.0 } else { -1.0 })
        .collect();
    let mu = mean_rows(&x_raw);
    let mut x = &x_raw - &mu;
    let rms = (x.iter().map(|v| v * v).sum::<f64>() / (n * d) as f64).sqrt();
    let rms = if rms > 0.0 { rms } else { 1.0 };
    x.mapv_inplace(|v| v / rms);
    let lambda = 1.0 / c;
    // Parameters: w [d] and b (unregularised).
    let mut w = Array1::<f64>::zeros(d);
    let mut b = 0.0;
    let objective = |w: &Array1<f64>, b: f64| -> f64 {
        let z = x.dot(w);
        let loss: f64 = z
            .iter()
            .zip(&y)
            .map(|(zi, yi)| softplus_neg(yi * (zi + b)))
            .sum();
        loss + 0.5 * lambda * w.dot(w)
    };
    let mut f = objective(&w, b);
    for _newton in 0..100 {
        let z = x.dot(&w);
        let mut r = Array1::<f64>::zeros(n); // dloss/dz
        let mut dd = Array1::<f64>::zeros(n); // d2loss/dz2
        for i in 0..n {
            let p = sigmoid(y[i] * (z[i] + b));
            r[i] = -y[i] * (1.0 - p);
            dd[i] = p * (1.0 - p);
        }
        let gw = x.t().dot(&r) + &(&w * lambda);
        let gb = r.sum();
        let gnorm = (gw.dot(&gw) + gb * gb).sqrt();
        if gnorm <= 1e-9 * (n as f64).max(1.0) {
            break;
        }
        // Solve H [dw; db] = -[gw; gb] by CG; H v = [Xt D (X vw + vb) + lambda vw; 1t D (...)].
        let hv = |vw: &Array1<f64>, vb: f64| -> (Array1<f64>, f64) {
            let t = (x.dot(vw) + vb) * &dd;
            (x.t().dot(&t) + &(vw * lambda), t.sum())
        };
        let (mut sw, mut sb) = (Array1::<f64>::zeros(d), 0.0);
        let (mut rw, mut rb) = (-&gw, -gb);
        let (mut pw, mut pb) = (rw.clone(), rb);
        let mut rr = rw.dot(&rw) + rb * rb;
        let tol = (1e-3 * gnorm).min(gnorm.sqrt()) * 1e-2;
        for _cg in 0..(d + 1).min(500) {
            if rr.sqrt() <= tol {
                break;
            }
            let (hw, hb) = hv(&pw, pb);
            let php = pw.dot(&hw) + pb * hb;
            if php <= 0.0 {
                break;
            }
            let alpha = rr / php;
            sw.scaled_add(alpha, &pw);
            sb += alpha * pb;
            rw.scaled_add(-alpha, &hw);
            rb -= alpha * hb;
            let rr_new = rw.dot(&rw) + rb * rb;
            let beta = rr_new / rr;
            pw = &rw + &(&pw * beta);
            pb = rb + beta * pb;
            rr = rr_new;
        }
        // Backtracking line search on the objective.
        let slope = gw.dot(&sw) + gb * sb;
        let mut step = 1.0;
        let mut improved = false;
        for _ in 0..40 {
            let w_try = &w + &(&sw * step);
            let b_try = b + step * sb;
            let f_try = objective(&w_try, b_try);
            if f_try <= f + 1e-4 * step * slope {
                w = w_try;
                b = b_try;
                f = f_try;
                improved = true;
                break;
            }
            step *= 0.5;
        }
        if !improved {
            break;
        }
    }
    let z = x.dot(&w);
    let correct = z
        .iter()
        .zip(&y)
        .filter(|(zi, yi)| (**zi + b) * **yi > 0.0)
        .count();
    // Back to the original coordinates: w.(x - mu)/rms + b.
    let weights = &w / rms;
    let bias = b - weights.dot(&mu);
    if !weights.iter().all(|v| v.is_finite()) || !bias.is_finite() {
        return Err(Error::invalid(
            "the logistic probe diverged (non-finite weights)",
        ));
    }
    Ok(Probe {
        weights,
        bias,
        accuracy: correct as f64 / n as f64,
    })
}

#[cfg(test)]
mod tests;
