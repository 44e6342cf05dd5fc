//! Forwarding one request: admission, a routing decision, the client's body sent
//! unchanged to the chosen worker, and its answer streamed back as it arrives (SSE
//! included; hyper reads from the worker only as fast as the client takes it). A
//! request whose worker fails before any byte reached the client (refused or reset
//! connection, no response headers within `--first-byte-timeout`, or a 429/5xx
//! answer) is retried once on the next-best worker; after that the client gets the
//! error, in OpenAI's shape.

use crate::remote::RouteApp;
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use reprise_api::admission::Routed;
use reprise_api::app::GenRequest;
use reprise_api::errors::ApiError;
use reprise_api::middleware::WORKER_HEADER;
use reprise_router::{index::bit, Clock, RouteError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Attempts per request: the chosen worker, then the next best.
const ATTEMPTS: usize = 2;

/// Request headers passed on to the worker (the body is passed on unchanged).
const FORWARDED: [&str; 4] = ["authorization", "x-request-id", "accept", "user-agent"];

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Forwards a prepared request's body unchanged to the best worker for its prompt.
pub async fn forward(app: Arc<RouteApp>, req: GenRequest) -> Result<Response, ApiError> {
    let path = match req.endpoint {
        reprise_api::params::Endpoint::Completions => "/v1/completions",
        reprise_api::params::Endpoint::Chat => "/v1/chat/completions",
    };
    let b = &app.backend;
    let set = b.set();
    let router = set
        .router
        .clone()
        .ok_or_else(|| ApiError::Unavailable("no worker is configured".into()))?;
    let mut exclude = 0;
    let mut last_error = String::new();
    for attempt in 0..ATTEMPTS {
        let t0 = Instant::now();
        let decision = match router.route_excluding(&req.prompt, &req.extra, b.clock.now(), exclude)
        {
            Ok(d) => d,
            Err(RouteError::NoWorkerAvailable) if attempt == 0 => {
                return Err(ApiError::Unavailable("no worker is healthy".into()))
            }
            Err(RouteError::NoWorkerAvailable) => break,
            Err(e) => return Err(ApiError::Internal(format!("routing failed: {e}"))),
        };
        app.router_metrics.observe(&decision, t0.elapsed());
        let m = &b.metrics;
        let Some(w) = set.workers.get(decision.worker).cloned() else {
            return Err(ApiError::Internal(format!(
                "router chose unknown worker {}",
                decision.worker
            )));
        };
        let inflight = w.begin();
        set.report_load(&w);
        let mut up =
            hyper::Request::post(w.url(path)).header(header::CONTENT_TYPE, "application/json");
        for name in FORWARDED {
            if let Some(v) = req.headers.get(name) {
                up = up.header(name, v);
            }
        }
        let up = up
            .body(Full::new(req.body.clone()))
            .map_err(|e| ApiError::Internal(format!("building the upstream request: {e}")))?;
        if attempt == 0 {
            m.forward_seconds
                .observe(req.arrival.elapsed().as_secs_f64());
        }
        let sent = tokio::time::timeout(b.cfg.first_byte_timeout, b.client.request(up)).await;
        let failure = match sent {
            Ok(Ok(resp)) if !(retryable(resp.status()) && attempt + 1 < ATTEMPTS) => {
                let routed =
                    Routed::new(req.permit, router, decision.worker, req.prompt, req.extra);
                return Ok(stream_back(resp, decision.worker, (inflight, routed)));
            }
            Ok(Ok(resp)) => format!("worker {} answered {}", w.index, resp.status()),
            Ok(Err(e)) => {
                if e.is_connect() {
                    set.mark_down(&w);
                }
                format!("worker {} ({}) failed: {e}", w.index, w.spec.url)
            }
            Err(_) => format!(
                "worker {} sent no response within {:?}",
                w.index, b.cfg.first_byte_timeout
            ),
        };
        w.failures.fetch_add(1, Ordering::Relaxed);
        let _ = router.request_done(decision.worker, &req.prompt, &req.extra, b.clock.now());
        tracing::warn!(worker = w.index, attempt, "{failure}");
        drop(inflight);
        set.report_load(&w);
        exclude |= bit(decision.worker);
        if attempt + 1 < ATTEMPTS {
            m.retries.fetch_add(1, Ordering::Relaxed);
        }
        last_error = failure;
    }
    Err(ApiError::Upstream(format!(
        "no worker could serve the request: {last_error}"
    )))
}

/// The worker's response, streamed to the client, with `x-reprise-worker` naming the
/// router's worker (the worker's own header, naming its inner worker, is kept as
/// `x-reprise-upstream-worker`).
fn stream_back(
    resp: hyper::Response<hyper::body::Incoming>,
    worker: usize,
    guards: (crate::worker::InFlight, Routed),
) -> Response {
    let (parts, body) = resp.into_parts();
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    // The guards live as long as the body: a request is in flight until its last byte.
    // A worker that dies mid-stream ends an event stream as `serve` ends a failed
    // one, with an OpenAI-shaped error event and `[DONE]`, never a bare cut.
    let stream = body.into_data_stream().scan(false, move |ended, chunk| {
        let _ = &guards;
        let item = match chunk {
            _ if *ended => None,
            Err(e) if sse => {
                *ended = true;
                let err = ApiError::Upstream(format!("worker {worker} failed mid-stream: {e}"));
                Some(Ok(axum::body::Bytes::from(format!(
                    "data: {}\n\ndata: [DONE]\n\n",
                    err.body()
                ))))
            }
            other => Some(other),
        };
        futures_util::future::ready(item)
    });
    let mut out = Response::new(Body::from_stream(stream));
    *out.status_mut() = parts.status;
    let headers = out.headers_mut();
    for (k, v) in parts.headers.iter() {
        if matches!(
            k.as_str(),
            "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "proxy-connection"
        ) {
            continue;
        }
        if k.as_str() == WORKER_HEADER {
            headers.insert("x-reprise-upstream-worker", v.clone());
            continue;
        }
        headers.append(k.clone(), v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&worker.to_string()) {
        headers.insert(WORKER_HEADER, v);
    }
    out.into_response()
}
