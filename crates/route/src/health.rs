//! Health checks (`GET /health`) and load scrapes (`GET /metrics`, vLLM's names) of
//! every worker, each on its own interval, concurrently over the workers.

use crate::remote::{Remote, RouteApp};
use crate::worker::{RemoteWorker, Scraped};
use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::Duration;

/// Between load scrapes of a worker.
pub const SCRAPE_INTERVAL: Duration = Duration::from_millis(300);

/// `GET url` within `timeout`: the status and body, or `None` when unreachable.
async fn get(state: &Remote, url: &str, timeout: Duration) -> Option<(u16, Bytes)> {
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let fut = async {
        let resp = state.client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

/// Checks every worker's `/health` each `interval`, forever.
pub async fn health_loop(app: Arc<RouteApp>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // A check may take up to four intervals (at most a second) before it fails.
    let timeout = (interval * 4).min(Duration::from_secs(1));
    loop {
        tick.tick().await;
        check_all(&app.backend, timeout).await;
    }
}

/// One round of health checks.
pub async fn check_all(state: &Remote, timeout: Duration) {
    let set = state.set();
    join_all(set.workers.iter().map(|w| {
        let set = set.clone();
        async move {
            let ok = probe(state, w, timeout).await;
            set.record_check(w, ok);
        }
    }))
    .await;
}

/// Whether `w` answers `GET /health` with 200 within `timeout`.
pub async fn probe(state: &Remote, w: &RemoteWorker, timeout: Duration) -> bool {
    matches!(get(state, &w.url("/health"), timeout).await, Some((200, _)))
}

/// Scrapes every worker's `/metrics` each [`SCRAPE_INTERVAL`], forever.
pub async fn scrape_loop(app: Arc<RouteApp>) {
    let state = &app.backend;
    let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let set = state.set();
        join_all(set.workers.iter().map(|w| {
            let set = set.clone();
            async move {
                if let Some((200, body)) =
                    get(state, &w.url("/metrics"), Duration::from_secs(1)).await
                {
                    w.set_scraped(Scraped::parse(&String::from_utf8_lossy(&body)));
                    set.report_load(w);
                }
            }
        }))
        .await;
    }
}
