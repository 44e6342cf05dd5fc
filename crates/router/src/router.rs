//! The [`Router`] facade used by the server and the cluster simulator.

use crate::config::{ConfigError, RouterConfig};
use crate::error::RouteError;
use crate::index::precise::{ApplyOutcome, PreciseIndex, StreamStats};
use crate::index::{bit, WorkerMask, MAX_WORKERS};
use crate::policy::{self, Decision, PolicyKind, RouteRequest, RoutingPolicy};
use crate::scorer::WorkerView;
use parking_lot::Mutex;
use reprise_protocol::block_key::{BlockHasher, BlockKey, TokenId};
use reprise_protocol::events::KvEvent;
use reprise_protocol::load::WorkerLoad;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Router-side state of one worker. Fields are separate atomics: a decision may see
/// a load report half applied, which only shifts one score by one report's worth.
#[derive(Debug)]
struct Slot {
    running: AtomicUsize,
    waiting: AtomicUsize,
    blocks_in_use: AtomicUsize,
    total_blocks: AtomicUsize,
    prefill_tokens: AtomicUsize,
    /// Requests routed here that no load report has counted yet.
    inflight: AtomicUsize,
    /// The worker's intake counter in its last versioned load report.
    reported_intake: AtomicU64,
    available: AtomicBool,
}

impl Slot {
    fn new(total_blocks: usize) -> Self {
        Self {
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            blocks_in_use: AtomicUsize::new(0),
            total_blocks: AtomicUsize::new(total_blocks),
            prefill_tokens: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            reported_intake: AtomicU64::new(0),
            available: AtomicBool::new(true),
        }
    }

    fn uncount(&self, n: usize) {
        let _ = self
            .inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    fn view(&self) -> WorkerView {
        WorkerView {
            available: self.available.load(Ordering::Relaxed),
            load: WorkerLoad {
                running: self.running.load(Ordering::Relaxed),
                waiting: self.waiting.load(Ordering::Relaxed),
                blocks_in_use: self.blocks_in_use.load(Ordering::Relaxed),
                total_blocks: self.total_blocks.load(Ordering::Relaxed),
                prefill_tokens: self.prefill_tokens.load(Ordering::Relaxed),
            },
            inflight: self.inflight.load(Ordering::Relaxed),
        }
    }

    fn store(&self, l: WorkerLoad) {
        self.running.store(l.running, Ordering::Relaxed);
        self.waiting.store(l.waiting, Ordering::Relaxed);
        self.blocks_in_use.store(l.blocks_in_use, Ordering::Relaxed);
        self.total_blocks.store(l.total_blocks, Ordering::Relaxed);
        self.prefill_tokens
            .store(l.prefill_tokens, Ordering::Relaxed);
    }
}

thread_local! {
    /// Per-thread key buffer, so hashing a prompt does not allocate once warm.
    static KEYS: RefCell<Vec<BlockKey>> = const { RefCell::new(Vec::new()) };
}

/// Cache-aware dispatcher: hashes each prompt once, scores every worker with the
/// configured policy, and keeps the indexes and load reports that feed it. Every
/// method takes `&self`; share it as `Arc<Router>` between tasks.
pub struct Router {
    config: RouterConfig,
    hasher: BlockHasher,
    index: Arc<PreciseIndex>,
    policy: Box<dyn RoutingPolicy>,
    slots: Box<[Slot]>,
    decisions: AtomicU64,
    /// Serialises `reset_worker` with itself (index, policy and slot together).
    reset_lock: Mutex<()>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("policy", &self.config.policy)
            .field("workers", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router for `num_workers` workers (1..=128) with KV pools of
    /// `blocks_per_worker` blocks each (the approximate index's LRU capacity and the
    /// initial `total_blocks` until the first load report).
    pub fn new(
        config: RouterConfig,
        num_workers: usize,
        blocks_per_worker: usize,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if num_workers == 0 || num_workers > MAX_WORKERS {
            return Err(ConfigError::BadWorkerCount(num_workers));
        }
        if blocks_per_worker == 0 {
            return Err(ConfigError::ZeroBlocksPerWorker);
        }
        let hasher = config.hasher()?;
        let index = Arc::new(PreciseIndex::new(num_workers, config.block_size));
        let policy =
            policy::factory::build(&config, index.clone(), num_workers, blocks_per_worker)?;
        Ok(Self {
            config,
            hasher,
            index,
            policy,
            slots: (0..num_workers)
                .map(|_| Slot::new(blocks_per_worker))
                .collect(),
            decisions: AtomicU64::new(0),
            reset_lock: Mutex::new(()),
        })
    }

    /// Route a prompt: hash `tokens` (with `extra`, e.g. a cache salt or adapter name,
    /// exactly as the engine does) into block keys and pick a worker. `now` is the
    /// time since an epoch the caller chooses (virtual in the simulator).
    pub fn route(
        &self,
        tokens: &[TokenId],
        extra: &[u8],
        now: Duration,
    ) -> Result<Decision, RouteError> {
        self.route_excluding(tokens, extra, now, 0)
    }

    /// [`Router::route`] with the workers in `exclude` treated as unavailable (a
    /// retry after a worker failed this request picks the next best).
    pub fn route_excluding(
        &self,
        tokens: &[TokenId],
        extra: &[u8],
        now: Duration,
        exclude: WorkerMask,
    ) -> Result<Decision, RouteError> {
        KEYS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut keys) => {
                self.hasher.prompt_keys_into(tokens, extra, &mut keys);
                self.route_keys_excluding(&keys, now, exclude)
            }
            // Unreachable unless a policy re-enters the router; stay correct anyway.
            Err(_) => {
                let mut keys = Vec::new();
                self.hasher.prompt_keys_into(tokens, extra, &mut keys);
                self.route_keys_excluding(&keys, now, exclude)
            }
        })
    }

    /// Route a prompt whose block keys the caller already computed with
    /// [`Router::hasher`] (so the engine can reuse the same keys).
    pub fn route_keys(&self, keys: &[BlockKey], now: Duration) -> Result<Decision, RouteError> {
        self.route_keys_excluding(keys, now, 0)
    }

    fn route_keys_excluding(
        &self,
        keys: &[BlockKey],
        now: Duration,
        exclude: WorkerMask,
    ) -> Result<Decision, RouteError> {
        let mut views: Vec<WorkerView> = self.slots.iter().map(Slot::view).collect();
        if exclude != 0 {
            for (w, v) in views.iter_mut().enumerate() {
                if exclude & bit(w) != 0 {
                    v.available = false;
                }
            }
        }
        let seq = self.decisions.fetch_add(1, Ordering::Relaxed);
        let d = self.policy.route(&RouteRequest {
            keys,
            workers: &views,
            now,
            seq,
        })?;
        if let Some(slot) = self.slots.get(d.worker) {
            slot.inflight.fetch_add(1, Ordering::Relaxed);
        }
        Ok(d)
    }

    fn slot(&self, worker: usize) -> Result<&Slot, RouteError> {
        self.slots.get(worker).ok_or(RouteError::UnknownWorker {
            worker,
            num_workers: self.slots.len(),
        })
    }

    /// Feed `worker`'s KV events (in the order received) to the precise index. Always
    /// applied, whatever the policy, so baselines can report what was cached.
    pub fn apply_events(
        &self,
        worker: usize,
        events: &[KvEvent],
    ) -> Result<ApplyOutcome, RouteError> {
        self.index.apply(worker, events)
    }

    /// Store `worker`'s latest load report, taken to include every request routed
    /// before it: the routed-not-yet-reported count restarts at 0. For a load the
    /// caller already adds its own in-flight requests to (a remote worker's scrape);
    /// a worker that counts what it took in reports with [`Router::report_load`].
    pub fn update_load(&self, worker: usize, load: WorkerLoad) -> Result<(), RouteError> {
        let slot = self.slot(worker)?;
        slot.store(load);
        slot.inflight.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Store a load report that counts the first `intake` requests `worker` took in
    /// (its own counter, since it started): only the requests taken in since its last
    /// report stop counting as routed-not-yet-reported, so a stale report (one made
    /// before the requests just routed arrived) does not make the worker look idle.
    pub fn report_load(
        &self,
        worker: usize,
        load: WorkerLoad,
        intake: u64,
    ) -> Result<(), RouteError> {
        let slot = self.slot(worker)?;
        slot.store(load);
        let before = slot.reported_intake.swap(intake, Ordering::Relaxed);
        let taken = intake.saturating_sub(before);
        slot.uncount(usize::try_from(taken).unwrap_or(usize::MAX));
        Ok(())
    }

    /// A request routed to `worker` ended (finished, failed or cancelled): its
    /// speculative credits expire shortly (they lasted while it was live).
    pub fn request_done(
        &self,
        worker: usize,
        tokens: &[TokenId],
        extra: &[u8],
        now: Duration,
    ) -> Result<(), RouteError> {
        self.slot(worker)?;
        let mut keys = Vec::new();
        self.hasher.prompt_keys_into(tokens, extra, &mut keys);
        self.policy.request_done(worker, &keys, now);
        Ok(())
    }

    /// A request routed to `worker` never reached it (refused, or the worker died):
    /// stop counting it as in flight there.
    pub fn unroute(&self, worker: usize) -> Result<(), RouteError> {
        self.slot(worker)?.uncount(1);
        Ok(())
    }

    /// Whether `worker` publishes KV events (default yes); cache-aware policies guess
    /// the caches of those that do not from their own decisions.
    pub fn set_has_events(&self, worker: usize, has_events: bool) -> Result<(), RouteError> {
        self.slot(worker)?;
        self.policy.set_has_events(worker, has_events);
        Ok(())
    }

    /// `worker`'s KV pool in blocks of the router's size (its load reports carry it
    /// too); bounds the caches guessed for it.
    pub fn set_pool_blocks(&self, worker: usize, blocks: usize) -> Result<(), RouteError> {
        self.slot(worker)?;
        self.policy.set_pool_blocks(worker, blocks);
        Ok(())
    }

    /// Include or exclude `worker` from routing (a failed worker is excluded).
    pub fn set_available(&self, worker: usize, available: bool) -> Result<(), RouteError> {
        self.slot(worker)?
            .available
            .store(available, Ordering::Relaxed);
        Ok(())
    }

    /// `worker` restarted (or was replaced): forget its cached blocks, speculative and
    /// approximate entries and load, and expect its event stream to restart at seq 0.
    /// Availability is left as is.
    pub fn reset_worker(&self, worker: usize) -> Result<(), RouteError> {
        let slot = self.slot(worker)?;
        let _g = self.reset_lock.lock();
        self.index.reset_worker(worker)?;
        self.policy.forget_worker(worker);
        let total = slot.total_blocks.load(Ordering::Relaxed);
        slot.store(WorkerLoad {
            total_blocks: total,
            ..Default::default()
        });
        slot.inflight.store(0, Ordering::Relaxed);
        slot.reported_intake.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Snapshot of `worker`'s availability, load and routed-not-yet-reported count.
    pub fn worker_view(&self, worker: usize) -> Result<WorkerView, RouteError> {
        Ok(self.slot(worker)?.view())
    }

    /// Counters of `worker`'s event stream (resyncs, blocks indexed, …).
    pub fn stream_stats(&self, worker: usize) -> Result<StreamStats, RouteError> {
        self.index.stats(worker)
    }

    /// The block hasher (block size and algorithm from the config).
    pub fn hasher(&self) -> BlockHasher {
        self.hasher
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The active policy.
    pub fn policy(&self) -> PolicyKind {
        self.policy.kind()
    }

    /// Number of workers.
    pub fn num_workers(&self) -> usize {
        self.slots.len()
    }

    /// The precise index (shared with the precise policy).
    pub fn index(&self) -> &PreciseIndex {
        &self.index
    }

    /// Decisions made so far.
    pub fn decisions(&self) -> u64 {
        self.decisions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_protocol::events::{EventSequencer, KvEventData, MemoryTier};
    use reprise_protocol::ROOT_PARENT;

    fn router(policy: PolicyKind, n: usize) -> Router {
        let config = RouterConfig {
            policy,
            block_size: 4,
            ..Default::default()
        };
        Router::new(config, n, 1000).unwrap()
    }

    /// Events the engine would emit for caching all of `tokens`' full blocks.
    fn cache(r: &Router, seqr: &mut EventSequencer, tokens: &[u32]) -> Vec<KvEvent> {
        let h = r.hasher();
        let keys = h.prompt_keys(tokens, b"");
        for (i, k) in keys.iter().enumerate() {
            seqr.push(KvEventData::BlockStored {
                key: *k,
                parent: (i > 0).then(|| keys[i - 1]),
                tokens: tokens[i * 4..(i + 1) * 4].to_vec(),
                tier: MemoryTier::Device,
                extra: Vec::new(),
            });
        }
        let _ = ROOT_PARENT;
        seqr.drain()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn precise_end_to_end_with_events() {
        let r = router(PolicyKind::Precise, 3);
        let prompt: Vec<u32> = (0..18).collect(); // 4 full blocks + 2 tokens
        let mut s1 = EventSequencer::default();
        let evs = cache(&r, &mut s1, &prompt[..12]);
        assert_eq!(r.apply_events(1, &evs).unwrap().applied, 3);
        let d = r.route(&prompt, b"", ms(0)).unwrap();
        assert_eq!(d.worker, 1);
        assert_eq!(d.prompt_blocks, 4);
        assert_eq!(d.matched_blocks, vec![0, 3, 0]);
        assert_eq!(r.worker_view(1).unwrap().inflight, 1);
        r.update_load(
            1,
            WorkerLoad {
                running: 1,
                total_blocks: 1000,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.worker_view(1).unwrap().inflight, 0);
        // A different salt is a different key space: no match.
        let d = r.route(&prompt, b"tenant", ms(1)).unwrap();
        assert_eq!(d.matched_blocks, vec![0, 0, 0]);
    }

    #[test]
    fn versioned_reports_uncount_only_what_the_worker_took_in() {
        let r = router(PolicyKind::Load, 2);
        let prompt: Vec<u32> = (0..8).collect();
        let idle = WorkerLoad {
            total_blocks: 1000,
            ..Default::default()
        };
        // Three requests routed to worker 0 while it is busy with a long step.
        for _ in 0..3 {
            r.route_excluding(&prompt, b"", ms(0), 0b10).unwrap();
        }
        assert_eq!(r.worker_view(0).unwrap().inflight, 3);
        // A report made before it took any of them in changes nothing...
        r.report_load(0, idle, 0).unwrap();
        assert_eq!(r.worker_view(0).unwrap().inflight, 3);
        // ...one made after it took two in leaves the third counted...
        r.report_load(0, WorkerLoad { waiting: 2, ..idle }, 2)
            .unwrap();
        assert_eq!(r.worker_view(0).unwrap().inflight, 1);
        // ...and repeating a report does not count anything twice.
        r.report_load(0, WorkerLoad { waiting: 2, ..idle }, 2)
            .unwrap();
        assert_eq!(r.worker_view(0).unwrap().inflight, 1);
        // The third never arrived (the worker refused it).
        r.unroute(0).unwrap();
        assert_eq!(r.worker_view(0).unwrap().inflight, 0);
        r.unroute(0).unwrap();
        assert_eq!(r.worker_view(0).unwrap().inflight, 0, "never below zero");
        // With the in-flight ones counted, the load policy spreads a burst.
        let mut to = [0usize; 2];
        for _ in 0..8 {
            to[r.route(&prompt, b"", ms(1)).unwrap().worker] += 1;
        }
        assert!(to[0] >= 3 && to[1] >= 3, "{to:?}");
    }

    #[test]
    fn failed_workers_are_excluded_and_none_is_an_error() {
        let r = router(PolicyKind::Precise, 2);
        let prompt: Vec<u32> = (0..8).collect();
        let mut s = EventSequencer::default();
        r.apply_events(0, &cache(&r, &mut s, &prompt)).unwrap();
        r.set_available(0, false).unwrap();
        assert_eq!(r.route(&prompt, b"", ms(0)).unwrap().worker, 1);
        r.set_available(1, false).unwrap();
        assert_eq!(
            r.route(&prompt, b"", ms(0)),
            Err(RouteError::NoWorkerAvailable)
        );
        assert!(matches!(
            r.set_available(2, true),
            Err(RouteError::UnknownWorker { .. })
        ));
        assert!(r.update_load(5, WorkerLoad::default()).is_err());
    }

    #[test]
    fn excluded_workers_are_passed_over() {
        let r = router(PolicyKind::Precise, 3);
        let prompt: Vec<u32> = (0..8).collect();
        let mut s = EventSequencer::default();
        r.apply_events(2, &cache(&r, &mut s, &prompt)).unwrap();
        assert_eq!(r.route(&prompt, b"", ms(0)).unwrap().worker, 2);
        let d = r.route_excluding(&prompt, b"", ms(1), 1 << 2).unwrap();
        assert_ne!(d.worker, 2);
        assert_eq!(
            r.route_excluding(&prompt, b"", ms(2), 0b111),
            Err(RouteError::NoWorkerAvailable)
        );
    }

    #[test]
    fn reset_worker_forgets_everything() {
        let r = router(PolicyKind::Precise, 2);
        let prompt: Vec<u32> = (0..8).collect();
        let mut s = EventSequencer::default();
        r.apply_events(0, &cache(&r, &mut s, &prompt)).unwrap();
        assert_eq!(r.stream_stats(0).unwrap().blocks, 2);
        r.reset_worker(0).unwrap();
        assert_eq!(r.stream_stats(0).unwrap().blocks, 0);
        assert_eq!(r.stream_stats(0).unwrap().expected_seq, 0);
        let d = r.route(&prompt, b"", ms(0)).unwrap();
        assert_eq!(d.matched_blocks, vec![0, 0]);
    }

    #[test]
    fn burst_with_a_new_prefix_lands_on_one_worker() {
        let r = router(PolicyKind::Precise, 4);
        let shared: Vec<u32> = (100..164).collect();
        let mut chosen = std::collections::HashSet::new();
        for i in 0..6u32 {
            let mut p = shared.clone();
            p.extend([i, i, i, i]);
            chosen.insert(r.route(&p, b"", ms(u64::from(i))).unwrap().worker);
        }
        assert_eq!(chosen.len(), 1, "{chosen:?}");
    }

    #[test]
    fn every_policy_routes_concurrently() {
        for kind in PolicyKind::ALL {
            let r = Arc::new(router(kind, 4));
            std::thread::scope(|s| {
                for t in 0..3u32 {
                    let r = r.clone();
                    s.spawn(move || {
                        for i in 0..50u32 {
                            let p: Vec<u32> = (0..32).map(|x| x + 1000 * i + 100_000 * t).collect();
                            let d = r.route(&p, b"", ms(u64::from(i))).unwrap();
                            assert!(d.worker < 4);
                        }
                    });
                }
                let r = r.clone();
                s.spawn(move || {
                    let mut sq = EventSequencer::default();
                    for i in 0..50u32 {
                        let p: Vec<u32> = (0..32).map(|x| x + 7 * i).collect();
                        let evs = cache(&r, &mut sq, &p);
                        r.apply_events((i % 4) as usize, &evs).unwrap();
                    }
                });
            });
            assert_eq!(r.decisions(), 150);
        }
    }

    #[test]
    fn bad_construction_is_an_error() {
        assert_eq!(
            Router::new(RouterConfig::default(), 0, 10).unwrap_err(),
            ConfigError::BadWorkerCount(0)
        );
        assert_eq!(
            Router::new(RouterConfig::default(), 129, 10).unwrap_err(),
            ConfigError::BadWorkerCount(129)
        );
        assert_eq!(
            Router::new(RouterConfig::default(), 2, 0).unwrap_err(),
            ConfigError::ZeroBlocksPerWorker
        );
    }
}
