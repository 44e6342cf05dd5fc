//! `cost`: the worker where this request's first token is predicted soonest, in the
//! spirit of Dynamo's KV router. In blocks of prefill work, for each available
//! worker `w`:
//!
//! ```text
//! ahead_w     = prefill the running requests still owe (the worker's report)
//!             + the uncached blocks of the requests this policy sent to w that have
//!               not started: its newest (waiting_w + routed-not-yet-reported_w)
//! own_w       = this prompt's blocks not cached on w (+1 for its partial tail)
//! predicted_w = ahead_w + uncached_weight · own_w + running_weight · running_w
//! ```
//!
//! The lowest prediction wins; a tie goes to the longer cached run, then to the
//! seeded tie-break. The prompt's own blocks weigh more than the queue because
//! computing a prefix again on another worker also evicts what that worker cached
//! (the next requests of both prefixes then miss). Prefill dominates time to first
//! token (a decoding sequence costs a step a fraction of what a prefill token
//! does), so the decode term is a small weight: it keeps equal queues apart by how
//! much each worker is decoding.
//! Caches are seen as `precise` sees them (KV events, credits, guesses).

use super::cached::CachedPrefixes;
use super::{Decision, PolicyKind, RouteRequest, RoutingPolicy};
pub use crate::config::CostWeights;
use crate::error::RouteError;
use crate::keymap::fold;
use crate::scorer::{tie_rank, WorkerView};
use parking_lot::Mutex;
use reprise_protocol::block_key::BlockKey;
use std::collections::VecDeque;
use std::time::Duration;

/// Decisions kept per worker when their ends are never reported (a bound, not a
/// tuning knob: far above any batch).
const MAX_OUTSTANDING: usize = 8192;

/// A request this policy sent and whose end it has not yet been told of.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    /// Identifies the prompt: its last block key (chained, so it names the whole
    /// prefix), or 0 for a prompt under one block.
    prompt: u64,
    /// Blocks it had to prefill when routed.
    uncached: usize,
}

/// Routes to the lowest predicted time to first token.
pub struct CostPolicy {
    cached: CachedPrefixes,
    weights: CostWeights,
    seed: u64,
    /// Tokens per block (the workers report prefill in tokens).
    block_size: usize,
    /// Per worker, the requests sent there that are still live, oldest first.
    outstanding: Vec<Mutex<VecDeque<Outstanding>>>,
}

fn prompt_id(keys: &[BlockKey]) -> u64 {
    keys.last().map_or(0, |k| fold(k.0))
}

/// Blocks a prompt of `blocks` full blocks, `matched` of them cached, has to prefill
/// (+1 for its partial tail).
fn own_blocks(blocks: usize, matched: usize) -> usize {
    blocks - matched.min(blocks) + 1
}

impl CostPolicy {
    /// A cost policy over `cached` for `num_workers` workers of `block_size`-token blocks.
    pub fn new(
        cached: CachedPrefixes,
        weights: CostWeights,
        seed: u64,
        num_workers: usize,
        block_size: usize,
    ) -> Self {
        Self {
            cached,
            weights,
            seed,
            block_size: block_size.max(1),
            outstanding: (0..num_workers)
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
        }
    }

    /// Blocks of prefill ahead of a new request on worker `w`.
    fn ahead(&self, w: usize, v: &WorkerView) -> usize {
        let not_started = v.queue();
        let queued: usize = self.outstanding.get(w).map_or(0, |q| {
            q.lock()
                .iter()
                .rev()
                .take(not_started)
                .map(|o| o.uncached)
                .sum()
        });
        v.load.prefill_tokens.div_ceil(self.block_size) + queued
    }

    /// Predicted cost on every available worker (None where unavailable).
    fn predict(&self, req: &RouteRequest<'_>, matched: &[usize]) -> Vec<Option<f64>> {
        req.workers
            .iter()
            .enumerate()
            .map(|(w, v)| {
                v.available.then(|| {
                    let own = own_blocks(req.keys.len(), matched.get(w).copied().unwrap_or(0));
                    self.ahead(w, v) as f64
                        + self.weights.uncached * own as f64
                        + self.weights.running * v.load.running as f64
                })
            })
            .collect()
    }
}

impl RoutingPolicy for CostPolicy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Cost
    }

    fn route(&self, req: &RouteRequest<'_>) -> Result<Decision, RouteError> {
        let m = self.cached.matches(req);
        let predicted = self.predict(req, &m.combined);
        let tie = req.tie_value();
        let mut best: Option<(usize, f64, usize, u64)> = None;
        for (w, p) in predicted.iter().enumerate() {
            let Some(p) = *p else { continue };
            let run = m.combined[w];
            let t = tie_rank(self.seed, tie, w);
            let better = match best {
                None => true,
                Some((_, bp, brun, bt)) => {
                    p < bp - 1e-9 || ((p - bp).abs() <= 1e-9 && (run, t) > (brun, bt))
                }
            };
            if better {
                best = Some((w, p, run, t));
            }
        }
        let (worker, cost, _, _) = best.ok_or(RouteError::NoWorkerAvailable)?;
        self.cached.record(worker, req, &m);
        if let Some(q) = self.outstanding.get(worker) {
            let mut q = q.lock();
            if q.len() >= MAX_OUTSTANDING {
                q.pop_front();
            }
            q.push_back(Outstanding {
                prompt: prompt_id(req.keys),
                uncached: own_blocks(req.keys.len(), m.combined[worker]),
            });
        }
        Ok(Decision {
            worker,
            matched_blocks: m.combined,
            prompt_blocks: req.keys.len(),
            // Higher is better in every policy's score: the negated prediction.
            score: -cost,
            overload_diverted: false,
            policy: PolicyKind::Cost,
        })
    }

    fn request_done(&self, worker: usize, keys: &[BlockKey], now: Duration) {
        self.cached.request_done(worker, keys, now);
        if let Some(q) = self.outstanding.get(worker) {
            let id = prompt_id(keys);
            let mut q = q.lock();
            if let Some(i) = q.iter().position(|o| o.prompt == id) {
                q.remove(i);
            }
        }
    }

    fn forget_worker(&self, worker: usize) {
        self.cached.forget_worker(worker);
        if let Some(q) = self.outstanding.get(worker) {
            q.lock().clear();
        }
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
    use crate::index::precise::PreciseIndex;
    use std::sync::Arc;

    fn policy(workers: usize) -> (Arc<PreciseIndex>, CostPolicy) {
        let idx = Arc::new(PreciseIndex::new(workers, 16));
        let cached = CachedPrefixes::new(
            idx.clone(),
            Duration::from_secs(2),
            Duration::from_secs(300),
            workers,
            1000,
        );
        (
            idx,
            CostPolicy::new(cached, CostWeights::default(), 3, workers, 16),
        )
    }

    fn req<'a>(keys: &'a [BlockKey], views: &'a [WorkerView], ms: u64) -> RouteRequest<'a> {
        RouteRequest {
            keys,
            workers: views,
            now: Duration::from_millis(ms),
            seq: ms,
        }
    }

    #[test]
    fn an_idle_worker_with_the_prefix_wins() {
        let (idx, p) = policy(3);
        let keys = prompt(1);
        store(&idx, 2, &keys);
        let d = p.route(&req(&keys, &idle(3), 0)).unwrap();
        assert_eq!(d.worker, 2);
        assert_eq!(d.matched_blocks, vec![0, 0, 4]);
    }

    #[test]
    fn queued_prefill_outweighs_a_cached_prefix() {
        // Worker 0 holds the 4-block prompt but is still prefilling 800 tokens (50
        // blocks): 50 + 8·1 there against 8·5 on the idle worker 1.
        let w = CostWeights::default();
        assert_eq!(w.uncached, 8.0);
        let route = |backlog: usize| {
            let (idx, p) = policy(2);
            let keys = prompt(2);
            store(&idx, 0, &keys);
            let mut views = idle(2);
            views[0].load.prefill_tokens = backlog;
            views[0].load.running = 1;
            p.route(&req(&keys, &views, 0)).unwrap().worker
        };
        assert_eq!(route(800), 1);
        // A backlog under the cost of recomputing the prefix does not move it.
        assert_eq!(route(400), 0);
    }

    #[test]
    fn requests_sent_but_not_started_count_until_they_end() {
        let (_idx, p) = policy(2);
        let mut views = idle(2);
        // A long cold prompt goes somewhere; until it is reported it is in flight.
        let long: Vec<BlockKey> = (0..10).flat_map(|i| prompt(100 + i)).collect();
        let first = p.route(&req(&long, &views, 0)).unwrap().worker;
        views[first].inflight = 1;
        // A short unrelated prompt avoids the worker with that backlog.
        let d = p.route(&req(&prompt(5), &views, 1)).unwrap();
        assert_ne!(d.worker, first);
        // Reported as running (its prefill then counted by the worker) and finished:
        // nothing of it is left ahead of the next one.
        views[first].inflight = 0;
        p.request_done(first, &long, Duration::from_millis(5));
        p.request_done(d.worker, &prompt(5), Duration::from_millis(5));
        assert!(p.outstanding.iter().all(|q| q.lock().is_empty()));
    }

    #[test]
    fn a_burst_of_one_new_prefix_stays_together() {
        // The first request's credit makes the others' own work one block, so they
        // follow it while its queue is short.
        let (_idx, p) = policy(4);
        let keys = prompt(9);
        let mut views = idle(4);
        let first = p.route(&req(&keys, &views, 0)).unwrap().worker;
        views[first].inflight += 1;
        let second = p.route(&req(&keys, &views, 1)).unwrap();
        assert_eq!(second.worker, first);
        assert_eq!(second.chosen_matched(), 4);
    }

    #[test]
    fn spreads_unrelated_prompts_and_skips_unavailable() {
        let (_idx, p) = policy(4);
        let c = spread(&p, 4, 100);
        assert!(c.iter().all(|&n| n >= 10), "{c:?}");
        let (_idx, p) = policy(2);
        let mut views = idle(2);
        views[0].available = false;
        assert_eq!(p.route(&req(&prompt(1), &views, 0)).unwrap().worker, 1);
        views[1].available = false;
        assert_eq!(
            p.route(&req(&prompt(1), &views, 0)),
            Err(RouteError::NoWorkerAvailable)
        );
    }
}
