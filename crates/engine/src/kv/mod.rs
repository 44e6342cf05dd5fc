//! The KV cache: which physical blocks hold which tokens' K/V, which of them are
//! reusable by key, and the events that tell the router so. The scheduler sees it
//! through [`KvCacheManager`]; the pool, prefix cache and tables are its parts.

pub mod block_pool;
pub mod block_table;
pub mod manager;
pub mod prefix_cache;

pub use block_pool::BlockPool;
pub use block_table::BlockTable;
pub use manager::{ComputedBlocks, KvCacheManager};
pub use prefix_cache::{max_cacheable_blocks, PrefixCache};

/// Index of a physical block in the pool (and in the model's KV storage).
pub type BlockId = u32;
