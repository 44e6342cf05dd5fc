//! reprise's router: block keys, KV event types, the precise and approximate
//! prefix indexes, scorers and routing policies. No candle, no GPU: the same
//! code serves in-process workers, remote workers and the cluster simulator.

pub mod block_key;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod index;
pub mod keymap;
pub mod load;
pub mod policy;
pub mod router;
pub mod scorer;

pub use block_key::{BlockHasher, BlockKey, BlockKeyError, HashAlgo, TokenId, ROOT_PARENT};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ConfigError, RouterConfig};
pub use error::RouteError;
pub use events::{EventSequencer, KvEvent, KvEventData, MemoryTier};
pub use index::precise::{ApplyOutcome, PreciseIndex, StreamStats};
pub use load::WorkerLoad;
pub use policy::{Decision, PolicyKind, RouteRequest, RoutingPolicy};
pub use router::Router;
pub use scorer::{OverloadGuard, ScoreWeights, WorkerView};
