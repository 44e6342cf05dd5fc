//! A sequence's KV blocks, owned: only the pool adds blocks to a table and only
//! the pool takes them back, by value (`BlockPool::release(table)`), so a table
//! cannot be released twice and its blocks cannot be handed out while it holds
//! them. One dropped without being released would leak its blocks: that is a bug,
//! caught at the drop (a panic, which fails the worker like any other).

use super::BlockId;

/// A table entry whose block was given back while the sequence lives on (it slid
/// out of every layer's attention window); no attention reads it.
pub const FREED: BlockId = BlockId::MAX;

/// The physical blocks of one sequence, in position order.
#[must_use = "a block table's blocks return to the pool only through BlockPool::release"]
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
}

impl BlockTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The blocks, in position order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the table holds no block.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub(super) fn push(&mut self, b: BlockId) {
        self.blocks.push(b);
    }

    pub(super) fn take(&mut self) -> Vec<BlockId> {
        std::mem::take(&mut self.blocks)
    }

    /// The blocks of entries `..upto` not yet freed, now marked [`FREED`].
    pub(super) fn take_prefix(&mut self, upto: usize) -> Vec<BlockId> {
        let upto = upto.min(self.blocks.len());
        self.blocks[..upto]
            .iter_mut()
            .filter(|b| **b != FREED)
            .map(|b| std::mem::replace(b, FREED))
            .collect()
    }

    /// Entries still holding a block.
    pub fn held(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.blocks.iter().copied().filter(|&b| b != FREED)
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        assert!(
            self.held().next().is_none() || std::thread::panicking(),
            "a block table holding {} blocks was dropped without BlockPool::release",
            self.held().count()
        );
    }
}
