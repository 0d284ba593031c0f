//! The engine's thread pool, safe across `fork()`.
//!
//! A forked child has only the thread that called `fork`: a pool built by the parent
//! still looks alive in the child's memory, and the first job sent to it waits forever
//! (multiprocessing's default start method on Linux). So the engine keeps its own rayon
//! pool together with the pid that built it and builds a fresh one when the pid differs.
//! Every engine entry point runs inside [`in_pool`]; the `par_iter`s of the kernels,
//! of gemm (`Parallelism::Rayon`) and of candle's CPU ops then use this pool, never
//! rayon's global one.
//!
//! candle also keeps a pool of its own (threads `candle-bp-*`, for element-wise ops on
//! 64K+ values) in a static that cannot be rebuilt; the Python extension sets
//! `CANDLE_NUM_THREADS=1` at import unless the user set it, so that pool has no worker
//! threads and those ops run on the calling pool thread.

use std::sync::{Arc, Mutex};

/// The pool of the current process, with the pid that built it.
static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);

/// The engine's pool for this process (built on first use, rebuilt after a fork).
/// None only if the operating system refuses to start threads.
pub fn pool() -> Option<Arc<rayon::ThreadPool>> {
    let pid = std::process::id();
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, p)) = slot.as_ref() {
        if *owner == pid {
            return Some(p.clone());
        }
    }
    let fresh = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("steerlab-{i}"))
            .build()
            .ok()?,
    );
    if let Some((owner, stale)) = slot.replace((pid, fresh.clone())) {
        if owner != pid {
            // The parent's pool: its threads do not exist here, and dropping it would
            // signal them through locks they may have held at the fork. Leak it.
            std::mem::forget(stale);
        }
    }
    Some(fresh)
}

/// Run `f` on a worker of the engine's pool (in place when already on one). The kernels
/// split every projection over the pool; called from a thread outside it, each split
/// would inject a job and park the caller (a wake-up per matmul, ~200 per decoded
/// token); from inside, the caller takes a share of the work and joins cheaply.
/// Measured on SmolLM2 Q4_1 (examples/bench_decode, 2 threads, paired runs): batched
/// generation 11% and single-row decode 5% less wall time.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(p) => p.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_the_engine_pool() {
        let name = in_pool(|| std::thread::current().name().map(str::to_owned));
        assert!(name.is_some_and(|n| n.starts_with("steerlab-")));
        let p = pool().map(|p| p.current_num_threads());
        assert_eq!(in_pool(rayon::current_num_threads), p.unwrap_or(1));
    }
}
