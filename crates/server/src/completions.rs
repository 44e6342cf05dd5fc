//! `POST /v1/completions`: a prompt (text or token ids) in, text out.

use crate::body::JsonBody;
use crate::errors::ApiError;
use crate::generate::{finish_reason_str, Generation, Output, TokenInfo, Usage};
use crate::params::{logprobs_count, parse_common, resolve_max_tokens, Fields};
use crate::server::Arrival;
use crate::sse::{self, ChunkFormat};
use crate::state::{AppState, ModelInfo};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Default `max_tokens` of the legacy completions API.
const DEFAULT_MAX_TOKENS: usize = 16;

/// The handler.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    arrival: Arrival,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let f = Fields::new(&body)?;
    let mut opts = parse_common(&f, &["max_tokens"], state.model.vocab_size)?;
    state.model.check_model(opts.model.as_deref())?;
    if f.bool("echo")?.unwrap_or(false) {
        return Err(ApiError::bad("echo", "echo is not supported"));
    }
    if f.str("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad("suffix", "suffix is not supported"));
    }
    let logprobs = logprobs_count(f.int("logprobs")?, "logprobs")?;
    let prompt = prompt_tokens(&state.model, f.value("prompt"))?;
    let max_tokens = resolve_max_tokens(
        opts.max_tokens,
        Some(DEFAULT_MAX_TOKENS),
        prompt.len(),
        state.model.max_model_len,
    )?;
    opts.params.max_tokens = max_tokens;
    opts.params.logprobs = logprobs;
    let gen = Generation::start(&state, prompt, &opts, logprobs.is_some(), arrival.0).await?;
    let worker = gen.worker();
    let id = format!("cmpl-{}", crate::request_id());
    let model = state.model.served_model_name.clone();
    let created = crate::unix_now();
    if opts.stream {
        let fmt = CompletionChunks {
            id,
            model,
            created,
            offsets: vec![0; opts.n],
        };
        return Ok(sse::stream(gen, fmt, opts.include_usage));
    }
    let c = match gen.collect().await {
        Ok(c) => c,
        // A worker's failure still names the worker, as every generation response does.
        Err(e) => return Ok(sse::with_worker(e.into_response(), worker)),
    };
    let choices: Vec<Value> = (0..opts.n)
        .map(|i| {
            let lp = logprobs.map(|_| logprobs_json(&c.logprobs[i], &mut 0));
            json!({
                "index": i,
                "text": c.texts[i],
                "logprobs": lp,
                "finish_reason": c.finish[i].map(finish_reason_str),
            })
        })
        .collect();
    let body = json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": choices, "usage": c.usage.to_json(),
    });
    Ok(sse::with_worker(Json(body).into_response(), worker))
}

/// The prompt's token ids: a string, a list of token ids, or a one-element list of either.
fn prompt_tokens(model: &ModelInfo, v: Option<&Value>) -> Result<Vec<u32>, ApiError> {
    let mut all = prompt_list(model, v)?;
    if all.len() != 1 {
        return Err(ApiError::bad(
            "prompt",
            format!(
                "a list of {} prompts is not supported; send one request per prompt",
                all.len()
            ),
        ));
    }
    Ok(all.remove(0))
}

/// Every prompt's token ids: a string, a list of token ids, or a list of either.
pub fn prompt_list(model: &ModelInfo, v: Option<&Value>) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = |m: &str| ApiError::bad("prompt", m.to_string());
    match v {
        Some(Value::Array(a))
            if !a.is_empty() && a.iter().all(|x| x.is_string() || x.is_array()) =>
        {
            a.iter().map(|p| one_prompt(model, Some(p))).collect()
        }
        Some(Value::Array(a)) if !a.iter().all(Value::is_number) => Err(bad(
            "prompt must be a string, a list of token ids, or a list of either",
        )),
        other => Ok(vec![one_prompt(model, other)?]),
    }
}

fn one_prompt(model: &ModelInfo, v: Option<&Value>) -> Result<Vec<u32>, ApiError> {
    let bad = |m: &str| ApiError::bad("prompt", m.to_string());
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        let ids: Vec<u32> = a
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| bad("a token-id prompt must be a list of non-negative integers"))
            })
            .collect::<Result<_, _>>()?;
        model.check_token_ids(&ids, "prompt")?;
        Ok(ids)
    };
    match v {
        None => Err(bad("prompt is required")),
        Some(Value::String(s)) => model
            .tokenizer
            .encode(s, true)
            .map_err(|e| ApiError::Internal(e.to_string())),
        Some(Value::Array(a)) if a.is_empty() => Err(bad("the prompt is empty")),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => ids(a),
        Some(_) => Err(bad(
            "prompt must be a string, a list of token ids, or a list of either",
        )),
    }
}

/// The legacy `logprobs` object; `offset` is the text offset of the first token.
fn logprobs_json(infos: &[TokenInfo], offset: &mut usize) -> Value {
    let mut text_offset = Vec::with_capacity(infos.len());
    for t in infos {
        text_offset.push(*offset);
        *offset += t.token.len();
    }
    json!({
        "tokens": infos.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": infos.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": infos.iter().map(|t| {
            t.top.iter().map(|(s, l)| (s.clone(), json!(l))).collect::<Map<String, Value>>()
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

struct CompletionChunks {
    id: String,
    model: String,
    created: u64,
    offsets: Vec<usize>,
}

impl CompletionChunks {
    fn chunk(&self, choices: Vec<Value>) -> Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model, "choices": choices})
    }
}

impl ChunkFormat for CompletionChunks {
    fn start(&mut self) -> Vec<Value> {
        Vec::new()
    }

    fn outputs(&mut self, outs: Vec<Output>) -> Vec<Value> {
        outs.into_iter()
            .map(|o| match o {
                Output::Delta { index, text, logprobs } => {
                    let lp = if logprobs.is_empty() {
                        Value::Null
                    } else {
                        let off = self.offsets.get_mut(index);
                        let mut dummy = 0;
                        logprobs_json(&logprobs, off.unwrap_or(&mut dummy))
                    };
                    self.chunk(vec![json!({"index": index, "text": text, "logprobs": lp, "finish_reason": null})])
                }
                Output::Finish { index, reason } => self.chunk(vec![
                    json!({"index": index, "text": "", "logprobs": null, "finish_reason": finish_reason_str(reason)}),
                ]),
            })
            .collect()
    }

    fn usage(&mut self, usage: Usage) -> Value {
        let mut v = self.chunk(Vec::new());
        v["usage"] = usage.to_json();
        v
    }
}
