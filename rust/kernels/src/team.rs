//! A fork-join team of threads whose idle workers spin briefly before they sleep.
//!
//! Why not rayon: a decode step is ~100 parallel loops of a few microseconds each (one per
//! matrix of every layer). Rayon's workers go to sleep almost at once when idle, and waking one
//! costs tens of microseconds on these VMs, so two-thread decode ran no faster than one thread.
//! Here the caller runs tasks itself and the workers spin for [`SPIN`] after each job before
//! parking, so the next loop of the same step starts on warm threads (llama.cpp's thread pool
//! does the same).
//!
//! Protocol: a job lives on the caller's stack. The caller publishes its address, bumps the
//! epoch, takes tasks from the job's counter like every worker, and returns only after every
//! worker has reported the epoch finished, so no worker can touch the job after that. A worker
//! therefore sees every epoch exactly once, in order. One job runs at a time: a second caller
//! (another Python thread) or a task that itself calls `run` runs its tasks inline instead,
//! so the total thread count never exceeds the configured one.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(300);

struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n_tasks: usize,
    next: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Takes and runs tasks until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= self.n_tasks {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| (self.f)(i))).is_err() {
                self.panicked.store(true, Relaxed);
            }
        }
    }
}

struct Shared {
    epoch: AtomicUsize,
    /// The current job (a `Job` on the caller's stack, lifetime erased); valid from the epoch
    /// bump until every worker has reported the epoch finished.
    job: AtomicPtr<Job<'static>>,
    finished: AtomicUsize,
    parked: Mutex<usize>,
    wake: Condvar,
    shutdown: AtomicBool,
}

pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// The process that started the workers (see [`Origin`]): a `fork()`ed child inherits the
    /// team but not its threads, so there every job runs inline (and `pool::team` builds the
    /// child its own).
    origin: Origin,
    /// Held by the one caller whose job is running.
    submit: Mutex<()>,
}

/// Which process this is, cheaply: `getpid` is a system call (several per kernel call made
/// ~1–3 % of a decode step), so a `pthread_atfork` child handler counts forks instead and
/// the process id is read only if the handler could not be registered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Forks(usize),
    Pid(u32),
}

/// Forks seen by this process's lineage: bumped in every child.
static FORKS: AtomicUsize = AtomicUsize::new(0);

impl Origin {
    fn now() -> Origin {
        static HANDLER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *HANDLER.get_or_init(register_fork_handler) {
            Origin::Forks(FORKS.load(Relaxed))
        } else {
            Origin::Pid(std::process::id())
        }
    }
}

#[cfg(unix)]
fn register_fork_handler() -> bool {
    extern "C" fn in_child() {
        FORKS.fetch_add(1, Relaxed);
    }
    // SAFETY: registers a plain function (async-signal-safe: one atomic add) to run in children.
    unsafe { libc::pthread_atfork(None, None, Some(in_child)) == 0 }
}

#[cfg(not(unix))]
fn register_fork_handler() -> bool {
    true // no fork(): the count never changes
}

thread_local! {
    /// Set on team workers, and on a caller while its job runs: a nested `run` goes inline.
    static IN_TEAM: Cell<bool> = const { Cell::new(false) };
}

impl Team {
    /// A team of `threads` (the caller counts as one: `threads - 1` workers are spawned).
    pub fn new(threads: usize, name: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            finished: AtomicUsize::new(0),
            parked: Mutex::new(0),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || worker(&s));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    let team = Self { shared, workers, submit: Mutex::new(()), origin: Origin::now() };
                    drop(team); // stops the workers already started
                    return Err(e);
                }
            }
        }
        Ok(Self { shared, workers, submit: Mutex::new(()), origin: Origin::now() })
    }

    /// Threads that run a job (workers + the caller).
    pub fn threads(&self) -> usize {
        if self.is_inherited() {
            return 1;
        }
        self.workers.len() + 1
    }

    /// The thread count the team was built with (even where it runs inline after a fork).
    pub fn workers_configured(&self) -> usize {
        self.workers.len() + 1
    }

    /// Whether this process is a `fork()` of the one that built the team (its workers are gone).
    pub fn is_inherited(&self) -> bool {
        self.origin != Origin::now()
    }

    /// Runs `f(0) .. f(n_tasks - 1)`, spread over the team; returns when all have run.
    /// Panics (after every task has finished) if a task panicked.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let inline = self.workers.is_empty() || n_tasks <= 1 || IN_TEAM.with(Cell::get) || self.is_inherited();
        let guard = if inline { None } else { self.submit.try_lock().ok() };
        let Some(_guard) = guard else {
            (0..n_tasks).for_each(f);
            return;
        };
        let job = Job { f, n_tasks, next: AtomicUsize::new(0), panicked: AtomicBool::new(false) };
        let s = &self.shared;
        s.finished.store(0, Relaxed);
        // SAFETY of the erased lifetime: workers use the job only between the epoch bump below
        // and their `finished` report, and this function waits for all reports.
        s.job.store((&job as *const Job<'_>).cast::<Job<'static>>().cast_mut(), Relaxed);
        s.epoch.fetch_add(1, SeqCst);
        if *s.parked.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            s.wake.notify_all();
        }
        IN_TEAM.with(|c| c.set(true));
        job.work();
        IN_TEAM.with(|c| c.set(false));
        let mut spins = 0u32;
        while s.finished.load(Acquire) < self.workers.len() {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 12) {
                std::thread::yield_now(); // a worker is being woken from its park
            } else {
                std::hint::spin_loop();
            }
        }
        s.job.store(std::ptr::null_mut(), Relaxed);
        if job.panicked.load(Relaxed) {
            panic!("a parallel kernel task panicked");
        }
    }

    /// Splits `out` into chunks of `chunk` items and runs `f(index, chunk)` on each, in parallel.
    pub fn for_each_chunk<T: Send>(&self, out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
        let chunk = chunk.max(1);
        let (len, ptr) = (out.len(), SendPtr(out.as_mut_ptr()));
        self.run(len.div_ceil(chunk), &|i| {
            let start = i * chunk;
            let n = chunk.min(len - start);
            // SAFETY: task i owns items [i·chunk, i·chunk + n) of `out`, disjoint from every
            // other task's, and `out` outlives `run`.
            let part = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), n) };
            f(i, part)
        });
    }
}

struct SendPtr<T>(*mut T);
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}
// SAFETY: used only to hand disjoint parts of one `&mut [T]` (T: Send) to tasks.
unsafe impl<T: Send> Sync for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}

fn worker(s: &Shared) {
    IN_TEAM.with(|c| c.set(true));
    let mut seen = 0usize;
    loop {
        // Spin for the next epoch, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Acquire) == seen && !s.shutdown.load(Relaxed) {
            spins = spins.wrapping_add(1);
            std::hint::spin_loop();
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let mut parked = s.parked.lock().unwrap_or_else(|e| e.into_inner());
                *parked += 1;
                while s.epoch.load(SeqCst) == seen && !s.shutdown.load(SeqCst) {
                    parked = s.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
                }
                *parked -= 1;
                break;
            }
        }
        if s.shutdown.load(Acquire) {
            return;
        }
        seen = s.epoch.load(Acquire);
        // SAFETY: the epoch moved, so the caller published a job that lives until this worker's
        // `finished` report below.
        let job = unsafe { &*s.job.load(Relaxed) };
        job.work();
        s.finished.fetch_add(1, Release);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        if self.is_inherited() {
            // The workers live (or lived) in the parent process; there is nothing to join here.
            std::mem::forget(std::mem::take(&mut self.workers));
            return;
        }
        self.shared.shutdown.store(true, SeqCst);
        drop(self.shared.parked.lock().unwrap_or_else(|e| e.into_inner()));
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_forked_child_sees_the_team_as_inherited_and_runs_jobs_inline() {
        let team = Team::new(2, "test-fork").unwrap();
        let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
        team.run(hits.len(), &|i| {
            hits[i].fetch_add(1, Relaxed);
        });
        assert!(!team.is_inherited() && team.threads() == 2);
        // SAFETY: the child only touches atomics and the team (no allocation, no locks held by
        // other threads) and leaves through `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // The workers do not exist here: the job must run inline, on this thread.
            let ok = team.is_inherited() && team.threads() == 1 && {
                team.run(hits.len(), &|i| {
                    hits[i].fetch_add(1, Relaxed);
                });
                hits.iter().all(|h| h.load(Relaxed) == 2)
            };
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
        assert!(!team.is_inherited(), "the parent's team is still its own");
    }

    #[test]
    fn every_task_runs_once_across_many_jobs_and_after_parking() {
        let team = Team::new(3, "test").unwrap();
        for round in 0..2000 {
            let hits: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
            team.run(hits.len(), &|i| {
                hits[i].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "round {round}");
            if round == 1000 {
                std::thread::sleep(SPIN * 4); // let the workers park
            }
        }
    }

    #[test]
    fn chunks_nested_calls_and_concurrent_callers() {
        let team = Arc::new(Team::new(2, "test").unwrap());
        let mut out = vec![0usize; 1001];
        team.for_each_chunk(&mut out, 100, |i, part| {
            // A nested run goes inline.
            team.run(part.len(), &|_| {});
            part.iter_mut().for_each(|v| *v = i);
        });
        assert!(out.iter().enumerate().all(|(k, &v)| v == k / 100));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let team = Arc::clone(&team);
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let sum = AtomicUsize::new(0);
                        team.run(10, &|i| {
                            sum.fetch_add(i, Relaxed);
                        });
                        assert_eq!(sum.load(Relaxed), 45);
                    }
                })
            })
            .collect();
        callers.into_iter().for_each(|c| c.join().unwrap());
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_team_survives() {
        let team = Team::new(2, "test").unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| {
            team.run(8, &|i| {
                if i == 5 {
                    panic!("task 5");
                }
            })
        }));
        assert!(result.is_err());
        let count = AtomicUsize::new(0);
        team.run(8, &|_| {
            count.fetch_add(1, Relaxed);
        });
        assert_eq!(count.load(Relaxed), 8);
    }
}
