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
//! - **Scalar = AVX2**: the portable kernels perform the same integer dots and the same
//!   `mul_add` chain, so they agree with the AVX2 ones bit for bit; AVX2 + FMA is chosen
//!   at run time (`is_x86_feature_detected!`), so one build runs everywhere.
//! - Accuracy: against the dequantized-weight f32 product, the error of an output is at
//!   most sum over blocks of (d_x / 2) * sum |w| (rounding the activations), plus f32
//!   rounding; the unit tests check that bound.

pub mod formats;
pub mod scalar;
pub mod vecops;

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub mod avx2;

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
/// Groups of 8 features whose weights stay in cache while a chunk of rows streams past.
const GROUP_CHUNK: usize = 16;
/// Up to this many rows, threads split the output features (each thread reads part of
/// W once); above, threads split the rows.
const SMALL_M: usize = 32;
/// Rows per task when splitting rows.
const ROW_CHUNK: usize = 32;
/// Multiply-adds below which a call is not worth a second thread.
const MIN_TASK_WORK: usize = 1 << 19;

/// Instruction set of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
}

impl Isa {
    /// The best one this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
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
    fn pack(vs: Vec<Vec<f32>>) -> Vec<Scales> {
        if vs.iter().all(|v| exact_f16(v)) {
            vs.into_iter()
                .map(|v| Scales::F16(v.par_iter().map(|x| f16::from_f32(*x).to_bits()).collect()))
                .collect()
        } else {
            vs.into_iter().map(Scales::F32).collect()
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
                // SAFETY: Avx2 is only passed when the CPU has AVX2 and FMA (`forward_isa`
                // and `new` check), and the slices hold nb blocks.
                Isa::Avx2 => unsafe { avx2::quantize_row(xr, q, d, s) },
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

impl QLinear {
    /// Repack GGUF blocks of a [n, k] weight (rows of `k / block_len` blocks).
    pub fn from_gguf(fmt: Format, raw: &[u8], n: usize, k: usize) -> Result<QLinear> {
        let bl = fmt.block_len();
        if k == 0 || n == 0 || k % bl != 0 {
            return Err(Error::format(format!(
                "{} weight [{n}, {k}]: the row length must be a positive multiple of {bl}",
                fmt.name()
            )));
        }
        let row_bytes = k / bl * fmt.block_bytes();
        if raw.len() != n * row_bytes {
            return Err(Error::format(format!(
                "{} weight [{n}, {k}]: {} bytes of data, expected {}",
                fmt.name(),
                raw.len(),
                n * row_bytes
            )));
        }
        let nb = k / 32;
        let groups = n.div_ceil(8);
        let w = match fmt.family() {
            Family::U4 => {
                let mut qs = vec![0u8; groups * nb * U4_GROUP_BLOCK];
                let mut d = vec![0f32; groups * nb * 8];
                let mut m = vec![0f32; groups * nb * 8];
                // Groups of 8 rows are independent: repack them in parallel.
                qs.par_chunks_mut(nb * U4_GROUP_BLOCK)
                    .zip(d.par_chunks_mut(nb * 8))
                    .zip(m.par_chunks_mut(nb * 8))
                    .zip(raw.par_chunks(8 * row_bytes))
                    .for_each(|(((qs, d), m), rows)| {
                        let mut blocks: Vec<U4Block> = Vec::with_capacity(nb);
                        for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
                            blocks.clear();
                            formats::decode_u4_row(fmt, row, &mut blocks);
                            for (b, blk) in blocks.iter().enumerate() {
                                let base = b * U4_GROUP_BLOCK;
                                for s in 0..4 {
                                    for t in 0..4 {
                                        qs[base + s * 32 + r * 4 + t] =
                                            blk.q[4 * s + t] | (blk.q[16 + 4 * s + t] << 4);
                                    }
                                }
                                d[b * 8 + r] = blk.d;
                                m[b * 8 + r] = blk.m;
                            }
                        }
                    });
                let mut sc = Scales::pack(vec![d, m]).into_iter();
                match (sc.next(), sc.next()) {
                    (Some(d), Some(m)) => Packed::U4 { qs, d, m },
                    _ => unreachable!("Scales::pack returns one entry per input"),
                }
            }
            Family::I8 => {
                let ds = fmt.d_stride();
                let mut qs = vec![0i8; groups * nb * I8_GROUP_BLOCK];
                let mut d = vec![0f32; groups * nb * ds];
                qs.par_chunks_mut(nb * I8_GROUP_BLOCK)
                    .zip(d.par_chunks_mut(nb * ds))
                    .zip(raw.par_chunks(8 * row_bytes))
                    .for_each(|((qs, d), rows)| {
                        let mut blocks: Vec<I8Block> = Vec::with_capacity(nb);
                        for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
                            blocks.clear();
                            formats::decode_i8_row(fmt, row, &mut blocks);
                            for (b, blk) in blocks.iter().enumerate() {
                                let base = b * I8_GROUP_BLOCK;
                                for s in 0..8 {
                                    for t in 0..4 {
                                        qs[base + s * 32 + r * 4 + t] = blk.q[4 * s + t];
                                    }
                                }
                                d[b * ds + r] = blk.d[0];
                                if ds == 16 {
                                    d[b * ds + 8 + r] = blk.d[1];
                                }
                            }
                        }
                    });
                match Scales::pack(vec![d]).pop() {
                    Some(d) => Packed::I8 { qs, d },
                    None => unreachable!("Scales::pack returns one entry per input"),
                }
            }
        };
        Ok(QLinear {
            fmt,
            n,
            k,
            nb,
            groups,
            w,
        })
    }

    pub fn format(&self) -> Format {
        self.fmt
    }
    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Whether the scales are stored as f16 (else f32).
    pub fn f16_scales(&self) -> bool {
        match &self.w {
            Packed::U4 { d, .. } | Packed::I8 { d, .. } => d.is_f16(),
        }
    }

    /// Bytes held by the packed weights.
    pub fn nbytes(&self) -> usize {
        match &self.w {
            Packed::U4 { qs, d, m } => qs.len() + d.nbytes() + m.nbytes(),
            Packed::I8 { qs, d } => qs.len() + d.nbytes(),
        }
    }

    /// Row `j` of W as f32 (the exact dequantization of the stored blocks).
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) -> Result<()> {
        if j >= self.n || out.len() != self.k {
            return Err(Error::shape(format!(
                "dequantize_row: row {j} of {} into {} values (expected {})",
                self.n,
                out.len(),
                self.k
            )));
        }
        let (g, r) = (j / 8, j % 8);
        for b in 0..self.nb {
            let gb = g * self.nb + b;
            let o = &mut out[b * 32..b * 32 + 32];
            match &self.w {
                Packed::U4 { qs, d, m } => {
                    let base = gb * U4_GROUP_BLOCK;
                    let (db, mb) = (d.get(gb * 8 + r), m.get(gb * 8 + r));
                    for s in 0..4 {
                        for t in 0..4 {
                            let byte = qs[base + s * 32 + r * 4 + t];
                            o[4 * s + t] = db * (byte & 0x0F) as f32 + mb;
                            o[16 + 4 * s + t] = db * (byte >> 4) as f32 + mb;
                        }
                    }
                }
                Packed::I8 { qs, d } => {
                    let base = gb * I8_GROUP_BLOCK;
                    let ds = self.fmt.d_stride();
                    for s in 0..8 {
                        let half = if ds == 16 { s / 4 } else { 0 };
                        let db = d.get(gb * ds + half * 8 + r);
                        for t in 0..4 {
                            o[4 * s + t] = db * qs[base + s * 32 + r * 4 + t] as f32;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// W as a row-major f32 [n, k] matrix.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        for (j, row) in out.chunks_exact_mut(self.k).enumerate() {
            // The shapes are ours, so this cannot fail.
            let _ = self.dequantize_row(j, row);
        }
        out
    }

    /// y [m, n] = x [m, k] · Wᵀ with the best kernels for this CPU.
    pub fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        self.forward_isa(Isa::detect(), x, m, y)
    }

    /// As `forward`, with the instruction set given (tests compare them).
    pub fn forward_isa(&self, isa: Isa, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        let (n, k) = (self.n, self.k);
        if x.len() != m * k || y.len() != m * n {
            return Err(Error::shape(format!(
                "quantized matmul: x has {} values and y {} for {m} rows of a [{n}, {k}] \
                 weight (expected {} and {})",
                x.len(),
                y.len(),
                m * k,
                m * n
            )));
        }
        if m == 0 {
            return Ok(());
        }
        let isa = if isa == Isa::Avx2 && Isa::detect() != Isa::Avx2 {
            Isa::Scalar
        } else {
            isa
        };
        let threads = rayon::current_num_threads().max(1);
        let work = m * n * k;
        if m <= SMALL_M {
            let acts = QActs::new_isa(isa, x, m, k);
            let tasks = threads.min(work / MIN_TASK_WORK).clamp(1, self.groups);
            if tasks == 1 {
                self.compute(isa, &acts, 0..m, 0..self.groups, y, n);
                return Ok(());
            }
            // Threads take contiguous ranges of groups and write their own columns.
            let per = self.groups.div_ceil(tasks);
            let parts: Vec<(usize, Vec<f32>)> = (0..tasks)
                .into_par_iter()
                .map(|t| {
                    let g0 = (t * per).min(self.groups);
                    let g1 = ((t + 1) * per).min(self.groups);
                    let cols = (g1 * 8).min(n) - (g0 * 8).min(n);
                    let mut buf = vec![0f32; m * cols];
                    self.compute(isa, &acts, 0..m, g0..g1, &mut buf, cols);
                    (g0 * 8, buf)
                })
                .collect();
            for (c0, buf) in parts {
                let cols = buf.len() / m; // m > 0: returned early above
                if cols == 0 {
                    continue;
                }
                for (yr, br) in y.chunks_exact_mut(n).zip(buf.chunks_exact(cols)) {
                    yr[c0..c0 + cols].copy_from_slice(br);
                }
            }
        } else {
            // Threads take chunks of rows; each quantizes and computes its own rows.
            y.par_chunks_mut(ROW_CHUNK * n)
                .zip(x.par_chunks(ROW_CHUNK * k))
                .for_each(|(yc, xc)| {
                    let rows = xc.len() / k;
                    let acts = QActs::new_isa(isa, xc, rows, k);
                    self.compute(isa, &acts, 0..rows, 0..self.groups, yc, n);
                });
        }
        Ok(())
    }

    /// Rows `rows` of `acts` against groups `groups`, into `out` (row stride `ld`, column
    /// 0 = first feature of `groups.start`).
    fn compute(
        &self,
        isa: Isa,
        acts: &QActs,
        rows: std::ops::Range<usize>,
        groups: std::ops::Range<usize>,
        out: &mut [f32],
        ld: usize,
    ) {
        let col0 = groups.start * 8;
        let mut gc = groups.start;
        while gc < groups.end {
            let gc_end = (gc + GROUP_CHUNK).min(groups.end);
            let mut r = rows.start;
            while r < rows.end {
                let c = (rows.end - r).min(TILE);
                for g in gc..gc_end {
                    let mut tile = [[0f32; 8]; TILE];
                    match c {
                        4 => self.tile::<4>(isa, g, acts, r, &mut tile),
                        3 => self.tile3(isa, g, acts, r, &mut tile),
                        2 => self.tile2(isa, g, acts, r, &mut tile),
                        _ => self.tile1(isa, g, acts, r, &mut tile),
                    }
                    let f0 = g * 8;
                    let cols = (self.n - f0).min(8);
                    for (i, t) in tile.iter().enumerate().take(c) {
                        let o = (r - rows.start + i) * ld + f0 - col0;
                        out[o..o + cols].copy_from_slice(&t[..cols]);
                    }
                }
                r += c;
            }
            gc = gc_end;
        }
    }

    fn tile3(&self, isa: Isa, g: usize, acts: &QActs, r: usize, out: &mut [[f32; 8]; TILE]) {
        let mut t = [[0f32; 8]; 3];
        self.tile::<3>(isa, g, acts, r, &mut t);
        out[..3].copy_from_slice(&t);
    }
    fn tile2(&self, isa: Isa, g: usize, acts: &QActs, r: usize, out: &mut [[f32; 8]; TILE]) {
        let mut t = [[0f32; 8]; 2];
        self.tile::<2>(isa, g, acts, r, &mut t);
        out[..2].copy_from_slice(&t);
    }
    fn tile1(&self, isa: Isa, g: usize, acts: &QActs, r: usize, out: &mut [[f32; 8]; TILE]) {
        let mut t = [[0f32; 8]; 1];
        self.tile::<1>(isa, g, acts, r, &mut t);
        out[..1].copy_from_slice(&t);
    }

    /// Rows r..r+C of `acts` against group g.
    fn tile<const C: usize>(
        &self,
        isa: Isa,
        g: usize,
        acts: &QActs,
        r: usize,
        out: &mut [[f32; 8]; C],
    ) {
        let nb = self.nb;
        debug_assert_eq!(acts.nb, nb);
        debug_assert!(g < self.groups && r + C <= acts.q.len() / acts.k.max(1));
        match (&self.w, isa) {
            (Packed::U4 { qs, d, m }, Isa::Scalar) => {
                let (qs, d, m) = (
                    &qs[g * nb * U4_GROUP_BLOCK..(g + 1) * nb * U4_GROUP_BLOCK],
                    d.slice(g * nb * 8..(g + 1) * nb * 8),
                    m.slice(g * nb * 8..(g + 1) * nb * 8),
                );
                for (c, o) in out.iter_mut().enumerate() {
                    let (xq, xd, xs) = acts.row(r + c);
                    *o = scalar::u4_group(qs, d, m, nb, xq, xd, xs);
                }
            }
            (Packed::I8 { qs, d }, Isa::Scalar) => {
                let ds = self.fmt.d_stride();
                let (qs, d) = (
                    &qs[g * nb * I8_GROUP_BLOCK..(g + 1) * nb * I8_GROUP_BLOCK],
                    d.slice(g * nb * ds..(g + 1) * nb * ds),
                );
                let split = self.fmt.split_scales();
                for (c, o) in out.iter_mut().enumerate() {
                    let (xq, xd, _) = acts.row(r + c);
                    *o = scalar::i8_group(qs, d, nb, split, xq, xd);
                }
            }
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            (Packed::U4 { qs, d, m }, Isa::Avx2) => {
                let xq: [*const i8; C] = std::array::from_fn(|c| acts.row(r + c).0.as_ptr());
                let xd: [*const f32; C] = std::array::from_fn(|c| acts.row(r + c).1.as_ptr());
                let xs: [*const f32; C] = std::array::from_fn(|c| acts.row(r + c).2.as_ptr());
                // SAFETY: `forward_isa` only passes Avx2 when the CPU has AVX2 and FMA;
                // the group's slices hold `nb` blocks (checked at packing) and each
                // activation row `k = 32 * nb` codes and `nb` scales and sums.
                let (qp, dp, mp) = (
                    qs[g * nb * U4_GROUP_BLOCK..].as_ptr(),
                    d.ptr(g * nb * 8),
                    m.ptr(g * nb * 8),
                );
                unsafe {
                    if d.is_f16() {
                        avx2::u4_tile::<C, true>(qp, dp, mp, nb, xq, xd, xs, out)
                    } else {
                        avx2::u4_tile::<C, false>(qp, dp, mp, nb, xq, xd, xs, out)
                    }
                }
            }
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            (Packed::I8 { qs, d }, Isa::Avx2) => {
                let xq: [*const i8; C] = std::array::from_fn(|c| acts.row(r + c).0.as_ptr());
                let xd: [*const f32; C] = std::array::from_fn(|c| acts.row(r + c).1.as_ptr());
                let (qp, dp) = (
                    qs[g * nb * I8_GROUP_BLOCK..].as_ptr(),
                    d.ptr(g * nb * self.fmt.d_stride()),
                );
                let h = d.is_f16();
                // SAFETY: as for U4 above.
                unsafe {
                    match (self.fmt, h) {
                        (Format::Q5_0, true) => {
                            avx2::i8_tile::<C, 8, false, true>(qp, dp, nb, xq, xd, out)
                        }
                        (Format::Q5_0, false) => {
                            avx2::i8_tile::<C, 8, false, false>(qp, dp, nb, xq, xd, out)
                        }
                        (Format::Q6K, true) => {
                            avx2::i8_tile::<C, 4, true, true>(qp, dp, nb, xq, xd, out)
                        }
                        (Format::Q6K, false) => {
                            avx2::i8_tile::<C, 4, true, false>(qp, dp, nb, xq, xd, out)
                        }
                        (_, true) => avx2::i8_tile::<C, 1, false, true>(qp, dp, nb, xq, xd, out),
                        (_, false) => avx2::i8_tile::<C, 1, false, false>(qp, dp, nb, xq, xd, out),
                    }
                }
            }
            #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
            (_, Isa::Avx2) => unreachable!("Isa::Avx2 is never detected off x86"),
        }
    }
}

#[cfg(test)]
mod tests;
