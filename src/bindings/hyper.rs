//! `steerlab._core.HyperNet` (a HyperSteer hypernetwork: vectors for many steering
//! prompts in one call) and `steerlab._core.HyperTrainer` (its training run, stepped
//! from Python, which shows progress and catches Ctrl-C between steps).

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use numpy::PyArray2;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::arrays::{to_numpy, vec_f32};
use super::cancel::interruptible;
use super::learn::{record, with_locked};
use super::model::PyModel;
use crate::error::Error;
use crate::learn::hyper::{HyperConfig, HyperExample, HyperNet, HyperTraining, Pool, Variant};
use crate::learn::trainer::TrainConfig;
use crate::model::Model;

type RawExample = (Vec<u32>, Vec<u32>, usize);
/// `(name, shape, flat float32 values)` of one tensor, as `save_learned` takes them.
type RawTensor<'py> = (String, Vec<usize>, Bound<'py, PyAny>);

/// `{name: float32 array}` of the parameters.
fn params_dict<'py>(py: Python<'py>, p: Vec<(String, Tensor)>) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for (name, t) in p {
        let shape = t.dims().to_vec();
        let v = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(crate::error::Error::from)?;
        out.set_item(name, to_numpy(py, v, &shape)?)?;
    }
    Ok(out)
}

/// `(name, shape, values)` triples as candle tensors on the model's device.
fn tensors(m: &Model, items: Vec<RawTensor<'_>>) -> PyResult<Vec<(String, Tensor)>> {
    items
        .into_iter()
        .map(|(name, shape, arr)| {
            let v = vec_f32(&arr, &format!("tensor '{name}'"))?;
            let n: usize = shape.iter().product();
            if v.len() != n {
                return Err(Error::shape(format!(
                    "tensor '{name}' has {} values for shape {shape:?} ({n} values)",
                    v.len()
                ))
                .into());
            }
            let t = Tensor::from_vec(v, shape.as_slice(), &m.device).map_err(Error::from)?;
            Ok((name, t))
        })
        .collect()
}

/// Vectors [n, d] from per-row vectors.
fn matrix<'py>(
    py: Python<'py>,
    rows: Vec<Vec<f32>>,
    d: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let n = rows.len();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    let a = to_numpy(py, flat, &[n, d])?;
    Ok(a.cast_into::<PyArray2<f32>>()
        .map_err(|e| Error::invalid(format!("vectors: {e}")))?)
}

/// A HyperSteer hypernetwork for one model (see `crate::learn::hyper`).
#[pyclass(name = "HyperNet", module = "steerlab._core")]
pub struct PyHyperNet {
    inner: Arc<HyperNet>,
}

#[pymethods]
impl PyHyperNet {
    /// A new hypernetwork (copied blocks, zero head: it writes Δ = 0); `params` (as
    /// `(name, shape, float32 values)`) sets every parameter, exactly the names and
    /// shapes of `.params()`.
    #[new]
    #[pyo3(signature = (model, variant, layer, n_blocks, params = None, pool = "last"))]
    fn new(
        py: Python<'_>,
        model: &PyModel,
        variant: &str,
        layer: i64,
        n_blocks: usize,
        params: Option<Vec<RawTensor<'_>>>,
        pool: &str,
    ) -> PyResult<Self> {
        let m = model.inner.clone();
        let variant = Variant::parse(variant)?;
        let pool = Pool::parse(pool)?;
        let layer = m.resolve_layer(layer)?;
        let p = params.map(|p| tensors(&m, p)).transpose()?;
        let net = py.detach(|| -> crate::Result<HyperNet> {
            let net = HyperNet::new(m, variant, layer, n_blocks)?.with_pool(pool);
            if let Some(p) = p {
                net.set_params(&p)?;
            }
            Ok(net)
        })?;
        Ok(PyHyperNet {
            inner: Arc::new(net),
        })
    }

    /// Steering vectors float32 [n, d_model] for `steer` (token id rows) and, for the
    /// cross_attention variant, the paired base prompts `base` (token id rows). One call,
    /// detached from the interpreter, cancellable (Ctrl-C) between rows.
    #[pyo3(signature = (steer, base = None))]
    fn vectors<'py>(
        &self,
        py: Python<'py>,
        steer: Vec<Vec<u32>>,
        base: Option<Vec<Vec<u32>>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let net = self.inner.clone();
        let rows = interruptible(py, |c| net.vectors(&steer, base.as_deref(), c))?;
        matrix(py, rows, self.inner.model().d_model())
    }

    /// `{name: float32 array}`: copies of the parameters.
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        params_dict(py, self.inner.params()?)
    }

    #[getter]
    fn variant(&self) -> &'static str {
        self.inner.variant().name()
    }
    #[getter]
    fn layer(&self) -> usize {
        self.inner.layer()
    }
    #[getter]
    fn pool(&self) -> &'static str {
        self.inner.pool().name()
    }
    #[getter]
    fn n_blocks(&self) -> usize {
        self.inner.n_blocks()
    }
    #[getter]
    fn n_params(&self) -> usize {
        self.inner.n_params()
    }

    fn __repr__(&self) -> String {
        format!(
            "HyperNet(variant='{}', layer={}, n_blocks={}, n_params={})",
            self.inner.variant().name(),
            self.inner.layer(),
            self.inner.n_blocks(),
            self.inner.n_params()
        )
    }
}

fn examples(v: Vec<RawExample>) -> Vec<HyperExample> {
    v.into_iter()
        .map(|(steer, ids, split)| HyperExample { steer, ids, split })
        .collect()
}

/// A HyperSteer training run.
#[pyclass(name = "HyperTrainer", module = "steerlab._core")]
pub struct PyHyperTrainer {
    inner: Mutex<HyperTraining>,
    model: Arc<Model>,
}

impl PyHyperTrainer {
    fn with<R>(&self, f: impl FnOnce(&mut HyperTraining) -> crate::Result<R>) -> crate::Result<R> {
        with_locked(&self.inner, f)
    }
}

#[pymethods]
impl PyHyperTrainer {
    /// `examples_` / `validation`: `(steering prompt ids, base prompt + target ids,
    /// split)` with the target starting at `split`.
    #[new]
    #[pyo3(signature = (model, examples_, validation, variant, layer, n_blocks, *, lr, weight_decay = 0.0, max_grad_norm = Some(1.0), batch_size = 8, seed = 0, pool = "last"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: &PyModel,
        examples_: Vec<RawExample>,
        validation: Vec<RawExample>,
        variant: &str,
        layer: i64,
        n_blocks: usize,
        lr: f64,
        weight_decay: f64,
        max_grad_norm: Option<f64>,
        batch_size: usize,
        seed: u64,
        pool: &str,
    ) -> PyResult<Self> {
        let m = model.inner.clone();
        let cfg = HyperConfig {
            variant: Variant::parse(variant)?,
            pool: Pool::parse(pool)?,
            layer: m.resolve_layer(layer)?,
            n_blocks,
            batch_size,
            seed,
            train: TrainConfig {
                lr,
                weight_decay,
                max_grad_norm,
                ..TrainConfig::default()
            },
        };
        let (ex, val) = (examples(examples_), examples(validation));
        let mm = m.clone();
        let run = interruptible(py, |cancel| HyperTraining::new(mm, ex, val, cfg, cancel))?;
        Ok(PyHyperTrainer {
            inner: Mutex::new(run),
            model: m,
        })
    }

    /// One optimiser step; its record (step, loss, grad_norm, lr, ce).
    fn step<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = interruptible(py, |cancel| self.with(|t| t.step(cancel)))?;
        record(py, &r)
    }

    /// The validation cross-entropy (None without validation examples).
    fn validate(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        interruptible(py, |cancel| self.with(|t| t.validate(cancel)))
    }

    /// ``[{step, loss, grad_norm, lr, ce}, ...]``.
    #[getter]
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let h = self.with(|t| Ok(t.history().to_vec()))?;
        h.iter().map(|r| record(py, r)).collect()
    }

    #[getter]
    fn steps_per_epoch(&self) -> PyResult<usize> {
        Ok(self.with(|t| Ok(t.steps_per_epoch()))?)
    }

    #[getter]
    fn n_params(&self) -> PyResult<usize> {
        Ok(self.with(|t| Ok(t.net().n_params()))?)
    }

    /// `{name: float32 array}`: copies of the current parameters.
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = self.with(|t| t.net().params())?;
        params_dict(py, p)
    }

    /// Set every parameter (resume from a checkpoint): `(name, shape, values)` with
    /// exactly the names and shapes of `.params()`. The optimiser's moments start afresh.
    fn set_params(&self, params: Vec<RawTensor<'_>>) -> PyResult<()> {
        let p = tensors(&self.model, params)?;
        Ok(self.with(|t| t.net().set_params(&p))?)
    }

    /// Continue the batch order of a run that had completed `steps` steps.
    fn set_step_offset(&self, steps: usize) -> PyResult<()> {
        Ok(self.with(|t| {
            t.set_step_offset(steps);
            Ok(())
        })?)
    }

    fn set_lr(&self, lr: f64) -> PyResult<()> {
        Ok(self.with(|t| t.set_lr(lr))?)
    }
}
