//! From token ids to a worker: admission (bounded, 429 when full), one routing
//! decision, submission to the chosen worker's channel, and a guard that cancels
//! the request (freeing its KV blocks at once) if the caller goes away.

use crate::metrics::Metrics;
use reprise_api::errors::ApiError;
use reprise_api::params::GenOptions;
use reprise_engine::engine::{SubmitError, WorkerSnapshot};
use reprise_engine::types::{GenerateRequest, WorkerEvent};
use reprise_engine::worker::{WorkerError, WorkerHandle};
use reprise_router::{Clock, RouteError, Router, SystemClock};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Routes requests to workers and keeps the router's view of them current.
pub struct Dispatcher {
    router: Arc<Router>,
    workers: Vec<WorkerHandle>,
    clock: SystemClock,
    next_id: AtomicU64,
    admitted: Arc<AtomicUsize>,
    max_queue: usize,
    draining: AtomicBool,
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

/// Cancels its request on drop unless it finished; also releases the admission slot.
pub struct CancelGuard {
    handle: WorkerHandle,
    id: u64,
    done: bool,
    admitted: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    /// To tell the router the request ended (its speculative credits lapse).
    router: Arc<Router>,
    prompt: Vec<u32>,
    cache_salt: Vec<u8>,
    clock: SystemClock,
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
        self.admitted.fetch_sub(1, Ordering::AcqRel);
        let _ = self.router.request_done(
            self.handle.index(),
            &self.prompt,
            &self.cache_salt,
            self.clock.now(),
        );
    }
}

/// An admission slot, taken before a request's expensive work (tokenization) and
/// held until it is submitted (then owned by its guard).
pub struct Permit(Option<Arc<AtomicUsize>>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Dispatcher {
    /// A dispatcher over `workers`, routed by `router`.
    pub fn new(
        router: Arc<Router>,
        workers: Vec<WorkerHandle>,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            router,
            workers,
            clock: SystemClock::new(),
            next_id: AtomicU64::new(1),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_queue,
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Stop admitting requests (shutdown).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
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

    /// Takes an admission slot, or 429 (`--max-queue` reached) / 503 (shutting down).
    pub fn admit(&self) -> Result<Permit, ApiError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable("server is shutting down".into()));
        }
        let prev = self.admitted.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(Some(self.admitted.clone()));
        if prev >= self.max_queue {
            self.metrics
                .rejected_overloaded
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Overloaded(self.max_queue));
        }
        Ok(permit)
    }

    /// Routes and submits a tokenized request admitted with `permit`.
    pub async fn submit(
        &self,
        mut permit: Permit,
        prompt: Vec<u32>,
        opts: &GenOptions,
        request_id: &str,
    ) -> Result<Submitted, ApiError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut req = GenerateRequest {
            id,
            request_id: request_id.into(),
            prompt,
            params: opts.params.clone(),
            n: opts.n,
            cache_salt: opts.cache_salt.clone(),
            constraint: opts.constraint.clone(),
        };
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
            self.metrics
                .decision_seconds
                .observe(t0.elapsed().as_secs_f64());
            let w = decision.worker;
            let matched = decision.chosen_matched();
            self.metrics.matched_blocks.observe(matched as f64);
            if let Some(c) = self.metrics.decisions.get(w) {
                c.fetch_add(1, Ordering::Relaxed);
            }
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
                    tracing::debug!(worker = w, matched_blocks = matched, "routed");
                    let admitted = permit.0.take().unwrap_or_else(|| self.admitted.clone());
                    return Ok(Submitted {
                        worker: w,
                        events,
                        guard: CancelGuard {
                            handle: handle.clone(),
                            id: req.id,
                            done: false,
                            admitted,
                            metrics: self.metrics.clone(),
                            router: self.router.clone(),
                            prompt: req.prompt.clone(),
                            cache_salt: req.cache_salt.clone(),
                            clock: self.clock,
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
