//! reprise's shared vocabulary, as Dynamo keeps its `protocols`: what the engine,
//! the router, the HTTP layer and `reprise route` all speak, with nothing of any of
//! them. No candle, no async runtime.
//!
//! - [`block_key`]: token ids, chained block keys and their hashers;
//! - [`events`]: KV events (stored, removed, cleared) and their sequence numbers;
//! - [`wire`]: vLLM's KV-event wire format (msgpack in, msgspec-exact bytes out);
//! - [`load`]: what a worker reports of its load;
//! - [`request`]: the worker boundary's sampling parameters and events.

pub mod block_key;
pub mod events;
pub mod load;
pub mod request;
pub mod wire;

pub use block_key::{BlockHasher, BlockKey, BlockKeyError, HashAlgo, TokenId, ROOT_PARENT};
pub use events::{EventSequencer, KvEvent, KvEventData, MemoryTier};
pub use load::WorkerLoad;
pub use request::{FinishReason, SamplingParams, StopReason, TokenLogprob, WorkerEvent};
