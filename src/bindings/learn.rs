//! `steerlab._core.VectorTrainer`: an optimised-steering-vector run, stepped from Python
//! (which shows progress and catches Ctrl-C between steps); each step runs detached from
//! the interpreter and stops at the next decoder block on Ctrl-C.

use std::path::PathBuf;
use std::sync::Mutex;

use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::arrays::vec_f32;
use super::cancel::interruptible;
use super::model::{extract_positions, PyModel};
use crate::artifacts::NamedTensor;
use crate::error::Error;
use crate::intervene::Positions;
use crate::learn::artifact::{ArtifactMeta, LearnedArtifact};
use crate::learn::scalars::{ScalarConfig, ScalarExample, ScalarKind, ScalarTraining};
use crate::learn::trainer::{StepRecord, TrainConfig};
use crate::learn::vector::{Example, VectorConfig, VectorTraining};
use crate::model::{Site, SiteKind};

fn examples(v: Vec<(Vec<u32>, usize)>) -> Vec<Example> {
    v.into_iter()
        .map(|(ids, split)| Example { ids, split })
        .collect()
}

/// Run `f` on the value behind a trainer's lock (a lock poisoned by an earlier panic is
/// an error, not a second panic).
pub(super) fn with_locked<T, R>(
    m: &Mutex<T>,
    f: impl FnOnce(&mut T) -> crate::Result<R>,
) -> crate::Result<R> {
    let mut g = m
        .lock()
        .map_err(|_| Error::invalid("the trainer is poisoned by an earlier failure"))?;
    f(&mut g)
}

/// A training step's record as a dict (step, loss, grad_norm, lr and the extras).
pub(super) fn record<'py>(py: Python<'py>, r: &StepRecord) -> PyResult<Bound<'py, PyDict>> {
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
        with_locked(&self.inner, f)
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

/// `steerlab._core.ScalarTrainer`: an activation-scaling run (ActivScalar, SteerVec or
/// DynScalar), stepped from Python like `VectorTrainer`.
#[pyclass(name = "ScalarTrainer", module = "steerlab._core")]
pub struct PyScalarTrainer {
    inner: Mutex<ScalarTraining>,
}

impl PyScalarTrainer {
    fn with<R>(&self, f: impl FnOnce(&mut ScalarTraining) -> crate::Result<R>) -> crate::Result<R> {
        with_locked(&self.inner, f)
    }
}

#[pymethods]
impl PyScalarTrainer {
    /// `records`: (prompt ids, target id, foil id); `sites`: (site name, layer).
    #[new]
    #[pyo3(signature = (model, records, sites, kind, *, positions = None, effectiveness = 1.0, faithfulness = 1.0, sparsity = 1e-3, lr = 1e-2, weight_decay = 0.0, max_grad_norm = None, batch_size = 16, seed = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: &PyModel,
        records: Vec<(Vec<u32>, u32, u32)>,
        sites: Vec<(String, i64)>,
        kind: &str,
        positions: Option<&Bound<'_, PyAny>>,
        effectiveness: f64,
        faithfulness: f64,
        sparsity: f64,
        lr: f64,
        weight_decay: f64,
        max_grad_norm: Option<f64>,
        batch_size: usize,
        seed: u64,
    ) -> PyResult<Self> {
        let m = model.inner.clone();
        let sites = sites
            .into_iter()
            .map(|(name, layer)| Ok(SiteKind::parse(&name)?.at(m.resolve_layer(layer)?)))
            .collect::<crate::Result<Vec<Site>>>()?;
        let positions = match positions {
            Some(p) => extract_positions(p)?,
            None => Positions::All,
        };
        let cfg = ScalarConfig {
            kind: ScalarKind::parse(kind)?,
            sites,
            positions,
            effectiveness,
            faithfulness,
            sparsity,
            batch_size,
            seed,
            train: TrainConfig {
                lr,
                weight_decay,
                max_grad_norm,
                ..TrainConfig::default()
            },
        };
        let records = records
            .into_iter()
            .map(|(ids, target, foil)| ScalarExample { ids, target, foil })
            .collect();
        let run = interruptible(py, |cancel| ScalarTraining::new(m, records, cfg, cancel))?;
        Ok(PyScalarTrainer {
            inner: Mutex::new(run),
        })
    }

    /// One optimiser step; returns its record as a dict (step, loss, grad_norm, lr,
    /// effectiveness, faithfulness, minimality, logit_diff).
    fn step<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = interruptible(py, |cancel| self.with(|t| t.step(cancel)))?;
        record(py, &r)
    }

    /// One dict per completed step.
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

    /// The token layout length of a static kind, None for 'dynamic'.
    #[getter]
    fn layout(&self) -> PyResult<Option<usize>> {
        Ok(self.with(|t| Ok(t.layout()))?)
    }

    /// ``[(site, layer, [float32 arrays])]``: each site's parameters (alpha [P]; v [P * d];
    /// w [d] and b [1]), the best (lowest batch loss) or the current values.
    #[pyo3(signature = (best = true))]
    #[allow(clippy::type_complexity)]
    fn params<'py>(
        &self,
        py: Python<'py>,
        best: bool,
    ) -> PyResult<Vec<(String, usize, Vec<Bound<'py, PyArray1<f32>>>)>> {
        let (sites, ps) = self.with(|t| Ok((t.sites().to_vec(), t.params(best)?)))?;
        Ok(sites
            .into_iter()
            .zip(ps)
            .map(|(s, p)| {
                let kind = s.kind();
                (
                    kind.name().to_string(),
                    s.layer().unwrap_or(0),
                    p.into_iter().map(|v| PyArray1::from_vec(py, v)).collect(),
                )
            })
            .collect())
    }
}

/// Write a learned module: `meta_json` is its `ArtifactMeta` as JSON (checked here),
/// `tensors` `(name, shape, flat float32 values)`.
#[pyfunction]
pub fn save_learned(
    py: Python<'_>,
    path: PathBuf,
    meta_json: &str,
    tensors: Vec<(String, Vec<usize>, Bound<'_, PyAny>)>,
) -> PyResult<()> {
    let meta: ArtifactMeta = serde_json::from_str(meta_json)
        .map_err(|e| Error::invalid(format!("the module's metadata is not valid: {e}")))?;
    let tensors = tensors
        .into_iter()
        .map(|(name, shape, arr)| {
            let values = vec_f32(&arr, &format!("tensor '{name}'"))?;
            Ok(NamedTensor {
                name,
                shape,
                values,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let art = LearnedArtifact { meta, tensors };
    Ok(py.detach(|| art.save(&path))?)
}

/// Read a learned module trained on the model with `fingerprint` and `d_model` (None:
/// any model): its metadata JSON and `(name, shape, flat float32 values)`.
#[pyfunction]
#[pyo3(signature = (path, fingerprint = None, d_model = 0))]
#[allow(clippy::type_complexity)]
pub fn load_learned<'py>(
    py: Python<'py>,
    path: PathBuf,
    fingerprint: Option<String>,
    d_model: usize,
) -> PyResult<(String, Vec<(String, Vec<usize>, Bound<'py, PyArray1<f32>>)>)> {
    let art = py.detach(|| match &fingerprint {
        Some(f) => LearnedArtifact::load(&path, f, d_model),
        None => LearnedArtifact::read(&path),
    })?;
    let json = serde_json::to_string(&art.meta)
        .map_err(|e| Error::invalid(format!("cannot encode the metadata: {e}")))?;
    let tensors = art
        .tensors
        .into_iter()
        .map(|t| (t.name, t.shape, PyArray1::from_vec(py, t.values)))
        .collect();
    Ok((json, tensors))
}
