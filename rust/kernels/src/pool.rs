//! The crate's thread team (see `team.rs`), sized by [`set_num_threads`] or `NCT_NUM_THREADS`.
//!
//! All kernel calls, from however many caller threads, share this one team: while one caller's
//! job runs, another caller's loops run inline on its own thread, so total CPU threads never
//! exceed the configured count (no oversubscription when several Python threads call in at once).

use std::sync::{Arc, Mutex};

use crate::team::Team;
use crate::KernelError;

/// Environment variable giving the default thread count.
pub const THREADS_ENV: &str = "NCT_NUM_THREADS";

static TEAM: Mutex<Option<Arc<Team>>> = Mutex::new(None);

fn build(threads: usize) -> Result<Arc<Team>, KernelError> {
    Team::new(threads, "nct-kernel").map(Arc::new).map_err(|e| KernelError::ThreadPool(e.to_string()))
}

fn default_threads() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the number of kernel threads (replaces the team; calls in flight finish on the old one).
pub fn set_num_threads(threads: usize) -> Result<(), KernelError> {
    if threads == 0 {
        return Err(KernelError::ZeroThreads);
    }
    let team = build(threads)?;
    *TEAM.lock().unwrap_or_else(|e| e.into_inner()) = Some(team);
    Ok(())
}

/// The number of kernel threads.
pub fn num_threads() -> usize {
    team().map_or(1, |t| t.threads())
}

/// The kernels' team, for callers that interleave their own parallel loops with kernel calls
/// (the inference engine): one team means no second set of threads competes for the cores.
pub fn team() -> Result<Arc<Team>, KernelError> {
    let mut guard = TEAM.lock().unwrap_or_else(|e| e.into_inner());
    let threads = match guard.as_ref() {
        Some(team) if !team.is_inherited() => return Ok(Arc::clone(team)),
        // A fork()ed child: same thread count, new threads of its own.
        Some(team) => team.workers_configured(),
        None => default_threads(),
    };
    let team = build(threads)?;
    *guard = Some(Arc::clone(&team));
    Ok(team)
}

/// Runs `f(index, chunk)` over `out` cut into chunks of `chunk` items, spread over the team (the
/// team runs a single chunk, or everything when it has one thread, inline on the caller; so does
/// this when the team cannot be built).
pub fn for_each_chunk<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    match team() {
        Ok(team) => team.for_each_chunk(out, chunk, f),
        Err(_) => out.chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| f(i, c)),
    }
}
