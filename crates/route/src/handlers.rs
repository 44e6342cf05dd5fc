//! `reprise route`'s HTTP surface: generation requests are tokenized (and rendered)
//! here, once, for scoring, then forwarded unchanged; models, health, metrics,
//! tokenize and detokenize are served by the router itself.

use super::proxy::{admit, forward, Target};
use super::RouteState;
use crate::metrics::RouteWorkerView;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use reprise_api::body::{JsonBody, RawJson};
use reprise_api::errors::ApiError;
use reprise_api::middleware::{
    auth, method_not_allowed, not_found, request_id, stamp_arrival, version, Arrival,
};
use reprise_api::params::Fields;
use reprise_api::prompt::{chat_prompt, prompt_list};
use reprise_api::tokenize::{detokenize_body, tokenize_body};
use reprise_router::block_key::extra_bytes;
use serde_json::{json, Value};
use std::sync::Arc;

/// Every route and layer of `reprise route`.
pub fn app(state: Arc<RouteState>) -> Router {
    let protected = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::<RouteState>,
        ));
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .route("/ping", get(ping).post(ping))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(middleware::from_fn(request_id))
        .layer(middleware::from_fn(stamp_arrival))
        .with_state(state)
}

/// The key space of a request: its cache salt, and its model name when that names a
/// LoRA adapter rather than the base model (vLLM serves adapters under their names).
fn extra_of(state: &RouteState, f: &Fields) -> Result<Vec<u8>, ApiError> {
    let model = f.str("model")?;
    let lora = model.filter(|m| !state.model.is_served(Some(m)));
    Ok(extra_bytes(f.str("cache_salt")?, lora))
}

async fn completions(
    State(state): State<Arc<RouteState>>,
    arrival: Arrival,
    headers: HeaderMap,
    RawJson { bytes, value }: RawJson,
) -> Result<Response, ApiError> {
    let admission = admit(&state)?;
    let st = state.clone();
    let target = state
        .cpu
        .run(move || {
            let f = Fields::new(&value)?;
            let add_special = f.bool("add_special_tokens")?.unwrap_or(true);
            // A batch of prompts goes to one worker: the first prompt's.
            let tokens = prompt_list(&st.model, f.value("prompt"), add_special)?
                .into_iter()
                .next()
                .unwrap_or_default();
            Ok(Target {
                tokens,
                extra: extra_of(&st, &f)?,
            })
        })
        .await?;
    forward(
        state,
        "/v1/completions",
        bytes,
        &headers,
        arrival.0,
        target,
        admission,
    )
    .await
}

async fn chat_completions(
    State(state): State<Arc<RouteState>>,
    arrival: Arrival,
    headers: HeaderMap,
    RawJson { bytes, value }: RawJson,
) -> Result<Response, ApiError> {
    let admission = admit(&state)?;
    let st = state.clone();
    let target = state
        .cpu
        .run(move || {
            let f = Fields::new(&value)?;
            let tokens = chat_prompt(
                &st.model,
                &f,
                f.bool("add_special_tokens")?,
                reprise_api::tools::parse(&f)?.as_ref(),
            )?;
            Ok(Target {
                tokens,
                extra: extra_of(&st, &f)?,
            })
        })
        .await?;
    forward(
        state,
        "/v1/chat/completions",
        bytes,
        &headers,
        arrival.0,
        target,
        admission,
    )
    .await
}

async fn models(State(state): State<Arc<RouteState>>) -> Json<Value> {
    Json(state.model.models_json())
}

async fn tokenize(
    State(state): State<Arc<RouteState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    state
        .cpu
        .run(move || tokenize_body(&st.model, &body))
        .await
        .map(Json)
}

async fn detokenize(
    State(state): State<Arc<RouteState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    state
        .cpu
        .run(move || detokenize_body(&st.model, &body))
        .await
        .map(Json)
}

async fn health(State(state): State<Arc<RouteState>>) -> Response {
    let set = state.set();
    let healthy = set.healthy();
    if healthy == 0 {
        return ApiError::Unavailable("no worker is healthy".into()).into_response();
    }
    Json(json!({"status": "ok", "workers": set.workers.len(), "workers_healthy": healthy}))
        .into_response()
}

async fn ping(State(state): State<Arc<RouteState>>) -> Response {
    if state.set().healthy() > 0 {
        StatusCode::OK.into_response()
    } else {
        ApiError::Unavailable("no worker is healthy".into()).into_response()
    }
}

async fn metrics(State(state): State<Arc<RouteState>>) -> Response {
    let set = state.set();
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
                failures: w.failures.load(std::sync::atomic::Ordering::Relaxed),
                stream: w.stream_stats(),
            }
        })
        .collect();
    let text = state.metrics.render(state.cfg.router.policy.name(), &views);
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
