//! `QLinear`: repacking GGUF blocks for the CPU kernels and the projections over them
//! (forward, and the input gradient of a frozen weight).

use super::*;

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
                    .try_for_each(|(((qs, d), m), rows)| -> Result<()> {
                        let mut blocks: Vec<U4Block> = Vec::with_capacity(nb);
                        for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
                            blocks.clear();
                            formats::decode_u4_row(fmt, row, &mut blocks)?;
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
                        Ok(())
                    })?;
                let (d, m) = Scales::pack_pair(d, m);
                Packed::U4 { qs, d, m }
            }
            Family::I8 => {
                let ds = fmt.d_stride();
                let mut qs = vec![0i8; groups * nb * I8_GROUP_BLOCK];
                let mut d = vec![0f32; groups * nb * ds];
                qs.par_chunks_mut(nb * I8_GROUP_BLOCK)
                    .zip(d.par_chunks_mut(nb * ds))
                    .zip(raw.par_chunks(8 * row_bytes))
                    .try_for_each(|((qs, d), rows)| -> Result<()> {
                        let mut blocks: Vec<I8Block> = Vec::with_capacity(nb);
                        for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
                            blocks.clear();
                            formats::decode_i8_row(fmt, row, &mut blocks)?;
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
                        Ok(())
                    })?;
                Packed::I8 {
                    qs,
                    d: Scales::pack_one(d),
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
        // Never above what the CPU runs (the kernels' safety rests on it).
        let isa = isa.min(Isa::hardware());
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
        // AVX-512 computes two groups per call; a lone last group takes the AVX2 kernel
        // (the same bits), and so does a single row (batch-1 decode streams the weights
        // once per token; there the AVX2 kernel measured 7% less CPU time).
        let pairs = isa == Isa::Avx512 && rows.len() > 1;
        let isa8 = isa.min(Isa::Avx2);
        let mut gc = groups.start;
        while gc < groups.end {
            let gc_end = (gc + GROUP_CHUNK).min(groups.end);
            let step = if pairs { TILE16 } else { TILE };
            let mut r = rows.start;
            while r < rows.end {
                let rc = (rows.end - r).min(step);
                let mut g = gc;
                while g < gc_end {
                    let f0 = g * 8;
                    if pairs && g + 1 < gc_end {
                        let mut tile = [[0f32; 16]; TILE16];
                        match rc {
                            8 => self.tile16::<8>(g, acts, r, &mut tile),
                            7 => self.tile16_part::<7>(g, acts, r, &mut tile),
                            6 => self.tile16_part::<6>(g, acts, r, &mut tile),
                            5 => self.tile16_part::<5>(g, acts, r, &mut tile),
                            4 => self.tile16_part::<4>(g, acts, r, &mut tile),
                            3 => self.tile16_part::<3>(g, acts, r, &mut tile),
                            2 => self.tile16_part::<2>(g, acts, r, &mut tile),
                            _ => self.tile16_part::<1>(g, acts, r, &mut tile),
                        }
                        let cols = (self.n - f0).min(16);
                        for (i, t) in tile.iter().enumerate().take(rc) {
                            let o = (r - rows.start + i) * ld + f0 - col0;
                            out[o..o + cols].copy_from_slice(&t[..cols]);
                        }
                        g += 2;
                        continue;
                    }
                    let mut r4 = r;
                    while r4 < r + rc {
                        let c = (r + rc - r4).min(TILE);
                        let mut tile = [[0f32; 8]; TILE];
                        match c {
                            4 => self.tile::<4>(isa8, g, acts, r4, &mut tile),
                            3 => self.tile_part::<3>(isa8, g, acts, r4, &mut tile),
                            2 => self.tile_part::<2>(isa8, g, acts, r4, &mut tile),
                            _ => self.tile_part::<1>(isa8, g, acts, r4, &mut tile),
                        }
                        let cols = (self.n - f0).min(8);
                        for (i, t) in tile.iter().enumerate().take(c) {
                            let o = (r4 - rows.start + i) * ld + f0 - col0;
                            out[o..o + cols].copy_from_slice(&t[..cols]);
                        }
                        r4 += c;
                    }
                    g += 1;
                }
                r += rc;
            }
            gc = gc_end;
        }
    }

    /// `tile::<C>` for C < TILE rows, into the first C rows of a full tile.
    fn tile_part<const C: usize>(
        &self,
        isa: Isa,
        g: usize,
        acts: &QActs,
        r: usize,
        out: &mut [[f32; 8]; TILE],
    ) {
        let mut t = [[0f32; 8]; C];
        self.tile::<C>(isa, g, acts, r, &mut t);
        out[..C].copy_from_slice(&t);
    }

    /// `tile16::<C>` for C < TILE16 rows, into the first C rows of a full tile.
    fn tile16_part<const C: usize>(
        &self,
        g: usize,
        acts: &QActs,
        r: usize,
        out: &mut [[f32; 16]; TILE16],
    ) {
        let mut t = [[0f32; 16]; C];
        self.tile16::<C>(g, acts, r, &mut t);
        out[..C].copy_from_slice(&t);
    }

    /// Rows r..r+C of `acts` against groups g and g + 1 with the AVX-512 kernels.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    fn tile16<const C: usize>(&self, g: usize, acts: &QActs, r: usize, out: &mut [[f32; 16]; C]) {
        let nb = self.nb;
        debug_assert!(g + 1 < self.groups && r + C <= acts.q.len() / acts.k.max(1));
        let xq: [*const i8; C] = std::array::from_fn(|c| acts.row(r + c).0.as_ptr());
        let xd: [*const f32; C] = std::array::from_fn(|c| acts.row(r + c).1.as_ptr());
        match &self.w {
            Packed::U4 { qs, d, m } => {
                let xs: [*const f32; C] = std::array::from_fn(|c| acts.row(r + c).2.as_ptr());
                let qp = [
                    qs[g * nb * U4_GROUP_BLOCK..].as_ptr(),
                    qs[(g + 1) * nb * U4_GROUP_BLOCK..].as_ptr(),
                ];
                let dp = [d.ptr(g * nb * 8), d.ptr((g + 1) * nb * 8)];
                let mp = [m.ptr(g * nb * 8), m.ptr((g + 1) * nb * 8)];
                // SAFETY: `compute` only pairs groups when `forward_isa` settled on Avx512,
                // which it caps at `Isa::hardware()`; both groups exist (g + 1 < groups)
                // and hold `nb` blocks, and each activation row `32 * nb` codes and `nb`
                // scales and sums.
                unsafe {
                    if d.is_f16() {
                        avx512::u4_tile::<C, true>(qp, dp, mp, nb, xq, xd, xs, out)
                    } else {
                        avx512::u4_tile::<C, false>(qp, dp, mp, nb, xq, xd, xs, out)
                    }
                }
            }
            Packed::I8 { qs, d } => {
                let ds = self.fmt.d_stride();
                let qp = [
                    qs[g * nb * I8_GROUP_BLOCK..].as_ptr(),
                    qs[(g + 1) * nb * I8_GROUP_BLOCK..].as_ptr(),
                ];
                let dp = [d.ptr(g * nb * ds), d.ptr((g + 1) * nb * ds)];
                // SAFETY: as for U4 above.
                unsafe {
                    match (self.fmt.split_scales(), d.is_f16()) {
                        (true, true) => avx512::i8_tile::<C, true, true>(qp, dp, nb, xq, xd, out),
                        (true, false) => avx512::i8_tile::<C, true, false>(qp, dp, nb, xq, xd, out),
                        (false, true) => avx512::i8_tile::<C, false, true>(qp, dp, nb, xq, xd, out),
                        (false, false) => {
                            avx512::i8_tile::<C, false, false>(qp, dp, nb, xq, xd, out)
                        }
                    }
                }
            }
        }
    }

    /// Off x86 (where `Isa::Avx512` is never detected): the two groups by the scalar
    /// kernel, so the function stays total.
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    fn tile16<const C: usize>(&self, g: usize, acts: &QActs, r: usize, out: &mut [[f32; 16]; C]) {
        for half in 0..2 {
            let mut t = [[0f32; 8]; C];
            self.tile::<C>(Isa::Scalar, g + half, acts, r, &mut t);
            for (o, t) in out.iter_mut().zip(&t) {
                o[half * 8..half * 8 + 8].copy_from_slice(t);
            }
        }
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
            (Packed::U4 { qs, d, m }, Isa::Avx2 | Isa::Avx512) => {
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
            (Packed::I8 { qs, d }, Isa::Avx2 | Isa::Avx512) => {
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
            // Off x86 the SIMD levels are never detected; the scalar kernel keeps this total.
            #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
            (_, Isa::Avx2 | Isa::Avx512) => self.tile::<C>(Isa::Scalar, g, acts, r, out),
        }
    }
}
