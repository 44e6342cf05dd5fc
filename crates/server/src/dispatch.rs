//! From token ids to a worker: one routing decision, submission to the chosen
//! worker's channel, and a guard that cancels the request (freeing its KV blocks at
//! once) if the caller goes away.

use crate::metrics::Metrics;
use reprise_api::admission::{Permit, Routed};
use reprise_api::errors::ApiError;
use reprise_api::metrics::RouterMetrics;
use reprise_engine::engine::{SubmitError, WorkerSnapshot};
use reprise_engine::types::GenerateRequest;
use reprise_engine::worker::{WorkerError, WorkerHandle};
use reprise_protocol::WorkerEvent;
use reprise_router::{Clock, RouteError, Router, SystemClock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Routes requests to workers and keeps the router's view of them current.
pub struct Dispatcher {
    router: Arc<Router>,
    workers: Vec<WorkerHandle>,
    clock: SystemClock,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A request accepted by a worker.
pub struct Submitted {
    /// The worker serving it.
    pub worker: usize,
    /// Its events.
    pub events: flume::Receiver<WorkerEvent>,
    /// Cancels the request when dropped before [`CancelGuard::finished`].
    pub guard: CancelGuard,
}

/// Cancels its request on drop unless it finished; then (as its [`Routed`] drops)
/// releases the admission slot and tells the router the request ended.
pub struct CancelGuard {
    handle: WorkerHandle,
    id: u64,
    done: bool,
    metrics: Arc<Metrics>,
    _routed: Routed,
}

impl CancelGuard {
    /// The worker finished every sequence: nothing to cancel.
    pub fn finished(&mut self) {
        self.done = true;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            self.handle.cancel(self.id);
            if let Some(w) = self.metrics.workers.get(self.handle.index()) {
                w.finished_abort.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Dispatcher {
    /// A dispatcher over `workers`, routed by `router`.
    pub fn new(router: Arc<Router>, workers: Vec<WorkerHandle>, metrics: Arc<Metrics>) -> Self {
        Self {
            router,
            workers,
            clock: SystemClock::new(),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Number of workers.
    pub fn num_workers(&self) -> usize {
        self.workers.len()
    }

    /// Each worker's snapshot and whether it is routable.
    pub fn snapshots(&self) -> Vec<(WorkerSnapshot, bool)> {
        self.workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let routable = self
                    .router
                    .worker_view(i)
                    .map(|v| v.available)
                    .unwrap_or(false);
                (w.snapshot(), routable)
            })
            .collect()
    }

    /// Takes a dead worker out of routing (once; logs it).
    pub fn mark_dead(&self, worker: usize) {
        if let Ok(v) = self.router.worker_view(worker) {
            if v.available {
                tracing::error!(worker, "worker died; taking it out of routing");
                let _ = self.router.set_available(worker, false);
            }
        }
    }

    /// Whether `worker` is still alive (after an error event).
    pub fn is_alive(&self, worker: usize) -> bool {
        self.workers.get(worker).is_some_and(|w| w.snapshot().alive)
    }

    /// Feeds every worker's load to the router and excludes dead workers; run periodically.
    /// Each snapshot says how many requests the worker had taken in, so only those
    /// stop counting as routed-but-unreported.
    pub fn refresh(&self) {
        for (i, w) in self.workers.iter().enumerate() {
            let s = w.snapshot();
            if s.alive {
                let _ = self.router.report_load(i, s.load, s.intake);
            } else {
                self.mark_dead(i);
            }
        }
    }

    /// Tells every worker to finish its requests and exit.
    pub fn shutdown_workers(&self) {
        for w in &self.workers {
            w.shutdown();
        }
    }

    /// Routes and submits `req` (its id is assigned here), admitted with `permit`.
    pub async fn submit(
        &self,
        permit: Permit,
        mut req: GenerateRequest,
        decisions: &RouterMetrics,
    ) -> Result<Submitted, ApiError> {
        req.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A worker found dead is excluded and the request routed again.
        for _ in 0..=self.workers.len() {
            let t0 = Instant::now();
            let decision = self
                .router
                .route(&req.prompt, &req.cache_salt, self.clock.now())
                .map_err(|e| match e {
                    RouteError::NoWorkerAvailable => {
                        ApiError::Unavailable("no worker is available".into())
                    }
                    other => ApiError::Internal(format!("routing failed: {other}")),
                })?;
            decisions.observe(&decision, t0.elapsed());
            let w = decision.worker;
            let Some(handle) = self.workers.get(w) else {
                return Err(ApiError::Internal(format!(
                    "router chose unknown worker {w}"
                )));
            };
            let submitted = handle.submit_async(req.clone()).await;
            if submitted.is_err() {
                // It never reached the worker: the router must not count it there.
                let _ = self.router.unroute(w);
            }
            match submitted {
                Ok(events) => {
                    tracing::debug!(
                        worker = w,
                        matched_blocks = decision.chosen_matched(),
                        "routed"
                    );
                    return Ok(Submitted {
                        worker: w,
                        events,
                        guard: CancelGuard {
                            handle: handle.clone(),
                            id: req.id,
                            done: false,
                            metrics: self.metrics.clone(),
                            _routed: Routed::new(
                                permit,
                                self.router.clone(),
                                w,
                                req.prompt,
                                req.cache_salt,
                            ),
                        },
                    });
                }
                Err(WorkerError::Dead(_)) => {
                    self.mark_dead(w);
                    req.id = self.next_id.fetch_add(1, Ordering::Relaxed);
                }
                Err(WorkerError::Rejected(SubmitError::ShuttingDown)) => {
                    return Err(ApiError::Unavailable("server is shutting down".into()))
                }
                Err(WorkerError::Rejected(e)) => return Err(ApiError::bad_request(e.to_string())),
                Err(e) => return Err(ApiError::Internal(e.to_string())),
            }
        }
        Err(ApiError::Unavailable("no worker is available".into()))
    }
}
