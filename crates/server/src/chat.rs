//! `POST /v1/chat/completions`: messages rendered with the model's own chat
//! template (as HF `apply_chat_template(..., add_generation_prompt=True)`), then
//! the same generation path as completions.

use crate::generate::{
    finish_reason_str, prepare, stop_reason_json, Generation, Output, TokenInfo, Usage,
};
use crate::sse::{self, ChunkFormat};
use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use reprise_api::body::BodyBytes;
use reprise_api::errors::ApiError;
use reprise_api::middleware::{with_request_id, Arrival, RequestId};
use reprise_api::params::Endpoint;
use reprise_api::prompt::chat_prompt;
use serde_json::{json, Value};
use std::sync::Arc;

/// The handler: admission first, then parsing, the template and tokenization on
/// the CPU pool.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    arrival: Arrival,
    rid: RequestId,
    BodyBytes(bytes): BodyBytes,
) -> Result<Response, ApiError> {
    let (permit, opts, prompt) = prepare(&state, bytes, Endpoint::Chat, None, |model, f, opts| {
        chat_prompt(model, f, opts.add_special_tokens)
    })
    .await?;
    let request_id = rid.resolve(opts.request_id.as_deref());
    let want_logprobs = opts.params.logprobs.is_some();
    let gen = Generation::start(&state, permit, prompt, &opts, &request_id, arrival.0).await?;
    let worker = gen.worker();
    let id = format!("chatcmpl-{request_id}");
    let model = state.model.served_model_name.clone();
    let created = reprise_api::unix_now();
    if opts.stream {
        let fmt = ChatChunks {
            id,
            model,
            created,
            n: opts.n,
        };
        let resp = sse::stream(gen, fmt, opts.include_usage);
        return Ok(with_request_id(resp, &request_id));
    }
    let c = match gen.collect().await {
        Ok(c) => c,
        // A worker's failure still names the worker, as every generation response does.
        Err(e) => {
            let resp = sse::with_worker(e.into_response(), worker);
            return Ok(with_request_id(resp, &request_id));
        }
    };
    let choices: Vec<Value> = (0..opts.n)
        .map(|i| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": c.texts[i]},
                "logprobs": if want_logprobs { json!({"content": logprob_entries(&c.logprobs[i])}) } else { Value::Null },
                "finish_reason": c.finish[i].map(finish_reason_str),
                "stop_reason": stop_reason_json(&c.stop_reason[i]),
            })
        })
        .collect();
    let body = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": choices, "usage": c.usage.to_json(),
    });
    let resp = sse::with_worker(Json(body).into_response(), worker);
    Ok(with_request_id(resp, &request_id))
}

fn logprob_entries(infos: &[TokenInfo]) -> Vec<Value> {
    infos
        .iter()
        .map(|t| {
            json!({
                "token": t.token, "logprob": t.logprob, "bytes": t.token.as_bytes(),
                "top_logprobs": t.top.iter().map(|(s, l)| json!({"token": s, "logprob": l, "bytes": s.as_bytes()})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

struct ChatChunks {
    id: String,
    model: String,
    created: u64,
    n: usize,
}

impl ChatChunks {
    fn chunk(&self, choice: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [choice]})
    }
}

impl ChunkFormat for ChatChunks {
    fn start(&mut self) -> Vec<Value> {
        (0..self.n)
            .map(|i| self.chunk(json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})))
            .collect()
    }

    fn outputs(&mut self, outs: Vec<Output>) -> Vec<Value> {
        outs.into_iter()
            .map(|o| match o {
                Output::Delta { index, text, logprobs } => {
                    let lp = if logprobs.is_empty() { Value::Null } else { json!({"content": logprob_entries(&logprobs)}) };
                    self.chunk(json!({"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}))
                }
                Output::Finish { index, reason, stop_reason } => self.chunk(
                    json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish_reason_str(reason), "stop_reason": stop_reason_json(&stop_reason)}),
                ),
            })
            .collect()
    }

    fn usage(&mut self, usage: Usage) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [], "usage": usage.to_json()})
    }
}
