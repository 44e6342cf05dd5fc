//! `reprise serve`'s backend under the shared handlers (`reprise_api::app`): a
//! prepared request is routed to an in-process worker (`dispatch.rs`), its tokens
//! become text (`generate.rs`) and that text an OpenAI response (`completions.rs`,
//! `chat.rs`, streamed by `sse.rs`).

use crate::local::{Local, ServeApp};
use crate::metrics::PublisherCounts;
use crate::{chat, completions};
use axum::response::Response;
use reprise_api::app::{Backend, GenRequest};
use reprise_api::errors::ApiError;
use reprise_api::params::Endpoint;
use serde_json::{json, Value};
use std::sync::Arc;

impl Backend for Local {
    const FORWARDS_BODY: bool = false;

    async fn generate(app: Arc<ServeApp>, req: GenRequest) -> Result<Response, ApiError> {
        match req.endpoint {
            Endpoint::Completions => completions::respond(app, req).await,
            Endpoint::Chat => chat::respond(app, req).await,
        }
    }

    fn health(&self) -> Result<Value, String> {
        let snaps = self.dispatcher.snapshots();
        let alive = snaps.iter().filter(|(s, r)| s.alive && *r).count();
        if alive == 0 {
            return Err("no worker is alive".into());
        }
        Ok(json!({"status": "ok", "workers": snaps.len(), "workers_alive": alive}))
    }

    fn metrics(app: &ServeApp) -> String {
        let b = &app.backend;
        let publisher = b.kv_publisher.as_ref().map(|p| {
            let (batches, dropped) = p.counts();
            PublisherCounts { batches, dropped }
        });
        let mut text = b.metrics.render(&b.dispatcher.snapshots(), publisher);
        app.router_metrics.render(
            &mut text,
            b.dispatcher.router().policy().name(),
            b.dispatcher.num_workers(),
            app.admission.rejected(),
        );
        text
    }
}
