//! `precise`: prefix matches from the KV-event index plus speculative credits,
//! combined with load by the [`Scorer`].

use super::cached::CachedPrefixes;
use super::{Decision, PolicyKind, RouteRequest, RoutingPolicy};
use crate::error::RouteError;
use crate::index::precise::PreciseIndex;
use crate::index::speculative::SpeculativeIndex;
use crate::scorer::Scorer;
use reprise_protocol::block_key::BlockKey;
use std::sync::Arc;
use std::time::Duration;

/// Cache-aware routing from KV events; workers that publish none (a remote engine
/// without `--kv-events-config`) are guessed from the policy's own decisions, as the
/// approximate policy does.
pub struct PrecisePolicy {
    cached: CachedPrefixes,
    scorer: Scorer,
}

impl PrecisePolicy {
    /// A precise policy over `index`, crediting chosen workers for `ttl`.
    pub fn new(index: Arc<PreciseIndex>, scorer: Scorer, ttl: Duration) -> Self {
        Self::with_fallback(index, scorer, ttl, 0, 0)
    }

    /// Like [`PrecisePolicy::new`], able to guess the caches of `num_workers` workers of
    /// `blocks_per_worker` blocks that publish no events.
    pub fn with_fallback(
        index: Arc<PreciseIndex>,
        scorer: Scorer,
        ttl: Duration,
        num_workers: usize,
        blocks_per_worker: usize,
    ) -> Self {
        Self {
            cached: CachedPrefixes::new(index, ttl, ttl, num_workers, blocks_per_worker),
            scorer,
        }
    }

    /// A precise policy over `cached` (credits as it configures them).
    pub fn over(cached: CachedPrefixes, scorer: Scorer) -> Self {
        Self { cached, scorer }
    }

    /// The speculative credits (for inspection).
    pub fn speculative(&self) -> &SpeculativeIndex {
        self.cached.speculative()
    }
}

impl RoutingPolicy for PrecisePolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Precise
    }

    fn route(&self, req: &RouteRequest<'_>) -> Result<Decision, RouteError> {
        let m = self.cached.matches(req);
        let pick = self
            .scorer
            .pick(req.workers, &m.combined, req.keys.len(), req.tie_value())?;
        self.cached.record(pick.worker, req, &m);
        Ok(Decision {
            worker: pick.worker,
            matched_blocks: m.combined,
            prompt_blocks: req.keys.len(),
            score: pick.score,
            overload_diverted: pick.overload_diverted,
            policy: PolicyKind::Precise,
        })
    }

    fn request_done(&self, worker: usize, keys: &[BlockKey], now: Duration) {
        self.cached.request_done(worker, keys, now);
    }

    fn forget_worker(&self, worker: usize) {
        self.cached.forget_worker(worker);
    }

    fn set_has_events(&self, worker: usize, has_events: bool) {
        self.cached.set_has_events(worker, has_events);
    }

    fn set_pool_blocks(&self, worker: usize, blocks: usize) {
        self.cached.set_pool_blocks(worker, blocks);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{idle, prompt, spread, store};
    use super::*;
    use crate::scorer::{OverloadGuard, ScoreWeights};

    fn policy(ttl_ms: u64) -> (Arc<PreciseIndex>, PrecisePolicy) {
        let idx = Arc::new(PreciseIndex::new(4, 16));
        let scorer = Scorer {
            weights: ScoreWeights::default(),
            guard: OverloadGuard::default(),
            seed: 9,
        };
        let p = PrecisePolicy::new(idx.clone(), scorer, Duration::from_millis(ttl_ms));
        (idx, p)
    }

    fn req<'a>(
        keys: &'a [reprise_protocol::BlockKey],
        views: &'a [crate::WorkerView],
        ms: u64,
    ) -> RouteRequest<'a> {
        RouteRequest {
            keys,
            workers: views,
            now: Duration::from_millis(ms),
            seq: ms,
        }
    }

    #[test]
    fn follows_the_cached_prefix_with_partial_matches_reported() {
        let (idx, p) = policy(0);
        let keys = prompt(1);
        store(&idx, 2, &keys);
        store(&idx, 1, &keys[..2]);
        let views = idle(4);
        let d = p.route(&req(&keys, &views, 0)).unwrap();
        assert_eq!(d.worker, 2);
        assert_eq!(d.matched_blocks, vec![0, 2, 4, 0]);
        assert_eq!(d.prompt_blocks, 4);
    }

    #[test]
    fn speculative_credit_groups_a_burst_then_expires() {
        let (_idx, p) = policy(2000);
        let keys = prompt(7);
        let mut views = idle(4);
        let first = p.route(&req(&keys, &views, 0)).unwrap();
        views[first.worker].inflight += 1;
        // Same new prefix 100 ms later, before any KV event: same worker, full match.
        let d = p.route(&req(&keys, &views, 100)).unwrap();
        assert_eq!(d.worker, first.worker);
        assert_eq!(d.chosen_matched(), 4);
        // After the TTL the credit is gone.
        let d = p.route(&req(&keys, &idle(4), 2100)).unwrap();
        assert_eq!(d.matched_blocks, vec![0; 4], "expired after 2 s");
        let later = p.route(&req(&prompt(8), &idle(4), 10_000)).unwrap();
        assert_eq!(later.matched_blocks, vec![0; 4]);
        let mut m = vec![0; 4];
        p.speculative()
            .match_prefix(&keys, Duration::from_millis(4200), 0b1111, &mut m);
        assert_eq!(m, vec![0; 4], "expired without sleeping");
    }

    #[test]
    fn overload_guard_diverts_from_the_prefix_holder() {
        let (idx, p) = policy(0);
        let keys = prompt(3);
        store(&idx, 0, &keys);
        let mut views = idle(4);
        views[0].load.waiting = 40;
        let d = p.route(&req(&keys, &views, 0)).unwrap();
        assert_ne!(d.worker, 0);
        assert!(d.overload_diverted);
    }

    #[test]
    fn workers_without_events_are_guessed_from_decisions() {
        let idx = Arc::new(PreciseIndex::new(2, 16));
        let scorer = Scorer {
            weights: ScoreWeights::default(),
            guard: OverloadGuard::default(),
            seed: 9,
        };
        let p = PrecisePolicy::with_fallback(idx.clone(), scorer, Duration::ZERO, 2, 1000);
        p.set_has_events(1, false);
        // Worker 1 publishes nothing: once a prompt went there, repeats follow it.
        let keys = prompt(11);
        let views = idle(2);
        let mut first = None;
        for ms in 0..20 {
            let d = p
                .route(&req(&prompt(100 + ms), &views, u64::from(ms)))
                .unwrap();
            if d.worker == 1 {
                first = Some(100 + ms);
                break;
            }
        }
        let first = prompt(first.expect("some prompt goes to worker 1"));
        let d = p.route(&req(&first, &views, 50)).unwrap();
        assert_eq!((d.worker, d.chosen_matched()), (1, first.len()));
        // Worker 0 has events: a guess never stands in for them.
        store(&idx, 0, &keys);
        let d = p.route(&req(&keys, &views, 60)).unwrap();
        assert_eq!(d.worker, 0);
        // The guess is bounded by the pool size once known.
        p.set_pool_blocks(1, 1);
        let d = p.route(&req(&first, &views, 70)).unwrap();
        assert!(d.matched_blocks[1] <= 1, "{d:?}");
        // Events again: the guesses are dropped.
        p.set_has_events(1, true);
        let d = p.route(&req(&first, &views, 80)).unwrap();
        assert_eq!(d.matched_blocks[1], 0);
    }

    #[test]
    fn spreads_unrelated_prompts() {
        let (_idx, p) = policy(2000);
        let c = spread(&p, 4, 100);
        assert!(c.iter().all(|&n| n >= 10), "{c:?}");
    }
}
