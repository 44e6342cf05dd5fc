//! `POST /v1/chat/completions`: messages rendered with the model's own chat
//! template (as HF `apply_chat_template(..., add_generation_prompt=True)`), then
//! the same generation path as completions.

use crate::body::BodyBytes;
use crate::errors::ApiError;
use crate::generate::{
    finish_reason_str, prepare, stop_reason_json, Generation, Output, TokenInfo, Usage,
};
use crate::params::{kind, Endpoint, Fields};
use crate::server::{with_request_id, Arrival, RequestId};
use crate::sse::{self, ChunkFormat};
use crate::state::{AppState, ModelInfo};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use reprise_engine::chat_template::ChatMessage;
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
    let created = crate::unix_now();
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

/// The token ids of a chat request's `messages` through the model's template
/// (`add_generation_prompt` and `add_special_tokens` as the request says).
pub fn chat_prompt(
    model: &ModelInfo,
    f: &Fields,
    add_special_tokens: Option<bool>,
) -> Result<Vec<u32>, ApiError> {
    let messages = parse_messages(f.value("messages"))?;
    let add_generation_prompt = f.bool("add_generation_prompt")?.unwrap_or(true);
    render_and_tokenize(
        model,
        &messages,
        add_generation_prompt,
        add_special_tokens.unwrap_or(false),
    )
}

/// Messages as the template sees them: role and text content. Content may be a
/// string, null, or a list of `{"type": "text", "text": ...}` parts.
pub fn parse_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let bad = |m: String| ApiError::bad("messages", m);
    let arr = match v {
        None => return Err(bad("messages is required".into())),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(bad("messages must not be empty".into()))
        }
        Some(Value::Array(a)) => a,
        Some(other) => return Err(bad(format!("messages must be a list, got {}", kind(other)))),
    };
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let obj = m
                .as_object()
                .ok_or_else(|| bad(format!("messages[{i}] must be an object")))?;
            let role = obj
                .get("role")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad(format!("messages[{i}].role must be a non-empty string")))?;
            let content = match obj.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            _ => {
                                return Err(bad(format!(
                                    "messages[{i}].content: only text parts are supported"
                                )))
                            }
                        }
                    }
                    text
                }
                Some(other) => {
                    return Err(bad(format!(
                        "messages[{i}].content must be a string or a list of parts, got {}",
                        kind(other)
                    )))
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// Renders the messages with the model's template and tokenizes the result (the
/// template writes the special tokens itself; `add_special_tokens` adds the
/// tokenizer's own on top, as vLLM's option does).
pub fn render_and_tokenize(
    model: &ModelInfo,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    add_special_tokens: bool,
) -> Result<Vec<u32>, ApiError> {
    let template = model.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no chat template; use /v1/completions")
    })?;
    let text = template
        .render(messages, add_generation_prompt)
        .map_err(|e| ApiError::bad("messages", e.to_string()))?;
    model
        .tokenizer
        .encode(&text, add_special_tokens)
        .map_err(|e| ApiError::Internal(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_shapes() {
        let m = parse_messages(Some(&json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null}
        ])))
        .unwrap();
        assert_eq!(m[1].content, "ab");
        assert_eq!(m[2].content, "");
        for bad in [
            json!(null),
            json!([]),
            json!("hi"),
            json!([{"content": "x"}]),
            json!([{"role": "user", "content": 5}]),
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        ] {
            let v = if bad.is_null() { None } else { Some(&bad) };
            assert_eq!(
                parse_messages(v).unwrap_err().status().as_u16(),
                400,
                "{bad}"
            );
        }
    }
}
