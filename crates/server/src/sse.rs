//! Server-sent events: a task drives the [`Generation`] and pushes `data:` lines
//! into a small channel that is the response body. When the client goes away the
//! channel closes, the task stops and drops the generation, whose guard cancels
//! the request on its worker (its KV blocks are freed at once).

use crate::generate::{Generation, Output, Usage};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use reprise_api::errors::ApiError;
use reprise_api::middleware::WORKER_HEADER;
use serde_json::Value;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tracing::Instrument;

/// Turns generation outputs into the chunk objects of one API.
pub trait ChunkFormat: Send + 'static {
    /// Chunks sent before any token (chat: the role).
    fn start(&mut self) -> Vec<Value>;
    /// Chunks for a batch of outputs.
    fn outputs(&mut self, outs: Vec<Output>) -> Vec<Value>;
    /// The final usage chunk.
    fn usage(&mut self, usage: Usage) -> Value;
}

/// One SSE event carrying `v`.
pub fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

struct RxStream(mpsc::Receiver<Bytes>);

impl futures_util::Stream for RxStream {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(Ok))
    }
}

/// Adds `x-reprise-worker` to a response.
pub fn with_worker(mut resp: Response, worker: usize) -> Response {
    if let Ok(v) = HeaderValue::from_str(&worker.to_string()) {
        resp.headers_mut().insert(WORKER_HEADER, v);
    }
    resp
}

/// Streams `gen` as SSE in format `fmt`, ending with `data: [DONE]`.
pub fn stream(mut gen: Generation, mut fmt: impl ChunkFormat, include_usage: bool) -> Response {
    let worker = gen.worker();
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let task = async move {
        for v in fmt.start() {
            if tx.send(data(&v)).await.is_err() {
                return;
            }
        }
        let mut failed = false;
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return, // client gone: dropping `gen` cancels the request
                next = gen.next() => next,
            };
            let chunks = match next {
                None => break,
                Some(Ok(outs)) => fmt.outputs(outs),
                Some(Err(e)) => {
                    failed = true;
                    vec![error_event(&e)]
                }
            };
            for v in chunks {
                if tx.send(data(&v)).await.is_err() {
                    return;
                }
            }
            if failed {
                break;
            }
        }
        if include_usage && !failed {
            if let Some(u) = gen.usage() {
                if tx.send(data(&fmt.usage(u))).await.is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    };
    // The request's log span follows the stream.
    tokio::spawn(task.in_current_span());
    let resp = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(RxStream(rx)),
    )
        .into_response();
    with_worker(resp, worker)
}

fn error_event(e: &ApiError) -> Value {
    e.body()
}
