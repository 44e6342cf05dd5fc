//! `reprise route`: llm-d's precise cache-aware routing in front of remote workers
//! (other reprise processes and vLLM pods), without Kubernetes.
//!
//! A request's path: the shared HTTP skeleton (`reprise_api::app`: admission, then
//! parsing, the chat template and tokenization once, on the CPU pool) → `backend.rs`
//! (the remote workers of `remote.rs` as a `Backend`) → `proxy.rs` (the router's decision, the body
//! forwarded unchanged, the answer streamed back, one retry on the next-best worker).
//! Beside it, per worker: `events.rs` reads its KV events into the router's index
//! (llm-d's dual keys, replay on gaps and restarts), `health.rs` checks `/health` and
//! scrapes its vLLM-named load, `pool.rs` holds the set and rebuilds it when
//! `discovery.rs` sees the workers file change. `run.rs` starts it all.

pub mod backend;
pub mod config;
mod discovery;
pub mod error;
mod events;
mod health;
pub mod metrics;
mod pool;
mod proxy;
pub mod remote;
pub mod run;
mod worker;

pub use config::RouteArgs;
pub use error::RunError;
pub use run::run;
