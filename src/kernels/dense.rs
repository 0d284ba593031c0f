//! f32 GEMMs for frozen projections y = x · Wᵀ (W [n, k] row-major): the forward, and
//! the backward with respect to the input, dL/dx = dL/dy · W. Both call the `gemm` crate
//! (the GEMM candle's CPU matmul uses) with threads from the current rayon pool.
//!
//! The quantized weights' backward (`QLinear::grad_input`) dequantizes W a block of
//! output rows at a time and accumulates each block's product, so no f32 copy of the
//! whole matrix is made: at most `GRAD_BLOCK_ROWS * k` floats live at once.

use rayon::prelude::*;

use super::QLinear;
use crate::error::{Error, Result};

/// Output rows of W dequantized per step of a quantized backward.
pub const GRAD_BLOCK_ROWS: usize = 256;

fn parallelism() -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

fn check(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(format!(
            "{what}: {got} values, expected {want}"
        )));
    }
    Ok(())
}

/// y [m, n] = x [m, k] · Wᵀ, W [n, k] row-major: the arguments candle's CPU matmul
/// passes `gemm` for this product (so the same bits as candle's matmul of x and Wᵀ).
pub fn matmul_t(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>> {
    // Wᵀ read from the n x k row-major W: column stride k, row stride 1.
    product(x, w, m, n, k, (k as isize, 1), parallelism())
}

/// y [m, n] = x [m, k] · W, W [k, n] row-major, on the calling thread (for small products
/// inside a step that already keeps the engine's threads busy). Same arguments for every
/// `m`, so each row's bits depend only on that row once `m >= 2`.
pub fn matmul_serial(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>> {
    product(x, w, m, n, k, (1, n as isize), gemm::Parallelism::None)
}

/// y [m, n] = x [m, k] · B with B the k x n matrix read from `w` (n·k values) with
/// (column stride, row stride) `rhs`.
fn product(
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    rhs: (isize, isize),
    par: gemm::Parallelism,
) -> Result<Vec<f32>> {
    check("dense matmul: activations", x.len(), m * k)?;
    check("dense matmul: weight", w.len(), n * k)?;
    let mut y = vec![0f32; m * n];
    if m > 0 && n > 0 && k > 0 {
        // SAFETY: dst is m x n (row stride n), lhs m x k (row stride k), rhs k x n read
        // with the given strides from n·k values (both layouts the callers pass stay
        // inside them); lengths checked above.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                rhs.0,
                rhs.1,
                0f32,
                1f32,
                false,
                false,
                false,
                par,
            )
        }
    }
    Ok(y)
}

/// gx [m, k] (+)= g[:, c0..c0 + r] · W_blk, where g is [m, ld] row-major and W_blk [r, k]
/// row-major (`accumulate`: add to gx, else overwrite it).
#[allow(clippy::too_many_arguments)]
fn accumulate_block(
    gx: &mut [f32],
    g: &[f32],
    ld: usize,
    c0: usize,
    w: &[f32],
    m: usize,
    r: usize,
    k: usize,
    accumulate: bool,
) {
    if m == 0 || k == 0 || r == 0 {
        return;
    }
    debug_assert!(gx.len() == m * k && w.len() == r * k && c0 + r <= ld && g.len() == m * ld);
    // SAFETY: dst gx is m x k (row stride k); lhs is the m x r window of g starting at
    // column c0 (row stride ld, c0 + r <= ld); rhs W_blk is r x k (row stride k). The
    // callers size every slice from (m, ld, r, k).
    unsafe {
        gemm::gemm(
            m,
            k,
            r,
            gx.as_mut_ptr(),
            1,
            k as isize,
            accumulate,
            g[c0..].as_ptr(),
            1,
            ld as isize,
            w.as_ptr(),
            1,
            k as isize,
            if accumulate { 1f32 } else { 0f32 },
            1f32,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

/// dL/dx [m, k] = dL/dy [m, n] · W, W [n, k] row-major (the backward of `matmul_t`
/// with respect to x): one GEMM.
pub fn grad_input(g: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>> {
    check("dense matmul backward: output gradient", g.len(), m * n)?;
    check("dense matmul backward: weight", w.len(), n * k)?;
    let mut gx = vec![0f32; m * k];
    if n == 0 {
        return Ok(gx);
    }
    accumulate_block(&mut gx, g, n, 0, w, m, n, k, false);
    Ok(gx)
}

/// dL/dx [m, k] = dL/dy [m, n] · W for a weight stored in blocks: `dequantize(j0, out)`
/// writes rows j0 .. j0 + out.len() / k of W as f32. W is dequantized
/// `GRAD_BLOCK_ROWS` rows at a time (one buffer reused), each block's product added in.
pub fn grad_input_blocked(
    g: &[f32],
    m: usize,
    n: usize,
    k: usize,
    dequantize: impl Fn(usize, &mut [f32]) -> Result<()>,
) -> Result<Vec<f32>> {
    check("quantized matmul backward: output gradient", g.len(), m * n)?;
    let mut gx = vec![0f32; m * k];
    let mut buf = vec![0f32; GRAD_BLOCK_ROWS.min(n) * k];
    let mut j0 = 0;
    while j0 < n {
        let r = GRAD_BLOCK_ROWS.min(n - j0);
        let w = &mut buf[..r * k];
        dequantize(j0, w)?;
        accumulate_block(&mut gx, g, n, j0, w, m, r, k, j0 > 0);
        j0 += r;
    }
    Ok(gx)
}

impl QLinear {
    /// Rows j0 .. j0 + out.len() / k of W as f32 (exact, as `dequantize_row`), split
    /// over the rayon pool.
    pub fn dequantize_rows(&self, j0: usize, out: &mut [f32]) -> Result<()> {
        let k = self.k();
        if out.len() % k != 0 || j0 + out.len() / k > self.n() {
            return Err(Error::shape(format!(
                "dequantize_rows: rows from {j0}, {} values, for a [{}, {k}] weight",
                out.len(),
                self.n()
            )));
        }
        // Bounds checked above, so no row can fail.
        out.par_chunks_mut(k)
            .enumerate()
            .with_min_len(16)
            .try_for_each(|(i, row)| self.dequantize_row(j0 + i, row))
    }

    /// dL/dx [m, k] = dL/dy [m, n] · W with W dequantized exactly (no activation
    /// quantization: the gradient of the dequantized-weight product), a block of
    /// `GRAD_BLOCK_ROWS` output rows at a time.
    pub fn grad_input(&self, g: &[f32], m: usize) -> Result<Vec<f32>> {
        grad_input_blocked(g, m, self.n(), self.k(), |j0, out| {
            self.dequantize_rows(j0, out)
        })
    }
}
