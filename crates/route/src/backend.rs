//! `reprise route`'s backend under the shared handlers (`reprise_api::app`): a
//! prepared request is forwarded to the best remote worker (`proxy.rs`); health and
//! metrics are those of the worker set (`remote.rs`).

use crate::metrics::RouteWorkerView;
use crate::remote::{Remote, RouteApp};
use axum::response::Response;
use reprise_api::app::{Backend, GenRequest};
use reprise_api::errors::ApiError;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Backend for Remote {
    const FORWARDS_BODY: bool = true;

    async fn generate(app: Arc<RouteApp>, req: GenRequest) -> Result<Response, ApiError> {
        crate::proxy::forward(app, req).await
    }

    fn health(&self) -> Result<Value, String> {
        let set = self.set();
        let healthy = set.healthy();
        if healthy == 0 {
            return Err("no worker is healthy".into());
        }
        Ok(json!({"status": "ok", "workers": set.workers.len(), "workers_healthy": healthy}))
    }

    fn metrics(app: &RouteApp) -> String {
        let b = &app.backend;
        let set = b.set();
        let views: Vec<RouteWorkerView> = set
            .workers
            .iter()
            .map(|w| {
                let s = w.scraped();
                RouteWorkerView {
                    url: w.spec.url.clone(),
                    healthy: w.healthy(),
                    inflight: w.inflight(),
                    running: s.running,
                    waiting: s.waiting,
                    kv_usage: s.kv_usage,
                    failures: w.failures.load(Ordering::Relaxed),
                    stream: w.stream_stats(),
                }
            })
            .collect();
        let policy = b.cfg.router.policy.name();
        let mut text = b.metrics.render(policy, &views);
        app.router_metrics
            .render(&mut text, policy, views.len(), app.admission.rejected());
        text
    }
}
