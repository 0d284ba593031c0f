//! pyo3 bindings: conversion, error mapping and GIL release only. No model logic here.

mod arrays;
mod errors;
mod model;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::PyModel>()?;
    m.add_class::<model::PyGeneration>()?;
    errors::register(m)?;
    Ok(())
}
