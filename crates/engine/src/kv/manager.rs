//! The KV cache manager (vLLM's `KVCacheManager`): the scheduler's one door to the
//! block pool. It owns each sequence's block table, block keys and how much of it is
//! registered in the prefix cache; the scheduler asks it for a waiting sequence's
//! cached prefix ([`KvCacheManager::computed_blocks`]), for the slots of the tokens it
//! schedules ([`KvCacheManager::allocate_slots`]), to make newly full blocks findable
//! ([`KvCacheManager::cache_blocks`]) and to give a sequence's blocks back
//! ([`KvCacheManager::free`]). What a model's attention needs of the cache (sliding
//! windows whose old blocks can go, per-sequence recurrent state) changes this
//! manager, not the scheduler.

use super::{max_cacheable_blocks, BlockId, BlockPool, BlockTable};
use reprise_protocol::{BlockHasher, BlockKey, BlockKeyError, HashAlgo, KvEvent, TokenId};
use std::collections::HashMap;

/// Identity of a sequence (the scheduler's).
pub type SeqId = u64;

/// A waiting sequence's longest cached prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComputedBlocks {
    /// The cached blocks, from block 0.
    pub blocks: Vec<BlockId>,
    /// The key of the first block after them that could have been cached (the
    /// prompt is longer than the hit), if any.
    pub next_key: Option<BlockKey>,
}

#[derive(Debug, Default)]
struct SeqBlocks {
    table: BlockTable,
    /// Keys of the full blocks of the sequence's tokens, extended lazily.
    keys: Vec<BlockKey>,
    /// Leading blocks registered in the prefix cache.
    num_registered: usize,
    /// Bytes mixed into every key (cache salt, adapter).
    extra: Vec<u8>,
}

/// The block pool behind a per-sequence interface.
#[derive(Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    hasher: BlockHasher,
    seqs: HashMap<SeqId, SeqBlocks>,
    /// Keys a query attends to when every layer of the model slides its window:
    /// blocks wholly before the next query's window are given back.
    window: Option<usize>,
}

fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

impl KvCacheManager {
    /// A manager over an empty pool of `num_blocks` blocks of `block_size` tokens.
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        algo: HashAlgo,
    ) -> Result<Self, BlockKeyError> {
        Ok(Self {
            pool: BlockPool::new(num_blocks, block_size),
            hasher: BlockHasher::new(block_size, algo)?,
            seqs: HashMap::new(),
            window: None,
        })
    }

    /// Gives back blocks that slid out of the window of `w` keys (every layer of the
    /// model slides; `None`: keep a sequence's blocks until it ends).
    pub fn set_sliding_window(&mut self, w: Option<usize>) {
        self.window = w.filter(|&w| w > 0);
    }

    /// The window set by [`Self::set_sliding_window`].
    pub fn sliding_window(&self) -> Option<usize> {
        self.window
    }

    /// With a sliding window, returns the blocks of a sequence that no later query
    /// reads (the next one, at position `num_computed`, attends to the `window` keys
    /// ending there), once registered: they stay findable by key until evicted.
    pub fn free_slid_out(&mut self, seq: SeqId, num_computed: usize) {
        let (Some(w), bs) = (self.window, self.pool.block_size()) else {
            return;
        };
        let Some(s) = self.seqs.get_mut(&seq) else {
            return;
        };
        let gone = ((num_computed + 1).saturating_sub(w) / bs).min(s.num_registered);
        if gone > 0 {
            self.pool.release_prefix(&mut s.table, gone);
        }
    }

    /// The pool, read-only (metrics, tests).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// The hasher shared with the router.
    pub fn hasher(&self) -> BlockHasher {
        self.hasher
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    /// Blocks that can be allocated now.
    pub fn num_free(&self) -> usize {
        self.pool.num_free()
    }

    /// Starts tracking a sequence whose keys mix in `extra`.
    pub fn add(&mut self, seq: SeqId, extra: Vec<u8>) {
        self.seqs.insert(
            seq,
            SeqBlocks {
                extra,
                ..Default::default()
            },
        );
    }

    /// The sequence's blocks, in position order.
    pub fn block_table(&self, seq: SeqId) -> &[BlockId] {
        self.seqs.get(&seq).map_or(&[], |s| s.table.blocks())
    }

    /// The longest cached prefix of a sequence of `tokens`: never the block holding
    /// the last token (it is recomputed to have logits to sample from).
    pub fn computed_blocks(&mut self, seq: SeqId, tokens: &[TokenId]) -> ComputedBlocks {
        let bs = self.pool.block_size();
        let Some(s) = self.seqs.get_mut(&seq) else {
            return ComputedBlocks::default();
        };
        self.hasher.extend_keys(&mut s.keys, tokens, &s.extra);
        let max_hit = max_cacheable_blocks(tokens.len(), bs).min(s.keys.len());
        let blocks = self.pool.longest_cached_chain(&s.keys[..max_hit]);
        let next_key = (blocks.len() < max_hit).then(|| s.keys[blocks.len()]);
        ComputedBlocks { blocks, next_key }
    }

    /// New blocks a sequence needs to hold `num_tokens` tokens.
    pub fn blocks_needed(&self, seq: SeqId, num_tokens: usize) -> usize {
        let have = self.seqs.get(&seq).map_or(0, |s| s.table.len());
        blocks_for(num_tokens, self.pool.block_size()).saturating_sub(have)
    }

    /// Makes room for a sequence to hold `num_tokens` tokens: first `new_computed`,
    /// the cached blocks [`Self::computed_blocks`] found (only for a sequence holding
    /// no block yet), then fresh blocks. `false`, changing nothing, when the pool
    /// cannot give that many now.
    pub fn allocate_slots(
        &mut self,
        seq: SeqId,
        new_computed: &[BlockId],
        num_tokens: usize,
    ) -> bool {
        let bs = self.pool.block_size();
        let Some(s) = self.seqs.get_mut(&seq) else {
            return false;
        };
        debug_assert!(new_computed.is_empty() || s.table.is_empty());
        let have = s.table.len() + new_computed.len();
        let fresh = blocks_for(num_tokens, bs).saturating_sub(have);
        // A hit on a block in the free queue takes it out of the queue too.
        let hits_in_free = new_computed
            .iter()
            .filter(|b| self.pool.is_free(**b))
            .count();
        if self.pool.num_free() < fresh + hits_in_free {
            return false;
        }
        for &b in new_computed {
            self.pool.share(&mut s.table, b);
        }
        if !new_computed.is_empty() {
            s.num_registered = new_computed.len();
        }
        for _ in 0..fresh {
            self.pool
                .grow(&mut s.table)
                .expect("free blocks were counted");
        }
        true
    }

    /// Registers the sequence's blocks that `num_computed` computed tokens have
    /// filled, so later requests find them (and the router hears of them).
    pub fn cache_blocks(&mut self, seq: SeqId, tokens: &[TokenId], num_computed: usize) {
        let bs = self.pool.block_size();
        let Some(s) = self.seqs.get_mut(&seq) else {
            return;
        };
        let full = (num_computed / bs).min(s.table.len());
        if full <= s.num_registered {
            return;
        }
        self.hasher.extend_keys(&mut s.keys, tokens, &s.extra);
        for i in s.num_registered..full {
            let parent = i.checked_sub(1).map(|j| s.keys[j]);
            self.pool.register(
                s.table.blocks()[i],
                s.keys[i],
                parent,
                &tokens[i * bs..(i + 1) * bs],
                &s.extra,
            );
        }
        s.num_registered = full;
    }

    /// Keys of the full blocks of a sequence of `num_tokens` tokens that are not
    /// registered yet (a running prefill is computing them).
    pub fn pending_keys(&self, seq: SeqId, num_tokens: usize) -> &[BlockKey] {
        let bs = self.pool.block_size();
        let Some(s) = self.seqs.get(&seq) else {
            return &[];
        };
        let full = (num_tokens / bs).min(s.keys.len());
        &s.keys[s.num_registered.min(full)..full]
    }

    /// Gives a sequence's blocks back and forgets it (finished or cancelled).
    pub fn free(&mut self, seq: SeqId) {
        if let Some(mut s) = self.seqs.remove(&seq) {
            self.pool.release(std::mem::take(&mut s.table));
        }
    }

    /// Gives a sequence's blocks back but keeps tracking it (preempted, to be
    /// recomputed; its blocks stay cached until evicted).
    pub fn release(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.get_mut(&seq) {
            self.pool.release(std::mem::take(&mut s.table));
            s.num_registered = 0;
        }
    }

    /// KV events since the last call.
    pub fn drain_events(&mut self) -> Vec<KvEvent> {
        self.pool.drain_events()
    }

    /// Checks the pool against the tables: every block's reference count equals
    /// the tables holding it, free blocks are exactly those in the free queue, and
    /// every cached key names a block registered under it.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.pool.num_blocks();
        let mut refs = vec![0u32; n];
        for s in self.seqs.values() {
            for b in s.table.held() {
                refs[b as usize] += 1;
            }
        }
        let free: Vec<BlockId> = self.pool.free_queue();
        let mut in_free = vec![false; n];
        for &b in &free {
            if std::mem::replace(&mut in_free[b as usize], true) {
                return Err(format!("block {b} twice in the free queue"));
            }
        }
        if free.len() != self.pool.num_free() {
            return Err("free count disagrees with the free queue".into());
        }
        for b in 0..n {
            let rc = self.pool.ref_count(b as BlockId);
            if rc != refs[b] {
                return Err(format!(
                    "block {b}: ref count {rc}, held by {} tables",
                    refs[b]
                ));
            }
            if (rc == 0) != in_free[b] {
                return Err(format!(
                    "block {b}: ref count {rc} but in free queue = {}",
                    in_free[b]
                ));
            }
        }
        for (key, b) in self.pool.cached_entries() {
            if self.pool.key_of(b) != Some(key) {
                return Err(format!(
                    "cache maps {key:?} to block {b}, which has another key"
                ));
            }
        }
        Ok(())
    }
}

impl Drop for KvCacheManager {
    /// Live sequences give their blocks back (the pool goes with them; this keeps
    /// every table's release explicit).
    fn drop(&mut self) {
        for s in self.seqs.values_mut() {
            self.pool.release(std::mem::take(&mut s.table));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::block_table::FREED;
    use super::*;

    fn toks(n: usize, base: u32) -> Vec<TokenId> {
        (0..n as u32).map(|i| base + i).collect()
    }

    #[test]
    fn a_second_sequence_finds_the_first_ones_blocks() {
        let mut m = KvCacheManager::new(8, 4, HashAlgo::Xxh3).unwrap();
        let t = toks(10, 100);
        m.add(1, Vec::new());
        assert!(m.computed_blocks(1, &t).blocks.is_empty());
        assert!(m.allocate_slots(1, &[], 10));
        assert_eq!(m.block_table(1).len(), 3);
        m.cache_blocks(1, &t, 10);
        m.add(2, Vec::new());
        let hit = m.computed_blocks(2, &t);
        assert_eq!(hit.blocks, m.block_table(1)[..2].to_vec());
        assert_eq!(hit.next_key, None, "the last token's block is never a hit");
        assert!(m.allocate_slots(2, &hit.blocks, 10));
        assert_eq!(m.pool().ref_count(hit.blocks[0]), 2);
        m.free(1);
        m.free(2);
        assert_eq!(m.pool().num_in_use(), 0);
        m.check_invariants().unwrap();
    }

    #[test]
    fn blocks_that_slid_out_go_back_and_stay_findable() {
        let mut m = KvCacheManager::new(16, 4, HashAlgo::Xxh3).unwrap();
        m.set_sliding_window(Some(6));
        let t = toks(30, 500);
        m.add(1, Vec::new());
        // Prefill 20 tokens: the next query (position 20) reads keys 15..=20, so
        // blocks 0..3 (positions 0..12) are no longer needed.
        assert!(m.allocate_slots(1, &[], 20));
        m.cache_blocks(1, &t, 20);
        m.free_slid_out(1, 20);
        assert_eq!(m.pool().num_in_use(), 2, "blocks 3 and 4 held");
        assert_eq!(m.block_table(1)[..3], [FREED; 3]);
        m.check_invariants().unwrap();
        // Decoding on: a new block for position 20, one more slides out.
        assert!(m.allocate_slots(1, &[], 21));
        m.cache_blocks(1, &t, 21);
        m.free_slid_out(1, 21);
        assert_eq!(m.block_table(1)[..4], [FREED; 4]);
        m.check_invariants().unwrap();
        // The freed blocks stay cached: the same prompt hits all of them.
        m.add(2, Vec::new());
        let hit = m.computed_blocks(2, &t[..21]);
        assert_eq!(hit.blocks.len(), 5);
        // Releasing a table with holes (preemption) and freeing work.
        m.release(1);
        m.check_invariants().unwrap();
        m.free(1);
        m.free(2);
        assert_eq!(m.pool().num_in_use(), 0);
        m.check_invariants().unwrap();
    }

    #[test]
    fn a_salt_keys_blocks_apart_and_allocation_never_overcommits() {
        let mut m = KvCacheManager::new(3, 4, HashAlgo::Xxh3).unwrap();
        let t = toks(9, 7);
        m.add(1, b"a".to_vec());
        assert!(m.allocate_slots(1, &[], 9));
        m.cache_blocks(1, &t, 9);
        m.add(2, b"b".to_vec());
        let hit = m.computed_blocks(2, &t);
        assert!(hit.blocks.is_empty() && hit.next_key.is_some());
        assert!(!m.allocate_slots(2, &[], 9), "only 0 blocks free");
        assert!(
            m.block_table(2).is_empty(),
            "a refused allocation changes nothing"
        );
        m.release(1);
        assert_eq!(
            m.pending_keys(1, 9).len(),
            2,
            "a released sequence registers again"
        );
        assert!(m.allocate_slots(2, &[], 9));
        m.check_invariants().unwrap();
    }
}
