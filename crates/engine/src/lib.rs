//! reprise's inference engine, in layers that only point down:
//!
//! - `simd` (the host's instruction set, vector math) and `pool` (the compute
//!   pool) at the bottom, used by the backends and the sampler alike;
//! - `types`: the engine's request (the sampling parameters and worker events it
//!   carries are the shared vocabulary of `reprise-protocol`; the text side,
//!   tokenizers to grammars, is `reprise-text`);
//! - `kv` (block pool, prefix cache, block tables) → `scheduler` (continuous
//!   batching) → `executor` (the step seam) → `engine` (requests, stops) → `worker`
//!   (the thread, the watchdog);
//! - behind the executor: `model` (the trait backends implement), the backends
//!   `cpu` and `cuda`, `loader` (files to models), `sampler` (with the structured-output masks), and `model_executor`
//!   (a model, its KV storage and the samplers as an executor).

pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod executor;
pub mod kv;
pub mod loader;
pub mod model;
pub mod model_executor;
pub mod pool;
pub mod sampler;
pub mod scheduler;
pub mod simd;
pub mod types;
pub mod worker;

/// Whether this build has the CUDA model path (cargo feature `cuda`).
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");
