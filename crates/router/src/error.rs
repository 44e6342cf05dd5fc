//! Errors returned while routing or feeding the router (configuration errors live in
//! [`crate::config::ConfigError`]).

/// Why a routing call or an index update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Every worker is marked unavailable (or there are none).
    #[error("no worker is available to route to")]
    NoWorkerAvailable,
    /// A worker index outside `0..num_workers`.
    #[error("unknown worker {worker} (the router has {num_workers} workers)")]
    UnknownWorker {
        /// The index given.
        worker: usize,
        /// How many workers the router knows.
        num_workers: usize,
    },
}
