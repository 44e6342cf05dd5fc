//! Admission and a routed request's life, the same for `serve` and `route`: a
//! bounded count of generation requests in flight (429 beyond `--max-queue`, 503
//! while draining), taken on arrival before any parsing; and the guard a request
//! holds once a worker was chosen, which gives the slot back and tells the router
//! the request ended (so its speculative credits lapse) when it is dropped.

use crate::errors::ApiError;
use reprise_protocol::TokenId;
use reprise_router::{Clock, Router, SystemClock};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The bound on generation requests in flight.
#[derive(Debug)]
pub struct Admission {
    admitted: Arc<AtomicUsize>,
    max: usize,
    draining: AtomicBool,
    rejected: AtomicU64,
}

/// An admission slot, released when dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// At most `max` requests in flight.
    pub fn new(max: usize) -> Self {
        Self {
            admitted: Arc::new(AtomicUsize::new(0)),
            max,
            draining: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
        }
    }

    /// Takes a slot, or 429 (`--max-queue` reached) / 503 (shutting down).
    pub fn admit(&self) -> Result<Permit, ApiError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable("server is shutting down".into()));
        }
        let prev = self.admitted.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(self.admitted.clone());
        if prev >= self.max {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Overloaded(self.max));
        }
        Ok(permit)
    }

    /// Stops admitting (shutdown); returns the requests still in flight.
    pub fn drain(&self) -> usize {
        self.draining.store(true, Ordering::Release);
        self.in_flight()
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }

    /// Requests refused with 429 so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// A request routed to a worker: it holds the request's admission slot and, when
/// dropped (the request done, failed, or its client gone), gives it back and tells
/// the router the request ended on that worker.
pub struct Routed {
    router: Arc<Router>,
    worker: usize,
    prompt: Vec<TokenId>,
    extra: Vec<u8>,
    clock: SystemClock,
    _permit: Permit,
}

impl Routed {
    /// `prompt` (with its key-space bytes `extra`) was routed to `worker`.
    pub fn new(
        permit: Permit,
        router: Arc<Router>,
        worker: usize,
        prompt: Vec<TokenId>,
        extra: Vec<u8>,
    ) -> Self {
        Self {
            router,
            worker,
            prompt,
            extra,
            clock: SystemClock::new(),
            _permit: permit,
        }
    }

    /// The worker serving the request.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        let _ = self
            .router
            .request_done(self.worker, &self.prompt, &self.extra, self.clock.now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_released_and_refused_while_draining() {
        let a = Admission::new(2);
        let p1 = a.admit().unwrap();
        let _p2 = a.admit().unwrap();
        assert_eq!(a.admit().unwrap_err().status().as_u16(), 429);
        assert_eq!((a.in_flight(), a.rejected()), (2, 1));
        drop(p1);
        let _p3 = a.admit().unwrap();
        assert_eq!(a.drain(), 2);
        assert_eq!(a.admit().unwrap_err().status().as_u16(), 503);
    }
}
