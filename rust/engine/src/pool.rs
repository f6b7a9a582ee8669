//! The engine's parallel loops (attention, the int8/f32 head) run on the kernels' own rayon pool
//! (`kernels::thread_pool`, sized by `set_num_threads`). A second pool would leave its idle
//! workers spinning on the very cores the kernels use between layers, which made two-thread
//! decode slower than one thread on small models.

use std::sync::Arc;

use rayon::ThreadPool;

/// The shared pool; `None` when one thread is configured (callers then run inline) or the pool
/// cannot be built.
pub(crate) fn pool() -> Option<Arc<ThreadPool>> {
    if kernels::num_threads() <= 1 {
        return None;
    }
    kernels::thread_pool().ok()
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

/// Runs `f` on a thread of the shared pool (inline with one thread). A whole forward pass runs
/// this way, so its serial parts and its parallel loops share the pool's threads: a caller
/// thread waiting outside the pool would be one thread too many, and the pool's idle workers
/// spinning between loops took cores from it (two-thread decode was no faster than one).
pub(crate) fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(p) => p.install(f),
        None => f(),
    }
}
