//! Forwarding one request: admission, a routing decision, the client's body sent
//! unchanged to the chosen worker, and its answer streamed back as it arrives (SSE
//! included; hyper reads from the worker only as fast as the client takes it). A
//! request whose worker fails before any byte reached the client (refused or reset
//! connection, no response headers within `--first-byte-timeout`, or a 429/5xx
//! answer) is retried once on the next-best worker; after that the client gets the
//! error, in OpenAI's shape.

use super::RouteState;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use reprise_api::errors::ApiError;
use reprise_api::middleware::WORKER_HEADER;
use reprise_router::{index::bit, Clock, RouteError, Router, SystemClock};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Attempts per request: the chosen worker, then the next best.
const ATTEMPTS: usize = 2;

/// Request headers passed on to the worker (the body is passed on unchanged).
const FORWARDED: [&str; 4] = ["authorization", "x-request-id", "accept", "user-agent"];

/// What to route by: the prompt's tokens and its key-space bytes (salt, LoRA).
pub struct Target {
    /// Prompt token ids (as the worker will see them).
    pub tokens: Vec<u32>,
    /// Extra bytes of the prompt's block keys.
    pub extra: Vec<u8>,
}

/// Tells the router when a forwarded request ends (its body's last byte, or the
/// client gone), so its speculative credits lapse.
pub struct Credited {
    router: Arc<Router>,
    worker: usize,
    target: Target,
    clock: SystemClock,
}

impl Drop for Credited {
    fn drop(&mut self) {
        let _ = self.router.request_done(
            self.worker,
            &self.target.tokens,
            &self.target.extra,
            self.clock.now(),
        );
    }
}

/// An admission slot, released when the response body is done.
pub struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes an admission slot, or 429 / 503.
pub fn admit(state: &RouteState) -> Result<Admission, ApiError> {
    if state.draining.load(Ordering::Acquire) {
        return Err(ApiError::Unavailable("router is shutting down".into()));
    }
    let prev = state.admitted.fetch_add(1, Ordering::AcqRel);
    let slot = Admission(state.admitted.clone());
    if prev >= state.cfg.max_queue {
        state
            .metrics
            .rejected_overloaded
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::Overloaded(state.cfg.max_queue));
    }
    Ok(slot)
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Forwards `body` to `path` on the best worker for `target`.
pub async fn forward(
    state: Arc<RouteState>,
    path: &'static str,
    body: Bytes,
    headers: &HeaderMap,
    arrival: Instant,
    target: Target,
    admission: Admission,
) -> Result<Response, ApiError> {
    let set = state.set();
    let router = set
        .router
        .clone()
        .ok_or_else(|| ApiError::Unavailable("no worker is configured".into()))?;
    let mut exclude = 0;
    let mut last_error = String::new();
    for attempt in 0..ATTEMPTS {
        let t0 = Instant::now();
        let decision =
            match router.route_excluding(&target.tokens, &target.extra, state.clock.now(), exclude)
            {
                Ok(d) => d,
                Err(RouteError::NoWorkerAvailable) if attempt == 0 => {
                    return Err(ApiError::Unavailable("no worker is healthy".into()))
                }
                Err(RouteError::NoWorkerAvailable) => break,
                Err(e) => return Err(ApiError::Internal(format!("routing failed: {e}"))),
            };
        let m = &state.metrics;
        m.decision_seconds.observe(t0.elapsed().as_secs_f64());
        m.matched_blocks.observe(decision.chosen_matched() as f64);
        if let Some(c) = m.decisions.get(decision.worker) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let Some(w) = set.workers.get(decision.worker).cloned() else {
            return Err(ApiError::Internal(format!(
                "router chose unknown worker {}",
                decision.worker
            )));
        };
        let inflight = w.begin();
        set.report_load(&w);
        let mut req =
            hyper::Request::post(w.url(path)).header(header::CONTENT_TYPE, "application/json");
        for name in FORWARDED {
            if let Some(v) = headers.get(name) {
                req = req.header(name, v);
            }
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| ApiError::Internal(format!("building the upstream request: {e}")))?;
        if attempt == 0 {
            m.forward_seconds.observe(arrival.elapsed().as_secs_f64());
        }
        let sent =
            tokio::time::timeout(state.cfg.first_byte_timeout, state.client.request(req)).await;
        let failure = match sent {
            Ok(Ok(resp)) if !(retryable(resp.status()) && attempt + 1 < ATTEMPTS) => {
                let credited = Credited {
                    router,
                    worker: decision.worker,
                    target,
                    clock: state.clock,
                };
                return Ok(stream_back(
                    resp,
                    decision.worker,
                    (inflight, credited),
                    admission,
                ));
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
                w.index, state.cfg.first_byte_timeout
            ),
        };
        w.failures.fetch_add(1, Ordering::Relaxed);
        let _ = router.request_done(
            decision.worker,
            &target.tokens,
            &target.extra,
            state.clock.now(),
        );
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
    inflight: (super::worker::InFlight, Credited),
    admission: Admission,
) -> Response {
    let (parts, body) = resp.into_parts();
    // The guards live as long as the body: a request is in flight until its last byte.
    let guards = (inflight, admission);
    let stream = body.into_data_stream().map(move |chunk| {
        let _ = &guards;
        chunk
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
