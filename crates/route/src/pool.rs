//! The current set of remote workers and the router over them. A change of the set
//! (the workers file changed) builds a new [`WorkerSet`]: a new router, whose index
//! every worker's subscriber rebuilds by replaying from 0; requests in flight finish on
//! the set they started with.

use super::config::WorkerSpec;
use super::events::{self, Subscriber};
use super::worker::RemoteWorker;
use reprise_router::{Router, RouterConfig};
use std::sync::Arc;

/// Guessed KV pool per worker (blocks) until a worker's metrics say otherwise; only
/// bounds the caches guessed for workers without KV events.
const DEFAULT_POOL_BLOCKS: usize = 1 << 16;

/// Workers, their router and their event subscribers.
pub struct WorkerSet {
    /// The router over these workers (`None` when there are none).
    pub router: Option<Arc<Router>>,
    /// The workers, by index.
    pub workers: Vec<Arc<RemoteWorker>>,
    /// Per worker, its subscriber (workers without events have none).
    pub subscribers: Vec<Option<Subscriber>>,
    /// The specs this set was built from.
    pub specs: Vec<WorkerSpec>,
}

impl WorkerSet {
    /// Builds the router and starts a subscriber per worker with events.
    pub fn build(
        specs: Vec<WorkerSpec>,
        cfg: &RouterConfig,
    ) -> Result<Self, crate::error::RunError> {
        if specs.is_empty() {
            return Ok(Self {
                router: None,
                workers: Vec::new(),
                subscribers: Vec::new(),
                specs,
            });
        }
        let router = Arc::new(
            Router::new(cfg.clone(), specs.len(), DEFAULT_POOL_BLOCKS)
                .map_err(|e| crate::error::RunError::Other(format!("router: {e}")))?,
        );
        let workers: Vec<Arc<RemoteWorker>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Arc::new(RemoteWorker::new(i, s.clone())))
            .collect();
        let mut subscribers = Vec::with_capacity(workers.len());
        for w in &workers {
            let _ = router.set_has_events(w.index, w.spec.events.is_some());
            subscribers.push(events::spawn(w.clone(), router.clone())?);
        }
        Ok(Self {
            router: Some(router),
            workers,
            subscribers,
            specs,
        })
    }

    /// Workers currently in routing.
    pub fn healthy(&self) -> usize {
        self.workers.iter().filter(|w| w.healthy()).count()
    }

    /// Takes `w` out of routing (it failed a request or a check).
    pub fn mark_down(&self, w: &RemoteWorker) {
        if w.mark_down() {
            tracing::warn!(worker = w.index, url = %w.spec.url, "worker unreachable; out of routing");
        }
        if let Some(r) = &self.router {
            let _ = r.set_available(w.index, false);
        }
    }

    /// A health check's result for `w`: out of routing after two failures; back after two
    /// passes, with its entries forgotten and its stream replayed from 0 (it may have
    /// restarted while away).
    pub fn record_check(&self, w: &RemoteWorker, ok: bool) {
        let Some(flip) = w.record_check(ok) else {
            return;
        };
        let Some(router) = &self.router else { return };
        if flip {
            tracing::info!(worker = w.index, url = %w.spec.url, "worker healthy; back in routing");
            let _ = router.reset_worker(w.index);
            if let Some(Some(s)) = self.subscribers.get(w.index) {
                let _ = s.commands.send(events::Command::Resync);
            }
        } else {
            tracing::warn!(worker = w.index, url = %w.spec.url, "worker failed its health checks; out of routing");
        }
        let _ = router.set_available(w.index, flip);
    }

    /// Feeds `w`'s current load (scrape plus in-flight) to the router.
    pub fn report_load(&self, w: &RemoteWorker) {
        if let Some(r) = &self.router {
            let load = w.load(r.hasher().block_size());
            if load.total_blocks > 0 {
                let _ = r.set_pool_blocks(w.index, load.total_blocks);
            }
            let _ = r.update_load(w.index, load);
        }
    }
}
