//! KV events: what a worker's block pool tells the router about the blocks it
//! holds. Defined here once and emitted by the engine. Replaying a worker's
//! events in sequence order gives exactly the set of keys that worker caches.

use crate::block_key::{BlockKey, TokenId};
use serde::{Deserialize, Serialize};

/// Where a cached block lives; only `Device` exists today, the tier is carried
/// so that a CPU-offload tier can be added without changing the protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemoryTier {
    /// The worker's own KV pool (GPU memory, or host memory for a CPU worker).
    #[default]
    Device,
    /// A slower host-memory tier behind the device pool.
    CpuOffload,
}

/// One change to a worker's set of cached blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEventData {
    /// A full block's KV was computed and is now findable by `key`.
    BlockStored {
        /// The block's chain key.
        key: BlockKey,
        /// Key of the preceding block, `None` for block 0.
        parent: Option<BlockKey>,
        /// The block's token ids.
        tokens: Vec<TokenId>,
        /// Memory tier holding it.
        tier: MemoryTier,
        /// The extra bytes mixed into the chain's keys (cache salt), carried on a
        /// chain's first block only (`parent: None`), as vLLM's `extra_keys` carry it.
        extra: Vec<u8>,
    },
    /// The block was evicted (its memory reused); `key` no longer hits.
    BlockRemoved {
        /// The evicted key.
        key: BlockKey,
        /// Memory tier it was evicted from.
        tier: MemoryTier,
    },
    /// Every cached block of the worker is gone (reset or restart).
    AllCleared,
}

/// A KV event with its per-worker sequence number (0, 1, 2, … without gaps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEvent {
    /// Position in the worker's event stream.
    pub seq: u64,
    /// What changed.
    pub data: KvEventData,
}

/// Numbers events for one worker; the block pool owns one.
#[derive(Debug, Default)]
pub struct EventSequencer {
    next: u64,
    pending: Vec<KvEvent>,
}

impl EventSequencer {
    /// Record one event with the next sequence number.
    pub fn push(&mut self, data: KvEventData) {
        self.pending.push(KvEvent {
            seq: self.next,
            data,
        });
        self.next += 1;
    }

    /// Take every event recorded since the last drain, in order.
    pub fn drain(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.pending)
    }

    /// Number of events not yet drained.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Sequence number the next event will carry.
    pub fn next_seq(&self) -> u64 {
        self.next
    }
}
