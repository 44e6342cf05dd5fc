//! `approximate`: prefix matches guessed from the router's own past decisions (an LRU
//! per worker sized like its KV pool), combined with load by the [`Scorer`].

use super::{Decision, PolicyKind, RouteRequest, RoutingPolicy};
use crate::config::ApproximateConfig;
use crate::error::RouteError;
use crate::index::approximate::ApproximateIndex;
use crate::scorer::Scorer;

/// Cache-aware routing without KV events.
pub struct ApproximatePolicy {
    index: ApproximateIndex,
    scorer: Scorer,
    config: ApproximateConfig,
}

impl ApproximatePolicy {
    /// One LRU per worker, of `config.capacity_blocks` keys or else of
    /// `blocks_per_worker` (the worker's pool).
    pub fn new(
        num_workers: usize,
        blocks_per_worker: usize,
        scorer: Scorer,
        config: ApproximateConfig,
    ) -> Self {
        let cap = match config.capacity_blocks {
            0 => blocks_per_worker,
            n => n,
        };
        Self {
            index: ApproximateIndex::new(num_workers, cap),
            scorer,
            config,
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
        // Like llm-d's estimated scorer, a prompt past `max_blocks` is cut there: the
        // score is the matched share of what is left.
        let keys = match self.config.max_blocks {
            0 => req.keys,
            n => &req.keys[..req.keys.len().min(n)],
        };
        let mut matched = vec![0; req.workers.len()];
        self.index.match_prefix(keys, req.all(), &mut matched);
        let pick = self
            .scorer
            .pick(req.workers, &matched, keys.len(), req.tie_value())?;
        self.index.record(pick.worker, keys);
        Ok(Decision {
            worker: pick.worker,
            matched_blocks: matched,
            prompt_blocks: keys.len(),
            score: pick.score,
            overload_diverted: pick.overload_diverted,
            policy: PolicyKind::Approximate,
        })
    }

    fn forget_worker(&self, worker: usize) {
        self.index.forget_worker(worker);
    }

    fn set_pool_blocks(&self, worker: usize, blocks: usize) {
        // A configured capacity is the operator's, not the pool's.
        if self.config.capacity_blocks == 0 {
            self.index.set_capacity(worker, blocks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{idle, prompt, spread};
    use super::*;
    use crate::scorer::{OverloadGuard, ScoreWeights};
    use std::time::Duration;

    fn policy_with(cap: usize, config: ApproximateConfig) -> ApproximatePolicy {
        let scorer = Scorer {
            weights: ScoreWeights::default(),
            guard: OverloadGuard::default(),
            seed: 3,
        };
        ApproximatePolicy::new(3, cap, scorer, config)
    }

    fn policy(cap: usize) -> ApproximatePolicy {
        policy_with(cap, ApproximateConfig::default())
    }

    #[test]
    fn a_configured_guess_is_cut_and_sized_as_configured() {
        // Remember 2 leading blocks of each prompt, 4 keys per worker whatever the pool.
        let p = policy_with(
            100,
            ApproximateConfig {
                max_blocks: 2,
                capacity_blocks: 4,
            },
        );
        p.set_pool_blocks(0, 1000);
        let keys = prompt(5);
        let views = idle(3);
        let req = RouteRequest {
            keys: &keys,
            workers: &views[..1],
            now: Duration::ZERO,
            seq: 0,
        };
        let d = p.route(&req).unwrap();
        assert_eq!(d.prompt_blocks, 2);
        assert_eq!(p.index().len_of(0), 2);
        // The second prompt's 2 keys evict nothing; a third's evict the first's.
        for i in [6, 7] {
            let k = prompt(i);
            p.route(&RouteRequest { keys: &k, ..req }).unwrap();
        }
        assert_eq!(p.index().len_of(0), 4);
        let again = p.route(&req).unwrap();
        assert_eq!(
            again.chosen_matched(),
            0,
            "the first prompt's keys were evicted"
        );
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
