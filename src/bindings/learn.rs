//! `steerlab._core.VectorTrainer`: an optimised-steering-vector run, stepped from Python
//! (which shows progress and catches Ctrl-C between steps); each step runs detached from
//! the interpreter and stops at the next decoder block on Ctrl-C.

use std::sync::Mutex;

use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::cancel::interruptible;
use super::model::{extract_positions, PyModel};
use crate::error::Error;
use crate::learn::trainer::{StepRecord, TrainConfig};
use crate::learn::vector::{Example, VectorConfig, VectorTraining};

fn examples(v: Vec<(Vec<u32>, usize)>) -> Vec<Example> {
    v.into_iter()
        .map(|(ids, split)| Example { ids, split })
        .collect()
}

fn record<'py>(py: Python<'py>, r: &StepRecord) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("step", r.step)?;
    d.set_item("loss", r.loss)?;
    d.set_item("grad_norm", r.grad_norm)?;
    d.set_item("lr", r.lr)?;
    for (k, v) in &r.extra {
        d.set_item(k, v)?;
    }
    Ok(d)
}

#[pyclass(name = "VectorTrainer", module = "steerlab._core")]
pub struct PyVectorTrainer {
    inner: Mutex<VectorTraining>,
}

impl PyVectorTrainer {
    fn with<R>(&self, f: impl FnOnce(&mut VectorTraining) -> crate::Result<R>) -> crate::Result<R> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| Error::invalid("the trainer is poisoned by an earlier failure"))?;
        f(&mut g)
    }
}

#[pymethods]
impl PyVectorTrainer {
    #[new]
    #[pyo3(signature = (model, examples_, layers, *, negatives = None, positions = None, lr = 1e-2, weight_decay = 0.0, max_grad_norm = Some(1.0), batch_size = 8, seed = 0, init = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: &PyModel,
        examples_: Vec<(Vec<u32>, usize)>,
        layers: Vec<i64>,
        negatives: Option<Vec<(Vec<u32>, usize)>>,
        positions: Option<&Bound<'_, PyAny>>,
        lr: f64,
        weight_decay: f64,
        max_grad_norm: Option<f64>,
        batch_size: usize,
        seed: u64,
        init: Option<Vec<Vec<f32>>>,
    ) -> PyResult<Self> {
        let m = model.inner.clone();
        let layers = layers
            .into_iter()
            .map(|l| m.resolve_layer(l))
            .collect::<crate::Result<Vec<usize>>>()?;
        let positions = match positions {
            Some(p) => extract_positions(p)?,
            None => crate::intervene::Positions::All,
        };
        let cfg = VectorConfig {
            layers,
            positions,
            batch_size,
            seed,
            train: TrainConfig {
                lr,
                weight_decay,
                max_grad_norm,
                ..TrainConfig::default()
            },
            init,
        };
        let (pos, neg) = (examples(examples_), negatives.map(examples));
        let run = interruptible(py, |cancel| VectorTraining::new(m, pos, neg, cfg, cancel))?;
        Ok(PyVectorTrainer {
            inner: Mutex::new(run),
        })
    }

    /// One optimiser step; returns its record as a dict (step, loss, grad_norm, lr, ce,
    /// and margin with negatives).
    fn step<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = interruptible(py, |cancel| self.with(|t| t.step(cancel)))?;
        record(py, &r)
    }

    /// ``[{step, loss, grad_norm, lr, ...}, ...]``, one dict per completed step.
    #[getter]
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let h = self.with(|t| Ok(t.history().to_vec()))?;
        h.iter().map(|r| record(py, r)).collect()
    }

    /// (step, loss) of the lowest batch loss so far, or None before the first step.
    #[getter]
    fn best(&self) -> PyResult<Option<(usize, f64)>> {
        Ok(self.with(|t| Ok(t.best()))?)
    }

    /// ``{layer: float32 vector}``: the best (lowest batch loss) or the current values.
    #[pyo3(signature = (best = true))]
    fn vectors<'py>(
        &self,
        py: Python<'py>,
        best: bool,
    ) -> PyResult<Vec<(usize, Bound<'py, PyArray1<f32>>)>> {
        let (layers, vs) = self.with(|t| Ok((t.layers().to_vec(), t.vectors(best)?)))?;
        Ok(layers
            .into_iter()
            .zip(vs)
            .map(|(l, v)| (l, PyArray1::from_vec(py, v)))
            .collect())
    }
}
