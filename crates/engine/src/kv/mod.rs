//! The KV cache manager: which physical blocks hold which tokens' K/V, which
//! of them are reusable by key, and the events that tell the router so.

pub mod block_pool;
pub mod block_table;
pub mod prefix_cache;

pub use block_pool::BlockPool;
pub use block_table::BlockTable;
pub use prefix_cache::{max_cacheable_blocks, PrefixCache};

/// Index of a physical block in the pool (and in the model's KV storage).
pub type BlockId = u32;
