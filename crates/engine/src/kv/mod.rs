//! The KV cache manager: which physical blocks hold which tokens' K/V, which
//! of them are reusable by key, and the events that tell the router so.

pub mod block_pool;
pub mod prefix_cache;

pub use block_pool::{BlockId, BlockPool};
pub use prefix_cache::{max_cacheable_blocks, PrefixCache};
