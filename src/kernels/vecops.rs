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
unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_body(y, a, x)
}

/// Σ a[i] * b[i] over the common length.
#[inline]
pub fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: Isa::Avx2 comes from `Isa::detect`, which checked the CPU.
        Isa::Avx2 => unsafe { dot_avx2(a, b) },
        _ => dot_body(a, b),
    }
}

/// y += a * x over the common length.
#[inline]
pub fn axpy(isa: Isa, y: &mut [f32], a: f32, x: &[f32]) {
    match isa {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: as for `dot`.
        Isa::Avx2 => unsafe { axpy_avx2(y, a, x) },
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
        let mut y1 = b.clone();
        let mut y2 = b.clone();
        axpy(Isa::Scalar, &mut y1, 0.3, &a);
        axpy(isa, &mut y2, 0.3, &a);
        assert_eq!(y1, y2);
        assert!((y1[5] - (b[5] + 0.3 * a[5])).abs() < 1e-6);
    }
}
