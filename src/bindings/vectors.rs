//! Steering-vector maths, diagnostics and vector files: numpy in, numpy out; the work
//! runs in `crate::vectors`, `crate::analysis` and `crate::artifacts` with the GIL
//! released.

use std::path::PathBuf;

use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::arrays::{f64_to_numpy, matrix_f32, matrix_f64, vec_f32};
use crate::analysis;
use crate::artifacts::{self, Directions};
use crate::error::Error;
use crate::vectors::{self, Method};

/// Direction from paired positive / negative activations [n, d] at one layer.
#[pyfunction]
pub fn fit_direction<'py>(
    py: Python<'py>,
    pos: &Bound<'py, PyAny>,
    neg: &Bound<'py, PyAny>,
    method: &str,
) -> PyResult<(Bound<'py, PyArray1<f32>>, Option<f64>)> {
    let method = Method::parse(method)?;
    let pos = matrix_f32(pos, "the positive activations")?;
    let neg = matrix_f32(neg, "the negative activations")?;
    let fit = py.detach(|| vectors::fit(pos.view(), neg.view(), method))?;
    Ok((PyArray1::from_vec(py, fit.direction), fit.score))
}

/// mean(target) - mean(background), each [n, d].
#[pyfunction]
pub fn mean_centring<'py>(
    py: Python<'py>,
    target: &Bound<'py, PyAny>,
    background: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let t = matrix_f32(target, "the target activations")?;
    let b = matrix_f32(background, "the background activations")?;
    let v = py.detach(|| vectors::mean_centring(t.view(), b.view()))?;
    Ok(PyArray1::from_vec(py, v))
}

/// Directional agreement and separability of paired activations at one layer.
#[pyfunction]
pub fn pair_stats<'py>(
    py: Python<'py>,
    pos: &Bound<'py, PyAny>,
    neg: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let pos = matrix_f32(pos, "the positive activations")?;
    let neg = matrix_f32(neg, "the negative activations")?;
    let st = py.detach(|| analysis::pair_stats(pos.view(), neg.view()))?;
    let d = PyDict::new(py);
    d.set_item("mean_cosine", st.mean_cosine())?;
    d.set_item("d_prime", st.d_prime)?;
    d.set_item("diff_norm", st.diff_norm)?;
    d.set_item("mean_norm", st.mean_norm)?;
    d.set_item("cosines", f64_to_numpy(py, st.cosines))?;
    d.set_item("proj_pos", f64_to_numpy(py, st.proj_pos))?;
    d.set_item("proj_neg", f64_to_numpy(py, st.proj_neg))?;
    Ok(d)
}

/// Effects, slopes and the anti-steerable share from logit differences [n, k].
#[pyfunction]
pub fn steerability<'py>(
    py: Python<'py>,
    margins: &Bound<'py, PyAny>,
    multipliers: Vec<f64>,
) -> PyResult<Bound<'py, PyDict>> {
    let m = matrix_f64(margins, "the logit differences")?;
    let s = py.detach(|| analysis::steerability(m.view(), &multipliers))?;
    let d = PyDict::new(py);
    d.set_item("mean_effect", s.mean_effect)?;
    d.set_item("mean_slope", s.mean_slope)?;
    d.set_item("anti_steerable", s.anti_steerable)?;
    d.set_item("unsteered", f64_to_numpy(py, s.unsteered))?;
    d.set_item("effect", f64_to_numpy(py, s.effect))?;
    d.set_item("slope", f64_to_numpy(py, s.slope))?;
    Ok(d)
}

/// Spearman's rank correlation.
#[pyfunction]
pub fn spearman(x: Vec<f64>, y: Vec<f64>) -> PyResult<f64> {
    Ok(analysis::spearman(&x, &y)?)
}

fn extract_directions(dirs: &Bound<'_, PyDict>) -> PyResult<Directions> {
    let mut out = Directions::new();
    for (k, v) in dirs.iter() {
        let layer: i64 = k.extract().map_err(|_| {
            Error::invalid(format!(
                "vector layers must be ints in 0..2**63, got {}",
                k.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?;
        let layer = usize::try_from(layer).map_err(|_| {
            Error::out_of_range(format!(
                "vector layer {layer} is negative; expected a layer index >= 0"
            ))
        })?;
        out.insert(
            layer,
            vec_f32(&v, &format!("the vector for layer {layer}"))?,
        );
    }
    Ok(out)
}

fn directions_to_dict<'py>(py: Python<'py>, dirs: Directions) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (layer, v) in dirs {
        d.set_item(layer, PyArray1::from_vec(py, v))?;
    }
    Ok(d)
}

/// Save `{layer: float32 vector}` and a metadata JSON string as safetensors.
#[pyfunction]
pub fn save_vector(
    py: Python<'_>,
    path: PathBuf,
    directions: &Bound<'_, PyDict>,
    metadata: String,
) -> PyResult<()> {
    let dirs = extract_directions(directions)?;
    Ok(py.detach(|| artifacts::save_safetensors(&path, &dirs, &metadata))?)
}

/// Load a steerlab safetensors vector: ({layer: vector}, metadata JSON).
#[pyfunction]
pub fn load_vector<'py>(py: Python<'py>, path: PathBuf) -> PyResult<(Bound<'py, PyDict>, String)> {
    let (dirs, meta) = py.detach(|| artifacts::load_safetensors(&path))?;
    Ok((directions_to_dict(py, dirs)?, meta))
}

/// Write a llama.cpp control vector (GGUF): `direction.N` steers block N's output.
#[pyfunction]
pub fn save_control_vector(
    py: Python<'_>,
    path: PathBuf,
    directions: &Bound<'_, PyDict>,
    model_hint: String,
) -> PyResult<()> {
    let dirs = extract_directions(directions)?;
    Ok(py.detach(|| artifacts::save_control_vector(&path, &dirs, &model_hint))?)
}

/// Read a llama.cpp / repeng control vector: ({layer: vector}, model_hint, layer_count).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn load_control_vector<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(Bound<'py, PyDict>, Option<String>, Option<u32>)> {
    let cv = py.detach(|| artifacts::load_control_vector(&path))?;
    Ok((
        directions_to_dict(py, cv.directions)?,
        cv.model_hint,
        cv.layer_count,
    ))
}
