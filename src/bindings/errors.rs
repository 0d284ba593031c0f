//! The one crossing for errors: every engine `Error` becomes an instance of a small
//! exception hierarchy rooted at `SteerlabError`, whose classes also derive from the
//! built-in that Python users expect (`ValueError`, `IndexError`, `FileNotFoundError`,
//! `RuntimeError`). The classes are made once per interpreter with `type(...)` because a
//! pyo3 `create_exception!` class can have only one base.

use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyIndexError, PyKeyboardInterrupt, PyRuntimeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::error::Error;

/// (name, bases by name or builtin, doc)
const CLASSES: &[(&str, &[&str], &str)] = &[
    (
        "SteerlabError",
        &["Exception"],
        "Base class of every steerlab error.",
    ),
    (
        "ModelNotFoundError",
        &["SteerlabError", "FileNotFoundError"],
        "A model, tokenizer or vector file (or folder) does not exist.",
    ),
    (
        "ModelFormatError",
        &["SteerlabError", "ValueError"],
        "A file is truncated, corrupt, or not in the format it claims.",
    ),
    (
        "UnsupportedModelError",
        &["ModelFormatError"],
        "A valid file describing an architecture or feature steerlab does not implement.",
    ),
    (
        "InvalidArgumentError",
        &["SteerlabError", "ValueError"],
        "An argument has a bad value.",
    ),
    (
        "OutOfRangeError",
        &["SteerlabError", "IndexError"],
        "A layer, position or token index is out of range.",
    ),
    (
        "ShapeError",
        &["SteerlabError", "ValueError"],
        "An array has the wrong shape or width for this model.",
    ),
    (
        "ContextLengthError",
        &["SteerlabError", "ValueError"],
        "A prompt does not fit in the model's context.",
    ),
    (
        "TokenizerError",
        &["SteerlabError", "ValueError"],
        "The tokenizer could not be built or could not encode/decode.",
    ),
    (
        "BackendError",
        &["SteerlabError", "RuntimeError"],
        "An unexpected failure inside the tensor backend.",
    ),
];

static TYPES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn builtin<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyType>> {
    Some(match name {
        "Exception" => py.get_type::<PyException>(),
        "ValueError" => py.get_type::<PyValueError>(),
        "IndexError" => py.get_type::<PyIndexError>(),
        "FileNotFoundError" => py.get_type::<PyFileNotFoundError>(),
        "RuntimeError" => py.get_type::<PyRuntimeError>(),
        _ => return None,
    })
}

fn make(py: Python<'_>) -> PyResult<Vec<Py<PyType>>> {
    let type_ = py.get_type::<PyType>();
    let mut made: Vec<(&str, Py<PyType>)> = Vec::new();
    for (name, bases, doc) in CLASSES {
        let mut bs = Vec::new();
        for b in bases.iter() {
            let t = match builtin(py, b) {
                Some(t) => t,
                None => made
                    .iter()
                    .find(|(n, _)| n == b)
                    .map(|(_, t)| t.bind(py).clone())
                    .ok_or_else(|| PyRuntimeError::new_err(format!("unknown base {b}")))?,
            };
            bs.push(t);
        }
        let dict = PyDict::new(py);
        dict.set_item("__module__", "steerlab._core")?;
        dict.set_item("__doc__", *doc)?;
        let cls = type_.call1((*name, PyTuple::new(py, bs)?, dict))?;
        made.push((name, cls.cast_into::<PyType>()?.unbind()));
    }
    Ok(made.into_iter().map(|(_, t)| t).collect())
}

fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let types = TYPES.get_or_try_init(py, || make(py))?;
    let i = CLASSES
        .iter()
        .position(|(n, _, _)| *n == name)
        .ok_or_else(|| PyRuntimeError::new_err(format!("unknown exception class {name}")))?;
    Ok(types[i].bind(py).clone())
}

/// Add the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    for (name, _, _) in CLASSES {
        m.add(*name, class(py, name)?)?;
    }
    Ok(())
}

fn class_for(e: &Error) -> &'static str {
    match e {
        Error::NotFound { .. } => "ModelNotFoundError",
        Error::Io { .. } | Error::Format(_) => "ModelFormatError",
        Error::Unsupported(_) => "UnsupportedModelError",
        Error::InvalidArgument(_) => "InvalidArgumentError",
        Error::OutOfRange(_) => "OutOfRangeError",
        Error::Shape(_) => "ShapeError",
        Error::ContextLength(_) => "ContextLengthError",
        Error::Tokenizer(_) => "TokenizerError",
        Error::Backend(_) => "BackendError",
        Error::Interrupted => "BackendError", // raised as KeyboardInterrupt (below)
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        if matches!(e, Error::Interrupted) {
            return PyKeyboardInterrupt::new_err(e.to_string());
        }
        let msg = e.to_string();
        let name = class_for(&e);
        Python::attach(|py| match class(py, name) {
            Ok(cls) => PyErr::from_type(cls, msg),
            Err(err) => err,
        })
    }
}

/// Raise `InvalidArgumentError` from the bindings themselves.
pub fn invalid(msg: impl Into<String>) -> PyErr {
    Error::invalid(msg).into()
}
