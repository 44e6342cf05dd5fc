//! `approximate`: prefix matches guessed from the router's own past decisions (an LRU
//! per worker sized like its KV pool), combined with load by the [`Scorer`].

use super::{Decision, PolicyKind, RouteRequest, RoutingPolicy};
use crate::error::RouteError;
use crate::index::approximate::ApproximateIndex;
use crate::scorer::Scorer;

/// Cache-aware routing without KV events.
pub struct ApproximatePolicy {
    index: ApproximateIndex,
    scorer: Scorer,
}

impl ApproximatePolicy {
    /// One LRU of `blocks_per_worker` keys per worker.
    pub fn new(num_workers: usize, blocks_per_worker: usize, scorer: Scorer) -> Self {
        Self {
            index: ApproximateIndex::new(num_workers, blocks_per_worker),
            scorer,
        }
    }

    /// The guessed index (for inspection).
    pub fn index(&self) -> &ApproximateIndex {
        &self.index
    }
}

impl RoutingPolicy for ApproximatePolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Approximate
    }

    fn route(&self, req: &RouteRequest<'_>) -> Result<Decision, RouteError> {
        let mut matched = vec![0; req.workers.len()];
        self.index.match_prefix(req.keys, req.all(), &mut matched);
        let pick = self
            .scorer
            .pick(req.workers, &matched, req.keys.len(), req.tie_value())?;
        self.index.record(pick.worker, req.keys);
        Ok(Decision {
            worker: pick.worker,
            matched_blocks: matched,
            prompt_blocks: req.keys.len(),
            score: pick.score,
            overload_diverted: pick.overload_diverted,
            policy: PolicyKind::Approximate,
        })
    }

    fn forget_worker(&self, worker: usize) {
        self.index.forget_worker(worker);
    }

    fn set_pool_blocks(&self, worker: usize, blocks: usize) {
        self.index.set_capacity(worker, blocks);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{idle, prompt, spread};
    use super::*;
    use crate::scorer::{OverloadGuard, ScoreWeights};
    use std::time::Duration;

    fn policy(cap: usize) -> ApproximatePolicy {
        let scorer = Scorer {
            weights: ScoreWeights::default(),
            guard: OverloadGuard::default(),
            seed: 3,
        };
        ApproximatePolicy::new(3, cap, scorer)
    }

    #[test]
    fn repeats_go_where_the_prompt_went() {
        let p = policy(100);
        let keys = prompt(5);
        let mut views = idle(3);
        let r = |views: &[crate::WorkerView]| {
            p.route(&RouteRequest {
                keys: &keys,
                workers: views,
                now: Duration::ZERO,
                seq: 0,
            })
            .unwrap()
        };
        let first = r(&views);
        assert_eq!(first.matched_blocks, vec![0; 3]);
        views[first.worker].inflight += 1;
        let again = r(&views);
        assert_eq!(again.worker, first.worker);
        assert_eq!(again.chosen_matched(), 4);
        p.forget_worker(first.worker);
        assert_eq!(p.index().len_of(first.worker), 0);
    }

    #[test]
    fn guesses_are_bounded_by_the_pool() {
        let p = policy(6);
        for i in 0..10 {
            let keys = prompt(i);
            p.route(&RouteRequest {
                keys: &keys,
                workers: &idle(3)[..1],
                now: Duration::ZERO,
                seq: 0,
            })
            .unwrap();
        }
        assert_eq!(p.index().len_of(0), 6);
    }

    #[test]
    fn spreads_unrelated_prompts() {
        let c = spread(&policy(1000), 3, 90);
        assert!(c.iter().all(|&n| n >= 10), "{c:?}");
    }
}
