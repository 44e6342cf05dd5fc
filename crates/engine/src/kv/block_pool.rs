//! The block pool: a fixed set of KV blocks with reference counts, an LRU free
//! queue of blocks that keep their contents, and the prefix-cache map from
//! block key to block. Every operation is O(1) per block.
//!
//! vLLM's semantics: a freed block keeps its key and goes to the tail of the
//! free queue; allocation takes the head and, if that block still had a key,
//! evicts it (that is the moment `BlockRemoved` is emitted); a hit on a block
//! in the free queue takes it out of the queue (touch-on-hit).

use super::block_table::{BlockTable, FREED};
use super::prefix_cache::PrefixCache;
use super::BlockId;
use reprise_protocol::{BlockKey, EventSequencer, KvEvent, KvEventData, MemoryTier, TokenId};

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Block {
    ref_count: u32,
    key: Option<BlockKey>,
    // Intrusive doubly linked free queue; NIL when not linked.
    prev: u32,
    next: u32,
    in_free_queue: bool,
}

/// Fixed pool of KV blocks plus the prefix cache over them.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    block_size: usize,
    head: u32,
    tail: u32,
    num_free: usize,
    cache: PrefixCache,
    events: EventSequencer,
}

impl BlockPool {
    /// A pool of `num_blocks` empty blocks of `block_size` tokens, all free.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(num_blocks < NIL as usize, "block pool too large");
        let mut pool = Self {
            blocks: Vec::with_capacity(num_blocks),
            block_size,
            head: NIL,
            tail: NIL,
            num_free: 0,
            cache: PrefixCache::default(),
            events: EventSequencer::default(),
        };
        for id in 0..num_blocks as u32 {
            pool.blocks.push(Block {
                ref_count: 0,
                key: None,
                prev: NIL,
                next: NIL,
                in_free_queue: false,
            });
            pool.push_tail(id);
        }
        pool
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks with no live reference (allocatable; some still hold cached KV).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Blocks referenced by at least one live block table.
    pub fn num_in_use(&self) -> usize {
        self.blocks.len() - self.num_free
    }

    /// Number of cached (findable) blocks.
    pub fn num_cached(&self) -> usize {
        self.cache.len()
    }

    /// Reference count of a block.
    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].ref_count
    }

    /// Key a block is registered under, if any.
    pub fn key_of(&self, id: BlockId) -> Option<BlockKey> {
        self.blocks[id as usize].key
    }

    /// The block currently findable under `key`.
    pub fn lookup(&self, key: BlockKey) -> Option<BlockId> {
        self.cache.get(key)
    }

    /// Blocks of the longest cached chain of `keys` from block 0.
    pub fn longest_cached_chain(&self, keys: &[BlockKey]) -> Vec<BlockId> {
        self.cache.longest_chain(keys, keys.len())
    }

    /// Whether the block sits in the free queue.
    pub fn is_free(&self, id: BlockId) -> bool {
        self.blocks[id as usize].in_free_queue
    }

    /// Free queue from head (next to be evicted) to tail.
    pub fn free_queue(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.num_free);
        let mut cur = self.head;
        while cur != NIL {
            out.push(cur);
            cur = self.blocks[cur as usize].next;
        }
        out
    }

    /// Every registered key with its block (for invariant checks and tests).
    pub fn cached_entries(&self) -> impl Iterator<Item = (BlockKey, BlockId)> + '_ {
        self.cache.iter()
    }

    /// Appends a fresh block to `table` (evicting its old key, if it had one);
    /// `None` when no block is free.
    pub fn grow(&mut self, table: &mut BlockTable) -> Option<BlockId> {
        let id = self.allocate()?;
        table.push(id);
        Some(id)
    }

    /// Appends a block found through the prefix cache to `table`, adding a reference.
    pub fn share(&mut self, table: &mut BlockTable, id: BlockId) {
        self.acquire(id);
        table.push(id);
    }

    /// Returns a table's blocks: blocks whose count reaches zero join the free
    /// queue's tail in reverse table order, so that a request's last
    /// (longest-prefix) block is evicted first.
    pub fn release(&mut self, mut table: BlockTable) {
        let blocks: Vec<BlockId> = table.take().into_iter().filter(|&b| b != FREED).collect();
        self.release_ids(&blocks);
    }

    /// Returns the blocks of a live table's entries `..upto` (they slid out of the
    /// attention window), leaving [`FREED`] in their place; they stay cached until
    /// evicted, like any released block.
    pub fn release_prefix(&mut self, table: &mut BlockTable, upto: usize) {
        let blocks = table.take_prefix(upto);
        self.release_ids(&blocks);
    }

    /// Take the free queue's head with a reference count of one, evicting its
    /// key if it had one; `None` when every block is in use.
    fn allocate(&mut self) -> Option<BlockId> {
        let id = self.head;
        if id == NIL {
            return None;
        }
        self.unlink(id);
        self.evict_key(id);
        self.blocks[id as usize].ref_count = 1;
        Some(id)
    }

    /// Add a reference to a block found through the prefix cache; a block in
    /// the free queue leaves it (touch-on-hit).
    fn acquire(&mut self, id: BlockId) {
        if self.blocks[id as usize].in_free_queue {
            self.unlink(id);
        }
        self.blocks[id as usize].ref_count += 1;
    }

    fn release_ids(&mut self, table: &[BlockId]) {
        for &id in table.iter().rev() {
            let b = &mut self.blocks[id as usize];
            debug_assert!(b.ref_count > 0, "double free of block {id}");
            b.ref_count = b.ref_count.saturating_sub(1);
            if b.ref_count == 0 {
                self.push_tail(id);
            }
        }
    }

    /// Make a full, computed block findable under `key` (`extra`: the bytes mixed
    /// into its chain's keys). Returns false (and changes nothing) if the key is
    /// already cached in another block, as when two requests with the same prompt
    /// computed it in the same step.
    pub fn register(
        &mut self,
        id: BlockId,
        key: BlockKey,
        parent: Option<BlockKey>,
        tokens: &[TokenId],
        extra: &[u8],
    ) -> bool {
        debug_assert_eq!(tokens.len(), self.block_size);
        if self.blocks[id as usize].key.is_some() || self.cache.get(key).is_some() {
            return false;
        }
        self.cache.insert(key, id);
        self.blocks[id as usize].key = Some(key);
        self.events.push(KvEventData::BlockStored {
            key,
            parent,
            tokens: tokens.to_vec(),
            tier: MemoryTier::Device,
            extra: if parent.is_none() {
                extra.to_vec()
            } else {
                Vec::new()
            },
        });
        true
    }

    /// Forget every cached key (vLLM's reset_prefix_cache). Only possible when
    /// no block is in use, since live requests may still register blocks.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.num_in_use() > 0 {
            return false;
        }
        for b in &mut self.blocks {
            b.key = None;
        }
        self.cache.clear();
        self.events.push(KvEventData::AllCleared);
        true
    }

    /// KV events emitted since the last call, numbered without gaps.
    pub fn drain_events(&mut self) -> Vec<KvEvent> {
        self.events.drain()
    }

    /// Sequence number of the next event.
    pub fn next_event_seq(&self) -> u64 {
        self.events.next_seq()
    }

    fn evict_key(&mut self, id: BlockId) {
        if let Some(key) = self.blocks[id as usize].key.take() {
            self.cache.remove(key);
            self.events.push(KvEventData::BlockRemoved {
                key,
                tier: MemoryTier::Device,
            });
        }
    }

    fn push_tail(&mut self, id: BlockId) {
        let b = &mut self.blocks[id as usize];
        debug_assert!(!b.in_free_queue);
        b.in_free_queue = true;
        b.prev = self.tail;
        b.next = NIL;
        if self.tail == NIL {
            self.head = id;
        } else {
            self.blocks[self.tail as usize].next = id;
        }
        self.tail = id;
        self.num_free += 1;
    }

    fn unlink(&mut self, id: BlockId) {
        let (prev, next) = {
            let b = &self.blocks[id as usize];
            debug_assert!(b.in_free_queue);
            (b.prev, b.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let b = &mut self.blocks[id as usize];
        b.prev = NIL;
        b.next = NIL;
        b.in_free_queue = false;
        self.num_free -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u128) -> BlockKey {
        BlockKey(n)
    }

    #[test]
    fn allocation_takes_head_and_release_appends_in_reverse() {
        let mut p = BlockPool::new(4, 2);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_eq!((a, b), (0, 1));
        assert_eq!(p.free_queue(), vec![2, 3]);
        p.release_ids(&[a, b]);
        // The table's last block goes first: it is the least likely to be shared.
        assert_eq!(p.free_queue(), vec![2, 3, 1, 0]);
        assert_eq!(p.num_in_use(), 0);
    }

    #[test]
    fn reusing_a_cached_block_evicts_its_key_and_emits_removed() {
        let mut p = BlockPool::new(1, 2);
        let a = p.allocate().unwrap();
        assert!(p.register(a, key(7), None, &[1, 2], b""));
        p.release_ids(&[a]);
        assert_eq!(p.lookup(key(7)), Some(a));
        let b = p.allocate().unwrap();
        assert_eq!(b, a);
        assert_eq!(p.lookup(key(7)), None);
        let ev = p.drain_events();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].seq, 0);
        assert!(matches!(ev[1].data, KvEventData::BlockRemoved { key: k, .. } if k == key(7)));
        assert_eq!(ev[1].seq, 1);
    }

    #[test]
    fn hit_in_free_queue_is_touched_out_of_it() {
        let mut p = BlockPool::new(3, 1);
        let a = p.allocate().unwrap();
        p.register(a, key(1), None, &[5], b"");
        p.release_ids(&[a]);
        assert!(p.is_free(a));
        p.acquire(a);
        assert!(!p.is_free(a));
        assert_eq!(p.ref_count(a), 1);
        assert_eq!(p.num_free(), 2);
        // Allocation no longer reaches it; the key stays valid.
        assert_ne!(p.allocate(), Some(a));
        assert_eq!(p.lookup(key(1)), Some(a));
    }

    #[test]
    fn duplicate_registration_keeps_the_first_block() {
        let mut p = BlockPool::new(2, 1);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert!(p.register(a, key(1), None, &[3], b""));
        assert!(!p.register(b, key(1), None, &[3], b""));
        assert_eq!(p.key_of(b), None);
        assert_eq!(p.drain_events().len(), 1);
    }

    #[test]
    fn reset_only_when_idle() {
        let mut p = BlockPool::new(2, 1);
        let a = p.allocate().unwrap();
        p.register(a, key(1), None, &[3], b"");
        assert!(!p.reset_prefix_cache());
        p.release_ids(&[a]);
        assert!(p.reset_prefix_cache());
        assert_eq!(p.num_cached(), 0);
        assert!(matches!(
            p.drain_events().last().unwrap().data,
            KvEventData::AllCleared
        ));
    }

    #[test]
    fn tables_take_and_give_back_their_blocks() {
        let mut p = BlockPool::new(3, 2);
        let mut t = BlockTable::new();
        assert_eq!(p.grow(&mut t), Some(0));
        let a = p.grow(&mut t).unwrap();
        assert!(p.register(a, key(9), None, &[1, 2], b""));
        let mut u = BlockTable::new();
        p.share(&mut u, a);
        assert_eq!((t.blocks(), u.blocks()), (&[0, 1][..], &[1][..]));
        assert_eq!(p.ref_count(a), 2);
        p.release(t);
        assert_eq!((p.ref_count(a), p.num_in_use()), (1, 1));
        p.release(u);
        assert_eq!(p.num_in_use(), 0);
    }

    #[test]
    #[should_panic(expected = "without BlockPool::release")]
    fn a_table_dropped_with_its_blocks_is_caught() {
        let mut p = BlockPool::new(1, 1);
        let mut t = BlockTable::new();
        p.grow(&mut t);
        drop(t);
    }
}
