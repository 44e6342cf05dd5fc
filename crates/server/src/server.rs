//! The HTTP surface of `reprise serve`: its routes and layers, health, metrics,
//! the load-refresh loop, and the serve loop with graceful shutdown (shared by
//! `reprise route`).

use crate::state::AppState;
use crate::{chat, completions, render, tokenize};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use reprise_api::errors::ApiError;
use reprise_api::listener::ListenerLimits;
use reprise_api::middleware::{
    auth, method_not_allowed, not_found, request_id, stamp_arrival, version,
};
use reprise_api::serve::serve_until_signal;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The application: every route and layer.
pub fn app(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions/render", post(render::completions_render))
        .route("/v1/chat/completions/render", post(render::chat_render))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .route("/ping", get(ping).post(ping))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn(request_id))
        .layer(middleware::from_fn(stamp_arrival))
        .with_state(state)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let snaps = state.dispatcher.snapshots();
    let alive = snaps.iter().filter(|(s, r)| s.alive && *r).count();
    if alive == 0 {
        return ApiError::Unavailable("no worker is alive".into()).into_response();
    }
    Json(json!({"status": "ok", "workers": snaps.len(), "workers_alive": alive})).into_response()
}

/// vLLM's `/ping` (GET or POST): 200 with an empty body while a worker is alive.
async fn ping(State(state): State<Arc<AppState>>) -> Response {
    let alive = state
        .dispatcher
        .snapshots()
        .iter()
        .any(|(s, r)| s.alive && *r);
    if alive {
        StatusCode::OK.into_response()
    } else {
        ApiError::Unavailable("no worker is alive".into()).into_response()
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.model.models_json())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let policy = state.dispatcher.router().policy().name();
    let publisher = state.kv_publisher.as_ref().map(|p| {
        let (batches, dropped) = p.counts();
        crate::metrics::PublisherCounts { batches, dropped }
    });
    let text = state
        .metrics
        .render(policy, &state.dispatcher.snapshots(), publisher);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Serves until SIGTERM / ctrl-c, then drains: no new requests, in-flight ones
/// get `timeout` to finish, then the workers are told to exit.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    limits: ListenerLimits,
    timeout: Duration,
    ready_line: String,
) -> std::io::Result<()> {
    let refresher = tokio::spawn(refresh_loop(state.clone()));
    let drain_state = state.clone();
    serve_until_signal(
        app(state.clone()),
        listener,
        limits,
        timeout,
        ready_line,
        move || {
            drain_state.dispatcher.drain();
            drain_state.dispatcher.in_flight()
        },
    )
    .await?;
    refresher.abort();
    state.dispatcher.shutdown_workers();
    Ok(())
}

/// Keeps the router's load view fresh and notices dead workers.
async fn refresh_loop(d: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        d.dispatcher.refresh();
    }
}
