//! `steerlab._core.Controller` (a checked steering controller, usable as a row item of
//! any generation's steering) and `steerlab._core.ControllerTrainer` (its two training
//! stages, stepped from Python).

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::arrays::{matrix_f32, to_numpy, vec_f32};
use super::cancel::interruptible;
use super::learn::with_locked;
use super::model::PyModel;
use crate::error::Error;
use crate::intervene::{Controller, ControllerParams};
use crate::learn::controller::{ControllerConfig, ControllerTraining, EpochRecord, Stage2Example};
use crate::learn::trainer::TrainConfig;
use crate::model::Model;

fn layers(m: &Model, ls: Vec<i64>) -> crate::Result<Vec<usize>> {
    ls.into_iter().map(|l| m.resolve_layer(l)).collect()
}

fn flat(arr: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f32>> {
    Ok(matrix_f32(arr, what)?.iter().copied().collect())
}

/// A steering controller checked against one model (see `crate::intervene::controller`).
#[pyclass(name = "Controller", module = "steerlab._core", frozen)]
pub struct PyController {
    pub(super) inner: Arc<Controller>,
}

fn params_dict<'py>(
    py: Python<'py>,
    p: &ControllerParams,
    d: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let (k, l, h) = (p.read_layers.len(), p.layers.len(), p.hidden);
    let out = PyDict::new(py);
    out.set_item("read_layers", p.read_layers.clone())?;
    out.set_item("layers", p.layers.clone())?;
    out.set_item("hidden", h)?;
    out.set_item("strength", p.strength)?;
    out.set_item("mean", to_numpy(py, p.mean.clone(), &[k * d])?)?;
    out.set_item("scale", to_numpy(py, p.scale.clone(), &[k * d])?)?;
    out.set_item("w1", to_numpy(py, p.w1.clone(), &[k * d, h])?)?;
    out.set_item("b1", to_numpy(py, p.b1.clone(), &[h])?)?;
    out.set_item("w2", to_numpy(py, p.w2.clone(), &[h, 1 + l])?)?;
    out.set_item("b2", to_numpy(py, p.b2.clone(), &[1 + l])?)?;
    out.set_item("directions", to_numpy(py, p.directions.clone(), &[l, d])?)?;
    Ok(out)
}

#[pymethods]
impl PyController {
    /// Check and build a controller for a model of `n_layers` blocks of width `d_model`
    /// (layers non-negative). Its tensors live on the CPU; it is checked against the
    /// model again when a generation uses it.
    #[new]
    #[pyo3(signature = (read_layers, layers, hidden, mean, scale, w1, b1, w2, b2, directions, strength, *, d_model, n_layers))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        read_layers: Vec<usize>,
        layers: Vec<usize>,
        hidden: usize,
        mean: &Bound<'_, PyAny>,
        scale: &Bound<'_, PyAny>,
        w1: &Bound<'_, PyAny>,
        b1: &Bound<'_, PyAny>,
        w2: &Bound<'_, PyAny>,
        b2: &Bound<'_, PyAny>,
        directions: &Bound<'_, PyAny>,
        strength: f32,
        d_model: usize,
        n_layers: usize,
    ) -> PyResult<Self> {
        let p = ControllerParams {
            read_layers,
            layers,
            hidden,
            mean: vec_f32(mean, "mean")?,
            scale: vec_f32(scale, "scale")?,
            w1: flat(w1, "w1")?,
            b1: vec_f32(b1, "b1")?,
            w2: flat(w2, "w2")?,
            b2: vec_f32(b2, "b2")?,
            directions: flat(directions, "directions")?,
            strength,
        };
        let c = Controller::new(p, n_layers, d_model, &candle_core::Device::Cpu)?;
        Ok(PyController { inner: Arc::new(c) })
    }

    /// σ(outputs) [n, 1 + L] for raw read states [n, k·d] (float32): column 0 is the
    /// gate, the others the layer weights.
    fn outputs<'py>(
        &self,
        py: Python<'py>,
        states: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = matrix_f32(states, "states")?;
        let (n, kd) = x.dim();
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "states hold a non-finite value; expected finite activations",
            )
            .into());
        }
        let c = self.inner.clone();
        let data: Vec<f32> = x.iter().copied().collect();
        let (out, cols) = py.detach(|| -> crate::Result<(Vec<f32>, usize)> {
            let t = Tensor::from_vec(data, (n, kd), c.device())?;
            let o = c.outputs(&t)?;
            let cols = o.dim(1)?;
            Ok((o.flatten_all()?.to_vec1::<f32>()?, cols))
        })?;
        Ok(to_numpy(py, out, &[n, cols])?.into_any())
    }

    /// The parameters as a dict of numpy arrays and lists.
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = self.inner.params();
        let d = p.directions.len() / p.layers.len().max(1);
        params_dict(py, p, d)
    }

    #[getter]
    fn read_layers(&self) -> Vec<usize> {
        self.inner.read_layers().to_vec()
    }

    #[getter]
    fn layers(&self) -> Vec<usize> {
        self.inner.layers().to_vec()
    }

    #[getter]
    fn hidden(&self) -> usize {
        self.inner.hidden()
    }

    #[getter]
    fn strength(&self) -> f32 {
        self.inner.strength()
    }

    fn __repr__(&self) -> String {
        format!(
            "Controller(read_layers={:?}, layers={:?}, hidden={}, strength={})",
            self.inner.read_layers(),
            self.inner.layers(),
            self.inner.hidden(),
            self.inner.strength()
        )
    }
}

fn epoch_dict<'py>(py: Python<'py>, r: &EpochRecord) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("epoch", r.epoch)?;
    d.set_item("loss", r.loss)?;
    d.set_item("bce", r.bce)?;
    d.set_item("reg", r.reg)?;
    d.set_item("val_bce", r.val_bce)?;
    d.set_item("val_acc", r.val_acc)?;
    d.set_item("grad_norm", r.grad_norm)?;
    Ok(d)
}

fn pairs<'py>(py: Python<'py>, v: &[(String, f64)]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, x) in v {
        d.set_item(k, x)?;
    }
    Ok(d)
}

type RawExample<'py> = (Vec<u32>, usize, Bound<'py, PyAny>);

fn stage2_examples(v: Vec<RawExample<'_>>, what: &str) -> PyResult<Vec<Stage2Example>> {
    v.into_iter()
        .enumerate()
        .map(|(i, (ids, split, st))| {
            Ok(Stage2Example {
                ids,
                split,
                state: vec_f32(&st, &format!("{what} example {i} state"))?,
            })
        })
        .collect()
}

/// A controller training run: stage 1 by epochs, stage 2 by steps.
#[pyclass(name = "ControllerTrainer", module = "steerlab._core")]
pub struct PyControllerTrainer {
    inner: Mutex<ControllerTraining>,
    model: Arc<Model>,
    kept: Mutex<Option<Vec<Tensor>>>,
}

impl PyControllerTrainer {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut ControllerTraining) -> crate::Result<R>,
    ) -> crate::Result<R> {
        with_locked(&self.inner, f)
    }
}

#[pymethods]
impl PyControllerTrainer {
    /// Stage 1 on cached states: `x` [n, k·d], `y` [n] (1 harmful, 0 benign), and the
    /// same for validation; `directions` [L, d] unit rows.
    #[new]
    #[pyo3(signature = (model, x, y, xv, yv, read_layers, layers, directions, *, hidden = 1024, strength = 4.0, weight_reg = 0.01, lr = 5e-5, weight_decay = 0.01, max_grad_norm = Some(1.0), batch_size = 8, seed = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: &PyModel,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        xv: &Bound<'_, PyAny>,
        yv: &Bound<'_, PyAny>,
        read_layers: Vec<i64>,
        layers: Vec<i64>,
        directions: &Bound<'_, PyAny>,
        hidden: usize,
        strength: f32,
        weight_reg: f64,
        lr: f64,
        weight_decay: f64,
        max_grad_norm: Option<f64>,
        batch_size: usize,
        seed: u64,
    ) -> PyResult<Self> {
        let m = model.inner.clone();
        let cfg = ControllerConfig {
            read_layers: self::layers(&m, read_layers)?,
            layers: self::layers(&m, layers)?,
            hidden,
            strength,
            directions: flat(directions, "directions")?,
            weight_reg,
            batch_size,
            seed,
            train: TrainConfig {
                lr,
                weight_decay,
                max_grad_norm,
                ..TrainConfig::default()
            },
        };
        let (x, y) = (flat(x, "x")?, vec_f32(y, "y")?);
        let (xv, yv) = (flat(xv, "xv")?, vec_f32(yv, "yv")?);
        let mm = m.clone();
        let run = py.detach(|| ControllerTraining::new(mm, x, y, xv, yv, cfg))?;
        Ok(PyControllerTrainer {
            inner: Mutex::new(run),
            model: m,
            kept: Mutex::new(None),
        })
    }

    /// One stage-1 epoch; its record (epoch, loss, bce, reg, val_bce, val_acc,
    /// grad_norm).
    fn epoch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = interruptible(py, |cancel| self.with(|t| t.epoch(cancel)))?;
        epoch_dict(py, &r)
    }

    /// Load the stage-1 parameters with the lowest validation BCE.
    fn restore_best(&self) -> PyResult<()> {
        Ok(self.with(|t| t.restore_best())?)
    }

    /// Set up stage 2: lists of (ids, split, read state [k·d] float32).
    #[pyo3(signature = (harmful, benign, val_harmful, val_benign, *, kl_weight = 1.0, lr = 5e-5, weight_decay = 0.01, max_grad_norm = Some(1.0)))]
    #[allow(clippy::too_many_arguments)]
    fn start_stage2(
        &self,
        py: Python<'_>,
        harmful: Vec<RawExample<'_>>,
        benign: Vec<RawExample<'_>>,
        val_harmful: Vec<RawExample<'_>>,
        val_benign: Vec<RawExample<'_>>,
        kl_weight: f64,
        lr: f64,
        weight_decay: f64,
        max_grad_norm: Option<f64>,
    ) -> PyResult<()> {
        let h = stage2_examples(harmful, "harmful")?;
        let b = stage2_examples(benign, "benign")?;
        let vh = stage2_examples(val_harmful, "validation harmful")?;
        let vb = stage2_examples(val_benign, "validation benign")?;
        let train = TrainConfig {
            lr,
            weight_decay,
            max_grad_norm,
            ..TrainConfig::default()
        };
        interruptible(py, |cancel| {
            self.with(|t| t.start_stage2(h, b, vh, vb, kl_weight, train, cancel))
        })
    }

    /// One stage-2 step; its record (step, loss, grad_norm, lr, ce, kl, gate_harmful,
    /// gate_benign).
    fn stage2_step<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = interruptible(py, |cancel| self.with(|t| t.stage2_step(cancel)))?;
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

    /// Stage 2's mean loss, ce and kl on the validation examples.
    fn stage2_validate<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let v = interruptible(py, |cancel| self.with(|t| t.stage2_validate(cancel)))?;
        pairs(py, &v)
    }

    /// Keep a copy of the current parameters (put back with `restore_kept`).
    fn keep(&self) -> PyResult<()> {
        let snap = self.with(|t| t.snapshot())?;
        Ok(with_locked(&self.kept, |k| {
            *k = Some(snap);
            Ok(())
        })?)
    }

    fn restore_kept(&self) -> PyResult<()> {
        let kept = with_locked(&self.kept, |k| Ok(k.clone()))?;
        if let Some(s) = kept {
            self.with(|t| t.set_params(&s))?;
        }
        Ok(())
    }

    /// The current parameters (as `Controller.params`).
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = self.with(|t| t.params())?;
        params_dict(py, &p, self.model.d_model())
    }
}
