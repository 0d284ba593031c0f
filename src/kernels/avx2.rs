//! AVX2 + FMA micro-kernels, chosen at run time (`Isa::detect`).
//!
//! One call computes a tile of `C` activation rows x 8 output features (one packed
//! group) over the whole of k. Each f32 lane of an accumulator is one output feature,
//! so every (row, feature) result is the same chain of fused multiply-adds, block after
//! block, as in `scalar.rs`: an exact integer dot per block (or per 16-weight half),
//! converted to f32 and added with `fma(idot, d_w * d_x, acc)`, then the offset term
//! `fma(m_w, sum_x, acc)`. The tile size `C` changes which rows share a weight load,
//! never the arithmetic of a row: results are batch-invariant and equal the scalar
//! kernels bit for bit.

#![allow(clippy::too_many_arguments)]

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Four consecutive activation codes broadcast to every 32-bit lane.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// 8 scales from `p` (f16 if `H`, else f32), scale index `i`.
#[inline(always)]
unsafe fn scales8<const H: bool>(p: *const u8, i: usize) -> __m256 {
    if H {
        _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i))
    } else {
        _mm256_loadu_ps(p.add(4 * i) as *const f32)
    }
}

/// U4 tile: `qs` points at the group's first block (128 bytes per block), `d`/`m` at its
/// first 8 scales/offsets (8 per block; f16 if `H`, else f32). `xq[c]`, `xd[c]`, `xs[c]` are row c's codes,
/// block scales and block sums.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `qs`, `d`, `m` must be valid for `nb` blocks and
/// each `xq[c]` for `32 * nb` codes, `xd[c]`/`xs[c]` for `nb` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn u4_tile<const C: usize, const H: bool>(
    qs: *const u8,
    d: *const u8,
    m: *const u8,
    nb: usize,
    xq: [*const i8; C],
    xd: [*const f32; C],
    xs: [*const f32; C],
    out: &mut [[f32; 8]; C],
) {
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); C];
    for b in 0..nb {
        let wq = qs.add(b * 128);
        let mut isum = [_mm256_setzero_si256(); C];
        for s in 0..4 {
            let raw = _mm256_loadu_si256(wq.add(s * 32) as *const __m256i);
            let lo = _mm256_and_si256(raw, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            for c in 0..C {
                let xp = xq[c].add(b * 32 + 4 * s);
                // |lane| <= 2 * 15 * 127 per maddubs, 8 of them: 30480 < 32767.
                isum[c] = _mm256_add_epi16(isum[c], _mm256_maddubs_epi16(lo, bcast4(xp)));
                isum[c] = _mm256_add_epi16(isum[c], _mm256_maddubs_epi16(hi, bcast4(xp.add(16))));
            }
        }
        let dv = scales8::<H>(d, b * 8);
        let mv = scales8::<H>(m, b * 8);
        for c in 0..C {
            let f = _mm256_cvtepi32_ps(_mm256_madd_epi16(isum[c], ones));
            let sc = _mm256_mul_ps(dv, _mm256_set1_ps(*xd[c].add(b)));
            acc[c] = _mm256_fmadd_ps(f, sc, acc[c]);
            acc[c] = _mm256_fmadd_ps(mv, _mm256_set1_ps(*xs[c].add(b)), acc[c]);
        }
    }
    for c in 0..C {
        _mm256_storeu_ps(out[c].as_mut_ptr(), acc[c]);
    }
}

/// I8 tile: `qs` points at the group's first block (256 codes per block), `d` at its
/// first scales (8 per block, or 16 with `SPLIT`: 8 for each 16-code half). `STEPS` is how
/// many 4-code steps sum in i16 before widening; `SPLIT` whether the halves have their
/// own scales.
///
/// # Safety
/// As `u4_tile`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn i8_tile<const C: usize, const STEPS: usize, const SPLIT: bool, const H: bool>(
    qs: *const i8,
    d: *const u8,
    nb: usize,
    xq: [*const i8; C],
    xd: [*const f32; C],
    out: &mut [[f32; 8]; C],
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); C];
    for b in 0..nb {
        let wq = qs.add(b * 256);
        let mut lo32 = [_mm256_setzero_si256(); C];
        let mut hi32 = [_mm256_setzero_si256(); C];
        let mut s16 = [_mm256_setzero_si256(); C];
        for s in 0..8 {
            let w = _mm256_loadu_si256(wq.add(s * 32) as *const __m256i);
            let aw = _mm256_abs_epi8(w);
            for c in 0..C {
                let x = bcast4(xq[c].add(b * 32 + 4 * s));
                // maddubs(|w|, sign(x, w)) = w * x pairwise; STEPS keeps i16 in range.
                let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
                s16[c] = if STEPS == 1 {
                    p
                } else {
                    _mm256_add_epi16(s16[c], p)
                };
                if (s + 1) % STEPS == 0 {
                    let wide = _mm256_madd_epi16(s16[c], ones);
                    if s < 4 {
                        lo32[c] = _mm256_add_epi32(lo32[c], wide);
                    } else {
                        hi32[c] = _mm256_add_epi32(hi32[c], wide);
                    }
                    s16[c] = _mm256_setzero_si256();
                }
            }
        }
        let dstride = if SPLIT { 16 } else { 8 };
        let d0 = scales8::<H>(d, b * dstride);
        if SPLIT {
            let d1 = scales8::<H>(d, b * 16 + 8);
            for c in 0..C {
                let xdc = _mm256_set1_ps(*xd[c].add(b));
                let f0 = _mm256_cvtepi32_ps(lo32[c]);
                acc[c] = _mm256_fmadd_ps(f0, _mm256_mul_ps(d0, xdc), acc[c]);
                let f1 = _mm256_cvtepi32_ps(hi32[c]);
                acc[c] = _mm256_fmadd_ps(f1, _mm256_mul_ps(d1, xdc), acc[c]);
            }
        } else {
            for c in 0..C {
                let f = _mm256_cvtepi32_ps(_mm256_add_epi32(lo32[c], hi32[c]));
                let sc = _mm256_mul_ps(d0, _mm256_set1_ps(*xd[c].add(b)));
                acc[c] = _mm256_fmadd_ps(f, sc, acc[c]);
            }
        }
    }
    for c in 0..C {
        _mm256_storeu_ps(out[c].as_mut_ptr(), acc[c]);
    }
}

/// `super::quantize_row` with AVX2: the same codes, scales and sums, bit for bit.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `q` must hold `x.len()` codes and `d`, `s`
/// `x.len() / 32` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let sign = _mm256_set1_ps(-0.0);
    let lim = _mm256_set1_ps(127.0);
    let nlim = _mm256_set1_ps(-127.0);
    for b in 0..x.len() / 32 {
        let p = x.as_ptr().add(b * 32);
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let a = [
            _mm256_andnot_ps(sign, v[0]),
            _mm256_andnot_ps(sign, v[1]),
            _mm256_andnot_ps(sign, v[2]),
            _mm256_andnot_ps(sign, v[3]),
        ];
        // max is exact, so any order gives the scalar fold's value (NaN aside).
        let m8 = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m1 = _mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1));
        let amax = _mm_cvtss_f32(m1);
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let mut iv = [_mm256_setzero_si256(); 4];
        for i in 0..4 {
            let r = _mm256_round_ps(
                _mm256_mul_ps(v[i], idv),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            );
            iv[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, nlim), lim));
        }
        // Pack 32 i32 to 32 i8 in order (packs work per 128-bit lane; fix with a permute).
        let p16a = _mm256_packs_epi32(iv[0], iv[1]);
        let p16b = _mm256_packs_epi32(iv[2], iv[3]);
        let p8 = _mm256_packs_epi16(p16a, p16b);
        let p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr().add(b * 32) as *mut __m256i, p8);
        // Exact integer sum of the codes, then d * sum as in the scalar version.
        let i8s = _mm256_add_epi32(
            _mm256_madd_epi16(p16a, _mm256_set1_epi16(1)),
            _mm256_madd_epi16(p16b, _mm256_set1_epi16(1)),
        );
        let i4 = _mm_add_epi32(
            _mm256_castsi256_si128(i8s),
            _mm256_extracti128_si256(i8s, 1),
        );
        let i2 = _mm_add_epi32(i4, _mm_unpackhi_epi64(i4, i4));
        let i1 = _mm_add_epi32(i2, _mm_shuffle_epi32(i2, 1));
        let db = amax / 127.0;
        // Checked writes: a caller's short scale buffers lose values, never memory.
        if let (Some(dd), Some(ss)) = (d.get_mut(b), s.get_mut(b)) {
            *dd = db;
            *ss = db * _mm_cvtsi128_si32(i1) as f32;
        }
    }
}
