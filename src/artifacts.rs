//! Steering vectors on disk.
//!
//! - steerlab's own format: safetensors with one f32 tensor per layer (`layer.N`, width
//!   `d_model`) and the vector's metadata as JSON under the header key `steerlab`.
//! - llama.cpp control vectors (also written and read by repeng): GGUF with
//!   `general.architecture = "controlvector"`, `controlvector.model_hint` (string),
//!   `controlvector.layer_count` (u32) and one f32 tensor `direction.N` per layer.
//!   llama.cpp adds `direction.N` to the output of block N (0-based), which is steerlab
//!   layer N: the indices are written unchanged. llama.cpp has no slot for block 0's
//!   output (`direction.0` is rejected), so a vector with layer 0 cannot be exported.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};

/// Per-layer directions as stored: layer index -> f32 values.
pub type Directions = BTreeMap<usize, Vec<f32>>;

fn check_directions(dirs: &Directions) -> Result<usize> {
    let Some(width) = dirs.values().next().map(Vec::len) else {
        return Err(Error::invalid("a steering vector needs at least one layer"));
    };
    for (layer, v) in dirs {
        if v.is_empty() {
            return Err(Error::shape(format!(
                "the direction for layer {layer} has 0 values; expected a non-empty 1-D \
                 vector [d_model]"
            )));
        }
        if v.len() != width {
            return Err(Error::shape(format!(
                "every layer of a steering vector must have the same width: layer {layer} \
                 has {} values, expected {width} (the width of the first layer)",
                v.len()
            )));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(format!(
                "layer {layer} of the steering vector has a NaN or inf value at index {i}"
            )));
        }
    }
    Ok(width)
}

/// Write directions and a metadata JSON string as safetensors.
pub fn save_safetensors(path: &Path, dirs: &Directions, metadata_json: &str) -> Result<()> {
    check_directions(dirs)?;
    let tensors: Vec<(String, Vec<usize>, &[f32])> = dirs
        .iter()
        .map(|(layer, v)| (format!("layer.{layer}"), vec![v.len()], v.as_slice()))
        .collect();
    write_f32_tensors(path, &tensors, VECTOR_FORMAT, metadata_json)
}

/// The `format` header value of steerlab's steering-vector files.
const VECTOR_FORMAT: &str = "steerlab.steering_vector";

/// Write `(name, shape, values)` f32 tensors as safetensors with the header metadata
/// `format` = `format` and `steerlab` = `metadata_json`. Shapes are trusted (callers
/// check them).
fn write_f32_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    format: &str,
    metadata_json: &str,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|t| (name.clone(), t))
                .map_err(|e| Error::format(format!("cannot describe tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    meta.insert("steerlab".to_string(), metadata_json.to_string());
    meta.insert("format".to_string(), format.to_string());
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(io) => Error::io(path, io),
        other => Error::format(format!("{}: cannot write: {other}", path.display())),
    })
}

/// Layer indices a vector file may name (no model has more layers: see
/// `model::config::MAX_LAYERS`).
const MAX_LAYER_INDEX: usize = crate::model::config::MAX_LAYERS;
/// Widths a vector file may have (a model's d_model: `model::config::MAX_D_MODEL`).
const MAX_WIDTH: usize = crate::model::config::MAX_D_MODEL;
/// The safetensors JSON header of a vector file (a few KB in practice).
const MAX_VECTOR_HEADER: u64 = 16 << 20;

/// A layer index from a tensor name's suffix: canonical decimal (no sign, no leading
/// zeros) within 0..=MAX_LAYER_INDEX.
fn layer_index(suffix: &str) -> Option<usize> {
    let n: usize = suffix.parse().ok()?;
    (n.to_string() == suffix && n <= MAX_LAYER_INDEX).then_some(n)
}

/// Check a vector file's safetensors header with bounded reads before anything is
/// allocated from it (`safetensors_header::check`: length, dtypes, shapes, byte ranges
/// against the file), then what a steerlab vector must be: `layer.N` tensors, 1-D F32 of
/// 1..=MAX_WIDTH values, and a `steerlab` metadata string holding a JSON object. Returns
/// that string.
fn check_vector_header(path: &Path) -> Result<String> {
    let bad = |msg: String| Error::format(format!("{}: {msg}", path.display()));
    let header = crate::safetensors_header::check(path, MAX_VECTOR_HEADER)?;
    for t in &header.tensors {
        let name = &t.name;
        if name.strip_prefix("layer.").and_then(layer_index).is_none() {
            return Err(bad(format!(
                "unexpected tensor '{name}' (expected layer.N with N in 0..={MAX_LAYER_INDEX})"
            )));
        }
        let width = match t.shape.as_slice() {
            [w] if (1..=MAX_WIDTH as u64).contains(w) => *w,
            _ => {
                return Err(bad(format!(
                "tensor '{name}' is {} {:?}; expected a 1-D F32 tensor of 1..={MAX_WIDTH} values",
                t.dtype, t.shape
            )))
            }
        };
        if t.dtype != "F32" {
            return Err(bad(format!(
                "tensor '{name}' is {} [{width}]; expected a 1-D F32 tensor",
                t.dtype
            )));
        }
    }
    steerlab_metadata(
        path,
        &header,
        "a steerlab steering vector",
        "the vector's info",
    )
}

/// The `steerlab` metadata string of a checked header, which must hold a JSON object;
/// `what` names the kind of file expected, `info` what the object describes.
fn steerlab_metadata(
    path: &Path,
    header: &crate::safetensors_header::Header,
    what: &str,
    info: &str,
) -> Result<String> {
    let bad = |msg: String| Error::format(format!("{}: {msg}", path.display()));
    let text = match header.metadata.get("steerlab") {
        Some(serde_json::Value::String(s)) => s,
        _ => {
            return Err(bad(format!(
                "no 'steerlab' metadata in the header: not {what}"
            )))
        }
    };
    // serde_json bounds nesting, so deep nesting is an error here, not a RecursionError
    // in Python later.
    let parsed: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| bad(format!("metadata 'steerlab' is not valid JSON ({e})")))?;
    if !parsed.is_object() {
        return Err(bad(format!(
            "metadata 'steerlab' is not a JSON object (expected {info})"
        )));
    }
    Ok(text.clone())
}

/// Read a steerlab safetensors vector: directions and the metadata JSON string.
///
/// The header is checked first with bounded reads (see `check_vector_header`); only
/// then is the file read and handed to the safetensors parser.
pub fn load_safetensors(path: &Path) -> Result<(Directions, String)> {
    let meta_json = check_vector_header(path)?;
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::format(format!("{}: {msg}", path.display()));
    let st = SafeTensors::deserialize(&data)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let mut dirs = Directions::new();
    for (name, view) in st.tensors() {
        let layer = name
            .strip_prefix("layer.")
            .and_then(layer_index)
            .ok_or_else(|| bad(format!("unexpected tensor '{name}' (expected layer.N)")))?;
        if view.dtype() != Dtype::F32 || view.shape().len() != 1 {
            return Err(bad(format!(
                "tensor '{name}' is {:?} {:?}; expected a 1-D F32 tensor",
                view.dtype(),
                view.shape()
            )));
        }
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        dirs.insert(layer, v);
    }
    check_directions(&dirs).map_err(|e| bad(e.to_string()))?;
    Ok((dirs, meta_json))
}

/// One named f32 tensor of a [`save_named`] file: its shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The largest rank a [`NamedTensor`] may have.
pub const MAX_NAMED_RANK: usize = 8;

/// Check `(shape, values)` of tensor `name`: rank 1..=MAX_NAMED_RANK, no zero
/// dimension, `values.len()` = the product of `shape`, every value finite.
fn check_named(name: &str, shape: &[usize], values: &[f32]) -> std::result::Result<(), String> {
    if name.is_empty() || name == "__metadata__" {
        return Err(format!(
            "tensor name '{name}' is reserved or empty; expected a non-empty name"
        ));
    }
    if shape.is_empty() || shape.len() > MAX_NAMED_RANK || shape.contains(&0) {
        return Err(format!(
            "tensor '{name}' has shape {shape:?}; expected 1 to {MAX_NAMED_RANK} dimensions, \
             none of them 0"
        ));
    }
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(values.len()) {
        return Err(format!(
            "tensor '{name}' has shape {shape:?} but {} values",
            values.len()
        ));
    }
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "tensor '{name}' has a NaN or inf value at flat index {i}"
        ));
    }
    Ok(())
}

/// Check what [`save_named`] checks of its tensors: at least one, unique names, and
/// each tensor one that [`load_named`] accepts (non-empty name other than
/// `__metadata__`, rank 1..=8, no 0 dimension, as many values as the shape holds, all
/// finite). Errors: [`Error::InvalidArgument`] naming the tensor and the problem.
pub fn check_named_tensors(tensors: &[NamedTensor]) -> Result<()> {
    if tensors.is_empty() {
        return Err(Error::invalid("no tensors to save; expected at least one"));
    }
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        check_named(&t.name, &t.shape, &t.values).map_err(Error::invalid)?;
        if !names.insert(t.name.as_str()) {
            return Err(Error::invalid(format!(
                "tensor name '{}' appears twice; expected unique names",
                t.name
            )));
        }
    }
    Ok(())
}

/// Write named f32 tensors and a metadata JSON object as safetensors, with the header
/// metadata `format` = `format` (which [`load_named`] checks) and `steerlab` =
/// `metadata_json`.
///
/// Errors: [`Error::InvalidArgument`] for no tensors, a repeated name, metadata that is
/// not a JSON object, or a tensor [`load_named`] would refuse (empty or reserved name,
/// rank outside 1..=8, a 0 dimension, a value count that does not match the shape, NaN or
/// inf); [`Error::Io`] when the file cannot be written.
pub fn save_named(
    path: &Path,
    tensors: &[NamedTensor],
    format: &str,
    metadata_json: &str,
) -> Result<()> {
    check_named_tensors(tensors)?;
    match serde_json::from_str::<serde_json::Value>(metadata_json) {
        Ok(v) if v.is_object() => {}
        _ => return Err(Error::invalid("metadata_json is not a JSON object")),
    }
    let list: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone(), t.values.as_slice()))
        .collect();
    write_f32_tensors(path, &list, format, metadata_json)
}

/// The header a named-tensor file may have (the metadata JSON is a few KB to MB).
const MAX_NAMED_HEADER: u64 = 64 << 20;

/// Read a [`save_named`] file whose `format` header value must be `format`; `what`
/// names the kind of file for messages ("a steerlab learned module"). Returns the
/// tensors ordered by name and the `steerlab` metadata JSON string (an object).
///
/// The header is checked with bounded reads before anything is allocated from it (see
/// `safetensors_header::check`), then the format, every tensor's dtype (F32) and shape,
/// and after reading, every value (finite).
///
/// Errors: [`Error::NotFound`] / [`Error::Io`] when the file cannot be read,
/// [`Error::Format`] naming the path and the problem for anything else.
pub fn load_named(path: &Path, format: &str, what: &str) -> Result<(Vec<NamedTensor>, String)> {
    let bad = |msg: String| Error::format(format!("{}: {msg}", path.display()));
    let header = crate::safetensors_header::check(path, MAX_NAMED_HEADER)?;
    match header.metadata.get("format").and_then(|v| v.as_str()) {
        Some(f) if f == format => {}
        Some(f) => {
            return Err(bad(format!(
                "the header's format is '{f}'; expected '{format}' ({what})"
            )))
        }
        None => return Err(bad(format!("no 'format' in the header: not {what}"))),
    }
    for t in &header.tensors {
        let ok_shape = (1..=MAX_NAMED_RANK).contains(&t.shape.len()) && !t.shape.contains(&0);
        if t.dtype != "F32" || !ok_shape {
            return Err(bad(format!(
                "tensor '{}' is {} {:?}; expected an F32 tensor of 1 to {MAX_NAMED_RANK} \
                 dimensions, none of them 0",
                t.name, t.dtype, t.shape
            )));
        }
    }
    let meta_json = steerlab_metadata(path, &header, what, "the module's info")?;
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&data)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let mut out = Vec::with_capacity(header.tensors.len());
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor '{name}' is not F32")));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = view.shape().to_vec();
        check_named(&name, &shape, &values).map_err(bad)?;
        out.push(NamedTensor {
            name,
            shape,
            values,
        });
    }
    if out.is_empty() {
        return Err(bad(format!("the file holds no tensors: not {what}")));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, meta_json))
}

/// Write a llama.cpp control vector (GGUF). Layer 0 has no slot in llama.cpp.
pub fn save_control_vector(path: &Path, dirs: &Directions, model_hint: &str) -> Result<()> {
    check_directions(dirs)?;
    if dirs.contains_key(&0) {
        return Err(Error::invalid(
            "llama.cpp control vectors cannot steer layer 0 (the output of block 0: llama.cpp \
             rejects direction.0); drop it with vec.at([...]) before exporting",
        ));
    }
    let tensors = dirs
        .iter()
        .map(|(layer, v)| {
            let t = Tensor::from_slice(v, v.len(), &Device::Cpu)?;
            Ok((
                format!("direction.{layer}"),
                QTensor::quantize(&t, GgmlDType::F32)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let arch = Value::String("controlvector".into());
    let hint = Value::String(model_hint.into());
    let count = Value::U32(u32::try_from(dirs.len()).unwrap_or(u32::MAX));
    let metadata = [
        ("general.architecture", &arch),
        ("controlvector.model_hint", &hint),
        ("controlvector.layer_count", &count),
    ];
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::new(file);
    gguf_file::write(&mut w, &metadata, &refs)?;
    w.into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// A control vector read from GGUF.
#[derive(Debug)]
pub struct ControlVector {
    pub directions: Directions,
    pub model_hint: Option<String>,
    pub layer_count: Option<u32>,
}

/// Read a llama.cpp / repeng control vector (GGUF).
pub fn load_control_vector(path: &Path) -> Result<ControlVector> {
    let g = crate::gguf::open(path)?;
    let bad = |msg: String| Error::format(format!("{}: {msg}", path.display()));
    match g.opt_str("general.architecture")? {
        Some("controlvector") => {}
        Some(other) => {
            return Err(bad(format!(
                "general.architecture is '{other}', expected 'controlvector' (is this a model \
                 file rather than a control vector?)"
            )))
        }
        None => return Err(bad("no general.architecture; not a control vector".into())),
    }
    let model_hint = g.opt_str("controlvector.model_hint")?.map(str::to_string);
    let layer_count = g.opt_u32("controlvector.layer_count")?;
    let mut dirs = Directions::new();
    // Names, types and shapes are checked for every tensor before any data is read.
    for (name, info) in &g.content.tensor_infos {
        let layer = name
            .strip_prefix("direction.")
            .and_then(layer_index)
            .ok_or_else(|| {
                bad(format!(
                    "unexpected tensor '{name}' (expected direction.N with N in 1..={MAX_LAYER_INDEX})"
                ))
            })?;
        if layer == 0 {
            return Err(bad(
                "tensor direction.0 is not a valid llama.cpp slot (layers start at 1)".into(),
            ));
        }
        // llama.cpp accepts only 1-D F32 directions; anything else is refused, not
        // flattened.
        let dims = info.shape.dims();
        if info.ggml_dtype != GgmlDType::F32 || dims.len() != 1 {
            return Err(bad(format!(
                "tensor '{name}' is {:?} with shape {dims:?}; expected a 1-D F32 tensor (as llama.cpp requires)",
                info.ggml_dtype
            )));
        }
        if dims[0] > MAX_WIDTH {
            return Err(bad(format!(
                "tensor '{name}' has {} values, more than any model's width ({MAX_WIDTH})",
                dims[0]
            )));
        }
    }
    for name in g.content.tensor_infos.keys() {
        let layer = name
            .strip_prefix("direction.")
            .and_then(layer_index)
            .ok_or_else(|| bad(format!("unexpected tensor '{name}'")))?;
        let t = g.tensor(name, &Device::Cpu)?.dequantize(&Device::Cpu)?;
        let v = t.to_vec1::<f32>()?;
        dirs.insert(layer, v);
    }
    if dirs.is_empty() {
        return Err(bad("the control vector has no direction.N tensors".into()));
    }
    check_directions(&dirs).map_err(|e| bad(e.to_string()))?;
    Ok(ControlVector {
        directions: dirs,
        model_hint,
        layer_count,
    })
}

#[cfg(test)]
mod tests;
