//! Ctrl-C for long engine calls: the engine checks a `Cancel` flag between steps; here
//! the calling thread watches for Python signals and sets it. Any binding that runs a
//! long loop (generation, capture, training) wraps its engine call in [`interruptible`].

use std::sync::mpsc::{channel, RecvTimeoutError};

use pyo3::prelude::*;

use crate::cancel::{Cancel, POLL_INTERVAL};
use crate::error::Error;
use crate::pool::pool;

/// Run an engine call detached from the interpreter, on the engine's pool, while this
/// thread looks for pending signals every `POLL_INTERVAL` (attaching only for that
/// check). A signal whose handler raises (Ctrl-C: `KeyboardInterrupt`) cancels the call,
/// which stops at its next check; that exception is then raised, whatever the call
/// returned. Signals are only seen on the main thread, as everywhere in Python.
pub fn interruptible<R: Send>(
    py: Python<'_>,
    f: impl FnOnce(&Cancel) -> crate::Result<R> + Send,
) -> PyResult<R> {
    let cancel = Cancel::new();
    let mut raised: Option<PyErr> = None;
    let out = py.detach(|| {
        let (tx, rx) = channel();
        let token = &cancel;
        // Owns the sender: a job that panics drops it, which ends the watch below.
        let job = move || {
            let _ = tx.send(f(token));
        };
        let mut watch = || loop {
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(r) => return Some(r),
                Err(RecvTimeoutError::Disconnected) => return None, // the job panicked
                Err(RecvTimeoutError::Timeout) => {
                    if raised.is_none() {
                        if let Err(e) = Python::attach(|py| py.check_signals()) {
                            raised = Some(e);
                            cancel.cancel();
                        }
                    }
                }
            }
        };
        match pool() {
            // The caller stays outside the pool to watch; the job runs on a worker.
            Some(p) => p.in_place_scope(|s| {
                s.spawn(|_| job());
                watch()
            }),
            None => {
                job();
                watch()
            }
        }
    });
    if let Some(e) = raised {
        return Err(e);
    }
    match out {
        Some(r) => Ok(r?),
        None => Err(Error::invalid("the engine call ended without a result").into()),
    }
}
