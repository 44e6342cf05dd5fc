//! `load`: the baseline that ignores caches and scores only queue depth and KV usage
//! (the configured `queue` and `kv_usage` weights; prefix and running weights are
//! forced to 0). The overload guard still applies.

use super::{observed_matches, Decision, PolicyKind, RouteRequest, RoutingPolicy};
use crate::error::RouteError;
use crate::index::precise::PreciseIndex;
use crate::scorer::Scorer;
use std::sync::Arc;

/// Load-only routing.
pub struct LoadPolicy {
    index: Arc<PreciseIndex>,
    scorer: Scorer,
}

impl LoadPolicy {
    /// Load-only scoring with `scorer`'s queue and KV weights.
    pub fn new(index: Arc<PreciseIndex>, mut scorer: Scorer) -> Self {
        scorer.weights.prefix = 0.0;
        scorer.weights.running = 0.0;
        Self { index, scorer }
    }
}

impl RoutingPolicy for LoadPolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Load
    }

    fn route(&self, req: &RouteRequest<'_>) -> Result<Decision, RouteError> {
        let matched = observed_matches(&self.index, req);
        let pick = self
            .scorer
            .pick(req.workers, &[], req.keys.len(), req.tie_value())?;
        Ok(Decision {
            worker: pick.worker,
            matched_blocks: matched,
            prompt_blocks: req.keys.len(),
            score: pick.score,
            overload_diverted: false,
            policy: PolicyKind::Load,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{idle, prompt, spread};
    use super::*;
    use crate::scorer::{OverloadGuard, ScoreWeights};
    use std::time::Duration;

    fn policy() -> LoadPolicy {
        let scorer = Scorer {
            weights: ScoreWeights::default(),
            guard: OverloadGuard::default(),
            seed: 0,
        };
        LoadPolicy::new(Arc::new(PreciseIndex::new(3, 16)), scorer)
    }

    #[test]
    fn picks_the_least_loaded() {
        let mut views = idle(3);
        views[0].load.waiting = 3;
        views[1].load.blocks_in_use = 900;
        views[2].load.waiting = 1;
        let keys = prompt(1);
        let d = policy()
            .route(&RouteRequest {
                keys: &keys,
                workers: &views,
                now: Duration::ZERO,
                seq: 0,
            })
            .unwrap();
        // w1: queue 1.5 + kv 0.1 = 1.6; w2: queue 1.0 + kv 1.0 = 2.0; w0: 0 + 1 = 1.
        assert_eq!(d.worker, 2);
    }

    #[test]
    fn spreads_unrelated_prompts() {
        let c = spread(&policy(), 3, 90);
        assert!(c.iter().all(|&n| n >= 20), "{c:?}");
    }
}
