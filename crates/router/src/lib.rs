//! reprise's router: block keys, KV event types, the precise and approximate
//! prefix indexes, scorers and routing policies. No candle, no GPU, no async
//! runtime: the same code serves in-process workers, remote workers and the cluster
//! simulator.
//!
//! # Using it
//! ```
//! use reprise_router::{Router, RouterConfig};
//! use reprise_protocol::WorkerLoad;
//! use std::time::Duration;
//!
//! let router = Router::new(RouterConfig::default(), 2, 4096)?; // 2 workers, 4096 blocks each
//! let prompt: Vec<u32> = (0..100).collect();
//! let d = router.route(&prompt, b"", Duration::from_millis(5))?;
//! assert_eq!(d.prompt_blocks, 6); // 100 tokens = 6 full blocks of 16
//! // Workers report load and KV events as they come:
//! router.update_load(d.worker, WorkerLoad { running: 1, total_blocks: 4096, ..Default::default() })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//! [`Router::apply_events`] feeds a worker's [`KvEvent`]s, [`Router::set_available`]
//! excludes a failed worker, [`Router::reset_worker`] forgets a restarted one. Every
//! method takes `&self`: share one `Arc<Router>` between tasks.
//!
//! **Time** is always an explicit `now: Duration` since an epoch the caller picks
//! (virtual time in the simulator); [`SystemClock`] and [`ManualClock`] produce it.
//!
//! # Scoring (policies `precise` and `approximate`)
//! ```text
//! score_w = Wp·m_w/P + Wq·(1 − q_w/max q) + Wk·(1 − kv_usage_w) + Wr·(1 − r_w/max r)
//! ```
//! `P` = the prompt's full blocks, `m_w` = worker `w`'s longest run of cached blocks
//! from block 0 (a gap at block `k` stops it at `k`), `q` = waiting + routed since the
//! last load report, `r` = running. Defaults `Wp=3, Wq=1.5, Wk=1, Wr=0.5`: the load
//! terms together weigh as much as a full prefix hit (see [`ScoreWeights`]). An
//! [`OverloadGuard`] first removes workers whose load exceeds the least-loaded
//! worker's by more than 8 requests *and* 1.5×. Ties are broken by a seeded hash of
//! the first block key, so equal prompts break ties toward the same worker.
//! `load` uses only the queue and KV terms; `round-robin` and `random` (seeded)
//! ignore scores.
//!
//! # Indexes
//! - [`index::precise`]: block key → workers and memory tier, from KV events. On any
//!   out-of-sequence event (gap, duplicate, late, or seq back at 0) the worker's
//!   entries are dropped and the stream is accepted from that event on; the index is
//!   therefore always a subset of what the worker holds, never stale.
//! - [`index::speculative`]: the chosen worker is credited with the prompt's blocks
//!   while the request is live (and `speculative_ttl_ms`, 2 s, after it ends; at most
//!   `speculative_max_ttl_ms`, 5 min) so a burst with a new prefix stays together
//!   until the worker's events arrive, however long the worker queues it.
//! - [`index::approximate`]: per-worker LRU of the keys the router sent there.
//!
//! # Block keys and collisions
//! See [`block_key`]: xxh3-64 by default (a chance of about `n²/2^65` that any two of
//! `n` live blocks collide by accident, but craftable by a chosen-prompt attacker);
//! use `hash_algo = "Sha256"` and/or a per-tenant salt (`extra`) for multi-tenant
//! deployments. Router and engine must use the same block size and algorithm; a
//! `BlockStored` event with the wrong token count is counted in
//! [`ApplyOutcome::wrong_block_size`] instead of silently giving a 0% hit rate.
//!
//! Measured decision times are in the crate's README (`cargo bench -p reprise-router
//! --bench decision`).

pub mod clock;
pub mod config;
pub mod error;
pub mod index;
pub mod keymap;
pub mod policy;
pub mod remote;
pub mod router;
pub mod scorer;
pub mod union;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ConfigError, RouterConfig};
pub use error::RouteError;
pub use index::precise::{ApplyOutcome, PreciseIndex, StreamStats};
pub use policy::{Decision, PolicyKind, RouteRequest, RoutingPolicy};
pub use router::Router;
pub use scorer::{OverloadGuard, ScoreWeights, WorkerView};
