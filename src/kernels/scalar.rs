//! Portable kernels: the same arithmetic as `avx2.rs`, one (row, feature) at a time.
//!
//! Integer dots are exact, and the f32 chain per output is the same sequence of fused
//! multiply-adds (`f32::mul_add`), so on any machine these agree with the AVX2 kernels
//! bit for bit.

use super::{ScaleSlice, I8_GROUP_BLOCK, U4_GROUP_BLOCK};

/// The 4-bit code of weight `e` (0..32) of packed row `r` in one U4 group block.
#[inline(always)]
fn u4_code(blk: &[u8], r: usize, e: usize) -> i32 {
    let s = (e % 16) / 4;
    let byte = blk[s * 32 + r * 4 + e % 4];
    (if e < 16 { byte & 0x0F } else { byte >> 4 }) as i32
}

/// One activation row against one U4 group: 8 outputs.
pub fn u4_group(
    qs: &[u8],
    d: ScaleSlice,
    m: ScaleSlice,
    nb: usize,
    xq: &[i8],
    xd: &[f32],
    xs: &[f32],
) -> [f32; 8] {
    let mut acc = [0f32; 8];
    for b in 0..nb {
        let blk = &qs[b * U4_GROUP_BLOCK..(b + 1) * U4_GROUP_BLOCK];
        let x = &xq[b * 32..b * 32 + 32];
        for (r, a) in acc.iter_mut().enumerate() {
            let mut idot = 0i32;
            for (e, &xv) in x.iter().enumerate() {
                idot += u4_code(blk, r, e) * xv as i32;
            }
            *a = (idot as f32).mul_add(d.get(b * 8 + r) * xd[b], *a);
            *a = m.get(b * 8 + r).mul_add(xs[b], *a);
        }
    }
    acc
}

/// One activation row against one I8 group: 8 outputs.
pub fn i8_group(
    qs: &[i8],
    d: ScaleSlice,
    nb: usize,
    split: bool,
    xq: &[i8],
    xd: &[f32],
) -> [f32; 8] {
    let mut acc = [0f32; 8];
    for b in 0..nb {
        let blk = &qs[b * I8_GROUP_BLOCK..(b + 1) * I8_GROUP_BLOCK];
        let x = &xq[b * 32..b * 32 + 32];
        for (r, a) in acc.iter_mut().enumerate() {
            let mut half = [0i32; 2];
            for (e, &xv) in x.iter().enumerate() {
                let w = blk[(e / 4) * 32 + r * 4 + e % 4] as i32;
                half[e / 16] += w * xv as i32;
            }
            if split {
                let (d0, d1) = (d.get(b * 16 + r), d.get(b * 16 + 8 + r));
                *a = (half[0] as f32).mul_add(d0 * xd[b], *a);
                *a = (half[1] as f32).mul_add(d1 * xd[b], *a);
            } else {
                *a = ((half[0] + half[1]) as f32).mul_add(d.get(b * 8 + r) * xd[b], *a);
            }
        }
    }
    acc
}
