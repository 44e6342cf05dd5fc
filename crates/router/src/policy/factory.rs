//! Builds the policy a router configuration names (one file per policy beside it).

use super::{approximate, cached, cost, load, precise, random, round_robin, RoutingPolicy};
use crate::config::{ConfigError, PolicyKind, RouterConfig};
use crate::index::precise::PreciseIndex;
use crate::scorer::Scorer;
use std::sync::Arc;

/// Build the policy `config.policy` names. `index` is the router's precise index
/// (fed by events whatever the policy; the baselines use it to report matches).
pub fn build(
    config: &RouterConfig,
    index: Arc<PreciseIndex>,
    num_workers: usize,
    blocks_per_worker: usize,
) -> Result<Box<dyn RoutingPolicy>, ConfigError> {
    config.validate()?;
    let scorer = Scorer {
        weights: config.weights,
        guard: config.overload,
        seed: config.seed,
    };
    let cached = |index| {
        cached::CachedPrefixes::new(
            index,
            config.speculative_ttl(),
            config.speculative_max_ttl(),
            num_workers,
            blocks_per_worker,
        )
    };
    Ok(match config.policy {
        PolicyKind::Precise => Box::new(precise::PrecisePolicy::over(cached(index), scorer)),
        PolicyKind::Cost => Box::new(cost::CostPolicy::new(
            cached(index),
            config.cost,
            config.seed,
            num_workers,
            config.block_size,
        )),
        PolicyKind::Approximate => Box::new(approximate::ApproximatePolicy::new(
            num_workers,
            blocks_per_worker,
            scorer,
            config.approximate,
        )),
        PolicyKind::Load => Box::new(load::LoadPolicy::new(index, scorer)),
        PolicyKind::RoundRobin => Box::new(round_robin::RoundRobinPolicy::new(index)),
        PolicyKind::Random => Box::new(random::RandomPolicy::new(index, config.seed)),
    })
}
