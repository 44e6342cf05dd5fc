//! reprise's inference engine, in layers that only point down:
//!
//! - `types`: the worker boundary's requests, events and sampling parameters;
//! - `tokenizer`, `chat_template`, `detok`: the text side;
//! - `kv` (block pool, prefix cache, block tables) → `scheduler` (continuous
//!   batching) → `executor` (the step seam) → `engine` (requests, stops) → `worker`
//!   (the thread, the watchdog);
//! - behind the executor: `model` (the trait backends implement), the backends
//!   `cpu` and `cuda`, `loader` (files to models), `sampler` (with `grammar`, the structured-output masks), and `model_executor`
//!   (a model, its KV storage and the samplers as an executor).

pub mod chat_template;
pub mod cpu;
pub mod cuda;
pub mod detok;
pub mod engine;
pub mod executor;
pub mod grammar;
pub mod kv;
pub mod loader;
pub mod model;
pub mod model_executor;
pub mod sampler;
pub mod scheduler;
pub mod tokenizer;
pub mod types;
pub mod worker;

/// Whether this build has the CUDA model path (cargo feature `cuda`).
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");

pub use reprise_router::{
    BlockHasher, BlockKey, HashAlgo, KvEvent, KvEventData, TokenId, WorkerLoad,
};
