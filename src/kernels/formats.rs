//! GGUF block formats decoded into the two shapes the kernels compute with.
//!
//! Every covered format is rewritten, losslessly, as blocks of 32 weights:
//! - `U4`: unsigned 4-bit codes q in 0..=15 with a scale d and an offset m per block,
//!   w = d * q + m. Q4_0 (m = -8d), Q4_1 and Q4_K (d = d_super * sc, m = -dmin * mn)
//!   land here.
//! - `I8`: signed codes with one scale per 16 weights, w = d_half * q. Q8_0 (both halves
//!   share d), Q5_0 (q - 16) and Q6_K (q - 32, one 6-bit-file scale per 16) land here.
//!
//! The scales are products of at most an f16 and a 6-bit (or 8-bit) integer, so they
//! are exact in f32: the decoded weights equal ggml's dequantization bit for bit.
//!
//! Block layouts follow ggml (`ggml-quants.c`, `dequantize_row_*`); candle 0.11.1's
//! `k_quants.rs` reads the same bytes.

use half::f16;

use crate::error::{Error, Result};

/// The GGUF block formats the kernels cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

/// Which kernel family a format runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    U4,
    I8,
}

impl Format {
    /// Weights per stored block.
    pub fn block_len(self) -> usize {
        match self {
            Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q8_0 => 32,
            Format::Q4K | Format::Q6K => 256,
        }
    }

    /// Bytes per stored block.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q8_0 => 34,
            Format::Q4K => 144,
            Format::Q6K => 210,
        }
    }

    pub fn family(self) -> Family {
        match self {
            Format::Q4_0 | Format::Q4_1 | Format::Q4K => Family::U4,
            Format::Q5_0 | Format::Q8_0 | Format::Q6K => Family::I8,
        }
    }

    /// How many 4-value steps of an I8 block can be summed in i16 lanes before
    /// `maddubs` pairs could overflow: 2 * max|q| * 127 * steps <= 32767.
    pub fn i16_steps(self) -> usize {
        match self {
            Format::Q5_0 => 8, // |q| <= 16
            Format::Q6K => 4,  // |q| <= 32
            _ => 1,            // |q| <= 128
        }
    }

    /// Whether the two 16-weight halves of a block carry their own scales.
    pub fn split_scales(self) -> bool {
        self == Format::Q6K
    }

    /// Scales per (group of 8 rows, block) in the packed I8 layout.
    pub fn d_stride(self) -> usize {
        if self.split_scales() {
            16
        } else {
            8
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Q4_0 => "Q4_0",
            Format::Q4_1 => "Q4_1",
            Format::Q5_0 => "Q5_0",
            Format::Q8_0 => "Q8_0",
            Format::Q4K => "Q4_K",
            Format::Q6K => "Q6_K",
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// One 32-weight U4 block: codes in natural order and (d, m).
pub struct U4Block {
    pub q: [u8; 32],
    pub d: f32,
    pub m: f32,
}

/// One 32-weight I8 block: signed codes in natural order and the two half scales.
pub struct I8Block {
    pub q: [i8; 32],
    pub d: [f32; 2],
}

/// Decode one stored row (`row.len() == k / block_len * block_bytes`) into U4 blocks.
pub fn decode_u4_row(fmt: Format, row: &[u8], out: &mut Vec<U4Block>) -> Result<()> {
    let bb = fmt.block_bytes();
    for blk in row.chunks_exact(bb) {
        match fmt {
            Format::Q4_0 | Format::Q4_1 => {
                let d = f16_at(blk, 0);
                let (m, qs) = if fmt == Format::Q4_0 {
                    (-8.0 * d, &blk[2..18])
                } else {
                    (f16_at(blk, 2), &blk[4..20])
                };
                let mut q = [0u8; 32];
                for i in 0..16 {
                    q[i] = qs[i] & 0x0F;
                    q[i + 16] = qs[i] >> 4;
                }
                out.push(U4Block { q, d, m });
            }
            Format::Q4K => {
                let d = f16_at(blk, 0);
                let dmin = f16_at(blk, 2);
                let scales = &blk[4..16];
                let qs = &blk[16..144];
                for j in 0..4 {
                    let chunk = &qs[32 * j..32 * j + 32];
                    for half in 0..2 {
                        let (sc, mn) = scale_min_k4(2 * j + half, scales);
                        let mut q = [0u8; 32];
                        for (l, x) in q.iter_mut().enumerate() {
                            *x = if half == 0 {
                                chunk[l] & 0x0F
                            } else {
                                chunk[l] >> 4
                            };
                        }
                        out.push(U4Block {
                            q,
                            d: d * sc as f32,
                            m: -(dmin * mn as f32),
                        });
                    }
                }
            }
            other => {
                return Err(Error::invalid(format!(
                    "decode_u4_row: {other:?} is not a 4-bit format"
                )))
            }
        }
    }
    Ok(())
}

/// Decode one stored row into I8 blocks.
pub fn decode_i8_row(fmt: Format, row: &[u8], out: &mut Vec<I8Block>) -> Result<()> {
    let bb = fmt.block_bytes();
    for blk in row.chunks_exact(bb) {
        match fmt {
            Format::Q8_0 => {
                let d = f16_at(blk, 0);
                let mut q = [0i8; 32];
                for (x, &b) in q.iter_mut().zip(&blk[2..34]) {
                    *x = b as i8;
                }
                out.push(I8Block { q, d: [d, d] });
            }
            Format::Q5_0 => {
                let d = f16_at(blk, 0);
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                let qs = &blk[6..22];
                let mut q = [0i8; 32];
                for j in 0..16 {
                    let h0 = (((qh >> j) << 4) & 0x10) as u8;
                    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                    q[j] = ((qs[j] & 0x0F) | h0) as i8 - 16;
                    q[j + 16] = ((qs[j] >> 4) | h1) as i8 - 16;
                }
                out.push(I8Block { q, d: [d, d] });
            }
            Format::Q6K => {
                let ql = &blk[0..128];
                let qh = &blk[128..192];
                let sc = &blk[192..208];
                let d = f16_at(blk, 208);
                let mut vals = [0i8; 256];
                for n in 0..2 {
                    let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
                    let y = &mut vals[128 * n..128 * n + 128];
                    for l in 0..32 {
                        y[l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
                        y[l + 32] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                        y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                        y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                    }
                }
                for b in 0..8 {
                    let mut q = [0i8; 32];
                    q.copy_from_slice(&vals[32 * b..32 * b + 32]);
                    let s0 = sc[2 * b] as i8 as f32;
                    let s1 = sc[2 * b + 1] as i8 as f32;
                    out.push(I8Block {
                        q,
                        d: [d * s0, d * s1],
                    });
                }
            }
            other => {
                return Err(Error::invalid(format!(
                    "decode_i8_row: {other:?} is not an 8-bit-code format"
                )))
            }
        }
    }
    Ok(())
}

/// Q4_K's packed 6-bit scale and min of sub-block `j` (ggml `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
