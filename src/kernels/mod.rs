//! CPU kernels for GGUF-quantized projections: y = x · Wᵀ with W kept quantized.
//!
//! The scheme is llama.cpp's: each activation row is quantized to 8-bit codes per block
//! of 32 (scale d_x = max|x| / 127, plus d_x * sum of the codes for the formats with an
//! offset: ggml's Q8_1), and each block's dot product with the weight codes is an exact integer
//! (AVX2 `maddubs`/`madd`), scaled once per block in f32.
//!
//! Layout: at load, the rows of W are decoded losslessly (`formats`) and repacked in
//! groups of 8 output features, 4 codes of each row side by side, so one 32-byte
//! register holds 4 consecutive codes of 8 rows and the 8 f32 lanes of an accumulator
//! are 8 output features. This is the layout of llama.cpp's `Q4_0_8x8` repacking; it
//! needs no horizontal sums, and each output is a fixed chain of fused multiply-adds
//! over its blocks.
//!
//! Guarantees:
//! - **Batch invariance by construction**: row r's outputs depend on row r only. The
//!   tile shape (how many rows share a weight load) and the split over threads change
//!   which work runs together, never the arithmetic of one (row, feature) pair.
//! - **Scalar = AVX2 = AVX-512**: the portable kernels perform the same integer dots and
//!   the same `mul_add` chain, so they agree with the AVX2 ones (and the AVX-512 + VNNI
//!   ones, which compute two groups at once with `vpdpbusd`) bit for bit. The best
//!   instruction set the CPU has is chosen at run time (`is_x86_feature_detected!`), so
//!   one build runs everywhere; `STEERLAB_ISA=scalar|avx2|avx512` caps the choice (to
//!   test or compare the paths on one machine).
//! - Accuracy: against the dequantized-weight f32 product, the error of an output is at
//!   most sum over blocks of (d_x / 2) * sum |w| (rounding the activations), plus f32
//!   rounding; the unit tests check that bound.

pub mod dense;
pub mod formats;
mod qlinear;
pub mod scalar;
pub mod vecops;

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub mod avx2;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub mod avx512;

use half::f16;
use rayon::prelude::*;

pub use formats::Format;
use formats::{Family, I8Block, U4Block};

use crate::error::{Error, Result};

/// Bytes per (group of 8 rows, block of 32) in the packed U4 layout.
pub const U4_GROUP_BLOCK: usize = 128;
/// Codes per (group, block) in the packed I8 layout.
pub const I8_GROUP_BLOCK: usize = 256;
/// Activation rows computed together per micro-kernel call.
const TILE: usize = 4;
/// The same for the AVX-512 kernels (16 features per call, 32 registers).
const TILE16: usize = 8;
/// Groups of 8 features whose weights stay in cache while a chunk of rows streams past.
const GROUP_CHUNK: usize = 16;
/// Up to this many rows, threads split the output features (each thread reads part of
/// W once); above, threads split the rows.
const SMALL_M: usize = 32;
/// Rows per task when splitting rows.
const ROW_CHUNK: usize = 32;
/// Multiply-adds below which a call is not worth a second thread.
const MIN_TASK_WORK: usize = 1 << 19;

/// Instruction set of the kernels, in increasing order (each level includes the ones
/// below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL/DQ + VNNI, on top of `Avx2`.
    Avx512,
}

/// The environment variable that caps the instruction set (`scalar`, `avx2`, `avx512`).
pub const ISA_ENV: &str = "STEERLAB_ISA";

impl Isa {
    /// The name `STEERLAB_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The best one this CPU supports (ignores `STEERLAB_ISA`).
    pub fn hardware() -> Isa {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512vl")
                    && has!("avx512dq")
                    && has!("avx512vnni")
                {
                    return Isa::Avx512;
                }
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// The one the kernels use: `hardware()`, capped by `STEERLAB_ISA` when it is set (a
    /// level above the hardware's is capped to the hardware's). Read once per process;
    /// a value that names no level is reported on stderr once and not applied.
    pub fn detect() -> Isa {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let hw = Isa::hardware();
            match std::env::var(ISA_ENV) {
                Ok(v) if !v.trim().is_empty() => match Isa::parse(&v) {
                    Some(cap) => hw.min(cap),
                    None => {
                        eprintln!(
                            "steerlab: {ISA_ENV}={v:?} is not one of scalar, avx2, avx512; \
                             using {}",
                            hw.name()
                        );
                        hw
                    }
                },
                _ => hw,
            }
        })
    }

    /// `scalar`, `avx2` or `avx512` (case-insensitive).
    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// Every level this CPU can run, lowest first (tests compare them).
    pub fn supported() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| *i <= Isa::hardware())
            .collect()
    }
}

/// Map a ggml type to a covered format (None: not covered by these kernels).
pub fn format_of(dtype: candle_core::quantized::GgmlDType) -> Option<Format> {
    use candle_core::quantized::GgmlDType as G;
    Some(match dtype {
        G::Q4_0 => Format::Q4_0,
        G::Q4_1 => Format::Q4_1,
        G::Q5_0 => Format::Q5_0,
        G::Q8_0 => Format::Q8_0,
        G::Q4K => Format::Q4K,
        G::Q6K => Format::Q6K,
        _ => return None,
    })
}

/// Per-(group, block) scales: f16 when every value is exactly an f16 (Q4_0, Q4_1, Q5_0
/// and Q8_0 scales come from f16 fields), else f32 (K-quant products d * sc). f16 keeps
/// the packed U4 weights at 20 bytes per 32, as in the file: decode streams the
/// weights from memory once per token, so their size sets its speed.
enum Scales {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

/// A borrowed run of scales.
#[derive(Clone, Copy)]
pub enum ScaleSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

impl ScaleSlice<'_> {
    #[inline(always)]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            ScaleSlice::F32(v) => v[i],
            ScaleSlice::F16(v) => f16::from_bits(v[i]).to_f32(),
        }
    }
}

fn exact_f16(v: &[f32]) -> bool {
    v.par_iter()
        .all(|x| f16::from_f32(*x).to_f32().to_bits() == x.to_bits())
}

impl Scales {
    /// f16 storage if all of `vs` are exact f16 values, else f32.
    /// f16 when every value is exactly an f16, else f32.
    fn pack_one(v: Vec<f32>) -> Scales {
        if exact_f16(&v) {
            Scales::F16(v.par_iter().map(|x| f16::from_f32(*x).to_bits()).collect())
        } else {
            Scales::F32(v)
        }
    }
    /// Two tables stored alike: both f16 when both are exact, else both f32.
    fn pack_pair(a: Vec<f32>, b: Vec<f32>) -> (Scales, Scales) {
        if exact_f16(&a) && exact_f16(&b) {
            (Scales::pack_one(a), Scales::pack_one(b))
        } else {
            (Scales::F32(a), Scales::F32(b))
        }
    }
    fn is_f16(&self) -> bool {
        matches!(self, Scales::F16(_))
    }
    fn nbytes(&self) -> usize {
        match self {
            Scales::F32(v) => 4 * v.len(),
            Scales::F16(v) => 2 * v.len(),
        }
    }
    fn get(&self, i: usize) -> f32 {
        self.slice(i..i + 1).get(0)
    }
    fn slice(&self, r: std::ops::Range<usize>) -> ScaleSlice<'_> {
        match self {
            Scales::F32(v) => ScaleSlice::F32(&v[r]),
            Scales::F16(v) => ScaleSlice::F16(&v[r]),
        }
    }
    /// Address of scale `i` (for the AVX2 kernels, which know the element type).
    fn ptr(&self, i: usize) -> *const u8 {
        match self {
            Scales::F32(v) => v[i..].as_ptr() as *const u8,
            Scales::F16(v) => v[i..].as_ptr() as *const u8,
        }
    }
}

enum Packed {
    U4 { qs: Vec<u8>, d: Scales, m: Scales },
    I8 { qs: Vec<i8>, d: Scales },
}

/// A quantized weight matrix W [n, k] (n output features) in the kernels' layout.
pub struct QLinear {
    fmt: Format,
    n: usize,
    k: usize,
    nb: usize,
    groups: usize,
    w: Packed,
}

impl std::fmt::Debug for QLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QLinear({}, [{}, {}])", self.fmt.name(), self.n, self.k)
    }
}

/// Activation rows quantized to 8-bit blocks of 32.
pub struct QActs {
    k: usize,
    nb: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl QActs {
    /// Quantize `m` rows of `k` values (`k` a multiple of 32).
    pub fn new(x: &[f32], m: usize, k: usize) -> QActs {
        Self::new_isa(Isa::detect(), x, m, k)
    }

    fn new_isa(isa: Isa, x: &[f32], m: usize, k: usize) -> QActs {
        let nb = k / 32;
        let mut a = QActs {
            k,
            nb,
            q: vec![0; m * k],
            d: vec![0.0; m * nb],
            s: vec![0.0; m * nb],
        };
        for r in 0..m {
            let (xr, q, d, s) = (
                &x[r * k..(r + 1) * k],
                &mut a.q[r * k..(r + 1) * k],
                &mut a.d[r * nb..(r + 1) * nb],
                &mut a.s[r * nb..(r + 1) * nb],
            );
            match isa {
                #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                // SAFETY: Avx2 and above are only passed when the CPU has AVX2 and FMA
                // (`forward_isa` and `new` check), and the slices hold nb blocks.
                Isa::Avx2 | Isa::Avx512 => unsafe { avx2::quantize_row(xr, q, d, s) },
                _ => quantize_row(xr, q, d, s),
            }
        }
        a
    }

    fn row(&self, r: usize) -> (&[i8], &[f32], &[f32]) {
        (
            &self.q[r * self.k..(r + 1) * self.k],
            &self.d[r * self.nb..(r + 1) * self.nb],
            &self.s[r * self.nb..(r + 1) * self.nb],
        )
    }
}

/// One row to 8-bit blocks: d = max|x| / 127, q = round(x * 127 / max|x|) (ties to
/// even), and per block s = d * sum(q), the block sum of the *quantized* values (ggml's
/// Q8_1 `s`). With it the offset term m * s pairs with the same x̂ as the code term, so
/// a U4 dot equals dequantized-W · x̂ and the rounding errors of x̂ meet w = d q + m,
/// not d q alone: for Q4_1/Q4_0 weights (m ≈ -8d) that halves the error against an
/// exact Σx (measured on SmolLM2: 5e-3 vs 1.3e-2 RMS relative error per projection).
pub fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (b, xb) in x.chunks_exact(32).enumerate() {
        let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (qv, &v) in q[b * 32..b * 32 + 32].iter_mut().zip(xb) {
            *qv = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
            sum += *qv as i32;
        }
        d[b] = amax / 127.0;
        s[b] = d[b] * sum as f32;
    }
}

#[cfg(test)]
mod tests;
