//! Routing policies: a [`RoutingPolicy`] picks a worker for one prompt. Policies take
//! `&self` and are `Send + Sync` so many tasks route concurrently; whatever state
//! they keep (indexes, counters) is internally synchronised.
//!
//! | name          | chooses by                                                      |
//! |---------------|-----------------------------------------------------------------|
//! | `precise`     | weighted score with prefix from KV events + speculative credits |
//! | `cost`        | lowest predicted time to first token (queued + own prefill)     |
//! | `approximate` | weighted score with prefix from the router's own past decisions |
//! | `load`        | queue depth and KV usage only                                   |
//! | `round-robin` | next available worker in turn                                   |
//! | `random`      | seeded uniform choice among available workers                   |

pub mod approximate;
pub mod cached;
pub mod cost;
pub mod factory;
pub mod load;
pub mod precise;
pub mod random;
pub mod round_robin;

pub use crate::config::PolicyKind;
use crate::error::RouteError;
use crate::index::precise::PreciseIndex;
use crate::index::{all_workers, WorkerMask};
use crate::keymap::fold;
use crate::scorer::WorkerView;
use reprise_protocol::block_key::BlockKey;
use std::time::Duration;

/// One prompt to route, with everything the policy may look at.
#[derive(Clone, Copy, Debug)]
pub struct RouteRequest<'a> {
    /// The prompt's block keys (full blocks only).
    pub keys: &'a [BlockKey],
    /// Per-worker availability and load.
    pub workers: &'a [WorkerView],
    /// Current time since the router's epoch.
    pub now: Duration,
    /// The router's decision counter (fresh per decision).
    pub seq: u64,
}

impl RouteRequest<'_> {
    /// Mask of every worker (matches are reported for unavailable workers too).
    pub fn all(&self) -> WorkerMask {
        all_workers(self.workers.len())
    }

    /// Per-request value for tie-breaks: the first block key, so the same prompt
    /// breaks ties the same way; the decision counter for sub-block prompts.
    pub fn tie_value(&self) -> u64 {
        self.keys.first().map_or(self.seq, |k| fold(k.0))
    }
}

/// The outcome of routing one prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The chosen worker.
    pub worker: usize,
    /// Per worker, the prompt's blocks cached as a run from block 0, as this policy
    /// sees the caches (the baselines report the precise index, which is empty when
    /// no events are fed).
    pub matched_blocks: Vec<usize>,
    /// The prompt's number of full blocks.
    pub prompt_blocks: usize,
    /// The chosen worker's weighted score (0 for policies that do not score).
    pub score: f64,
    /// True when the overload guard passed over a worker with a longer cached run.
    pub overload_diverted: bool,
    /// The policy that decided.
    pub policy: PolicyKind,
}

impl Decision {
    /// Blocks the chosen worker is believed to have cached.
    pub fn chosen_matched(&self) -> usize {
        self.matched_blocks.get(self.worker).copied().unwrap_or(0)
    }
}

/// A routing policy; see the module docs for the implementations.
pub trait RoutingPolicy: Send + Sync {
    /// Which policy this is.
    fn kind(&self) -> PolicyKind;
    /// Choose a worker for `req` (and record whatever the policy learns from it).
    fn route(&self, req: &RouteRequest<'_>) -> Result<Decision, RouteError>;
    /// A request routed to `worker` with block keys `keys` ended (finished, failed
    /// or cancelled): what the policy assumed for it alone may go.
    fn request_done(&self, _worker: usize, _keys: &[BlockKey], _now: Duration) {}
    /// Forget what the policy itself learnt about `worker` (restart, failure).
    fn forget_worker(&self, _worker: usize) {}
    /// Whether `worker` publishes KV events; a cache-aware policy guesses the caches
    /// of workers that do not from its own decisions (default: every worker does).
    fn set_has_events(&self, _worker: usize, _has_events: bool) {}
    /// `worker`'s KV pool in blocks, once known (sizes guessed caches).
    fn set_pool_blocks(&self, _worker: usize, _blocks: usize) {}
}

/// Index of the `n`-th available worker (`n < count of available`).
fn nth_available(workers: &[WorkerView], n: usize) -> Option<usize> {
    workers
        .iter()
        .enumerate()
        .filter(|(_, v)| v.available)
        .nth(n)
        .map(|(w, _)| w)
}

/// Matches from the precise index, for policies that do not score by prefix.
fn observed_matches(index: &PreciseIndex, req: &RouteRequest<'_>) -> Vec<usize> {
    let mut m = vec![0; req.workers.len()];
    index.match_prefix(req.keys, req.all(), &mut m);
    m
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the policies' tests.
    use super::*;
    use reprise_protocol::block_key::{BlockHasher, HashAlgo};
    use reprise_protocol::load::WorkerLoad;

    /// `n` idle available workers.
    pub fn idle(n: usize) -> Vec<WorkerView> {
        vec![
            WorkerView {
                available: true,
                load: WorkerLoad {
                    total_blocks: 1000,
                    ..Default::default()
                },
                inflight: 0,
            };
            n
        ]
    }

    /// Worker `w` stores `keys` as one chain (its events, applied to `idx`).
    pub fn store(idx: &PreciseIndex, w: usize, keys: &[BlockKey]) {
        use reprise_protocol::events::{KvEvent, KvEventData, MemoryTier};
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

    /// Keys of an unrelated 64-token prompt number `i`.
    pub fn prompt(i: u32) -> Vec<BlockKey> {
        let h = BlockHasher::new(16, HashAlgo::Xxh3).unwrap_or_else(|_| unreachable!());
        let toks: Vec<u32> = (0..64).map(|t| i * 1000 + t).collect();
        h.prompt_keys(&toks, b"")
    }

    /// Route `n` unrelated prompts through `p`, counting the routed request as
    /// inflight like the router does; returns how many went to each worker.
    pub fn spread(p: &dyn RoutingPolicy, workers: usize, n: u32) -> Vec<usize> {
        let mut views = idle(workers);
        let mut counts = vec![0; workers];
        for i in 0..n {
            let keys = prompt(i);
            let req = RouteRequest {
                keys: &keys,
                workers: &views,
                now: Duration::from_millis(u64::from(i)),
                seq: u64::from(i),
            };
            let d = p.route(&req).unwrap();
            counts[d.worker] += 1;
            views[d.worker].inflight += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::factory::build;
    use super::*;
    use crate::config::RouterConfig;
    use std::sync::Arc;

    #[test]
    fn names_round_trip_and_unknown_is_a_clear_error() {
        for k in PolicyKind::ALL {
            assert_eq!(k.name().parse::<PolicyKind>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!(
            "Round_Robin".parse::<PolicyKind>(),
            Ok(PolicyKind::RoundRobin)
        );
        let e = "fastest".parse::<PolicyKind>().unwrap_err();
        assert!(e.to_string().contains("fastest") && e.to_string().contains("round-robin"));
    }

    #[test]
    fn every_policy_spreads_unrelated_prompts() {
        for kind in PolicyKind::ALL {
            let config = RouterConfig {
                policy: kind,
                ..Default::default()
            };
            let idx = Arc::new(PreciseIndex::new(4, 16));
            let p = build(&config, idx, 4, 1000).unwrap();
            let counts = test_util::spread(p.as_ref(), 4, 200);
            assert!(counts.iter().all(|&c| c >= 20), "{kind}: {counts:?}");
        }
    }
}
