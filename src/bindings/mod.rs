//! pyo3 bindings: conversion, error mapping and GIL release only. No model logic here.

mod arrays;
mod cancel;
mod controller;
mod errors;
mod hyper;
mod learn;
mod model;
mod vectors;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // candle's own worker pool (element-wise ops on 64K+ values) lives in a static that a
    // forked child cannot rebuild: with no workers it runs those ops on the calling
    // engine-pool thread, so children of a process that used a model do not hang
    // (src/pool.rs). Set before candle reads it (its first such op); a value the user
    // set is kept.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // numpy's C API is loaded lazily by rust-numpy on the first array it builds, by
    // running Python code (numpy's import), and a failure there (a Ctrl-C landing in it)
    // panics. Load it now, where a failure is this import's error.
    m.py().import("numpy")?;
    let _ = numpy::npyffi::is_numpy_2(m.py());
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::PyModel>()?;
    m.add_class::<model::PyGeneration>()?;
    m.add_class::<model::PyGenConfig>()?;
    m.add_class::<learn::PyVectorTrainer>()?;
    m.add_class::<learn::PyScalarTrainer>()?;
    m.add_class::<controller::PyController>()?;
    m.add_class::<controller::PyControllerTrainer>()?;
    m.add_class::<hyper::PyHyperNet>()?;
    m.add_class::<hyper::PyHyperTrainer>()?;
    m.add_function(wrap_pyfunction!(learn::save_learned, m)?)?;
    m.add_function(wrap_pyfunction!(learn::load_learned, m)?)?;
    m.add_function(wrap_pyfunction!(vectors::fit_direction, m)?)?;
    m.add_function(wrap_pyfunction!(vectors::mean_centring, m)?)?;
    m.add_function(wrap_pyfunction!(vectors::pair_stats, m)?)?;
    m.add_function(wrap_pyfunction!(vectors::steerability, m)?)?;
    m.add_function(wrap_pyfunction!(vectors::spearman, m)?)?;
    m.add_function(wrap_pyfunction!(vectors::save_vector, m)?)?;
    m.add_function(wrap_pyfunction!(vectors::load_vector, m)?)?;
    m.add_function(wrap_pyfunction!(vectors::save_control_vector, m)?)?;
    m.add_function(wrap_pyfunction!(vectors::load_control_vector, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_isa, m)?)?;
    errors::register(m)?;
    Ok(())
}

/// The instruction set the quantized kernels use in this process ("avx512", "avx2" or
/// "scalar"): the CPU's best, capped by `STEERLAB_ISA`.
#[pyfunction]
fn kernel_isa() -> &'static str {
    crate::kernels::Isa::detect().name()
}
