//! AVX-512 (F/BW/VL/DQ + VNNI) micro-kernels, chosen at run time (`Isa::detect`).
//!
//! One call computes a tile of `C` activation rows x 16 output features: two packed
//! groups of 8 side by side in one 512-bit register (group g in the low half, g + 1 in
//! the high half), so the broadcast activation codes serve both. The integer dot of a
//! block is one `vpdpbusd` per 4-code step (u8 x i8 -> i32, exact) where AVX2 needs
//! `maddubs` + `add` + `madd`:
//! - U4: the weight codes are unsigned (0..=15), the activations signed: `dpbusd(w, x)`.
//! - I8: both are signed; `dpbusd(x + 128, w)` minus `dpbusd(128, w)` (the correction,
//!   shared by the rows of the tile) gives Σ x w exactly.
//!
//! The integer sums are the same integers the AVX2 and scalar kernels compute, and the
//! f32 chain per (row, feature) is the same sequence of fused multiply-adds, so the
//! results equal theirs bit for bit, and stay batch-invariant.

#![allow(clippy::too_many_arguments)]

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The 32 bytes at `a` in the low half, those at `b` in the high half.
#[inline(always)]
unsafe fn load_pair(a: *const u8, b: *const u8) -> __m512i {
    _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256(a as *const __m256i)),
        _mm256_loadu_si256(b as *const __m256i),
        1,
    )
}

/// Four consecutive activation codes broadcast to every 32-bit lane.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

/// 8 scales from `a` and 8 from `b` (f16 if `H`, else f32), scale index `i` of each.
#[inline(always)]
unsafe fn scales16<const H: bool>(a: *const u8, b: *const u8, i: usize) -> __m512 {
    if H {
        let lo = _mm_loadu_si128(a.add(2 * i) as *const __m128i);
        let hi = _mm_loadu_si128(b.add(2 * i) as *const __m128i);
        _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1))
    } else {
        let lo = _mm256_loadu_ps(a.add(4 * i) as *const f32);
        let hi = _mm256_loadu_ps(b.add(4 * i) as *const f32);
        _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1)
    }
}

/// U4 tile over two groups: `qs[h]`, `d[h]`, `m[h]` point at group h's first block,
/// scales and offsets (as `avx2::u4_tile`); `out[c]` gets row c's 16 outputs (8 of group
/// 0, then 8 of group 1).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/DQ/VNNI, AVX2, FMA and F16C; the pointers must
/// be valid as for `avx2::u4_tile`, for both groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub unsafe fn u4_tile<const C: usize, const H: bool>(
    qs: [*const u8; 2],
    d: [*const u8; 2],
    m: [*const u8; 2],
    nb: usize,
    xq: [*const i8; C],
    xd: [*const f32; C],
    xs: [*const f32; C],
    out: &mut [[f32; 16]; C],
) {
    let mask = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); C];
    for b in 0..nb {
        let mut isum = [_mm512_setzero_si512(); C];
        for s in 0..4 {
            let o = b * 128 + s * 32;
            let raw = load_pair(qs[0].add(o), qs[1].add(o));
            let lo = _mm512_and_si512(raw, mask);
            let hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask);
            for c in 0..C {
                let xp = xq[c].add(b * 32 + 4 * s);
                isum[c] = _mm512_dpbusd_epi32(isum[c], lo, bcast4(xp));
                isum[c] = _mm512_dpbusd_epi32(isum[c], hi, bcast4(xp.add(16)));
            }
        }
        let dv = scales16::<H>(d[0], d[1], b * 8);
        let mv = scales16::<H>(m[0], m[1], b * 8);
        for c in 0..C {
            let f = _mm512_cvtepi32_ps(isum[c]);
            let sc = _mm512_mul_ps(dv, _mm512_set1_ps(*xd[c].add(b)));
            acc[c] = _mm512_fmadd_ps(f, sc, acc[c]);
            acc[c] = _mm512_fmadd_ps(mv, _mm512_set1_ps(*xs[c].add(b)), acc[c]);
        }
    }
    for c in 0..C {
        _mm512_storeu_ps(out[c].as_mut_ptr(), acc[c]);
    }
}

/// I8 tile over two groups: `qs[h]` points at group h's first block (256 codes per
/// block), `d[h]` at its first scales (8 per block, or 16 with `SPLIT`).
///
/// # Safety
/// As `u4_tile`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub unsafe fn i8_tile<const C: usize, const SPLIT: bool, const H: bool>(
    qs: [*const i8; 2],
    d: [*const u8; 2],
    nb: usize,
    xq: [*const i8; C],
    xd: [*const f32; C],
    out: &mut [[f32; 16]; C],
) {
    let bias = _mm512_set1_epi8(-128); // 0x80: x ^ 0x80 = x + 128 as u8
    let mut acc = [_mm512_setzero_ps(); C];
    for b in 0..nb {
        // Σ (x + 128) w per half, and 128 Σ w per half (shared by the rows).
        let mut lo32 = [_mm512_setzero_si512(); C];
        let mut hi32 = [_mm512_setzero_si512(); C];
        let mut corr = [_mm512_setzero_si512(); 2];
        for s in 0..8 {
            let o = b * 256 + s * 32;
            let w = load_pair(qs[0].add(o) as *const u8, qs[1].add(o) as *const u8);
            let h = s / 4;
            corr[h] = _mm512_dpbusd_epi32(corr[h], bias, w);
            for c in 0..C {
                let xu = _mm512_xor_si512(bcast4(xq[c].add(b * 32 + 4 * s)), bias);
                if h == 0 {
                    lo32[c] = _mm512_dpbusd_epi32(lo32[c], xu, w);
                } else {
                    hi32[c] = _mm512_dpbusd_epi32(hi32[c], xu, w);
                }
            }
        }
        let dstride = if SPLIT { 16 } else { 8 };
        let d0 = scales16::<H>(d[0], d[1], b * dstride);
        if SPLIT {
            let d1 = scales16::<H>(d[0], d[1], b * 16 + 8);
            for c in 0..C {
                let xdc = _mm512_set1_ps(*xd[c].add(b));
                let f0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(lo32[c], corr[0]));
                acc[c] = _mm512_fmadd_ps(f0, _mm512_mul_ps(d0, xdc), acc[c]);
                let f1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(hi32[c], corr[1]));
                acc[c] = _mm512_fmadd_ps(f1, _mm512_mul_ps(d1, xdc), acc[c]);
            }
        } else {
            let cw = _mm512_add_epi32(corr[0], corr[1]);
            for c in 0..C {
                let i = _mm512_sub_epi32(_mm512_add_epi32(lo32[c], hi32[c]), cw);
                let f = _mm512_cvtepi32_ps(i);
                let sc = _mm512_mul_ps(d0, _mm512_set1_ps(*xd[c].add(b)));
                acc[c] = _mm512_fmadd_ps(f, sc, acc[c]);
            }
        }
    }
    for c in 0..C {
        _mm512_storeu_ps(out[c].as_mut_ptr(), acc[c]);
    }
}
