//! The prefix cache: block key → the block holding that prefix's KV, and the
//! longest-cached-chain lookup over a prompt's keys.

use super::BlockId;
use reprise_protocol::BlockKey;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Block keys are already uniform hashes: hashing them again is wasted work.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64);
    }
}

type KeyMap<V> = HashMap<BlockKey, V, BuildHasherDefault<KeyHasher>>;

/// Key → block map of every findable block.
#[derive(Default)]
pub struct PrefixCache {
    map: KeyMap<BlockId>,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrefixCache({} blocks)", self.map.len())
    }
}

impl PrefixCache {
    /// The block cached under `key`.
    pub fn get(&self, key: BlockKey) -> Option<BlockId> {
        self.map.get(&key).copied()
    }

    /// Number of cached blocks.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every (key, block) pair.
    pub fn iter(&self) -> impl Iterator<Item = (BlockKey, BlockId)> + '_ {
        self.map.iter().map(|(k, v)| (*k, *v))
    }

    pub(crate) fn insert(&mut self, key: BlockKey, id: BlockId) {
        self.map.insert(key, id);
    }

    pub(crate) fn remove(&mut self, key: BlockKey) {
        self.map.remove(&key);
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    /// Blocks of the longest cached chain of `keys` from block 0, covering at
    /// most `max_blocks` blocks.
    pub fn longest_chain(&self, keys: &[BlockKey], max_blocks: usize) -> Vec<BlockId> {
        keys.iter()
            .take(max_blocks)
            .map_while(|k| self.get(*k))
            .collect()
    }
}

/// How many leading full blocks of a `num_tokens`-token sequence may come from
/// the cache: never the block holding the last token, which is always
/// recomputed so that there are logits to sample from.
pub fn max_cacheable_blocks(num_tokens: usize, block_size: usize) -> usize {
    num_tokens.saturating_sub(1) / block_size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_token_is_never_covered() {
        assert_eq!(max_cacheable_blocks(16, 16), 0);
        assert_eq!(max_cacheable_blocks(17, 16), 1);
        assert_eq!(max_cacheable_blocks(32, 16), 1);
        assert_eq!(max_cacheable_blocks(33, 16), 2);
        assert_eq!(max_cacheable_blocks(0, 16), 0);
    }

    #[test]
    fn chain_stops_at_first_miss() {
        let mut c = PrefixCache::default();
        c.insert(BlockKey(1), 10);
        c.insert(BlockKey(3), 30);
        let keys = [BlockKey(1), BlockKey(2), BlockKey(3)];
        assert_eq!(c.longest_chain(&keys, 3), vec![10]);
        c.insert(BlockKey(2), 20);
        assert_eq!(c.longest_chain(&keys, 3), vec![10, 20, 30]);
        assert_eq!(c.longest_chain(&keys, 2), vec![10, 20]);
    }
}
