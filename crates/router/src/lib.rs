//! reprise's router: block keys, KV event types, the precise and approximate
//! prefix indexes, scorers and routing policies. No candle, no GPU: the same
//! code serves in-process workers, remote workers and the cluster simulator.

pub mod block_key;
pub mod events;

pub use block_key::{BlockHasher, BlockKey, BlockKeyError, HashAlgo, TokenId, ROOT_PARENT};
pub use events::{EventSequencer, KvEvent, KvEventData, MemoryTier};
pub mod load;
pub use load::WorkerLoad;
