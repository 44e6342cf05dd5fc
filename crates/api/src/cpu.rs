//! Per-request CPU work (parsing a large body, rendering a chat template,
//! tokenizing) off the async runtime: on tokio's blocking threads, at most one
//! task per core at a time, so that a few huge prompts neither stall `/health`
//! and the streams on the runtime's threads nor pile dozens of threads onto the
//! cores the workers compute on.

use crate::errors::ApiError;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Bodies up to this size are parsed on the runtime thread (cheaper than a hop).
pub const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// A bound on concurrent CPU-heavy request tasks.
#[derive(Clone, Debug)]
pub struct CpuPool {
    slots: Arc<Semaphore>,
}

impl CpuPool {
    /// A pool running `threads` tasks at once (at least one).
    pub fn new(threads: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(threads.max(1))),
        }
    }

    /// One task per core.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Runs `f` on a blocking thread once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal("the tokenizer pool is closed".into()))?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            span.in_scope(f)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_pool_size_runs_at_once() {
        let pool = CpuPool::new(2);
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (pool, now, peak) = (pool.clone(), now.clone(), peak.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        now.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("join").expect("task");
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        let e = pool
            .run(|| -> Result<(), ApiError> { Err(ApiError::bad("prompt", "x")) })
            .await
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 400);
    }
}
