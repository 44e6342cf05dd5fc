//! `precise`: prefix matches from the KV-event index plus speculative credits,
//! combined with load by the [`Scorer`].

use super::{Decision, PolicyKind, RouteRequest, RoutingPolicy};
use crate::block_key::BlockKey;
use crate::error::RouteError;
use crate::index::approximate::ApproximateIndex;
use crate::index::precise::PreciseIndex;
use crate::index::speculative::SpeculativeIndex;
use crate::index::{bit, WorkerMask, MAX_WORKERS};
use crate::scorer::Scorer;
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::Duration;

/// Cache-aware routing from KV events; workers that publish none (a remote engine
/// without `--kv-events-config`) are guessed from the policy's own decisions, as the
/// approximate policy does.
pub struct PrecisePolicy {
    index: Arc<PreciseIndex>,
    speculative: SpeculativeIndex,
    scorer: Scorer,
    /// Workers without events, and their guessed caches.
    guessed: RwLock<WorkerMask>,
    fallback: ApproximateIndex,
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
            index,
            speculative: SpeculativeIndex::new(ttl, ttl),
            scorer,
            guessed: RwLock::new(0),
            fallback: ApproximateIndex::new(num_workers, blocks_per_worker),
        }
    }

    /// Credits held while their requests live, up to `max_ttl`, and `ttl` after
    /// their end (without this, a credit lives `ttl` from its decision).
    pub fn credits_until_end(mut self, ttl: Duration, max_ttl: Duration) -> Self {
        self.speculative = SpeculativeIndex::new(ttl, max_ttl);
        self
    }

    /// The speculative credits (for inspection).
    pub fn speculative(&self) -> &SpeculativeIndex {
        &self.speculative
    }
}

impl RoutingPolicy for PrecisePolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Precise
    }

    fn route(&self, req: &RouteRequest<'_>) -> Result<Decision, RouteError> {
        let n = req.workers.len();
        let mut matched = vec![0; n];
        let guessed = *self.guessed.read();
        self.index
            .match_prefix(req.keys, req.all() & !guessed, &mut matched);
        if guessed != 0 {
            let mut guess = vec![0; n];
            self.fallback.match_prefix(req.keys, guessed, &mut guess);
            for (m, g) in matched.iter_mut().zip(&guess) {
                *m = (*m).max(*g);
            }
        }
        // Runs vouched for by speculative credits count too (see index::speculative).
        let mut spec = [0usize; MAX_WORKERS];
        let spec = &mut spec[..n.min(MAX_WORKERS)];
        self.speculative
            .match_prefix(req.keys, req.now, req.all(), spec);
        let confirmed = |w: usize| matched.get(w).copied().unwrap_or(0);
        let mut combined = matched.clone();
        for (m, s) in combined.iter_mut().zip(spec.iter()) {
            *m = (*m).max(*s);
        }
        let pick = self
            .scorer
            .pick(req.workers, &combined, req.keys.len(), req.tie_value())?;
        if guessed & bit(pick.worker) != 0 {
            self.fallback.record(pick.worker, req.keys);
        }
        // Credit the chosen worker unless its events already confirm the whole prompt.
        if confirmed(pick.worker) < req.keys.len() {
            self.speculative.credit(pick.worker, req.keys, req.now);
        }
        let matched = combined;
        Ok(Decision {
            worker: pick.worker,
            matched_blocks: matched,
            prompt_blocks: req.keys.len(),
            score: pick.score,
            overload_diverted: pick.overload_diverted,
            policy: PolicyKind::Precise,
        })
    }

    fn request_done(&self, worker: usize, keys: &[BlockKey], now: Duration) {
        self.speculative.release(worker, keys, now);
    }

    fn forget_worker(&self, worker: usize) {
        self.speculative.forget_worker(worker);
        self.fallback.forget_worker(worker);
    }

    fn set_has_events(&self, worker: usize, has_events: bool) {
        let mut g = self.guessed.write();
        if has_events {
            *g &= !bit(worker);
            self.fallback.forget_worker(worker);
        } else {
            *g |= bit(worker);
        }
    }

    fn set_pool_blocks(&self, worker: usize, blocks: usize) {
        self.fallback.set_capacity(worker, blocks);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{idle, prompt, spread};
    use super::*;
    use crate::events::{KvEvent, KvEventData, MemoryTier};
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

    fn store(idx: &PreciseIndex, w: usize, keys: &[crate::BlockKey]) {
        let evs: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| KvEvent {
                seq: i as u64,
                data: KvEventData::BlockStored {
                    key: *k,
                    parent: None,
                    tokens: vec![0; 16],
                    tier: MemoryTier::Device,
                    extra: Vec::new(),
                },
            })
            .collect();
        idx.apply(w, &evs).unwrap();
    }

    fn req<'a>(
        keys: &'a [crate::BlockKey],
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
