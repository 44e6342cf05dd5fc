//! `random`: a uniform choice among available workers from a seeded stream, so a
//! simulation run is reproducible (decision `i` uses `mix(seed + i)`).

use super::{nth_available, observed_matches, Decision, PolicyKind, RouteRequest, RoutingPolicy};
use crate::error::RouteError;
use crate::index::precise::PreciseIndex;
use crate::keymap::mix64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Seeded uniform random routing.
pub struct RandomPolicy {
    index: Arc<PreciseIndex>,
    seed: u64,
    counter: AtomicU64,
}

impl RandomPolicy {
    /// A random policy whose stream is determined by `seed`.
    pub fn new(index: Arc<PreciseIndex>, seed: u64) -> Self {
        Self {
            index,
            seed,
            counter: AtomicU64::new(0),
        }
    }
}

impl RoutingPolicy for RandomPolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Random
    }

    fn route(&self, req: &RouteRequest<'_>) -> Result<Decision, RouteError> {
        let avail = req.workers.iter().filter(|v| v.available).count() as u64;
        if avail == 0 {
            return Err(RouteError::NoWorkerAvailable);
        }
        let i = self.counter.fetch_add(1, Ordering::Relaxed);
        let r = mix64(
            self.seed
                .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
        // Multiply-shift maps r uniformly onto 0..avail (bias < avail / 2^64).
        let n = ((u128::from(r) * u128::from(avail)) >> 64) as usize;
        let worker = nth_available(req.workers, n).ok_or(RouteError::NoWorkerAvailable)?;
        Ok(Decision {
            worker,
            matched_blocks: observed_matches(&self.index, req),
            prompt_blocks: req.keys.len(),
            score: 0.0,
            overload_diverted: false,
            policy: PolicyKind::Random,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{idle, spread};
    use super::*;
    use std::time::Duration;

    fn run(seed: u64) -> Vec<usize> {
        let p = RandomPolicy::new(Arc::new(PreciseIndex::new(4, 16)), seed);
        let views = idle(4);
        (0..32)
            .map(|i| {
                p.route(&RouteRequest {
                    keys: &[],
                    workers: &views,
                    now: Duration::ZERO,
                    seq: i,
                })
                .unwrap()
                .worker
            })
            .collect()
    }

    #[test]
    fn seeded_and_reproducible() {
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn spreads_unrelated_prompts() {
        let p = RandomPolicy::new(Arc::new(PreciseIndex::new(4, 16)), 42);
        let c = spread(&p, 4, 400);
        assert!(c.iter().all(|&n| n >= 70), "{c:?}");
    }
}
