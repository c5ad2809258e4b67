//! One thread budget for the whole process. Rayon's pool gets all of it.
//! How OpenBLAS's threads share it is the step's plan's to say
//! ([`Plan`](crate::Plan)): sharded plans run one shard of rows per rayon
//! thread, each calling OpenBLAS single-threaded, so OpenBLAS's own workers
//! never compete with the shards for a core; wide plans run one shard and
//! give OpenBLAS every thread of the budget. Each step sets OpenBLAS's
//! count from its plan as it starts.

use crate::error::{Error, Result};

/// The cores this process may run on (its affinity mask), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The warning for a budget of more threads than the cores this process
/// may run on: the threads then take turns on the cores, and every step's
/// shards wait for the ones that are not running. `None` when it fits.
pub fn oversubscribed(threads: usize) -> Option<String> {
    let cores = available_cores();
    (threads > cores).then(|| {
        format!(
            "{threads} threads on {cores} core(s): the threads beyond the cores take turns with the others, so steps are slower and timings noisier, not faster"
        )
    })
}

/// Largest budget accepted; more threads than this is a typo, not a plan.
pub const MAX_THREADS: usize = 1024;

/// Gives rayon's global pool `threads` threads. (OpenBLAS's count is the
/// step's to set, from its plan, as each step starts.) Rayon's pool can be sized only
/// once per process: a second call with another count fails.
pub fn set_budget(threads: usize) -> Result<()> {
    if threads == 0 || threads > MAX_THREADS {
        return Err(Error::invalid(format!(
            "--threads must be between 1 and {MAX_THREADS}, got {threads}"
        )));
    }
    if rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("twolayer-rayon-{i}"))
        .build_global()
        .is_err()
        && rayon::current_num_threads() != threads
    {
        return Err(Error::invalid(format!(
            "rayon's pool already runs {} threads; cannot change it to {threads}",
            rayon::current_num_threads()
        )));
    }
    Ok(())
}
