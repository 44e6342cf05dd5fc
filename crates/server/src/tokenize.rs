//! `POST /tokenize` and `POST /detokenize` in vLLM's shape.

use crate::body::JsonBody;
use crate::chat::{parse_messages, render_and_tokenize};
use crate::errors::ApiError;
use crate::params::{kind, Fields};
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// `{"model", "prompt", "add_special_tokens"}` (or `"messages"`) → `{"count", "max_model_len", "tokens"}`.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let f = Fields::new(&body)?;
    state.check_model(f.str("model")?)?;
    let tokens = if f.value("messages").is_some() {
        let messages = parse_messages(f.value("messages"))?;
        let add_generation_prompt = f.bool("add_generation_prompt")?.unwrap_or(true);
        render_and_tokenize(&state, &messages, add_generation_prompt)?
    } else {
        let prompt = f
            .str("prompt")?
            .ok_or_else(|| ApiError::bad("prompt", "prompt (a string) or messages is required"))?;
        let add_special = f.bool("add_special_tokens")?.unwrap_or(true);
        state
            .tokenizer
            .encode(prompt, add_special)
            .map_err(|e| ApiError::Internal(e.to_string()))?
    };
    Ok(Json(
        json!({"count": tokens.len(), "max_model_len": state.max_model_len, "tokens": tokens}),
    ))
}

/// `{"model", "tokens"}` → `{"prompt"}`.
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let f = Fields::new(&body)?;
    state.check_model(f.str("model")?)?;
    let ids: Vec<u32> = match f.value("tokens") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        ApiError::bad("tokens", "tokens must be a list of non-negative integers")
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::bad(
                "tokens",
                format!("tokens must be a list, got {}", kind(other)),
            ))
        }
        None => return Err(ApiError::bad("tokens", "tokens is required")),
    };
    state.check_token_ids(&ids, "tokens")?;
    let prompt = state
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({"prompt": prompt})))
}
