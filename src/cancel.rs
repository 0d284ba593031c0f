//! Stopping a long engine call from outside: a shared flag that loops read between
//! steps (decode steps, batches, decoder layers of a prefill, training steps).
//!
//! The engine only reads the flag; whoever runs the call decides when to set it. The
//! Python bindings set it when the interpreter has a pending signal (Ctrl-C, a Jupyter
//! interrupt), checked on the calling thread every [`POLL_INTERVAL`] while the engine
//! works on its pool (`src/bindings/model.rs`, `interruptible`). A check is one atomic
//! load, so loops can check as often as they like.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// How often a watcher should look for a reason to cancel (e.g. a pending signal).
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A cancellation flag shared between an engine call and its watcher. Clones share the
/// flag; a new value (or `Default`) is never cancelled until [`Cancel::cancel`] is called.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask every loop that checks this flag to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// `Err(Error::Interrupted)` once cancelled: call between steps and propagate with `?`.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag() {
        let c = Cancel::new();
        let seen = c.clone();
        assert!(seen.check().is_ok());
        c.cancel();
        assert!(seen.is_cancelled());
        assert!(matches!(seen.check(), Err(Error::Interrupted)));
    }
}
