//! The precise index: block key → the workers (and memory tiers) that hold it, built
//! from the workers' KV events.
//!
//! # Sequence numbers: the gap / reset policy
//! Each worker's events carry `seq` 0, 1, 2, … The index keeps, per worker, the
//! sequence number it expects next (0 at start). For every event:
//!
//! - `seq == expected`: the event is applied.
//! - anything else — a gap (`seq > expected`, events were lost), a duplicate or late
//!   event (`0 < seq < expected`), or a reset (`seq == 0` after a restart) — is a
//!   **resync**: every entry of that worker is dropped first, then the event is
//!   applied and the stream is accepted from `seq + 1` on.
//!
//! So after any delivery order the worker's entries are exactly the effect of the
//! last gap-free run of its events (the model the property tests check), which is
//! always a *subset* of what the worker really holds after the last applied event:
//! a lost or reordered event can make the router miss a block, never believe in a
//! block that is gone. The entries are rebuilt by later `BlockStored` events; a
//! restarting engine also sends `AllCleared`. [`PreciseIndex::reset_worker`] drops a
//! worker's entries and expects its stream to restart at 0 (restart or removal).
//!
//! One case sequence numbers alone cannot see: a worker restarts and *all* of its new
//! stream's first `k` events are lost, where `k` is exactly the sequence number the
//! router expected from the old stream. Whoever supervises workers should therefore
//! call `reset_worker` when it knows a worker restarted (the in-process server does);
//! the property tests deliver each restart's first event.
//!
//! # Concurrency
//! Keys are spread over [`SHARDS`] `parking_lot::RwLock`ed hash maps. A batch of
//! events takes each touched shard's write lock once (one at a time); a lookup ([`PreciseIndex::reader`]) takes every
//! shard's read lock once, in shard order, for the whole walk (16 uncontended atomic
//! operations instead of one per block). Because readers take locks in a fixed order
//! and writers hold at most one lock, there is no lock-order cycle. Dropping a worker
//! (resync) scans the shards one at a time, so routing stalls for at most one
//! shard's scan. Events of one worker are serialised by that worker's stream mutex.

use crate::error::RouteError;
use crate::index::{bit, longest_runs, WorkerMask, MAX_WORKERS};
use crate::keymap::{fold, KeyMap};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use reprise_protocol::block_key::BlockKey;
use reprise_protocol::events::{KvEvent, KvEventData, MemoryTier};

/// Number of lock shards; a power of two.
pub const SHARDS: usize = 16;
// `apply` tracks touched shards in a u32 and `shard_of` masks with SHARDS - 1.
const _: () = assert!(SHARDS.is_power_of_two() && SHARDS <= 32);

/// Which workers hold a key, per tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    device: WorkerMask,
    offload: WorkerMask,
}

impl Entry {
    #[inline]
    fn any(&self) -> WorkerMask {
        self.device | self.offload
    }

    fn tier_mut(&mut self, tier: MemoryTier) -> &mut WorkerMask {
        match tier {
            MemoryTier::Device => &mut self.device,
            MemoryTier::CpuOffload => &mut self.offload,
        }
    }
}

/// Per-worker event stream state.
#[derive(Debug, Default)]
struct Stream {
    expected: u64,
    blocks: usize,
    resyncs: u64,
    wrong_block_size: u64,
}

/// What one [`PreciseIndex::apply`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Events applied (all of them: an out-of-sequence event is applied after a resync).
    pub applied: usize,
    /// Out-of-sequence events that dropped the worker's entries first.
    pub resyncs: usize,
    /// `BlockStored` events whose token count differs from the router's block size: a
    /// router/engine block-size mismatch, which would otherwise be a silent 0% hit rate.
    pub wrong_block_size: usize,
}

/// Per-worker counters for metrics and debugging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Sequence number expected next.
    pub expected_seq: u64,
    /// Distinct keys the worker holds (any tier).
    pub blocks: usize,
    /// Resyncs since creation.
    pub resyncs: u64,
    /// `BlockStored` events with the wrong token count since creation.
    pub wrong_block_size: u64,
}

/// Block key → workers, fed by KV events. See the module docs for the sequence policy.
pub struct PreciseIndex {
    shards: [Shard; SHARDS],
    streams: Box<[Mutex<Stream>]>,
    block_size: usize,
}

/// The key an event touches (AllCleared touches none; any shard will do).
#[inline]
fn event_key(ev: &KvEvent) -> BlockKey {
    match &ev.data {
        KvEventData::BlockStored { key, .. } | KvEventData::BlockRemoved { key, .. } => *key,
        KvEventData::AllCleared => BlockKey(0),
    }
}

/// One lock shard on its own cache lines, so readers taking one shard's lock do not
/// invalidate the line holding a neighbour's lock word and map header.
#[repr(align(128))]
struct Shard(RwLock<KeyMap<Entry>>);

impl std::ops::Deref for Shard {
    type Target = RwLock<KeyMap<Entry>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[inline]
fn shard_of(key: BlockKey) -> usize {
    // Bits 40..44 of the raw key: independent of the low bits that pick the bucket
    // inside a shard's map, so shards do not thin out each other's buckets.
    (fold(key.0) >> 40) as usize & (SHARDS - 1)
}

impl PreciseIndex {
    /// An empty index for `num_workers` workers (at most [`MAX_WORKERS`]) whose engines
    /// use blocks of `block_size` tokens.
    pub fn new(num_workers: usize, block_size: usize) -> Self {
        let n = num_workers.min(MAX_WORKERS);
        Self {
            shards: std::array::from_fn(|_| Shard(RwLock::new(KeyMap::default()))),
            streams: (0..n).map(|_| Mutex::new(Stream::default())).collect(),
            block_size,
        }
    }

    /// Number of workers indexed.
    pub fn num_workers(&self) -> usize {
        self.streams.len()
    }

    fn stream(&self, worker: usize) -> Result<&Mutex<Stream>, RouteError> {
        self.streams.get(worker).ok_or(RouteError::UnknownWorker {
            worker,
            num_workers: self.streams.len(),
        })
    }

    /// Apply `events` of `worker` in the order given.
    pub fn apply(&self, worker: usize, events: &[KvEvent]) -> Result<ApplyOutcome, RouteError> {
        let mut stream = self.stream(worker)?.lock();
        let b = bit(worker);
        let mut out = ApplyOutcome::default();
        let mut i = 0;
        while let Some(first) = events.get(i) {
            if first.seq != stream.expected {
                self.drop_entries(b, &mut stream);
                stream.resyncs += 1;
                out.resyncs += 1;
            }
            if matches!(first.data, KvEventData::AllCleared) {
                self.drop_entries(b, &mut stream);
                stream.expected = first.seq.wrapping_add(1);
                out.applied += 1;
                i += 1;
                continue;
            }
            // The longest in-sequence run without a clear: its events only touch keys,
            // so they can be applied shard by shard (one write lock per shard touched,
            // not per event) while keeping each key's events in order.
            let mut j = i + 1;
            let mut touched = 1u32 << shard_of(event_key(first));
            while let Some(ev) = events.get(j) {
                if ev.seq != events[j - 1].seq.wrapping_add(1)
                    || matches!(ev.data, KvEventData::AllCleared)
                {
                    break;
                }
                touched |= 1 << shard_of(event_key(ev));
                j += 1;
            }
            let run = &events[i..j];
            while touched != 0 {
                let s = touched.trailing_zeros() as usize;
                touched &= touched - 1;
                let mut shard = self.shards[s].write();
                for ev in run.iter().filter(|ev| shard_of(event_key(ev)) == s) {
                    self.apply_one(&mut shard, b, ev, &mut stream, &mut out);
                }
            }
            stream.expected = run[run.len() - 1].seq.wrapping_add(1);
            out.applied += run.len();
            i = j;
        }
        Ok(out)
    }

    /// Apply a `BlockStored` / `BlockRemoved` to its (locked) shard.
    fn apply_one(
        &self,
        shard: &mut KeyMap<Entry>,
        b: WorkerMask,
        ev: &KvEvent,
        stream: &mut Stream,
        out: &mut ApplyOutcome,
    ) {
        match &ev.data {
            KvEventData::BlockStored {
                key, tokens, tier, ..
            } => {
                if tokens.len() != self.block_size {
                    stream.wrong_block_size += 1;
                    out.wrong_block_size += 1;
                }
                let e = shard.entry(*key).or_default();
                let had = e.any() & b != 0;
                *e.tier_mut(*tier) |= b;
                if !had {
                    stream.blocks += 1;
                }
            }
            KvEventData::BlockRemoved { key, tier } => {
                if let Some(e) = shard.get_mut(key) {
                    let had = e.any() & b != 0;
                    *e.tier_mut(*tier) &= !b;
                    let any = e.any();
                    if had && any & b == 0 {
                        stream.blocks = stream.blocks.saturating_sub(1);
                    }
                    if any == 0 {
                        shard.remove(key);
                    }
                }
            }
            KvEventData::AllCleared => {}
        }
    }

    /// Drop every entry of `worker` and expect its stream to restart at seq 0 (the
    /// worker restarted, failed or was removed).
    pub fn reset_worker(&self, worker: usize) -> Result<(), RouteError> {
        let mut stream = self.stream(worker)?.lock();
        self.drop_entries(bit(worker), &mut stream);
        stream.expected = 0;
        Ok(())
    }

    fn drop_entries(&self, b: WorkerMask, stream: &mut Stream) {
        if stream.blocks == 0 {
            return;
        }
        for shard in &self.shards {
            shard.write().retain(|_, e| {
                e.device &= !b;
                e.offload &= !b;
                e.any() != 0
            });
        }
        stream.blocks = 0;
    }

    /// Counters of `worker`'s stream.
    pub fn stats(&self, worker: usize) -> Result<StreamStats, RouteError> {
        let s = self.stream(worker)?.lock();
        Ok(StreamStats {
            expected_seq: s.expected,
            blocks: s.blocks,
            resyncs: s.resyncs,
            wrong_block_size: s.wrong_block_size,
        })
    }

    /// Distinct keys in the index (any worker, any tier).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Whether no key is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every `(key, tier)` `worker` holds, sorted (a full scan: tests and debugging).
    pub fn blocks_of(&self, worker: usize) -> Vec<(BlockKey, MemoryTier)> {
        let b = bit(worker);
        let mut v = Vec::new();
        for shard in &self.shards {
            for (k, e) in shard.read().iter() {
                if e.device & b != 0 {
                    v.push((*k, MemoryTier::Device));
                }
                if e.offload & b != 0 {
                    v.push((*k, MemoryTier::CpuOffload));
                }
            }
        }
        v.sort_by_key(|(k, t)| (*k, matches!(t, MemoryTier::CpuOffload)));
        v
    }

    /// A read view holding every shard's read lock; drop it promptly.
    pub fn reader(&self) -> PreciseReader<'_> {
        PreciseReader {
            guards: std::array::from_fn(|i| self.shards[i].read()),
        }
    }

    /// Longest consecutive cached run from block 0 per worker (see
    /// [`longest_runs`]); blocks in any tier count.
    pub fn match_prefix(&self, keys: &[BlockKey], candidates: WorkerMask, out: &mut [usize]) {
        let r = self.reader();
        longest_runs(keys, candidates, out, |k| r.mask(k));
    }
}

/// Read access to a [`PreciseIndex`] for one routing decision.
pub struct PreciseReader<'a> {
    guards: [RwLockReadGuard<'a, KeyMap<Entry>>; SHARDS],
}

impl PreciseReader<'_> {
    /// Workers holding `key` in any tier.
    #[inline]
    pub fn mask(&self, key: BlockKey) -> WorkerMask {
        self.guards[shard_of(key)].get(&key).map_or(0, Entry::any)
    }

    /// Workers holding `key` in the given tier.
    pub fn tier_mask(&self, key: BlockKey, tier: MemoryTier) -> WorkerMask {
        self.guards[shard_of(key)]
            .get(&key)
            .map_or(0, |e| match tier {
                MemoryTier::Device => e.device,
                MemoryTier::CpuOffload => e.offload,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};

    const BS: usize = 2;

    fn key(k: u8) -> BlockKey {
        // Spread small ids over all shards.
        BlockKey(u128::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834) | 1)
    }

    fn stored(seq: u64, k: u8, tier: MemoryTier) -> KvEvent {
        KvEvent {
            seq,
            data: KvEventData::BlockStored {
                key: key(k),
                parent: None,
                tokens: vec![0; BS],
                tier,
                extra: Vec::new(),
            },
        }
    }

    fn removed(seq: u64, k: u8, tier: MemoryTier) -> KvEvent {
        KvEvent {
            seq,
            data: KvEventData::BlockRemoved { key: key(k), tier },
        }
    }

    fn cleared(seq: u64) -> KvEvent {
        KvEvent {
            seq,
            data: KvEventData::AllCleared,
        }
    }

    fn keys_of(idx: &PreciseIndex, w: usize) -> Vec<BlockKey> {
        let mut v: Vec<_> = idx.blocks_of(w).into_iter().map(|(k, _)| k).collect();
        v.dedup();
        v
    }

    #[test]
    fn stored_removed_cleared_in_order() {
        let idx = PreciseIndex::new(2, BS);
        let d = MemoryTier::Device;
        let out = idx
            .apply(0, &[stored(0, 1, d), stored(1, 2, d), removed(2, 1, d)])
            .unwrap();
        assert_eq!(
            out,
            ApplyOutcome {
                applied: 3,
                resyncs: 0,
                wrong_block_size: 0
            }
        );
        idx.apply(1, &[stored(0, 2, d)]).unwrap();
        assert_eq!(keys_of(&idx, 0), vec![key(2)]);
        assert_eq!(idx.len(), 1);
        idx.apply(0, &[cleared(3)]).unwrap();
        assert!(keys_of(&idx, 0).is_empty());
        assert_eq!(keys_of(&idx, 1), vec![key(2)]);
        assert_eq!(idx.stats(0).unwrap().blocks, 0);
        assert_eq!(idx.stats(1).unwrap().blocks, 1);
    }

    #[test]
    fn gap_drops_the_worker_and_accepts_from_new_seq() {
        let idx = PreciseIndex::new(2, BS);
        let d = MemoryTier::Device;
        idx.apply(0, &[stored(0, 1, d), stored(1, 2, d)]).unwrap();
        idx.apply(1, &[stored(0, 1, d)]).unwrap();
        // seq 2 lost: 3 arrives.
        let out = idx.apply(0, &[stored(3, 3, d), stored(4, 4, d)]).unwrap();
        assert_eq!(out.resyncs, 1);
        assert_eq!(keys_of(&idx, 0).len(), 2);
        assert!(idx.reader().mask(key(1)) == 0b10, "worker 1 untouched");
        // Late seq 2 arrives: another resync, nothing stale survives.
        let out = idx.apply(0, &[removed(2, 9, d)]).unwrap();
        assert_eq!(out.resyncs, 1);
        assert!(keys_of(&idx, 0).is_empty());
        assert_eq!(idx.stats(0).unwrap().expected_seq, 3);
    }

    #[test]
    fn restart_at_zero_and_reset_worker() {
        let idx = PreciseIndex::new(1, BS);
        let d = MemoryTier::Device;
        idx.apply(0, &[stored(0, 1, d), stored(1, 2, d)]).unwrap();
        // The worker restarted: its new stream begins at 0.
        let out = idx.apply(0, &[cleared(0), stored(1, 5, d)]).unwrap();
        assert_eq!(out.resyncs, 1);
        assert_eq!(keys_of(&idx, 0), vec![key(5)]);
        idx.reset_worker(0).unwrap();
        assert!(idx.is_empty());
        assert_eq!(idx.stats(0).unwrap().expected_seq, 0);
        assert!(matches!(
            idx.apply(3, &[]),
            Err(RouteError::UnknownWorker {
                worker: 3,
                num_workers: 1
            })
        ));
    }

    #[test]
    fn tiers_are_tracked_separately() {
        let idx = PreciseIndex::new(1, BS);
        let (d, c) = (MemoryTier::Device, MemoryTier::CpuOffload);
        idx.apply(0, &[stored(0, 1, d), stored(1, 1, c), removed(2, 1, d)])
            .unwrap();
        let r = idx.reader();
        assert_eq!(r.tier_mask(key(1), d), 0);
        assert_eq!(r.tier_mask(key(1), c), 1);
        assert_eq!(r.mask(key(1)), 1);
        drop(r);
        assert_eq!(idx.stats(0).unwrap().blocks, 1);
    }

    #[test]
    fn wrong_block_size_is_reported() {
        let idx = PreciseIndex::new(1, 16);
        let out = idx.apply(0, &[stored(0, 1, MemoryTier::Device)]).unwrap();
        assert_eq!(out.wrong_block_size, 1);
    }

    #[test]
    fn concurrent_events_and_lookups() {
        let idx = PreciseIndex::new(4, BS);
        std::thread::scope(|s| {
            for w in 0..4usize {
                let idx = &idx;
                s.spawn(move || {
                    let evs: Vec<_> = (0..200u64)
                        .map(|i| stored(i, (i % 50) as u8, MemoryTier::Device))
                        .collect();
                    idx.apply(w, &evs).unwrap();
                });
            }
            s.spawn(|| {
                let ks: Vec<_> = (0..50).map(key).collect();
                let mut out = [0usize; 4];
                for _ in 0..200 {
                    idx.match_prefix(&ks, 0b1111, &mut out);
                    assert!(out.iter().all(|&r| r <= 50));
                }
            });
        });
        let ks: Vec<_> = (0..50).map(key).collect();
        let mut out = [0usize; 4];
        idx.match_prefix(&ks, 0b1111, &mut out);
        assert_eq!(out, [50; 4]);
    }

    // ---- property tests against a brute-force model ----

    /// One worker's state in the model: the gap policy written the obvious way.
    #[derive(Default, Clone)]
    struct ModelWorker {
        expected: u64,
        held: BTreeSet<(BlockKey, bool)>,
    }

    impl ModelWorker {
        fn apply(&mut self, ev: &KvEvent) {
            if ev.seq != self.expected {
                self.held.clear();
            }
            apply_truth(&mut self.held, &ev.data);
            self.expected = ev.seq + 1;
        }
    }

    /// Effect of one event on a set of `(key, is_offload)`.
    fn apply_truth(held: &mut BTreeSet<(BlockKey, bool)>, d: &KvEventData) {
        match d {
            KvEventData::BlockStored { key, tier, .. } => {
                held.insert((*key, *tier == MemoryTier::CpuOffload));
            }
            KvEventData::BlockRemoved { key, tier } => {
                held.remove(&(*key, *tier == MemoryTier::CpuOffload));
            }
            KvEventData::AllCleared => held.clear(),
        }
    }

    fn as_set(v: Vec<(BlockKey, MemoryTier)>) -> BTreeSet<(BlockKey, bool)> {
        v.into_iter()
            .map(|(k, t)| (k, t == MemoryTier::CpuOffload))
            .collect()
    }

    fn data_strategy() -> impl Strategy<Value = KvEventData> {
        let tier = prop_oneof![Just(MemoryTier::Device), Just(MemoryTier::CpuOffload)];
        prop_oneof![
            6 => (0u8..12, tier.clone()).prop_map(|(k, tier)| KvEventData::BlockStored {
                key: key(k),
                parent: None,
                tokens: vec![0; BS],
                tier,
                extra: Vec::new(),
            }),
            4 => (0u8..12, tier).prop_map(|(k, tier)| KvEventData::BlockRemoved { key: key(k), tier }),
            1 => Just(KvEventData::AllCleared),
        ]
    }

    /// How the true stream of one worker is delivered.
    #[derive(Clone, Debug)]
    enum Delivery {
        Ok,
        Drop,
        Duplicate,
        SwapWithNext,
        /// The worker restarts: its sequence starts again at 0 from here.
        Restart,
    }

    fn delivery_strategy() -> impl Strategy<Value = Delivery> {
        prop_oneof![
            12 => Just(Delivery::Ok),
            1 => Just(Delivery::Drop),
            1 => Just(Delivery::Duplicate),
            1 => Just(Delivery::SwapWithNext),
            1 => Just(Delivery::Restart),
        ]
    }

    const W: usize = 3;

    /// `(key, is_offload)` pairs a worker holds.
    type Held = BTreeSet<(BlockKey, bool)>;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// After any delivery (lost, duplicated, reordered events, restarts) the index
        /// equals the model for every worker, and never holds a block the worker
        /// does not really hold after the last event applied.
        #[test]
        fn index_equals_model_and_is_never_stale(
            streams in proptest::collection::vec(
                proptest::collection::vec((data_strategy(), delivery_strategy()), 0..40), W),
            interleave in proptest::collection::vec((0usize..W, 1usize..4), 0..200),
        ) {
            // Build each worker's delivered event list plus the truth after each seq.
            let mut delivered: Vec<Vec<KvEvent>> = vec![Vec::new(); W];
            // truth[w][(epoch, seq)] = true state after that event.
            let mut truth: Vec<HashMap<(u64, u64), Held>> = vec![HashMap::new(); W];
            let mut epoch_of: Vec<Vec<u64>> = vec![Vec::new(); W];
            for (w, stream) in streams.iter().enumerate() {
                let mut state = BTreeSet::new();
                let mut seq = 0u64;
                let mut epoch = 0u64;
                let mut out: Vec<(KvEvent, u64)> = Vec::new();
                for (data, how) in stream {
                    if matches!(how, Delivery::Restart) {
                        epoch += 1;
                        seq = 0;
                        state.clear();
                    }
                    apply_truth(&mut state, data);
                    truth[w].insert((epoch, seq), state.clone());
                    let ev = KvEvent { seq, data: data.clone() };
                    seq += 1;
                    match how {
                        Delivery::Drop => {}
                        Delivery::Duplicate => { out.push((ev.clone(), epoch)); out.push((ev, epoch)); }
                        _ => out.push((ev, epoch)),
                    }
                    if matches!(how, Delivery::SwapWithNext) && out.len() >= 2 {
                        let n = out.len();
                        out.swap(n - 1, n - 2);
                    }
                }
                for (ev, ep) in out {
                    delivered[w].push(ev);
                    epoch_of[w].push(ep);
                }
            }

            let idx = PreciseIndex::new(W, BS);
            let mut model = vec![ModelWorker::default(); W];
            let mut pos = [0usize; W];
            let mut last: [Option<(u64, u64)>; W] = [None; W];
            let mut feed = |w: usize, n: usize, idx: &PreciseIndex, model: &mut Vec<ModelWorker>| {
                let end = (pos[w] + n).min(delivered[w].len());
                let batch = &delivered[w][pos[w]..end];
                idx.apply(w, batch).unwrap();
                for (i, ev) in batch.iter().enumerate() {
                    model[w].apply(ev);
                    last[w] = Some((epoch_of[w][pos[w] + i], ev.seq));
                }
                pos[w] = end;
            };
            for (w, n) in interleave {
                feed(w, n, &idx, &mut model);
            }
            for w in 0..W {
                feed(w, usize::MAX / 2, &idx, &mut model);
            }
            for w in 0..W {
                let got = as_set(idx.blocks_of(w));
                prop_assert_eq!(&got, &model[w].held, "worker {}", w);
                prop_assert_eq!(idx.stats(w).unwrap().blocks,
                    got.iter().map(|(k, _)| *k).collect::<BTreeSet<_>>().len());
                if let Some(at) = last[w] {
                    let t = &truth[w][&at];
                    prop_assert!(got.is_subset(t), "stale entries for worker {}", w);
                }
            }
        }
    }
}
