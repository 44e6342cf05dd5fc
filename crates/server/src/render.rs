//! vLLM's render endpoints: the token ids a request would be served with, without
//! generating, so an outside router (llm-d's token producer, `reprise route`) can
//! tokenize with this server's own tokenizer and chat template.
//!
//! The shape is vLLM's `GenerateRequest`: `/v1/completions/render` answers a list (one
//! per prompt), `/v1/chat/completions/render` one object; each carries `token_ids`
//! and the resolved `sampling_params`. Requests are validated as the generating
//! endpoints validate them.

use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use reprise_api::body::JsonBody;
use reprise_api::errors::ApiError;
use reprise_api::model_info::ModelInfo;
use reprise_api::params::{parse_common, resolve_max_tokens, Endpoint, Fields, GenOptions};
use reprise_api::prompt::{chat_prompt, prompt_list};
use serde_json::{json, Value};
use std::sync::Arc;

/// `POST /v1/completions/render`.
pub async fn completions_render(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    state
        .cpu
        .run(move || {
            let f = Fields::new(&body)?;
            let opts = parse_common(&f, Endpoint::Completions, &st.parse_limits)?;
            st.model.check_model(opts.model.as_deref())?;
            let add_special = opts.add_special_tokens.unwrap_or(true);
            let prompts = prompt_list(&st.model, f.value("prompt"), add_special)?;
            let out = prompts
                .into_iter()
                .map(|ids| generate_request(&st.model, "cmpl", &opts, ids, Some(16)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(Value::Array(out)))
        })
        .await
}

/// `POST /v1/chat/completions/render`.
pub async fn chat_render(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let st = state.clone();
    state
        .cpu
        .run(move || {
            let f = Fields::new(&body)?;
            let opts = parse_common(&f, Endpoint::Chat, &st.parse_limits)?;
            st.model.check_model(opts.model.as_deref())?;
            let ids = chat_prompt(&st.model, &f, opts.add_special_tokens, opts.tools.as_ref())?;
            Ok(Json(generate_request(
                &st.model, "chatcmpl", &opts, ids, None,
            )?))
        })
        .await
}

fn generate_request(
    model: &ModelInfo,
    prefix: &str,
    opts: &GenOptions,
    token_ids: Vec<u32>,
    default_max_tokens: Option<usize>,
) -> Result<Value, ApiError> {
    let mut token_ids = token_ids;
    if let Some(t) = opts.truncation {
        t.apply(&mut token_ids, model.max_model_len);
    }
    let max_tokens = resolve_max_tokens(
        opts.max_tokens,
        default_max_tokens,
        token_ids.len(),
        model.max_model_len,
    )?;
    let p = &opts.params;
    let salt = (!opts.cache_salt.is_empty())
        .then(|| String::from_utf8_lossy(&opts.cache_salt).into_owned());
    Ok(json!({
        "request_id": format!("{prefix}-{}", reprise_api::request_id()),
        "token_ids": token_ids,
        "features": null,
        "sampling_params": {
            "n": opts.n,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": if p.top_k == 0 { -1 } else { p.top_k as i64 },
            "seed": p.seed,
            "stop": p.stop,
            "stop_token_ids": p.stop_token_ids,
            "ignore_eos": p.ignore_eos,
            "max_tokens": max_tokens,
            "logprobs": p.logprobs,
            "skip_special_tokens": p.skip_special_tokens,
            "spaces_between_special_tokens": p.spaces_between_special_tokens,
            "include_stop_str_in_output": p.include_stop_str_in_output,
        },
        "model": model.served_model_name,
        "stream": opts.stream,
        "stream_options": if opts.stream { json!({"include_usage": opts.include_usage}) } else { Value::Null },
        "cache_salt": salt,
        "priority": 0,
        "kv_transfer_params": null,
    }))
}
