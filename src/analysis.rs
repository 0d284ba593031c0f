//! Reliability diagnostics of contrastive steering (Braun et al. 2025, "Understanding
//! (Un)Reliability of Steering Vectors in Language Models").
//!
//! - Directional agreement: the cosine of each pair's difference `pos_i - neg_i` with the
//!   mean difference `s`; a vector steers reliably when these agree.
//! - Separability: every activation projected on the difference-of-means line and
//!   normalised so that the positive mean lands on +1 and the negative mean on -1;
//!   `d' = |mu+ - mu-| / sqrt((var+ + var-) / 2)` of the projections.
//! - Steerability (from logit differences measured elsewhere): per sample the change of
//!   `m = logit(y+) - logit(y-)` under steering and its least-squares slope against the
//!   multiplier; anti-steerable samples are those whose change is negative.

use ndarray::{ArrayView2, Axis};

use crate::error::{Error, Result};
use crate::vectors::{check_pairs, mean_rows, norm, to_f64};

/// Directional agreement and separability of one layer's contrastive activations.
#[derive(Debug, Clone)]
pub struct PairStats {
    /// cos(pos_i - neg_i, s) per pair (0 for a pair whose two sides are equal).
    pub cosines: Vec<f64>,
    /// Projections of the positives / negatives on the normalised mean-difference line.
    pub proj_pos: Vec<f64>,
    pub proj_neg: Vec<f64>,
    /// Discriminability index of the two projected classes.
    pub d_prime: f64,
    /// |s|, the mean difference's norm.
    pub diff_norm: f64,
    /// Mean norm of all the activations (positives and negatives).
    pub mean_norm: f64,
}

impl PairStats {
    pub fn mean_cosine(&self) -> f64 {
        self.cosines.iter().sum::<f64>() / self.cosines.len().max(1) as f64
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Population variance (divides by n, as numpy's default `var`).
fn variance(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len().max(1) as f64
}

/// Diagnostics of paired positive / negative activations `[n, d]` at one layer.
pub fn pair_stats(pos: ArrayView2<f32>, neg: ArrayView2<f32>) -> Result<PairStats> {
    check_pairs(&pos, &neg, 2)?;
    let p = to_f64(&pos);
    let q = to_f64(&neg);
    let diffs = &p - &q; // [n, d]
    let s = mean_rows(&diffs); // [d]
    let s2 = s.dot(&s);
    if s2 == 0.0 {
        return Err(Error::invalid(
            "positive and negative activations have identical means: directional agreement \
             and separability are undefined",
        ));
    }
    let s_norm = s2.sqrt();
    let cosines = diffs
        .axis_iter(Axis(0))
        .map(|row| {
            let n = norm(&row);
            if n == 0.0 {
                0.0
            } else {
                row.dot(&s) / (n * s_norm)
            }
        })
        .collect();
    // mu+ - mu- = s for paired data; the midpoint m = (mu+ + mu-) / 2 projects to 0 and
    // mu+ to (mu+ - m).s / (|s|^2 / 2) = 1.
    let mid = (mean_rows(&p) + mean_rows(&q)) * 0.5;
    let project = |a: &ndarray::Array2<f64>| -> Vec<f64> {
        a.axis_iter(Axis(0))
            .map(|row| 2.0 * (&row - &mid).dot(&s) / s2)
            .collect()
    };
    let proj_pos = project(&p);
    let proj_neg = project(&q);
    let spread = ((variance(&proj_pos) + variance(&proj_neg)) / 2.0).sqrt();
    let gap = (mean(&proj_pos) - mean(&proj_neg)).abs();
    let d_prime = if spread > 0.0 {
        gap / spread
    } else {
        f64::INFINITY
    };
    let norms: Vec<f64> = p
        .axis_iter(Axis(0))
        .chain(q.axis_iter(Axis(0)))
        .map(|row| norm(&row))
        .collect();
    Ok(PairStats {
        cosines,
        proj_pos,
        proj_neg,
        d_prime,
        diff_norm: s_norm,
        mean_norm: mean(&norms),
    })
}

/// Per-sample steerability from logit differences `margins` [n_samples, n_multipliers]
/// measured at `multipliers` (one of which must be 0, the unsteered run).
#[derive(Debug, Clone)]
pub struct Steerability {
    /// m at multiplier 0 per sample.
    pub unsteered: Vec<f64>,
    /// m at the largest multiplier minus m unsteered, per sample.
    pub effect: Vec<f64>,
    /// Least-squares slope of m against the multiplier, per sample.
    pub slope: Vec<f64>,
    pub mean_effect: f64,
    pub mean_slope: f64,
    /// Share of samples whose effect is negative.
    pub anti_steerable: f64,
}

pub fn steerability(margins: ArrayView2<f64>, multipliers: &[f64]) -> Result<Steerability> {
    let (n, k) = margins.dim();
    if n == 0 {
        return Err(Error::invalid("no samples to evaluate"));
    }
    if k != multipliers.len() {
        return Err(Error::shape(format!(
            "margins have {k} columns but there are {} multipliers",
            multipliers.len()
        )));
    }
    if multipliers.iter().any(|m| !m.is_finite()) || margins.iter().any(|m| !m.is_finite()) {
        return Err(Error::invalid(
            "multipliers and logit differences must be finite",
        ));
    }
    let Some(zero) = multipliers.iter().position(|&m| m == 0.0) else {
        return Err(Error::invalid(
            "the multipliers must include 0 (the unsteered baseline)",
        ));
    };
    let Some(top) = (0..k)
        .filter(|&j| multipliers[j] > 0.0)
        .max_by(|&i, &j| multipliers[i].total_cmp(&multipliers[j]))
    else {
        return Err(Error::invalid(
            "the multipliers must include at least one value > 0",
        ));
    };
    let xm = mean(multipliers);
    let sxx: f64 = multipliers.iter().map(|x| (x - xm) * (x - xm)).sum();
    let mut unsteered = Vec::with_capacity(n);
    let mut effect = Vec::with_capacity(n);
    let mut slope = Vec::with_capacity(n);
    for row in margins.axis_iter(Axis(0)) {
        let ym = row.mean().unwrap_or(0.0);
        let sxy: f64 = multipliers
            .iter()
            .zip(row.iter())
            .map(|(x, y)| (x - xm) * (y - ym))
            .sum();
        unsteered.push(row[zero]);
        effect.push(row[top] - row[zero]);
        slope.push(sxy / sxx);
    }
    let anti = effect.iter().filter(|&&e| e < 0.0).count() as f64 / n as f64;
    Ok(Steerability {
        mean_effect: mean(&effect),
        mean_slope: mean(&slope),
        anti_steerable: anti,
        unsteered,
        effect,
        slope,
    })
}

/// Ranks with ties sharing their average rank (1-based).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            out[k] = r;
        }
        i = j + 1;
    }
    out
}

/// Pearson correlation; NaN when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let (mx, my) = (mean(x), mean(y));
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let syy: f64 = y.iter().map(|b| (b - my) * (b - my)).sum();
    sxy / (sxx * syy).sqrt()
}

/// Spearman's rank correlation of two equally long samples (at least 3 values).
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    if x.len() != y.len() {
        return Err(Error::shape(format!(
            "spearman needs two samples of the same length, got {} and {}",
            x.len(),
            y.len()
        )));
    }
    if x.len() < 3 {
        return Err(Error::invalid(format!(
            "spearman needs at least 3 values per sample, got {}",
            x.len()
        )));
    }
    if x.iter().chain(y).any(|v| !v.is_finite()) {
        return Err(Error::invalid("spearman: every value must be finite"));
    }
    Ok(pearson(&ranks(x), &ranks(y)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn projections_put_the_class_means_on_plus_and_minus_one() {
        let pos = array![[2.0f32, 1.0], [4.0, -1.0], [3.0, 0.5]];
        let neg = array![[0.0f32, 0.0], [1.0, 1.0], [-1.0, 0.0]];
        let st = pair_stats(pos.view(), neg.view()).unwrap();
        assert!((mean(&st.proj_pos) - 1.0).abs() < 1e-12);
        assert!((mean(&st.proj_neg) + 1.0).abs() < 1e-12);
        // d' = 2 / sqrt((var+ + var-)/2) because the means sit at +-1.
        let want = 2.0 / ((variance(&st.proj_pos) + variance(&st.proj_neg)) / 2.0).sqrt();
        assert!((st.d_prime - want).abs() < 1e-12);
        // diffs [2,1],[3,-2],[4,.5] -> s = [3, -1/6]; cos = d.s / (|d| |s|)
        let s: [f64; 2] = [3.0, -0.5 / 3.0];
        let sn = (s[0] * s[0] + s[1] * s[1]).sqrt();
        let d0 = [2.0, 1.0];
        let c0 = (d0[0] * s[0] + d0[1] * s[1]) / (5.0f64.sqrt() * sn);
        assert!((st.cosines[0] - c0).abs() < 1e-12);
    }

    #[test]
    fn steerability_effects_slopes_and_anti_steerable_share() {
        let m = array![[0.0, 1.0, 2.0], [1.0, 0.5, 0.0], [0.0, 0.0, 0.3]];
        let s = steerability(m.view(), &[-1.0, 0.0, 1.0]).unwrap();
        assert_eq!(s.unsteered, vec![1.0, 0.5, 0.0]);
        assert_eq!(s.effect, vec![1.0, -0.5, 0.3]);
        assert!((s.slope[0] - 1.0).abs() < 1e-12 && (s.slope[1] + 0.5).abs() < 1e-12);
        assert!((s.anti_steerable - 1.0 / 3.0).abs() < 1e-12);
        assert!(steerability(m.view(), &[-1.0, 0.5, 1.0]).is_err());
        assert!(steerability(m.view(), &[-2.0, -1.0, 0.0]).is_err());
    }

    #[test]
    fn spearman_with_ties() {
        // scipy.stats.spearmanr([1, 2, 2, 3], [10, 20, 30, 40]).statistic == 0.9486832980505138
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &[10.0, 20.0, 30.0, 40.0]).unwrap();
        assert!((r - 0.9486832980505138).abs() < 1e-12);
        assert!(spearman(&[1.0, 2.0], &[1.0, 2.0]).is_err());
    }
}
