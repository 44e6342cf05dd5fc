//! `round-robin`: each decision takes the next available worker in turn.

use super::{nth_available, observed_matches, Decision, PolicyKind, RouteRequest, RoutingPolicy};
use crate::error::RouteError;
use crate::index::precise::PreciseIndex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Round robin over available workers.
pub struct RoundRobinPolicy {
    index: Arc<PreciseIndex>,
    next: AtomicUsize,
}

impl RoundRobinPolicy {
    /// Starts at the first available worker.
    pub fn new(index: Arc<PreciseIndex>) -> Self {
        Self {
            index,
            next: AtomicUsize::new(0),
        }
    }
}

impl RoutingPolicy for RoundRobinPolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::RoundRobin
    }

    fn route(&self, req: &RouteRequest<'_>) -> Result<Decision, RouteError> {
        let avail = req.workers.iter().filter(|v| v.available).count();
        if avail == 0 {
            return Err(RouteError::NoWorkerAvailable);
        }
        // Turn over the available workers, so a failed worker's turn is not given
        // to its neighbour twice in a row.
        let n = self.next.fetch_add(1, Ordering::Relaxed) % avail;
        let worker = nth_available(req.workers, n).ok_or(RouteError::NoWorkerAvailable)?;
        Ok(Decision {
            worker,
            matched_blocks: observed_matches(&self.index, req),
            prompt_blocks: req.keys.len(),
            score: 0.0,
            overload_diverted: false,
            policy: PolicyKind::RoundRobin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{idle, spread};
    use super::*;
    use std::time::Duration;

    #[test]
    fn cycles_over_available_workers() {
        let p = RoundRobinPolicy::new(Arc::new(PreciseIndex::new(3, 16)));
        let mut views = idle(3);
        views[1].available = false;
        let got: Vec<usize> = (0..4)
            .map(|_| {
                p.route(&RouteRequest {
                    keys: &[],
                    workers: &views,
                    now: Duration::ZERO,
                    seq: 0,
                })
                .unwrap()
                .worker
            })
            .collect();
        assert_eq!(got, vec![0, 2, 0, 2]);
        views.iter_mut().for_each(|v| v.available = false);
        let r = p.route(&RouteRequest {
            keys: &[],
            workers: &views,
            now: Duration::ZERO,
            seq: 0,
        });
        assert_eq!(r, Err(RouteError::NoWorkerAvailable));
    }

    #[test]
    fn spreads_unrelated_prompts() {
        let p = RoundRobinPolicy::new(Arc::new(PreciseIndex::new(4, 16)));
        assert_eq!(spread(&p, 4, 100), vec![25; 4]);
    }
}
