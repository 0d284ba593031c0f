//! The one door between numpy and tensors: inputs as read-only array views, outputs
//! built from owned buffers.

use candle_core::{Device, Tensor};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::error::Error;

/// A 1-D float32 numpy array -> tensor on `device` (copied).
pub fn vector_from_numpy(arr: &Bound<'_, PyAny>, device: &Device, what: &str) -> PyResult<Tensor> {
    let arr = arr.cast::<PyArrayDyn<f32>>().map_err(|_| {
        Error::shape(format!(
            "{what} must be a numpy float32 array (np.asarray(v, dtype=np.float32))"
        ))
    })?;
    if arr.ndim() != 1 {
        return Err(Error::shape(format!(
            "{what} must be 1-D [d_model], got shape {:?}",
            arr.shape()
        ))
        .into());
    }
    let ro = arr.readonly();
    let data: Vec<f32> = match ro.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => ro.as_array().iter().copied().collect(),
    };
    let n = data.len();
    Ok(Tensor::from_vec(data, n, device).map_err(Error::from)?)
}

/// Owned row-major data -> numpy array of `shape`.
pub fn to_numpy<'py>(
    py: Python<'py>,
    data: Vec<f32>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    PyArray1::from_vec(py, data).reshape(shape.to_vec())
}
