//! steerlab's engine: model loading, the forward pass with intervention sites,
//! capture, generation, steering-vector maths and diagnostics. Free of pyo3; the Python bindings live in `bindings/`
//! behind the `python` feature.

pub mod analysis;
pub mod artifacts;
pub mod cancel;
pub mod capture;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hooks;
pub mod intervene;
pub mod kernels;
pub mod learn;
pub mod model;
pub mod pool;
pub mod safetensors_header;
pub mod tokenize;
pub mod vectors;

#[cfg(feature = "python")]
mod bindings;

pub use error::{Error, Result};
