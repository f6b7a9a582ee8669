//! A rayon pool for the engine's own parallel loops (attention, the int8/f32 head), sized like
//! the kernels' pool (`kernels::num_threads`, set by `set_num_threads`). The kernels keep their
//! own pool; both are idle while the other runs, so they never compete for cores.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

static POOL: Mutex<Option<(usize, Arc<ThreadPool>)>> = Mutex::new(None);

/// The pool for the current thread count (rebuilt when `kernels::set_num_threads` changed it);
/// `None` when one thread is configured (callers then run inline) or a pool cannot be built.
pub(crate) fn pool() -> Option<Arc<ThreadPool>> {
    let threads = kernels::num_threads().max(1);
    if threads == 1 {
        return None;
    }
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((n, p)) = guard.as_ref() {
        if *n == threads {
            return Some(p.clone());
        }
    }
    let p = Arc::new(ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("engine-{i}")).build().ok()?);
    *guard = Some((threads, p.clone()));
    Some(p)
}

/// Runs `f(index, chunk)` over `out` cut into chunks of `chunk` items, in parallel when a pool
/// exists and there is more than one chunk.
pub(crate) fn for_each_chunk<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    match pool() {
        Some(p) if out.len() > chunk => {
            use rayon::prelude::*;
            p.install(|| out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c)));
        }
        _ => out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c)),
    }
}
