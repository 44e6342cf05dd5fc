//! What a cache-aware policy believes each worker holds: the KV-event index, the
//! speculative credits of its own recent decisions, and for workers that publish no
//! events a guess from those decisions. Shared by `precise` and `cost`.

use super::RouteRequest;
use crate::index::approximate::ApproximateIndex;
use crate::index::precise::PreciseIndex;
use crate::index::speculative::SpeculativeIndex;
use crate::index::{bit, WorkerMask, MAX_WORKERS};
use parking_lot::RwLock;
use reprise_protocol::block_key::BlockKey;
use std::sync::Arc;
use std::time::Duration;

/// A prompt's cached runs per worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Matches {
    /// Blocks cached as a run from block 0, counting speculative credits and guesses.
    pub combined: Vec<usize>,
    /// The same from KV events (and guesses) only.
    pub confirmed: Vec<usize>,
}

/// The caches of every worker as a cache-aware policy sees them.
pub struct CachedPrefixes {
    index: Arc<PreciseIndex>,
    speculative: SpeculativeIndex,
    /// Workers without events, whose caches are guessed.
    guessed: RwLock<WorkerMask>,
    fallback: ApproximateIndex,
}

impl CachedPrefixes {
    /// Caches from `index`, credits living `ttl` after their request ends (at most
    /// `max_ttl`), guesses for `num_workers` workers of `blocks_per_worker` blocks.
    pub fn new(
        index: Arc<PreciseIndex>,
        ttl: Duration,
        max_ttl: Duration,
        num_workers: usize,
        blocks_per_worker: usize,
    ) -> Self {
        Self {
            index,
            speculative: SpeculativeIndex::new(ttl, max_ttl),
            guessed: RwLock::new(0),
            fallback: ApproximateIndex::new(num_workers, blocks_per_worker),
        }
    }

    /// The speculative credits (for inspection).
    pub fn speculative(&self) -> &SpeculativeIndex {
        &self.speculative
    }

    /// `req`'s cached run on every worker.
    pub fn matches(&self, req: &RouteRequest<'_>) -> Matches {
        let n = req.workers.len();
        let mut confirmed = vec![0; n];
        let guessed = *self.guessed.read();
        self.index
            .match_prefix(req.keys, req.all() & !guessed, &mut confirmed);
        if guessed != 0 {
            let mut guess = vec![0; n];
            self.fallback.match_prefix(req.keys, guessed, &mut guess);
            for (m, g) in confirmed.iter_mut().zip(&guess) {
                *m = (*m).max(*g);
            }
        }
        // Runs vouched for by speculative credits count too (see index::speculative).
        let mut spec = [0usize; MAX_WORKERS];
        let spec = &mut spec[..n.min(MAX_WORKERS)];
        self.speculative
            .match_prefix(req.keys, req.now, req.all(), spec);
        let mut combined = confirmed.clone();
        for (m, s) in combined.iter_mut().zip(spec.iter()) {
            *m = (*m).max(*s);
        }
        Matches {
            combined,
            confirmed,
        }
    }

    /// `req` goes to `worker`: guess its cache, and credit it unless its events
    /// already confirm the whole prompt.
    pub fn record(&self, worker: usize, req: &RouteRequest<'_>, m: &Matches) {
        if *self.guessed.read() & bit(worker) != 0 {
            self.fallback.record(worker, req.keys);
        }
        if m.confirmed.get(worker).copied().unwrap_or(0) < req.keys.len() {
            self.speculative.credit(worker, req.keys, req.now);
        }
    }

    /// The request with `keys` on `worker` ended: its credit starts to expire.
    pub fn request_done(&self, worker: usize, keys: &[BlockKey], now: Duration) {
        self.speculative.release(worker, keys, now);
    }

    /// Drop credits and guesses of `worker`.
    pub fn forget_worker(&self, worker: usize) {
        self.speculative.forget_worker(worker);
        self.fallback.forget_worker(worker);
    }

    /// Whether `worker` publishes events (otherwise its cache is guessed).
    pub fn set_has_events(&self, worker: usize, has_events: bool) {
        let mut g = self.guessed.write();
        if has_events {
            *g &= !bit(worker);
            self.fallback.forget_worker(worker);
        } else {
            *g |= bit(worker);
        }
    }

    /// `worker`'s pool size bounds its guessed cache.
    pub fn set_pool_blocks(&self, worker: usize, blocks: usize) {
        self.fallback.set_capacity(worker, blocks);
    }
}
