//! The crate's own rayon pool.
//!
//! All kernel calls, from however many caller threads, run on this one pool: rayon queues the work
//! of concurrent `install` calls onto the same workers, so total CPU threads never exceed the
//! configured count (no oversubscription when several Python threads call in at once).

use std::sync::{Arc, Mutex};

use rayon::ThreadPool;

use crate::KernelError;

/// Environment variable giving the default thread count.
pub const THREADS_ENV: &str = "NCT_NUM_THREADS";

static POOL: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);

fn build(threads: usize) -> Result<Arc<ThreadPool>, KernelError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("nct-kernel-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| KernelError::ThreadPool(e.to_string()))
}

fn default_threads() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the number of kernel threads (replaces the pool; calls in flight finish on the old one).
pub fn set_num_threads(threads: usize) -> Result<(), KernelError> {
    if threads == 0 {
        return Err(KernelError::ZeroThreads);
    }
    let pool = build(threads)?;
    *POOL.lock().unwrap_or_else(|e| e.into_inner()) = Some(pool);
    Ok(())
}

/// The number of kernel threads.
pub fn num_threads() -> usize {
    pool().map_or(1, |p| p.current_num_threads())
}

/// The kernels' pool, for callers that interleave their own parallel loops with kernel calls
/// (the inference engine): one pool means idle workers of a second pool never spin on the
/// cores the kernels need.
pub fn thread_pool() -> Result<Arc<ThreadPool>, KernelError> {
    pool()
}

pub(crate) fn pool() -> Result<Arc<ThreadPool>, KernelError> {
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = guard.as_ref() {
        return Ok(Arc::clone(pool));
    }
    let pool = build(default_threads())?;
    *guard = Some(Arc::clone(&pool));
    Ok(pool)
}
