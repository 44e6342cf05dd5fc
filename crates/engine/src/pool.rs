//! The compute pool: one thread per core, shared by every CPU worker of the process
//! and by the samplers of every worker. A worker runs its whole forward step on it
//! (`install`), so workers share the cores through one work-stealing scheduler
//! instead of oversubscribing them.

use std::sync::OnceLock;

/// The process's compute pool.
pub fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("reprise-cpu-{i}"))
            .build()
            .unwrap_or_else(|e| panic!("cannot start the CPU compute pool: {e}"))
    })
}
