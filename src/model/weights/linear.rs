//! Frozen projections and token embeddings: y = x · Wᵀ with W dense (f32), repacked for
//! steerlab's CPU kernels, or in candle's quantized storage.
//!
//! Each kind of weight runs as one candle custom op, the same in inference and in
//! gradient mode: the forward is the fast kernel, and the backward gives the gradient
//! with respect to the input only, dL/dx = dL/dy · W (the weights are frozen: no weight
//! gradient is ever computed). Quantized weights are dequantized on the fly in blocks of
//! output rows for the backward (`kernels::dense`), so training through `dtype="auto"`
//! gets the gradient of the dequantized-weight product (the straight-through estimate
//! for the 8-bit activation rounding of the CPU kernels). candle records the op only
//! when the input tracks gradients, so inference pays nothing for it.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::{ggml_file, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Tensor};

use crate::error::{Error, Result};
use crate::kernels::{self, dense, QLinear};

/// A token embedding table: quantized rows are dequantized on lookup.
#[derive(Debug, Clone)]
pub enum Embedding {
    /// Repacked for the CPU kernels; the tied output projection shares it.
    Packed(Arc<QLinear>),
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    /// ids [b, t] u32 -> [b, t, d] f32
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Embedding::Packed(q) => {
                let (b, t) = ids.dims2()?;
                let d = q.k();
                let flat = ids.flatten_all()?.to_vec1::<u32>()?;
                let mut out = vec![0f32; flat.len() * d];
                for (&id, row) in flat.iter().zip(out.chunks_exact_mut(d)) {
                    q.dequantize_row(id as usize, row).map_err(|_| {
                        Error::out_of_range(format!(
                            "token id {id} is out of range for a vocabulary of {}",
                            q.n()
                        ))
                    })?;
                }
                Tensor::from_vec(out, (b, t, d), ids.device())?
            }
            Embedding::Quantized(q) => q.embedding(ids)?,
            Embedding::Dense(w) => {
                let (b, t) = ids.dims2()?;
                let flat = ids.flatten_all()?;
                let d = w.dim(1)?;
                w.index_select(&flat, 0)?.reshape((b, t, d))?
            }
        })
    }

    /// The same table as an output projection (tied embeddings).
    pub fn as_linear(&self) -> Result<Linear> {
        Ok(match self {
            Embedding::Packed(q) => Linear::Packed(q.clone()),
            Embedding::Quantized(q) => Linear::from_qmatmul(QMatMul::from_arc(q.clone())?),
            Embedding::Dense(w) => Linear::Dense(w.clone()),
        })
    }
}

/// A projection y = x · Wᵀ with W [out, in]; differentiable with respect to x (every
/// variant). W is frozen (gets no gradient) except in `Trained`, which says so in its
/// type rather than being guessed from the tensor.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Frozen f32 weights: the `gemm` crate on the CPU, candle's matmul on other devices.
    Dense(Tensor),
    /// f32 weights that are trained (a candle `Var`, e.g. a trainable copy of a block):
    /// candle's matmul, whose backward also gives the weight its gradient.
    Trained(Tensor),
    /// GGUF blocks repacked for steerlab's CPU kernels (`crate::kernels`): 8-bit
    /// activation blocks and integer dots, batch-invariant by construction.
    Packed(Arc<QLinear>),
    /// candle's quantized matmul: CUDA, and the formats the CPU kernels do not cover.
    Candle(QMatMul),
}

impl Linear {
    /// Keep GGUF blocks on the CPU kernels when they cover the format, else candle's.
    pub(super) fn quantized(q: QTensor) -> Result<Linear> {
        if q.device().is_cpu() {
            if let Some(fmt) = kernels::format_of(q.dtype()) {
                let (n, k) = q.shape().dims2()?;
                let raw = q.data()?;
                return Ok(Linear::Packed(Arc::new(QLinear::from_gguf(
                    fmt, &raw, n, k,
                )?)));
            }
        }
        Ok(Linear::from_qmatmul(QMatMul::from_qtensor(q)?))
    }

    /// The weight W [out, in] as a dense f32 tensor on `device` (dequantized when the
    /// weight is quantized): the starting value of a trainable copy.
    pub fn dense_f32(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            Linear::Dense(w) | Linear::Trained(w) => w.to_dtype(DType::F32)?.copy()?,
            Linear::Packed(q) => Tensor::from_vec(q.dequantize(), (q.n(), q.k()), device)?,
            Linear::Candle(QMatMul::QTensor(q)) => q.dequantize(device)?,
            Linear::Candle(QMatMul::TensorF16(w)) | Linear::Candle(QMatMul::Tensor(w)) => {
                w.to_dtype(DType::F32)?
            }
        }
        .to_device(device)?)
    }

    /// A trainable copy: W [out, in] dequantized to f32 as a new `Var` (registered in
    /// `vars` under `name`), as [`Linear::Trained`].
    pub fn trainable(
        &self,
        name: String,
        device: &Device,
        vars: &mut Vec<(String, candle_core::Var)>,
    ) -> Result<Linear> {
        let v = candle_core::Var::from_tensor(&self.dense_f32(device)?)?;
        let t = v.as_tensor().clone();
        vars.push((name, v));
        Ok(Linear::Trained(t))
    }

    /// candle dequantizes float GGUF tensors (F32/F16/BF16) at load: those are dense.
    fn from_qmatmul(m: QMatMul) -> Linear {
        match m {
            QMatMul::Tensor(w) => Linear::Dense(w),
            m => Linear::Candle(m),
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let op = match self {
            Linear::Dense(w) if w.device().is_cpu() => Frozen::Dense(w.clone()),
            // Off the CPU, and a trained weight: candle's matmul.
            Linear::Dense(w) | Linear::Trained(w) => {
                let w = match *xs.dims() {
                    [b1, b2, _, _] => w.broadcast_left((b1, b2))?.t()?,
                    [bsize, _, _] => w.broadcast_left(bsize)?.t()?,
                    _ => w.t()?,
                };
                return xs.matmul(&w);
            }
            Linear::Packed(q) => Frozen::Packed(q.clone()),
            Linear::Candle(QMatMul::QTensor(q)) => Frozen::Candle(q.clone()),
            // candle's f16 dequantize-all mode (CANDLE_DEQUANTIZE_ALL_F16): its matmul
            // through f16, differentiable op by op.
            Linear::Candle(m) => return m.forward(xs),
        };
        // `apply_op1` records the op (for the backward) only when xs tracks gradients.
        xs.contiguous()?.apply_op1(op)
    }
}

/// A frozen weight as a candle custom op: forward y = x · Wᵀ, backward dL/dx only.
enum Frozen {
    /// f32 [n, k] on the CPU.
    Dense(Tensor),
    Packed(Arc<QLinear>),
    Candle(Arc<QTensor>),
}

fn msg(e: Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// The f32 values of a contiguous CPU tensor, in place.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{what}: expected f32 values, got {:?}", s.dtype())
    };
    let Some((o0, o1)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expected contiguous values")
    };
    Ok(&data[o0..o1])
}

/// dims with the last one replaced by `last`.
fn with_last(dims: &[usize], last: usize) -> Shape {
    let mut out = dims.to_vec();
    if let Some(l) = out.last_mut() {
        *l = last;
    }
    Shape::from(out)
}

impl Frozen {
    /// (out features n, in features k)
    fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Frozen::Dense(w) => w.dims2(),
            Frozen::Packed(q) => Ok((q.n(), q.k())),
            Frozen::Candle(q) => q.shape().dims2(),
        }
    }

    /// Rows of a `[.., f]` tensor with `f` the expected last dimension.
    fn rows(&self, what: &str, dims: &[usize], f: usize) -> candle_core::Result<usize> {
        if dims.last().copied() != Some(f) {
            candle_core::bail!("{what}: shape {dims:?}, the weight expects {f} features last")
        }
        Ok(dims.iter().product::<usize>() / f.max(1))
    }

    /// Runs `f` on the dense weight's values (f32, contiguous, on the CPU).
    fn with_dense<R>(
        w: &Tensor,
        f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        let (ws, wl) = w.storage_and_layout();
        let candle_core::Storage::Cpu(cs) = &*ws else {
            candle_core::bail!("dense matmul expects a CPU weight")
        };
        f(f32_slice(cs, wl, "dense matmul weight")?)
    }
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        match self {
            Frozen::Dense(_) => "steerlab-dense-matmul",
            Frozen::Packed(_) => "steerlab-packed-matmul",
            Frozen::Candle(_) => "steerlab-candle-qmatmul",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.dims()?;
        let dims = l.shape().dims();
        let y = match self {
            // candle's own kernel, exactly as `QMatMul::forward` runs it.
            Frozen::Candle(q) => return q.cpu_fwd(s, l),
            Frozen::Dense(w) => {
                let m = self.rows("matmul activations", dims, k)?;
                let x = f32_slice(s, l, "matmul activations")?;
                Self::with_dense(w, |w| dense::matmul_t(x, w, m, n, k).map_err(msg))?
            }
            Frozen::Packed(q) => {
                let m = self.rows("matmul activations", dims, k)?;
                let x = f32_slice(s, l, "matmul activations")?;
                let mut y = vec![0f32; m * n];
                q.forward(x, m, &mut y).map_err(msg)?;
                y
            }
        };
        Ok((CpuStorage::F32(y), with_last(dims, n)))
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self {
            Frozen::Candle(q) => q.cuda_fwd(s, l),
            _ => candle_core::bail!("{}: CPU weights with CUDA activations", self.name()),
        }
    }

    fn metal_fwd(
        &self,
        s: &candle_core::MetalStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        match self {
            Frozen::Candle(q) => q.metal_fwd(s, l),
            _ => candle_core::bail!("{}: CPU weights with Metal activations", self.name()),
        }
    }

    /// dL/dx = dL/dy · W (the weight gets no gradient).
    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad.to_dtype(DType::F32)?.contiguous()?;
        let gx = match self {
            Frozen::Candle(q) if !g.device().is_cpu() => {
                // Off the CPU: the whole weight dequantized on the device, one matmul.
                let (n, k) = self.dims()?;
                let w = q.dequantize(g.device())?;
                let m = g.elem_count() / n.max(1);
                g.reshape((m, n))?
                    .matmul(&w)?
                    .reshape(with_last(g.dims(), k))?
            }
            _ => g.apply_op1_no_bwd(&InputGrad(self))?,
        };
        Ok(Some(gx.to_dtype(arg.dtype())?.reshape(arg.shape())?))
    }
}

/// The backward of a `Frozen` op on the CPU as an op of its own: reads dL/dy in place.
struct InputGrad<'a>(&'a Frozen);

impl CustomOp1 for InputGrad<'_> {
    fn name(&self) -> &'static str {
        "steerlab-matmul-input-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = self.0.dims()?;
        let dims = l.shape().dims();
        let m = self.0.rows("matmul backward: output gradient", dims, n)?;
        let g = f32_slice(s, l, "matmul output gradient")?;
        let gx = match self.0 {
            Frozen::Dense(w) => {
                Frozen::with_dense(w, |w| dense::grad_input(g, w, m, n, k).map_err(msg))?
            }
            Frozen::Packed(q) => q.grad_input(g, m).map_err(msg)?,
            Frozen::Candle(q) => candle_grad_input(q, g, m, n, k)?,
        };
        Ok((CpuStorage::F32(gx), with_last(dims, k)))
    }
}

/// dL/dx for a CPU `QTensor`: its raw blocks, `GRAD_BLOCK_ROWS` rows at a time, through
/// candle's dequantization.
fn candle_grad_input(
    q: &QTensor,
    g: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> candle_core::Result<Vec<f32>> {
    let dtype = q.dtype();
    let (bs, ts) = (dtype.block_size(), dtype.type_size());
    if bs == 0 || k % bs != 0 {
        candle_core::bail!("quantized weight [{n}, {k}]: rows are not whole {dtype:?} blocks")
    }
    let row_bytes = k / bs * ts;
    let raw = q.data()?;
    if raw.len() != n * row_bytes {
        candle_core::bail!(
            "quantized weight [{n}, {k}]: {} bytes, expected {}",
            raw.len(),
            n * row_bytes
        )
    }
    let dev = Device::Cpu;
    dense::grad_input_blocked(g, m, n, k, |j0, out| {
        let r = out.len() / k.max(1);
        let bytes = &raw[j0 * row_bytes..(j0 + r) * row_bytes];
        let blk = ggml_file::qtensor_from_ggml(dtype, bytes, vec![r, k], &dev)?;
        let w = blk.dequantize(&dev)?.flatten_all()?.to_vec1::<f32>()?;
        out.copy_from_slice(&w);
        Ok(())
    })
    .map_err(msg)
}
