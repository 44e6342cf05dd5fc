//! What every request passes through, in `serve` and in `route`: its arrival
//! stamp, its id (`x-request-id`), the API-key check, and the fallbacks and
//! `/version` both apps share.

use crate::errors::ApiError;
use crate::model_info::HttpLimits;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The response header naming the worker that served a request.
pub const WORKER_HEADER: &str = "x-reprise-worker";

/// The header carrying a request's id, echoed on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request's id: the client's `x-request-id`, or one made up on arrival. It names
/// the response (`cmpl-<id>`), the request's log lines and the worker's.
#[derive(Clone, Debug)]
pub struct RequestId {
    /// The id.
    pub id: Arc<str>,
    /// Whether the client sent it (a body's vLLM `request_id` field only counts otherwise).
    pub from_client: bool,
}

impl RequestId {
    /// The id to use: the header's, else the body's `request_id`, else the made-up one.
    pub fn resolve(&self, body_request_id: Option<&str>) -> Arc<str> {
        match body_request_id {
            Some(b) if !self.from_client && valid_request_id(b) => b.into(),
            _ => self.id.clone(),
        }
    }
}

fn valid_request_id(s: &str) -> bool {
    (1..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads or makes up the request id, puts it on the request (so `reprise route`
/// forwards it), in the log span of everything the request does, and on the response.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .map(|v| v.to_str().map(str::to_string));
    let (id, from_client) = match given {
        None => (crate::ids::new_request_id(), false),
        Some(Ok(s)) if valid_request_id(&s) => (s, true),
        Some(_) => {
            return ApiError::bad_request(
                "the x-request-id header must be 1 to 256 visible ASCII characters",
            )
            .into_response()
        }
    };
    let Ok(value) = HeaderValue::from_str(&id) else {
        return ApiError::Internal("request id is not a header value".into()).into_response();
    };
    req.headers_mut().insert(REQUEST_ID_HEADER, value.clone());
    let span = tracing::info_span!("request", request_id = %id, path = %req.uri().path());
    req.extensions_mut().insert(RequestId {
        id: id.into(),
        from_client,
    });
    let mut resp = next.run(req).instrument(span).await;
    // A handler that took the body's `request_id` has set the header already.
    resp.headers_mut().entry(REQUEST_ID_HEADER).or_insert(value);
    resp
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId {
                id: crate::ids::new_request_id().into(),
                from_client: false,
            }))
    }
}

/// Sets `x-request-id` on a generation response (the id may be the body's).
pub fn with_request_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// When a request arrived, before its body was read, parsed and tokenized: where
/// vLLM starts its TTFT and end-to-end clocks.
#[derive(Clone, Copy, Debug)]
pub struct Arrival(pub Instant);

/// Stamps [`Arrival`] on every request.
pub async fn stamp_arrival(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(Arrival(Instant::now()));
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for Arrival {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Arrival>()
            .copied()
            .unwrap_or(Arrival(Instant::now())))
    }
}

/// Checks `Authorization: Bearer <key>` when a key is configured.
pub async fn auth<S: HttpLimits>(
    State(state): State<Arc<S>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = state.api_key() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// vLLM's `/version`.
pub async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

/// 404 for an unknown route.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_string())
}

/// 405 for a known route with another method.
pub async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(uri.path().to_string())
}
