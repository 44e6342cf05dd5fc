//! The approximate index, for engines that publish no KV events: fed only by the
//! router's own decisions. Each worker has an LRU of block keys whose capacity is
//! the worker's KV pool size in blocks; a key → workers map answers lookups.
//! Every operation is O(1) per key (hash map + intrusive doubly linked list in a slab).
//!
//! A recorded prompt's keys are touched last block first, so block 0 ends up most
//! recently used and a prompt's deeper blocks are evicted before its prefix — the
//! same order in which vLLM's free queue evicts a finished request's blocks.
//!
//! It is wrong whenever the engine evicted differently (other traffic, preemption,
//! a different pool size) — the reason the precise index exists.

use crate::index::{bit, longest_runs, WorkerMask};
use crate::keymap::KeyMap;
use parking_lot::RwLock;
use reprise_protocol::block_key::BlockKey;

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    key: BlockKey,
    prev: u32,
    next: u32,
}

/// One worker's LRU of keys; `head` is most recently used.
#[derive(Debug)]
struct Lru {
    map: KeyMap<u32>,
    nodes: Vec<Node>,
    head: u32,
    tail: u32,
    cap: usize,
}

impl Lru {
    fn new(cap: usize) -> Self {
        Self {
            map: KeyMap::default(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            // Slab indices are u32 with one value reserved for NIL.
            cap: cap.min(NIL as usize - 1),
        }
    }

    fn unlink(&mut self, i: u32) {
        let Node { prev, next, .. } = self.nodes[i as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        self.nodes[i as usize].prev = NIL;
        self.nodes[i as usize].next = self.head;
        if self.head != NIL {
            self.nodes[self.head as usize].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    /// Make `key` most recently used, inserting it; returns the key evicted to make room.
    fn touch(&mut self, key: BlockKey) -> Option<BlockKey> {
        if self.cap == 0 {
            return None;
        }
        if let Some(&i) = self.map.get(&key) {
            if self.head != i {
                self.unlink(i);
                self.push_front(i);
            }
            return None;
        }
        if self.map.len() >= self.cap && self.tail != NIL {
            // Reuse the least recently used node's slot.
            let i = self.tail;
            self.unlink(i);
            let old = std::mem::replace(&mut self.nodes[i as usize].key, key);
            self.map.remove(&old);
            self.map.insert(key, i);
            self.push_front(i);
            return Some(old);
        }
        let i = self.nodes.len() as u32;
        self.nodes.push(Node {
            key,
            prev: NIL,
            next: NIL,
        });
        self.map.insert(key, i);
        self.push_front(i);
        None
    }

    fn clear(&mut self) {
        self.map.clear();
        self.nodes.clear();
        self.head = NIL;
        self.tail = NIL;
    }

    fn keys_mru_first(&self) -> Vec<BlockKey> {
        let mut v = Vec::with_capacity(self.map.len());
        let mut i = self.head;
        while i != NIL {
            let n = self.nodes[i as usize];
            v.push(n.key);
            i = n.next;
        }
        v
    }
}

#[derive(Debug)]
struct Inner {
    lrus: Vec<Lru>,
    owners: KeyMap<WorkerMask>,
}

/// Per-worker LRU guesses of the blocks each worker holds.
#[derive(Debug)]
pub struct ApproximateIndex {
    inner: RwLock<Inner>,
}

impl ApproximateIndex {
    /// `num_workers` empty LRUs of `capacity_blocks` keys each.
    pub fn new(num_workers: usize, capacity_blocks: usize) -> Self {
        Self {
            inner: RwLock::new(Inner {
                lrus: (0..num_workers)
                    .map(|_| Lru::new(capacity_blocks))
                    .collect(),
                owners: KeyMap::default(),
            }),
        }
    }

    /// Record that `worker` was sent a prompt with these `keys`.
    pub fn record(&self, worker: usize, keys: &[BlockKey]) {
        let b = bit(worker);
        let mut g = self.inner.write();
        let Inner { lrus, owners } = &mut *g;
        let Some(lru) = lrus.get_mut(worker) else {
            return;
        };
        for k in keys.iter().rev() {
            if let Some(ev) = lru.touch(*k) {
                if let Some(m) = owners.get_mut(&ev) {
                    *m &= !b;
                    if *m == 0 {
                        owners.remove(&ev);
                    }
                }
            }
            if lru.cap > 0 {
                *owners.entry(*k).or_default() |= b;
            }
        }
    }

    /// Resize `worker`'s LRU to `capacity_blocks` keys (its KV pool, once known),
    /// evicting the least recently used beyond it.
    pub fn set_capacity(&self, worker: usize, capacity_blocks: usize) {
        let b = bit(worker);
        let mut g = self.inner.write();
        let Inner { lrus, owners } = &mut *g;
        let Some(lru) = lrus.get_mut(worker) else {
            return;
        };
        lru.cap = capacity_blocks.min(NIL as usize - 1);
        while lru.map.len() > lru.cap && lru.tail != NIL {
            let i = lru.tail;
            lru.unlink(i);
            let old = lru.nodes[i as usize].key;
            lru.map.remove(&old);
            if let Some(m) = owners.get_mut(&old) {
                *m &= !b;
                if *m == 0 {
                    owners.remove(&old);
                }
            }
        }
        // Freed slab slots are dropped with the nodes past the live ones only when
        // the LRU empties; a shrunk LRU keeps its slab (it is reused on insert).
        if lru.map.is_empty() {
            lru.clear();
        }
    }

    /// Forget everything recorded for `worker`.
    pub fn forget_worker(&self, worker: usize) {
        let b = bit(worker);
        let mut g = self.inner.write();
        let Inner { lrus, owners } = &mut *g;
        if let Some(lru) = lrus.get_mut(worker) {
            for k in lru.map.keys() {
                if let Some(m) = owners.get_mut(k) {
                    *m &= !b;
                    if *m == 0 {
                        owners.remove(k);
                    }
                }
            }
            lru.clear();
        }
    }

    /// Longest consecutive guessed run from block 0, per worker.
    pub fn match_prefix(&self, keys: &[BlockKey], candidates: WorkerMask, out: &mut [usize]) {
        let g = self.inner.read();
        longest_runs(keys, candidates, out, |k| {
            g.owners.get(&k).copied().unwrap_or(0)
        });
    }

    /// `worker`'s keys, most recently used first (tests and debugging).
    pub fn keys_of(&self, worker: usize) -> Vec<BlockKey> {
        self.inner
            .read()
            .lrus
            .get(worker)
            .map(Lru::keys_mru_first)
            .unwrap_or_default()
    }

    /// Number of keys guessed for `worker`.
    pub fn len_of(&self, worker: usize) -> usize {
        self.inner
            .read()
            .lrus
            .get(worker)
            .map_or(0, |l| l.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(i: u128) -> BlockKey {
        BlockKey(i)
    }

    #[test]
    fn shrinking_evicts_least_recently_used_first() {
        let idx = ApproximateIndex::new(2, 10);
        let keys: Vec<BlockKey> = (0..8).map(k).collect();
        idx.record(0, &keys);
        idx.record(1, &keys[..2]);
        idx.set_capacity(0, 3);
        // Block 0 is most recently used (recorded last block first): 0, 1, 2 stay.
        assert_eq!(idx.keys_of(0), keys[..3].to_vec());
        let mut out = [0usize; 2];
        idx.match_prefix(&keys, 0b11, &mut out);
        assert_eq!(out, [3, 2]);
        idx.set_capacity(0, 0);
        idx.match_prefix(&keys, 0b11, &mut out);
        assert_eq!(out, [0, 2], "worker 1 keeps its own guesses");
        idx.set_capacity(0, 5);
        idx.record(0, &keys);
        assert_eq!(idx.len_of(0), 5);
    }

    #[test]
    fn lru_eviction_order() {
        let idx = ApproximateIndex::new(1, 3);
        // Prompt A's blocks a0,a1: touched a1 then a0 → a0 most recent.
        idx.record(0, &[k(10), k(11)]);
        assert_eq!(idx.keys_of(0), vec![k(10), k(11)]);
        // Prompt B (b0, b1) needs room: a1 (the deepest, least recent) goes first.
        idx.record(0, &[k(20), k(21)]);
        assert_eq!(idx.keys_of(0), vec![k(20), k(21), k(10)]);
        // Touching a0 again saves it; the next insert evicts b1.
        idx.record(0, &[k(10)]);
        idx.record(0, &[k(30)]);
        assert_eq!(idx.keys_of(0), vec![k(30), k(10), k(20)]);
        let mut out = [0];
        idx.match_prefix(&[k(10), k(11)], 1, &mut out);
        assert_eq!(out, [1]);
        idx.match_prefix(&[k(21)], 1, &mut out);
        assert_eq!(out, [0], "evicted keys no longer match");
    }

    #[test]
    fn workers_are_independent_and_forgettable() {
        let idx = ApproximateIndex::new(2, 10);
        idx.record(0, &[k(1), k(2)]);
        idx.record(1, &[k(1)]);
        let mut out = [0; 2];
        idx.match_prefix(&[k(1), k(2)], 0b11, &mut out);
        assert_eq!(out, [2, 1]);
        idx.forget_worker(0);
        idx.match_prefix(&[k(1), k(2)], 0b11, &mut out);
        assert_eq!(out, [0, 1]);
        assert_eq!(idx.len_of(0), 0);
        idx.record(9, &[k(1)]); // unknown worker: ignored
    }

    proptest! {
        /// The LRU agrees with a naive Vec-based LRU after any sequence of records.
        #[test]
        fn matches_naive_lru(cap in 1usize..6, ops in proptest::collection::vec(
            (0usize..2, proptest::collection::vec(0u128..12, 0..5)), 0..60)) {
            let idx = ApproximateIndex::new(2, cap);
            let mut naive: Vec<Vec<BlockKey>> = vec![Vec::new(); 2];
            for (w, keys) in &ops {
                let keys: Vec<_> = keys.iter().map(|&i| k(i)).collect();
                idx.record(*w, &keys);
                for key in keys.iter().rev() {
                    naive[*w].retain(|x| x != key);
                    naive[*w].insert(0, *key);
                    naive[*w].truncate(cap);
                }
            }
            for w in 0..2 {
                prop_assert_eq!(idx.keys_of(w), naive[w].clone());
                for key in &naive[w] {
                    let mut out = [0; 2];
                    idx.match_prefix(&[*key], 0b11, &mut out);
                    prop_assert_eq!(out[w], 1);
                }
            }
        }
    }
}
