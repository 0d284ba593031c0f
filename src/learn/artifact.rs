//! A trained module on disk: its named f32 tensors as safetensors, and JSON metadata
//! (kind, the model it was trained on, sites, hyperparameters, training history) under
//! the header key `steerlab`, with header `format` = [`LEARNED_FORMAT`].
//!
//! Reading and writing go through `artifacts::{save_named, load_named}`, which check a
//! hostile file's header with bounded reads before anything is allocated from it.
//! [`LearnedArtifact::load`] also refuses a module trained on another model: the
//! fingerprint and `d_model` in the file must match the model's.
//!
//! Metadata JSON (format version 1):
//! ```text
//! { "format_version": 1, "kind": "optimized_vector", "fingerprint": "<sha256 hex>",
//!   "d_model": 576, "n_layers": 30, "sites": ["resid_post.15"],
//!   "hyperparameters": {"lr": 0.01, ...},
//!   "history": {"steps": 100, "first_loss": 3.2, "final_loss": 1.1, "best_loss": 1.0,
//!               "best_step": 97},
//!   "records": [{"step": 0, "loss": 3.2, "grad_norm": 0.8, "lr": 0.01,
//!                "extra": [["kl", 0.0]]}, ...] }
//! ```
//! An `extra` value that is NaN or inf is stored as `null`.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::artifacts::{check_named_tensors, load_named, save_named, NamedTensor};
use crate::error::{Error, Result};
use crate::learn::trainer::StepRecord;
use crate::model::config::{MAX_D_MODEL, MAX_LAYERS};

/// The header `format` value of a learned module file.
pub const LEARNED_FORMAT: &str = "steerlab.learned_module";
/// The metadata layout this code writes; files with a higher version are refused.
pub const FORMAT_VERSION: u64 = 1;

const WHAT: &str = "a steerlab learned module";

/// The history of a training run in a few numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HistorySummary {
    /// Completed steps.
    pub steps: usize,
    /// Loss of the first step, of the last, the lowest and its step (`None` without steps).
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub best_loss: Option<f64>,
    pub best_step: Option<usize>,
}

impl HistorySummary {
    pub fn from_history(history: &[StepRecord]) -> Self {
        let best = history
            .iter()
            .min_by(|a, b| a.loss.total_cmp(&b.loss).then(a.step.cmp(&b.step)));
        Self {
            steps: history.len(),
            first_loss: history.first().map(|r| r.loss),
            final_loss: history.last().map(|r| r.loss),
            best_loss: best.map(|r| r.loss),
            best_step: best.map(|r| r.step),
        }
    }
}

/// One [`StepRecord`] as stored (JSON has no NaN: a non-finite extra is `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub extra: Vec<(String, Option<f64>)>,
}

impl From<&StepRecord> for StoredRecord {
    fn from(r: &StepRecord) -> Self {
        Self {
            step: r.step,
            loss: r.loss,
            grad_norm: r.grad_norm,
            lr: r.lr,
            extra: r
                .extra
                .iter()
                .map(|(k, v)| (k.clone(), v.is_finite().then_some(*v)))
                .collect(),
        }
    }
}

/// What a learned module file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    pub format_version: u64,
    /// What the tensors are (e.g. `"optimized_vector"`, `"activation_scalars"`): the
    /// caller's name, non-empty.
    pub kind: String,
    /// The fingerprint of the model the module was trained on (non-empty).
    pub fingerprint: String,
    /// That model's width (1..=65536) and number of blocks (1..=4096).
    pub d_model: usize,
    pub n_layers: usize,
    /// The sites the module acts on, in the caller's notation (e.g. `"resid_post.15"`).
    pub sites: Vec<String>,
    /// Training settings, as the caller wants them recorded.
    #[serde(default)]
    pub hyperparameters: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub history: HistorySummary,
    /// One record per step.
    #[serde(default)]
    pub records: Vec<StoredRecord>,
}

impl ArtifactMeta {
    /// Metadata for a module of `kind` trained on the model (`fingerprint`, `d_model`,
    /// `n_layers`) at `sites`, with no hyperparameters and the summary and records of
    /// `history`.
    pub fn new(
        kind: &str,
        fingerprint: &str,
        d_model: usize,
        n_layers: usize,
        sites: Vec<String>,
        history: &[StepRecord],
    ) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            kind: kind.to_string(),
            fingerprint: fingerprint.to_string(),
            d_model,
            n_layers,
            sites,
            hyperparameters: serde_json::Map::new(),
            history: HistorySummary::from_history(history),
            records: history.iter().map(StoredRecord::from).collect(),
        }
    }

    /// Impossible values: a message naming the field, its value and what was expected.
    fn check(&self) -> std::result::Result<(), String> {
        if self.format_version == 0 || self.format_version > FORMAT_VERSION {
            return Err(format!(
                "format_version is {}; this steerlab reads versions 1 to {FORMAT_VERSION} \
                 (a newer steerlab wrote it?)",
                self.format_version
            ));
        }
        if self.kind.is_empty() {
            return Err("kind is empty; expected the module's kind".into());
        }
        if self.fingerprint.is_empty() {
            return Err("fingerprint is empty; expected a model fingerprint".into());
        }
        if !(1..=MAX_D_MODEL).contains(&self.d_model) {
            return Err(format!(
                "d_model is {}; expected 1..={MAX_D_MODEL}",
                self.d_model
            ));
        }
        if !(1..=MAX_LAYERS).contains(&self.n_layers) {
            return Err(format!(
                "n_layers is {}; expected 1..={MAX_LAYERS}",
                self.n_layers
            ));
        }
        Ok(())
    }
}

/// A learned module: metadata and named f32 tensors (ordered by name).
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedArtifact {
    pub meta: ArtifactMeta,
    pub tensors: Vec<NamedTensor>,
}

impl LearnedArtifact {
    /// An artifact from candle tensors (any float dtype, converted to f32; e.g.
    /// `Trainer::best_params()`).
    ///
    /// Errors: [`Error::InvalidArgument`] for impossible metadata (see [`ArtifactMeta`]'s
    /// field ranges), no tensors, a repeated or empty name, a 0-d or empty tensor, or a
    /// NaN/inf value.
    pub fn from_tensors(meta: ArtifactMeta, tensors: &[(String, Tensor)]) -> Result<Self> {
        meta.check().map_err(Error::invalid)?;
        let mut named = tensors
            .iter()
            .map(|(name, t)| {
                Ok(NamedTensor {
                    name: name.clone(),
                    shape: t.dims().to_vec(),
                    values: t
                        .to_dtype(candle_core::DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        named.sort_by(|a, b| a.name.cmp(&b.name));
        let art = Self {
            meta,
            tensors: named,
        };
        // The checks save_named makes, now rather than at save time.
        check_named_tensors(&art.tensors)?;
        Ok(art)
    }

    /// The tensors as candle tensors on `device`, by name.
    pub fn to_tensors(&self, device: &Device) -> Result<Vec<(String, Tensor)>> {
        self.tensors
            .iter()
            .map(|t| {
                Ok((
                    t.name.clone(),
                    Tensor::from_slice(&t.values, t.shape.as_slice(), device)?,
                ))
            })
            .collect()
    }

    /// Write the module to `path` (safetensors; see the module docs for the metadata).
    ///
    /// Errors: [`Error::InvalidArgument`] for impossible metadata or tensors (see
    /// `artifacts::save_named`); [`Error::Io`] when the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.meta.check().map_err(Error::invalid)?;
        let json = serde_json::to_string(&self.meta)
            .map_err(|e| Error::invalid(format!("cannot encode the metadata: {e}")))?;
        save_named(path, &self.tensors, LEARNED_FORMAT, &json)
    }

    /// Read a module without checking which model it is for (to inspect a file).
    ///
    /// Errors: [`Error::NotFound`] / [`Error::Io`] when the file cannot be read;
    /// [`Error::Format`] naming the path for a file that is not a learned module, is
    /// truncated or corrupt, or has impossible metadata; [`Error::Unsupported`] for a
    /// metadata version newer than this code.
    pub fn read(path: &Path) -> Result<Self> {
        let (tensors, json) = load_named(path, LEARNED_FORMAT, WHAT)?;
        let bad = |msg: String| Error::format(format!("{}: {msg}", path.display()));
        let version = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v.get("format_version").and_then(|f| f.as_u64()));
        if let Some(v) = version.filter(|&v| v > FORMAT_VERSION) {
            return Err(Error::unsupported(format!(
                "{}: learned module format_version {v} is newer than this steerlab reads \
                 ({FORMAT_VERSION}); upgrade steerlab",
                path.display()
            )));
        }
        let meta: ArtifactMeta = serde_json::from_str(&json).map_err(|e| {
            bad(format!(
                "metadata 'steerlab' does not describe {WHAT} ({e})"
            ))
        })?;
        meta.check().map_err(|m| bad(format!("metadata: {m}")))?;
        Ok(Self { meta, tensors })
    }

    /// Read a module and check that it was trained on the model with `fingerprint` and
    /// `d_model`.
    ///
    /// Errors: as [`LearnedArtifact::read`], and those of
    /// [`LearnedArtifact::check_model`].
    pub fn load(path: &Path, fingerprint: &str, d_model: usize) -> Result<Self> {
        let art = Self::read(path)?;
        art.check_model(fingerprint, d_model)
            .map_err(|e| prefix(path, e))?;
        Ok(art)
    }

    /// Refuse a model other than the one the module was trained on.
    ///
    /// Errors: [`Error::InvalidArgument`] when the fingerprints differ,
    /// [`Error::Shape`] when the widths differ; each message names both values.
    pub fn check_model(&self, fingerprint: &str, d_model: usize) -> Result<()> {
        if self.meta.fingerprint != fingerprint {
            return Err(Error::invalid(format!(
                "this {} module was trained on the model with fingerprint {}, not on this \
                 model (fingerprint {fingerprint}); load it with the model it was trained on",
                self.meta.kind, self.meta.fingerprint
            )));
        }
        if self.meta.d_model != d_model {
            return Err(Error::shape(format!(
                "this {} module was trained on a model with d_model {}; this model has \
                 d_model {d_model}",
                self.meta.kind, self.meta.d_model
            )));
        }
        Ok(())
    }
}

/// `e` with `path: ` before its message (variant kept).
fn prefix(path: &Path, e: Error) -> Error {
    let p = path.display();
    match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{p}: {m}")),
        Error::Shape(m) => Error::Shape(format!("{p}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "ab12cd34";

    fn history() -> Vec<StepRecord> {
        (0..3)
            .map(|i| StepRecord {
                step: i,
                loss: [2.0, 0.5, 1.0][i],
                grad_norm: 0.25 * i as f64,
                lr: 0.01,
                extra: vec![("kl".into(), if i == 1 { f64::NAN } else { 0.1 })],
            })
            .collect()
    }

    fn artifact() -> LearnedArtifact {
        let mut meta = ArtifactMeta::new(
            "optimized_vector",
            FP,
            4,
            30,
            vec!["resid_post.15".into()],
            &history(),
        );
        meta.hyperparameters
            .insert("lr".into(), serde_json::json!(0.01));
        let t = |v: &[f32], s: &[usize]| Tensor::from_slice(v, s, &Device::Cpu).unwrap();
        LearnedArtifact::from_tensors(
            meta,
            &[
                (
                    "layer.15".into(),
                    t(&[1.0, -2.5, 3.25, f32::MIN_POSITIVE], &[4]),
                ),
                (
                    "scales".into(),
                    t(&[0.5, 1.5, -1e-30, 7.0, 8.0, 9.0], &[2, 3]),
                ),
            ],
        )
        .unwrap()
    }

    fn saved(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let p = dir.path().join("m.safetensors");
        artifact().save(&p).unwrap();
        p
    }

    #[test]
    fn round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let p = saved(&dir);
        let back = LearnedArtifact::load(&p, FP, 4).unwrap();
        assert_eq!(back, artifact());
        let h = &back.meta.history;
        assert_eq!(
            (
                h.steps,
                h.first_loss,
                h.final_loss,
                h.best_loss,
                h.best_step
            ),
            (3, Some(2.0), Some(1.0), Some(0.5), Some(1))
        );
        assert_eq!(back.meta.records[1].extra, [("kl".to_string(), None)]);
        assert_eq!(back.meta.records[2].extra, [("kl".to_string(), Some(0.1))]);
        let ts = back.to_tensors(&Device::Cpu).unwrap();
        assert_eq!(ts[1].0, "scales");
        assert_eq!(ts[1].1.dims(), [2, 3]);
        assert_eq!(ts[1].1.to_vec2::<f32>().unwrap()[1], [7.0, 8.0, 9.0]);
    }

    #[test]
    fn another_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = saved(&dir);
        let e = LearnedArtifact::load(&p, "ffff", 4).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        let m = e.to_string();
        assert!(
            m.contains(
                "this optimized_vector module was trained on the model with fingerprint \
                 ab12cd34, not on this model (fingerprint ffff)"
            ),
            "{m}"
        );
        assert!(m.starts_with(&p.display().to_string()), "{m}");
        let e = LearnedArtifact::load(&p, FP, 8).unwrap_err();
        assert!(matches!(e, Error::Shape(_)));
        assert!(
            e.to_string()
                .contains("trained on a model with d_model 4; this model has d_model 8"),
            "{e}"
        );
    }

    #[test]
    fn hostile_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = saved(&dir);
        let bytes = std::fs::read(&p).unwrap();
        let q = dir.path().join("bad.safetensors");
        let load = |b: &[u8]| {
            std::fs::write(&q, b).unwrap();
            LearnedArtifact::read(&q).unwrap_err()
        };
        // Truncated anywhere: an error, never a panic.
        for cut in [0, 7, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            let e = load(&bytes[..cut]);
            assert!(matches!(e, Error::Format(_)), "cut {cut}: {e}");
        }
        // Single-byte corruptions of the length and of ~64 places in the header: an error
        // or an intact load, never a panic.
        let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for i in (0..8).chain((8..8 + hlen).step_by(hlen.div_ceil(64))) {
            let mut b = bytes.clone();
            b[i] ^= 0x5A;
            std::fs::write(&q, &b).unwrap();
            let _ = LearnedArtifact::read(&q);
        }
        // A NaN in the data.
        let mut b = bytes.clone();
        let n = b.len();
        b[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
        let e = load(&b).to_string();
        assert!(e.contains("has a NaN or inf value at flat index"), "{e}");
        // A steering vector file is not a learned module.
        let mut dirs = crate::artifacts::Directions::new();
        dirs.insert(3, vec![1.0, 2.0]);
        crate::artifacts::save_safetensors(&q, &dirs, "{}").unwrap();
        let e = LearnedArtifact::read(&q).unwrap_err().to_string();
        assert!(
            e.contains(
                "the header's format is 'steerlab.steering_vector'; expected \
                 'steerlab.learned_module' (a steerlab learned module)"
            ),
            "{e}"
        );
        // Impossible metadata, written with the right format.
        let named = [NamedTensor {
            name: "w".into(),
            shape: vec![1],
            values: vec![1.0],
        }];
        let mut meta = artifact().meta;
        meta.d_model = 0;
        let json = serde_json::to_string(&meta).unwrap();
        save_named(&q, &named, LEARNED_FORMAT, &json).unwrap();
        let e = LearnedArtifact::read(&q).unwrap_err().to_string();
        assert!(
            e.contains("metadata: d_model is 0; expected 1..=65536"),
            "{e}"
        );
        save_named(&q, &named, LEARNED_FORMAT, r#"{"kind": 3}"#).unwrap();
        let e = LearnedArtifact::read(&q).unwrap_err().to_string();
        assert!(
            e.contains("metadata 'steerlab' does not describe a steerlab learned module"),
            "{e}"
        );
        meta.d_model = 4;
        meta.format_version = 2;
        let json = serde_json::to_string(&meta).unwrap();
        save_named(&q, &named, LEARNED_FORMAT, &json).unwrap();
        let e = LearnedArtifact::read(&q).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        // The smallest metadata that loads: history and hyperparameters default to empty.
        let min = r#"{"format_version":1,"kind":"k","fingerprint":"f","d_model":2,"n_layers":1,"sites":[]}"#;
        save_named(&q, &named, LEARNED_FORMAT, min).unwrap();
        let art = LearnedArtifact::load(&q, "f", 2).unwrap();
        assert_eq!(art.meta.history, HistorySummary::default());
        assert!(art.meta.records.is_empty() && art.meta.hyperparameters.is_empty());
        // Missing file.
        let e = LearnedArtifact::read(&dir.path().join("none")).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
    }

    #[test]
    fn bad_modules_are_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let mut art = artifact();
        art.tensors[0].values[1] = f32::INFINITY;
        let e = art.save(&p).unwrap_err().to_string();
        assert!(
            e.contains("tensor 'layer.15' has a NaN or inf value at flat index 1"),
            "{e}"
        );
        let mut art = artifact();
        art.meta.fingerprint.clear();
        let e = art.save(&p).unwrap_err().to_string();
        assert!(e.contains("fingerprint is empty"), "{e}");
        let scalar = Tensor::new(1f32, &Device::Cpu).unwrap();
        let e = LearnedArtifact::from_tensors(artifact().meta, &[("s".into(), scalar)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor 's' has shape []; expected 1 to 8 dimensions"),
            "{e}"
        );
        assert!(!p.exists());
    }
}
