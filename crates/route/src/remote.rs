//! The remote workers behind `reprise route`'s HTTP API, as the shared skeleton
//! holds them (`RouteApp`): the worker set with its router, the HTTP client that
//! reaches them, and the router's own metrics.

use crate::config::RouteConfig;
use crate::metrics::RouteMetrics;
use crate::pool::WorkerSet;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use parking_lot::RwLock;
use reprise_api::app::App;
use reprise_router::SystemClock;
use std::sync::Arc;

/// The remote workers behind `reprise route`'s HTTP API.
pub struct Remote {
    /// Validated options.
    pub cfg: RouteConfig,
    set: RwLock<Arc<WorkerSet>>,
    /// Pooled HTTP/1.1 connections to the workers.
    pub client: Client<HttpConnector, Full<Bytes>>,
    /// The router's own metrics.
    pub metrics: RouteMetrics,
    /// The router's time.
    pub clock: SystemClock,
}

/// `reprise route`'s application state.
pub type RouteApp = App<Remote>;

impl Remote {
    /// The workers of `set`, reached through `client`.
    pub fn new(
        cfg: RouteConfig,
        set: WorkerSet,
        client: Client<HttpConnector, Full<Bytes>>,
    ) -> Self {
        Self {
            cfg,
            set: RwLock::new(Arc::new(set)),
            client,
            metrics: RouteMetrics::default(),
            clock: SystemClock::new(),
        }
    }

    /// The current worker set.
    pub fn set(&self) -> Arc<WorkerSet> {
        self.set.read().clone()
    }

    /// Replaces the worker set (the workers file changed).
    pub fn replace_set(&self, set: WorkerSet) {
        *self.set.write() = Arc::new(set);
    }
}
