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

/// A 2-D numpy array of float32 -> owned ndarray (copied, any strides).
pub fn matrix_f32(arr: &Bound<'_, PyAny>, what: &str) -> PyResult<ndarray::Array2<f32>> {
    let arr = arr.cast::<PyArrayDyn<f32>>().map_err(|_| {
        Error::shape(format!(
            "{what} must be a numpy float32 array (np.asarray(a, dtype=np.float32))"
        ))
    })?;
    if arr.ndim() != 2 {
        return Err(Error::shape(format!(
            "{what} must be 2-D [n, d_model], got shape {:?}",
            arr.shape()
        ))
        .into());
    }
    let ro = arr.readonly();
    let view = ro.as_array();
    let (n, d) = (view.shape()[0], view.shape()[1]);
    let data: Vec<f32> = view.iter().copied().collect();
    ndarray::Array2::from_shape_vec((n, d), data)
        .map_err(|e| Error::shape(format!("{what}: {e}")).into())
}

/// A 2-D numpy array of float64 -> owned ndarray (copied, any strides).
pub fn matrix_f64(arr: &Bound<'_, PyAny>, what: &str) -> PyResult<ndarray::Array2<f64>> {
    let arr = arr.cast::<PyArrayDyn<f64>>().map_err(|_| {
        Error::shape(format!(
            "{what} must be a numpy float64 array (np.asarray(a, dtype=np.float64))"
        ))
    })?;
    if arr.ndim() != 2 {
        return Err(
            Error::shape(format!("{what} must be 2-D, got shape {:?}", arr.shape())).into(),
        );
    }
    let ro = arr.readonly();
    let view = ro.as_array();
    let (n, d) = (view.shape()[0], view.shape()[1]);
    let data: Vec<f64> = view.iter().copied().collect();
    ndarray::Array2::from_shape_vec((n, d), data)
        .map_err(|e| Error::shape(format!("{what}: {e}")).into())
}

/// A 1-D float32 numpy array -> Vec (copied).
pub fn vec_f32(arr: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f32>> {
    let arr = arr.cast::<PyArrayDyn<f32>>().map_err(|_| {
        Error::shape(format!(
            "{what} must be a numpy float32 array (np.asarray(v, dtype=np.float32))"
        ))
    })?;
    if arr.ndim() != 1 {
        return Err(
            Error::shape(format!("{what} must be 1-D, got shape {:?}", arr.shape())).into(),
        );
    }
    Ok(arr.readonly().as_array().iter().copied().collect())
}

/// Owned f64 values -> 1-D numpy array.
pub fn f64_to_numpy<'py>(py: Python<'py>, data: Vec<f64>) -> Bound<'py, PyArray1<f64>> {
    PyArray1::from_vec(py, data)
}
