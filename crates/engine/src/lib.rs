//! reprise's inference engine: the paged KV cache manager (block pool, prefix
//! cache, scheduler), model families with paged attention, sampling and the
//! worker loop that ties them together.

pub mod attention;
pub mod chat_template;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod detok;
pub mod engine;
pub mod executor;
pub mod kv;
pub mod model;
pub mod model_executor;
pub mod sampler;
pub mod scheduler;
pub mod tokenizer;
pub mod worker;

/// Whether this build has the CUDA model path (cargo feature `cuda`).
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");

pub use reprise_router::{
    BlockHasher, BlockKey, HashAlgo, KvEvent, KvEventData, TokenId, WorkerLoad,
};
