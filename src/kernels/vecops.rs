//! Small f32 vector loops for attention, compiled twice: for the baseline target and
//! with AVX2 enabled (picked at run time). Both builds run the same arithmetic — 8
//! running lanes, folded in a fixed order, plain multiply then add (Rust never fuses
//! them) — so they give the same bits; AVX2 just does it in one register.

use super::Isa;

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[i] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// `dot_body` of G vectors against one `b`: each result is the same chain of operations
/// as `dot_body(qs[i], b)` (so the same bits), and the G chains run side by side, which
/// hides the latency of the adds and reads `b` once.
#[inline(always)]
fn dot_group_body<const G: usize>(qs: [&[f32]; G], b: &[f32]) -> [f32; G] {
    let n = qs.iter().fold(b.len(), |n, q| n.min(q.len()));
    let b = &b[..n];
    let qs: [&[f32]; G] = std::array::from_fn(|g| &qs[g][..n]);
    let mut acc = [[0f32; 8]; G];
    let full = n / 8 * 8;
    for c in (0..full).step_by(8) {
        let y = &b[c..c + 8];
        for (a, q) in acc.iter_mut().zip(&qs) {
            let x = &q[c..c + 8];
            for i in 0..8 {
                a[i] += x[i] * y[i];
            }
        }
    }
    for (a, q) in acc.iter_mut().zip(&qs) {
        for (i, (x, y)) in q[full..].iter().zip(&b[full..]).enumerate() {
            a[i] += x * y;
        }
    }
    acc.map(|a| ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7])))
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_group_avx2<const G: usize>(qs: [&[f32]; G], b: &[f32]) -> [f32; G] {
    dot_group_body(qs, b)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_body(y, a, x)
}

/// Σ a[i] * b[i] over the common length.
#[inline]
pub fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: Isa::Avx2 and above come from `Isa::detect`, which checked the CPU.
        Isa::Avx2 | Isa::Avx512 => unsafe { dot_avx2(a, b) },
        _ => dot_body(a, b),
    }
}

/// `[dot(qs[0], b), .., dot(qs[G-1], b)]`, bit for bit, with `b` read once (the query
/// heads that share a KV head).
#[inline]
pub fn dot_group<const G: usize>(isa: Isa, qs: [&[f32]; G], b: &[f32]) -> [f32; G] {
    match isa {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: as for `dot`.
        Isa::Avx2 | Isa::Avx512 => unsafe { dot_group_avx2(qs, b) },
        _ => dot_group_body(qs, b),
    }
}

/// y += a * x over the common length.
#[inline]
pub fn axpy(isa: Isa, y: &mut [f32], a: f32, x: &[f32]) {
    match isa {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: as for `dot`.
        Isa::Avx2 | Isa::Avx512 => unsafe { axpy_avx2(y, a, x) },
        _ => axpy_body(y, a, x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_axpy_agree_across_isas() {
        let a: Vec<f32> = (0..67).map(|i| ((i as f32) * 0.731).sin()).collect();
        let b: Vec<f32> = (0..67).map(|i| ((i as f32) * 0.377).cos() * 3.0).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let s = dot(Isa::Scalar, &a, &b);
        assert!((s as f64 - want).abs() < 1e-4, "{s} vs {want}");
        let isa = Isa::detect();
        assert_eq!(dot(isa, &a, &b).to_bits(), s.to_bits());
        // The grouped dot gives each member's `dot` bits, on every path and length.
        let c: Vec<f32> = (0..67).map(|i| ((i as f32) * 1.91).sin() * 0.5).collect();
        for isa in Isa::supported() {
            for n in [64, 67, 5] {
                let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
                let g3 = dot_group(isa, [a, c, b], b);
                let one = [
                    dot(Isa::Scalar, a, b),
                    dot(Isa::Scalar, c, b),
                    dot(Isa::Scalar, b, b),
                ];
                assert_eq!(g3.map(f32::to_bits), one.map(f32::to_bits), "{isa:?} n={n}");
                assert_eq!(
                    dot_group(isa, [c], a)[0].to_bits(),
                    dot(isa, c, a).to_bits()
                );
            }
        }
        let mut y1 = b.clone();
        let mut y2 = b.clone();
        axpy(Isa::Scalar, &mut y1, 0.3, &a);
        axpy(isa, &mut y2, 0.3, &a);
        assert_eq!(y1, y2);
        assert!((y1[5] - (b[5] + 0.3 * a[5])).abs() < 1e-6);
    }
}
