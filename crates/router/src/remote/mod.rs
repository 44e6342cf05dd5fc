//! A remote engine's KV-event stream in the router's own key space.
//!
//! **Keys (llm-d's dual-key design).** A remote engine (vLLM, or another reprise
//! process) names blocks by its own hashes, whose function, seed and block size the
//! router neither knows nor needs. [`RemoteKeys`] derives the router's own chained keys
//! from each `BlockStored`'s `token_ids` (with the cache salt and LoRA name, through
//! [`extra_bytes`]) and keeps *engine hash → router keys* for removals. An engine block
//! of `k × B` tokens becomes `k` router blocks of `B` tokens (the engine's block size
//! must be a multiple of the router's). A stored chain whose parent hash is unknown is
//! kept pending until its parent arrives (typically from a replay), not dropped.
//!
//! **Sequence numbers.** [`RemoteStream`] wraps the keys with the stream's batch
//! numbers: it applies each batch exactly once and in order, and tells its caller
//! (which owns the sockets) when to replay: on a gap, from the first missing number;
//! when `seq` goes backwards (the engine restarted) it clears the worker's entries and
//! asks for a replay from 0; when a replay cannot fill a gap, [`RemoteStream::resync`]
//! clears and accepts the stream from where it is. The router's index therefore never
//! holds a block the engine has dropped, only misses some until they are re-stored.

use crate::keymap::KeyMap;
use reprise_protocol::block_key::{extra_bytes, BlockHasher, BlockKey, ROOT_PARENT};
use reprise_protocol::events::{EventSequencer, KvEvent, KvEventData, MemoryTier};
use reprise_protocol::wire::{
    decode_batch, EngineHash, StoredBlocks, WireBatch, WireError, WireEvent,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Most engine blocks kept waiting for an unknown parent; past it the oldest waiting
/// chains are dropped (counted in [`RemoteStats::pending_dropped`]).
pub const MAX_PENDING_BLOCKS: usize = 1 << 16;

/// How many recently applied batches are remembered to tell a duplicate from a restart.
const RECENT: usize = 1024;

/// Counters of one remote stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Batches applied.
    pub batches: u64,
    /// Batches dropped as already applied.
    pub duplicates: u64,
    /// Gaps seen (batches missing before the one offered).
    pub gaps: u64,
    /// Restarts seen (`seq` went backwards).
    pub restarts: u64,
    /// Resyncs: the worker's entries dropped because missing batches could not be replayed.
    pub resyncs: u64,
    /// Engine blocks currently known.
    pub engine_blocks: usize,
    /// Engine blocks waiting for their parent.
    pub pending_blocks: usize,
    /// Waiting blocks dropped over [`MAX_PENDING_BLOCKS`].
    pub pending_dropped: u64,
    /// Stored events skipped because their block size is not a multiple of the router's,
    /// or their token count does not match their hashes.
    pub incompatible: u64,
    /// Events of a type this router does not know.
    pub unknown_events: u64,
}

/// One engine block: the router keys it covers, its chain's extra bytes and its tier.
struct EngineBlock {
    keys: Box<[BlockKey]>,
    extra: Arc<[u8]>,
    tier: MemoryTier,
}

/// Engine hashes → router keys for one remote worker (no sequence handling).
pub struct RemoteKeys {
    hasher: BlockHasher,
    blocks: HashMap<EngineHash, EngineBlock>,
    /// Engine blocks referencing each router key (two engine blocks may cover one key).
    refs: KeyMap<u32>,
    /// Stored chains waiting for their parent, by parent hash, oldest first.
    pending: HashMap<EngineHash, Vec<StoredBlocks>>,
    pending_order: VecDeque<EngineHash>,
    /// Hashes removed while their stored event was still waiting for its parent.
    removed_while_pending: HashSet<EngineHash>,
    seq: EventSequencer,
    stats: RemoteStats,
}

fn tier_of(medium: Option<&str>) -> MemoryTier {
    match medium {
        Some(m) if m.eq_ignore_ascii_case("cpu") || m.eq_ignore_ascii_case("storage") => {
            MemoryTier::CpuOffload
        }
        _ => MemoryTier::Device,
    }
}

impl RemoteKeys {
    /// Translation into the key space of `hasher` (the router's block size and hash).
    pub fn new(hasher: BlockHasher) -> Self {
        Self {
            hasher,
            blocks: HashMap::new(),
            refs: KeyMap::default(),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            removed_while_pending: HashSet::new(),
            seq: EventSequencer::default(),
            stats: RemoteStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> RemoteStats {
        RemoteStats {
            engine_blocks: self.blocks.len(),
            pending_blocks: self
                .pending
                .values()
                .flatten()
                .map(|s| s.block_hashes.len())
                .sum(),
            ..self.stats
        }
    }

    /// Router keys of `hash`, if the engine holds it (tests and debugging).
    pub fn keys_of(&self, hash: &EngineHash) -> Option<&[BlockKey]> {
        self.blocks.get(hash).map(|b| &b.keys[..])
    }

    /// Apply one batch; the router events it implies (numbered from 0 per worker, for
    /// [`crate::Router::apply_events`]) are appended to `out`.
    pub fn apply(&mut self, batch: &WireBatch, out: &mut Vec<KvEvent>) {
        for ev in &batch.events {
            match ev {
                WireEvent::BlockStored(s) => self.stored(s.clone()),
                WireEvent::BlockRemoved(r) => {
                    for h in &r.block_hashes {
                        self.remove(h);
                    }
                }
                WireEvent::AllBlocksCleared => self.clear(),
                WireEvent::Unknown(_) => self.stats.unknown_events += 1,
            }
        }
        out.extend(self.seq.drain());
    }

    /// Forget everything (the engine cleared its cache, restarted or was resynced);
    /// emits `AllCleared`.
    pub fn clear(&mut self) {
        self.blocks.clear();
        self.refs.clear();
        self.pending.clear();
        self.pending_order.clear();
        self.removed_while_pending.clear();
        self.seq.push(KvEventData::AllCleared);
    }

    /// Events recorded by [`RemoteKeys::clear`] and not yet taken.
    pub fn drain(&mut self) -> Vec<KvEvent> {
        self.seq.drain()
    }

    fn stored(&mut self, first: StoredBlocks) {
        let bs = self.hasher.block_size();
        // Chains whose parent became known are processed in turn (no recursion).
        let mut work = vec![first];
        while let Some(s) = work.pop() {
            if s.block_size % bs != 0 || s.token_ids.len() != s.block_hashes.len() * s.block_size {
                self.stats.incompatible += 1;
                continue;
            }
            let (mut parent, extra): (BlockKey, Arc<[u8]>) = match &s.parent_block_hash {
                None => (
                    ROOT_PARENT,
                    extra_bytes(s.cache_salt(), s.lora_name.as_deref()).into(),
                ),
                Some(p) => match self.blocks.get(p) {
                    Some(b) => (b.keys[b.keys.len() - 1], b.extra.clone()),
                    None => {
                        self.wait_for(p.clone(), s);
                        continue;
                    }
                },
            };
            let tier = tier_of(s.medium.as_deref());
            for (hash, tokens) in s
                .block_hashes
                .iter()
                .zip(s.token_ids.chunks_exact(s.block_size))
            {
                let keys: Box<[BlockKey]> = match self.blocks.get(hash) {
                    // Stored again (replayed, or a second KV group): same keys, counted once.
                    Some(b) => b.keys.clone(),
                    None => {
                        let mut keys = Vec::with_capacity(s.block_size / bs);
                        for sub in tokens.chunks_exact(bs) {
                            let key = self.hasher.hash_block(parent, sub, &extra);
                            let r = self.refs.entry(key).or_insert(0);
                            *r += 1;
                            if *r == 1 {
                                self.seq.push(KvEventData::BlockStored {
                                    key,
                                    parent: (parent != ROOT_PARENT).then_some(parent),
                                    tokens: sub.to_vec(),
                                    tier,
                                    extra: if parent == ROOT_PARENT {
                                        extra.to_vec()
                                    } else {
                                        Vec::new()
                                    },
                                });
                            }
                            keys.push(key);
                            parent = key;
                        }
                        let keys: Box<[BlockKey]> = keys.into();
                        if !self.removed_while_pending.remove(hash) {
                            self.blocks.insert(
                                hash.clone(),
                                EngineBlock {
                                    keys: keys.clone(),
                                    extra: extra.clone(),
                                    tier,
                                },
                            );
                        } else {
                            // Removed before it could be placed: its keys were only
                            // needed to chain the blocks after it.
                            for k in keys.iter() {
                                self.unref(*k, tier);
                            }
                        }
                        keys
                    }
                };
                parent = keys[keys.len() - 1];
                if let Some(children) = self.pending.remove(hash) {
                    work.extend(children);
                }
            }
        }
    }

    fn wait_for(&mut self, parent: EngineHash, s: StoredBlocks) {
        self.pending.entry(parent.clone()).or_default().push(s);
        self.pending_order.push_back(parent);
        let mut waiting: usize = self
            .pending
            .values()
            .flatten()
            .map(|s| s.block_hashes.len())
            .sum();
        while waiting > MAX_PENDING_BLOCKS {
            let Some(oldest) = self.pending_order.pop_front() else {
                break;
            };
            if let Some(dropped) = self.pending.remove(&oldest) {
                let n: usize = dropped.iter().map(|s| s.block_hashes.len()).sum();
                waiting -= n;
                self.stats.pending_dropped += n as u64;
            }
        }
    }

    fn remove(&mut self, hash: &EngineHash) {
        match self.blocks.remove(hash) {
            Some(b) => {
                for k in b.keys.iter() {
                    self.unref(*k, b.tier);
                }
            }
            None => {
                let waiting = self
                    .pending
                    .values()
                    .flatten()
                    .any(|s| s.block_hashes.contains(hash));
                if waiting {
                    self.removed_while_pending.insert(hash.clone());
                }
            }
        }
    }

    fn unref(&mut self, key: BlockKey, tier: MemoryTier) {
        if let Some(r) = self.refs.get_mut(&key) {
            *r -= 1;
            if *r == 0 {
                self.refs.remove(&key);
                self.seq.push(KvEventData::BlockRemoved { key, tier });
            }
        }
    }
}

/// What [`RemoteStream::offer`] did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Applied, in order.
    Applied,
    /// Already applied (a replay overlapping live delivery): dropped.
    Duplicate,
    /// Batches before it are missing: not applied; replay from `from`, then offer it again.
    Gap {
        /// First missing batch number.
        from: u64,
    },
    /// `seq` went backwards: the engine restarted and its entries were cleared. The batch
    /// was applied when it is batch 0; otherwise replay from 0 and offer it again.
    Restarted {
        /// Whether the batch was applied.
        applied: bool,
    },
}

/// One remote worker's event stream: sequence numbers plus [`RemoteKeys`].
pub struct RemoteStream {
    keys: RemoteKeys,
    next: Option<u64>,
    recent: VecDeque<(u64, u64)>,
}

impl RemoteStream {
    /// A stream in the key space of `hasher`, expecting batch 0 first.
    pub fn new(hasher: BlockHasher) -> Self {
        Self {
            keys: RemoteKeys::new(hasher),
            next: None,
            recent: VecDeque::with_capacity(RECENT),
        }
    }

    /// The batch number expected next (`None` before the first).
    pub fn next_seq(&self) -> Option<u64> {
        self.next
    }

    /// Counters.
    pub fn stats(&self) -> RemoteStats {
        self.keys.stats()
    }

    /// The key translation.
    pub fn keys(&self) -> &RemoteKeys {
        &self.keys
    }

    /// Offer batch `seq` (`replayed`: it came from the replay socket, where old batches
    /// are expected). Router events it implies are appended to `out`; an undecodable
    /// payload is an error and leaves the stream as it was.
    pub fn offer(
        &mut self,
        seq: u64,
        payload: &[u8],
        replayed: bool,
        out: &mut Vec<KvEvent>,
    ) -> Result<Offer, WireError> {
        let expected = self.next.unwrap_or(0);
        if seq > expected {
            self.keys.stats.gaps += 1;
            return Ok(Offer::Gap { from: expected });
        }
        let digest = xxhash_rust::xxh3::xxh3_64(payload);
        if seq < expected {
            // Live PUB delivery is in order, so an old number there is a duplicate only
            // if it is a batch just applied; anything else is a new process.
            if replayed || self.recent.contains(&(seq, digest)) {
                self.keys.stats.duplicates += 1;
                return Ok(Offer::Duplicate);
            }
            let batch = decode_batch(payload)?;
            self.keys.stats.restarts += 1;
            self.restart_clear(out);
            if seq != 0 {
                return Ok(Offer::Restarted { applied: false });
            }
            self.apply(seq, digest, &batch, out);
            return Ok(Offer::Restarted { applied: true });
        }
        let batch = decode_batch(payload)?;
        self.apply(seq, digest, &batch, out);
        Ok(Offer::Applied)
    }

    /// Missing batches cannot be replayed: drop the worker's entries and accept the
    /// stream from batch `seq` on (the index misses blocks until they are stored again,
    /// and never keeps one the engine dropped during the gap).
    pub fn resync(&mut self, seq: u64, out: &mut Vec<KvEvent>) {
        self.keys.stats.resyncs += 1;
        self.keys.clear();
        out.extend(self.keys.drain());
        self.recent.clear();
        self.next = Some(seq);
    }

    /// The engine is gone or was replaced: forget it and expect batch 0.
    pub fn reset(&mut self, out: &mut Vec<KvEvent>) {
        self.restart_clear(out);
    }

    fn restart_clear(&mut self, out: &mut Vec<KvEvent>) {
        self.keys.clear();
        out.extend(self.keys.drain());
        self.recent.clear();
        self.next = None;
    }

    fn apply(&mut self, seq: u64, digest: u64, batch: &WireBatch, out: &mut Vec<KvEvent>) {
        self.keys.apply(batch, out);
        self.keys.stats.batches += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, digest));
        self.next = Some(seq + 1);
    }
}

#[cfg(test)]
mod tests;
