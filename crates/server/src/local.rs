//! The in-process workers behind `reprise serve`'s HTTP API, as the shared skeleton
//! holds them (`ServeApp`), and the loop keeping the router's view of them fresh.

use crate::dispatch::Dispatcher;
use crate::kv_publisher::KvPublisher;
use crate::metrics::Metrics;
use reprise_api::app::App;
use std::sync::Arc;
use std::time::Duration;

/// The in-process workers behind `reprise serve`'s HTTP API.
pub struct Local {
    /// Routing and submission.
    pub dispatcher: Dispatcher,
    /// Per-worker request metrics.
    pub metrics: Arc<Metrics>,
    /// The KV-event publisher, with `--kv-events-endpoint`.
    pub kv_publisher: Option<Arc<KvPublisher>>,
    /// `--request-timeout`.
    pub request_timeout: Option<Duration>,
}

/// `reprise serve`'s application state.
pub type ServeApp = App<Local>;

/// Keeps the router's load view fresh and notices dead workers.
pub async fn refresh_loop(app: Arc<ServeApp>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        app.backend.dispatcher.refresh();
    }
}
