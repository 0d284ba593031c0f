//! `steerlab._core.Model` and `Generation`: extract Python inputs into Rust values while
//! attached, then run the whole call detached from the interpreter.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::Device;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use super::arrays::{to_numpy, vector_from_numpy};
use super::cancel::interruptible;
use super::errors::invalid;
use crate::capture::{Captured, Reduce};
use crate::error::Error;
use crate::generate::{forward_batch, token_logprobs, GenParams, Generation};
use crate::intervene::{Intervention, Op, Positions, RowSteering};
use crate::learn::scalars::{ScalarKind, ScalarModule};
use crate::model::{Model, Site, SiteKind, WeightDtype};
use crate::pool::in_pool;

fn parse_device(s: &str) -> PyResult<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let idx: usize = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| invalid(format!("bad device '{s}' (expected 'cuda:N')")))?,
                None => 0,
            };
            if cfg!(feature = "cuda") {
                Ok(Device::new_cuda(idx).map_err(Error::from)?)
            } else {
                Err(invalid(format!(
                    "device '{s}' needs a steerlab build with the 'cuda' feature; this build is CPU-only"
                )))
            }
        }
        other => Err(invalid(format!(
            "unknown device '{other}' (expected 'cpu', 'cuda' or 'cuda:N')"
        ))),
    }
}

fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        _ => "other".into(),
    }
}

/// Token id rows from Python (validated: non-negative).
fn extract_batch(batch: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u32>>> {
    let rows: Vec<Vec<i64>> = batch
        .extract()
        .map_err(|_| invalid("batch must be a list of lists of token ids (int)"))?;
    rows.into_iter()
        .enumerate()
        .map(|(r, row)| {
            row.into_iter()
                .map(|id| {
                    u32::try_from(id).map_err(|_| {
                        Error::out_of_range(format!(
                            "token id {id} in prompt {r} is negative or too large"
                        ))
                        .into()
                    })
                })
                .collect()
        })
        .collect()
}

pub(super) fn extract_positions(p: &Bound<'_, PyAny>) -> PyResult<Positions> {
    if let Ok(s) = p.cast::<PyString>() {
        return Ok(Positions::parse(&s.to_cow()?)?);
    }
    if let Ok(v) = p.extract::<Vec<i64>>() {
        return Ok(Positions::Indices(v));
    }
    Err(invalid(
        "positions must be 'all', 'all_but_first', 'prompt', 'generated', 'last' or a list of ints",
    ))
}

fn extract_steering(
    model: &Model,
    steering: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Vec<RowSteering>>> {
    let Some(st) = steering else { return Ok(None) };
    if st.is_none() {
        return Ok(None);
    }
    let rows = st.cast::<PyList>().map_err(|_| {
        invalid("steering must be a list with one list of interventions (or None) per row")
    })?;
    let mut out = Vec::with_capacity(rows.len());
    // The same Python item in several rows (one steering for the whole batch) becomes
    // one intervention: a learned module is then one `Arc` that runs on the batch at
    // once. `seen` keeps every item alive, so its address is its identity here.
    let mut seen: std::collections::HashMap<usize, (Bound<'_, PyAny>, Intervention)> =
        Default::default();
    for (r, row) in rows.iter().enumerate() {
        let mut ivs = Vec::new();
        if !row.is_none() {
            for item in row.try_iter()? {
                let item = item?;
                let key = item.as_ptr() as usize;
                let iv = match seen.get(&key) {
                    Some((_, iv)) => iv.clone(),
                    None => {
                        let iv = extract_intervention(model, &item, r)?;
                        seen.insert(key, (item, iv.clone()));
                        iv
                    }
                };
                ivs.push(iv);
            }
        }
        out.push(ivs);
    }
    Ok(Some(out))
}

/// One intervention: `(layer, vector, positions)` (add at `resid_post`), or
/// `(site, layer, op, array, value, positions)` with site a [`SiteKind`] name and op one
/// of 'add', 'scale', 'project_out', 'clamp' (`value` is the clamp target, else unused).
fn extract_intervention(
    model: &Model,
    item: &Bound<'_, PyAny>,
    r: usize,
) -> PyResult<Intervention> {
    let shape_err = || {
        invalid(format!(
            "row {r}: each intervention must be a (layer, vector, positions) or a (site, \
             layer, op, array, value, positions) tuple"
        ))
    };
    if let Ok(c) = item.cast::<super::controller::PyController>() {
        return Ok(Intervention::controller(c.get().inner.clone()));
    }
    if let Ok((layer, vec, pos)) = item.extract::<(i64, Bound<'_, PyAny>, Bound<'_, PyAny>)>() {
        let layer = model.resolve_layer(layer)?;
        let vector = vector_from_numpy(
            &vec,
            &model.device,
            &format!("row {r} layer {layer} vector"),
        )?;
        return Ok(Intervention::add(layer, vector, extract_positions(&pos)?));
    }
    let (site, layer, op, arr, value, pos): (
        String,
        i64,
        String,
        Bound<'_, PyAny>,
        f64,
        Bound<'_, PyAny>,
    ) = item.extract().map_err(|_| shape_err())?;
    let kind = SiteKind::parse(&site)?;
    let site = match kind {
        SiteKind::Embed if layer != 0 => {
            return Err(invalid(format!(
                "row {r}: site 'embed' (the input of block 0) has no layer, got layer {layer}; \
                 expected layer 0"
            )))
        }
        SiteKind::Embed => Site::Embed,
        k => k.at(model.resolve_layer(layer)?),
    };
    let what = format!("row {r} {op} at {site}");
    let arr = vector_from_numpy(&arr, &model.device, &what)?;
    if let Some(kind) = module_kind(&op) {
        return Ok(Intervention {
            site,
            positions: extract_positions(&pos)?,
            op: Op::Module(Arc::new(scalar_module(model, kind, site, arr, value)?)),
        });
    }
    let op = match op.as_str() {
        "add" => Op::Add(arr),
        "scale" => Op::Scale(arr),
        "project_out" => Op::ProjectOut(arr),
        "clamp" => Op::Clamp {
            dir: arr,
            value: value as f32,
        },
        other => {
            return Err(invalid(format!(
                "row {r}: unknown operation '{other}' (expected 'add', 'scale', \
                 'project_out', 'clamp', 'activation_scalar', 'position_vectors' or \
                 'dynamic_scalar')"
            )))
        }
    };
    Ok(Intervention {
        site,
        positions: extract_positions(&pos)?,
        op,
    })
}

/// The learned activation-scaling operations: their row name and module kind.
fn module_kind(op: &str) -> Option<ScalarKind> {
    match op {
        "activation_scalar" => Some(ScalarKind::Scalar),
        "position_vectors" => Some(ScalarKind::Vector),
        "dynamic_scalar" => Some(ScalarKind::Dynamic),
        _ => None,
    }
}

/// A learned module from its flat parameters: alpha `[P]`; v `[P * d]` (row-major
/// `[P, d]`); w `[d]` then b (`[d + 1]`); `beta` its strength.
fn scalar_module(
    model: &Model,
    kind: ScalarKind,
    site: Site,
    flat: candle_core::Tensor,
    beta: f64,
) -> PyResult<ScalarModule> {
    let d = model.d_model();
    let n = flat.elem_count();
    let params = match kind {
        ScalarKind::Scalar => vec![flat],
        ScalarKind::Vector if n > 0 && n % d == 0 => {
            vec![flat.reshape((n / d, d)).map_err(Error::from)?]
        }
        ScalarKind::Dynamic if n == d + 1 => vec![
            flat.narrow(0, 0, d).map_err(Error::from)?,
            flat.narrow(0, d, 1).map_err(Error::from)?,
        ],
        _ => {
            let want = match kind {
                ScalarKind::Vector => {
                    format!("P * {d} values (one vector of d_model {d} per position)")
                }
                _ => format!("{} values (w [{d}] then b)", d + 1),
            };
            return Err(Error::shape(format!(
                "the {} parameters at {site} hold {n} values; expected {want}: a module made \
                 for another model has another width",
                kind.name()
            ))
            .into());
        }
    };
    Ok(ScalarModule::new(kind, site, params, beta, d)?)
}

fn extract_sites(model: &Model, layers: &Bound<'_, PyAny>, site: SiteKind) -> PyResult<Vec<Site>> {
    if site == SiteKind::Embed {
        return Err(invalid(
            "site 'embed' has no layers: to read the embeddings pass 'embed' in layers with \
             the default site 'resid_post'; expected site 'resid_post', 'resid_mid', \
             'attn_out' or 'mlp_out'",
        ));
    }
    let mut sites = Vec::new();
    for item in layers.try_iter()? {
        let item = item?;
        if let Ok(s) = item.cast::<PyString>() {
            if s.to_cow()? == "embed" {
                if site != SiteKind::ResidPost {
                    return Err(invalid(format!(
                        "layers names 'embed' with site '{}': the embeddings are a residual \
                         stream, read them with site 'resid_post' (in a separate call for \
                         another site)",
                        site.name()
                    )));
                }
                sites.push(Site::Embed);
                continue;
            }
            return Err(invalid(format!(
                "layer '{}' is not a layer (expected an int or 'embed')",
                s.to_cow()?
            )));
        }
        let l: i64 = item
            .extract()
            .map_err(|_| invalid("layers must be ints (or 'embed')"))?;
        sites.push(site.at(model.resolve_layer(l)?));
    }
    Ok(sites)
}

fn extract_reduce(reduce: &Bound<'_, PyAny>) -> PyResult<Reduce> {
    if let Ok(s) = reduce.cast::<PyString>() {
        return Ok(Reduce::parse(&s.to_cow()?)?);
    }
    if let Ok(i) = reduce.extract::<i64>() {
        return Ok(Reduce::Index(i));
    }
    Err(invalid(
        "position must be 'last', 'mean', 'mean_skip_first', 'all' or an int in -2**63..2**63-1",
    ))
}

#[allow(clippy::too_many_arguments)]
/// Generation settings, checked once (by `GenParams::validate`) when made.
#[pyclass(frozen, name = "GenConfig", module = "steerlab._core")]
#[derive(Clone)]
pub struct PyGenConfig {
    inner: GenParams,
}

#[pymethods]
impl PyGenConfig {
    #[new]
    #[pyo3(signature = (max_new_tokens = 64, temperature = 0.0, top_k = None, top_p = None, seed = None, stop = None, ignore_eos = false))]
    fn new(
        max_new_tokens: i64,
        temperature: f64,
        top_k: Option<i64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stop: Option<Vec<String>>,
        ignore_eos: bool,
    ) -> PyResult<Self> {
        if max_new_tokens < 0 {
            return Err(invalid(format!(
                "max_new_tokens must be >= 0, got {max_new_tokens}"
            )));
        }
        let top_k = match top_k {
            Some(k) if k < 1 => return Err(invalid(format!("top_k must be >= 1, got {k}"))),
            Some(k) => Some(k as usize),
            None => None,
        };
        let inner = GenParams {
            max_new_tokens: max_new_tokens as usize,
            temperature,
            top_k,
            top_p,
            seed,
            stop: stop.unwrap_or_default(),
            ignore_eos,
        };
        inner.validate()?;
        Ok(PyGenConfig { inner })
    }

    #[getter]
    fn max_new_tokens(&self) -> usize {
        self.inner.max_new_tokens
    }

    fn __repr__(&self) -> String {
        format!("GenConfig({:?})", self.inner)
    }
}

/// A loaded model: immutable, shared between threads.
#[pyclass(frozen, name = "Model", module = "steerlab._core")]
pub struct PyModel {
    pub(super) inner: Arc<Model>,
}

#[pymethods]
impl PyModel {
    #[staticmethod]
    #[pyo3(signature = (path, dtype = "auto", device = "cpu"))]
    fn load(py: Python<'_>, path: PathBuf, dtype: &str, device: &str) -> PyResult<PyModel> {
        let dtype = WeightDtype::parse(dtype)?;
        let device = parse_device(device)?;
        let m = py.detach(|| in_pool(|| Model::load(&path, dtype, device)))?;
        Ok(PyModel { inner: Arc::new(m) })
    }

    #[getter]
    fn n_layers(&self) -> usize {
        self.inner.cfg.n_layers
    }
    #[getter]
    fn d_model(&self) -> usize {
        self.inner.cfg.d_model
    }
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.cfg.vocab_size
    }
    #[getter]
    fn max_context(&self) -> usize {
        self.inner.cfg.max_context
    }
    #[getter]
    fn arch(&self) -> &'static str {
        self.inner.cfg.arch.name()
    }
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.fingerprint.clone()
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype.name()
    }
    #[getter]
    fn device(&self) -> String {
        device_name(&self.inner.device)
    }
    #[getter]
    fn path(&self) -> String {
        self.inner.path.display().to_string()
    }
    #[getter]
    fn chat_template(&self) -> Option<String> {
        self.inner.tokenizer.chat_template.clone()
    }
    #[getter]
    fn bos_token(&self) -> Option<String> {
        let t = &self.inner.tokenizer;
        t.bos_id.and_then(|i| t.id_to_token(i))
    }
    #[getter]
    fn eos_token(&self) -> Option<String> {
        let t = &self.inner.tokenizer;
        t.eos_ids.first().and_then(|&i| t.id_to_token(i))
    }
    #[getter]
    fn eos_ids(&self) -> Vec<u32> {
        self.inner.tokenizer.eos_ids.clone()
    }

    #[pyo3(signature = (text, add_special_tokens = true))]
    fn encode(&self, text: &Bound<'_, PyAny>, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let s = text
            .cast::<PyString>()
            .map_err(|_| invalid("text must be a str"))?
            .to_cow()?;
        Ok(self.inner.tokenizer.encode(&s, add_special_tokens)?)
    }

    #[pyo3(signature = (ids, skip_special_tokens = false))]
    fn decode(&self, ids: &Bound<'_, PyAny>, skip_special_tokens: bool) -> PyResult<String> {
        let ids: Vec<i64> = ids
            .extract()
            .map_err(|_| invalid("ids must be a sequence of ints"))?;
        let ids: Vec<u32> = ids
            .into_iter()
            .map(|i| {
                u32::try_from(i).map_err(|_| {
                    Error::out_of_range(format!("token id {i} is negative or too large"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(self.inner.tokenizer.decode(&ids, skip_special_tokens)?)
    }

    #[pyo3(signature = (batch, layers, reduce, steering = None, logits = false, site = "resid_post"))]
    #[allow(clippy::too_many_arguments)]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        batch: &Bound<'py, PyAny>,
        layers: &Bound<'py, PyAny>,
        reduce: &Bound<'py, PyAny>,
        steering: Option<&Bound<'py, PyAny>>,
        logits: bool,
        site: &str,
    ) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let m = &self.inner;
        let rows = extract_batch(batch)?;
        let sites = extract_sites(m, layers, SiteKind::parse(site)?)?;
        let reduce = extract_reduce(reduce)?;
        let steering = extract_steering(m, steering)?;
        let (cap, lg) = interruptible(py, |cancel| {
            forward_batch(m, &rows, sites, reduce, steering.as_deref(), logits, cancel)
        })?;
        let cap_obj: Py<PyAny> = match cap {
            None => py.None(),
            Some(Captured::Reduced { data, shape }) => {
                to_numpy(py, data, &shape)?.into_any().unbind()
            }
            Some(Captured::PerRow(rows)) => {
                let list = PyList::empty(py);
                for (data, shape) in rows {
                    list.append(to_numpy(py, data, &shape)?)?;
                }
                list.into_any().unbind()
            }
        };
        let lg_obj: Py<PyAny> = match lg {
            None => py.None(),
            Some((data, shape)) => to_numpy(py, data, &shape)?.into_any().unbind(),
        };
        Ok((cap_obj, lg_obj))
    }

    #[pyo3(signature = (batch, steering = None))]
    fn token_logprobs<'py>(
        &self,
        py: Python<'py>,
        batch: &Bound<'py, PyAny>,
        steering: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let m = &self.inner;
        let rows = extract_batch(batch)?;
        let steering = extract_steering(m, steering)?;
        let out = interruptible(py, |cancel| {
            token_logprobs(m, &rows, steering.as_deref(), cancel)
        })?;
        let list = PyList::empty(py);
        for row in out {
            let n = row.len();
            list.append(to_numpy(py, row, &[n])?)?;
        }
        Ok(list)
    }

    #[pyo3(signature = (batch, steering = None, config = None))]
    fn generate(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        steering: Option<&Bound<'_, PyAny>>,
        config: Option<&PyGenConfig>,
    ) -> PyResult<Vec<Vec<u32>>> {
        let g = self.start(py, batch, steering, config)?;
        interruptible(py, |cancel| g.run(cancel))
    }

    /// Generate and record, at `layers` (site `site`), the activation that produced each
    /// new token: (new ids per row, one [len(layers), n_new_r, d_model] array per row).
    #[pyo3(signature = (batch, layers, site = "resid_post", steering = None, config = None))]
    #[allow(clippy::type_complexity)]
    fn generate_monitored<'py>(
        &self,
        py: Python<'py>,
        batch: &Bound<'py, PyAny>,
        layers: &Bound<'py, PyAny>,
        site: &str,
        steering: Option<&Bound<'py, PyAny>>,
        config: Option<&PyGenConfig>,
    ) -> PyResult<(Vec<Vec<u32>>, Vec<Bound<'py, PyAny>>)> {
        let sites = extract_sites(&self.inner, layers, SiteKind::parse(site)?)?;
        let mut g = self
            .start(py, batch, steering, config)?
            .with_monitor(sites)?;
        let acts = interruptible(py, |cancel| {
            g.run_all(cancel)?;
            Ok(g.monitored().unwrap_or_default())
        })?;
        let arrays = acts
            .into_iter()
            .map(|(data, shape)| Ok(to_numpy(py, data, &shape)?.into_any()))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((g.into_generated(), arrays))
    }

    /// Generate with the traces a controller evaluation needs: (new ids per row, the
    /// controller gate at the position that predicted each new token per row (None
    /// without a controller), the log-probability of each new token per row (None unless
    /// `logprobs`)). `forced` gives each row's first new tokens instead of sampling them;
    /// the row then ends, or goes on sampling with `then_sample`.
    #[pyo3(signature = (batch, steering = None, config = None, forced = None, logprobs = false, then_sample = false))]
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn generate_traced(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        steering: Option<&Bound<'_, PyAny>>,
        config: Option<&PyGenConfig>,
        forced: Option<Vec<Vec<u32>>>,
        logprobs: bool,
        then_sample: bool,
    ) -> PyResult<(Vec<Vec<u32>>, Option<Vec<Vec<f32>>>, Option<Vec<Vec<f32>>>)> {
        let mut g = self.start(py, batch, steering, config)?;
        if let Some(f) = forced {
            g = g.with_forced(f, then_sample)?;
        }
        if logprobs {
            g = g.with_logprobs();
        }
        interruptible(py, |cancel| g.run_all(cancel))?;
        let gates = g.gates();
        let lps = g.logprobs().map(<[Vec<f32>]>::to_vec);
        Ok((g.into_generated(), gates, lps))
    }

    /// Per row, `KL(p_unsteered || p_steered)` in nats at each position that predicts a
    /// token of `forced[r]` (teacher-forced, generation semantics).
    #[pyo3(signature = (batch, forced, steering = None))]
    fn forced_kl<'py>(
        &self,
        py: Python<'py>,
        batch: &Bound<'py, PyAny>,
        forced: Vec<Vec<u32>>,
        steering: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let rows = extract_batch(batch)?;
        let steering = extract_steering(&self.inner, steering)?;
        let m = self.inner.clone();
        let out = interruptible(py, |cancel| {
            crate::generate::forced_kl(m, &rows, forced, steering.as_deref(), cancel)
        })?;
        out.into_iter()
            .map(|r| {
                let n = r.len();
                Ok(to_numpy(py, r, &[n])?.into_any())
            })
            .collect()
    }

    #[pyo3(signature = (batch, steering = None, config = None, row_configs = None))]
    fn start_generation(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        steering: Option<&Bound<'_, PyAny>>,
        config: Option<&PyGenConfig>,
        row_configs: Option<Vec<PyRef<'_, PyGenConfig>>>,
    ) -> PyResult<PyGeneration> {
        let g = match row_configs {
            None => self.start(py, batch, steering, config)?,
            Some(configs) => {
                if config.is_some() {
                    return Err(Error::invalid(
                        "give either config (one for all rows) or row_configs (one per row), \
                         not both",
                    )
                    .into());
                }
                let params: Vec<GenParams> = configs.iter().map(|c| c.inner.clone()).collect();
                let rows = extract_batch(batch)?;
                let steering = extract_steering(&self.inner, steering)?;
                let m = self.inner.clone();
                py.detach(|| Generation::per_row(m, &rows, steering.as_deref(), params))?
            }
        };
        Ok(PyGeneration {
            inner: Mutex::new(Some(g)),
        })
    }

    fn __repr__(&self) -> String {
        let c = &self.inner.cfg;
        format!(
            "Model(arch='{}', n_layers={}, d_model={}, dtype='{}', path='{}')",
            c.arch.name(),
            c.n_layers,
            c.d_model,
            self.inner.dtype.name(),
            self.inner.path.display()
        )
    }
}

impl PyModel {
    fn start(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        steering: Option<&Bound<'_, PyAny>>,
        config: Option<&PyGenConfig>,
    ) -> PyResult<Generation> {
        let params = config.map(|c| c.inner.clone()).unwrap_or_default();
        let rows = extract_batch(batch)?;
        let steering = extract_steering(&self.inner, steering)?;
        let m = self.inner.clone();
        Ok(py.detach(|| Generation::new(m, &rows, steering.as_deref(), params))?)
    }
}

/// A generation in progress, stepped from Python for streaming.
#[pyclass(name = "Generation", module = "steerlab._core")]
pub struct PyGeneration {
    inner: Mutex<Option<Generation>>,
}

#[pymethods]
impl PyGeneration {
    fn step(&self, py: Python<'_>) -> PyResult<Option<Vec<Option<u32>>>> {
        py.detach(|| {
            let mut guard = self.inner.lock().map_err(|_| {
                Error::invalid("generation state is poisoned by an earlier failure")
            })?;
            match guard.as_mut() {
                None => Ok(None),
                Some(g) => {
                    let r = g.step();
                    if !matches!(r, Ok(Some(_))) {
                        *guard = None;
                    }
                    r
                }
            }
        })
        .map_err(PyErr::from)
    }

    /// End row `row` now; the other rows go on unchanged.
    fn finish(&self, row: usize) -> PyResult<()> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| Error::invalid("generation state is poisoned by an earlier failure"))?;
        match guard.as_mut() {
            None => Ok(()),
            Some(g) => Ok(g.finish(row)?),
        }
    }
}
