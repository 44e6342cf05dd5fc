//! `POST /tokenize` and `POST /detokenize` in vLLM's shape. The bodies are handled
//! by functions of the model's tokenizer side alone, so `reprise route` serves the
//! same endpoints without weights.

use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use reprise_api::body::JsonBody;
use reprise_api::errors::ApiError;
use reprise_api::model_info::HttpLimits;
use reprise_api::tokenize::{detokenize_body, tokenize_body};
use serde_json::Value;
use std::sync::Arc;

/// `{"model", "prompt", "add_special_tokens"}` (or `"messages"`) → `{"count", "max_model_len", "tokens"}`.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    state
        .cpu()
        .run(move || tokenize_body(&st.model, &body))
        .await
        .map(Json)
}

/// `{"model", "tokens"}` → `{"prompt"}`.
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    state
        .cpu()
        .run(move || detokenize_body(&st.model, &body))
        .await
        .map(Json)
}
